//! Frame payloads: the virtio-net header, the relay envelope and the Ethernet frame (layout in
//! the [module doc](super)).

use super::{
    BROADCAST_PEER, ENVELOPE_LEN, ETHERNET_HEADER_LEN, Error, FRAME_FLAG_VNET_HDR, FRAME_HEAD_MAX,
    RECORD_HEADER_LEN, Result, VNET_HDR_LEN, be, field, need, room,
};

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
        let u16_at = |r| u16::from_be_bytes(be(&b[r]));
        Ok(Self {
            flags: b[field::VNET_FLAGS],
            gso_type: b[field::VNET_GSO_TYPE],
            hdr_len: u16_at(field::VNET_HDR_LEN),
            gso_size: u16_at(field::VNET_GSO_SIZE),
            csum_start: u16_at(field::VNET_CSUM_START),
            csum_offset: u16_at(field::VNET_CSUM_OFFSET),
        })
    }

    /// Bytes the fields occupy.
    pub const fn buffer_len(&self) -> usize {
        VNET_HDR_LEN
    }

    /// Writes the fields into the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn emit(&self, b: &mut [u8]) -> Result<()> {
        room(VNET_HDR_LEN, b.len())?;
        b[field::VNET_FLAGS] = self.flags;
        b[field::VNET_GSO_TYPE] = self.gso_type;
        b[field::VNET_HDR_LEN].copy_from_slice(&self.hdr_len.to_be_bytes());
        b[field::VNET_GSO_SIZE].copy_from_slice(&self.gso_size.to_be_bytes());
        b[field::VNET_CSUM_START].copy_from_slice(&self.csum_start.to_be_bytes());
        b[field::VNET_CSUM_OFFSET].copy_from_slice(&self.csum_offset.to_be_bytes());
        Ok(())
    }
}

/// A view of a relay envelope and the Ethernet frame after it.
#[derive(Debug, Clone)]
pub struct Envelope<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Envelope<T> {
    /// Wraps a buffer without checks; accessors may panic if it is too short.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`Envelope::check`]; then no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let e = Self::new_unchecked(buffer);
        e.check()?;
        Ok(e)
    }

    /// Checks the length (the envelope; what follows may be empty) and that no flag is set.
    pub fn check(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        need(ENVELOPE_LEN, b.len())?;
        if b[field::ENV_FLAGS] != 0 {
            return Err(Error::BadEnvelopeFlags(b[field::ENV_FLAGS]));
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The destination peer, or [`BROADCAST_PEER`].
    pub fn dst(&self) -> [u8; 6] {
        be(&self.buffer.as_ref()[field::ENV_DST])
    }

    /// The origin peer.
    pub fn src(&self) -> [u8; 6] {
        be(&self.buffer.as_ref()[field::ENV_SRC])
    }

    /// Relays left.
    pub fn hops(&self) -> u8 {
        self.buffer.as_ref()[field::ENV_HOPS]
    }

    /// The flags byte (zero in a checked envelope).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::ENV_FLAGS]
    }

    /// What follows the envelope: the Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[ENVELOPE_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Envelope<T> {
    /// Sets the destination peer.
    pub fn set_dst(&mut self, peer: [u8; 6]) {
        self.buffer.as_mut()[field::ENV_DST].copy_from_slice(&peer);
    }

    /// Sets the origin peer.
    pub fn set_src(&mut self, peer: [u8; 6]) {
        self.buffer.as_mut()[field::ENV_SRC].copy_from_slice(&peer);
    }

    /// Sets the relays left.
    pub fn set_hops(&mut self, hops: u8) {
        self.buffer.as_mut()[field::ENV_HOPS] = hops;
    }

    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::ENV_FLAGS] = flags;
    }
}

/// A parsed relay envelope: who a frame is for, who sent it, and how many relays it has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnvelopeRepr {
    /// Destination peer, or [`BROADCAST_PEER`].
    pub dst: [u8; 6],
    /// Origin peer.
    pub src: [u8; 6],
    /// Relays left.
    pub hops: u8,
}

impl EnvelopeRepr {
    /// Parses an envelope (checking it again: the view may be unchecked).
    pub fn parse<T: AsRef<[u8]>>(envelope: &Envelope<T>) -> Result<Self> {
        envelope.check()?;
        Ok(Self {
            dst: envelope.dst(),
            src: envelope.src(),
            hops: envelope.hops(),
        })
    }

    /// Bytes the envelope occupies.
    pub const fn buffer_len(&self) -> usize {
        ENVELOPE_LEN
    }

    /// Writes the envelope (flags zero) into the first [`ENVELOPE_LEN`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        room(ENVELOPE_LEN, buf.len())?;
        let mut e = Envelope::new_unchecked(&mut buf[..ENVELOPE_LEN]);
        e.set_dst(self.dst);
        e.set_src(self.src);
        e.set_hops(self.hops);
        e.set_flags(0);
        Ok(())
    }

    /// Whether the frame is for every peer.
    pub fn is_broadcast(&self) -> bool {
        self.dst == BROADCAST_PEER
    }
}

