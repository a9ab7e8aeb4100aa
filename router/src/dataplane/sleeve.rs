//! Frames onto and off the sleeve: packing frames into datagrams (whole or in fragments),
//! sealing and sending them, and walking an opened body (frames, reassembly, control records).
//!
//! The layout is the sleeve's ([`weft_sleeve::wire`]): a frame travels as a frame payload
//! ([`FrameRepr`]: a virtio-net header when the frame is a super-frame or needs its checksum
//! finished, the relay envelope, the Ethernet frame) in a Frame record. The frames of one batch
//! for one link are packed ([`Sender`]): as many Frame records per datagram as fit the link's
//! datagram size, so small frames share one seal and one datagram. A frame that does not fit
//! one datagram is cut into Fragment records ([`frag::Cut`]), one per datagram, all of one size
//! but the last. A link's datagrams lie end to end in one buffer, are sealed in place under one
//! session lock at the end of the batch and handed to the kernel as UDP GSO trains (one send per
//! run of equal-sized datagrams). The receiver opens each datagram, walks all its records,
//! reassembles (or, for a super-frame whose pieces come in order, gathers them where they were
//! received: [`gather`]), and hands each frame to the TAP with its virtio-net header, so a 64 KB
//! TCP super-frame crosses whole and is segmented (if at all) by the receiving kernel.
//!
//! [`gather`]: super::gather

use std::io;
use std::ops::Range;
use std::sync::{Arc, MutexGuard};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use weft_sleeve::frag::{self, FRAG_HEADER_LEN, FragError, Reassembler};
use weft_sleeve::udp::SleeveSocket;
use weft_sleeve::wire::{self, BodyRecord, BodyWriter, EnvelopeRepr, FrameRepr, RecordKind, Records, VnetHdr};

use super::gather::{Gather, Offer, Pieces};
use super::links::SleeveLink;
use super::tapio::{self, Layout};

/// Smallest datagram the sleeve sends (and so the smallest path it works over).
pub const MIN_DATAGRAM: usize = 576;

