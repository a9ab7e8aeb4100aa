//! Kubernetes NetworkPolicy (`networking.k8s.io/v1`) for weft, enforced by nftables on every node.
//!
//! - [`model`]: the objects (pods, namespaces, policies) in plain Rust.
//! - [`compile`](mod@compile): objects → the [`ir::Ruleset`] of one node, pure; label selections become sets,
//!   so pods coming and going change set elements, not rules.
//! - [`ir`]: that ruleset, its interpreter and the element delta between two of them.
//! - [`render`]: the ruleset or a delta as an `nft -f` script, each one atomic transaction.
//! - [`reference`](mod@reference): the semantics written plainly, which the compiler is tested against.
//! - [`controller`]: the sans-IO controller core (store, recompile, full or delta updates).
//! - [`nft`]: the backend that runs `nft` and reads the per-policy drop counters.
//! - [`synthetic`]: a generated cluster for the benchmarks.

pub mod compile;
pub mod controller;
pub mod ir;
pub mod model;
pub mod nft;
pub mod reference;
pub mod render;
pub mod synthetic;

pub use compile::{Node, TABLE, compile};
