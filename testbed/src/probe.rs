//! Reachability probes between nodes of a bed: one UDP datagram, or one ICMP echo (`ping`),
//! each bounded in time and sending at most one packet; bounded measurements: TCP throughput
//! over one or more streams and UDP packet rate (`iperf3`), round-trip times (`ping`, and UDP
//! request and answer: [`TestBed::udp_rtt`]); and a
//! checked transfer ([`TestBed::checked_transfer`]): a TCP stream whose every byte and whose
//! length the receiver verifies.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{NodeId, TestBed};
use weft_kernel::{Error, Result};

/// How long a probe waits for its datagram or echo reply, in all.
pub const PROBE_WAIT: Duration = Duration::from_millis(1200);
/// How long [`TestBed::ping`] keeps trying for a reply.
pub const PING_DEADLINE: Duration = Duration::from_secs(2);
/// A UDP probe sends its datagram this many times, spread over [`PROBE_WAIT`]: a link that has
/// just come up may drop the first packets until the kernel activates it.
const PROBE_TRIES: u32 = 4;

impl TestBed {
    /// Sends a UDP datagram (at most `PROBE_TRIES` times) from `from` to `to_addr`, where a
    /// socket in `to` listens; returns the source address the receiver saw (which a NAT rewrites),
    /// or `None` if nothing arrived within [`PROBE_WAIT`] (or the sender had no route).
    pub fn udp_probe(&self, from: NodeId, to: NodeId, to_addr: Ipv4Addr) -> Result<Option<SocketAddr>> {
        let io = |op: &str, e: std::io::Error| Error::TestBed(format!("udp probe {op}: {e}"));
        let rx = self.ns(to).run(|| UdpSocket::bind((to_addr, 0)))?.map_err(|e| io("bind receiver", e))?;
        rx.set_read_timeout(Some(PROBE_WAIT / PROBE_TRIES)).map_err(|e| io("set timeout", e))?;
        let dest = rx.local_addr().map_err(|e| io("local address", e))?;
        let tx = self.ns(from).run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?.map_err(|e| io("bind sender", e))?;
        let token = format!("weft-probe {}", self.id());
        let mut buf = [0u8; 128];
        for _ in 0..PROBE_TRIES {
            if tx.send_to(token.as_bytes(), dest).is_err() {
                return Ok(None); // no route, unreachable: nothing left the sender
            }
            loop {
                match rx.recv_from(&mut buf) {
                    Ok((n, src)) if &buf[..n] == token.as_bytes() => return Ok(Some(src)),
                    Ok(_) => continue,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                    Err(e) => return Err(io("receive", e)),
                }
            }
        }
        Ok(None)
    }

    /// Pings `addr` from `from`: an ICMP echo every 200 ms until the first reply, for at most
    /// [`PING_DEADLINE`] (one lost echo — an ARP still resolving on a busy machine — does not make
    /// a reachable address look unreachable); true if a reply came back.
    pub fn ping(&self, from: NodeId, addr: Ipv4Addr) -> Result<bool> {
        let deadline = PING_DEADLINE.as_secs().to_string();
        let out = self.run(from, Command::new("ping").args(["-n", "-q", "-c", "1", "-i", "0.2", "-w", &deadline, &addr.to_string()]));
        match out {
            Ok(o) => Ok(o.status.success()),
            Err(e) => Err(Error::TestBed(format!(
                "{e}: install Debian's iputils-ping package (scripts/install-deps does)"
            ))),
        }
    }
}

/// One TCP throughput measurement.
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    /// Bits per second the receiver got.
    pub bits_per_second: f64,
    /// TCP retransmissions the sender counted.
    pub retransmits: u64,
}

/// Runs a single-stream `iperf3` TCP test from `client` to `server_addr` (served from `server`)
/// for `duration`. Bounded: the server answers one test and exits; the client stops after
/// `duration` (plus iperf3's own timeouts).
pub fn iperf3(bed: &mut TestBed, server: NodeId, client: NodeId, server_addr: Ipv4Addr, duration: Duration) -> Result<Throughput, String> {
    iperf3_tcp(bed, server, client, server_addr, duration, 1)
}

