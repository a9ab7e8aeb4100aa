//! Fragmentation of super-frames across datagrams, and their reassembly (sans-IO).
//!
//! A frame payload ([`wire::FrameRepr`]: offload metadata, relay envelope and a 64 KB
//! super-frame, at most [`wire::MAX_FRAME_PAYLOAD`] bytes) that does not fit one datagram is cut
//! ([`Cut`]) into pieces, each carried by one datagram in one Fragment record whose flags are the
//! frame record's flags. A fragment payload is
//!
//! ```text
//! id u32 | index u16 | count u16 | total_len u32 | piece
//! ```
//!
//! (big-endian, [`FRAG_HEADER_LEN`] bytes of header). Every piece but the last has the same
//! length, so piece `index` starts at `index * len(piece 0)`; the sender makes them so, which is
//! also what lets it send them as one UDP GSO train. `count` is 2..=[`MAX_PIECES`]. A completed
//! payload is parsed with [`wire::FrameRepr::parse`] and the flags [`Reassembled`] returns.
//!
//! Pieces arrive inside authenticated datagrams, so only the peer can send them; still, the
//! [`Reassembler`] trusts nothing: a piece that disagrees with what the first piece of its id
//! said (count, total, flags, length for its index) is dropped and counted, duplicates are
//! ignored, memory is bounded ([`ReasmConfig::max_slots`] buffers of [`MAX_TOTAL`] bytes,
//! allocated once and reused), and partial frames are dropped after [`ReasmConfig::timeout`].

use std::time::{Duration, Instant};

use crate::wire::{self, BodyWriter, RecordKind};

/// Length of the fragment header.
pub const FRAG_HEADER_LEN: usize = 12;
/// Most pieces one frame is split into.
pub const MAX_PIECES: usize = 1024;
/// Largest reassembled payload.
pub const MAX_TOTAL: usize = 65_536 + 128;
/// Every piece but the last is a multiple of this many bytes long: with its record and fragment
/// headers (16 bytes) the sealed body of its datagram is then whole AEAD blocks, which the
/// cipher takes in one pass (a body ending in a partial block costs ring's AES-GCM 10 to 13 %
/// more per 1.4 KB datagram sealed and about 8 % more per datagram opened, on this project's
/// development machine: the `piece_body` groups of weft-benches' `sleeve_crypto` bench). It
/// costs a datagram at most 15 bytes of payload.
pub const PIECE_ALIGN: usize = 16;

// A piece of whole blocks makes a body of whole blocks.
const _: () = assert!((wire::RECORD_HEADER_LEN + FRAG_HEADER_LEN) % PIECE_ALIGN == 0);

/// Payload bytes of a full piece carried in a body of at most `max_body` bytes (0: none fits).
pub const fn piece_len(max_body: usize) -> usize {
    max_body.saturating_sub(wire::RECORD_HEADER_LEN + FRAG_HEADER_LEN) / PIECE_ALIGN * PIECE_ALIGN
}

/// Why a fragment was refused, or a payload could not be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragError {
    /// Shorter than the fragment header, or the header is out of bounds.
    #[error("malformed fragment: {0}")]
    Malformed(&'static str),
    /// Disagrees with the other pieces of its frame.
    #[error("inconsistent fragment: {0}")]
    Inconsistent(&'static str),
    /// The buffer is too small to write into.
    #[error("no room for the fragment header")]
    NoRoom,
    /// A body of this many bytes cannot carry a piece.
    #[error("a body of {0} bytes has no room for a fragment")]
    BodyTooSmall(usize),
    /// A payload that needs fewer than 2 or more than [`MAX_PIECES`] pieces, or is longer than
    /// [`MAX_TOTAL`].
    #[error("cannot cut a payload of {total_len} bytes into {count} pieces")]
    CannotCut {
        /// Payload length.
        total_len: usize,
        /// Pieces it would need.
        count: usize,
    },
}

// Every frame payload can be reassembled.
const _: () = assert!(wire::MAX_FRAME_PAYLOAD <= MAX_TOTAL);

/// A fragment's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentHeader {
    /// Which frame (per sender and session).
    pub id: u32,
    /// Which piece.
    pub index: u16,
    /// How many pieces.
    pub count: u16,
    /// Length of the whole payload.
    pub total_len: u32,
}

