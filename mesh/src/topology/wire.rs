//! The gossip message wire format (format version 2), a view over bytes.
//!
//! All integers are big-endian.
//!
//! ```text
//! message  = format:u8 (=2) kind:u8 body
//! kind 1, update:  count:u16 entry*count                        entries that changed
//! kind 2, digest:  peers:u32 digest:u64                          a summary of the whole table
//! kind 3, buckets: peers:u32 order:u8 sum:u64*(2^order)          per-bucket summaries
//! kind 4, repair:  order:u8 nb:u16 bucket:u16*nb count:u16 entry*count
//!                  all of the sender's entries in the listed buckets (ascending, each < 2^order)
//! entry    = name:[6] incarnation:u64 version:u64 caps:u8 nick_len:u8 nick:[nick_len] (UTF-8)
//!            conn_count:u16 conn*conn_count
//! conn     = remote:[6] flags:u8 port:u16 addr:[4] (IPv4) | addr:[16] (IPv6, flag bit 2)
//! caps     = bit 0 sleeve, bit 1 fastpath, bit 2 encryption
//! flags    = bit 0 outbound (else inbound), bit 1 established, bit 2 IPv6
//! ```
//!
//! A digest is the wrapping sum of [`entry_digest`](super::entry_digest) over a table; a
//! bucket's sum is the same over the entries whose [`bucket_of`] is that bucket, with
//! `2^order` buckets, `order` at most [`MAX_BUCKET_ORDER`].
//!
//! Unknown format versions, kinds and set reserved bits are refused, as are truncated messages,
//! bucket orders above the maximum, bucket lists not strictly ascending or out of range, and
//! trailing bytes. [`GossipPacket::new_checked`] walks the whole message, so after it no
//! accessor or iterator can panic. (Format 1 sent the whole table on a timer; it is refused.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::peer::PeerName;

use super::{Capabilities, Connection, Direction, PeerEntry};

/// The only gossip format version this code speaks.
pub const FORMAT_VERSION: u8 = 2;
/// Length of an update message's header (format, kind, count).
pub const HEADER_LEN: usize = 4;
/// Length of a digest message.
pub const DIGEST_LEN: usize = 2 + 4 + 8;
/// The largest bucket order: at most 1024 buckets.
pub const MAX_BUCKET_ORDER: u8 = 10;
/// Length of a repair message without its bucket list and entries.
pub const REPAIR_FIXED_LEN: usize = 2 + 1 + 2 + 2;
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

/// The bucket of `name` among `2^order` buckets (`order` at most [`MAX_BUCKET_ORDER`]): the top
/// bits of a hash of the name, so that a coarser order merges neighbouring buckets.
pub fn bucket_of(name: PeerName, order: u8) -> u16 {
    if order == 0 {
        return 0;
    }
    let h = super::mix(name.to_u64() ^ 0x3c6e_f372_fe94_f82b);
    (h >> (64 - u32::from(order.min(MAX_BUCKET_ORDER)))) as u16
}

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
    /// A bucket order above [`MAX_BUCKET_ORDER`].
    #[error("gossip bucket order {0} is above the maximum {MAX_BUCKET_ORDER}")]
    BucketOrder(u8),
    /// A repair's bucket list is not strictly ascending or names a bucket out of range.
    #[error("gossip repair lists bucket {bucket} out of order or range (order {order})")]
    BucketList {
        /// The offending bucket number.
        bucket: u16,
        /// The message's bucket order.
        order: u8,
    },
    /// Bytes follow the last announced field.
    #[error("{0} trailing bytes after the end of the gossip message")]
    TrailingBytes(usize),
}

/// What a gossip message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Entries that changed.
    Update,
    /// A summary of the sender's table.
    Digest,
    /// Per-bucket summaries of the sender's table (its digest differed from ours).
    Buckets,
    /// All of the sender's entries in some buckets (their summaries differed).
    Repair,
}

impl MessageKind {
    fn to_byte(self) -> u8 {
        match self {
            MessageKind::Update => 1,
            MessageKind::Digest => 2,
            MessageKind::Buckets => 3,
            MessageKind::Repair => 4,
        }
    }

