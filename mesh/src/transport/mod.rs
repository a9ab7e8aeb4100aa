//! The mesh transport: QUIC connections between peers (quinn), authenticated with the cluster
//! password, carrying versioned control messages, and supplying the sleeve's keys.
//!
//! - [`tls`]: the peer's persistent key pair, its self-signed certificate, rustls/quinn configs;
//! - [`auth`]: the password proof and sleeve secrets, bound to the connection by the TLS exporter;
//! - [`proto`]: the control messages and their framing (sans-IO);
//! - [`endpoint`]: the tokio driver: accept and dial, hello exchange, message streams, rekeying;
//! - [`targets`]: which addresses to dial and when (backoff with jitter, connection limit).

pub mod auth;
pub mod endpoint;
pub mod proto;
pub mod targets;
pub mod tls;

pub use endpoint::{ConnHandle, ConnInfo, Event, MeshConfig, MeshEndpoint, SleeveParams};
pub use proto::Message;
