//! The sleeve: weft's encrypted UDP transport for Ethernet frames between hosts.
//!
//! Modules, from the wire up:
//! - [`wire`]: the packet format as views over bytes (header, sealed body records);
//! - [`replay`]: the sliding anti-replay window;
//! - [`session`]: sans-IO sessions: per-direction AEAD keys from a session secret, counters,
//!   rekeying, plain mode.
//!
//! Still to come (issue "Sleeve"): fragmentation of super-frames across datagrams, path MTU
//! discovery, heartbeats and liveness, and batched UDP I/O (recvmmsg/sendmmsg, GSO/GRO).
//!
//! Data path, no allocation per packet. Send: write records with a [`BodyWriter`] over
//! `buf[wire::HEADER_LEN..buf.len() - wire::TAG_LEN]` (frames, fragments, control), then
//! [`Session::seal_in_place`] puts header and tag around them and returns the datagram length.
//! Receive: [`SessionTable::open`] (or [`Session::open`]) opens a datagram in place and returns
//! the body range; iterate it with [`Records`]. [`Session::overhead`] is what a packet adds to
//! its body, for fragmentation and path MTU.

pub mod frag;
pub mod liveness;
pub mod replay;
pub mod session;
pub mod udp;
pub mod wire;

pub use replay::{ReplayError, ReplayWindow};
/// The `ring` whose types appear in this API (e.g. [`Cipher::algorithm`]).
pub use ring;
pub use session::{
    Cipher, Config, Mode, OpenError, Role, SealError, Session, SessionIds, SessionTable, Stats,
};
pub use wire::{BodyRecord, BodyWriter, Records, VnetHdr};
