//! The sleeve datagram format, as views over bytes: the whole layout, from the UDP payload down
//! to the Ethernet frame, relay envelope included. Nothing outside this module reads sleeve bytes
//! at offsets.
//!
//! One UDP datagram carries one packet (all integers big-endian):
//!
//! ```text
//! header (HEADER_LEN = 20 bytes)
//!   0  version        u8   VERSION (1); anything else is refused
//!   1  packet type    u8   PacketType: plain, or the AEAD that sealed the body
//!   2  key epoch      u8   which of the sender's keys sealed the body (wraps)
//!   3  flags          u8   FLAG_KEY_FROM_SECRET; the other bits must be zero
//!   4  sender index   u32  the session index the sender chose for this pair
//!   8  receiver index u32  the session index the receiver chose; finds the session
//!  12  counter        u64  per-key packet counter, the AEAD nonce; never reused
//! body                     sealed (or plain) sequence of records, at least one
//! tag (TAG_LEN = 16 bytes) only for sealed packet types
//! ```
//!
//! The header is the AEAD's associated data. An opened body is a sequence of records
//! `kind u8 | flags u8 | len u16 | payload[len]` ([`Record`], [`BodyRecord`]):
//! - [`RecordKind::Frame`] (1): one frame payload (below), at most [`MAX_RECORD_PAYLOAD`] bytes;
//!   the only flag is [`FRAME_FLAG_VNET_HDR`];
//! - [`RecordKind::Fragment`] (2): a piece of a frame payload too large for one datagram, flags
//!   as its frame record's; the piece header is parsed by [`crate::frag`];
//! - [`RecordKind::Control`] (3): heartbeats and path MTU probes, parsed by [`crate::liveness`].
//!
//! A frame payload ([`FrameRepr`]), whole in a frame record or reassembled from fragments:
//!
//! ```text
//! virtio-net header (VNET_HDR_LEN = 10 bytes), only with FRAME_FLAG_VNET_HDR ([`VnetHdr`])
//!   0  flags u8 | 1  gso_type u8 | 2  hdr_len u16 | 4  gso_size u16 | 6  csum_start u16
//!   8  csum_offset u16
//! relay envelope (ENVELOPE_LEN = 14 bytes) ([`Envelope`], [`EnvelopeRepr`])
//!   0  dst peer  6 bytes  destination peer, or BROADCAST_PEER: everyone, along src's tree
//!   6  src peer  6 bytes  origin peer
//!  12  hops      u8       relays left; a relay decrements it and drops the frame at zero
//!  13  flags     u8       none defined; must be zero
//! Ethernet frame (at least ETHERNET_HEADER_LEN = 14 bytes)
//! ```
//!
//! Views ([`Packet`], [`Record`], [`Envelope`]) check their length and reserved bits once in
//! `new_checked`; after that no accessor panics. Parsed forms ([`HeaderRepr`], [`BodyRecord`],
//! [`FrameRepr`], [`EnvelopeRepr`], [`VnetHdr`]) have `parse`, `emit` and `buffer_len`. Peer
//! names are 6 raw bytes here; what they name is the mesh's business. Nothing here allocates.

use std::ops::Range;

mod frame;
mod record;

pub use frame::{Envelope, EnvelopeRepr, FrameRepr, VnetHdr, max_frame_in_body};
pub use record::{BodyRecord, BodyWriter, Record, RecordKind, Records};

/// The only header version this code speaks.
pub const VERSION: u8 = 1;
/// Length of the packet header.
pub const HEADER_LEN: usize = 20;
/// Length of the AEAD tag that ends a sealed packet.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed packet adds around its body: header and tag.
pub const SEALED_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Length of a record header (`kind | flags | len`).
pub const RECORD_HEADER_LEN: usize = 4;
/// Largest record payload (the `len` field is a `u16`).
pub const MAX_RECORD_PAYLOAD: usize = u16::MAX as usize;
/// Length of the virtio-net header fields that may start a frame payload.
pub const VNET_HDR_LEN: usize = 10;
/// Length of the relay envelope in a frame payload.
pub const ENVELOPE_LEN: usize = 14;
/// Most bytes before the Ethernet frame in a frame payload: virtio-net header and envelope.
pub const FRAME_HEAD_MAX: usize = VNET_HDR_LEN + ENVELOPE_LEN;
/// Length of an Ethernet header: the shortest frame a frame payload may carry.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Largest Ethernet frame carried: a 64 KB IP super-frame and its Ethernet header.
pub const MAX_ETHERNET_FRAME: usize = ETHERNET_HEADER_LEN + 65_535;
/// Largest frame payload (whole, or reassembled from fragments).
pub const MAX_FRAME_PAYLOAD: usize = FRAME_HEAD_MAX + MAX_ETHERNET_FRAME;
/// Envelope destination of a broadcast: every peer, along the origin's broadcast tree.
pub const BROADCAST_PEER: [u8; 6] = [0xff; 6];

