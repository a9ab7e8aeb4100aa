//! The sleeve: weft's encrypted UDP transport for Ethernet frames between hosts.
//!
//! Modules, from the wire up:
//! - [`wire`]: the whole datagram layout as views over bytes: packet header, body records, and
//!   the frame payload (virtio-net header, relay envelope, Ethernet frame);
//! - [`replay`]: the sliding anti-replay window;
//! - [`session`]: sans-IO sessions: per-direction AEAD keys from a session secret, counters,
//!   rekeying, plain mode;
//! - [`frag`]: cutting frame payloads too large for one datagram into fragments, and reassembly;
//! - [`liveness`]: heartbeats, liveness and path MTU discovery (control records);
//! - [`udp`]: batched UDP I/O (recvmmsg with GRO, GSO sends).
//!
//! Everything but [`udp`] is sans-IO: `now` is passed in, buffers are the caller's. Users hold
//! one [`Session`] per peer and find it by session index; this crate keeps no table of them.
//!
//! Data path, no allocation per packet. Send: write records with a [`BodyWriter`] over
//! `buf[session.body_range(datagram_len)]` ([`Session::body_range`]): a frame as one frame
//! record ([`BodyWriter::push_frame`]) when [`wire::FrameRepr::buffer_len`] fits, else as
//! fragments, one datagram each ([`frag::Cut`]); then [`Session::seal_in_place`] puts header and
//! tag around the body and returns the datagram length. Receive: the header view
//! ([`wire::Packet::new_checked`], [`wire::Packet::receiver_index`]) names the session;
//! [`Session::open`] opens the datagram in place and returns the body range, whose records are
//! all well formed; iterate them with [`Records`]; pass fragments to a [`frag::Reassembler`] and
//! parse what it completes with [`wire::FrameRepr::parse`]; control records go to
//! [`liveness`]. [`Session::overhead`] is what a packet adds to its body, for path MTU.

pub mod frag;
pub mod liveness;
pub mod replay;
pub mod session;
pub mod udp;
pub mod wire;

pub use replay::{ReplayError, ReplayWindow};
/// The `ring` whose types appear in this API (e.g. [`Cipher::algorithm`]).
pub use ring;
pub use session::{Cipher, Config, Mode, OpenError, Role, SealError, Session, SessionIds, Stats};
pub use wire::{BodyRecord, BodyWriter, EnvelopeRepr, FrameRepr, Records, VnetHdr};