/// A parsed frame payload: offload metadata, relay envelope and the Ethernet frame, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRepr<'a> {
    /// Offload metadata, present for super-frames and frames whose checksum is unfinished.
    pub vnet: Option<VnetHdr>,
    /// Origin, destination and relays left.
    pub envelope: EnvelopeRepr,
    /// The Ethernet frame (at least [`ETHERNET_HEADER_LEN`] bytes).
    pub frame: &'a [u8],
}

impl<'a> FrameRepr<'a> {
    /// Parses a frame payload: a frame record's payload with its record `flags`, or a payload
    /// reassembled from fragments with their flags.
    pub fn parse(flags: u8, payload: &'a [u8]) -> Result<Self> {
        if flags & !FRAME_FLAG_VNET_HDR != 0 {
            return Err(Error::BadFrameFlags(flags));
        }
        let (vnet, rest) = if flags & FRAME_FLAG_VNET_HDR != 0 {
            (Some(VnetHdr::parse(payload)?), &payload[VNET_HDR_LEN..])
        } else {
            (None, payload)
        };
        let envelope = Envelope::new_checked(rest)?;
        let repr = EnvelopeRepr::parse(&envelope)?;
        let frame = &rest[ENVELOPE_LEN..];
        if frame.len() < ETHERNET_HEADER_LEN {
            return Err(Error::FrameTooShort(frame.len()));
        }
        Ok(Self {
            vnet,
            envelope: repr,
            frame,
        })
    }

    /// The record flags this payload travels with.
    pub fn flags(&self) -> u8 {
        if self.vnet.is_some() {
            FRAME_FLAG_VNET_HDR
        } else {
            0
        }
    }

    /// Bytes before the Ethernet frame: virtio-net header (if any) and envelope.
    pub fn head_len(&self) -> usize {
        self.vnet.map_or(0, |v| v.buffer_len()) + ENVELOPE_LEN
    }

    /// Bytes the whole payload occupies.
    pub fn buffer_len(&self) -> usize {
        self.head_len() + self.frame.len()
    }

    /// Writes what comes before the Ethernet frame (at most [`FRAME_HEAD_MAX`] bytes) at the
    /// start of `buf`; returns the bytes written.
    pub fn emit_head(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.head_len();
        room(len, buf.len())?;
        let mut at = 0;
        if let Some(v) = &self.vnet {
            v.emit(buf)?;
            at = VNET_HDR_LEN;
        }
        self.envelope.emit(&mut buf[at..])?;
        Ok(len)
    }

    /// Writes the whole payload at the start of `buf`; returns the bytes written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.buffer_len();
        room(len, buf.len())?;
        let head = self.emit_head(buf)?;
        buf[head..len].copy_from_slice(self.frame);
        Ok(len)
    }
}

