//! The sleeve: weft's encrypted UDP transport for Ethernet frames between hosts.
//!
//! Modules, from the wire up:
//! - [`wire`]: the packet format as views over bytes (header, sealed body records);
//! - [`replay`]: the sliding anti-replay window;
//! - [`session`]: sans-IO sessions: per-direction AEAD keys from a session secret, counters,
//!   rekeying, plain mode;
//! - [`frag`]: splitting super-frames across datagrams and reassembling them;
//! - [`pmtu`]: per-peer path MTU discovery;
//! - [`liveness`]: heartbeats and the live/dead verdict per peer;
//! - [`udp`]: batched UDP I/O (recvmmsg/sendmmsg, GSO/GRO) over quinn-udp.

pub mod frag;
pub mod liveness;
pub mod pmtu;
pub mod replay;
pub mod session;
pub mod udp;
pub mod wire;
