//! Frames onto and off the sleeve: framing, fragmentation, sealing and opening.
//!
//! A frame travels as one record of a sleeve packet (see `weft_sleeve::wire`): a Frame record
//! whose payload is `[virtio-net header (10 bytes, when the frame is a super-frame or needs its
//! checksum finished)] [envelope (14 bytes: destination peer, origin peer, hops)] [Ethernet
//! frame]`. When that does not fit one datagram of the link's size, the payload is split into
//! Fragment records (`weft_sleeve::frag`), one per datagram, all of one size but the last, sealed
//! one by one into consecutive slots of one buffer and handed to the kernel in one UDP GSO send.
//! The receiver opens each datagram, reassembles, and hands the frame to the TAP with its
//! virtio-net header, so a 64 KB TCP super-frame crosses whole and is segmented (if at all) by
//! the receiving kernel.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use weft_mesh::peer::PeerName;
use weft_sleeve::frag::{self, FRAG_HEADER_LEN};
use weft_sleeve::udp::SleeveSocket;
use weft_sleeve::wire::{self, BodyRecord, BodyWriter, FRAME_FLAG_VNET_HDR, RecordKind, Records};
use weft_sleeve::VnetHdr;

use super::envelope::{self, Envelope};
use super::links::SleeveLink;

/// Largest frame record payload: virtio-net header, envelope, a 64 KB IP packet and its
/// Ethernet header.
pub const MAX_PAYLOAD: usize = wire::VNET_HDR_LEN + envelope::LEN + 14 + 65_535;
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

