//! The gossip message wire format (format version 1), a view over bytes.
//!
//! All integers are big-endian.
//!
//! ```text
//! message  = format:u8 (=1) kind:u8 (1 update, 2 full state) count:u16 entry*count
//! entry    = name:[6] incarnation:u64 version:u64 caps:u8 nick_len:u8 nick:[nick_len] (UTF-8)
//!            conn_count:u16 conn*conn_count
//! conn     = remote:[6] flags:u8 port:u16 addr:[4] (IPv4) | addr:[16] (IPv6, flag bit 2)
//! caps     = bit 0 sleeve, bit 1 fastpath, bit 2 encryption
//! flags    = bit 0 outbound (else inbound), bit 1 established, bit 2 IPv6
//! ```
//!
//! Unknown format versions, kinds and set reserved bits are refused, as are truncated messages
//! and trailing bytes. [`GossipPacket::new_checked`] walks the whole message, so after it no
//! accessor or iterator can panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::peer::PeerName;

use super::{Capabilities, Connection, Direction, PeerEntry};

/// The only gossip format version this code speaks.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the message header.
pub const HEADER_LEN: usize = 4;
/// Length of an entry without its nickname and connections.
const ENTRY_FIXED_LEN: usize = 6 + 8 + 8 + 1 + 1 + 2;
/// Length of a connection without its address.
const CONN_FIXED_LEN: usize = 6 + 1 + 2;

const CAP_SLEEVE: u8 = 1 << 0;
const CAP_FASTPATH: u8 = 1 << 1;
const CAP_ENCRYPTION: u8 = 1 << 2;
const CAP_ALL: u8 = CAP_SLEEVE | CAP_FASTPATH | CAP_ENCRYPTION;

const FLAG_OUTBOUND: u8 = 1 << 0;
const FLAG_ESTABLISHED: u8 = 1 << 1;
const FLAG_IPV6: u8 = 1 << 2;
const FLAG_ALL: u8 = FLAG_OUTBOUND | FLAG_ESTABLISHED | FLAG_IPV6;

/// Why a gossip message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The message ended before a field it announced.
    #[error("gossip message truncated: needed {needed} bytes at offset {offset}, have {len}")]
    Truncated {
        /// Where the missing field starts.
        offset: usize,
        /// How many bytes the field needs.
        needed: usize,
        /// Total message length.
        len: usize,
    },
    /// The format version byte is not one this code speaks.
    #[error(
        "gossip format version {0} is not supported (this peer speaks version {FORMAT_VERSION})"
    )]
    UnknownVersion(u8),
    /// The message kind byte is unknown.
    #[error("unknown gossip message kind {0}")]
    UnknownKind(u8),
    /// An entry has capability bits this version does not define.
    #[error("gossip entry for {peer} has reserved capability bits set ({bits:#04x})")]
    ReservedCapabilities {
        /// The entry's peer.
        peer: PeerName,
        /// The capability byte.
        bits: u8,
    },
    /// A connection has flag bits this version does not define.
    #[error("connection of {peer} has reserved flag bits set ({bits:#04x})")]
    ReservedFlags {
        /// The entry's peer.
        peer: PeerName,
        /// The flag byte.
        bits: u8,
    },
    /// A nickname is not UTF-8.
    #[error("nickname of {peer} is not UTF-8")]
    Nickname {
        /// The entry's peer.
        peer: PeerName,
        /// The decoding failure.
        #[source]
        source: std::str::Utf8Error,
    },
    /// Bytes follow the last announced entry.
    #[error("{0} trailing bytes after the last gossip entry")]
    TrailingBytes(usize),
}

/// What a gossip message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Only entries that changed recently.
    Update,
    /// (Part of) the sender's whole table.
    Full,
}

impl MessageKind {
    fn to_byte(self) -> u8 {
        match self {
            MessageKind::Update => 1,
            MessageKind::Full => 2,
        }
    }