/// Header flag: the key of this epoch was derived from a newly installed session secret rather
/// than ratcheted from the previous key.
pub const FLAG_KEY_FROM_SECRET: u8 = 0x01;
/// Frame record flag: the payload starts with a [`VnetHdr`].
pub const FRAME_FLAG_VNET_HDR: u8 = 0x01;

/// Errors from parsing or emitting the sleeve format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes end before the structure they claim to hold.
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The header version is not [`VERSION`]; the peer runs an incompatible weft.
    #[error(
        "unsupported sleeve version {0} (this weft speaks version {VERSION}); upgrade the older peer"
    )]
    BadVersion(u8),
    /// The packet type byte names no known type.
    #[error("unknown packet type {0}")]
    UnknownPacketType(u8),
    /// Reserved header flag bits are set.
    #[error("reserved header flags set: {0:#04x}")]
    ReservedFlags(u8),
    /// A body record has a kind this version does not know.
    #[error("unknown record kind {0}")]
    UnknownRecordKind(u8),
    /// A frame record sets flag bits this version does not know.
    #[error("unknown frame record flags {0:#04x}")]
    BadFrameFlags(u8),
    /// A frame record's Ethernet frame is shorter than an Ethernet header.
    #[error("frame of {0} bytes is shorter than an Ethernet header")]
    FrameTooShort(usize),
    /// A relay envelope sets flag bits this version does not know.
    #[error("unknown envelope flags {0:#04x}")]
    BadEnvelopeFlags(u8),
    /// A packet body holds no record.
    #[error("empty body")]
    EmptyBody,
    /// A record payload would exceed [`MAX_RECORD_PAYLOAD`].
    #[error("record payload of {0} bytes exceeds {MAX_RECORD_PAYLOAD}")]
    RecordTooLong(usize),
    /// The output buffer is too small for what is being emitted.
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
}

/// Result of the wire functions.
pub type Result<T> = std::result::Result<T, Error>;

fn need(needed: usize, available: usize) -> Result<()> {
    if available < needed {
        Err(Error::Truncated { needed, available })
    } else {
        Ok(())
    }
}

fn room(needed: usize, available: usize) -> Result<()> {
    if available < needed {
        Err(Error::BufferTooSmall { needed, available })
    } else {
        Ok(())
    }
}

/// What a packet's body is: plain, or sealed by one of the AEADs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// Body in clear, no tag (trusted networks only).
    Plain,
    /// Body sealed with ChaCha20-Poly1305, followed by the tag.
    ChaCha20Poly1305,
    /// Body sealed with AES-256-GCM, followed by the tag.
    Aes256Gcm,
    /// Any other value.
    Unknown(u8),
}

impl PacketType {
    /// Whether the packet ends with an AEAD tag.
    pub fn is_sealed(self) -> bool {
        matches!(self, Self::ChaCha20Poly1305 | Self::Aes256Gcm)
    }
}

impl From<u8> for PacketType {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::Plain,
            2 => Self::ChaCha20Poly1305,
            3 => Self::Aes256Gcm,
            other => Self::Unknown(other),
        }
    }
}

impl From<PacketType> for u8 {
    fn from(t: PacketType) -> u8 {
        match t {
            PacketType::Plain => 1,
            PacketType::ChaCha20Poly1305 => 2,
            PacketType::Aes256Gcm => 3,
            PacketType::Unknown(v) => v,
        }
    }
}

mod field {
    use std::ops::Range;
    pub(super) const VERSION: usize = 0;
    pub(super) const TYPE: usize = 1;
    pub(super) const EPOCH: usize = 2;
    pub(super) const FLAGS: usize = 3;
    pub(super) const SENDER: Range<usize> = 4..8;
    pub(super) const RECEIVER: Range<usize> = 8..12;
    pub(super) const COUNTER: Range<usize> = 12..20;

    pub(super) const REC_KIND: usize = 0;
    pub(super) const REC_FLAGS: usize = 1;
    pub(super) const REC_LEN: Range<usize> = 2..4;