    fn from_byte(b: u8) -> Result<Self, WireError> {
        match b {
            1 => Ok(MessageKind::Update),
            2 => Ok(MessageKind::Digest),
            3 => Ok(MessageKind::Buckets),
            4 => Ok(MessageKind::Repair),
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

/// A read-only view of a gossip message.
#[derive(Debug, Clone)]
pub struct GossipPacket<T: AsRef<[u8]>> {
    buffer: T,
    kind: MessageKind,
    /// Where the entry count field is (update, repair).
    count_at: usize,
}

impl<T: AsRef<[u8]>> GossipPacket<T> {
    /// Wraps bytes after checking the whole message is well formed.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let (kind, count_at) = check(buffer.as_ref())?;
        Ok(GossipPacket {
            buffer,
            kind,
            count_at,
        })
    }

    /// The message kind.
    pub fn kind(&self) -> MessageKind {
        self.kind
    }

    /// Number of entries (0 for digests and buckets).
    pub fn entry_count(&self) -> u16 {
        match self.kind {
            MessageKind::Update | MessageKind::Repair => {
                let b = self.buffer.as_ref();
                u16::from_be_bytes([b[self.count_at], b[self.count_at + 1]])
            }
            MessageKind::Digest | MessageKind::Buckets => 0,
        }
    }

    /// The entries, decoded one by one (none for digests and buckets).
    pub fn entries(&self) -> Entries<'_> {
        Entries {
            b: self.buffer.as_ref(),
            off: self.count_at + 2,
            left: self.entry_count(),
        }
    }

    /// `(peers, digest)` of a digest or buckets message: the sender's table size and digest
    /// (for buckets: the table size and 0).
    pub fn summary(&self) -> Option<(u32, u64)> {
        let b = self.buffer.as_ref();
        match self.kind {
            MessageKind::Digest => Some((u32_at(b, 2), u64_at(b, 6))),
            MessageKind::Buckets => Some((u32_at(b, 2), 0)),
            _ => None,
        }
    }

    /// The bucket order of a buckets or repair message.
    pub fn order(&self) -> Option<u8> {
        let b = self.buffer.as_ref();
        match self.kind {
            MessageKind::Buckets => Some(b[6]),
            MessageKind::Repair => Some(b[2]),
            _ => None,
        }
    }

    /// The bucket sums of a buckets message, in bucket order (empty for other kinds).
    pub fn bucket_sums(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        let b = self.buffer.as_ref();
        let sums: &[u8] = match self.kind {
            MessageKind::Buckets => &b[7..],
            _ => &[],
        };
        sums.chunks_exact(8).map(|c| u64_at(c, 0))
    }

    /// The buckets a repair message covers, ascending (empty for other kinds).
    pub fn repair_buckets(&self) -> impl ExactSizeIterator<Item = u16> + '_ {
        let b = self.buffer.as_ref();
        let list: &[u8] = match self.kind {
            MessageKind::Repair => &b[5..self.count_at],
            _ => &[],
        };
        list.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
    }
}

/// Walks a whole message; returns its kind and where its entry count is.
fn check(b: &[u8]) -> Result<(MessageKind, usize), WireError> {
    let mut r = Reader { b, off: 0 };
    let header = r.take(2)?;
    if header[0] != FORMAT_VERSION {
        return Err(WireError::UnknownVersion(header[0]));
    }
    let kind = MessageKind::from_byte(header[1])?;
    let mut count_at = b.len();
    match kind {
        MessageKind::Update => {
            count_at = r.off;
            walk_entries(&mut r)?;
        }
        MessageKind::Digest => {
            r.take(4 + 8)?;
        }
        MessageKind::Buckets => {
            r.take(4)?;
            let order = r.take(1)?[0];
            if order > MAX_BUCKET_ORDER {
                return Err(WireError::BucketOrder(order));
            }
            r.take(8 << order)?;
        }
        MessageKind::Repair => {
            let order = r.take(1)?[0];
            if order > MAX_BUCKET_ORDER {
                return Err(WireError::BucketOrder(order));
            }
            let n = r.take(2)?;
            let n = u16::from_be_bytes([n[0], n[1]]);
            let mut last: Option<u16> = None;
            for _ in 0..n {
                let c = r.take(2)?;
                let bucket = u16::from_be_bytes([c[0], c[1]]);
                if u32::from(bucket) >= 1 << order || last.is_some_and(|l| bucket <= l) {
                    return Err(WireError::BucketList { bucket, order });
                }
                last = Some(bucket);
            }
            count_at = r.off;
            walk_entries(&mut r)?;
        }
    }
    if r.off != b.len() {
        return Err(WireError::TrailingBytes(b.len() - r.off));
    }
    Ok((kind, count_at))
}

