//! The fast-path heartbeat frame, a view over bytes and its parsed form.
//!
//! ```text
//! 0      6      12   14     18  19  20        26          42      50      58
//! | dst  | src  |type| magic|ver|flg| sender   | underlay   | nonce | echo  |
//! ```
//! EtherType [`ETHERTYPE`] (IEEE 802 local experimental), magic `wFHB`, version 1, flags 0,
//! sender's peer name (6 bytes), the sender's underlay address as it sends it (16 bytes, IPv4
//! mapped into IPv6), the sender's nonce for this heartbeat, and the last nonce it received
//! from the receiver (0: none yet). Integers are big-endian.
//!
//! Contract: [`Heartbeat::new_checked`] accepts only a whole frame of this layout (version 1);
//! after it no accessor panics. Bytes beyond [`FRAME_LEN`] (Ethernet padding) are ignored.

use std::net::{IpAddr, Ipv6Addr};

/// The heartbeat's EtherType: 0x88B5, IEEE 802 "local experimental 1".
pub const ETHERTYPE: u16 = 0x88b5;
/// The magic after the Ethernet header.
pub const MAGIC: [u8; 4] = *b"wFHB";
/// The layout's version.
pub const VERSION: u8 = 1;
/// The length of a heartbeat frame, Ethernet header included.
pub const FRAME_LEN: usize = 58;

const DST: std::ops::Range<usize> = 0..6;
const SRC: std::ops::Range<usize> = 6..12;
const TYPE: std::ops::Range<usize> = 12..14;
const MAGIC_AT: std::ops::Range<usize> = 14..18;
const VER: usize = 18;
const FLAGS: usize = 19;
const SENDER: std::ops::Range<usize> = 20..26;
const UNDERLAY: std::ops::Range<usize> = 26..42;
const NONCE: std::ops::Range<usize> = 42..50;
const ECHO: std::ops::Range<usize> = 50..58;

/// The heartbeat MAC of the peer named `name`: where its heartbeats are addressed. A locally
/// administered unicast address (first byte 0xfa) carrying the name's last five bytes, the
/// first folded into the last.
pub fn heartbeat_mac(name: [u8; 6]) -> [u8; 6] {
    [0xfa, name[1], name[2], name[3], name[4], name[5] ^ name[0]]
}

/// Why bytes are not a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than a heartbeat frame.
    #[error("heartbeat of {0} bytes, fewer than {FRAME_LEN}")]
    Truncated(usize),
    /// Another EtherType.
    #[error("EtherType {0:#06x} is not the heartbeat's")]
    EtherType(u16),
    /// The magic does not match.
    #[error("no heartbeat magic")]
    Magic,
    /// A version this side does not speak.
    #[error("heartbeat version {0}, this router speaks {VERSION}")]
    Version(u8),
}

/// A view of a heartbeat frame.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Heartbeat<T> {
    /// Checks that `buf` holds a heartbeat of this version.
    pub fn new_checked(buf: T) -> Result<Heartbeat<T>, WireError> {
        let b = buf.as_ref();
        if b.len() < FRAME_LEN {
            return Err(WireError::Truncated(b.len()));
        }
        let t = u16::from_be_bytes([b[TYPE.start], b[TYPE.start + 1]]);
        if t != ETHERTYPE {
            return Err(WireError::EtherType(t));
        }
        if b[MAGIC_AT] != MAGIC {
            return Err(WireError::Magic);
        }
        if b[VER] != VERSION {
            return Err(WireError::Version(b[VER]));
        }
        Ok(Heartbeat { buf })
    }

    fn bytes<const N: usize>(&self, r: std::ops::Range<usize>) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf.as_ref()[r]);
        out
    }

    /// The destination MAC.
    pub fn dst(&self) -> [u8; 6] {
        self.bytes(DST)
    }

    /// The sender's peer name.
    pub fn sender(&self) -> [u8; 6] {
        self.bytes(SENDER)
    }

    /// The sender's underlay address.
    pub fn underlay(&self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.bytes::<16>(UNDERLAY));
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    }

    /// The sender's nonce.
    pub fn nonce(&self) -> u64 {
        u64::from_be_bytes(self.bytes(NONCE))
    }

    /// The last nonce the sender received from the receiver (0: none).
    pub fn echo(&self) -> u64 {
        u64::from_be_bytes(self.bytes(ECHO))
    }
}

