//! Fragmented super-frames written to the TAP from the receive buffers their pieces were opened
//! in, not copied together first (sans-IO: the sleeve thread and the data-path bench drive it).
//!
//! A 64 KB TCP super-frame crosses the sleeve in ~47 pieces, one per datagram; UDP GRO hands
//! them over in messages of at most 64 KB, so one frame's pieces lie in two (or more) receive
//! buffers. [`Gather`] follows one such frame per sleeve thread: while its pieces come in order
//! (index 0, 1, 2, ... of one frame of one link, a super-frame with its virtio-net header), it
//! notes where each lies instead of copying it into the link's reassembler; after each
//! message, [`Gather::keep`] takes the receive buffer that holds some of them out of the receive
//! batch (a spare, allocated once, takes its place), so the next receive does not overwrite them.
//! When the last piece arrives the frame is handed over as [`Pieces`], which the TAP write
//! gathers (`writev`) from where they lie.
//!
//! Anything else goes to the reassembler ([`weft_sleeve::frag::Reassembler`]), as before: a
//! piece out of order, lost or repeated, a frame that is no super-frame, has more than
//! [`MAX_PIECES`] pieces or spans more than [`MAX_HELD`] held buffers, a frame the reassembler
//! already holds pieces of. A frame being gathered that its link's next piece does not continue
//! is first *spilled*: its pieces so far are pushed into the reassembler, in order, and the frame
//! completes there or times out there. Pieces of other links go to their own reassemblers and
//! leave the frame being gathered alone. Memory is bounded: a `Gather` owns at most
//! [`MAX_HELD`] buffers besides the receive batch's, held or spare.

use std::ops::Range;
use std::time::Instant;

use weft_mesh::peer::PeerName;
use weft_sleeve::frag::{FRAG_HEADER_LEN, FragmentHeader, ReasmConfig};
use weft_sleeve::wire::{EnvelopeRepr, FrameRepr, VnetHdr};

use super::links::SleeveLink;
use super::vnet;

/// Most pieces of a frame gathered (the rest are reassembled by copy): a 64 KB super-frame in
/// datagrams of about 1100 bytes or more. The TAP write takes one `iovec` per piece.
pub const MAX_PIECES: usize = 64;
/// Most receive buffers one frame being gathered holds: besides the message being walked (a
/// 64 KB frame in 1472-byte datagrams spans two GRO messages, three when it starts late in one).
pub const MAX_HELD: usize = 3;

/// Which link a frame comes from: its peer, connection and session index.
type LinkKey = (PeerName, u64, u32);

fn key(link: &SleeveLink) -> LinkKey {
    (link.peer, link.conn_id, link.local_index)
}

/// Where a piece lies: in the message being walked, or in a held buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Buf {
    Current,
    Held(usize),
}

/// One piece: its fragment payload (fragment header and piece) in its buffer.
#[derive(Debug, Clone)]
struct Piece {
    buf: Buf,
    fragment: Range<usize>,
}

/// The frame being gathered, as its first piece announced it.
#[derive(Debug, Clone, Copy)]
struct Frame {
    link: LinkKey,
    flags: u8,
    id: u32,
    count: usize,
    total: usize,
    piece_len: usize,
    started: Instant,
}

/// What became of a piece offered to [`Gather::offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Noted where it lies; more pieces to come.
    Taken,
    /// Noted, and the frame is complete: take it with [`Gather::complete`].
    Complete,
    /// Not gathered: the caller reassembles it, after spilling the frame being gathered into
    /// the reassembler if `spill` (this piece's link's next piece did not continue it).
    Refused {
        /// The frame being gathered must be spilled first.
        spill: bool,
    },
}

/// One sleeve thread's frame being gathered, the receive buffers it holds and the spares.
#[derive(Debug, Default)]
pub struct Gather {
    frame: Option<Frame>,
    pieces: Vec<Piece>,
    held: Vec<Box<[u8]>>,
    spare: Vec<Box<[u8]>>,
}

/// A frame gathered from its pieces: the head of its frame payload and its Ethernet frame in
/// parts, borrowed from the receive buffers until the next piece is offered.
#[derive(Debug, Clone, Copy)]
pub struct Pieces<'a> {
    /// The virtio-net header that came with the frame (a super-frame always has one).
    pub vnet: Option<VnetHdr>,
    /// The relay envelope.
    pub envelope: EnvelopeRepr,
    /// The start of the Ethernet frame (its headers): what the first piece carries of it.
    pub first: &'a [u8],
    len: usize,
    gather: &'a Gather,
    current: &'a [u8],
}

impl<'a> Pieces<'a> {
    /// The Ethernet frame's parts, in order.
    pub fn parts(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let (gather, current) = (self.gather, self.current);
        std::iter::once(self.first).chain(gather.pieces[1..].iter().map(move |p| gather.piece(p, current)))
    }

    /// The Ethernet frame's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame is empty (never: a frame has at least its Ethernet header).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The Ethernet frame copied together into `out` (replacing what it held).
    pub fn copy_into<'o>(&self, out: &'o mut Vec<u8>) -> &'o [u8] {
        out.clear();
        for p in self.parts() {
            out.extend_from_slice(p);
        }
        out
    }
}

