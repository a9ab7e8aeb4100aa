//! Batched I/O on the TAP: wait once, then read every frame that is ready (up to a batch) so one
//! wakeup serves many frames; frames carry their virtio-net header and may be 64 KB super-frames.
//! Buffers are allocated once per reader. The sender copies each frame once, from here into its
//! datagram buffer, where it is sealed in place.
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

use super::vnet;

/// Largest frame the TAP hands over: a 64 KB IP super-frame, its Ethernet header and vnet header.
pub const MAX_FRAME: usize = vnet::LEN + 14 + 65535;

/// A frame buffer allocated once and reused: the vnet header and frame.
pub struct FrameBuf {
    data: Box<[u8]>,
    len: usize,
}

impl Default for FrameBuf {
    fn default() -> Self {
        FrameBuf { data: vec![0u8; MAX_FRAME].into_boxed_slice(), len: 0 }
    }
}

impl FrameBuf {
    /// The vnet header and frame that were read.
    pub fn packet(&self) -> &[u8] {
        &self.data[..self.len]
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
        let mut n = 0;
        while n < bufs.len() {
            let b = &mut bufs[n];
            match self.tap.read(&mut b.data) {
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