    pub(super) const VNET_FLAGS: usize = 0;
    pub(super) const VNET_GSO_TYPE: usize = 1;
    pub(super) const VNET_HDR_LEN: Range<usize> = 2..4;
    pub(super) const VNET_GSO_SIZE: Range<usize> = 4..6;
    pub(super) const VNET_CSUM_START: Range<usize> = 6..8;
    pub(super) const VNET_CSUM_OFFSET: Range<usize> = 8..10;

    pub(super) const ENV_DST: Range<usize> = 0..6;
    pub(super) const ENV_SRC: Range<usize> = 6..12;
    pub(super) const ENV_HOPS: usize = 12;
    pub(super) const ENV_FLAGS: usize = 13;
}

/// A view of a sleeve packet (header, body, and for sealed types the tag).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks; accessors may panic if it is too short.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`Packet::check`]; then no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check()?;
        Ok(p)
    }

    /// Checks the length (header, and tag for sealed types), the version, the packet type and
    /// the reserved flags. The version is checked first (after the one byte it needs) so that a
    /// packet from another version is reported as such.
    pub fn check(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        need(1, b.len())?;
        if b[field::VERSION] != VERSION {
            return Err(Error::BadVersion(b[field::VERSION]));
        }
        need(HEADER_LEN, b.len())?;
        let ty = PacketType::from(b[field::TYPE]);
        if let PacketType::Unknown(v) = ty {
            return Err(Error::UnknownPacketType(v));
        }
        let reserved = b[field::FLAGS] & !FLAG_KEY_FROM_SECRET;
        if reserved != 0 {
            return Err(Error::ReservedFlags(reserved));
        }
        if ty.is_sealed() {
            need(SEALED_OVERHEAD, b.len())?;
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version byte.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// The packet type.
    pub fn packet_type(&self) -> PacketType {
        self.buffer.as_ref()[field::TYPE].into()
    }

    /// The sender's key epoch (wrapping).
    pub fn key_epoch(&self) -> u8 {
        self.buffer.as_ref()[field::EPOCH]
    }

    /// The header flags.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The sender's session index.
    pub fn sender_index(&self) -> u32 {
        u32::from_be_bytes(be(&self.buffer.as_ref()[field::SENDER]))
    }

    /// The receiver's session index.
    pub fn receiver_index(&self) -> u32 {
        u32::from_be_bytes(be(&self.buffer.as_ref()[field::RECEIVER]))
    }

    /// The packet counter (AEAD nonce).
    pub fn counter(&self) -> u64 {
        u64::from_be_bytes(be(&self.buffer.as_ref()[field::COUNTER]))
    }

    /// The header bytes (the AEAD's associated data).
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN]
    }

    /// Byte range of the body (without the tag of a sealed packet) within the buffer.
    pub fn body_range(&self) -> Range<usize> {
        let len = self.buffer.as_ref().len();
        let end = if self.packet_type().is_sealed() {
            len - TAG_LEN
        } else {
            len
        };
        HEADER_LEN..end
    }

    /// The body (ciphertext for sealed packets).
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[self.body_range()]
    }

    /// The AEAD tag; empty for plain packets.
    pub fn tag(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[self.body_range().end..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the version byte.
    pub fn set_version(&mut self, v: u8) {
        self.buffer.as_mut()[field::VERSION] = v;
    }

    /// Sets the packet type.
    pub fn set_packet_type(&mut self, t: PacketType) {
        self.buffer.as_mut()[field::TYPE] = t.into();
    }

    /// Sets the key epoch.
    pub fn set_key_epoch(&mut self, e: u8) {
        self.buffer.as_mut()[field::EPOCH] = e;
    }

    /// Sets the header flags.
    pub fn set_flags(&mut self, f: u8) {
        self.buffer.as_mut()[field::FLAGS] = f;
    }

    /// Sets the sender's session index.
    pub fn set_sender_index(&mut self, i: u32) {
        self.buffer.as_mut()[field::SENDER].copy_from_slice(&i.to_be_bytes());
    }

    /// Sets the receiver's session index.
    pub fn set_receiver_index(&mut self, i: u32) {
        self.buffer.as_mut()[field::RECEIVER].copy_from_slice(&i.to_be_bytes());
    }

    /// Sets the counter.
    pub fn set_counter(&mut self, c: u64) {
        self.buffer.as_mut()[field::COUNTER].copy_from_slice(&c.to_be_bytes());
    }

    /// The body, mutable.
    pub fn body_mut(&mut self) -> &mut [u8] {
        let r = self.body_range();
        &mut self.buffer.as_mut()[r]
    }
}

fn be<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(b);
    out
}

