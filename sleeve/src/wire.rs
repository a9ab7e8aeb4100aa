//! The sleeve packet format, as views over bytes.
//!
//! One UDP datagram carries one packet:
//!
//! ```text
//! header (HEADER_LEN = 20 bytes, big-endian)
//!   0  version        u8   VERSION (1); anything else is refused
//!   1  packet type    u8   PacketType: plain, or the AEAD that sealed the body
//!   2  key epoch      u8   which of the sender's keys sealed the body (wraps)
//!   3  flags          u8   FLAG_KEY_FROM_SECRET; the other bits must be zero
//!   4  sender index   u32  the session index the sender chose for this pair
//!   8  receiver index u32  the session index the receiver chose; finds the session
//!  12  counter        u64  per-key packet counter, the AEAD nonce; never reused
//! body                     sealed (or plain) sequence of records
//! tag (TAG_LEN = 16 bytes) only for sealed packet types
//! ```
//!
//! The header is the AEAD's associated data. An opened body is a sequence of records
//! `kind: u8 | flags: u8 | len: u16 | payload[len]`:
//! - [`RecordKind::Frame`]: optionally a [`VnetHdr`] (when [`FRAME_FLAG_VNET_HDR`] is set), then
//!   one Ethernet frame; the payload holds at most 65535 bytes, larger super-frames are split
//!   into fragment records;
//! - [`RecordKind::Fragment`]: opaque here, parsed by [`crate::frag`];
//! - [`RecordKind::Control`]: opaque here, parsed by [`crate::liveness`] (heartbeats and path MTU probes).
//!
//! Views ([`Packet`], [`Record`]) check their length once in `new_checked`; after that no
//! accessor panics. Parsed forms ([`HeaderRepr`], [`BodyRecord`], [`VnetHdr`]) have `parse`,
//! `emit` and `buffer_len`. Nothing here allocates.

use std::ops::Range;

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
/// Length of the virtio-net header fields carried in a frame record.
pub const VNET_HDR_LEN: usize = 10;
/// Length of an Ethernet header: the shortest frame a frame record may carry.
pub const ETHERNET_HEADER_LEN: usize = 14;

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

/// The kind of a body record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// An Ethernet frame, optionally with virtio-net offload metadata.
    Frame,
    /// A piece of a super-frame; payload parsed by [`crate::frag`].
    Fragment,
    /// Heartbeat / path MTU probe; payload parsed by [`crate::liveness`].
    Control,
    /// Any other value.
    Unknown(u8),
}

impl From<u8> for RecordKind {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::Frame,
            2 => Self::Fragment,
            3 => Self::Control,
            other => Self::Unknown(other),
        }
    }
}

impl From<RecordKind> for u8 {
    fn from(k: RecordKind) -> u8 {
        match k {
            RecordKind::Frame => 1,
            RecordKind::Fragment => 2,
            RecordKind::Control => 3,
            RecordKind::Unknown(v) => v,
        }
    }
}