fn walk_entries(r: &mut Reader<'_>) -> Result<(), WireError> {
    let n = r.take(2)?;
    for _ in 0..u16::from_be_bytes([n[0], n[1]]) {
        walk_entry(r)?;
    }
    Ok(())
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

    /// The entry's encoding.
    pub fn bytes(&self) -> &[u8] {
        self.b
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

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A decoded gossip message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GossipRepr {
    /// Entries that changed.
    Update(Vec<PeerEntry>),
    /// A summary of the sender's table.
    Digest {
        /// Entries in the table.
        peers: u32,
        /// The table's digest.
        digest: u64,
    },
    /// Per-bucket summaries.
    Buckets {
        /// Entries in the table.
        peers: u32,
        /// `2^order` buckets.
        order: u8,
        /// One sum per bucket.
        sums: Vec<u64>,
    },
    /// All of the sender's entries in the listed buckets.
    Repair {
        /// `2^order` buckets.
        order: u8,
        /// The buckets covered, ascending.
        buckets: Vec<u16>,
        /// The sender's entries in them.
        entries: Vec<PeerEntry>,
    },
}

impl GossipRepr {
    /// Decodes a checked message.
    pub fn parse<T: AsRef<[u8]>>(packet: &GossipPacket<T>) -> GossipRepr {
        let entries = || packet.entries().map(|e| e.to_entry()).collect();
        let order = packet.order().unwrap_or(0);
        match packet.kind() {
            MessageKind::Update => GossipRepr::Update(entries()),
            MessageKind::Digest => {
                let (peers, digest) = packet.summary().unwrap_or((0, 0));
                GossipRepr::Digest { peers, digest }
            }
            MessageKind::Buckets => GossipRepr::Buckets {
                peers: packet.summary().map_or(0, |s| s.0),
                order,
                sums: packet.bucket_sums().collect(),
            },
            MessageKind::Repair => GossipRepr::Repair {
                order,
                buckets: packet.repair_buckets().collect(),
                entries: entries(),
            },
        }
    }

    /// Encoded length.
    ///
    /// The caller guarantees what [`emit`](Self::emit) needs.
    pub fn buffer_len(&self) -> usize {
        let entries = |es: &[PeerEntry]| es.iter().map(entry_len).sum::<usize>();
        match self {
            GossipRepr::Update(es) => HEADER_LEN + entries(es),
            GossipRepr::Digest { .. } => DIGEST_LEN,
            GossipRepr::Buckets { sums, .. } => 2 + 4 + 1 + 8 * sums.len(),
            GossipRepr::Repair {
                buckets,
                entries: es,
                ..
            } => REPAIR_FIXED_LEN + 2 * buckets.len() + entries(es),
        }
    }

    /// Appends the encoding to `out`. The caller guarantees at most `u16::MAX` entries, each
    /// with at most `u16::MAX` connections and a nickname of at most 255 bytes; `2^order` sums
    /// for buckets; buckets ascending and below `2^order` for a repair; an order of at most
    /// [`MAX_BUCKET_ORDER`].
    pub fn emit(&self, out: &mut Vec<u8>) {
        match self {
            GossipRepr::Update(es) => {
                emit_header(MessageKind::Update, es.len() as u16, out);
                for e in es {
                    emit_entry(e, out);
                }
            }
            GossipRepr::Digest { peers, digest } => emit_digest(*peers, *digest, out),
            GossipRepr::Buckets { peers, order, sums } => emit_buckets(*peers, *order, sums, out),
            GossipRepr::Repair {
                order,
                buckets,
                entries,
            } => {
                emit_repair_head(*order, buckets, entries.len() as u16, out);
                for e in entries {
                    emit_entry(e, out);
                }
            }
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

pub(crate) fn emit_digest(peers: u32, digest: u64, out: &mut Vec<u8>) {
    out.push(FORMAT_VERSION);
    out.push(MessageKind::Digest.to_byte());
    out.extend_from_slice(&peers.to_be_bytes());
    out.extend_from_slice(&digest.to_be_bytes());
}

pub(crate) fn emit_buckets(peers: u32, order: u8, sums: &[u64], out: &mut Vec<u8>) {
    out.push(FORMAT_VERSION);
    out.push(MessageKind::Buckets.to_byte());
    out.extend_from_slice(&peers.to_be_bytes());
    out.push(order);
    for s in sums {
        out.extend_from_slice(&s.to_be_bytes());
    }
}

pub(crate) fn emit_repair_head(order: u8, buckets: &[u16], count: u16, out: &mut Vec<u8>) {
    out.push(FORMAT_VERSION);
    out.push(MessageKind::Repair.to_byte());
    out.push(order);
    out.extend_from_slice(&(buckets.len() as u16).to_be_bytes());
    for b in buckets {
        out.extend_from_slice(&b.to_be_bytes());
    }
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
        2, 1, 0, 1, // format 2, update, 1 entry
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
        GossipRepr::Update(vec![PeerEntry {
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
        }])
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
    fn empty_update_round_trips() {
        let r = GossipRepr::Update(vec![]);
        let mut out = Vec::new();
        r.emit(&mut out);
        assert_eq!(out, [2, 1, 0, 0]);
        assert_eq!(
            GossipRepr::parse(&GossipPacket::new_checked(&out[..]).unwrap()),
            r
        );
    }

    /// A digest: 300 peers, digest 0x0102030405060708.
    const DIGEST: &[u8] = &[2, 2, 0, 0, 1, 0x2c, 1, 2, 3, 4, 5, 6, 7, 8];
    /// Buckets: 3 peers, order 1, sums 5 and 6.
    const BUCKETS: &[u8] = &[
        2, 3, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 6,
    ];

    #[test]
    fn digest_buckets_and_repair_fixed_bytes() {
        let d = GossipRepr::Digest {
            peers: 300,
            digest: 0x0102_0304_0506_0708,
        };
        let b = GossipRepr::Buckets {
            peers: 3,
            order: 1,
            sums: vec![5, 6],
        };
        for (repr, bytes) in [(d, DIGEST), (b, BUCKETS)] {
            let mut out = Vec::new();
            repr.emit(&mut out);
            assert_eq!(out, bytes);
            assert_eq!(repr.buffer_len(), bytes.len());
            let p = GossipPacket::new_checked(bytes).unwrap();
            assert_eq!(GossipRepr::parse(&p), repr);
            assert_eq!(p.entries().count(), 0);
        }
        // A repair of buckets 1 and 3 of 4 carrying the entry of UPDATE.
        let GossipRepr::Update(entries) = update_repr() else {
            unreachable!()
        };
        let r = GossipRepr::Repair {
            order: 2,
            buckets: vec![1, 3],
            entries,
        };
        let mut out = Vec::new();
        r.emit(&mut out);
        assert_eq!(&out[..11], &[2, 4, 2, 0, 2, 0, 1, 0, 3, 0, 1]);
        assert_eq!(&out[11..], &UPDATE[4..]);
        assert_eq!(r.buffer_len(), out.len());
        let p = GossipPacket::new_checked(&out[..]).unwrap();
        assert_eq!(p.kind(), MessageKind::Repair);
        assert_eq!(p.repair_buckets().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(GossipRepr::parse(&p), r);
        // Out of order, repeated or out of range buckets, and too high an order, are refused.
        for (at, v) in [(8, 1), (8, 0), (8, 4)] {
            let mut bad = out.clone();
            bad[at] = v;
            assert!(matches!(
                GossipPacket::new_checked(&bad[..]).unwrap_err(),
                WireError::BucketList { .. }
            ));
        }
        let mut bad = out.clone();
        bad[2] = MAX_BUCKET_ORDER + 1;
        assert_eq!(
            GossipPacket::new_checked(&bad[..]).unwrap_err(),
            WireError::BucketOrder(MAX_BUCKET_ORDER + 1)
        );
        let mut bad = BUCKETS.to_vec();
        bad[6] = 2;
        assert!(matches!(
            GossipPacket::new_checked(&bad[..]).unwrap_err(),
            WireError::Truncated { .. }
        ));
        for bytes in [DIGEST, BUCKETS, &out[..]] {
            for len in 0..bytes.len() {
                assert!(GossipPacket::new_checked(&bytes[..len]).is_err());
            }
        }
    }

    #[test]
    fn buckets_refine_by_top_bits() {
        for n in 0..200u64 {
            let name = PeerName::from_u64(n * 7919);
            assert_eq!(bucket_of(name, 0), 0);
            let fine = bucket_of(name, MAX_BUCKET_ORDER);
            assert!(fine < 1 << MAX_BUCKET_ORDER);
            for order in 1..=MAX_BUCKET_ORDER {
                assert_eq!(bucket_of(name, order), fine >> (MAX_BUCKET_ORDER - order));
            }
        }
    }

    #[test]
    fn refuses_malformed() {
        let with = |i: usize, v: u8| {
            let mut b = UPDATE.to_vec();
            b[i] = v;
            b
        };
        assert_eq!(
            GossipPacket::new_checked(with(0, 1)).unwrap_err(),
            WireError::UnknownVersion(1)
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
        assert_eq!(
            GossipPacket::new_checked(with(1, 0)).unwrap_err(),
            WireError::UnknownKind(0)
        );
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
        fn random_bodies_of_every_kind_never_panic(kind in 0u8..6, body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let mut bytes = vec![FORMAT_VERSION, kind];
            bytes.extend_from_slice(&body);
            if let Ok(p) = GossipPacket::new_checked(&bytes[..]) {
                proptest::prop_assert_eq!(p.entries().count(), p.entry_count() as usize);
                let mut out = Vec::new();
                GossipRepr::parse(&p).emit(&mut out);
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