impl FragmentHeader {
    /// Parses a fragment payload into its header and piece, checking bounds.
    pub fn parse(b: &[u8]) -> Result<(FragmentHeader, &[u8]), FragError> {
        if b.len() < FRAG_HEADER_LEN {
            return Err(FragError::Malformed("shorter than its header"));
        }
        let h = FragmentHeader {
            id: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            index: u16::from_be_bytes([b[4], b[5]]),
            count: u16::from_be_bytes([b[6], b[7]]),
            total_len: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        };
        if !(2..=MAX_PIECES).contains(&usize::from(h.count)) {
            return Err(FragError::Malformed("piece count out of range"));
        }
        if h.index >= h.count {
            return Err(FragError::Malformed("index beyond count"));
        }
        if h.total_len as usize > MAX_TOTAL || (h.total_len as usize) < usize::from(h.count) {
            return Err(FragError::Malformed("total length out of range"));
        }
        let piece = &b[FRAG_HEADER_LEN..];
        if piece.is_empty() {
            return Err(FragError::Malformed("empty piece"));
        }
        Ok((h, piece))
    }

    /// Writes the header into the first [`FRAG_HEADER_LEN`] bytes of `b`.
    pub fn emit(&self, b: &mut [u8]) -> Result<usize, FragError> {
        let b = b.get_mut(..FRAG_HEADER_LEN).ok_or(FragError::NoRoom)?;
        b[0..4].copy_from_slice(&self.id.to_be_bytes());
        b[4..6].copy_from_slice(&self.index.to_be_bytes());
        b[6..8].copy_from_slice(&self.count.to_be_bytes());
        b[8..12].copy_from_slice(&self.total_len.to_be_bytes());
        Ok(FRAG_HEADER_LEN)
    }
}

/// How a frame payload is cut for datagrams whose bodies hold at most `max_body` bytes: one
/// Fragment record per datagram, every piece [`piece_len`]`(max_body)` long but the last. The
/// receiver learns the length from the pieces, so a peer may cut otherwise. The sender writes
/// each piece straight from the payload's parts, without copying the payload together first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    id: u32,
    total_len: usize,
    piece_len: usize,
    count: usize,
}

impl Cut {
    /// Cuts a payload of `total_len` bytes (frame `id`) for bodies of `max_body` bytes.
    pub fn new(id: u32, total_len: usize, max_body: usize) -> Result<Cut, FragError> {
        let piece_len = piece_len(max_body);
        if piece_len == 0 {
            return Err(FragError::BodyTooSmall(max_body));
        }
        let count = total_len.div_ceil(piece_len);
        if total_len > MAX_TOTAL || !(2..=MAX_PIECES).contains(&count) {
            return Err(FragError::CannotCut { total_len, count });
        }
        Ok(Cut { id, total_len, piece_len, count })
    }

    /// How many pieces (and so datagrams).
    pub fn count(&self) -> usize {
        self.count
    }

    /// The header of piece `index`.
    pub fn header(&self, index: usize) -> FragmentHeader {
        // count <= MAX_PIECES < u16::MAX and total_len <= MAX_TOTAL < u32::MAX (checked in new).
        FragmentHeader { id: self.id, index: index as u16, count: self.count as u16, total_len: self.total_len as u32 }
    }

    /// Payload bytes per piece (the last may carry fewer).
    pub fn piece_len(&self) -> usize {
        self.piece_len
    }

    /// Writes piece `index` (below [`Cut::count`]) as a Fragment record with `flags` into `w`.
    /// The payload is `head` followed by `tail` (for a frame: what
    /// [`wire::FrameRepr::emit_head`] wrote, then the Ethernet frame), `total_len` bytes in all.
    pub fn write_piece(&self, w: &mut BodyWriter<'_>, flags: u8, index: usize, head: &[u8], tail: &[u8]) -> Result<(), wire::Error> {
        debug_assert_eq!(head.len() + tail.len(), self.total_len);
        let dst = self.write_piece_header(w, flags, index)?;
        copy_range(dst, head, tail, index * self.piece_len);
        Ok(())
    }

