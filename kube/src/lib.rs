//! weft's Kubernetes side, linked by the router only (never by `weft-cni`).
//!
//! - [`source`]: the *object source* interface: a consistent list with its resourceVersion, then
//!   a watch from that version; [`client`] implements it over the API server (`kube`), [`memory`]
//!   in memory for tests.
//! - [`reflector`] (sans-IO) and [`informer`] (its driver): the informer pattern. List, watch
//!   from the list's version, list again when the version is too old (410 Gone), keep a local
//!   store and tell consumers it changed, so they reconcile from the store rather than from
//!   single events. Generic over the object type: Nodes, and Pods, Namespaces and
//!   NetworkPolicies for [`policy`].
//! - [`nodes`] (pure): Nodes to dial targets.
//! - [`registry`]: the peer registry, a ConfigMap mapping peer names to node names and holding
//!   reclaim claims, written only by compare-and-swap on its resourceVersion.
//! - [`reclaim`]: which deleted node's peer to reclaim (sans-IO), and the claim protocol.
//! - [`policy`]: Pods, Namespaces and NetworkPolicies converted to [`weft_policy::model`], and
//!   the loop that keeps a node's policy table in step with their three informers.
//! - [`controller`]: discovery and reclaim run together against a [`controller::Mesh`] (the
//!   router's side).
//!
//! Assumptions: peer names are opaque strings here (the router checks them); the API server is
//! the only coordinator, and a 409 Conflict on a write means "read again and decide again".

pub mod client;
pub mod controller;
pub mod informer;
pub mod memory;
pub mod nodes;
pub mod policy;
pub mod reclaim;
pub mod reflector;
pub mod registry;
pub mod source;

pub use k8s_openapi;
pub use kube;
