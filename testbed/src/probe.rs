//! Reachability probes between nodes of a bed: one UDP datagram, or one ICMP echo (`ping`),
//! each bounded in time and sending at most one packet; and a bounded TCP throughput run
//! (`iperf3`).

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
pub fn iperf3(bed: &mut TestBed, server: NodeId, client: NodeId, server_addr: std::net::Ipv4Addr, duration: Duration) -> Result<Throughput, String> {
    let addr = server_addr.to_string();
    let pid = bed
        .spawn(server, Command::new("iperf3").args(["-s", "-1", "-B", &addr]).stdout(std::process::Stdio::null()))
        .map_err(|e| weft_kernel::chain(&e))?;
    std::thread::sleep(Duration::from_millis(300));
    let secs = duration.as_secs().max(1).to_string();
    let out = bed
        .run(client, Command::new("iperf3").args(["-c", &addr, "-t", &secs, "-J", "--connect-timeout", "3000"]))
        .map_err(|e| weft_kernel::chain(&e));
    let _ = bed.kill(pid);
    let out = out?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("iperf3 output: {e}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().ok_or("iperf3 output has no end.sum_received")?;
    let retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok(Throughput { bits_per_second: bps, retransmits })
}

