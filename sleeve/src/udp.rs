//! Batched UDP I/O for the sleeve, on quinn-udp: `recvmmsg` with UDP GRO on receive, `sendmsg`
//! with UDP GSO (`UDP_SEGMENT`) on send, both probed by quinn-udp when the socket is made and
//! switched off cleanly where the kernel lacks them (then a train of segments is sent one
//! datagram per call). Socket buffers are enlarged so bursts of 64 KB super-frames fit.
//!
//! The socket is non-blocking (as quinn-udp leaves it); [`SleeveSocket::recv`] waits in
//! `poll` up to its timeout, for the data plane's dedicated threads.
//! Receive buffers are allocated once per [`RecvBatch`]; nothing is allocated per datagram.
//!
//! Several sockets may share the sleeve port ([`SleeveSocket::bind_group`], `SO_REUSEPORT`):
//! the kernel hashes each datagram's 4-tuple to one of them, so one peer's datagrams arrive in
//! order on one socket, and each data plane queue reads its own. Only a process with the same
//! effective UID can join such a group; the group is bound whole, then checked to hold every
//! socket on its port (`/proc/thread-self/net/udp{,6}`: the binding thread's namespace), before
//! the port is announced to peers. One socket binds without `SO_REUSEPORT`: nothing can join it.

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

/// Why a group of sleeve sockets could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// No socket, or more than [`MAX_GROUP`], was asked for.
    #[error("a sleeve socket group has 1 to {MAX_GROUP} sockets, not {0}")]
    Size(usize),
    /// The kernel refused to create, set up or bind a socket.
    #[error("cannot {what} (sleeve socket {addr})")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The address bound.
        addr: SocketAddr,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Sockets this group did not make share its port: another process of the same user bound
    /// it with `SO_REUSEPORT` first and would receive part of the sleeve's traffic.
    #[error("{others} socket(s) of another process already share UDP port {port} with SO_REUSEPORT: stop it or choose another --sleeve-port")]
    Shared {
        /// The port.
        port: u16,
        /// How many sockets not of this group hold it.
        others: usize,
    },
}

/// The most sockets one group may have.
pub const MAX_GROUP: usize = 64;

impl SleeveSocket {
    /// Binds `n` sockets on `addr` (one port for all; with port 0 the kernel picks it for the
    /// first), each with large buffers, GSO and GRO as [`from_std`](Self::from_std) sets them.
    /// With `n > 1` they form one `SO_REUSEPORT` group, and the group is refused if a socket
    /// it did not make holds the port. With `n == 1` the socket is bound exclusively, as
    /// [`bind`](Self::bind).
    pub fn bind_group(addr: SocketAddr, n: usize) -> Result<Vec<SleeveSocket>, BindError> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, bind, setsockopt, socket, sockopt};
        use std::os::fd::AsRawFd;
        if n == 0 || n > MAX_GROUP {
            return Err(BindError::Size(n));
        }
        let err = |what: &'static str, addr: SocketAddr| move |e: nix::errno::Errno| BindError::Io { what, addr, source: e.into() };
        let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        let mut at = addr;
        let mut raw = Vec::with_capacity(n);
        for _ in 0..n {
            let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(err("create", at))?;
            if n > 1 {
                setsockopt(&fd, sockopt::ReusePort, &true).map_err(err("set SO_REUSEPORT on", at))?;
            }
            bind(fd.as_raw_fd(), &SockaddrStorage::from(at)).map_err(err("bind", at))?;
            let sock = std::net::UdpSocket::from(fd);
            // The first socket fixes the port (the kernel's pick when `addr` asks for port 0).
            at = sock.local_addr().map_err(|source| BindError::Io { what: "read the address of", addr: at, source })?;
            raw.push(sock);
        }
        if n > 1 {
            let ours = raw.iter().map(inode).collect::<io::Result<Vec<u64>>>().map_err(|source| BindError::Io { what: "read the inode of", addr: at, source })?;
            let holders = port_holders(at.port()).map_err(|source| BindError::Io { what: "list the UDP sockets sharing", addr: at, source })?;
            let others = holders.iter().filter(|i| !ours.contains(i)).count();
            if others > 0 {
                return Err(BindError::Shared { port: at.port(), others });
            }
        }
        raw.into_iter()
            .map(|s| SleeveSocket::from_std(s).map_err(|source| BindError::Io { what: "set up", addr: at, source }))
            .collect()
    }

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

/// The inode of a socket (as `/proc/net/udp` lists it).
fn inode(s: &std::net::UdpSocket) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    Ok(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))?))
}

/// The inodes of the UDP sockets (IPv4 and IPv6) bound to local port `port` in the calling thread's
/// network namespace.
fn port_holders(port: u16) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for table in ["/proc/thread-self/net/udp", "/proc/thread-self/net/udp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            // A kernel without IPv6 has no udp6 table.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        found.extend(sockets_on_port(&text, port));
    }
    Ok(found)
}

/// The inodes of the sockets bound to local port `port` in a `/proc/net/udp` table: after the
/// header line, the second column is `ADDRESS:PORT` in hex and the tenth the inode.
fn sockets_on_port(table: &str, port: u16) -> impl Iterator<Item = u64> + '_ {
    table.lines().skip(1).filter_map(move |line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let local_port = cols.get(1)?.rsplit_once(':')?.1;
        (u16::from_str_radix(local_port, 16).ok()? == port).then(|| cols.get(9)?.parse().ok())?
    })
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

    /// Buffer `i` itself, to be swapped for another (so that what it holds outlives the next
    /// receive); a buffer of any length may take its place, the next receive fills what it has.
    pub fn buffer_mut(&mut self, i: usize) -> &mut Box<[u8]> {
        &mut self.bufs[i]
    }

    /// Buffer `i` of the last receive: the sender, the bytes (one or more datagrams of
    /// `stride` bytes each, the last possibly shorter) and the stride.
    pub fn get_mut(&mut self, i: usize) -> (SocketAddr, &mut [u8], usize) {
        let m = &self.meta[i];
        let len = m.len.min(self.bufs[i].len());
        (m.addr, &mut self.bufs[i][..len], m.stride.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_on_a_port_are_read_from_the_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
 1: 0100007F:1A81 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0\n\
 2: 00000000:1A81 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4343 2 0000000000000000 0\n\
 3: 0100007F:1A80 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4444 2 0000000000000000 0\n\
garbage\n";
        assert_eq!(sockets_on_port(table, 6785).collect::<Vec<_>>(), vec![4242, 4343]);
        assert_eq!(sockets_on_port(table, 6784).collect::<Vec<_>>(), vec![4444]);
        assert_eq!(sockets_on_port(table, 1).count(), 0);
    }
}
