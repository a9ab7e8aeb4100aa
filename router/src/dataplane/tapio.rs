//! Batched I/O on the TAP: wait once, then read every frame that is ready (up to a batch) so one
//! wakeup serves many frames; frames carry their virtio-net header and may be 64 KB super-frames.
//! Buffers are allocated once per reader. A frame is read either whole into one buffer (the
//! sender then copies it into its datagrams, where they are sealed in place), or laid out
//! ([`Layout`]): scattered by one `readv` straight to where a link's datagrams carry its pieces,
//! with room left for their headers, so that a super-frame is sealed and sent where the kernel
//! put it, without a copy in between.
//!
//! With a multi-queue TAP, [`queue_of`] picks the queue a frame from a peer is written to by
//! its flow: the kernel then reads the flow's frames towards that peer from the same queue
//! (tun's flow steering follows the queue that last wrote a flow), so the flows of one peer are
//! spread over the queues' TAP threads, each flow on one.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use weft_kernel::tap::Tap;

use weft_sleeve::frag::{self, FRAG_HEADER_LEN};
use weft_sleeve::wire::{FRAME_HEAD_MAX, HEADER_LEN, RECORD_HEADER_LEN, max_frame_in_body};

use super::links::SleeveLink;
use super::sleeve::MIN_DATAGRAM;
use super::vnet;

/// Largest frame the TAP hands over: a 64 KB IP super-frame, its Ethernet header and vnet header.
pub const MAX_FRAME: usize = vnet::LEN + 14 + 65535;

/// A frame buffer's size: a largest frame, laid out with up to an eighth more for the headers
/// and tags of its datagrams.
const CAPACITY: usize = MAX_FRAME + MAX_FRAME / 8;

/// Where a piece starts in its datagram: after the sleeve header, record and fragment headers.
pub const PIECE_AT: usize = HEADER_LEN + RECORD_HEADER_LEN + FRAG_HEADER_LEN;
/// Bytes before the frame in the first piece: a super-frame's wire virtio-net header and
/// envelope (what the sender writes there).
pub const HEAD: usize = FRAME_HEAD_MAX;
/// Most places a laid-out read scatters to: the vnet header, and a piece per datagram of the
/// smallest size that fits a buffer.
const MAX_PARTS: usize = 1 + CAPACITY / MIN_DATAGRAM;

/// Where a laid-out read puts a frame: as the datagrams of a link (its datagram size and
/// per-datagram overhead) carry it cut into Fragment records. Datagram `k` starts at
/// `k * dsize`; its piece of the frame payload (wire virtio-net header and envelope, then the
/// Ethernet frame) at [`PIECE_AT`] after that, `piece_len` bytes long; the first piece starts
/// with the [`HEAD`] bytes the sender writes, the frame follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Size of a datagram carrying a full piece: the link's datagram size, less what
    /// `weft_sleeve::frag::piece_len` leaves unused to keep pieces whole AEAD blocks.
    pub dsize: usize,
    /// Payload bytes per piece (as `weft_sleeve::frag::Cut` cuts them).
    pub piece_len: usize,
    /// Pieces of a largest frame.
    pieces: usize,
}

impl Layout {
    /// The layout for datagrams of `dsize` bytes of which `overhead` are the session's (header
    /// and tag); None for datagrams below the sleeve's minimum, or where the pieces of a
    /// largest frame would not fit a buffer.
    pub fn new(dsize: usize, overhead: usize) -> Option<Layout> {
        let piece_len = frag::piece_len(dsize.checked_sub(overhead)?);
        if dsize < MIN_DATAGRAM || piece_len <= HEAD || overhead < HEADER_LEN {
            return None;
        }
        let dsize = overhead + RECORD_HEADER_LEN + FRAG_HEADER_LEN + piece_len;
        let pieces = (HEAD + MAX_FRAME - vnet::LEN).div_ceil(piece_len);
        (pieces * dsize <= CAPACITY).then_some(Layout { dsize, piece_len, pieces })
    }

    /// The layout to read the next batch with after a frame of `frame_len` bytes with
    /// virtio-net header `hdr` went to `link`: the link's, if it was a super-frame cut into
    /// pieces; None otherwise.
    pub fn after(hdr: Option<vnet::Header>, frame_len: usize, link: &SleeveLink) -> Option<Layout> {
        if !hdr.is_some_and(|h| vnet::is_gso(&h)) || frame_len <= max_frame_in_body(link.max_body()) {
            return None;
        }
        Layout::new(link.datagram(), link.overhead)
    }

    /// Frame bytes the first piece holds.
    fn first(&self) -> usize {
        self.piece_len - HEAD
    }
}

