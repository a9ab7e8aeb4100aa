//! Peer names: the 48-bit identity of a router, shown MAC-style as Weave Net does
//! (`ce:31:e0:06:45:1a`).

use std::fmt;
use std::str::FromStr;

/// A peer's stable name: 48 bits, printed as six colon-separated hex bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PeerName(pub [u8; 6]);

impl PeerName {
    /// The name as a `u64` (upper 16 bits zero), convenient as a compact key.
    pub fn to_u64(self) -> u64 {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&self.0);
        u64::from_be_bytes(b)
    }

    /// The name whose lower 48 bits are `v` (upper bits are ignored).
    pub fn from_u64(v: u64) -> Self {
        let b = v.to_be_bytes();
        let mut n = [0u8; 6];
        n.copy_from_slice(&b[2..]);
        PeerName(n)
    }

    /// Whether this name may name a peer: not all zeros (the unset name) and not all ones
    /// (the broadcast name, which the mesh uses to address every peer at once).
    pub fn check(self) -> Result<PeerName, InvalidPeerName> {
        if self.0 == [0; 6] {
            return Err(InvalidPeerName { name: self, kind: "zero" });
        }
        if self.0 == [0xff; 6] {
            return Err(InvalidPeerName { name: self, kind: "broadcast" });
        }
        Ok(self)
    }
}

/// A name that no peer may have (see [`PeerName::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{name} is the {kind} name, which no peer may have")]
pub struct InvalidPeerName {
    /// The name.
    pub name: PeerName,
    /// `zero` or `broadcast`.
    pub kind: &'static str,
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error for a string that is not six colon-separated hex bytes.
#[derive(Debug, thiserror::Error)]
#[error("invalid peer name {0:?}: expected six hex bytes separated by ':' (like ce:31:e0:06:45:1a)")]
pub struct ParsePeerNameError(String);

impl FromStr for PeerName {
    type Err = ParsePeerNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePeerNameError(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(PeerName(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_text_and_u64() {
        let n: PeerName = "ce:31:e0:06:45:1a".parse().unwrap();
        assert_eq!(n.to_string(), "ce:31:e0:06:45:1a");
        assert_eq!(PeerName::from_u64(n.to_u64()), n);
        assert_eq!(n.to_u64(), 0xce31_e006_451a);
    }

    #[test]
    fn zero_and_broadcast_names_are_no_peer_names() {
        for s in ["00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"] {
            let n: PeerName = s.parse().unwrap();
            let e = n.check().unwrap_err();
            assert!(e.to_string().starts_with(s), "{e}");
        }
        let e = PeerName([0xff; 6]).check().unwrap_err();
        assert_eq!(e.kind, "broadcast");
        for s in ["ce:31:e0:06:45:1a", "00:00:00:00:00:01", "ff:ff:ff:ff:ff:fe"] {
            let n: PeerName = s.parse().unwrap();
            assert_eq!(n.check(), Ok(n), "{s}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for s in ["", "ce:31:e0:06:45", "ce:31:e0:06:45:1a:00", "ce:31:e0:06:45:1", "zz:31:e0:06:45:1a"] {
            assert!(s.parse::<PeerName>().is_err(), "{s}");
        }
    }
}