/// The parsed packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderRepr {
    /// Plain or which AEAD.
    pub packet_type: PacketType,
    /// Sender's key epoch (wrapping).
    pub key_epoch: u8,
    /// Header flags ([`FLAG_KEY_FROM_SECRET`]).
    pub flags: u8,
    /// The sender's session index.
    pub sender_index: u32,
    /// The receiver's session index.
    pub receiver_index: u32,
    /// The packet counter.
    pub counter: u64,
}

impl HeaderRepr {
    /// Parses the header of a packet (checking it again: the view may be unchecked).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self> {
        packet.check()?;
        Ok(Self {
            packet_type: packet.packet_type(),
            key_epoch: packet.key_epoch(),
            flags: packet.flags(),
            sender_index: packet.sender_index(),
            receiver_index: packet.receiver_index(),
            counter: packet.counter(),
        })
    }

    /// Bytes the header occupies.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header (with [`VERSION`]) into the first [`HEADER_LEN`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        room(HEADER_LEN, buf.len())?;
        let mut p = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
        p.set_version(VERSION);
        p.set_packet_type(self.packet_type);
        p.set_key_epoch(self.key_epoch);
        p.set_flags(self.flags);
        p.set_sender_index(self.sender_index);
        p.set_receiver_index(self.receiver_index);
        p.set_counter(self.counter);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER_BYTES: [u8; HEADER_LEN] = [
        0x01, 0x02, 0x07, 0x01, // version 1, ChaCha20-Poly1305, epoch 7, key from secret
        0xde, 0xad, 0xbe, 0xef, // sender index
        0x00, 0x00, 0x01, 0x02, // receiver index
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x12, 0x34, // counter
    ];

    fn header_repr() -> HeaderRepr {
        HeaderRepr {
            packet_type: PacketType::ChaCha20Poly1305,
            key_epoch: 7,
            flags: FLAG_KEY_FROM_SECRET,
            sender_index: 0xdead_beef,
            receiver_index: 0x0102,
            counter: 0x1234,
        }
    }

    #[test]
    fn header_round_trip() {
        let mut bytes = [0u8; HEADER_LEN + 3 + TAG_LEN];
        bytes[..HEADER_LEN].copy_from_slice(&HEADER_BYTES);
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(HeaderRepr::parse(&p).unwrap(), header_repr());
        assert_eq!(p.body().len(), 3);
        assert_eq!(p.tag().len(), TAG_LEN);
        assert_eq!(p.header(), &HEADER_BYTES);

        let mut out = [0u8; HEADER_LEN];
        header_repr().emit(&mut out).unwrap();
        assert_eq!(out, HEADER_BYTES);
        assert_eq!(header_repr().buffer_len(), HEADER_LEN);
    }

    #[test]
    fn plain_packet_has_no_tag() {
        let mut bytes = HEADER_BYTES;
        bytes[1] = 1;
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.packet_type(), PacketType::Plain);
        assert!(p.body().is_empty() && p.tag().is_empty());
    }

    #[test]
    fn header_refusals() {
        let mut bad = HEADER_BYTES;
        bad[0] = 2;
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            Error::BadVersion(2)
        );
        // The version is reported even when the rest is missing.
        assert_eq!(
            Packet::new_checked(&[0u8][..]).unwrap_err(),
            Error::BadVersion(0)
        );
        assert!(matches!(
            Packet::new_checked(&[][..]),
            Err(Error::Truncated { .. })
        ));

        let mut bad = HEADER_BYTES;
        bad[1] = 9;
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            Error::UnknownPacketType(9)
        );
        let mut bad = HEADER_BYTES;
        bad[3] = 0x81;
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            Error::ReservedFlags(0x80)
        );
        // Sealed type without room for the tag.
        assert_eq!(
            Packet::new_checked(&HEADER_BYTES[..]).unwrap_err(),
            Error::Truncated {
                needed: SEALED_OVERHEAD,
                available: HEADER_LEN
            }
        );
        for len in 1..HEADER_LEN {
            assert!(matches!(
                Packet::new_checked(&HEADER_BYTES[..len]),
                Err(Error::Truncated { .. })
            ));
        }
        let mut small = [0u8; HEADER_LEN - 1];
        assert!(matches!(
            header_repr().emit(&mut small),
            Err(Error::BufferTooSmall { .. })
        ));
    }
}
