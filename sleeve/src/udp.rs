//! Batched UDP I/O for the sleeve, on quinn-udp: `recvmmsg` with UDP GRO on receive, `sendmsg`
//! with UDP GSO (`UDP_SEGMENT`) on send, both probed by quinn-udp when the socket is made and
//! switched off cleanly where the kernel lacks them (then a train of segments is sent one
//! datagram per call). Socket buffers are enlarged so bursts of 64 KB super-frames fit.
//!
//! The socket is non-blocking (as quinn-udp leaves it); [`SleeveSocket::recv`] waits in
//! `poll` up to its timeout, for the data plane's dedicated threads.
//! Receive buffers are allocated once per [`RecvBatch`]; nothing is allocated per datagram.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

/// Socket buffer size asked for (the kernel may cap it at `net.core.[rw]mem_max`).
pub const SOCKET_BUFFER: usize = 8 << 20;
/// Most bytes one GSO send may carry (the largest IPv4 UDP payload).
const MAX_GSO_BYTES: usize = 65_507;
/// How long a send waits for room in a full send buffer before the datagram is dropped.
const SEND_WAIT_MS: i32 = 50;
/// Bytes per receive buffer: one GRO batch of up to 64 KB.
pub const RECV_BUFFER: usize = 65_536;

/// Counters for "datagrams per syscall".
#[derive(Debug, Default)]
pub struct IoStats {
    /// Datagrams sent.
    pub datagrams_sent: AtomicU64,
    /// Send system calls.
    pub send_calls: AtomicU64,
    /// Datagrams received.
    pub datagrams_received: AtomicU64,
    /// Receive system calls that returned data.
    pub recv_calls: AtomicU64,
    /// Sends the kernel refused (e.g. no route, unreachable).
    pub send_errors: AtomicU64,
}

/// A UDP socket for sleeve traffic.
#[derive(Debug)]
pub struct SleeveSocket {
    socket: std::net::UdpSocket,
    state: UdpSocketState,
    stats: IoStats,
    timeout: std::sync::atomic::AtomicU64,
}

impl SleeveSocket {
    /// Binds `addr` with large buffers and a receive timeout of 100 ms.
    pub fn bind(addr: SocketAddr) -> io::Result<SleeveSocket> {
        Self::from_std(std::net::UdpSocket::bind(addr)?)
    }

    /// Wraps a bound socket (e.g. one bound inside a network namespace).
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<SleeveSocket> {
        let state = UdpSocketState::new((&socket).into())?;
        // Best effort: a smaller buffer than asked for is not an error.
        let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
        let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
        socket.set_nonblocking(true)?;
        Ok(SleeveSocket { socket, state, stats: IoStats::default(), timeout: AtomicU64::new(100) })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Sets how long [`recv`](Self::recv) waits for a first datagram.
    pub fn set_read_timeout(&self, d: Duration) {
        self.timeout.store(d.as_millis().min(i32::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Waits until the socket is ready for `what` or `ms` pass; true if it is ready.
    fn wait(&self, what: nix::poll::PollFlags, ms: i32) -> io::Result<bool> {
        use nix::poll::{PollFd, PollTimeout, poll};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.socket.as_fd(), what)];
        match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Segments one send may carry (1 without GSO).
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Datagrams one receive buffer may coalesce (1 without GRO).
    pub fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// The I/O counters.
    pub fn stats(&self) -> &IoStats {
        &self.stats
    }

    /// Sends `contents` to `dst`: one datagram, or with `segment_size` a train of datagrams of
    /// that size (the last may be shorter) — in one call with GSO, else one call each.
    pub fn send(&self, dst: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> io::Result<()> {
        let seg = segment_size.filter(|s| *s > 0 && *s < contents.len());
        let n = seg.map_or(1, |s| contents.len().div_ceil(s));
        // One GSO send carries at most what one UDP datagram could (64 KB less headers).
        let per_call = seg.map_or(1, |s| self.max_gso_segments().min(MAX_GSO_BYTES / s).max(1));
        if let Some(s) = seg {
            for train in contents.chunks(s * per_call) {
                self.send_one(dst, train, (train.len() > s).then_some(s))?;
            }
        } else {
            self.send_one(dst, contents, None)?;
        }
        self.stats.datagrams_sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    fn send_one(&self, dst: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> io::Result<()> {
        let t = Transmit { destination: dst, ecn: None, contents, segment_size, src_ip: None };
        self.stats.send_calls.fetch_add(1, Ordering::Relaxed);
        let mut waited = false;
        loop {
            match self.state.try_send((&self.socket).into(), &t) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The send buffer is full: wait (once, bounded) for room, as a blocking socket would.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !waited => {
                    waited = true;
                    self.wait(nix::poll::PollFlags::POLLOUT, SEND_WAIT_MS)?;
                }
                Err(e) => {
                    self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
    }

    /// Receives a batch into `batch`, waiting up to the read timeout for the first datagram.
    /// Returns how many buffers were filled (0 on timeout).
    pub fn recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        if !self.wait(nix::poll::PollFlags::POLLIN, self.timeout.load(Ordering::Relaxed) as i32)? {
            return Ok(0);
        }
        // One small vector of slice headers per call (per batch, not per datagram).
        let RecvBatch { bufs, meta } = batch;
        let mut iov: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(&mut b[..])).collect();
        let r = loop {
            match self.state.recv((&self.socket).into(), &mut iov, meta) {
                Ok(n) => break Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break Ok(0),
                Err(e) => break Err(e),
            }
        };
        drop(iov);
        if let Ok(n) = r
            && n > 0
        {
            self.stats.recv_calls.fetch_add(1, Ordering::Relaxed);
            let d: usize = meta[..n].iter().map(|m| m.len.div_ceil(m.stride.max(1))).sum();
            self.stats.datagrams_received.fetch_add(d as u64, Ordering::Relaxed);
        }
        r
    }
}

/// Preallocated receive buffers and their metadata.
#[derive(Debug)]
pub struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    meta: Vec<RecvMeta>,
}

impl RecvBatch {
    /// `n` buffers of [`RECV_BUFFER`] bytes.
    pub fn new(n: usize) -> RecvBatch {
        RecvBatch {
            bufs: (0..n).map(|_| vec![0u8; RECV_BUFFER].into_boxed_slice()).collect(),
            meta: vec![RecvMeta::default(); n],
        }
    }

    /// Buffer `i` of the last receive: the sender, the bytes (one or more datagrams of
    /// `stride` bytes each, the last possibly shorter) and the stride.
    pub fn get_mut(&mut self, i: usize) -> (SocketAddr, &mut [u8], usize) {
        let m = &self.meta[i];
        let len = m.len.min(RECV_BUFFER);
        (m.addr, &mut self.bufs[i][..len], m.stride.max(1))
    }
}
