//! IPAM: decentralized address allocation over a ring of address ranges.
//!
//! The cluster range (default `10.32.0.0/12`) is a [`ring::Ring`]: contiguous pieces, each owned by
//! exactly one peer, merged between peers as a CRDT by per-piece versions. A peer allocates only
//! from pieces it owns, asks another peer to donate free space when it runs out, hands its pieces
//! over when it leaves (the receiver acknowledges once it has persisted them), and reclaims a
//! dead peer's pieces on `rmpeer`.
//!
//! - [`ring`]: the ring, its merge and its versioned binary encoding.
//! - [`alloc`]: [`Ipam`], the per-peer sans-IO core: bootstrapping consensus, allocations,
//!   donation, shutdown and `rmpeer`; its messages travel as opaque bytes ([`msg`]).
//! - [`persist`]: crash-safe persistence of one peer's state, and [`PersistentIpam`], which
//!   writes the state before any answer or message leaves the core.
//! - [`sim`]: a deterministic simulator of many peers on a virtual clock.
//!
//! # The invariant and why it holds
//!
//! No address is owned (usable for allocation) by two peers, nor allocated twice, ever:
//! 1. Only the owner of a piece changes it, by writing a version higher than every version it
//!    has seen for those addresses (a donation, a hand-over on shutdown). Everyone else learns the
//!    change only through the owner's ring, so the old owner stops using a piece (its own ring
//!    changed and was persisted) before any new owner can see it.
//! 2. Merging takes, address by address, the higher version. Two different entries of equal
//!    version can only come from two peers that both believed they owned the same addresses;
//!    the merge refuses them with [`ring::RingError::Conflict`] instead of choosing. The one
//!    exception is two concurrent `rmpeer` reclaims of the same dead piece (both flagged
//!    *reclaimed*): the lower peer name wins, deterministically (see 4).
//! 3. A peer refuses any merge that would take addresses it owns to someone else
//!    ([`ring::RingError::TakesMyRange`]): a stale or foreign ring never silently wins. The only
//!    space it may lose is an unconfirmed reclaim (see 4), which it never allocated from.
//! 4. `rmpeer(dead)` reassigns the dead peer's pieces to the issuer with version+1, flagged
//!    *reclaimed*, and the issuer does not use them until every peer it knows (except the dead
//!    and removed ones) has gossiped a ring carrying exactly that entry. Any concurrent reclaim by
//!    a known peer X either loses the tie-break (X's ring then shows the winner's entry: X never
//!    used the piece) or wins it (then X never acknowledges ours, and we never use it). A second
//!    `rmpeer` of the same peer finds it owns nothing and does nothing. Residual assumption:
//!    a peer the issuer does not know of at all cannot be waited for. An unconfirmed reclaim is
//!    never handed over when its peer leaves (it stays, unconfirmed, under the leaving peer's
//!    name): the reclaimed owner may have handed the same addresses to someone before it died,
//!    and a hand-over would turn the contested claim into a definite one. (The property test
//!    found exactly that schedule; it is kept as a regression test in `tests/ipam_sim.rs`.)
//! 5. Bootstrapping: see [`alloc::Bootstrap`] for the exact argument.
//! 6. Every state change is persisted (write, fsync, rename, fsync of the directory) before an
//!    allocation is answered or a message leaves, so a crash never forgets what others may have
//!    been told; a change that cannot be persisted is undone in memory before its error is
//!    answered, so memory never holds what the disk lacks.

pub mod alloc;
pub mod msg;
pub mod persist;
pub mod ring;
pub mod sim;

pub use alloc::{AllocError, Bootstrap, Config, Destination, HandOver, Holder, Ipam, Status, Transmit};
pub use persist::{IpamError, PersistError, PersistentIpam, Store};
pub use ring::{Cidr, Entry, Ring, RingError};

/// Why bytes (a ring, a message, a persisted state) could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before a field it announced.
    #[error("truncated: needed {needed} bytes at offset {offset}, have {len}")]
    Truncated {
        /// Where the missing field starts.
        offset: usize,
        /// How many bytes the field needs.
        needed: usize,
        /// Total input length.
        len: usize,
    },
    /// The format version is not one this code speaks.
    #[error("format version {found} is not supported (this peer speaks version {supported})")]
    UnknownVersion {
        /// The version found.
        found: u8,
        /// The version this code speaks.
        supported: u8,
    },
    /// The input is structurally invalid.
    #[error("invalid: {0}")]
    Invalid(&'static str),
    /// Bytes were left after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// A bounds-checked big-endian reader: every read returns an error instead of panicking.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated {
                offset: self.pos,
                needed: n,
                len: self.buf.len(),
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn peer(&mut self) -> Result<crate::peer::PeerName, DecodeError> {
        let b = self.bytes(6)?;
        let mut a = [0u8; 6];
        a.copy_from_slice(b);
        Ok(crate::peer::PeerName(a))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}