    /// Writes the record and fragment headers of piece `index` into `w`, and leaves the piece's
    /// bytes as they are in the rest of the record, which it returns: for a payload already put
    /// where its pieces go.
    pub fn write_piece_header<'w>(&self, w: &'w mut BodyWriter<'_>, flags: u8, index: usize) -> Result<&'w mut [u8], wire::Error> {
        let off = index * self.piece_len;
        let len = self.piece_len.min(self.total_len.saturating_sub(off));
        let p = w.reserve(RecordKind::Fragment, flags, FRAG_HEADER_LEN + len)?;
        let (h, rest) = p.split_at_mut(FRAG_HEADER_LEN);
        // `h` is exactly FRAG_HEADER_LEN bytes long.
        let _ = self.header(index).emit(h);
        Ok(rest)
    }
}

/// Copies `dst.len()` bytes starting at `off` of the concatenation `head ++ tail` into `dst`.
fn copy_range(dst: &mut [u8], head: &[u8], tail: &[u8], off: usize) {
    let mut at = 0;
    if off < head.len() {
        let n = (head.len() - off).min(dst.len());
        dst[..n].copy_from_slice(&head[off..off + n]);
        at = n;
    }
    let from = (off + at).saturating_sub(head.len());
    let rest = dst.len() - at;
    dst[at..].copy_from_slice(&tail[from..from + rest]);
}

/// Reassembly limits.
#[derive(Debug, Clone, Copy)]
pub struct ReasmConfig {
    /// Frames reassembled at once (each holds a [`MAX_TOTAL`]-byte buffer once used).
    pub max_slots: usize,
    /// A partial frame is dropped this long after its first piece.
    pub timeout: Duration,
}

impl Default for ReasmConfig {
    fn default() -> Self {
        ReasmConfig { max_slots: 16, timeout: Duration::from_secs(1) }
    }
}

/// Reassembly counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReasmStats {
    /// Frames reassembled.
    pub completed: u64,
    /// Pieces received twice (ignored).
    pub duplicates: u64,
    /// Pieces that disagreed with their frame (dropped).
    pub inconsistent: u64,
    /// Partial frames evicted for a newer one.
    pub evicted: u64,
    /// Partial frames dropped after the timeout.
    pub timed_out: u64,
    /// Malformed pieces.
    pub malformed: u64,
}

#[derive(Debug)]
struct Slot {
    busy: bool,
    id: u32,
    flags: u8,
    count: u16,
    total: usize,
    piece_len: usize,
    have: u16,
    bitmap: [u64; MAX_PIECES / 64],
    started: Instant,
    buf: Box<[u8]>,
}

/// A reassembled payload, borrowed until the next push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reassembled<'a> {
    /// The frame record's flags.
    pub flags: u8,
    /// The whole payload.
    pub payload: &'a [u8],
}

/// Reassembles fragmented frames from one sender.
#[derive(Debug)]
pub struct Reassembler {
    config: ReasmConfig,
    slots: Vec<Slot>,
    stats: ReasmStats,
}

impl Reassembler {
    /// An empty reassembler.
    pub fn new(config: ReasmConfig) -> Reassembler {
        Reassembler { config: ReasmConfig { max_slots: config.max_slots.max(1), ..config }, slots: Vec::new(), stats: ReasmStats::default() }
    }

    /// The counters.
    pub fn stats(&self) -> ReasmStats {
        self.stats
    }

    /// Partial frames held.
    pub fn pending(&self) -> usize {
        self.slots.iter().filter(|s| s.busy).count()
    }

    /// Whether pieces of frame `id` are held.
    pub fn holds(&self, id: u32) -> bool {
        self.slots.iter().any(|s| s.busy && s.id == id)
    }

