//! The mesh: how weft routers find each other, prove they belong, agree on who is connected to
//! whom, and decide how a frame reaches any peer.
//!
//! The protocol cores do no I/O and read no clock (`now` is passed in); the QUIC driver wraps them.
//! - [`peer`]: peer names (48-bit, shown MAC-style) and nicknames.
//! - [`identity`]: this peer's persisted name and incarnation.
//! - [`ipam`]: the address ring and allocation (sans-IO, persisted).
//! - [`topology`]: topology gossip (entries merged by version, flooded updates, digest-based
//!   anti-entropy, garbage collection, wire format).
//! - [`degree`]: which peers to keep connections to under a connection limit (bounded degree).
//! - [`routes`]: unicast next hops and broadcast trees, published lock-free.
//! - [`transport`]: QUIC connections (quinn), password proofs, control messages, sleeve keys,
//!   dial targets with backoff.
//! - [`sim`]: a deterministic many-peer simulator of topology gossip on a virtual clock.

pub mod degree;
pub mod ipam;
pub mod identity;
pub mod peer;
pub mod routes;
pub mod sim;
pub mod topology;
pub mod transport;
