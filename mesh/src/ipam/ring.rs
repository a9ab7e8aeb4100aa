//! The ring: the cluster range divided into contiguous pieces, each owned by exactly one peer.
//!
//! The ring is a function from address to [`Entry`] (owner, version, reclaimed flag), stored as
//! the start address of each maximal run of equal entries. It is either empty (not yet divided)
//! or covers the whole cluster range. Merging is address-wise maximum by version, which is
//! commutative, associative and idempotent; equal versions with different entries are refused as
//! a [`RingError::Conflict`], except two reclaims (the lower owner name wins). See the module doc
//! of [`crate::ipam`] for the safety argument.
//!
//! Encoding (format 1, big-endian):
//!
//! ```text
//! ring    = format:u8 (=1) base:u32 prefix:u8 removed_count:u16 removed:[6]*removed_count
//!           entry_count:u32 entry*entry_count
//! entry   = start:u32 owner:[6] version:u32 flags:u8 (bit 0 reclaimed; others reserved)
//! ```
//!
//! Entries must start at the range base, be strictly increasing and lie inside the range.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::{DecodeError, Reader};
use crate::peer::PeerName;

/// The only ring encoding version this code speaks.
pub const RING_FORMAT: u8 = 1;
const ENTRY_LEN: usize = 4 + 6 + 4 + 1;
const FLAG_RECLAIMED: u8 = 1;

/// An IPv4 CIDR block with its host bits zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

/// Why a CIDR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not of the form `a.b.c.d/n`.
    #[error("invalid CIDR {0:?}: expected a.b.c.d/n")]
    Syntax(String),
    /// The prefix length is above 32.
    #[error("invalid CIDR prefix length {0}: at most 32")]
    Prefix(u8),
    /// The address has bits set below the prefix.
    #[error("CIDR {addr}/{prefix} has host bits set; did you mean {base}/{prefix}?")]
    HostBits {
        /// The address given.
        addr: Ipv4Addr,
        /// The prefix length.
        prefix: u8,
        /// The address with its host bits cleared.
        base: Ipv4Addr,
    },
}

impl Cidr {
    /// The default pod range, `10.32.0.0/12`.
    pub const DEFAULT: Cidr = Cidr {
        base: 0x0a20_0000,
        prefix: 12,
    };

    /// The block `addr/prefix`; `addr` must have its host bits zero.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Cidr, CidrError> {
        if prefix > 32 {
            return Err(CidrError::Prefix(prefix));
        }
        let a = u32::from(addr);
        let base = a & mask(prefix);
        if base != a {
            return Err(CidrError::HostBits {
                addr,
                prefix,
                base: Ipv4Addr::from(base),
            });
        }
        Ok(Cidr { base, prefix })
    }

    /// The first address, as a number.
    pub fn base(self) -> u32 {
        self.base
    }

    /// The prefix length.
    pub fn prefix(self) -> u8 {
        self.prefix
    }

    /// How many addresses the block holds.
    pub fn size(self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    /// One past the last address, as a number (up to 2^32).
    pub fn end(self) -> u64 {
        self.base as u64 + self.size()
    }

    /// Whether `addr` is inside the block.
    pub fn contains(self, addr: u32) -> bool {
        addr >= self.base && (addr as u64) < self.end()
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Default for Cidr {
    fn default() -> Self {
        Cidr::DEFAULT
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError::Syntax(s.to_owned());
        let (a, p) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
        let prefix: u8 = p.parse().map_err(|_| err())?;
        Cidr::new(addr, prefix)
    }
}

/// Who owns a run of addresses, and at which version.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The owning peer.
    pub owner: PeerName,
    /// Raised by the owner on every change of these addresses.
    pub version: u32,
    /// Written by an `rmpeer` reclaim (concurrent reclaims tie-break by lower owner name).
    pub reclaimed: bool,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} v{}{}",
            self.owner,
            self.version,
            if self.reclaimed { " (reclaimed)" } else { "" }
        )
    }
}

/// A maximal run of addresses `[start, end)` with one entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Piece {
    /// First address.
    pub start: u32,
    /// One past the last address.
    pub end: u64,
    /// Its owner and version.
    pub entry: Entry,
}

impl Piece {
    /// Number of addresses.
    pub fn len(&self) -> u64 {
        self.end - self.start as u64
    }