/// A frame buffer allocated once and reused: the vnet header and frame, read whole or laid out.
pub struct FrameBuf {
    data: Box<[u8]>,
    /// Bytes read (vnet header and frame).
    len: usize,
    /// The vnet header of a laid-out frame.
    hdr: [u8; vnet::LEN],
    /// How the frame was read: None for whole, in `data` after its vnet header.
    layout: Option<Layout>,
}

impl Default for FrameBuf {
    fn default() -> Self {
        FrameBuf { data: vec![0u8; CAPACITY].into_boxed_slice(), len: 0, hdr: [0; vnet::LEN], layout: None }
    }
}

impl FrameBuf {
    /// The vnet header and frame that were read whole (nothing for a laid-out frame).
    pub fn packet(&self) -> &[u8] {
        if self.layout.is_some() {
            return &[];
        }
        &self.data[..self.len]
    }

    /// The frame's vnet header.
    pub fn vnet_hdr(&self) -> &[u8] {
        match self.layout {
            Some(_) => &self.hdr,
            None => &self.data[..vnet::LEN],
        }
    }

    /// The frame's length.
    pub fn frame_len(&self) -> usize {
        self.len.saturating_sub(vnet::LEN)
    }

    /// The whole frame, if it lies in one piece (always when it was read whole).
    pub fn frame(&self) -> Option<&[u8]> {
        match self.layout {
            None => Some(&self.data[vnet::LEN.min(self.len)..self.len]),
            Some(l) => (self.frame_len() <= l.first()).then(|| &self.data[PIECE_AT + HEAD..][..self.frame_len()]),
        }
    }

    /// The frame's first bytes: all of it, or what its first piece holds (its headers).
    pub fn frame_start(&self) -> &[u8] {
        match (self.frame(), self.layout) {
            (Some(f), _) => f,
            (None, Some(l)) => &self.data[PIECE_AT + HEAD..][..l.first()],
            (None, None) => &[],
        }
    }

    /// Copies the frame into `out` (emptied first).
    pub fn gather(&self, out: &mut Vec<u8>) {
        out.clear();
        let (Some(l), None) = (self.layout, self.frame()) else {
            out.extend_from_slice(self.frame().unwrap_or_default());
            return;
        };
        let total = self.frame_len();
        out.extend_from_slice(self.frame_start());
        for k in 1.. {
            if out.len() == total {
                break;
            }
            let n = (total - out.len()).min(l.piece_len);
            out.extend_from_slice(&self.data[k * l.dsize + PIECE_AT..][..n]);
        }
    }