/// The largest Ethernet frame a body of `max_body` bytes carries whole, in one frame record,
/// with room for a virtio-net header.
pub fn max_frame_in_body(max_body: usize) -> usize {
    max_body.saturating_sub(RECORD_HEADER_LEN + FRAME_HEAD_MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TCPv6 super-frame's virtio-net header on the wire, shared by the wire tests.
    pub(crate) const VNET_BYTES: [u8; VNET_HDR_LEN] =
        [0x01, 0x04, 0x00, 0x42, 0x05, 0xa8, 0x00, 0x22, 0x00, 0x10];

    /// [`VNET_BYTES`] parsed.
    pub(crate) fn vnet() -> VnetHdr {
        VnetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 0x42,
            gso_size: 1448,
            csum_start: 0x22,
            csum_offset: 0x10,
        }
    }

    const ENVELOPE_BYTES: [u8; ENVELOPE_LEN] = [
        0x0e, 0x01, 0x02, 0x03, 0x04, 0x05, // dst
        0x0e, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, // src
        16, 0, // hops, flags
    ];

    fn envelope() -> EnvelopeRepr {
        EnvelopeRepr {
            dst: [0x0e, 1, 2, 3, 4, 5],
            src: [0x0e, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e],
            hops: 16,
        }
    }

    const ETH: [u8; ETHERNET_HEADER_LEN + 2] = [
        0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x00, 0x45, 0x00,
    ];

    #[test]
    fn vnet_round_trip() {
        assert_eq!(VnetHdr::parse(&VNET_BYTES).unwrap(), vnet());
        let mut out = [0u8; VNET_HDR_LEN];
        vnet().emit(&mut out).unwrap();
        assert_eq!(out, VNET_BYTES);
        assert!(VnetHdr::parse(&VNET_BYTES[..9]).is_err());
        assert!(vnet().emit(&mut out[..9]).is_err());
    }

    #[test]
    fn envelope_round_trip() {
        let e = Envelope::new_checked(&ENVELOPE_BYTES[..]).unwrap();
        assert_eq!(EnvelopeRepr::parse(&e).unwrap(), envelope());
        assert!(e.payload().is_empty());
        assert!(!envelope().is_broadcast());
        let mut out = [0xaa; ENVELOPE_LEN];
        envelope().emit(&mut out).unwrap();
        assert_eq!(out, ENVELOPE_BYTES);
        assert_eq!(envelope().buffer_len(), ENVELOPE_LEN);

        let mut bcast = ENVELOPE_BYTES;
        bcast[..6].fill(0xff);
        let e = Envelope::new_checked(&bcast[..]).unwrap();
        assert!(EnvelopeRepr::parse(&e).unwrap().is_broadcast());
    }

    #[test]
    fn envelope_refusals() {
        for n in 0..ENVELOPE_LEN {
            assert_eq!(
                Envelope::new_checked(&ENVELOPE_BYTES[..n]).unwrap_err(),
                Error::Truncated {
                    needed: ENVELOPE_LEN,
                    available: n
                }
            );
        }
        let mut flagged = ENVELOPE_BYTES;
        flagged[13] = 0x40;
        assert_eq!(
            Envelope::new_checked(&flagged[..]).unwrap_err(),
            Error::BadEnvelopeFlags(0x40)
        );
        assert_eq!(
            EnvelopeRepr::parse(&Envelope::new_unchecked(&flagged[..])).unwrap_err(),
            Error::BadEnvelopeFlags(0x40)
        );
        assert!(matches!(
            envelope().emit(&mut [0u8; ENVELOPE_LEN - 1]),
            Err(Error::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn frame_payload_round_trip_fixed_bytes() {
        // With a virtio-net header.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&VNET_BYTES);
        bytes.extend_from_slice(&ENVELOPE_BYTES);
        bytes.extend_from_slice(&ETH);
        let f = FrameRepr::parse(FRAME_FLAG_VNET_HDR, &bytes).unwrap();
        assert_eq!(
            f,
            FrameRepr {
                vnet: Some(vnet()),
                envelope: envelope(),
                frame: &ETH
            }
        );
        assert_eq!(
            (f.flags(), f.head_len()),
            (FRAME_FLAG_VNET_HDR, FRAME_HEAD_MAX)
        );
        assert_eq!(f.buffer_len(), bytes.len());
        let mut out = vec![0u8; bytes.len()];
        assert_eq!(f.emit(&mut out), Ok(bytes.len()));
        assert_eq!(out, bytes);
        let mut head = [0u8; FRAME_HEAD_MAX];
        assert_eq!(f.emit_head(&mut head), Ok(FRAME_HEAD_MAX));
        assert_eq!(head[..], bytes[..FRAME_HEAD_MAX]);

        // Without.
        let plain = &bytes[VNET_HDR_LEN..];
        let f = FrameRepr::parse(0, plain).unwrap();
        assert_eq!((f.vnet, f.envelope, f.frame), (None, envelope(), &ETH[..]));
        assert_eq!((f.flags(), f.head_len()), (0, ENVELOPE_LEN));
        let mut out = vec![0u8; plain.len()];
        assert_eq!(f.emit(&mut out), Ok(plain.len()));
        assert_eq!(out, plain);
        assert!(matches!(
            f.emit(&mut out[..plain.len() - 1]),
            Err(Error::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn malformed_frame_payloads_are_errors() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&VNET_BYTES);
        bytes.extend_from_slice(&ENVELOPE_BYTES);
        bytes.extend_from_slice(&ETH[..ETHERNET_HEADER_LEN]);
        assert!(FrameRepr::parse(FRAME_FLAG_VNET_HDR, &bytes).is_ok());
        assert_eq!(
            FrameRepr::parse(0x80 | FRAME_FLAG_VNET_HDR, &bytes),
            Err(Error::BadFrameFlags(0x81))
        );
        // One byte short of an Ethernet header.
        assert_eq!(
            FrameRepr::parse(FRAME_FLAG_VNET_HDR, &bytes[..bytes.len() - 1]),
            Err(Error::FrameTooShort(ETHERNET_HEADER_LEN - 1))
        );
        // Every truncation is an error, never a panic.
        for n in 0..bytes.len() {
            assert!(
                FrameRepr::parse(FRAME_FLAG_VNET_HDR, &bytes[..n]).is_err(),
                "{n}"
            );
        }
        let plain = &bytes[VNET_HDR_LEN..];
        for n in 0..plain.len() {
            assert!(FrameRepr::parse(0, &plain[..n]).is_err(), "{n}");
        }
        // An envelope with a flag set.
        let mut flagged = bytes.clone();
        flagged[VNET_HDR_LEN + 13] = 1;
        assert_eq!(
            FrameRepr::parse(FRAME_FLAG_VNET_HDR, &flagged),
            Err(Error::BadEnvelopeFlags(1))
        );
    }

    #[test]
    fn largest_whole_frame_fills_the_body() {
        // A 1400-byte body carries a 1372-byte frame with vnet header and envelope.
        assert_eq!(max_frame_in_body(1400), 1400 - 4 - 24);
        assert_eq!(max_frame_in_body(10), 0);
    }
}
