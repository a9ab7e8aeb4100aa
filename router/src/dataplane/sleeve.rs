//! Frames onto and off the sleeve: sealing and sending a frame (whole or in fragments), and
//! walking an opened body (frames, reassembly, control records).
//!
//! The layout is the sleeve's ([`weft_sleeve::wire`]): a frame travels as a frame payload
//! ([`FrameRepr`]: a virtio-net header when the frame is a super-frame or needs its checksum
//! finished, the relay envelope, the Ethernet frame) in one Frame record. When that does not fit
//! one datagram of the link's size, the payload is cut into Fragment records ([`frag::Cut`]), one
//! per datagram, all of one size but the last, sealed one by one into consecutive slots of one
//! buffer under one session lock and handed to the kernel in one UDP GSO send. The receiver opens
//! each datagram, reassembles, and hands the frame to the TAP with its virtio-net header, so a
//! 64 KB TCP super-frame crosses whole and is segmented (if at all) by the receiving kernel.

use std::io;
use std::sync::MutexGuard;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use weft_sleeve::frag::{self, FragError, Reassembler};
use weft_sleeve::udp::SleeveSocket;
use weft_sleeve::wire::{self, BodyRecord, BodyWriter, FrameRepr, RecordKind, Records};

use super::links::SleeveLink;

/// Smallest datagram the sleeve sends (and so the smallest path it works over).
pub const MIN_DATAGRAM: usize = 576;
const OUT_CAPACITY: usize = 256 * 1024;

/// Data-plane counters (all links).
#[derive(Debug, Default)]
pub struct DataplaneStats {
    /// Frames read from the TAP.
    pub tap_frames_in: AtomicU64,
    /// Frames written to the TAP.
    pub tap_frames_out: AtomicU64,
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

/// What [`Sender::seal`] left in the sender's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// Bytes of sealed datagrams, from the start of the buffer.
    pub len: usize,
    /// The datagram size of a train of fragments (the UDP GSO segment size), or `None` for one
    /// datagram.
    pub segment: Option<usize>,
    /// How many datagrams.
    pub datagrams: usize,
}

/// Per-thread buffers for sending (allocated once).
pub struct Sender {
    out: Vec<u8>,
}

impl Default for Sender {
    fn default() -> Self {
        Sender { out: vec![0u8; OUT_CAPACITY] }
    }
}