/// As [`iperf3`], with `streams` parallel TCP streams (`-P`); the throughput is their sum.
pub fn iperf3_tcp(bed: &mut TestBed, server: NodeId, client: NodeId, server_addr: Ipv4Addr, duration: Duration, streams: u32) -> Result<Throughput, String> {
    let v = iperf3_json(bed, server, client, server_addr, duration, &["-P", &streams.max(1).to_string()])?;
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().ok_or("iperf3 output has no end.sum_received")?;
    let retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok(Throughput { bits_per_second: bps, retransmits })
}

/// One UDP packet-rate measurement, as the receiver counted it.
#[derive(Clone, Copy, Debug)]
pub struct UdpRate {
    /// Datagrams received per second.
    pub packets_per_second: f64,
    /// Payload bits received per second.
    pub bits_per_second: f64,
    /// Datagrams the sender sent.
    pub sent: u64,
    /// Datagrams that did not arrive (from the sequence numbers), as a percentage of `sent`.
    pub loss_percent: f64,
    /// Datagrams the server's network namespace dropped at a receiving socket whose buffer was
    /// full (`RcvbufErrors` of its `/proc/net/snmp`, over the run): the part of the loss where the
    /// receiving program fell behind, after every hop of the path had carried the datagram.
    pub socket_drops: u64,
}

/// Runs a UDP `iperf3` test of `payload`-byte datagrams from `client` to `server_addr` (served
/// from `server`) for `duration`, offered at `bitrate` (iperf3's `-b`: `0` is as fast as the
/// sender can). Bounded as [`iperf3`].
pub fn iperf3_udp(bed: &mut TestBed, server: NodeId, client: NodeId, server_addr: Ipv4Addr, duration: Duration, payload: usize, bitrate: &str) -> Result<UdpRate, String> {
    let drops_before = udp_rcvbuf_errors(bed.ns(server))?;
    let v = iperf3_json(bed, server, client, server_addr, duration, &["-u", "-l", &payload.to_string(), "-b", bitrate])?;
    let socket_drops = udp_rcvbuf_errors(bed.ns(server))?.saturating_sub(drops_before);
    // iperf3 3.12 reports the receiver's view in end.sum (older) or end.sum_received (newer).
    let end = &v["end"];
    let sum = if end["sum_received"]["packets"].is_u64() { &end["sum_received"] } else { &end["sum"] };
    let sent = end["sum_sent"]["packets"].as_u64().or_else(|| sum["packets"].as_u64()).ok_or("iperf3 output has no packet count")?;
    let lost = sum["lost_packets"].as_i64().ok_or("iperf3 output has no lost_packets")?.max(0) as u64;
    let secs = sum["seconds"].as_f64().filter(|s| *s > 0.0).ok_or("iperf3 output has no duration")?;
    let received = sent.saturating_sub(lost);
    Ok(UdpRate {
        packets_per_second: received as f64 / secs,
        bits_per_second: (received * payload as u64 * 8) as f64 / secs,
        sent,
        loss_percent: if sent == 0 { 100.0 } else { lost as f64 * 100.0 / sent as f64 },
        socket_drops,
    })
}

/// UDP datagrams `ns` has dropped at receiving sockets with a full buffer so far.
fn udp_rcvbuf_errors(ns: &weft_kernel::netns::NetNs) -> Result<u64, String> {
    let snmp = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/snmp")).map_err(|e| weft_kernel::chain(&e))?.map_err(|e| format!("/proc/thread-self/net/snmp: {e}"))?;
    parse_rcvbuf_errors(&snmp).ok_or_else(|| "/proc/thread-self/net/snmp: no Udp RcvbufErrors".to_owned())
}

