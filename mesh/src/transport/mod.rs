//! The mesh transport: QUIC connections between peers (quinn), authenticated with the cluster
//! password, carrying versioned control messages, and supplying the sleeve's keys.
//!
//! - [`tls`]: the peer's persistent key pair, its self-signed certificate, rustls/quinn configs;
//! - [`auth`]: the password PAKE and sleeve secrets, bound to the connection by the TLS exporter;
//! - [`handshake`]: the hellos and key confirmations on a new connection (sans-IO);
//! - [`admission`]: which inbound connections may start a handshake (per-source failure limits,
//!   caps on unauthenticated connections; sans-IO);
//! - [`proto`]: the control messages and their framing (sans-IO);
//! - [`endpoint`]: the tokio driver: accept and dial, handshake, message streams, rekeying;
//! - [`targets`]: which addresses to dial and when (backoff with jitter, connection limit).

pub mod admission;
pub mod auth;
pub mod endpoint;
pub mod handshake;
pub mod proto;
pub mod targets;
pub mod tls;

pub use endpoint::{ConnHandle, ConnInfo, Event, MeshConfig, MeshEndpoint, SleeveParams};
pub use proto::Message;