/// A heartbeat's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatRepr {
    /// The receiver's heartbeat MAC.
    pub dst: [u8; 6],
    /// The sender's heartbeat MAC.
    pub src: [u8; 6],
    /// The sender's peer name.
    pub sender: [u8; 6],
    /// The sender's underlay address.
    pub underlay: IpAddr,
    /// This heartbeat's nonce (never 0).
    pub nonce: u64,
    /// The last nonce received from the receiver (0: none).
    pub echo: u64,
}

impl HeartbeatRepr {
    /// Parses a checked view.
    pub fn parse<T: AsRef<[u8]>>(h: &Heartbeat<T>) -> HeartbeatRepr {
        HeartbeatRepr { dst: h.dst(), src: h.bytes(SRC), sender: h.sender(), underlay: h.underlay(), nonce: h.nonce(), echo: h.echo() }
    }

    /// The frame's length.
    pub fn buffer_len(&self) -> usize {
        FRAME_LEN
    }

    /// Writes the frame into `buf[..FRAME_LEN]`; `buf` must be at least that long.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..FRAME_LEN];
        b[DST].copy_from_slice(&self.dst);
        b[SRC].copy_from_slice(&self.src);
        b[TYPE].copy_from_slice(&ETHERTYPE.to_be_bytes());
        b[MAGIC_AT].copy_from_slice(&MAGIC);
        b[VER] = VERSION;
        b[FLAGS] = 0;
        b[SENDER].copy_from_slice(&self.sender);
        let v6 = match self.underlay {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        };
        b[UNDERLAY].copy_from_slice(&v6.octets());
        b[NONCE].copy_from_slice(&self.nonce.to_be_bytes());
        b[ECHO].copy_from_slice(&self.echo.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const FRAME: [u8; FRAME_LEN] = [
        0xfa, 0, 0, 0, 0, 0x0c, // dst
        0xfa, 0, 0, 0, 0, 0x0b, // src
        0x88, 0xb5, b'w', b'F', b'H', b'B', 1, 0, // type, magic, version, flags
        0x0e, 0, 0, 0, 0, 5, // sender
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 11, // underlay
        0, 0, 0, 0, 0, 0, 1, 2, // nonce
        0, 0, 0, 0, 0, 0, 0, 9, // echo
    ];

    fn repr() -> HeartbeatRepr {
        HeartbeatRepr {
            dst: [0xfa, 0, 0, 0, 0, 0x0c],
            src: [0xfa, 0, 0, 0, 0, 0x0b],
            sender: [0x0e, 0, 0, 0, 0, 5],
            underlay: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11)),
            nonce: 0x102,
            echo: 9,
        }
    }

    #[test]
    fn parses_and_emits_the_fixed_frame() {
        let h = Heartbeat::new_checked(&FRAME[..]).unwrap();
        assert_eq!(HeartbeatRepr::parse(&h), repr());
        let mut out = [0u8; FRAME_LEN];
        repr().emit(&mut out);
        assert_eq!(out, FRAME);
        // Ethernet padding is ignored.
        let mut padded = FRAME.to_vec();
        padded.extend([0; 2]);
        assert_eq!(HeartbeatRepr::parse(&Heartbeat::new_checked(&padded[..]).unwrap()), repr());
    }

    #[test]
    fn refuses_what_is_not_a_heartbeat() {
        assert_eq!(Heartbeat::new_checked(&FRAME[..57]).unwrap_err(), WireError::Truncated(57));
        let mut f = FRAME;
        f[12] = 0x08;
        assert!(matches!(Heartbeat::new_checked(&f[..]), Err(WireError::EtherType(_))));
        let mut f = FRAME;
        f[15] = b'x';
        assert_eq!(Heartbeat::new_checked(&f[..]).unwrap_err(), WireError::Magic);
        let mut f = FRAME;
        f[18] = 2;
        assert_eq!(Heartbeat::new_checked(&f[..]).unwrap_err(), WireError::Version(2));
        // No prefix of a frame panics.
        for n in 0..FRAME_LEN {
            assert!(Heartbeat::new_checked(&FRAME[..n]).is_err());
        }
    }

    #[test]
    fn heartbeat_macs_are_local_unicast_and_differ_by_name() {
        let a = heartbeat_mac([0x0e, 1, 2, 3, 4, 5]);
        let b = heartbeat_mac([0x0e, 1, 2, 3, 4, 6]);
        assert_ne!(a, b);
        assert_eq!(a[0] & 0x03, 0x02, "locally administered, unicast");
    }
}
