//! Reachability probes between nodes of a bed: one UDP datagram, or one ICMP echo (`ping`),
//! each bounded in time and sending at most one packet; and bounded measurements: TCP throughput
//! over one or more streams and UDP packet rate (`iperf3`), round-trip times (`ping`).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

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
}

/// Runs a UDP `iperf3` test of `payload`-byte datagrams from `client` to `server_addr` (served
/// from `server`) for `duration`, offered at `bitrate` (iperf3's `-b`: `0` is as fast as the
/// sender can). Bounded as [`iperf3`].
pub fn iperf3_udp(bed: &mut TestBed, server: NodeId, client: NodeId, server_addr: Ipv4Addr, duration: Duration, payload: usize, bitrate: &str) -> Result<UdpRate, String> {
    let v = iperf3_json(bed, server, client, server_addr, duration, &["-u", "-l", &payload.to_string(), "-b", bitrate])?;
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
    })
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

/// Round-trip times of a run of pings.
#[derive(Clone, Copy, Debug)]
pub struct Rtt {
    /// Echoes sent.
    pub sent: u32,
    /// Replies received.
    pub received: u32,
    /// Mean round-trip time of the replies.
    pub avg: Duration,
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
                    &format!("{:.3}", interval.as_secs_f64()),
                    "-w",
                    &deadline.to_string(),
                    &addr.to_string(),
                ]),
            )
            .map_err(|e| weft_kernel::chain(&e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut times: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split_once("time=").and_then(|(_, t)| t.split_whitespace().next()).and_then(|ms| ms.parse().ok()))
            .collect();
        if times.is_empty() {
            return Err(format!("ping {addr}: no replies"));
        }
        times.sort_by(f64::total_cmp);
        let rank = ((times.len() as f64 * 0.99).ceil() as usize).clamp(1, times.len());
        let ms = |x: f64| Duration::from_secs_f64(x / 1000.0);
        Ok(Rtt {
            sent: count,
            received: times.len() as u32,
            avg: ms(times.iter().sum::<f64>() / times.len() as f64),
            p99: ms(times[rank - 1]),
        })
    }
}