    /// Whether the piece is empty (never true for pieces of a ring).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A run of addresses `[start, end)`, printed as `a.b.c.d-e.f.g.h`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First address.
    pub start: u32,
    /// One past the last address.
    pub end: u64,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            Ipv4Addr::from(self.start),
            Ipv4Addr::from((self.end - 1) as u32)
        )
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a ring operation or merge was refused. The ring is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The two rings cover different cluster ranges.
    #[error("ring covers {theirs} but this peer's range is {ours}: all peers must use one range")]
    RangeMismatch {
        /// Our range.
        ours: Cidr,
        /// Theirs.
        theirs: Cidr,
    },
    /// Two different owners of the same addresses at the same version: someone broke the rules.
    #[error(
        "conflicting ownership of {span}: ours says {ours:?}, theirs says {theirs:?}; merge refused"
    )]
    Conflict {
        /// The addresses in conflict.
        span: Span,
        /// Our entry.
        ours: Entry,
        /// Their entry.
        theirs: Entry,
    },
    /// The merge would hand addresses this peer owns to another peer.
    #[error("ring would give {span}, owned by this peer ({me}), to {theirs:?}; merge refused")]
    TakesMyRange {
        /// The addresses.
        span: Span,
        /// This peer.
        me: PeerName,
        /// The entry that would win.
        theirs: Entry,
    },
    /// An operation on addresses not all owned by the expected peer.
    #[error("{span} is not wholly owned by {peer}")]
    NotOwner {
        /// The addresses.
        span: Span,
        /// The peer expected to own them.
        peer: PeerName,
    },
    /// The ring has not been divided yet.
    #[error("the ring is not divided yet")]
    Empty,
    /// No seeds, or more seeds than addresses.
    #[error("cannot divide {range} among {seeds} peers")]
    BadDivision {
        /// The range.
        range: Cidr,
        /// How many distinct seeds were given.
        seeds: usize,
    },
    /// A version would overflow.
    #[error("version overflow on {0}")]
    VersionOverflow(Span),
}

/// The ring of one cluster range; see the module doc.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Ring {
    range: Cidr,
    entries: BTreeMap<u32, Entry>,
    removed: BTreeSet<PeerName>,
}

impl Ring {
    /// An empty (undivided) ring over `range`.
    pub fn new(range: Cidr) -> Ring {
        Ring {
            range,
            entries: BTreeMap::new(),
            removed: BTreeSet::new(),
        }
    }

    /// The initial division: `range` split into equal contiguous pieces, one per distinct seed in
    /// ascending name order, all at version 1. Every peer given the same seeds computes the same
    /// ring.
    pub fn divide(range: Cidr, seeds: &[PeerName]) -> Result<Ring, RingError> {
        let seeds: BTreeSet<PeerName> = seeds.iter().copied().collect();
        let n = seeds.len() as u64;
        if n == 0 || n > range.size() {
            return Err(RingError::BadDivision {
                range,
                seeds: seeds.len(),
            });
        }
        let mut ring = Ring::new(range);
        for (i, owner) in seeds.into_iter().enumerate() {
            let start = range.base() as u64 + range.size() * i as u64 / n;
            ring.entries.insert(
                start as u32,
                Entry {
                    owner,
                    version: 1,
                    reclaimed: false,
                },
            );
        }
        Ok(ring)
    }

    /// The cluster range.
    pub fn range(&self) -> Cidr {
        self.range
    }

    /// Whether the ring is still undivided.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Peers removed by `rmpeer` (grow-only).
    pub fn removed(&self) -> &BTreeSet<PeerName> {
        &self.removed
    }