/// A view of one body record: `kind | flags | len | payload`.
#[derive(Debug, Clone)]
pub struct Record<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Record<T> {
    /// Wraps a buffer without checks.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer that holds at least the record header and the payload it announces
    /// (it may hold more: the following records). Then no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let r = Self::new_unchecked(buffer);
        let len = r.buffer.as_ref().len();
        need(RECORD_HEADER_LEN, len)?;
        need(r.total_len(), len)?;
        Ok(r)
    }

    /// The record kind.
    pub fn kind(&self) -> RecordKind {
        self.buffer.as_ref()[field::REC_KIND].into()
    }

    /// The record flags (meaning depends on the kind).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::REC_FLAGS]
    }

    /// The payload length field.
    pub fn payload_len(&self) -> u16 {
        u16::from_be_bytes(be(&self.buffer.as_ref()[field::REC_LEN]))
    }

    /// Header plus payload length.
    pub fn total_len(&self) -> usize {
        RECORD_HEADER_LEN + usize::from(self.payload_len())
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[RECORD_HEADER_LEN..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Record<T> {
    /// Writes the record header.
    pub fn set_header(&mut self, kind: RecordKind, flags: u8, len: u16) {
        let b = self.buffer.as_mut();
        b[field::REC_KIND] = kind.into();
        b[field::REC_FLAGS] = flags;
        b[field::REC_LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.buffer.as_mut()[RECORD_HEADER_LEN..end]
    }
}

/// The virtio-net header fields of a super-frame, as the receiving kernel needs them
/// (`struct virtio_net_hdr` without `num_buffers`). Big-endian on the wire; the TAP driver
/// converts to the host's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*` flags.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` type.
    pub gso_type: u8,
    /// Length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// Segment payload size.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Result<Self> {
        need(VNET_HDR_LEN, b.len())?;
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        Ok(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Bytes the fields occupy.
    pub const fn buffer_len(&self) -> usize {
        VNET_HDR_LEN
    }

    /// Writes the fields into the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn emit(&self, b: &mut [u8]) -> Result<()> {
        room(VNET_HDR_LEN, b.len())?;
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_be_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_be_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_be_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_be_bytes());
        Ok(())
    }
}

/// A parsed body record, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRecord<'a> {
    /// An Ethernet frame (at least [`ETHERNET_HEADER_LEN`] bytes) and its offload metadata.
    Frame {
        /// Offload metadata, present for super-frames.
        vnet: Option<VnetHdr>,
        /// The Ethernet frame.
        frame: &'a [u8],
    },
    /// A fragment record; flags and payload belong to [`crate::frag`].
    Fragment {
        /// Record flags.
        flags: u8,
        /// Opaque payload.
        payload: &'a [u8],
    },
    /// A control record; flags and payload belong to liveness / PMTU.
    Control {
        /// Record flags.
        flags: u8,
        /// Opaque payload.
        payload: &'a [u8],
    },
}

impl<'a> BodyRecord<'a> {
    /// Parses a checked record view.
    pub fn parse(record: &Record<&'a [u8]>) -> Result<Self> {
        let flags = record.flags();
        let payload: &'a [u8] = {
            let buf: &'a [u8] = record.buffer;
            &buf[RECORD_HEADER_LEN..record.total_len()]
        };
        match record.kind() {
            RecordKind::Frame => {
                if flags & !FRAME_FLAG_VNET_HDR != 0 {
                    return Err(Error::BadFrameFlags(flags));
                }
                let (vnet, frame) = if flags & FRAME_FLAG_VNET_HDR != 0 {
                    let v = VnetHdr::parse(payload)?;
                    (Some(v), &payload[VNET_HDR_LEN..])
                } else {
                    (None, payload)
                };
                if frame.len() < ETHERNET_HEADER_LEN {
                    return Err(Error::FrameTooShort(frame.len()));
                }
                Ok(Self::Frame { vnet, frame })
            }
            RecordKind::Fragment => Ok(Self::Fragment { flags, payload }),
            RecordKind::Control => Ok(Self::Control { flags, payload }),
            RecordKind::Unknown(k) => Err(Error::UnknownRecordKind(k)),
        }
    }

    /// Payload length (vnet header included for frames).
    pub fn payload_len(&self) -> usize {
        match self {
            Self::Frame { vnet, frame } => vnet.map_or(0, |_| VNET_HDR_LEN) + frame.len(),
            Self::Fragment { payload, .. } | Self::Control { payload, .. } => payload.len(),
        }
    }

    /// Bytes the record occupies when emitted.
    pub fn buffer_len(&self) -> usize {
        RECORD_HEADER_LEN + self.payload_len()
    }

    /// Writes the record at the start of `buf`; returns the bytes written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let plen = self.payload_len();
        if plen > MAX_RECORD_PAYLOAD {
            return Err(Error::RecordTooLong(plen));
        }
        let total = RECORD_HEADER_LEN + plen;
        room(total, buf.len())?;
        let (kind, flags) = match self {
            Self::Frame { vnet, .. } => (
                RecordKind::Frame,
                if vnet.is_some() {
                    FRAME_FLAG_VNET_HDR
                } else {
                    0
                },
            ),
            Self::Fragment { flags, .. } => (RecordKind::Fragment, *flags),
            Self::Control { flags, .. } => (RecordKind::Control, *flags),
        };
        // plen <= MAX_RECORD_PAYLOAD was checked above.
        let mut rec = Record::new_unchecked(&mut buf[..total]);
        rec.set_header(kind, flags, plen as u16);
        let out = rec.payload_mut();
        match self {
            Self::Frame { vnet, frame } => {
                let off = match vnet {
                    Some(v) => {
                        v.emit(out)?;
                        VNET_HDR_LEN
                    }
                    None => 0,
                };
                out[off..].copy_from_slice(frame);
            }
            Self::Fragment { payload, .. } | Self::Control { payload, .. } => {
                out.copy_from_slice(payload)
            }
        }
        Ok(total)
    }
}

