//! Ethernet frame view: the two addresses and the EtherType, over bytes that came from a pod or
//! from the network.

use std::fmt;

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Group (multicast or broadcast) address: the I/G bit is set.
    pub fn is_group(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// IEEE 802.1D link-local control group 01:80:c2:00:00:0X (STP, pause, LACP, LLDP, 802.1X):
    /// frames to these never leave the link they were sent on.
    pub fn is_link_local_control(self) -> bool {
        self.0[..5] == [0x01, 0x80, 0xc2, 0x00, 0x00] && self.0[5] & 0xf0 == 0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Length of the Ethernet header (no VLAN tag).
pub const HEADER_LEN: usize = 14;

/// Error for bytes too short to be an Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("truncated Ethernet frame: {0} bytes, need at least {HEADER_LEN}")]
pub struct Truncated(pub usize);

/// A view of an Ethernet frame. After [`Frame::new_checked`], no accessor panics.
#[derive(Debug, Clone, Copy)]
pub struct Frame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps `buf` after checking it holds at least a header.
    pub fn new_checked(buf: T) -> Result<Self, Truncated> {
        let len = buf.as_ref().len();
        if len < HEADER_LEN {
            return Err(Truncated(len));
        }
        Ok(Frame { buf })
    }

    fn mac_at(&self, at: usize) -> Mac {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.buf.as_ref()[at..at + 6]);
        Mac(m)
    }

    /// Destination address.
    pub fn dst(&self) -> Mac {
        self.mac_at(0)
    }

    /// Source address.
    pub fn src(&self) -> Mac {
        self.mac_at(6)
    }

    /// EtherType (or length, for 802.3 frames).
    pub fn ethertype(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[12], b[13]])
    }

    /// What follows the header.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_a_fixed_frame() {
        let bytes = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0x0a, 0x20, 0x01, 0x0a, 0x08, 0x06, 0xaa,
        ];
        let f = Frame::new_checked(&bytes[..]).unwrap();
        assert_eq!(f.dst(), Mac::BROADCAST);
        assert_eq!(f.src().to_string(), "02:42:0a:20:01:0a");
        assert_eq!(f.ethertype(), 0x0806);
        assert_eq!(f.payload(), &[0xaa]);
        assert!(f.dst().is_group() && !f.src().is_group());
    }

    #[test]
    fn short_frames_are_refused_not_panicked_on() {
        for n in 0..HEADER_LEN {
            assert_eq!(Frame::new_checked(&[0u8; 20][..n]).unwrap_err(), Truncated(n));
        }
    }

    #[test]
    fn link_local_control_group() {
        assert!(Mac([0x01, 0x80, 0xc2, 0, 0, 0x00]).is_link_local_control()); // STP
        assert!(Mac([0x01, 0x80, 0xc2, 0, 0, 0x0e]).is_link_local_control()); // LLDP
        assert!(!Mac([0x01, 0x80, 0xc2, 0, 0, 0x10]).is_link_local_control());
        assert!(!Mac::BROADCAST.is_link_local_control());
    }
}