    /// The pieces in address order (maximal runs of equal entries).
    pub fn pieces(&self) -> impl Iterator<Item = Piece> + '_ {
        let end = self.range.end();
        let mut it = self.entries.iter().peekable();
        std::iter::from_fn(move || {
            let (&start, &entry) = it.next()?;
            let next = it.peek().map_or(end, |(s, _)| **s as u64);
            Some(Piece {
                start,
                end: next,
                entry,
            })
        })
    }

    /// The piece holding `addr`, if the ring is divided and `addr` is in range.
    pub fn piece_at(&self, addr: u32) -> Option<Piece> {
        if !self.range.contains(addr) {
            return None;
        }
        let (&start, &entry) = self.entries.range(..=addr).next_back()?;
        let after = (std::ops::Bound::Excluded(addr), std::ops::Bound::Unbounded);
        let end = self
            .entries
            .range(after)
            .next()
            .map_or(self.range.end(), |(&s, _)| s as u64);
        Some(Piece { start, end, entry })
    }

    /// The owner of `addr`.
    pub fn owner(&self, addr: Ipv4Addr) -> Option<PeerName> {
        self.piece_at(u32::from(addr)).map(|p| p.entry.owner)
    }

    /// The runs of addresses `peer` owns, adjacent pieces joined, in address order.
    pub fn owned_by(&self, peer: PeerName) -> Vec<Span> {
        let mut out: Vec<Span> = Vec::new();
        for p in self.pieces().filter(|p| p.entry.owner == peer) {
            match out.last_mut() {
                Some(last) if last.end == p.start as u64 => last.end = p.end,
                _ => out.push(Span {
                    start: p.start,
                    end: p.end,
                }),
            }
        }
        out
    }

    /// How many addresses each owner holds.
    pub fn shares(&self) -> BTreeMap<PeerName, u64> {
        let mut out = BTreeMap::new();
        for p in self.pieces() {
            *out.entry(p.entry.owner).or_insert(0) += p.len();
        }
        out
    }

    /// Hands `[start, end)`, wholly owned by `from`, to `to` at a version above every version in
    /// it. Only `from` itself may call this on its own ring. Returns the new version.
    pub fn transfer(&mut self, span: Span, from: PeerName, to: PeerName) -> Result<u32, RingError> {
        let version = self.next_version(span, from)?;
        self.set(
            span,
            Entry {
                owner: to,
                version,
                reclaimed: false,
            },
        );
        Ok(version)
    }

    /// Reassigns every piece of `dead` to `to`, each at its version + 1 and flagged reclaimed,
    /// and records `dead` as removed. Returns the reassigned runs with their new versions.
    pub fn reclaim(&mut self, dead: PeerName, to: PeerName) -> Result<Vec<(Span, u32)>, RingError> {
        let pieces: Vec<Piece> = self.pieces().filter(|p| p.entry.owner == dead).collect();
        let mut out = Vec::with_capacity(pieces.len());
        for p in &pieces {
            let span = Span {
                start: p.start,
                end: p.end,
            };
            let version = p
                .entry
                .version
                .checked_add(1)
                .ok_or(RingError::VersionOverflow(span))?;
            out.push((span, version));
        }
        for &(span, version) in &out {
            self.set(
                span,
                Entry {
                    owner: to,
                    version,
                    reclaimed: true,
                },
            );
        }
        self.removed.insert(dead);
        Ok(out)
    }

    /// The merge of `self` (this peer's ring; `me` is this peer) with `other`, without changing
    /// either. Refuses conflicts and anything that takes addresses `me` owns, except entries
    /// flagged reclaimed (the caller must refuse losing reclaimed space it already uses).
    pub fn merge(&self, other: &Ring, me: PeerName) -> Result<Ring, RingError> {
        if self.range != other.range {
            return Err(RingError::RangeMismatch {
                ours: self.range,
                theirs: other.range,
            });
        }
        let mut removed = self.removed.clone();
        removed.extend(other.removed.iter().copied());
        if self.is_empty() || other.is_empty() {
            let src = if self.is_empty() { other } else { self };
            return Ok(Ring {
                range: self.range,
                entries: src.entries.clone(),
                removed,
            });
        }
        let bounds: BTreeSet<u32> = self
            .entries
            .keys()
            .chain(other.entries.keys())
            .copied()
            .collect();
        let mut entries = BTreeMap::new();
        let mut it = bounds.iter().peekable();
        while let Some(&b) = it.next() {
            let end = it.peek().map_or(self.range.end(), |&&n| n as u64);
            let span = Span { start: b, end };
            let ours = self.value_at(b);
            let theirs = other.value_at(b);
            entries.insert(b, pick(me, span, ours, theirs)?);
        }
        let mut ring = Ring {
            range: self.range,
            entries,
            removed,
        };
        ring.normalize();
        Ok(ring)
    }

    /// Bytes needed by [`Ring::emit`].
    pub fn buffer_len(&self) -> usize {
        1 + 4 + 1 + 2 + 6 * self.removed.len() + 4 + ENTRY_LEN * self.entries.len()
    }

    /// Appends the encoding to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.reserve(self.buffer_len());
        out.push(RING_FORMAT);
        out.extend_from_slice(&self.range.base.to_be_bytes());
        out.push(self.range.prefix);
        // The removed set is bounded by the peer count, far below u16::MAX.
        out.extend_from_slice(&(self.removed.len().min(u16::MAX as usize) as u16).to_be_bytes());
        for p in self.removed.iter().take(u16::MAX as usize) {
            out.extend_from_slice(&p.0);
        }
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for (&start, e) in &self.entries {
            out.extend_from_slice(&start.to_be_bytes());
            out.extend_from_slice(&e.owner.0);
            out.extend_from_slice(&e.version.to_be_bytes());
            out.push(if e.reclaimed { FLAG_RECLAIMED } else { 0 });
        }
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.emit(&mut v);
        v
    }

    /// Parses an encoded ring, checking every field; trailing bytes are refused.
    pub fn parse(bytes: &[u8]) -> Result<Ring, DecodeError> {
        let mut r = Reader::new(bytes);
        let ring = Ring::read(&mut r)?;
        r.finish()?;
        Ok(ring)
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Ring, DecodeError> {
        let format = r.u8()?;
        if format != RING_FORMAT {
            return Err(DecodeError::UnknownVersion {
                found: format,
                supported: RING_FORMAT,
            });
        }
        let base = r.u32()?;
        let prefix = r.u8()?;
        let range = Cidr::new(Ipv4Addr::from(base), prefix)
            .map_err(|_| DecodeError::Invalid("ring range is not a valid CIDR"))?;
        let n_removed = r.u16()? as usize;
        let mut removed = BTreeSet::new();
        for _ in 0..n_removed {
            removed.insert(r.peer()?);
        }
        let n = r.u32()? as usize;
        if n.checked_mul(ENTRY_LEN)
            .is_none_or(|need| need > r.remaining())
        {
            return Err(DecodeError::Invalid("ring entry count exceeds the input"));
        }
        let mut entries = BTreeMap::new();
        let mut prev: Option<u32> = None;
        for _ in 0..n {
            let start = r.u32()?;
            let owner = r.peer()?;
            let version = r.u32()?;
            let flags = r.u8()?;
            if flags & !FLAG_RECLAIMED != 0 {
                return Err(DecodeError::Invalid(
                    "ring entry has reserved flag bits set",
                ));
            }
            if !range.contains(start) {
                return Err(DecodeError::Invalid("ring entry outside the range"));
            }
            match prev {
                None if start != range.base => {
                    return Err(DecodeError::Invalid(
                        "first ring entry is not at the range base",
                    ));
                }
                Some(p) if start <= p => {
                    return Err(DecodeError::Invalid("ring entries not strictly increasing"));
                }
                _ => {}
            }
            prev = Some(start);
            entries.insert(
                start,
                Entry {
                    owner,
                    version,
                    reclaimed: flags & FLAG_RECLAIMED != 0,
                },
            );
        }
        let mut ring = Ring {
            range,
            entries,
            removed,
        };
        ring.normalize();
        Ok(ring)
    }

    fn value_at(&self, addr: u32) -> Entry {
        // Callers only ask for addresses in a non-empty ring, whose first entry is at the base.
        *self
            .entries
            .range(..=addr)
            .next_back()
            .expect("ring entry at base")
            .1
    }

    fn next_version(&self, span: Span, owner: PeerName) -> Result<u32, RingError> {
        if self.is_empty() {
            return Err(RingError::Empty);
        }
        if span.end <= span.start as u64
            || !self.range.contains(span.start)
            || span.end > self.range.end()
        {
            return Err(RingError::NotOwner { span, peer: owner });
        }
        let mut max = 0;
        for p in self
            .pieces()
            .filter(|p| p.end > span.start as u64 && (p.start as u64) < span.end)
        {
            if p.entry.owner != owner {
                return Err(RingError::NotOwner { span, peer: owner });
            }
            max = max.max(p.entry.version);
        }
        max.checked_add(1).ok_or(RingError::VersionOverflow(span))
    }

    /// Sets every address of `span` (inside the range, ring non-empty) to `entry`.
    fn set(&mut self, span: Span, entry: Entry) {
        if span.end < self.range.end() {
            let after = span.end as u32;
            if !self.entries.contains_key(&after) {
                let v = self.value_at(after);
                self.entries.insert(after, v);
            }
        }
        let inside: Vec<u32> = self
            .entries
            .range(span.start..)
            .map(|(&k, _)| k)
            .take_while(|&k| (k as u64) < span.end)
            .collect();
        for k in inside {
            self.entries.remove(&k);
        }
        self.entries.insert(span.start, entry);
        self.normalize();
    }

    /// Drops boundaries between equal entries, so equal address functions are equal rings.
    fn normalize(&mut self) {
        let mut prev: Option<Entry> = None;
        self.entries.retain(|_, e| {
            let keep = prev != Some(*e);
            prev = Some(*e);
            keep
        });
    }
}