/// Why a frame could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The frame exceeds what the sleeve carries.
    #[error("frame of {0} bytes exceeds the sleeve's limit")]
    TooBig(usize),
    /// The datagram size is below the minimum.
    #[error("datagram size {0} is too small")]
    DatagramTooSmall(usize),
    /// Sealing failed.
    #[error("seal: {0}")]
    Seal(#[from] weft_sleeve::SealError),
    /// Writing a record failed.
    #[error("record: {0}")]
    Wire(#[from] wire::Error),
    /// The socket refused.
    #[error("send: {0}")]
    Io(#[from] io::Error),
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
    /// Seals `frame` (with its offload metadata and envelope) for `link` and sends it.
    pub fn send(&mut self, now: Instant, sock: &SleeveSocket, link: &SleeveLink, env: Envelope, vnet: Option<&VnetHdr>, frame: &[u8]) -> Result<(), SendError> {
        let vlen = if vnet.is_some() { wire::VNET_HDR_LEN } else { 0 };
        let plen = vlen + envelope::LEN + frame.len();
        if plen > MAX_PAYLOAD {
            return Err(SendError::TooBig(frame.len()));
        }
        let flags = if vnet.is_some() { FRAME_FLAG_VNET_HDR } else { 0 };
        let dsize = link.datagram();
        if dsize < MIN_DATAGRAM {
            return Err(SendError::DatagramTooSmall(dsize));
        }
        let mut session = link.session();
        let overhead = session.overhead();
        let addr = link.addr();
        if wire::RECORD_HEADER_LEN + plen + overhead <= dsize {
            let body_len = {
                let mut w = BodyWriter::new(&mut self.out[wire::HEADER_LEN..dsize - (overhead - wire::HEADER_LEN)]);
                let p = w.reserve(RecordKind::Frame, flags, plen)?;
                write_payload(p, vnet, env, frame)?;
                w.len()
            };
            let n = session.seal_in_place(now, &mut self.out, body_len)?;
            drop(session);
            sock.send(addr, &self.out[..n], None)?;
            link.stats.datagrams_out.fetch_add(1, Ordering::Relaxed);
        } else {
            // The payload is `head` (vnet header and envelope, at most 24 bytes) then `frame`;
            // each piece is copied straight from them into its datagram slot.
            let mut head = [0u8; wire::VNET_HDR_LEN + envelope::LEN];
            let hlen = vlen + envelope::LEN;
            write_payload(&mut head[..hlen], vnet, env, &[])?;
            let piece = dsize - overhead - wire::RECORD_HEADER_LEN - FRAG_HEADER_LEN;
            let count = frag::pieces_needed(plen, piece);
            if count * dsize > self.out.len() {
                return Err(SendError::TooBig(frame.len()));
            }
            let id = link.next_frag_id();
            let mut total = 0;
            for k in 0..count {
                let (off, len) = (k * piece, piece.min(plen - k * piece));
                let h = frag::FragmentHeader { id, index: k as u16, count: count as u16, total_len: plen as u32 };
                let slot = &mut self.out[k * dsize..(k + 1) * dsize];
                let body_len = {
                    let mut w = BodyWriter::new(&mut slot[wire::HEADER_LEN..dsize - (overhead - wire::HEADER_LEN)]);
                    let p = w.reserve(RecordKind::Fragment, flags, FRAG_HEADER_LEN + len)?;
                    let (fh, dst) = p.split_at_mut(FRAG_HEADER_LEN);
                    let _ = h.emit(fh);
                    copy_range(dst, &head[..hlen], frame, off);
                    w.len()
                };
                let n = session.seal_in_place(now, slot, body_len)?;
                total = k * dsize + n;
            }
            drop(session);
            sock.send(addr, &self.out[..total], Some(dsize))?;
            link.stats.datagrams_out.fetch_add(count as u64, Ordering::Relaxed);
        }
        link.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        link.stats.bytes_out.fetch_add(frame.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Seals one control record (heartbeat, probe) for `link`, padded to `pad_to` bytes of
    /// datagram, and sends it.
    pub fn send_control(&mut self, now: Instant, sock: &SleeveSocket, link: &SleeveLink, payload: &[u8], pad_to: usize) -> Result<(), SendError> {
        let mut session = link.session();
        let overhead = session.overhead();
        let len = payload.len().max(pad_to.saturating_sub(overhead + wire::RECORD_HEADER_LEN)).min(wire::MAX_RECORD_PAYLOAD);
        let body_len = {
            let mut w = BodyWriter::new(&mut self.out[wire::HEADER_LEN..wire::HEADER_LEN + wire::RECORD_HEADER_LEN + len]);
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

/// Writes a frame record's payload: vnet header (if any), envelope, frame.
fn write_payload(p: &mut [u8], vnet: Option<&VnetHdr>, env: Envelope, frame: &[u8]) -> Result<(), wire::Error> {
    let mut at = 0;
    if let Some(v) = vnet {
        v.emit(&mut p[..wire::VNET_HDR_LEN])?;
        at = wire::VNET_HDR_LEN;
    }
    env.emit(&mut p[at..at + envelope::LEN]);
    p[at + envelope::LEN..].copy_from_slice(frame);
    Ok(())
}

/// A frame taken off the sleeve.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// Its envelope.
    pub env: Envelope,
    /// Its offload metadata.
    pub vnet: Option<VnetHdr>,
    /// The Ethernet frame.
    pub frame: &'a [u8],
}

/// Parses a frame record payload (`flags` from its record or fragment).
pub fn parse_payload(flags: u8, p: &[u8]) -> Option<Incoming<'_>> {
    if flags & !FRAME_FLAG_VNET_HDR != 0 {
        return None;
    }
    let (vnet, rest) = if flags & FRAME_FLAG_VNET_HDR != 0 {
        (Some(VnetHdr::parse(p).ok()?), p.get(wire::VNET_HDR_LEN..)?)
    } else {
        (None, p)
    };
    let env = Envelope::parse(rest).ok()?;
    let frame = rest.get(envelope::LEN..)?;
    if frame.len() < 14 {
        return None;
    }
    Some(Incoming { env, vnet, frame })
}

/// One item of an opened datagram.
#[derive(Debug, Clone, Copy)]
pub enum Received<'a> {
    /// A whole frame (reassembled if it came in pieces).
    Frame(Incoming<'a>),
    /// A control record's payload (heartbeat, probe).
    Control(&'a [u8]),
}

/// Hands each frame and control record of an opened datagram body to `f`, reassembling
/// fragmented frames on the way.
pub fn for_each_record(now: Instant, link: &SleeveLink, body: &[u8], stats: &DataplaneStats, mut f: impl FnMut(Received<'_>)) {
    for r in Records::new(body) {
        match r {
            Ok(BodyRecord::Frame { vnet, frame }) => match Envelope::parse(frame) {
                Ok(env) if frame.len() >= envelope::LEN + 14 => f(Received::Frame(Incoming { env, vnet, frame: &frame[envelope::LEN..] })),
                _ => inc(&stats.drop_malformed),
            },
            Ok(BodyRecord::Control { payload, .. }) => f(Received::Control(payload)),
            Ok(BodyRecord::Fragment { flags, payload }) => {
                let mut reasm = link.reassembler();
                match reasm.push(now, flags, payload) {
                    Ok(Some(whole)) => match parse_payload(whole.flags, whole.payload) {
                        Some(i) => f(Received::Frame(i)),
                        None => inc(&stats.drop_malformed),
                    },
                    Ok(None) => {}
                    Err(_) => inc(&stats.drop_malformed),
                }
            }
            Err(_) => {
                inc(&stats.drop_malformed);
                break;
            }
        }
    }
}

/// The origin of a frame for the switch: who put it on the sleeve.
pub fn origin(inc: &Incoming<'_>) -> PeerName {
    inc.env.src
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn payloads_parse_back_and_bad_flags_or_short_frames_are_refused() {
        let env = Envelope { dst: PeerName([1; 6]), src: PeerName([2; 6]), hops: 3 };
        let v = VnetHdr { flags: 1, gso_type: 1, hdr_len: 66, gso_size: 1448, csum_start: 34, csum_offset: 16 };
        let frame = [9u8; 60];
        let mut p = vec![0u8; wire::VNET_HDR_LEN + envelope::LEN + frame.len()];
        write_payload(&mut p, Some(&v), env, &frame).unwrap();
        let got = parse_payload(FRAME_FLAG_VNET_HDR, &p).unwrap();
        assert_eq!((got.env, got.vnet, got.frame), (env, Some(v), &frame[..]));
        assert!(parse_payload(0x80, &p).is_none());
        assert!(parse_payload(0, &p[..envelope::LEN + 13]).is_none());
    }
}