    /// The whole frame: where it lies if in one piece, else copied together into `scratch`.
    pub fn whole<'a>(&'a self, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        match self.frame() {
            Some(f) => f,
            None => {
                self.gather(scratch);
                scratch
            }
        }
    }

    /// A frame spread over pieces: its layout and the buffer its datagrams are built in.
    pub fn laid_out_mut(&mut self) -> Option<(Layout, &mut [u8])> {
        match self.layout {
            Some(l) if self.frame().is_none() => Some((l, &mut self.data)),
            _ => None,
        }
    }

    /// One read from `tap`, whole or laid out.
    fn read_from(&mut self, tap: &Tap, layout: Option<Layout>) -> io::Result<usize> {
        self.layout = layout;
        let Some(l) = layout else { return tap.read(&mut self.data) };
        let (mut parts, n) = self.parts(l);
        tap.read_parts(&mut parts[..n])
    }

    /// Where a read laid out as `l` puts the vnet header and the frame, in order (the first
    /// `n` of the array; no allocation per read).
    fn parts(&mut self, l: Layout) -> ([io::IoSliceMut<'_>; MAX_PARTS], usize) {
        let mut parts: [io::IoSliceMut<'_>; MAX_PARTS] = std::array::from_fn(|_| io::IoSliceMut::new(&mut []));
        parts[0] = io::IoSliceMut::new(&mut self.hdr[..]);
        // Layout::new keeps `pieces` within the buffer, and so within MAX_PARTS - 1.
        for (k, d) in self.data.chunks_exact_mut(l.dsize).take(l.pieces).enumerate() {
            let from = if k == 0 { PIECE_AT + HEAD } else { PIECE_AT };
            parts[1 + k] = io::IoSliceMut::new(&mut d[from..PIECE_AT + l.piece_len]);
        }
        (parts, 1 + l.pieces)
    }

    /// Fills the buffer as a read of `packet` (vnet header and frame) laid out as `layout`
    /// would (whole if None): for tests and benchmarks without a TAP. Panics if `packet` is
    /// longer than a read could be.
    pub fn fill(&mut self, packet: &[u8], layout: Option<Layout>) {
        self.layout = layout;
        self.len = packet.len();
        let Some(l) = layout else {
            self.data[..packet.len()].copy_from_slice(packet);
            return;
        };
        let mut rest = packet;
        let (mut parts, n) = self.parts(l);
        for part in parts[..n].iter_mut() {
            let k = part.len().min(rest.len());
            part[..k].copy_from_slice(&rest[..k]);
            rest = &rest[k..];
        }
        assert!(rest.is_empty(), "a packet of {} bytes does not fit the layout", packet.len());
    }
}

/// The TAP (one queue of it), non-blocking, read in batches.
pub struct TapIo {
    tap: Tap,
    frames_read: AtomicU64,
}

impl TapIo {
    /// Takes over `tap` and makes it non-blocking.
    pub fn new(tap: Tap) -> io::Result<TapIo> {
        let flags = OFlag::from_bits_truncate(fcntl(tap.as_fd(), FcntlArg::F_GETFL)?);
        fcntl(tap.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(TapIo { tap, frames_read: AtomicU64::new(0) })
    }

    /// The TAP's name.
    pub fn name(&self) -> &str {
        self.tap.name()
    }

    /// Frames read from this descriptor ([`read_ready`](Self::read_ready), also through
    /// [`read_batch`](Self::read_batch)).
    pub fn frames_read(&self) -> u64 {
        self.frames_read.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for frames, then reads as many as are ready into `bufs`; returns how
    /// many buffers were filled (0 on timeout).
    pub fn read_batch(&self, bufs: &mut [FrameBuf], timeout: Duration) -> io::Result<usize> {
        if !self.wait_readable(timeout)? {
            return Ok(0);
        }
        self.read_ready(bufs)
    }

    /// Waits up to `timeout` for a frame to read; true if one is ready (false on timeout or a
    /// signal).
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.tap.as_fd(), PollFlags::POLLIN)];
        let t = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, t) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the frames that are ready into `bufs`, without waiting; returns how many buffers
    /// were filled (0 if none was ready).
    pub fn read_ready(&self, bufs: &mut [FrameBuf]) -> io::Result<usize> {
        self.read_ready_laid_out(bufs, None)
    }

    /// As [`read_ready`](Self::read_ready), each frame laid out as `layout` says (whole if None).
    pub fn read_ready_laid_out(&self, bufs: &mut [FrameBuf], layout: Option<Layout>) -> io::Result<usize> {
        let mut n = 0;
        while n < bufs.len() {
            let b = &mut bufs[n];
            match b.read_from(&self.tap, layout) {
                Ok(len) if len > vnet::LEN => {
                    b.len = len;
                    n += 1;
                }
                Ok(_) => continue, // a runt without a frame: nothing to forward
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if n > 0 => break,
                Err(e) => return Err(e),
            }
        }
        self.frames_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Writes one packet (vnet header, then frame) to the bridge. A full TAP queue drops the
    /// frame (as a full NIC ring would) and says so: `Ok(false)`.
    pub fn write(&self, packet: &[u8]) -> io::Result<bool> {
        queued(self.tap.write(packet))
    }

    /// As [`write`](Self::write), with the vnet header (host order) and the frame gathered by
    /// one `writev` instead of copied together.
    pub fn write_frame(&self, vnet_hdr: &[u8; vnet::LEN], frame: &[u8]) -> io::Result<bool> {
        queued(self.tap.write_parts(&[io::IoSlice::new(vnet_hdr), io::IoSlice::new(frame)]))
    }

    /// As [`write_frame`](Self::write_frame), with the frame in `parts` (at most
    /// [`gather::MAX_PIECES`](super::gather::MAX_PIECES); more are refused as invalid input),
    /// gathered by one `writev` from where they lie.
    pub fn write_frame_parts<'a>(&self, vnet_hdr: &[u8; vnet::LEN], parts: impl IntoIterator<Item = &'a [u8]>) -> io::Result<bool> {
        let mut iov = [io::IoSlice::new(&[]); 1 + super::gather::MAX_PIECES];
        iov[0] = io::IoSlice::new(vnet_hdr);
        let mut n = 1;
        for p in parts {
            let slot = iov.get_mut(n).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a frame in more parts than a TAP write takes"))?;
            *slot = io::IoSlice::new(p);
            n += 1;
        }
        queued(self.tap.write_parts(&iov[..n]))
    }
}

/// The queue (of `queues`, at least 1) that frames of `frame`'s flow are written to: a hash of
/// the IPv4 or IPv6 addresses, protocol and TCP/UDP/SCTP ports (addresses and protocol only for
/// a fragment), or of the MAC addresses and EtherType for
/// any other frame. Any bytes are accepted; a frame too short for a field hashes what it has.
pub fn queue_of(frame: &[u8], queues: usize) -> usize {
    if queues <= 1 {
        return 0;
    }
    let flow = flow_key(frame);
    // FNV-1a over the key, mixed (MurmurHash3's finalizer), then the high bits scaled to the
    // queue count. Unmixed, FNV-1a's high bits follow the last bytes hashed too closely: the
    // flows of one client, whose ports the kernel hands out a few apart, all took one queue in
    // about a third of cases.
    let mut h: u32 = 0x811c_9dc5;
    for &b in flow.iter().copied().flatten() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    ((u64::from(h) * queues as u64) >> 32) as usize
}

