//! weft's local API, shared by the router (server), the `weft` CLI and `weft-cni` (clients):
//! the request and response types ([`types`]), a small HTTP/1.1 framing ([`http`]) and a
//! blocking client over the unix socket ([`client`]).
//!
//! Dependency-light on purpose: `weft-cni` links this and must start fast, without an async
//! runtime. The API is JSON over HTTP/1.1, one request per connection.

pub mod client;
pub mod http;
pub mod types;

pub use client::{Client, ClientError};