fn pick(me: PeerName, span: Span, ours: Entry, theirs: Entry) -> Result<Entry, RingError> {
    if ours == theirs {
        return Ok(ours);
    }
    let tie_reclaim = ours.version == theirs.version && ours.reclaimed && theirs.reclaimed;
    let winner = if ours.version != theirs.version {
        if ours.version > theirs.version {
            ours
        } else {
            theirs
        }
    } else if tie_reclaim {
        if ours.owner < theirs.owner {
            ours
        } else {
            theirs
        }
    } else {
        return Err(RingError::Conflict { span, ours, theirs });
    };
    // Unconfirmed reclaims may be lost (the core never allocates from them and refuses to lose
    // confirmed ones itself); anything else this peer owns may not.
    if ours.owner == me && winner.owner != me && !ours.reclaimed {
        return Err(RingError::TakesMyRange { span, me, theirs });
    }
    Ok(winner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn small() -> Cidr {
        "10.0.0.0/24".parse().unwrap()
    }

    #[test]
    fn cidr_parse_and_errors() {
        let c: Cidr = "10.32.0.0/12".parse().unwrap();
        assert_eq!(c, Cidr::DEFAULT);
        assert_eq!(c.size(), 1 << 20);
        assert_eq!(c.to_string(), "10.32.0.0/12");
        assert!(matches!(
            "10.32.0.1/12".parse::<Cidr>(),
            Err(CidrError::HostBits { .. })
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix(33))
        ));
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(all.end(), 1 << 32);
    }

    #[test]
    fn divide_is_deterministic_and_covers() {
        let a = Ring::divide(small(), &[p(3), p(1), p(2)]).unwrap();
        let b = Ring::divide(small(), &[p(2), p(3), p(1), p(1)]).unwrap();
        assert_eq!(a, b);
        let pieces: Vec<Piece> = a.pieces().collect();
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0].entry.owner, p(1));
        assert_eq!(pieces[0].start, small().base());
        assert_eq!(pieces[2].end, small().end());
        assert_eq!(pieces.iter().map(Piece::len).sum::<u64>(), 256);
        assert!(Ring::divide(small(), &[]).is_err());
        let whole = Ring::divide("0.0.0.0/0".parse().unwrap(), &[p(1), p(2)]).unwrap();
        assert_eq!(whole.owner(Ipv4Addr::new(255, 255, 255, 255)), Some(p(2)));
    }

    #[test]
    fn transfer_only_by_owner_and_merge_takes_newer() {
        let r0 = Ring::divide(small(), &[p(1), p(2)]).unwrap();
        let mut r1 = r0.clone();
        let span = Span {
            start: small().base() + 64,
            end: small().base() as u64 + 128,
        };
        assert!(r1.transfer(span, p(2), p(3)).is_err(), "p2 does not own it");
        assert_eq!(r1.transfer(span, p(1), p(3)).unwrap(), 2);
        // A third peer merges the old and the new ring either way round: same result.
        let m1 = r0.merge(&r1, p(3)).unwrap();
        let m2 = r1.merge(&r0, p(3)).unwrap();
        assert_eq!(m1, m2);
        assert_eq!(m1, r1);
        assert_eq!(m1.merge(&m1, p(3)).unwrap(), m1, "idempotent");
        assert_eq!(m1.owner(Ipv4Addr::new(10, 0, 0, 100)), Some(p(3)));
        assert_eq!(
            m1.owned_by(p(1)),
            vec![Span {
                start: small().base(),
                end: small().base() as u64 + 64
            },]
        );
    }

    #[test]
    fn conflicts_and_stolen_ranges_are_refused() {
        let r0 = Ring::divide(small(), &[p(1), p(2)]).unwrap();
        let span = Span {
            start: small().base(),
            end: small().base() as u64 + 10,
        };
        let mut a = r0.clone();
        a.transfer(span, p(1), p(3)).unwrap();
        let mut b = r0.clone();
        b.transfer(span, p(1), p(4)).unwrap();
        let err = a.merge(&b, p(9)).unwrap_err();
        assert!(matches!(err, RingError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("10.0.0.0-10.0.0.9"), "{err}");
        // p1 never accepts a ring in which someone else took its addresses.
        let err = r0.merge(&a, p(1)).unwrap_err();
        assert!(matches!(err, RingError::TakesMyRange { .. }), "{err}");
        // Different ranges never merge.
        let other = Ring::divide("10.0.1.0/24".parse().unwrap(), &[p(1)]).unwrap();
        assert!(matches!(
            r0.merge(&other, p(9)),
            Err(RingError::RangeMismatch { .. })
        ));
        // Two different divisions conflict.
        let d = Ring::divide(small(), &[p(1), p(3)]).unwrap();
        assert!(matches!(
            r0.merge(&d, p(9)),
            Err(RingError::Conflict { .. })
        ));
    }

    #[test]
    fn concurrent_reclaims_resolve_to_lowest_name() {
        let r0 = Ring::divide(small(), &[p(1), p(2), p(3)]).unwrap();
        let mut x = r0.clone();
        let got = x.reclaim(p(3), p(5)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, 2);
        let mut y = r0.clone();
        y.reclaim(p(3), p(4)).unwrap();
        let mx = x.merge(&y, p(5)).unwrap();
        let my = y.merge(&x, p(4)).unwrap();
        assert_eq!(mx, my);
        assert_eq!(mx.owned_by(p(3)), vec![]);
        assert_eq!(mx.shares()[&p(4)], 256 - 170);
        assert!(mx.removed().contains(&p(3)));
        // Reclaiming twice is a no-op the second time.
        let mut z = mx.clone();
        assert!(z.reclaim(p(3), p(5)).unwrap().is_empty());
    }

    #[test]
    fn encoding_round_trips_on_fixed_bytes() {
        let mut ring = Ring::divide(small(), &[p(0x0a0b0c0d0e0f), p(0x010203040506)]).unwrap();
        ring.reclaim(p(0x0a0b0c0d0e0f), p(0x010203040506)).unwrap();
        // Reclaim joins nothing here (versions differ), so two entries remain.
        #[rustfmt::skip]
        let expected: &[u8] = &[
            1, 10, 0, 0, 0, 24,                 // format, base 10.0.0.0, prefix 24
            0, 1, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, // one removed peer
            0, 0, 0, 2,                          // two entries
            10, 0, 0, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0, 1, 0,
            10, 0, 0, 128, 1, 2, 3, 4, 5, 6, 0, 0, 0, 2, 1,
        ];
        assert_eq!(ring.to_bytes(), expected);
        assert_eq!(ring.buffer_len(), expected.len());
        assert_eq!(Ring::parse(expected).unwrap(), ring);
        let empty = Ring::new(small());
        assert_eq!(empty.to_bytes(), [1, 10, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Ring::parse(&empty.to_bytes()).unwrap(), empty);
    }

    #[test]
    fn malformed_rings_are_errors() {
        let good = Ring::divide(small(), &[p(1), p(2)]).unwrap().to_bytes();
        for len in 0..good.len() {
            assert!(Ring::parse(&good[..len]).is_err(), "truncated at {len}");
        }
        let mut b = good.clone();
        b.push(0);
        assert_eq!(Ring::parse(&b), Err(DecodeError::Trailing(1)));
        let mut b = good.clone();
        b[0] = 2;
        assert!(matches!(
            Ring::parse(&b),
            Err(DecodeError::UnknownVersion { found: 2, .. })
        ));
        let mut b = good.clone();
        b[4] = 1; // host bits in the base
        assert!(Ring::parse(&b).is_err());
        let mut b = good.clone();
        let last_flags = b.len() - 1;
        b[last_flags] = 0x80;
        assert!(Ring::parse(&b).is_err());
        let mut b = good.clone();
        b[12] = 11; // first entry not at base
        assert!(Ring::parse(&b).is_err());
        let mut b = good.clone();
        b[10] = 0xff; // huge count
        assert!(Ring::parse(&b).is_err());
        let mut b = good;
        b[27 + 3] = 0; // second entry start 10.0.0.0: not increasing
        assert!(Ring::parse(&b).is_err());
    }
}