/// Data-plane counters (all links).
#[derive(Debug, Default)]
pub struct DataplaneStats {
    /// Frames read from the TAP.
    pub tap_frames_in: AtomicU64,
    /// Frames written to the TAP (a merged run of UDP datagrams is one).
    pub tap_frames_out: AtomicU64,
    /// UDP datagrams from the sleeve written to the TAP merged with others of their flow
    /// (`udpmerge`).
    pub udp_merged: AtomicU64,
    /// Fragmented super-frames written to the TAP from their pieces where they were received
    /// (`gather`), not copied together.
    pub frames_gathered: AtomicU64,
    /// Frames relayed for other peers.
    pub relayed: AtomicU64,
    /// Dropped: no route to the destination peer (or no link to the next hop).
    pub drop_no_route: AtomicU64,
    /// Dropped: malformed datagrams, records, envelopes or frames.
    pub drop_malformed: AtomicU64,
    /// Dropped: datagrams for no session of ours.
    pub drop_unknown_session: AtomicU64,
    /// Dropped: datagrams that failed to open (authentication, replay, ...; the session's own
    /// counters say which).
    pub drop_open: AtomicU64,
    /// Dropped: frames too large for the sleeve.
    pub drop_too_big: AtomicU64,
    /// Dropped: the kernel refused a send or a TAP write.
    pub drop_io: AtomicU64,
    /// Dropped by the switch (link-local control frames, bad sources, hop limit, loops).
    pub drop_switch: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Why a frame (or control record) could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The frame exceeds what the sleeve carries.
    #[error("frame of {0} bytes exceeds the sleeve's limit")]
    TooBig(usize),
    /// The datagram size is below the minimum.
    #[error("datagram size {0} is below the sleeve's minimum of {MIN_DATAGRAM}")]
    DatagramTooSmall(usize),
    /// The frame payload could not be cut into fragments for the link's datagram size.
    #[error("cannot fragment a frame payload of {0} bytes")]
    Fragment(usize, #[source] FragError),
    /// Sealing failed.
    #[error("cannot seal the datagram")]
    Seal(#[from] weft_sleeve::SealError),
    /// Writing a record failed.
    #[error("cannot write the record")]
    Wire(#[from] wire::Error),
    /// The socket refused.
    #[error("UDP send failed")]
    Io(#[from] io::Error),
}

/// Bytes of one link's train buffer: room for a 64 KB super-frame cut into fragments at any
/// datagram size (the largest case, two datagrams of 64 KB, needs 128 KB) and for a TAP batch
/// of packed frames.
const TRAIN_CAPACITY: usize = 256 * 1024;
/// Links with datagrams queued at once; a frame for one more link flushes them all first.
pub const MAX_TRAINS: usize = 8;
/// Bytes of the buffer for control records (padded up to one datagram).
const CONTROL_CAPACITY: usize = wire::SEALED_OVERHEAD + wire::RECORD_HEADER_LEN + wire::MAX_RECORD_PAYLOAD;

/// Where a [`Sender`] hands its sealed datagrams: the sleeve socket, or a test's or
/// benchmark's stand-in.
pub trait Wire {
    /// Sends `datagrams` to `link`'s peer: one datagram, or with `segment` a train of datagrams
    /// of that size, the last possibly shorter (one UDP GSO send).
    fn send(&mut self, link: &SleeveLink, datagrams: &[u8], segment: Option<usize>) -> io::Result<()>;

    /// `frames` frames queued for `link` were lost on the way out, for `error`.
    fn failed(&mut self, link: &SleeveLink, frames: u64, error: SendError);
}

/// The datagrams queued for one link, end to end in `buf` as they go on the wire: each a header,
/// a body of records and room for the tag; the last takes more whole frames while `open`.
struct Train {
    link: Option<Arc<SleeveLink>>,
    buf: Box<[u8]>,
    /// The datagram size the train was started with.
    dsize: usize,
    /// Each datagram's start in `buf` and body length.
    dgrams: Vec<(usize, usize)>,
    /// Whether the last datagram takes more whole frames (not after fragments).
    open: bool,
    frames: u64,
    bytes: u64,
}

impl Train {
    fn new() -> Train {
        Train { link: None, buf: vec![0u8; TRAIN_CAPACITY].into_boxed_slice(), dsize: 0, dgrams: Vec::with_capacity(64), open: false, frames: 0, bytes: 0 }
    }

    /// Where the next datagram starts.
    fn end(&self, overhead: usize) -> usize {
        self.dgrams.last().map_or(0, |&(start, body)| start + overhead + body)
    }

    /// Seals every queued datagram under one session lock and hands them to `wire`, one call
    /// per run of equal-sized datagrams (the last of a run may be shorter, as UDP GSO allows).
    /// Empties the train.
    fn flush(&mut self, now: Instant, wire: &mut dyn Wire) {
        let Some(link) = self.link.take() else { return };
        let (frames, bytes, n) = (self.frames, self.bytes, self.dgrams.len());
        self.frames = 0;
        self.bytes = 0;
        self.open = false;
        let overhead = link.overhead;
        let sealed = {
            let mut session = link.session();
            self.dgrams.iter().try_for_each(|&(start, body)| session.seal_in_place(now, &mut self.buf[start..start + overhead + body], body).map(|_| ()))
        };
        if let Err(e) = sealed {
            self.dgrams.clear();
            wire.failed(&link, frames, e.into());
            return;
        }
        let mut k = 0;
        while k < n {
            let (start, body) = self.dgrams[k];
            let len = overhead + body;
            let mut j = k + 1;
            while j < n && overhead + self.dgrams[j].1 == len {
                j += 1;
            }
            if j < n && overhead + self.dgrams[j].1 < len {
                j += 1;
            }
            let (last, last_body) = self.dgrams[j - 1];
            let r = wire.send(&link, &self.buf[start..last + overhead + last_body], (j - k > 1).then_some(len));
            if let Err(e) = r {
                self.dgrams.clear();
                wire.failed(&link, frames, e.into());
                return;
            }
            k = j;
        }
        self.dgrams.clear();
        link.stats.datagrams_out.fetch_add(n as u64, Ordering::Relaxed);
        link.stats.frames_out.fetch_add(frames, Ordering::Relaxed);
        link.stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Per-thread buffers for sending, allocated once (a link's train when a batch first sends to
/// it, then kept).
///
/// Frames [`push`](Self::push)ed for one link within a batch are packed: each whole frame is a
/// Frame record appended to the link's last datagram while it fits the link's datagram size,
/// else it starts the next; a frame too large for one datagram is cut into Fragment records,
/// one per datagram, after the frames queued before it. [`flush`](Self::flush) (at the end of
/// each batch) seals a link's datagrams under one session lock and sends each run of
/// equal-sized datagrams as one UDP GSO train. A link's frames leave in the order they were
/// pushed, so every flow keeps its order.
pub struct Sender {
    control: Vec<u8>,
    trains: Vec<Train>,
    /// `trains[..used]` hold datagrams.
    used: usize,
}

impl Default for Sender {
    fn default() -> Self {
        Sender { control: vec![0u8; CONTROL_CAPACITY], trains: Vec::new(), used: 0 }
    }
}

impl Sender {
    /// Queues `frame` (offload metadata, envelope, Ethernet frame) for `link`. A train that
    /// has no room left, and every train when [`MAX_TRAINS`] links have datagrams queued, is
    /// flushed to `wire` first. Errors concern this frame only (nothing was queued); a flush's
    /// failures go to [`Wire::failed`].
    pub fn push(&mut self, now: Instant, wire: &mut dyn Wire, link: &Arc<SleeveLink>, frame: &FrameRepr<'_>) -> Result<(), SendError> {
        let plen = frame.buffer_len();
        if plen > wire::MAX_FRAME_PAYLOAD {
            return Err(SendError::TooBig(frame.frame.len()));
        }
        let dsize = link.datagram();
        if dsize < MIN_DATAGRAM {
            return Err(SendError::DatagramTooSmall(dsize));
        }
        let overhead = link.overhead;
        let max_body = dsize.saturating_sub(overhead);
        let t = self.train(now, wire, link, dsize);
        let train = &mut self.trains[t];
        if wire::RECORD_HEADER_LEN + plen <= max_body {
            let rec = wire::RECORD_HEADER_LEN + plen;
            let fits = train.open && train.dgrams.last().is_some_and(|&(_, body)| body + rec <= max_body);
            if !fits {
                if train.end(overhead) + dsize > train.buf.len() {
                    train.flush(now, wire);
                    train.link = Some(link.clone());
                }
                let at = train.end(overhead);
                train.dgrams.push((at, 0));
                train.open = true;
            }
            let Some(last) = train.dgrams.last_mut() else { unreachable!("a datagram was just queued") };
            let at = last.0 + wire::HEADER_LEN + last.1;
            let written = BodyWriter::new(&mut train.buf[at..at + rec]).push_frame(frame);
            if let Err(e) = written {
                if last.1 == 0 {
                    train.dgrams.pop();
                }
                return Err(e.into());
            }
            last.1 += rec;
        } else {
            // Each piece is copied straight from the head (vnet header and envelope) and the frame.
            let mut head = [0u8; wire::FRAME_HEAD_MAX];
            let hlen = frame.emit_head(&mut head)?;
            let cut = frag::Cut::new(link.next_frag_id(), plen, max_body).map_err(|e| SendError::Fragment(plen, e))?;
            if cut.count() * dsize > train.buf.len() {
                return Err(SendError::TooBig(frame.frame.len()));
            }
            if train.end(overhead) + cut.count() * dsize > train.buf.len() {
                train.flush(now, wire);
                train.link = Some(link.clone());
            }
            let mark = train.dgrams.len();
            let mut at = train.end(overhead);
            for k in 0..cut.count() {
                let body = at + wire::HEADER_LEN..at + dsize - (overhead - wire::HEADER_LEN);
                let mut w = BodyWriter::new(&mut train.buf[body]);
                if let Err(e) = cut.write_piece(&mut w, frame.flags(), k, &head[..hlen], frame.frame) {
                    train.dgrams.truncate(mark);
                    return Err(e.into());
                }
                train.dgrams.push((at, w.len()));
                at += overhead + w.len();
            }
            train.open = false;
        }
        train.frames += 1;
        train.bytes += frame.frame.len() as u64;
        Ok(())
    }

    /// The index of `link`'s train, started (at datagram size `dsize`) if it has none; a train
    /// started at another datagram size is flushed and started again.
    fn train(&mut self, now: Instant, wire: &mut dyn Wire, link: &Arc<SleeveLink>, dsize: usize) -> usize {
        let found = self.trains[..self.used].iter().position(|t| t.link.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)));
        if let Some(i) = found {
            let t = &mut self.trains[i];
            if t.dsize != dsize {
                t.flush(now, wire);
                t.link = Some(link.clone());
                t.dsize = dsize;
            }
            return i;
        }
        if self.used == MAX_TRAINS {
            self.flush(now, wire);
        }
        if self.trains.len() == self.used {
            self.trains.push(Train::new());
        }
        let t = &mut self.trains[self.used];
        t.link = Some(link.clone());
        t.dsize = dsize;
        self.used += 1;
        self.used - 1
    }

    /// Seals and sends everything queued, link by link (in the order the links were first
    /// pushed to).
    pub fn flush(&mut self, now: Instant, wire: &mut dyn Wire) {
        for t in &mut self.trains[..self.used] {
            t.flush(now, wire);
        }
        self.used = 0;
    }

    /// Sends a super-frame that was read laid out for `link` (`layout`, see
    /// [`tapio`]): writes its head (`vnet`, `envelope`) and the record and fragment
    /// headers around its pieces in `buf`, seals the datagrams where they lie and sends them as
    /// one GSO train, after everything queued before it (flushed first, so that every flow keeps
    /// its order). No byte of the frame is copied. Returns false, having done nothing, when the
    /// link's datagram size or overhead is no longer what `layout` was made for (none is made
    /// below [`MIN_DATAGRAM`]; the caller then sends a copy, or learns why not). Errors concern
    /// this frame only; a refused seal or send goes to [`Wire::failed`].
    #[allow(clippy::too_many_arguments)]
    pub fn send_laid_out(&mut self, now: Instant, wire: &mut dyn Wire, link: &Arc<SleeveLink>, vnet: VnetHdr, envelope: EnvelopeRepr, layout: Layout, buf: &mut [u8], frame_len: usize) -> Result<bool, SendError> {
        let (dsize, overhead) = (link.datagram(), link.overhead);
        if Layout::new(dsize, overhead) != Some(layout) {
            return Ok(false);
        }
        let head = FrameRepr { vnet: Some(vnet), envelope, frame: &[] };
        debug_assert_eq!(head.head_len(), tapio::HEAD);
        let plen = tapio::HEAD + frame_len;
        if plen > wire::MAX_FRAME_PAYLOAD {
            return Err(SendError::TooBig(frame_len));
        }
        let cut = frag::Cut::new(link.next_frag_id(), plen, dsize - overhead).map_err(|e| SendError::Fragment(plen, e))?;
        debug_assert_eq!(cut.piece_len(), layout.piece_len);
        // Full pieces' datagrams, as the layout placed them (at most the link's size).
        let dsize = layout.dsize;
        self.flush(now, wire);
        head.emit_head(&mut buf[tapio::PIECE_AT..tapio::PIECE_AT + tapio::HEAD])?;
        let body = |k: usize| wire::RECORD_HEADER_LEN + FRAG_HEADER_LEN + cut.piece_len().min(plen - k * cut.piece_len());
        for k in 0..cut.count() {
            let at = k * dsize + wire::HEADER_LEN;
            cut.write_piece_header(&mut BodyWriter::new(&mut buf[at..at + body(k)]), head.flags(), k)?;
        }
        let sealed = {
            let mut session = link.session();
            (0..cut.count()).try_for_each(|k| session.seal_in_place(now, &mut buf[k * dsize..k * dsize + overhead + body(k)], body(k)).map(|_| ()))
        };
        let last = cut.count() - 1;
        let sent = match sealed {
            Ok(()) => wire.send(link, &buf[..last * dsize + overhead + body(last)], Some(dsize)).map_err(SendError::from),
            Err(e) => Err(e.into()),
        };
        match sent {
            Ok(()) => {
                link.stats.datagrams_out.fetch_add(cut.count() as u64, Ordering::Relaxed);
                link.stats.frames_out.fetch_add(1, Ordering::Relaxed);
                link.stats.bytes_out.fetch_add(frame_len as u64, Ordering::Relaxed);
            }
            Err(e) => wire.failed(link, 1, e),
        }
        Ok(true)
    }

    /// Whether frames are queued.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Seals one control record (heartbeat, probe) for `link`, padded to `pad_to` bytes of
    /// datagram, and sends it.
    pub fn send_control(&mut self, now: Instant, sock: &SleeveSocket, link: &SleeveLink, payload: &[u8], pad_to: usize) -> Result<(), SendError> {
        let mut session = link.session();
        let overhead = session.overhead();
        let len = payload.len().max(pad_to.saturating_sub(overhead + wire::RECORD_HEADER_LEN)).min(wire::MAX_RECORD_PAYLOAD);
        let body = session.body_range(overhead + wire::RECORD_HEADER_LEN + len);
        let body_len = {
            let mut w = BodyWriter::new(&mut self.control[body]);
            let p = w.reserve(RecordKind::Control, 0, len)?;
            p[..payload.len()].copy_from_slice(payload);
            p[payload.len()..].fill(0);
            w.len()
        };
        let n = session.seal_in_place(now, &mut self.control, body_len)?;
        drop(session);
        sock.send(link.addr(), &self.control[..n], None)?;
        Ok(())
    }
}

/// One item of an opened datagram.
#[derive(Debug, Clone, Copy)]
pub enum Received<'a> {
    /// A whole frame (reassembled if it came in pieces).
    Frame(FrameRepr<'a>),
    /// A super-frame gathered from its pieces where they were received ([`super::gather`]).
    Pieces(Pieces<'a>),
    /// A control record's payload (heartbeat, probe).
    Control(&'a [u8]),
}

/// A link's reassembler, locked when a fragment first needs it and then held until dropped (the
/// receive path keeps one per received message, so the lock is taken at most once per message).
pub struct LazyReasm<'a> {
    link: &'a SleeveLink,
    guard: Option<MutexGuard<'a, Reassembler>>,
}

impl<'a> LazyReasm<'a> {
    /// Nothing locked yet.
    pub fn new(link: &'a SleeveLink) -> LazyReasm<'a> {
        LazyReasm { link, guard: None }
    }

    fn get(&mut self) -> &mut Reassembler {
        let link = self.link;
        self.guard.get_or_insert_with(|| link.reassembler())
    }
}

/// Hands each frame and control record of the opened datagram body at `body` in `data` (a
/// received message) to `f`. Fragmented super-frames whose pieces come in order are gathered
/// where they lie (`gather`; after the message, [`Gather::keep`] must see its buffer), other
/// fragmented frames are reassembled. Malformed records and fragments are counted and dropped.
pub fn for_each_record(now: Instant, data: &[u8], body: Range<usize>, reasm: &mut LazyReasm<'_>, gather: &mut Gather, stats: &DataplaneStats, mut f: impl FnMut(Received<'_>)) {
    let Some(body) = data.get(body) else {
        inc(&stats.drop_malformed);
        return;
    };
    for r in Records::new(body) {
        match r {
            Ok(BodyRecord::Frame(frame)) => f(Received::Frame(frame)),
            Ok(BodyRecord::Control { payload, .. }) => f(Received::Control(payload)),
            Ok(BodyRecord::Fragment { flags, payload }) => {
                if let Ok((h, _)) = frag::FragmentHeader::parse(payload) {
                    // Where the fragment lies in the message (`payload` is a part of `data`).
                    let at = payload.as_ptr() as usize - data.as_ptr() as usize;
                    let fragment = at..at + payload.len();
                    let mut offer = gather.offer(now, reasm.link, flags, &h, data, fragment.clone(), |id| reasm.get().holds(id));
                    if offer == (Offer::Refused { spill: true }) {
                        // The frame being gathered did not continue: reassembled from here on,
                        // and this piece may start the next one.
                        for (flags, fragment) in gather.spill(data) {
                            reassemble(now, reasm, flags, fragment, stats, &mut f);
                        }
                        gather.clear();
                        offer = gather.offer(now, reasm.link, flags, &h, data, fragment, |id| reasm.get().holds(id));
                    }
                    match offer {
                        Offer::Taken => continue,
                        Offer::Complete => {
                            match gather.complete(data) {
                                Some(p) => f(Received::Pieces(p)),
                                None => inc(&stats.drop_malformed),
                            }
                            gather.clear();
                            continue;
                        }
                        Offer::Refused { .. } => {}
                    }
                }
                reassemble(now, reasm, flags, payload, stats, &mut f);
            }
            Err(_) => {
                inc(&stats.drop_malformed);
                break;
            }
        }
    }
}

/// Pushes one fragment into the link's reassembler; hands the frame to `f` if it completes it.
fn reassemble(now: Instant, reasm: &mut LazyReasm<'_>, flags: u8, fragment: &[u8], stats: &DataplaneStats, f: &mut impl FnMut(Received<'_>)) {
    match reasm.get().push(now, flags, fragment) {
        Ok(Some(whole)) => match FrameRepr::parse(whole.flags, whole.payload) {
            Ok(frame) => f(Received::Frame(frame)),
            Err(_) => inc(&stats.drop_malformed),
        },
        Ok(None) => {}
        Err(_) => inc(&stats.drop_malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::gather;
    use proptest::prelude::*;
    use weft_mesh::peer::PeerName;
    use weft_sleeve::wire::{EnvelopeRepr, VnetHdr};
    use weft_sleeve::{Config, Role, Session, SessionIds};

    fn link(now: Instant) -> SleeveLink {
        let ids = SessionIds { local: 1, remote: 2 };
        let session = Session::new(&[1; 32], Role::Initiator, ids, Config::plain(), now);
        SleeveLink::new(PeerName([2; 6]), 7, session, "192.0.2.2:6784".parse().unwrap(), 1400, weft_sleeve::liveness::LivenessConfig::default(), now)
    }

    /// What `for_each_record` handed over, owned.
    #[derive(Debug, PartialEq)]
    enum Item {
        Frame(Option<VnetHdr>, EnvelopeRepr, Vec<u8>),
        Control(Vec<u8>),
    }

    /// Walks `body` as a received message of its own with `gather`.
    fn walk(now: Instant, link: &SleeveLink, body: &[u8], gather: &mut Gather, stats: &DataplaneStats) -> Vec<Item> {
        walk_message(now, link, &[body], gather, stats)
    }

    /// Walks `bodies` as one received message (a GRO train of their datagrams) with `gather`,
    /// then overwrites the message's buffer, as the next receive would, unless `gather` kept it.
    /// Frames handed over in pieces are counted in `stats.frames_gathered`.
    fn walk_message(now: Instant, link: &SleeveLink, bodies: &[&[u8]], gather: &mut Gather, stats: &DataplaneStats) -> Vec<Item> {
        let mut buf: Box<[u8]> = bodies.concat().into();
        let mut items = Vec::new();
        let mut reasm = LazyReasm::new(link);
        let mut at = 0;
        for b in bodies {
            for_each_record(now, &buf, at..at + b.len(), &mut reasm, gather, stats, |r| {
                items.push(match r {
                    Received::Frame(f) => Item::Frame(f.vnet, f.envelope, f.frame.to_vec()),
                    Received::Pieces(p) => {
                        // As the data plane counts the gathered frames it writes.
                        inc(&stats.frames_gathered);
                        Item::Frame(p.vnet, p.envelope, p.copy_into(&mut Vec::new()).to_vec())
                    }
                    Received::Control(p) => Item::Control(p.to_vec()),
                })
            });
            at += b.len();
        }
        drop(reasm);
        gather.keep(&mut buf);
        buf.fill(0xee);
        items
    }

    /// The bodies of `frame` (as frame `id`) cut into fragments for bodies of `max_body` bytes.
    fn fragment_bodies(id: u32, frame: &FrameRepr<'_>, max_body: usize) -> Vec<Vec<u8>> {
        let mut head = [0u8; wire::FRAME_HEAD_MAX];
        let hlen = frame.emit_head(&mut head).unwrap();
        let cut = frag::Cut::new(id, frame.buffer_len(), max_body).unwrap();
        (0..cut.count())
            .map(|k| {
                let mut body = vec![0u8; max_body];
                let mut w = BodyWriter::new(&mut body);
                cut.write_piece(&mut w, frame.flags(), k, &head[..hlen], frame.frame).unwrap();
                let n = w.len();
                body.truncate(n);
                body
            })
            .collect()
    }

    /// The bodies of `frame` (as frame `id`) cut by hand into pieces of `piece` bytes, as a
    /// peer that does not keep pieces whole AEAD blocks may cut them.
    fn fragment_bodies_by(id: u32, frame: &FrameRepr<'_>, piece: usize) -> Vec<Vec<u8>> {
        let mut payload = vec![0u8; wire::FRAME_HEAD_MAX];
        let hlen = frame.emit_head(&mut payload).unwrap();
        payload.truncate(hlen);
        payload.extend_from_slice(frame.frame);
        let count = payload.len().div_ceil(piece);
        payload
            .chunks(piece)
            .enumerate()
            .map(|(k, p)| {
                let mut body = vec![0u8; wire::RECORD_HEADER_LEN + FRAG_HEADER_LEN + piece];
                let mut w = BodyWriter::new(&mut body);
                let r = w.reserve(wire::RecordKind::Fragment, frame.flags(), FRAG_HEADER_LEN + p.len()).unwrap();
                let h = frag::FragmentHeader { id, index: k as u16, count: count as u16, total_len: payload.len() as u32 };
                h.emit(r).unwrap();
                r[FRAG_HEADER_LEN..].copy_from_slice(p);
                let n = w.len();
                body.truncate(n);
                body
            })
            .collect()
    }

    /// The envelope of frames from the link's peer to this host.
    const ENV_IN: EnvelopeRepr = EnvelopeRepr { dst: [1; 6], src: [2; 6], hops: 16 };

    const TSO: VnetHdr = VnetHdr { flags: 1, gso_type: 1, hdr_len: 66, gso_size: 1448, csum_start: 34, csum_offset: 16 };

    /// Walks each group of `bodies` (from, to: by index) as one message; every item, in order.
    fn walk_groups(now: Instant, link: &SleeveLink, bodies: &[Vec<u8>], groups: &[(usize, usize)], gather: &mut Gather, stats: &DataplaneStats) -> Vec<Item> {
        let mut items = Vec::new();
        for &(from, to) in groups {
            let msg: Vec<&[u8]> = bodies[from..to].iter().map(Vec::as_slice).collect();
            items.extend(walk_message(now, link, &msg, gather, stats));
            assert!(gather.held() <= gather::MAX_HELD);
        }
        items
    }

    #[test]
    fn a_super_frame_in_order_is_gathered_where_it_lies_across_messages() {
        let now = Instant::now();
        let link = link(now);
        let stats = DataplaneStats::default();
        let env = ENV_IN;
        let big = eth(65_549, 3);
        let sf = FrameRepr { vnet: Some(TSO), envelope: env, frame: &big };
        let bodies = fragment_bodies(5, &sf, 1400);
        let n = bodies.len();
        assert!(n > 44 && n <= gather::MAX_PIECES, "{n} pieces");
        let gather = &mut Gather::default();
        // As UDP GRO hands them over: 44 datagrams, then the rest.
        assert_eq!(walk_groups(now, &link, &bodies, &[(0, 44)], gather, &stats), vec![]);
        assert_eq!(gather.held(), 1, "the first message's buffer is held");
        assert_eq!(walk_groups(now, &link, &bodies, &[(44, n)], gather, &stats), vec![Item::Frame(Some(TSO), env, big.clone())]);
        assert_eq!((gather.held(), gather.is_gathering()), (0, false));
        assert_eq!(stats.frames_gathered.load(Ordering::Relaxed), 1);
        assert_eq!(link.reassembler().stats().completed, 0, "nothing was copied together");

        // Also when it ends a message's datagrams and starts the next message's; and in
        // messages of one datagram each, it is gathered as far as MAX_HELD buffers go and
        // then reassembled.
        let items = walk_groups(now, &link, &bodies, &[(0, 1), (1, n)], gather, &stats);
        assert_eq!(items, vec![Item::Frame(Some(TSO), env, big.clone())]);
        assert_eq!(stats.frames_gathered.load(Ordering::Relaxed), 2);
        let ones: Vec<(usize, usize)> = (0..n).map(|i| (i, i + 1)).collect();
        assert_eq!(walk_groups(now, &link, &bodies, &ones, gather, &stats), vec![Item::Frame(Some(TSO), env, big.clone())]);
        assert_eq!(stats.frames_gathered.load(Ordering::Relaxed), 2);
        assert_eq!(link.reassembler().stats().completed, 1);

        // Cut by a peer into pieces that are not whole AEAD blocks (1420 bytes, where this
        // sender cuts 1408): gathered all the same.
        let theirs = fragment_bodies_by(6, &sf, 1420);
        assert_eq!(theirs[0].len(), 1436);
        let items = walk_groups(now, &link, &theirs, &[(0, 44), (44, theirs.len())], gather, &stats);
        assert_eq!(items, vec![Item::Frame(Some(TSO), env, big)]);
        assert_eq!((stats.frames_gathered.load(Ordering::Relaxed), link.reassembler().stats().completed), (3, 1));
        assert_eq!(stats.drop_malformed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn pieces_out_of_order_lost_or_of_other_frames_are_reassembled_and_nothing_else_is_lost() {
        let now = Instant::now();
        let (x, y) = (link(now), peer_link(now, Config::plain()));
        let stats = DataplaneStats::default();
        let env = ENV_IN;
        let (f1, f2, f3) = (eth(30_000, 1), eth(30_000, 2), eth(20_000, 3));
        let a = fragment_bodies(1, &FrameRepr { vnet: Some(TSO), envelope: env, frame: &f1 }, 1400);
        let b = fragment_bodies(2, &FrameRepr { vnet: Some(TSO), envelope: env, frame: &f2 }, 1400);
        let gather = &mut Gather::default();

        // Frame 1: piece 11 comes after 12..20. Spilled at 12, reassembled.
        let order: Vec<usize> = (0..11).chain(12..21).chain([11]).chain(21..a.len()).collect();
        let shuffled: Vec<Vec<u8>> = order.iter().map(|&i| a[i].clone()).collect();
        let items = walk_groups(now, &x, &shuffled, &[(0, 15), (15, a.len())], gather, &stats);
        assert_eq!(items, vec![Item::Frame(Some(TSO), env, f1.clone())]);
        assert_eq!((stats.frames_gathered.load(Ordering::Relaxed), x.reassembler().stats().completed), (0, 1));

        // Frame 1 again as id 1 is done; a frame whose tail is lost (pieces 0..5 of frame 1 cut
        // anew as id 3), then frame 2 in order: the partial one waits in the reassembler,
        // frame 2 is gathered.
        let lost = fragment_bodies(3, &FrameRepr { vnet: Some(TSO), envelope: env, frame: &f1 }, 1400);
        let mut seq: Vec<Vec<u8>> = lost[..5].to_vec();
        seq.extend(b.iter().cloned());
        let items = walk_groups(now, &x, &seq, &[(0, 10), (10, seq.len())], gather, &stats);
        assert_eq!(items, vec![Item::Frame(Some(TSO), env, f2.clone())]);
        assert_eq!(stats.frames_gathered.load(Ordering::Relaxed), 1);
        assert_eq!(x.reassembler().pending(), 1, "the partial frame waits for its timeout");

        // Pieces of another link, and a frame without offloads (not a super-frame), between
        // two halves of a frame being gathered: theirs are reassembled, it is gathered.
        let plain = fragment_bodies(7, &FrameRepr { vnet: None, envelope: env, frame: &f3 }, 1400);
        let other = fragment_bodies(8, &FrameRepr { vnet: Some(TSO), envelope: env, frame: &f3 }, 1400);
        assert_eq!(walk_groups(now, &x, &b, &[(0, 10)], gather, &stats), vec![]);
        let on_y = walk_groups(now, &y, &other, &[(0, other.len())], gather, &stats);
        assert_eq!(on_y, vec![Item::Frame(Some(TSO), env, f3.clone())]);
        assert_eq!(walk_groups(now, &x, &b, &[(10, b.len())], gather, &stats), vec![Item::Frame(Some(TSO), env, f2.clone())]);
        assert_eq!(stats.frames_gathered.load(Ordering::Relaxed), 2);
        assert_eq!(walk_groups(now, &x, &plain, &[(0, plain.len())], gather, &stats), vec![Item::Frame(None, env, f3.clone())]);
        assert_eq!(stats.frames_gathered.load(Ordering::Relaxed), 2);
        assert_eq!((x.reassembler().stats().completed, y.reassembler().stats().completed), (2, 1));

        // A repeated piece spills; the frame still comes out once.
        let mut dup = b.clone();
        dup.insert(7, b[6].clone());
        let b2 = fragment_bodies(9, &FrameRepr { vnet: Some(TSO), envelope: env, frame: &f2 }, 1400);
        dup.extend(b2.iter().cloned());
        let items = walk_groups(now, &x, &dup, &[(0, 30), (30, dup.len())], gather, &stats);
        assert_eq!(items, vec![Item::Frame(Some(TSO), env, f2.clone()), Item::Frame(Some(TSO), env, f2)]);
        assert_eq!(stats.drop_malformed.load(Ordering::Relaxed), 0);
    }

    /// One datagram body of a [`delivery`]: which link it came on, which frame it carries part
    /// of, and the body.
    type Datagram = (usize, usize, Vec<u8>);

    /// A frame as it came out: its virtio-net header and bytes.
    type Out = (Option<VnetHdr>, Vec<u8>);

    /// The frames of a [`delivery`] (vnet header, frame) and their datagrams in sending order.
    fn delivery(specs: &[(usize, bool, usize)]) -> (Vec<Out>, Vec<Datagram>) {
        let mut frames = Vec::new();
        let mut seq = Vec::new();
        for (i, &(len, tso, on)) in specs.iter().enumerate() {
            let vnet = tso.then_some(TSO);
            let f = eth(len, i as u8);
            let repr = FrameRepr { vnet, envelope: ENV_IN, frame: &f };
            if wire::RECORD_HEADER_LEN + repr.buffer_len() <= 1400 {
                let mut body = vec![0u8; 1400];
                let mut w = BodyWriter::new(&mut body);
                w.push_frame(&repr).unwrap();
                let n = w.len();
                body.truncate(n);
                seq.push((on, i, body));
            } else {
                seq.extend(fragment_bodies(i as u32, &repr, 1400).into_iter().map(|b| (on, i, b)));
            }
            frames.push((vnet, f));
        }
        (frames, seq)
    }

    /// Walks `seq` as the receive path would: messages of consecutive datagrams of one link,
    /// cut also where `cuts` says; every frame that came out, as (vnet, frame), each with the
    /// envelope it was sent with unless `corrupted`. Checks after each message that the gather
    /// holds no more buffers than its bound.
    fn receive_all(now: Instant, links: &[SleeveLink; 2], seq: &[Datagram], cuts: &[bool], corrupted: bool, stats: &DataplaneStats) -> Vec<Out> {
        let gather = &mut Gather::default();
        let mut out = Vec::new();
        let mut from = 0;
        for to in 1..=seq.len() {
            if to < seq.len() && seq[to].0 == seq[from].0 && !cuts.get(to).copied().unwrap_or(false) {
                continue;
            }
            let msg: Vec<&[u8]> = seq[from..to].iter().map(|d| d.2.as_slice()).collect();
            for item in walk_message(now, &links[seq[from].0], &msg, gather, stats) {
                match item {
                    Item::Frame(v, env, f) => {
                        assert!(corrupted || env == ENV_IN, "{env:?}");
                        out.push((v, f));
                    }
                    Item::Control(_) => assert!(corrupted, "no control record was sent"),
                }
            }
            assert!(gather.held() <= gather::MAX_HELD);
            from = to;
        }
        out
    }

    /// One to six frames, each of one of three kinds (whole, fragmented without offloads,
    /// super-frames), on either of two links: (length, TSO, link).
    fn frame_specs() -> impl Strategy<Value = Vec<(usize, bool, usize)>> {
        let spec = prop_oneof![
            (60usize..1300, any::<bool>(), 0usize..2),
            (1400usize..20_000, Just(false), 0usize..2),
            (1400usize..65_549, Just(true), 0usize..2),
        ];
        proptest::collection::vec(spec, 1..7)
    }

    proptest! {
        /// Datagrams reordered (pieces of one frame among themselves and among other frames'),
        /// in messages of any size: every frame comes out once, byte for byte, nothing is
        /// counted malformed, and at most MAX_HELD receive buffers are held at any time.
        #[test]
        fn reordered_datagrams_in_any_messages_give_every_frame_once(
            specs in frame_specs(),
            swaps in proptest::collection::vec((any::<prop::sample::Index>(), 1usize..4), 0..8),
            cuts in proptest::collection::vec(prop::bool::weighted(0.1), 0..2000),
        ) {
            let now = Instant::now();
            let links = [link(now), peer_link(now, Config::plain())];
            let (frames, mut seq) = delivery(&specs);
            for (at, by) in swaps {
                let (i, n) = (at.index(seq.len()), seq.len());
                seq.swap(i, (i + by).min(n - 1));
            }
            let stats = DataplaneStats::default();
            let mut out = receive_all(now, &links, &seq, &cuts, false, &stats);
            for f in &frames {
                let at = out.iter().position(|o| o == f);
                prop_assert!(at.is_some(), "a frame of {} bytes did not come out", f.1.len());
                out.swap_remove(at.unwrap_or_default());
            }
            prop_assert!(out.is_empty(), "{} frames came out more than once", out.len());
            prop_assert_eq!(stats.drop_malformed.load(Ordering::Relaxed), 0);
        }

        /// Datagrams lost, repeated and reordered: what comes out is only frames that were
        /// sent, byte for byte, each at most as often as its rarest datagram arrived; the
        /// gather's bound holds; nothing panics.
        #[test]
        fn lost_and_repeated_datagrams_give_only_frames_that_were_sent(
            specs in frame_specs(),
            edits in proptest::collection::vec((0u8..3, any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..24),
            cuts in proptest::collection::vec(prop::bool::weighted(0.1), 0..2000),
        ) {
            let now = Instant::now();
            let links = [link(now), peer_link(now, Config::plain())];
            let (frames, mut seq) = delivery(&specs);
            let sent = seq.clone();
            for (op, a, b) in edits {
                if seq.is_empty() {
                    break;
                }
                let (i, j) = (a.index(seq.len()), b.index(seq.len()));
                match op {
                    0 => {
                        seq.remove(i);
                    }
                    1 => {
                        let d = seq[i].clone();
                        seq.insert(j, d);
                    }
                    _ => seq.swap(i, j),
                }
            }
            let stats = DataplaneStats::default();
            let out = receive_all(now, &links, &seq, &cuts, false, &stats);
            for (k, f) in frames.iter().enumerate() {
                let times = out.iter().filter(|o| *o == f).count();
                // How often the rarest datagram of frame k arrived (its datagrams are told
                // apart by content).
                let rarest = sent.iter().filter(|d| d.1 == k).map(|d| seq.iter().filter(|s| s.2 == d.2).count()).min().unwrap_or(0);
                prop_assert!(times <= rarest, "frame {} came out {} times, its rarest datagram arrived {} times", k, times, rarest);
            }
            prop_assert!(out.iter().all(|o| frames.contains(o)), "a frame came out that was not sent");
        }

        /// Datagram bodies with bytes changed: nothing panics and the gather's bound holds
        /// (what comes out is the AEAD's to vouch for, not this layer's).
        #[test]
        fn corrupted_bodies_never_panic(
            specs in frame_specs(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()), 1..16),
            cuts in proptest::collection::vec(prop::bool::weighted(0.1), 0..2000),
        ) {
            let now = Instant::now();
            let links = [link(now), peer_link(now, Config::plain())];
            let (_, mut seq) = delivery(&specs);
            for (d, at, v) in flips {
                let n = seq.len();
                let body = &mut seq[d.index(n)].2;
                let i = at.index(body.len());
                body[i] ^= v | 1;
            }
            receive_all(now, &links, &seq, &cuts, true, &DataplaneStats::default());
        }
    }

    #[test]
    fn whole_and_fragmented_frames_and_control_records_come_out_and_bad_ones_are_counted() {
        let now = Instant::now();
        let link = link(now);
        let stats = DataplaneStats::default();
        let env = ENV_IN;
        let vnet = TSO;
        let small: Vec<u8> = (0..60u8).collect();
        let big: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let whole = FrameRepr { vnet: None, envelope: env, frame: &small };
        let super_frame = FrameRepr { vnet: Some(vnet), envelope: env, frame: &big };

        // One body: a whole frame and a control record.
        let mut body = vec![0u8; 1400];
        let n = {
            let mut w = BodyWriter::new(&mut body);
            w.push_frame(&whole).unwrap();
            w.push_control(0, b"hb").unwrap();
            w.len()
        };
        let gather = &mut Gather::default();
        assert_eq!(walk(now, &link, &body[..n], gather, &stats), vec![Item::Frame(None, env, small.clone()), Item::Control(b"hb".to_vec())]);

        // The super-frame cut into bodies of 1400 bytes, delivered last piece first.
        let mut got = Vec::new();
        for piece in fragment_bodies(9, &super_frame, 1400).iter().rev() {
            got.extend(walk(now, &link, piece, gather, &stats));
        }
        assert_eq!(got, vec![Item::Frame(Some(vnet), env, big.clone())]);
        assert_eq!(stats.drop_malformed.load(Ordering::Relaxed), 0);

        // A fragment that disagrees with itself, and a record of unknown kind, are counted.
        let mut w = BodyWriter::new(&mut body);
        w.push_fragment(0, &[0; 20]).unwrap();
        let n = w.len();
        body[n..n + 4].copy_from_slice(&[9, 0, 0, 0]);
        assert_eq!(walk(now, &link, &body[..n + 4], gather, &stats), vec![]);
        assert_eq!(stats.drop_malformed.load(Ordering::Relaxed), 2);
    }

    /// A link from B back to A: it opens what `link` seals.
    fn peer_link(now: Instant, config: Config) -> SleeveLink {
        let ids = SessionIds { local: 2, remote: 1 };
        let session = Session::new(&[1; 32], Role::Responder, ids, config, now);
        SleeveLink::new(PeerName([1; 6]), 7, session, "192.0.2.1:6784".parse().unwrap(), 1472, weft_sleeve::liveness::LivenessConfig::default(), now)
    }

    fn sealed_link(now: Instant, peer: u8, datagram: usize) -> Arc<SleeveLink> {
        let ids = SessionIds { local: 1, remote: 2 };
        let session = Session::new(&[1; 32], Role::Initiator, ids, Config::sealed(weft_sleeve::Cipher::ChaCha20Poly1305), now);
        let l = SleeveLink::new(PeerName([peer; 6]), 7, session, "192.0.2.2:6784".parse().unwrap(), datagram, weft_sleeve::liveness::LivenessConfig::default(), now);
        l.set_datagram(datagram);
        Arc::new(l)
    }

    /// A wire that keeps every send (peer, bytes, segment) and every failure.
    #[derive(Default)]
    struct Recorder {
        sends: Vec<(PeerName, Vec<u8>, Option<usize>)>,
        failed: Vec<(PeerName, u64)>,
        refuse: bool,
    }

    impl Wire for Recorder {
        fn send(&mut self, link: &SleeveLink, datagrams: &[u8], segment: Option<usize>) -> io::Result<()> {
            if self.refuse {
                return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
            }
            self.sends.push((link.peer, datagrams.to_vec(), segment));
            Ok(())
        }

        fn failed(&mut self, link: &SleeveLink, frames: u64, _: SendError) {
            self.failed.push((link.peer, frames));
        }
    }

    /// Opens the datagrams of the sends to `peer` with `rx` and walks them: every frame and
    /// control record, in order, and how many datagrams there were.
    fn receive(now: Instant, rx: &SleeveLink, sends: &[(PeerName, Vec<u8>, Option<usize>)], peer: PeerName) -> (Vec<Item>, usize) {
        let stats = DataplaneStats::default();
        let gather = &mut Gather::default();
        let mut items = Vec::new();
        let mut datagrams = 0;
        for (_, bytes, segment) in sends.iter().filter(|s| s.0 == peer) {
            let mut bytes = bytes.clone();
            let stride = segment.unwrap_or(bytes.len());
            assert!(segment.is_none() || bytes.len() > stride, "a train has at least two datagrams");
            for (i, d) in bytes.chunks_mut(stride).enumerate() {
                if segment.is_some() && i > 0 {
                    assert!(d.len() <= stride);
                }
                let body = rx.session().open(now, d).expect("the datagram opens");
                items.extend(walk(now, rx, &d[body], gather, &stats));
                datagrams += 1;
            }
        }
        assert_eq!(stats.drop_malformed.load(Ordering::Relaxed), 0);
        (items, datagrams)
    }

    fn frames_of(items: Vec<Item>) -> Vec<Vec<u8>> {
        items
            .into_iter()
            .map(|i| match i {
                Item::Frame(_, _, f) => f,
                Item::Control(_) => panic!("no control records were sent"),
            })
            .collect()
    }

    fn eth(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    const ENV: EnvelopeRepr = EnvelopeRepr { dst: [2; 6], src: [1; 6], hops: 16 };

    #[test]
    fn small_frames_of_a_batch_share_datagrams_and_one_send() {
        let now = Instant::now();
        let (tx, rx) = (sealed_link(now, 2, 1472), peer_link(now, Config::sealed(weft_sleeve::Cipher::ChaCha20Poly1305)));
        let mut sender = Sender::default();
        let mut wire = Recorder::default();
        let frames: Vec<Vec<u8>> = (0..32).map(|i| eth(64, i)).collect();
        for f in &frames {
            sender.push(now, &mut wire, &tx, &FrameRepr { vnet: None, envelope: ENV, frame: f }).unwrap();
        }
        assert!(wire.sends.is_empty(), "nothing leaves before the flush");
        sender.flush(now, &mut wire);
        assert!(sender.is_empty());
        // 82-byte records in bodies of 1436 bytes: 17 in the first datagram, 15 in the second,
        // one GSO send of a full-sized datagram and a shorter last one.
        assert_eq!(wire.sends.len(), 1);
        assert_eq!(wire.sends[0].2, Some(36 + 17 * 82));
        assert_eq!(wire.sends[0].1.len(), 36 + 17 * 82 + 36 + 15 * 82);
        let (items, datagrams) = receive(now, &rx, &wire.sends, tx.peer);
        assert_eq!(datagrams, 2);
        assert_eq!(frames_of(items), frames);
        assert_eq!(tx.stats.datagrams_out.load(Ordering::Relaxed), 2);
        assert_eq!(tx.stats.frames_out.load(Ordering::Relaxed), 32);
        assert_eq!(tx.stats.bytes_out.load(Ordering::Relaxed), 32 * 64);
    }

    #[test]
    fn equal_frames_one_per_datagram_go_as_one_train() {
        let now = Instant::now();
        let (tx, rx) = (sealed_link(now, 2, 1472), peer_link(now, Config::sealed(weft_sleeve::Cipher::ChaCha20Poly1305)));
        let mut sender = Sender::default();
        let mut wire = Recorder::default();
        let frames: Vec<Vec<u8>> = (0..32).map(|i| eth(1400, i)).collect();
        for f in &frames {
            sender.push(now, &mut wire, &tx, &FrameRepr { vnet: None, envelope: ENV, frame: f }).unwrap();
        }
        sender.flush(now, &mut wire);
        assert_eq!(wire.sends.len(), 1);
        assert_eq!(wire.sends[0].2, Some(36 + 4 + 14 + 1400));
        let (items, datagrams) = receive(now, &rx, &wire.sends, tx.peer);
        assert_eq!((frames_of(items), datagrams), (frames, 32));
    }

    #[test]
    fn mixed_sizes_fragments_and_two_links_keep_each_links_order() {
        let now = Instant::now();
        let cfg = Config::sealed(weft_sleeve::Cipher::ChaCha20Poly1305);
        let (tx1, rx1) = (sealed_link(now, 2, 1472), peer_link(now, cfg));
        let (tx2, rx2) = (sealed_link(now, 3, 1000), peer_link(now, cfg));
        let vnet = VnetHdr { flags: 1, gso_type: 1, hdr_len: 66, gso_size: 1448, csum_start: 34, csum_offset: 16 };
        let bcast = EnvelopeRepr { dst: wire::BROADCAST_PEER, src: [1; 6], hops: 16 };
        let mut sender = Sender::default();
        let mut wire = Recorder::default();
        let sizes = [64, 1400, 65_549, 60, 9000, 60, 1000, 65_549, 65_549, 65_549, 64, 14];
        let mut sent: [Vec<Item>; 2] = Default::default();
        for (i, &size) in sizes.iter().enumerate() {
            let f = eth(size, i as u8);
            let v = (size > 1514).then_some(vnet);
            let env = if i % 3 == 0 { bcast } else { ENV };
            for (k, tx) in [&tx1, &tx2].into_iter().enumerate() {
                if k == 1 && i % 2 == 1 {
                    continue;
                }
                sender.push(now, &mut wire, tx, &FrameRepr { vnet: v, envelope: env, frame: &f }).unwrap();
                sent[k].push(Item::Frame(v, env, f.clone()));
            }
        }
        // Four super-frames do not fit one train: a train was flushed on the way.
        assert!(!wire.sends.is_empty());
        sender.flush(now, &mut wire);
        assert!(wire.failed.is_empty());
        let [sent1, sent2] = sent;
        assert_eq!(receive(now, &rx1, &wire.sends, tx1.peer).0, sent1);
        assert_eq!(receive(now, &rx2, &wire.sends, tx2.peer).0, sent2);
        for (_, bytes, segment) in &wire.sends {
            assert!(segment.unwrap_or(bytes.len()) <= 1472);
        }
    }

    #[test]
    fn a_smaller_datagram_size_flushes_the_train_and_applies_to_later_frames() {
        let now = Instant::now();
        let (tx, rx) = (sealed_link(now, 2, 1472), peer_link(now, Config::sealed(weft_sleeve::Cipher::ChaCha20Poly1305)));
        let mut sender = Sender::default();
        let mut wire = Recorder::default();
        let frames: Vec<Vec<u8>> = (0..3).map(|i| eth(1200, i)).collect();
        sender.push(now, &mut wire, &tx, &FrameRepr { vnet: None, envelope: ENV, frame: &frames[0] }).unwrap();
        tx.set_datagram(700);
        sender.push(now, &mut wire, &tx, &FrameRepr { vnet: None, envelope: ENV, frame: &frames[1] }).unwrap();
        assert_eq!(wire.sends.len(), 1, "the train of the old size left first");
        sender.push(now, &mut wire, &tx, &FrameRepr { vnet: None, envelope: ENV, frame: &frames[2] }).unwrap();
        sender.flush(now, &mut wire);
        for (_, bytes, segment) in &wire.sends[1..] {
            assert!(segment.unwrap_or(bytes.len()) <= 700);
        }
        assert_eq!(frames_of(receive(now, &rx, &wire.sends, tx.peer).0), frames);
    }

    /// A super-frame read laid out (as `FrameBuf::fill` lays it, as a `readv` from the TAP does)
    /// for a link, between small frames queued for the same link.
    #[test]
    fn a_super_frame_read_laid_out_leaves_from_where_it_lies_and_in_order() {
        use super::super::tapio::{FrameBuf, Layout};
        let now = Instant::now();
        let (tx, rx) = (sealed_link(now, 2, 1472), peer_link(now, Config::sealed(weft_sleeve::Cipher::ChaCha20Poly1305)));
        let vnet = VnetHdr { flags: 1, gso_type: 1, hdr_len: 66, gso_size: 1448, csum_start: 34, csum_offset: 16 };
        let mut hdr = [0u8; super::super::vnet::LEN];
        super::super::vnet::emit(&vnet, &mut hdr);
        let layout = Layout::new(1472, tx.overhead).unwrap();
        let mut sender = Sender::default();
        let mut wire = Recorder::default();
        let (small, big, last) = (eth(64, 1), eth(65_549, 2), eth(64, 3));
        sender.push(now, &mut wire, &tx, &FrameRepr { vnet: None, envelope: ENV, frame: &small }).unwrap();
        let mut b = FrameBuf::default();
        b.fill(&[&hdr[..], &big].concat(), Some(layout));
        assert!(b.frame().is_none(), "a super-frame spans pieces");
        assert_eq!(b.frame_start(), &big[..layout.piece_len - super::super::tapio::HEAD]);
        let mut whole = Vec::new();
        b.gather(&mut whole);
        assert_eq!(whole, big);
        let (l, buf) = b.laid_out_mut().unwrap();
        assert!(sender.send_laid_out(now, &mut wire, &tx, vnet, ENV, l, buf, big.len()).unwrap());
        assert_eq!(wire.sends.len(), 2, "the small frame queued before it left first");
        sender.push(now, &mut wire, &tx, &FrameRepr { vnet: None, envelope: ENV, frame: &last }).unwrap();
        sender.flush(now, &mut wire);
        // 65 573 bytes of payload (head and frame) in pieces of 1408 (not 1420: a full piece's
        // body, 1424 bytes, is whole AEAD blocks): 47 datagrams of 1460 bytes, one GSO train.
        assert_eq!((layout.piece_len, layout.dsize), (1408, 1460));
        assert_eq!(wire.sends[1].2, Some(1460));
        let (items, datagrams) = receive(now, &rx, &wire.sends, tx.peer);
        assert_eq!(datagrams, 1 + 47 + 1);
        assert!(matches!(items[1], Item::Frame(Some(v), _, _) if v == vnet), "the vnet header crossed");
        assert_eq!(frames_of(items), vec![small.clone(), big.clone(), last]);
        assert_eq!(tx.stats.frames_out.load(Ordering::Relaxed), 3);
        assert_eq!(tx.stats.bytes_out.load(Ordering::Relaxed), 64 + 65_549 + 64);
        // A small frame read laid out lies whole in the first piece.
        b.fill(&[&hdr[..], &small].concat(), Some(layout));
        assert_eq!(b.frame(), Some(&small[..]));
        assert!(b.laid_out_mut().is_none());
        // Once the link's datagram size changed, the layout no longer fits: nothing is sent.
        b.fill(&[&hdr[..], &big].concat(), Some(layout));
        tx.set_datagram(1400);
        let (l, buf) = b.laid_out_mut().unwrap();
        assert!(!sender.send_laid_out(now, &mut wire, &tx, vnet, ENV, l, buf, big.len()).unwrap());
        // Nor below the sleeve's smallest datagram: no layout is made for it.
        tx.set_datagram(MIN_DATAGRAM - 76);
        assert_eq!(Layout::new(MIN_DATAGRAM - 76, tx.overhead), None);
        let (_, buf) = b.laid_out_mut().unwrap();
        assert!(!sender.send_laid_out(now, &mut wire, &tx, vnet, ENV, layout, buf, big.len()).unwrap());
        assert_eq!(wire.sends.len(), 3);
        // Every datagram size the sleeve uses has a layout; none has room for no frame bytes.
        assert!(Layout::new(MIN_DATAGRAM, tx.overhead).is_some());
        assert_eq!(Layout::new(tx.overhead + 40, tx.overhead), None);
    }

    #[test]
    fn a_refused_send_reports_the_trains_frames_and_frames_too_big_are_refused() {
        let now = Instant::now();
        let tx = sealed_link(now, 2, 1472);
        let mut sender = Sender::default();
        let mut wire = Recorder { refuse: true, ..Recorder::default() };
        for i in 0..5 {
            sender.push(now, &mut wire, &tx, &FrameRepr { vnet: None, envelope: ENV, frame: &eth(100, i) }).unwrap();
        }
        let huge = eth(wire::MAX_FRAME_PAYLOAD, 0);
        assert!(matches!(sender.push(now, &mut wire, &tx, &FrameRepr { vnet: None, envelope: ENV, frame: &huge }), Err(SendError::TooBig(_))));
        sender.flush(now, &mut wire);
        assert_eq!(wire.failed, vec![(tx.peer, 5)]);
        assert_eq!(tx.stats.frames_out.load(Ordering::Relaxed), 0);
        // The sender is usable again.
        wire.refuse = false;
        sender.push(now, &mut wire, &tx, &FrameRepr { vnet: None, envelope: ENV, frame: &eth(100, 9) }).unwrap();
        sender.flush(now, &mut wire);
        assert_eq!(wire.sends.len(), 1);
    }

    #[test]
    fn more_links_than_trains_flush_the_queued_ones_first() {
        let now = Instant::now();
        let links: Vec<_> = (0..MAX_TRAINS as u8 + 2).map(|p| sealed_link(now, 10 + p, 1472)).collect();
        let mut sender = Sender::default();
        let mut wire = Recorder::default();
        for l in &links {
            sender.push(now, &mut wire, l, &FrameRepr { vnet: None, envelope: ENV, frame: &eth(64, 0) }).unwrap();
        }
        assert_eq!(wire.sends.len(), MAX_TRAINS);
        sender.flush(now, &mut wire);
        let peers: Vec<_> = wire.sends.iter().map(|s| s.0).collect();
        assert_eq!(peers, links.iter().map(|l| l.peer).collect::<Vec<_>>());
    }
}
