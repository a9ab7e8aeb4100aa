//! Reachability probes between nodes of a bed: one UDP datagram, or one ICMP echo (`ping`).
//! Each is bounded in time and sends at most one packet.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use super::{NodeId, TestBed};
use crate::error::{Error, Result};

/// How long a probe waits for its datagram or echo reply, in all.
pub const PROBE_WAIT: Duration = Duration::from_millis(1200);
/// A UDP probe sends its datagram this many times, spread over [`PROBE_WAIT`]: a link that has
/// just come up may drop the first packets until the kernel activates it.
const PROBE_TRIES: u32 = 4;

impl TestBed {
    /// Sends a UDP datagram (at most [`PROBE_TRIES`] times) from `from` to `to_addr`, where a
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

    /// Sends one ICMP echo from `from` to `addr` with `ping`; true if a reply came back.
    pub fn ping(&self, from: NodeId, addr: Ipv4Addr) -> Result<bool> {
        let wait = PROBE_WAIT.as_secs().max(1).to_string();
        let out = self.run(from, Command::new("ping").args(["-n", "-q", "-c", "1", "-W", &wait, &addr.to_string()]));
        match out {
            Ok(o) => Ok(o.status.success()),
            Err(e) => Err(Error::TestBed(format!(
                "{e}: install Debian's iputils-ping package (scripts/install-deps does)"
            ))),
        }
    }
}
