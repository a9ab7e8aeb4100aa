//! The envelope the router puts before every Ethernet frame it sends over the sleeve, so frames
//! can be relayed across peers that are not directly connected (as Weave does):
//!
//! ```text
//! 0      6      12   13   14
//! | dst  | src  |hops|flags| virtio-net header (12) | Ethernet frame ...
//! ```
//!
//! `dst` is the destination peer, or ff:ff:ff:ff:ff:ff for a broadcast along `src`'s tree; `src`
//! is the origin peer; `hops` counts down at each relay and the frame is dropped at zero, so a
//! transient routing loop cannot circulate a frame forever.

use weft_mesh::peer::PeerName;

/// Length of the envelope.
pub const LEN: usize = 14;
/// Hops a frame may take (more than any sane mesh diameter).
pub const MAX_HOPS: u8 = 16;
/// `dst` of a broadcast.
pub const BROADCAST: PeerName = PeerName([0xff; 6]);

/// Error for bytes too short to hold an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame envelope truncated: {0} bytes, need {LEN}")]
pub struct Truncated(pub usize);

/// The parsed envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Destination peer, or [`BROADCAST`].
    pub dst: PeerName,
    /// Origin peer.
    pub src: PeerName,
    /// Relays left.
    pub hops: u8,
}

impl Envelope {
    /// Parses the first [`LEN`] bytes.
    pub fn parse(buf: &[u8]) -> Result<Envelope, Truncated> {
        let b = buf.get(..LEN).ok_or(Truncated(buf.len()))?;
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&b[0..6]);
        src.copy_from_slice(&b[6..12]);
        Ok(Envelope { dst: PeerName(dst), src: PeerName(src), hops: b[12] })
    }

    /// Writes the envelope into the first [`LEN`] bytes of `buf` (callers keep headroom for it).
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..6].copy_from_slice(&self.dst.0);
        buf[6..12].copy_from_slice(&self.src.0);
        buf[12] = self.hops;
        buf[13] = 0;
    }

    /// Whether this is a broadcast.
    pub fn is_broadcast(&self) -> bool {
        self.dst == BROADCAST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_on_fixed_bytes() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0e, 1, 2, 3, 4, 5, 16, 0];
        let e = Envelope::parse(&bytes).unwrap();
        assert!(e.is_broadcast());
        assert_eq!((e.src, e.hops), (PeerName([0x0e, 1, 2, 3, 4, 5]), MAX_HOPS));
        let mut out = [0xaa; LEN];
        e.emit(&mut out);
        assert_eq!(out, bytes);
        for n in 0..LEN {
            assert_eq!(Envelope::parse(&bytes[..n]), Err(Truncated(n)));
        }
    }
}