impl Sender {
    /// Seals `frame` (offload metadata, envelope, Ethernet frame) for `link` and sends it: one
    /// datagram, or a GSO train of fragments. Holds the link's session lock while sealing.
    pub fn send(&mut self, now: Instant, sock: &SleeveSocket, link: &SleeveLink, frame: &FrameRepr<'_>) -> Result<(), SendError> {
        let sealed = self.seal(now, link, frame)?;
        sock.send(link.addr(), &self.out[..sealed.len], sealed.segment)?;
        link.stats.datagrams_out.fetch_add(sealed.datagrams as u64, Ordering::Relaxed);
        link.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        link.stats.bytes_out.fetch_add(frame.frame.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The first step of [`send`](Self::send), without the socket: writes `frame` for `link` into
    /// this sender's buffer (one Frame record, or Fragment records in consecutive slots of the
    /// link's datagram size) and seals each datagram in place under the link's session lock.
    /// The datagrams are [`sealed`](Self::sealed) until the next call; nothing is counted.
    pub fn seal(&mut self, now: Instant, link: &SleeveLink, frame: &FrameRepr<'_>) -> Result<Sealed, SendError> {
        let plen = frame.buffer_len();
        if plen > wire::MAX_FRAME_PAYLOAD {
            return Err(SendError::TooBig(frame.frame.len()));
        }
        let dsize = link.datagram();
        if dsize < MIN_DATAGRAM {
            return Err(SendError::DatagramTooSmall(dsize));
        }
        let mut session = link.session();
        let body = session.body_range(dsize);
        if wire::RECORD_HEADER_LEN + plen <= body.len() {
            let body_len = {
                let mut w = BodyWriter::new(&mut self.out[body]);
                w.push_frame(frame)?;
                w.len()
            };
            let n = session.seal_in_place(now, &mut self.out, body_len)?;
            Ok(Sealed { len: n, segment: None, datagrams: 1 })
        } else {
            // Each piece is copied straight from the head (vnet header and envelope) and the frame.
            let mut head = [0u8; wire::FRAME_HEAD_MAX];
            let hlen = frame.emit_head(&mut head)?;
            let cut = frag::Cut::new(link.next_frag_id(), plen, body.len()).map_err(|e| SendError::Fragment(plen, e))?;
            if cut.count() * dsize > self.out.len() {
                return Err(SendError::TooBig(frame.frame.len()));
            }
            let mut total = 0;
            for k in 0..cut.count() {
                let slot = &mut self.out[k * dsize..(k + 1) * dsize];
                let body_len = {
                    let mut w = BodyWriter::new(&mut slot[body.clone()]);
                    cut.write_piece(&mut w, frame.flags(), k, &head[..hlen], frame.frame)?;
                    w.len()
                };
                let n = session.seal_in_place(now, slot, body_len)?;
                total = k * dsize + n;
            }
            Ok(Sealed { len: total, segment: Some(dsize), datagrams: cut.count() })
        }
    }

    /// The datagrams of the last [`seal`](Self::seal): `sealed.len` bytes, one datagram per
    /// `sealed.segment` bytes when it is set (all full but the last).
    pub fn sealed(&self, sealed: &Sealed) -> &[u8] {
        &self.out[..sealed.len]
    }

    /// Seals one control record (heartbeat, probe) for `link`, padded to `pad_to` bytes of
    /// datagram, and sends it.
    pub fn send_control(&mut self, now: Instant, sock: &SleeveSocket, link: &SleeveLink, payload: &[u8], pad_to: usize) -> Result<(), SendError> {
        let mut session = link.session();
        let overhead = session.overhead();
        let len = payload.len().max(pad_to.saturating_sub(overhead + wire::RECORD_HEADER_LEN)).min(wire::MAX_RECORD_PAYLOAD);
        let body = session.body_range(overhead + wire::RECORD_HEADER_LEN + len);
        let body_len = {
            let mut w = BodyWriter::new(&mut self.out[body]);
            let p = w.reserve(RecordKind::Control, 0, len)?;
            p[..payload.len()].copy_from_slice(payload);
            p[payload.len()..].fill(0);
            w.len()
        };
        let n = session.seal_in_place(now, &mut self.out, body_len)?;
        drop(session);
        sock.send(link.addr(), &self.out[..n], None)?;
        Ok(())
    }
}

/// One item of an opened datagram.
#[derive(Debug, Clone, Copy)]
pub enum Received<'a> {
    /// A whole frame (reassembled if it came in pieces).
    Frame(FrameRepr<'a>),
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

/// Hands each frame and control record of an opened datagram body to `f`, reassembling
/// fragmented frames on the way. Malformed records and fragments are counted and dropped.
pub fn for_each_record(now: Instant, body: &[u8], reasm: &mut LazyReasm<'_>, stats: &DataplaneStats, mut f: impl FnMut(Received<'_>)) {
    for r in Records::new(body) {
        match r {
            Ok(BodyRecord::Frame(frame)) => f(Received::Frame(frame)),
            Ok(BodyRecord::Control { payload, .. }) => f(Received::Control(payload)),
            Ok(BodyRecord::Fragment { flags, payload }) => match reasm.get().push(now, flags, payload) {
                Ok(Some(whole)) => match FrameRepr::parse(whole.flags, whole.payload) {
                    Ok(frame) => f(Received::Frame(frame)),
                    Err(_) => inc(&stats.drop_malformed),
                },
                Ok(None) => {}
                Err(_) => inc(&stats.drop_malformed),
            },
            Err(_) => {
                inc(&stats.drop_malformed);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn walk(now: Instant, link: &SleeveLink, body: &[u8], stats: &DataplaneStats) -> Vec<Item> {
        let mut items = Vec::new();
        let mut reasm = LazyReasm::new(link);
        for_each_record(now, body, &mut reasm, stats, |r| {
            items.push(match r {
                Received::Frame(f) => Item::Frame(f.vnet, f.envelope, f.frame.to_vec()),
                Received::Control(p) => Item::Control(p.to_vec()),
            })
        });
        items
    }

    #[test]
    fn whole_and_fragmented_frames_and_control_records_come_out_and_bad_ones_are_counted() {
        let now = Instant::now();
        let link = link(now);
        let stats = DataplaneStats::default();
        let env = EnvelopeRepr { dst: [1; 6], src: [2; 6], hops: 16 };
        let vnet = VnetHdr { flags: 1, gso_type: 1, hdr_len: 66, gso_size: 1448, csum_start: 34, csum_offset: 16 };
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
        assert_eq!(walk(now, &link, &body[..n], &stats), vec![Item::Frame(None, env, small.clone()), Item::Control(b"hb".to_vec())]);

        // The super-frame cut into bodies of 1400 bytes, delivered last piece first.
        let mut head = [0u8; wire::FRAME_HEAD_MAX];
        let hlen = super_frame.emit_head(&mut head).unwrap();
        let cut = frag::Cut::new(9, super_frame.buffer_len(), 1400).unwrap();
        let mut got = Vec::new();
        for k in (0..cut.count()).rev() {
            let mut w = BodyWriter::new(&mut body);
            cut.write_piece(&mut w, super_frame.flags(), k, &head[..hlen], &big).unwrap();
            let n = w.len();
            got.extend(walk(now, &link, &body[..n], &stats));
        }
        assert_eq!(got, vec![Item::Frame(Some(vnet), env, big.clone())]);
        assert_eq!(stats.drop_malformed.load(Ordering::Relaxed), 0);

        // A fragment that disagrees with itself, and a record of unknown kind, are counted.
        let mut w = BodyWriter::new(&mut body);
        w.push_fragment(0, &[0; 20]).unwrap();
        let n = w.len();
        body[n..n + 4].copy_from_slice(&[9, 0, 0, 0]);
        assert_eq!(walk(now, &link, &body[..n + 4], &stats), vec![]);
        assert_eq!(stats.drop_malformed.load(Ordering::Relaxed), 2);
    }
}