/// `RcvbufErrors` of the `Udp:` lines of a `/proc/net/snmp` (a line of names, then one of values).
fn parse_rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next()?, udp.next()?);
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// One iperf3 test (`extra` arguments added to the client's), its JSON report.
fn iperf3_json(bed: &mut TestBed, server: NodeId, client: NodeId, server_addr: Ipv4Addr, duration: Duration, extra: &[&str]) -> Result<serde_json::Value, String> {
    let addr = server_addr.to_string();
    let pid = bed
        .spawn(server, Command::new("iperf3").args(["-s", "-1", "-B", &addr]).stdout(std::process::Stdio::null()))
        .map_err(|e| weft_kernel::chain(&e))?;
    std::thread::sleep(Duration::from_millis(300));
    let secs = duration.as_secs().max(1).to_string();
    let out = bed
        .run(client, Command::new("iperf3").args(["-c", &addr, "-t", &secs, "-J", "--connect-timeout", "3000"]).args(extra))
        .map_err(|e| weft_kernel::chain(&e));
    let _ = bed.kill(pid);
    let out = out?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("iperf3 output: {e}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    Ok(v)
}

/// Round-trip times of a run of pings or UDP requests.
#[derive(Clone, Copy, Debug)]
pub struct Rtt {
    /// Echoes sent.
    pub sent: u32,
    /// Replies received.
    pub received: u32,
    /// Mean round-trip time of the replies.
    pub avg: Duration,
    /// Median round-trip time of the replies (nearest rank): unlike the mean, not swayed by a
    /// few replies delayed by other work on the machine.
    pub p50: Duration,
    /// 99th percentile round-trip time of the replies (nearest rank).
    pub p99: Duration,
}

impl TestBed {
    /// Sends `count` ICMP echoes from `from` to `addr`, one every `interval` (below 200 ms needs
    /// root), and returns the round-trip times of the replies. Bounded: ping stops `count *
    /// interval` plus 2 s after it started.
    pub fn ping_rtt(&self, from: NodeId, addr: Ipv4Addr, count: u32, interval: Duration) -> Result<Rtt, String> {
        let deadline = (interval * count).as_secs() + 2;
        let out = self
            .run(
                from,
                Command::new("ping").args([
                    "-n",
                    "-c",
                    &count.to_string(),
                    "-i",
                    &format!("{:.6}", interval.as_secs_f64()),
                    "-w",
                    &deadline.to_string(),
                    &addr.to_string(),
                ]),
            )
            .map_err(|e| weft_kernel::chain(&e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let times: Vec<Duration> = text
            .lines()
            .filter_map(|l| l.split_once("time=").and_then(|(_, t)| t.split_whitespace().next()).and_then(|ms| ms.parse::<f64>().ok()))
            .filter_map(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
            .collect();
        Rtt::of(count, times).ok_or_else(|| format!("ping {addr}: no replies"))
    }

    /// Sends `count` UDP requests of 64 bytes from `from` to an echo server on `to` at `addr`
    /// (port 5402, served by a thread of this process for the duration), one every `interval`,
    /// each waiting up to 1 s for its answer, and returns the round-trip times of the answers.
    pub fn udp_rtt(&self, from: NodeId, to: NodeId, addr: Ipv4Addr, count: u32, interval: Duration) -> Result<Rtt, String> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let bind = |node: NodeId, at: (Ipv4Addr, u16)| {
            let s = self.ns(node).run(move || UdpSocket::bind(at)).map_err(|e| weft_kernel::chain(&e))?.map_err(|e| format!("bind {at:?}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| format!("socket: {e}"))?;
            Ok::<_, String>(s)
        };
        let server = bind(to, (addr, 5402))?;
        let client = bind(from, (Ipv4Addr::UNSPECIFIED, 0))?;
        client.connect((addr, 5402)).map_err(|e| format!("connect: {e}"))?;
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, src)) = server.recv_from(&mut buf) {
                        let _ = server.send_to(&buf[..n], src);
                    }
                }
            });
            let mut times = Vec::with_capacity(count as usize);
            let (mut req, mut buf) = ([0u8; 64], [0u8; 2048]);
            for i in 0..count {
                req[..4].copy_from_slice(&i.to_be_bytes());
                let t0 = Instant::now();
                if client.send(&req).is_ok() {
                    // Answers to earlier requests that came late are skipped.
                    while t0.elapsed() < Duration::from_secs(1) {
                        match client.recv(&mut buf) {
                            Ok(n) if buf[..n] == req => {
                                times.push(t0.elapsed());
                                break;
                            }
                            Ok(_) => continue,
                            Err(_) => {}
                        }
                    }
                }
                std::thread::sleep(interval);
            }
            stop.store(true, Ordering::Relaxed);
            Rtt::of(count, times).ok_or_else(|| format!("UDP to {addr}: no answers"))
        })
    }
}