    fn from_byte(b: u8) -> Result<Self, WireError> {
        match b {
            1 => Ok(MessageKind::Update),
            2 => Ok(MessageKind::Full),
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

/// A read-only view of a gossip message.
#[derive(Debug, Clone)]
pub struct GossipPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GossipPacket<T> {
    /// Wraps bytes after checking the whole message is well formed.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = GossipPacket { buffer };
        packet.check()?;
        Ok(packet)
    }

    fn check(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        let mut r = Reader { b, off: 0 };
        let header = r.take(HEADER_LEN)?;
        if header[0] != FORMAT_VERSION {
            return Err(WireError::UnknownVersion(header[0]));
        }
        MessageKind::from_byte(header[1])?;
        let count = u16::from_be_bytes([header[2], header[3]]);
        for _ in 0..count {
            walk_entry(&mut r)?;
        }
        if r.off != b.len() {
            return Err(WireError::TrailingBytes(b.len() - r.off));
        }
        Ok(())
    }

    /// The message kind.
    pub fn kind(&self) -> MessageKind {
        // Checked in `new_checked`.
        MessageKind::from_byte(self.buffer.as_ref()[1]).unwrap_or(MessageKind::Update)
    }

    /// Number of entries.
    pub fn entry_count(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }

    /// The entries, decoded one by one.
    pub fn entries(&self) -> Entries<'_> {
        Entries {
            b: self.buffer.as_ref(),
            off: HEADER_LEN,
            left: self.entry_count(),
        }
    }
}

/// Iterator over the entries of a checked [`GossipPacket`].
#[derive(Debug)]
pub struct Entries<'a> {
    b: &'a [u8],
    off: usize,
    left: u16,
}

impl<'a> Iterator for Entries<'a> {
    type Item = EntryView<'a>;

    fn next(&mut self) -> Option<EntryView<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The message was walked by `check`: the entry is whole.
        let start = self.off;
        let mut r = Reader {
            b: self.b,
            off: start,
        };
        walk_entry(&mut r).ok()?;
        self.off = r.off;
        Some(EntryView {
            b: &self.b[start..r.off],
        })
    }
}

/// One entry of a checked message; reading its name and stamp allocates nothing.
#[derive(Clone, Copy, Debug)]
pub struct EntryView<'a> {
    b: &'a [u8],
}

impl EntryView<'_> {
    /// The entry's peer.
    pub fn name(&self) -> PeerName {
        name_at(self.b, 0)
    }

    /// `(incarnation, version)`.
    pub fn stamp(&self) -> (u64, u64) {
        (u64_at(self.b, 6), u64_at(self.b, 14))
    }

    /// The decoded entry.
    pub fn to_entry(&self) -> PeerEntry {
        let mut r = Reader { b: self.b, off: 0 };
        // The view covers one checked entry: decoding cannot fail.
        read_entry(&mut r).unwrap_or_else(|_| PeerEntry {
            name: self.name(),
            nickname: String::new(),
            incarnation: 0,
            version: 0,
            capabilities: Capabilities::default(),
            connections: Vec::new(),
        })
    }
}

/// Checks one entry and moves past it, allocating nothing.
fn walk_entry(r: &mut Reader<'_>) -> Result<(), WireError> {
    let fixed = r.take(6 + 8 + 8 + 2)?;
    let peer = name_at(fixed, 0);
    let caps = fixed[22];
    if caps & !CAP_ALL != 0 {
        return Err(WireError::ReservedCapabilities { peer, bits: caps });
    }
    let nick = r.take(fixed[23] as usize)?;
    std::str::from_utf8(nick).map_err(|source| WireError::Nickname { peer, source })?;
    let n = r.take(2)?;
    for _ in 0..u16::from_be_bytes([n[0], n[1]]) {
        let c = r.take(CONN_FIXED_LEN)?;
        let flags = c[6];
        if flags & !FLAG_ALL != 0 {
            return Err(WireError::ReservedFlags { peer, bits: flags });
        }
        r.take(if flags & FLAG_IPV6 != 0 { 16 } else { 4 })?;
    }
    Ok(())
}

fn read_entry(r: &mut Reader<'_>) -> Result<PeerEntry, WireError> {
    let fixed = r.take(6 + 8 + 8 + 2)?;
    let name = name_at(fixed, 0);
    let incarnation = u64_at(fixed, 6);
    let version = u64_at(fixed, 14);
    let caps = fixed[22];
    let nick = r.take(fixed[23] as usize)?;
    let nickname =
        std::str::from_utf8(nick).map_err(|source| WireError::Nickname { peer: name, source })?;
    let n = r.take(2)?;
    let count = u16::from_be_bytes([n[0], n[1]]);
    let mut connections = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let c = r.take(CONN_FIXED_LEN)?;
        let flags = c[6];
        let port = u16::from_be_bytes([c[7], c[8]]);
        let ip = if flags & FLAG_IPV6 != 0 {
            let a = r.take(16)?;
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            let a = r.take(4)?;
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        };
        connections.push(Connection {
            remote: name_at(c, 0),
            addr: SocketAddr::new(ip, port),
            direction: if flags & FLAG_OUTBOUND != 0 {
                Direction::Outbound
            } else {
                Direction::Inbound
            },
            established: flags & FLAG_ESTABLISHED != 0,
        });
    }
    Ok(PeerEntry {
        name,
        nickname: nickname.to_owned(),
        incarnation,
        version,
        capabilities: Capabilities {
            sleeve: caps & CAP_SLEEVE != 0,
            fastpath: caps & CAP_FASTPATH != 0,
            encryption: caps & CAP_ENCRYPTION != 0,
        },
        connections,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    off: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .off
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(WireError::Truncated {
                offset: self.off,
                needed: n,
                len: self.b.len(),
            })?;
        let s = &self.b[self.off..end];
        self.off = end;
        Ok(s)
    }
}