/// The bytes that name `frame`'s flow (up to three runs of it; not the checksum or TTL).
fn flow_key(frame: &[u8]) -> [&[u8]; 3] {
    let get = |r: std::ops::Range<usize>| frame.get(r).unwrap_or(&[]);
    let ports = |proto: u8, at: usize| if matches!(proto, 6 | 17 | 132) { get(at..at + 4) } else { &[] };
    match frame.get(12..14) {
        Some([0x08, 0x00]) if frame.len() >= 34 => {
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            let fragment = u16::from_be_bytes([frame[20], frame[21]]) & 0x3fff != 0;
            // Protocol, addresses, and the ports of an unfragmented packet (all fragments of a
            // packet go where its first goes).
            [&frame[23..24], &frame[26..34], if !fragment && ihl >= 20 { ports(frame[23], 14 + ihl) } else { &[] }]
        }
        Some([0x86, 0xdd]) if frame.len() >= 54 => [&frame[20..21], &frame[22..54], ports(frame[20], 54)],
        _ => [get(0..14), &[], &[]],
    }
}

fn queued(r: io::Result<usize>) -> io::Result<bool> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP header with the given ports, TTL and checksum.
    fn tcp4(sport: u16, dport: u16, ttl: u8, csum: u16) -> Vec<u8> {
        let mut f = vec![0u8; 54];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[22] = ttl;
        f[23] = 6;
        f[24..26].copy_from_slice(&csum.to_be_bytes());
        f[26..30].copy_from_slice(&[10, 32, 0, 1]);
        f[30..34].copy_from_slice(&[10, 32, 0, 2]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn one_flow_goes_to_one_queue_and_many_flows_to_every_queue() {
        for queues in [2, 3, 8] {
            let a = queue_of(&tcp4(40000, 5201, 64, 1), queues);
            assert_eq!(queue_of(&tcp4(40000, 5201, 63, 0xbeef), queues), a, "TTL and checksum are not the flow");
            let used: std::collections::HashSet<usize> = (0..256).map(|p| queue_of(&tcp4(40000 + p, 5201, 64, 0), queues)).collect();
            assert_eq!(used.len(), queues, "256 flows over {queues} queues: {used:?}");
            assert!(used.iter().all(|&q| q < queues));
        }
        assert_eq!(queue_of(&tcp4(1, 2, 64, 0), 1), 0);
    }

    /// Sixteen connections of one client to one server, their ports two apart (as the kernel
    /// hands them out), in both directions (data: the client's port is the source; its
    /// acknowledgements: the destination), at 64 places of the port range.
    #[test]
    fn the_flows_of_one_client_spread_over_two_queues() {
        let (mut on_one, mut flows) = (0, 0);
        for base in (32768..60000u16).step_by(431) {
            for data in [true, false] {
                let q: Vec<usize> = (0..16).map(|i| base + 2 * i).map(|p| if data { tcp4(p, 5201, 64, 0) } else { tcp4(5201, p, 64, 0) }).map(|f| queue_of(&f, 2)).collect();
                let ones = q.iter().filter(|&&x| x == 1).count();
                assert!((2..=14).contains(&ones), "ports from {base} ({}): {ones} of 16 flows on queue 1", if data { "data" } else { "acknowledgements" });
                (on_one, flows) = (on_one + ones, flows + 16);
            }
        }
        assert!((0.45..=0.55).contains(&(on_one as f64 / flows as f64)), "{on_one} of {flows} flows on queue 1");
    }

    #[test]
    fn any_bytes_pick_a_queue_in_range() {
        let mut f = tcp4(1, 2, 64, 0);
        f[14] = 0x4f; // options to byte 74: the ports are past the end
        for n in 0..f.len() {
            assert!(queue_of(&f[..n], 4) < 4);
        }
        let mut v6 = [0u8; 58];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        v6[20] = 17;
        for n in 0..v6.len() {
            assert!(queue_of(&v6[..n], 4) < 4);
        }
        // Fragments hash without ports: all fragments of a packet (the first has MF) agree.
        let mut frag = tcp4(7, 8, 64, 0);
        frag[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
        let mut frag2 = tcp4(9, 10, 64, 0);
        frag2[20..22].copy_from_slice(&0x0020u16.to_be_bytes());
        assert_eq!(queue_of(&frag, 8), queue_of(&frag2, 8));
    }
}