impl Rtt {
    /// The statistics of `times` (the answers to `sent` requests); `None` without answers.
    pub fn of(sent: u32, mut times: Vec<Duration>) -> Option<Rtt> {
        if times.is_empty() {
            return None;
        }
        times.sort();
        let rank = |q: f64| ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len());
        Some(Rtt {
            sent,
            received: times.len() as u32,
            avg: times.iter().sum::<Duration>() / times.len() as u32,
            p50: times[rank(0.5) - 1],
            p99: times[rank(0.99) - 1],
        })
    }
}

/// What a checked transfer moved: all of it, verified.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// Bytes received and checked (the number asked for).
    pub bytes: u64,
    /// From the connection's start until the receiver had checked the last byte and the end.
    pub elapsed: Duration,
}

impl Transfer {
    /// The rate, in bits per second.
    pub fn bits_per_second(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The size of the pieces a checked transfer writes and checks.
const CHUNK: usize = 1 << 20;

/// Fills `buf` with the checked stream of `seed` from `offset` on (both multiples of 8): each
/// 8-byte word is the SplitMix64 output for its index, so every position has its own content and
/// a lost, repeated or reordered piece shows.
fn fill_stream(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, w) in (offset / 8..).zip(buf.chunks_exact_mut(8)) {
        let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        w.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The receiving end: accepts one connection by `deadline` and checks `bytes` of the stream of
/// `seed`, then its end.
fn receive_checked(listener: TcpListener, bytes: u64, seed: u64, deadline: Instant) -> Result<(), String> {
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    s.set_nonblocking(false).map_err(|e| format!("receiver: {e}"))?;
    let mut got = vec![0u8; CHUNK];
    let mut want = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < bytes {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("timed out after {at} of {bytes} bytes"));
        }
        s.set_read_timeout(Some(left)).map_err(|e| format!("receiver: {e}"))?;
        let len = CHUNK.min((bytes - at) as usize);
        let n = read_full(&mut s, &mut got[..len]).map_err(|e| format!("receive after {at} of {bytes} bytes: {e}"))?;
        fill_stream(seed, at, &mut want[..len]);
        if got[..n] != want[..n] {
            let i = (0..n).find(|&i| got[i] != want[i]).unwrap_or(0);
            return Err(format!("byte {} differs: {:#04x}, expected {:#04x}", at + i as u64, got[i], want[i]));
        }
        at += n as u64;
        if n < len {
            return Err(format!("the stream ended after {at} of {bytes} bytes"));
        }
    }
    match s.read(&mut got[..1]) {
        Ok(0) => Ok(()),
        Ok(_) => Err(format!("the stream goes on past {bytes} bytes")),
        Err(e) => Err(format!("receive the end after {bytes} bytes: {e}")),
    }
}

impl TestBed {
    /// Sends `bytes` (a multiple of 8) of a deterministic pseudo-random stream chosen by `seed`
    /// over one TCP connection from `from` to `to_addr` (a port chosen by a listener in `to`); the
    /// receiver checks every byte against the same stream, that exactly `bytes` arrive and that
    /// the sender's end follows. Fails with the first difference (its offset), a stream cut
    /// short or too long, or when the whole has not arrived within `timeout`. Sender and
    /// receiver are threads of this process whose sockets live in the two namespaces.
    pub fn checked_transfer(&self, from: NodeId, to: NodeId, to_addr: Ipv4Addr, bytes: u64, seed: u64, timeout: Duration) -> Result<Transfer> {
        let fail = |what: String| Error::TestBed(format!("checked transfer of {bytes} bytes to {to_addr} (seed {seed:#x}): {what}"));
        if bytes % 8 != 0 {
            return Err(fail("the size must be a multiple of 8".into()));
        }
        let listener = self.ns(to).run(|| TcpListener::bind((to_addr, 0)))?.map_err(|e| fail(format!("listen: {e}")))?;
        let dest = listener.local_addr().map_err(|e| fail(format!("listener address: {e}")))?;
        listener.set_nonblocking(true).map_err(|e| fail(format!("listener: {e}")))?;
        let t0 = Instant::now();
        let deadline = t0 + timeout;
        let receiver = std::thread::spawn(move || receive_checked(listener, bytes, seed, deadline));
        let sent = self.ns(from).run(|| TcpStream::connect_timeout(&dest, Duration::from_secs(5)))?.map_err(|e| format!("connect: {e}")).and_then(|mut s| {
            s.set_write_timeout(Some(timeout)).map_err(|e| format!("sender: {e}"))?;
            let mut buf = vec![0u8; CHUNK];
            let mut at = 0u64;
            while at < bytes {
                let len = CHUNK.min((bytes - at) as usize);
                fill_stream(seed, at, &mut buf[..len]);
                s.write_all(&buf[..len]).map_err(|e| format!("send after {at} bytes: {e}"))?;
                at += len as u64;
            }
            s.shutdown(std::net::Shutdown::Write).map_err(|e| format!("send the end: {e}"))
        });
        // The receiver is bounded by the deadline (accept and every read), whatever the sender did.
        let received = receiver.join().unwrap_or_else(|_| Err("the receiver panicked".into()));
        let elapsed = t0.elapsed();
        match (received, sent) {
            (Ok(()), Ok(())) => Ok(Transfer { bytes, elapsed }),
            (Err(r), _) => Err(fail(format!("receiver: {r}"))),
            (Ok(()), Err(s)) => Err(fail(format!("sender: {s}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_depends_on_seed_and_position_and_any_piece_can_be_regenerated() {
        let mut whole = vec![0u8; 4096];
        fill_stream(7, 0, &mut whole);
        let mut piece = vec![0u8; 1024];
        fill_stream(7, 2048, &mut piece);
        assert_eq!(piece, whole[2048..3072]);
        let mut other = vec![0u8; 4096];
        fill_stream(8, 0, &mut other);
        assert_ne!(other, whole);
        // No two words of the first 4 KiB alike: a repeated or shifted piece would show.
        let words: std::collections::HashSet<&[u8]> = whole.chunks(8).collect();
        assert_eq!(words.len(), 512);
        // SplitMix64's first output for state 0, as its reference implementation gives it.
        let mut first = [0u8; 8];
        fill_stream(0, 0, &mut first);
        assert_eq!(first, 0xe220_a839_7b1d_cdafu64.to_le_bytes());
    }

    #[test]
    fn the_udp_receive_buffer_drops_are_read_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 403442 0 17750 12 17749 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    UdpLite: 0 0 0 0 5 0\n";
        assert_eq!(parse_rcvbuf_errors(snmp), Some(17749));
        assert_eq!(parse_rcvbuf_errors("Udp: InDatagrams NoPorts\nUdp: 1 2\n"), None);
        assert_eq!(parse_rcvbuf_errors("Udp: InDatagrams RcvbufErrors\n"), None);
        assert_eq!(parse_rcvbuf_errors(""), None);
    }

    /// Root needed: a real socket in a real namespace, never read, overflows; the counter of its
    /// namespace says by how much and the sender's does not move.
    #[test]
    fn datagrams_a_full_socket_drops_are_counted_in_its_namespace() {
        let mut bed = TestBed::new().expect("cannot build a test bed (root needed)");
        let lan = crate::topology::shared_segment(&mut bed, 2).unwrap();
        let (tx, rx) = (bed.ns(lan.hosts[0]), bed.ns(lan.hosts[1]));
        let to = SocketAddr::new(lan.links[1].addr.into(), 5301);
        let sink = rx.run(|| UdpSocket::bind(to)).unwrap().unwrap();
        let src = tx.run(|| UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
        // One datagram first, received: the neighbour is resolved before the burst (a burst
        // to an unresolved neighbour would be cut short by its queue, not by the socket).
        src.send_to(b"first", to).unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(sink.recv(&mut [0u8; 16]).unwrap(), 5);
        let (tx0, rx0) = (udp_rcvbuf_errors(tx).unwrap(), udp_rcvbuf_errors(rx).unwrap());
        const SENT: u64 = 400;
        for _ in 0..SENT {
            src.send_to(&[7u8; 1400], to).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let dropped = udp_rcvbuf_errors(rx).unwrap() - rx0;
        let mut queued = 0;
        sink.set_nonblocking(true).unwrap();
        while sink.recv(&mut [0u8; 2048]).is_ok() {
            queued += 1;
        }
        // The default buffer (about 200 KB) holds well under 400 datagrams of 1400 bytes.
        assert!(dropped >= 100, "only {dropped} of {SENT} datagrams dropped at the full socket");
        assert_eq!(dropped + queued, SENT, "{dropped} dropped and {queued} queued");
        assert_eq!(udp_rcvbuf_errors(tx).unwrap(), tx0);
        drop(sink);
        bed.teardown().unwrap();
    }
}