fn name_at(b: &[u8], at: usize) -> PeerName {
    let mut n = [0u8; 6];
    n.copy_from_slice(&b[at..at + 6]);
    PeerName(n)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

/// A decoded gossip message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GossipRepr {
    /// Update or full state.
    pub kind: MessageKind,
    /// The entries carried.
    pub entries: Vec<PeerEntry>,
}

impl GossipRepr {
    /// Decodes a checked message.
    pub fn parse<T: AsRef<[u8]>>(packet: &GossipPacket<T>) -> GossipRepr {
        GossipRepr {
            kind: packet.kind(),
            entries: packet.entries().map(|e| e.to_entry()).collect(),
        }
    }

    /// Encoded length.
    ///
    /// The caller guarantees at most `u16::MAX` entries, each with at most `u16::MAX`
    /// connections and a nickname of at most 255 bytes (what [`emit`](Self::emit) can encode).
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.entries.iter().map(entry_len).sum::<usize>()
    }

    /// Appends the encoding to `out`, under the same guarantees as [`buffer_len`](Self::buffer_len).
    pub fn emit(&self, out: &mut Vec<u8>) {
        emit_header(self.kind, self.entries.len() as u16, out);
        for e in &self.entries {
            emit_entry(e, out);
        }
    }
}

/// Encoded length of one entry.
pub(crate) fn entry_len(e: &PeerEntry) -> usize {
    ENTRY_FIXED_LEN
        + e.nickname.len().min(255)
        + e.connections
            .iter()
            .map(|c| CONN_FIXED_LEN + if c.addr.is_ipv6() { 16 } else { 4 })
            .sum::<usize>()
}

pub(crate) fn emit_header(kind: MessageKind, count: u16, out: &mut Vec<u8>) {
    out.push(FORMAT_VERSION);
    out.push(kind.to_byte());
    out.extend_from_slice(&count.to_be_bytes());
}

