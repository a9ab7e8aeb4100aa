//! weft's benchmarks: criterion microbenchmarks in `benches/benches/`, and the end-to-end
//! throughput comparison (`cargo run --release -p weft-benches --bin e2e`), which measures
//! overlays against baselines taken in the same run on the same test-bed links.
//!
//! This library holds what the end-to-end runs share: driving `iperf3` between namespaces.

use std::process::Command;
use std::time::Duration;

use weft_fastpath::testbed::{NodeId, TestBed};

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
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let secs = duration.as_secs().max(1).to_string();
    let out = bed
        .run(client, Command::new("iperf3").args(["-c", &addr, "-t", &secs, "-J", "--connect-timeout", "3000"]))
        .map_err(|e| e.to_string());
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

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the state field.
    let ticks: u64 = fields.get(11).zip(fields.get(12)).and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?)).ok_or("malformed /proc stat")?;
    let hz = clock_ticks_per_second();
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

fn clock_ticks_per_second() -> u64 {
    // USER_HZ is 100 on every Linux architecture weft targets.
    100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_of_this_process_grows_when_it_works() {
        let me = std::process::id();
        let before = cpu_time(me).unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = cpu_time(me).unwrap();
        assert!(after >= before + Duration::from_millis(100), "{before:?} -> {after:?}");
    }
}