impl Gather {
    /// Offers a fragment of `link` (its record `flags`, parsed header `h`, and where its whole
    /// fragment payload lies in the message being walked, `current`), received at `now`.
    /// `reassembling(id)` says whether the link's reassembler holds pieces of frame `id`.
    #[allow(clippy::too_many_arguments)]
    pub fn offer(&mut self, now: Instant, link: &SleeveLink, flags: u8, h: &FragmentHeader, current: &[u8], fragment: Range<usize>, reassembling: impl FnOnce(u32) -> bool) -> Offer {
        let piece_len = fragment.len().saturating_sub(FRAG_HEADER_LEN);
        let (index, count, total) = (usize::from(h.index), usize::from(h.count), h.total_len as usize);
        if let Some(f) = &self.frame {
            if f.link != key(link) {
                return Offer::Refused { spill: false };
            }
            let want = if index + 1 == f.count { f.total - index * f.piece_len } else { f.piece_len };
            let continues = h.id == f.id
                && flags == f.flags
                && count == f.count
                && total == f.total
                && index == self.pieces.len()
                && piece_len == want
                && now.saturating_duration_since(f.started) < ReasmConfig::default().timeout
                && self.room_for_current();
            if !continues {
                return Offer::Refused { spill: true };
            }
            self.pieces.push(Piece { buf: Buf::Current, fragment });
            return if self.pieces.len() == f.count { Offer::Complete } else { Offer::Taken };
        }
        // A new frame: its first piece, of a super-frame, in equal pieces the sender cut.
        let first = current.get(fragment.start + FRAG_HEADER_LEN..fragment.end).unwrap_or_default();
        let super_frame = FrameRepr::parse(flags, first).is_ok_and(|r| r.vnet.is_some_and(|v| vnet::is_gso(&v)));
        if index != 0 || count > MAX_PIECES || !super_frame || piece_len * (count - 1) >= total || total > piece_len * count || reassembling(h.id) {
            return Offer::Refused { spill: false };
        }
        self.frame = Some(Frame { link: key(link), flags, id: h.id, count, total, piece_len, started: now });
        self.pieces.push(Piece { buf: Buf::Current, fragment });
        Offer::Taken
    }

    /// Whether a piece of the message being walked may be added: one already is, or the
    /// message's buffer can still be held.
    fn room_for_current(&self) -> bool {
        self.held.len() < MAX_HELD || self.pieces.iter().any(|p| p.buf == Buf::Current)
    }

    /// The frame just completed by [`Offer::Complete`] (`current`: the message being walked);
    /// call [`Gather::clear`] once it is written. None if its pieces are no longer where they
    /// were noted (a message's buffer not shown to [`Gather::keep`]).
    pub fn complete<'a>(&'a self, current: &'a [u8]) -> Option<Pieces<'a>> {
        let f = self.frame.as_ref().filter(|f| self.pieces.len() == f.count)?;
        let first = self.piece(self.pieces.first()?, current);
        let r = FrameRepr::parse(f.flags, first).ok()?;
        let mut p = Pieces { vnet: r.vnet, envelope: r.envelope, first: r.frame, len: 0, gather: self, current };
        p.len = p.parts().map(<[u8]>::len).sum();
        // Every piece where it was noted (a buffer not kept after its message would not be).
        (r.head_len() + p.len == f.total).then_some(p)
    }

    /// The frame being gathered, to push into its link's reassembler in order (spilled): its
    /// record flags and fragment payloads. Call [`Gather::clear`] after.
    pub fn spill<'a>(&'a self, current: &'a [u8]) -> impl Iterator<Item = (u8, &'a [u8])> + 'a {
        let flags = self.frame.map_or(0, |f| f.flags);
        self.pieces.iter().map(move |p| (flags, self.bytes(p, current)))
    }

    /// Forgets the frame being gathered; its held buffers become spares.
    pub fn clear(&mut self) {
        self.frame = None;
        self.pieces.clear();
        self.spare.append(&mut self.held);
    }

    /// After a message was walked: if pieces of the frame being gathered lie in its buffer
    /// `buf`, holds that buffer and puts a spare of the same size in its place (the next receive
    /// fills the spare).
    pub fn keep(&mut self, buf: &mut Box<[u8]>) {
        if !self.pieces.iter().any(|p| p.buf == Buf::Current) {
            return;
        }
        let mut spare = match self.spare.pop() {
            Some(s) if s.len() == buf.len() => s,
            _ => vec![0u8; buf.len()].into_boxed_slice(),
        };
        std::mem::swap(buf, &mut spare);
        let k = self.held.len();
        self.held.push(spare);
        for p in self.pieces.iter_mut().filter(|p| p.buf == Buf::Current) {
            p.buf = Buf::Held(k);
        }
    }

    /// Whether a frame is being gathered.
    pub fn is_gathering(&self) -> bool {
        self.frame.is_some()
    }

    /// Receive buffers held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A piece's bytes (after its fragment header).
    fn piece<'a>(&'a self, p: &Piece, current: &'a [u8]) -> &'a [u8] {
        self.bytes(p, current).get(FRAG_HEADER_LEN..).unwrap_or_default()
    }

    /// A piece's fragment payload (fragment header and piece).
    fn bytes<'a>(&'a self, p: &Piece, current: &'a [u8]) -> &'a [u8] {
        let buf: &[u8] = match p.buf {
            Buf::Current => current,
            Buf::Held(k) => &self.held[k],
        };
        buf.get(p.fragment.clone()).unwrap_or_default()
    }
}