pub(crate) fn emit_entry(e: &PeerEntry, out: &mut Vec<u8>) {
    out.extend_from_slice(&e.name.0);
    out.extend_from_slice(&e.incarnation.to_be_bytes());
    out.extend_from_slice(&e.version.to_be_bytes());
    let c = e.capabilities;
    out.push(
        (if c.sleeve { CAP_SLEEVE } else { 0 })
            | (if c.fastpath { CAP_FASTPATH } else { 0 })
            | (if c.encryption { CAP_ENCRYPTION } else { 0 }),
    );
    let nick = &e.nickname.as_bytes()[..e.nickname.len().min(255)];
    out.push(nick.len() as u8);
    out.extend_from_slice(nick);
    let conns = &e.connections[..e.connections.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(conns.len() as u16).to_be_bytes());
    for c in conns {
        out.extend_from_slice(&c.remote.0);
        let mut flags = 0;
        if c.direction == Direction::Outbound {
            flags |= FLAG_OUTBOUND;
        }
        if c.established {
            flags |= FLAG_ESTABLISHED;
        }
        if c.addr.is_ipv6() {
            flags |= FLAG_IPV6;
        }
        out.push(flags);
        out.extend_from_slice(&c.addr.port().to_be_bytes());
        match c.addr.ip() {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One update message with one entry: peer 0e:00:00:00:00:01 "a", incarnation 2, version 3,
    /// sleeve + encryption, two connections (outbound established over IPv4, inbound pending
    /// over IPv6).
    const UPDATE: &[u8] = &[
        1, 1, 0, 1, // format 1, update, 1 entry
        0x0e, 0, 0, 0, 0, 1, // name
        0, 0, 0, 0, 0, 0, 0, 2, // incarnation
        0, 0, 0, 0, 0, 0, 0, 3,     // version
        0b101, // sleeve | encryption
        1, b'a', // nickname
        0, 2, // two connections
        0x0e, 0, 0, 0, 0, 2, 0b011, 0x1a, 0x7f, 10, 0, 0,
        2, // outbound established 10.0.0.2:6783
        0x0e, 0, 0, 0, 0, 3, 0b100, 0x1a, 0x7f, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        3, // inbound, not established, [fd00::3]:6783
    ];

    fn update_repr() -> GossipRepr {
        GossipRepr {
            kind: MessageKind::Update,
            entries: vec![PeerEntry {
                name: PeerName([0x0e, 0, 0, 0, 0, 1]),
                nickname: "a".into(),
                incarnation: 2,
                version: 3,
                capabilities: Capabilities {
                    sleeve: true,
                    fastpath: false,
                    encryption: true,
                },
                connections: vec![
                    Connection {
                        remote: PeerName([0x0e, 0, 0, 0, 0, 2]),
                        addr: "10.0.0.2:6783".parse().unwrap(),
                        direction: Direction::Outbound,
                        established: true,
                    },
                    Connection {
                        remote: PeerName([0x0e, 0, 0, 0, 0, 3]),
                        addr: "[fd00::3]:6783".parse().unwrap(),
                        direction: Direction::Inbound,
                        established: false,
                    },
                ],
            }],
        }
    }

    #[test]
    fn parses_fixed_bytes() {
        let p = GossipPacket::new_checked(UPDATE).unwrap();
        assert_eq!(p.entry_count(), 1);
        assert_eq!(GossipRepr::parse(&p), update_repr());
    }

    #[test]
    fn emits_fixed_bytes() {
        let r = update_repr();
        let mut out = Vec::new();
        r.emit(&mut out);
        assert_eq!(out, UPDATE);
        assert_eq!(r.buffer_len(), UPDATE.len());
    }

    #[test]
    fn empty_full_state_round_trips() {
        let r = GossipRepr {
            kind: MessageKind::Full,
            entries: vec![],
        };
        let mut out = Vec::new();
        r.emit(&mut out);
        assert_eq!(out, [1, 2, 0, 0]);
        assert_eq!(
            GossipRepr::parse(&GossipPacket::new_checked(&out[..]).unwrap()),
            r
        );
    }

    #[test]
    fn refuses_malformed() {
        let with = |i: usize, v: u8| {
            let mut b = UPDATE.to_vec();
            b[i] = v;
            b
        };
        assert_eq!(
            GossipPacket::new_checked(with(0, 2)).unwrap_err(),
            WireError::UnknownVersion(2)
        );
        assert_eq!(
            GossipPacket::new_checked(with(1, 9)).unwrap_err(),
            WireError::UnknownKind(9)
        );
        assert!(matches!(
            GossipPacket::new_checked(with(26, 0x85)).unwrap_err(),
            WireError::ReservedCapabilities { bits: 0x85, .. }
        ));
        assert!(matches!(
            GossipPacket::new_checked(with(28, 0xff)).unwrap_err(),
            WireError::Nickname { .. }
        ));
        assert!(matches!(
            GossipPacket::new_checked(with(37, 0x08)).unwrap_err(),
            WireError::ReservedFlags { .. }
        ));
        for len in 0..UPDATE.len() {
            assert!(
                matches!(
                    GossipPacket::new_checked(&UPDATE[..len]).unwrap_err(),
                    WireError::Truncated { .. }
                ),
                "len {len}"
            );
        }
        let mut long = UPDATE.to_vec();
        long.push(0);
        assert_eq!(
            GossipPacket::new_checked(long).unwrap_err(),
            WireError::TrailingBytes(1)
        );
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Ok(p) = GossipPacket::new_checked(&bytes[..]) {
                let r = GossipRepr::parse(&p);
                let mut out = Vec::new();
                r.emit(&mut out);
                proptest::prop_assert_eq!(out, bytes);
            }
        }

        #[test]
        fn mutated_valid_messages_never_panic(i in 0usize..UPDATE.len(), v in proptest::num::u8::ANY, cut in 0usize..8) {
            let mut b = UPDATE.to_vec();
            b[i] = v;
            b.truncate(b.len() - cut);
            if let Ok(p) = GossipPacket::new_checked(&b[..]) {
                proptest::prop_assert_eq!(p.entries().count(), p.entry_count() as usize);
            }
        }
    }
}