    /// When the oldest partial frame times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots.iter().filter(|s| s.busy).map(|s| s.started + self.config.timeout).min()
    }

    /// Drops partial frames older than the timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        for s in self.slots.iter_mut().filter(|s| s.busy) {
            if now.saturating_duration_since(s.started) >= self.config.timeout {
                s.busy = false;
                self.stats.timed_out += 1;
            }
        }
    }

    /// Takes one fragment record (its flags and payload). Returns the whole payload when this
    /// piece completes it.
    pub fn push(&mut self, now: Instant, flags: u8, fragment: &[u8]) -> Result<Option<Reassembled<'_>>, FragError> {
        self.handle_timeout(now);
        let (h, piece) = match FragmentHeader::parse(fragment) {
            Ok(x) => x,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e);
            }
        };
        let i = match self.slots.iter().position(|s| s.busy && s.id == h.id) {
            Some(i) => i,
            None => self.open_slot(now, flags, &h, piece.len())?,
        };
        let s = &mut self.slots[i];
        let reject = if s.flags != flags || s.count != h.count || s.total != h.total_len as usize {
            Some("disagrees with its frame's first piece")
        } else {
            let start = usize::from(h.index) * s.piece_len;
            let want = if h.index + 1 == h.count { s.total.checked_sub(start) } else { Some(s.piece_len) };
            if want != Some(piece.len()) { Some("wrong length for its index") } else { None }
        };
        if let Some(why) = reject {
            self.stats.inconsistent += 1;
            return Err(FragError::Inconsistent(why));
        }
        let (word, bit) = (usize::from(h.index) / 64, 1u64 << (h.index % 64));
        if s.bitmap[word] & bit != 0 {
            self.stats.duplicates += 1;
            return Ok(None);
        }
        s.bitmap[word] |= bit;
        let start = usize::from(h.index) * s.piece_len;
        s.buf[start..start + piece.len()].copy_from_slice(piece);
        s.have += 1;
        if s.have < s.count {
            return Ok(None);
        }
        s.busy = false;
        self.stats.completed += 1;
        let s = &self.slots[i];
        Ok(Some(Reassembled { flags: s.flags, payload: &s.buf[..s.total] }))
    }

    /// A slot for a new frame: a free one, a new one, or the oldest evicted.
    fn open_slot(&mut self, now: Instant, flags: u8, h: &FragmentHeader, len: usize) -> Result<usize, FragError> {
        let total = h.total_len as usize;
        // The piece length is fixed by any piece but the last; a last piece alone cannot tell it,
        // so it is derived: pieces 0..count-1 are equal and cover total - last.
        let piece_len = if h.index + 1 < h.count {
            len
        } else {
            let rest = total.checked_sub(len).ok_or(FragError::Inconsistent("piece longer than its frame"))?;
            let n = usize::from(h.count) - 1;
            if rest == 0 || rest % n != 0 {
                self.stats.inconsistent += 1;
                return Err(FragError::Inconsistent("last piece does not fit equal pieces"));
            }
            rest / n
        };
        if piece_len * (usize::from(h.count) - 1) >= total {
            self.stats.inconsistent += 1;
            return Err(FragError::Inconsistent("pieces overrun the frame"));
        }
        let i = match self.slots.iter().position(|s| !s.busy) {
            Some(i) => i,
            None if self.slots.len() < self.config.max_slots => {
                self.slots.push(Slot {
                    busy: false,
                    id: 0,
                    flags: 0,
                    count: 0,
                    total: 0,
                    piece_len: 0,
                    have: 0,
                    bitmap: [0; MAX_PIECES / 64],
                    started: now,
                    buf: vec![0u8; MAX_TOTAL].into_boxed_slice(),
                });
                self.slots.len() - 1
            }
            None => {
                self.stats.evicted += 1;
                self.slots.iter().enumerate().min_by_key(|(_, s)| s.started).map(|(i, _)| i).unwrap_or(0)
            }
        };
        let s = &mut self.slots[i];
        s.busy = true;
        s.id = h.id;
        s.flags = flags;
        s.count = h.count;
        s.total = total;
        s.piece_len = piece_len;
        s.have = 0;
        s.bitmap = [0; MAX_PIECES / 64];
        s.started = now;
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// The fragment payloads of `payload` cut into pieces of `max` bytes (rounded down to
    /// [`PIECE_ALIGN`]), written by [`Cut`] from the payload given as two parts (split where
    /// the frame head would end).
    fn fragments(id: u32, payload: &[u8], max: usize) -> Vec<Vec<u8>> {
        let max_body = max + wire::RECORD_HEADER_LEN + FRAG_HEADER_LEN;
        let cut = Cut::new(id, payload.len(), max_body).unwrap();
        let (head, tail) = payload.split_at(wire::FRAME_HEAD_MAX.min(payload.len()));
        let mut body = vec![0u8; max_body];
        (0..cut.count())
            .map(|i| {
                let mut w = BodyWriter::new(&mut body);
                cut.write_piece(&mut w, 1, i, head, tail).unwrap();
                let n = w.len();
                match wire::Records::new(&body[..n]).next() {
                    Some(Ok(wire::BodyRecord::Fragment { flags: 1, payload })) => payload.to_vec(),
                    other => panic!("piece {i}: {other:?}"),
                }
            })
            .collect()
    }

    fn reassemble(r: &mut Reassembler, now: Instant, frags: &[Vec<u8>]) -> Option<Vec<u8>> {
        let mut out = None;
        for f in frags {
            if let Some(w) = r.push(now, 1, f).unwrap() {
                assert!(out.is_none(), "completed twice");
                assert_eq!(w.flags, 1);
                out = Some(w.payload.to_vec());
            }
        }
        out
    }

    #[test]
    fn split_and_reassemble_in_order_reversed_and_shuffled() {
        let now = Instant::now();
        for max in [1400, 1200] {
            for n in [1401, 2800, 2801, 65_535, MAX_TOTAL] {
                let p = bytes(n);
                let mut f = fragments(9, &p, max);
                assert_eq!(f.len(), n.div_ceil(max / PIECE_ALIGN * PIECE_ALIGN));
                let mut r = Reassembler::new(ReasmConfig::default());
                assert_eq!(reassemble(&mut r, now, &f).as_deref(), Some(&p[..]), "{n}/{max} in order");
                f.reverse();
                assert_eq!(reassemble(&mut r, now, &f).as_deref(), Some(&p[..]), "{n}/{max} reversed");
                let half = f.len() / 2;
                f.rotate_left(half);
                assert_eq!(reassemble(&mut r, now, &f).as_deref(), Some(&p[..]), "{n}/{max} rotated");
                assert_eq!(r.stats().completed, 3);
                assert_eq!(r.pending(), 0);
            }
        }
    }

    #[test]
    fn duplicates_are_ignored_and_conflicting_or_forged_pieces_refused() {
        let now = Instant::now();
        let p = bytes(5000);
        let f = fragments(1, &p, 1400);
        let mut r = Reassembler::new(ReasmConfig::default());
        assert_eq!(r.push(now, 1, &f[0]).unwrap(), None);
        assert_eq!(r.push(now, 1, &f[0]).unwrap(), None);
        assert_eq!(r.stats().duplicates, 1);
        // Another total for the same id.
        let mut bad = f[1].clone();
        bad[8..12].copy_from_slice(&6000u32.to_be_bytes());
        assert!(matches!(r.push(now, 1, &bad), Err(FragError::Inconsistent(_))));
        // Other flags for the same id.
        assert!(matches!(r.push(now, 0, &f[1]), Err(FragError::Inconsistent(_))));
        // A piece of the wrong length for its index.
        assert!(matches!(r.push(now, 1, &f[1][..f[1].len() - 1]), Err(FragError::Inconsistent(_))));
        // An index beyond the count.
        let mut forged = f[1].clone();
        forged[4..6].copy_from_slice(&9u16.to_be_bytes());
        assert!(matches!(r.push(now, 1, &forged), Err(FragError::Malformed(_))));
        assert!(matches!(r.push(now, 1, &f[0][..5]), Err(FragError::Malformed(_))));
        // The genuine pieces still complete the frame.
        assert_eq!(reassemble(&mut r, now, &f[1..]).as_deref(), Some(&p[..]));
        assert_eq!(r.stats().inconsistent, 3);
    }

    #[test]
    fn memory_is_bounded_and_partial_frames_time_out() {
        let now = Instant::now();
        let cfg = ReasmConfig { max_slots: 2, timeout: Duration::from_millis(500) };
        let mut r = Reassembler::new(cfg);
        let frames: Vec<Vec<Vec<u8>>> = (0..3).map(|id| fragments(id, &bytes(3000), 1400)).collect();
        for (i, f) in frames.iter().enumerate() {
            r.push(now + Duration::from_millis(i as u64), 1, &f[0]).unwrap();
        }
        assert_eq!((r.pending(), r.stats().evicted), (2, 1));
        assert_eq!(r.slots.len(), 2, "never more buffers than slots");
        // id 0 was evicted: its other pieces start over and cannot complete it.
        assert_eq!(reassemble(&mut r, now, &frames[0][1..]), None);
        r.handle_timeout(now + Duration::from_secs(1));
        assert_eq!(r.pending(), 0);
        assert!(r.stats().timed_out >= 2);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn ranges_of_head_and_tail_are_copied_across_the_seam() {
        let (head, tail) = ([1u8, 2, 3], [4u8, 5, 6, 7, 8]);
        let whole: Vec<u8> = head.iter().chain(&tail).copied().collect();
        for off in 0..whole.len() {
            for len in 0..=whole.len() - off {
                let mut dst = vec![0u8; len];
                copy_range(&mut dst, &head, &tail, off);
                assert_eq!(dst, &whole[off..off + len], "off {off} len {len}");
            }
        }
    }

    #[test]
    fn cuts_refuse_what_cannot_be_fragmented() {
        let room = wire::RECORD_HEADER_LEN + FRAG_HEADER_LEN;
        assert_eq!(Cut::new(1, 100, room), Err(FragError::BodyTooSmall(room)));
        assert_eq!(Cut::new(1, 100, room + 112), Err(FragError::CannotCut { total_len: 100, count: 1 }));
        // Pieces are whole AEAD blocks, and so are the bodies that carry them.
        assert_eq!(Cut::new(1, 100, room + PIECE_ALIGN - 1), Err(FragError::BodyTooSmall(room + PIECE_ALIGN - 1)));
        assert_eq!((piece_len(1400), piece_len(1436), piece_len(1424), piece_len(room + 16)), (1376, 1408, 1408, 16));
        assert_eq!(Cut::new(1, MAX_TOTAL + 1, 1400), Err(FragError::CannotCut { total_len: MAX_TOTAL + 1, count: (MAX_TOTAL + 1).div_ceil(1376) }));
        assert!(matches!(Cut::new(1, MAX_TOTAL, room + 16), Err(FragError::CannotCut { .. })));
        let cut = Cut::new(7, wire::MAX_FRAME_PAYLOAD, 1400).unwrap();
        assert_eq!((cut.count(), cut.piece_len()), (wire::MAX_FRAME_PAYLOAD.div_ceil(1376), 1376));
        assert_eq!((room + cut.piece_len()) % PIECE_ALIGN, 0);
        assert_eq!(cut.header(3), FragmentHeader { id: 7, index: 3, count: cut.count() as u16, total_len: wire::MAX_FRAME_PAYLOAD as u32 });
    }

    proptest! {
        #[test]
        fn any_delivery_order_with_duplicates_reassembles_exactly(
            max in 576usize..1500,
            extra in 1usize..20_000,
            order in proptest::collection::vec(any::<u16>(), 0..64),
        ) {
            // Longer than one piece: a payload that fits one datagram is never fragmented.
            let p = bytes(max + extra);
            let f = fragments(77, &p, max);
            let mut seq: Vec<usize> = order.iter().map(|o| *o as usize % f.len()).collect();
            seq.extend(0..f.len());
            let mut r = Reassembler::new(ReasmConfig::default());
            let now = Instant::now();
            let mut done = None;
            for i in seq {
                if let Some(w) = r.push(now, 0, &f[i]).unwrap() {
                    prop_assert!(done.is_none());
                    done = Some(w.payload.to_vec());
                }
                if done.is_some() { break; }
            }
            prop_assert_eq!(done.as_deref(), Some(&p[..]));
        }

        /// A peer may cut pieces of any length (not whole AEAD blocks, as [`Cut`] does): the
        /// length is learnt from the pieces.
        #[test]
        fn pieces_of_any_length_reassemble(piece in 1usize..1500, extra in 1usize..5000, reversed in any::<bool>()) {
            let p = bytes(piece + extra);
            let count = p.len().div_ceil(piece);
            prop_assume!(count <= MAX_PIECES);
            let mut frags: Vec<Vec<u8>> = p
                .chunks(piece)
                .enumerate()
                .map(|(i, c)| {
                    let mut f = vec![0u8; FRAG_HEADER_LEN];
                    let h = FragmentHeader { id: 3, index: i as u16, count: count as u16, total_len: p.len() as u32 };
                    h.emit(&mut f).unwrap();
                    f.extend_from_slice(c);
                    f
                })
                .collect();
            if reversed {
                frags.reverse();
            }
            let mut r = Reassembler::new(ReasmConfig::default());
            let whole = reassemble(&mut r, Instant::now(), &frags);
            prop_assert_eq!(whole.as_deref(), Some(&p[..]));
        }

        #[test]
        fn arbitrary_fragments_never_panic(frags in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32)) {
            let mut r = Reassembler::new(ReasmConfig { max_slots: 2, ..ReasmConfig::default() });
            for f in frags {
                let _ = r.push(Instant::now(), f.first().copied().unwrap_or(0), &f);
            }
        }
    }
}