/// Iterator over the records of an opened body.
///
/// Yields `Err` for a malformed record and then stops (the length of what follows cannot be
/// trusted). Never panics.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Records<'a> {
    /// Iterates over `body`, the plaintext body of an opened packet.
    pub fn new(body: &'a [u8]) -> Self {
        Self {
            rest: body,
            failed: false,
        }
    }

    /// Walks the whole body once; `Ok(n)` with the record count when every record is well formed
    /// and there is at least one.
    pub fn validate(body: &'a [u8]) -> Result<usize> {
        let mut n = 0;
        for r in Self::new(body) {
            r?;
            n += 1;
        }
        if n == 0 { Err(Error::EmptyBody) } else { Ok(n) }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<BodyRecord<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let parsed = Record::new_checked(self.rest).and_then(|rec| {
            let len = rec.total_len();
            BodyRecord::parse(&rec).map(|r| (r, len))
        });
        match parsed {
            Ok((r, len)) => {
                self.rest = &self.rest[len..];
                Some(Ok(r))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Builds a body record by record in a caller-owned buffer, without allocating.
///
/// For a sealed packet, give it `&mut buf[HEADER_LEN..buf.len() - TAG_LEN]` and pass
/// [`BodyWriter::len`] to the session's seal.
#[derive(Debug)]
pub struct BodyWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> BodyWriter<'a> {
    /// Starts an empty body at the start of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no record was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes still free.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Appends a parsed record (copying its payload).
    pub fn push(&mut self, record: &BodyRecord<'_>) -> Result<()> {
        let n = record.emit(&mut self.buf[self.len..])?;
        self.len += n;
        Ok(())
    }

    /// Appends a frame record.
    pub fn push_frame(&mut self, vnet: Option<&VnetHdr>, frame: &[u8]) -> Result<()> {
        self.push(&BodyRecord::Frame {
            vnet: vnet.copied(),
            frame,
        })
    }

    /// Appends a fragment record with an opaque payload.
    pub fn push_fragment(&mut self, flags: u8, payload: &[u8]) -> Result<()> {
        self.push(&BodyRecord::Fragment { flags, payload })
    }

    /// Appends a control record with an opaque payload.
    pub fn push_control(&mut self, flags: u8, payload: &[u8]) -> Result<()> {
        self.push(&BodyRecord::Control { flags, payload })
    }

    /// Appends a record header and returns its `payload_len` bytes for the caller to fill in
    /// place (e.g. a TAP read straight into the buffer). For a frame, the caller writes the
    /// [`VnetHdr`] first when `flags` has [`FRAME_FLAG_VNET_HDR`].
    pub fn reserve(
        &mut self,
        kind: RecordKind,
        flags: u8,
        payload_len: usize,
    ) -> Result<&mut [u8]> {
        if payload_len > MAX_RECORD_PAYLOAD {
            return Err(Error::RecordTooLong(payload_len));
        }
        let total = RECORD_HEADER_LEN + payload_len;
        room(total, self.remaining())?;
        let start = self.len;
        self.len += total;
        let mut rec = Record::new_unchecked(&mut self.buf[start..start + total]);
        // payload_len <= u16::MAX was checked above.
        rec.set_header(kind, flags, payload_len as u16);
        Ok(&mut self.buf[start + RECORD_HEADER_LEN..start + total])
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

    const VNET_BYTES: [u8; VNET_HDR_LEN] =
        [0x01, 0x04, 0x00, 0x42, 0x05, 0xa8, 0x00, 0x22, 0x00, 0x10];

    fn vnet() -> VnetHdr {
        VnetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 0x42,
            gso_size: 1448,
            csum_start: 0x22,
            csum_offset: 0x10,
        }
    }

    #[test]
    fn vnet_round_trip() {
        assert_eq!(VnetHdr::parse(&VNET_BYTES).unwrap(), vnet());
        let mut out = [0u8; VNET_HDR_LEN];
        vnet().emit(&mut out).unwrap();
        assert_eq!(out, VNET_BYTES);
        assert!(VnetHdr::parse(&VNET_BYTES[..9]).is_err());
    }

    fn eth(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn body_round_trip_fixed_bytes() {
        let frame = eth(14, 0);
        let mut expected = Vec::new();
        // plain frame record
        expected.extend_from_slice(&[1, 0, 0, 14]);
        expected.extend_from_slice(&frame);
        // frame with vnet header
        expected.extend_from_slice(&[1, 1, 0, 24]);
        expected.extend_from_slice(&VNET_BYTES);
        expected.extend_from_slice(&frame);
        // fragment and control records (opaque)
        expected.extend_from_slice(&[2, 0x5a, 0, 3, 9, 8, 7]);
        expected.extend_from_slice(&[3, 0x01, 0, 0]);

        let records: Vec<_> = Records::new(&expected).collect::<Result<_>>().unwrap();
        assert_eq!(
            records,
            vec![
                BodyRecord::Frame {
                    vnet: None,
                    frame: &frame
                },
                BodyRecord::Frame {
                    vnet: Some(vnet()),
                    frame: &frame
                },
                BodyRecord::Fragment {
                    flags: 0x5a,
                    payload: &[9, 8, 7]
                },
                BodyRecord::Control {
                    flags: 1,
                    payload: &[]
                },
            ]
        );
        assert_eq!(Records::validate(&expected), Ok(4));

        let mut buf = vec![0u8; expected.len()];
        let mut w = BodyWriter::new(&mut buf);
        w.push_frame(None, &frame).unwrap();
        w.push_frame(Some(&vnet()), &frame).unwrap();
        w.push_fragment(0x5a, &[9, 8, 7]).unwrap();
        w.push_control(1, &[]).unwrap();
        assert_eq!(w.remaining(), 0);
        assert_eq!(w.len(), expected.len());
        assert_eq!(buf, expected);
        for r in &records {
            let mut one = vec![0u8; r.buffer_len()];
            assert_eq!(r.emit(&mut one), Ok(r.buffer_len()));
        }
    }

    #[test]
    fn reserve_writes_in_place() {
        let mut buf = [0u8; 64];
        let mut w = BodyWriter::new(&mut buf);
        let p = w.reserve(RecordKind::Frame, 0, 20).unwrap();
        p.copy_from_slice(&eth(20, 3));
        assert_eq!(w.len(), 24);
        assert!(matches!(
            w.reserve(RecordKind::Control, 0, 37),
            Err(Error::BufferTooSmall { .. })
        ));
        assert!(matches!(
            w.reserve(RecordKind::Fragment, 0, 70_000),
            Err(Error::RecordTooLong(_))
        ));
        let recs: Vec<_> = Records::new(&buf[..24]).collect();
        assert_eq!(
            recs,
            vec![Ok(BodyRecord::Frame {
                vnet: None,
                frame: &eth(20, 3)[..]
            })]
        );
    }

    #[test]
    fn largest_frame_record() {
        let frame = eth(MAX_RECORD_PAYLOAD, 1);
        let mut buf = vec![0u8; MAX_RECORD_PAYLOAD + RECORD_HEADER_LEN];
        BodyWriter::new(&mut buf).push_frame(None, &frame).unwrap();
        assert_eq!(Records::validate(&buf), Ok(1));
        let too_big = eth(MAX_RECORD_PAYLOAD + 1, 1);
        let mut big = vec![0u8; too_big.len() + 8];
        assert_eq!(
            BodyWriter::new(&mut big).push_frame(None, &too_big),
            Err(Error::RecordTooLong(MAX_RECORD_PAYLOAD + 1))
        );
        assert_eq!(
            BodyWriter::new(&mut big).push_frame(Some(&vnet()), &frame),
            Err(Error::RecordTooLong(MAX_RECORD_PAYLOAD + VNET_HDR_LEN))
        );
    }

    #[test]
    fn malformed_records_are_errors() {
        let cases: &[(&[u8], Error)] = &[
            (
                &[1, 0, 0],
                Error::Truncated {
                    needed: 4,
                    available: 3,
                },
            ),
            (
                &[1, 0, 0, 20, 0, 0],
                Error::Truncated {
                    needed: 24,
                    available: 6,
                },
            ),
            (&[9, 0, 0, 0], Error::UnknownRecordKind(9)),
            (&[0, 0, 0, 0], Error::UnknownRecordKind(0)),
            (
                &[1, 2, 0, 14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                Error::BadFrameFlags(2),
            ),
            (&[1, 0, 0, 2, 0, 0], Error::FrameTooShort(2)),
            (
                &[1, 1, 0, 5, 0, 0, 0, 0, 0],
                Error::Truncated {
                    needed: 10,
                    available: 5,
                },
            ),
            (
                &[1, 1, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                Error::FrameTooShort(2),
            ),
        ];
        for (bytes, err) in cases {
            let mut body = vec![3, 0, 0, 1, 0xaa]; // one good control record first
            body.extend_from_slice(bytes);
            let got: Vec<_> = Records::new(&body).collect();
            assert_eq!(got.len(), 2, "{bytes:?}");
            assert_eq!(
                got[0],
                Ok(BodyRecord::Control {
                    flags: 0,
                    payload: &[0xaa]
                })
            );
            assert_eq!(got[1], Err(*err), "{bytes:?}");
            assert_eq!(Records::validate(&body), Err(*err));
        }
        // Iteration stops at the first error even when records follow.
        let body = [9, 0, 0, 0, 3, 0, 0, 0];
        let got: Vec<_> = Records::new(&body).collect();
        assert_eq!(got, vec![Err(Error::UnknownRecordKind(9))]);
        assert_eq!(Records::validate(&[]), Err(Error::EmptyBody));
        assert_eq!(Records::new(&[]).count(), 0);
    }

    #[test]
    fn every_truncation_of_a_body_is_caught() {
        let mut buf = [0u8; 128];
        let mut w = BodyWriter::new(&mut buf);
        w.push_frame(Some(&vnet()), &eth(30, 2)).unwrap();
        w.push_control(0, &[1, 2, 3]).unwrap();
        let n = w.len();
        let boundaries = [RECORD_HEADER_LEN + VNET_HDR_LEN + 30, n];
        for len in 0..=n {
            let r = Records::validate(&buf[..len]);
            assert_eq!(r.is_ok(), boundaries.contains(&len), "len {len}: {r:?}");
        }
    }
}
