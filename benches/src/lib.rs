//! weft's benchmarks: criterion microbenchmarks in `benches/benches/`, and the end-to-end
//! throughput comparison (`cargo run --release -p weft-benches --bin e2e`), which measures
//! overlays against baselines taken in the same run on the same test-bed links.
//!
//! This library holds what the end-to-end runs share: `iperf3` between namespaces (from the test
//! bed, which `weft demo` uses too), the CPU time of the processes measured and the machine's
//! CPU use.

use std::time::Duration;

pub use weft_testbed::{Rtt, Throughput, iperf3};

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

/// The machine's CPU counters at one moment, from the first line of `/proc/stat` (all CPUs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineCpu {
    /// Ticks spent working: user, nice, system, irq, softirq, steal.
    pub busy: u64,
    /// Ticks spent idle or waiting for I/O.
    pub idle: u64,
}

impl MachineCpu {
    /// The counters now.
    pub fn now() -> Result<MachineCpu, String> {
        let stat = std::fs::read_to_string("/proc/stat").map_err(|e| format!("read /proc/stat: {e}"))?;
        MachineCpu::parse(&stat)
    }

    /// Parses the aggregate `cpu` line of `/proc/stat`.
    pub fn parse(stat: &str) -> Result<MachineCpu, String> {
        let line = stat.lines().find(|l| l.starts_with("cpu ")).ok_or("/proc/stat has no cpu line")?;
        let f: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse::<u64>()).collect::<Result<_, _>>().map_err(|_| "malformed /proc/stat cpu line")?;
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = f[..] else {
            return Err("short /proc/stat cpu line".into());
        };
        Ok(MachineCpu { busy: user + nice + system + irq + softirq + steal, idle: idle + iowait })
    }

    /// Cores kept busy on average between `earlier` and `self`.
    pub fn busy_cores_since(&self, earlier: &MachineCpu) -> f64 {
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        let total = busy + self.idle.saturating_sub(earlier.idle) as f64;
        if total == 0.0 {
            return 0.0;
        }
        // Ticks count per CPU: busy / total is the busy share of all CPUs.
        busy / total * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
    }
}

/// How long a thread blocked in a socket read takes to run again once a datagram is written to
/// that socket, after `interval` asleep (so that its CPU went idle, as a data plane thread's does
/// between the packets of a ping): `count` times, each from just before the write to the reader
/// running with it. A packet's trip through a userspace overlay costs one such wake-up per
/// thread it reaches; kernel VXLAN wakes none but the receiving application.
pub fn wake_up_times(count: u32, interval: Duration) -> Result<Rtt, String> {
    use std::os::unix::net::UnixDatagram;
    use std::time::Instant;
    let (tx, rx) = UnixDatagram::pair().map_err(|e| format!("socketpair: {e}"))?;
    rx.set_read_timeout(Some(Duration::from_secs(1))).map_err(|e| format!("socket: {e}"))?;
    let base = Instant::now();
    let reader = std::thread::Builder::new()
        .name("wake-up-probe".into())
        .spawn(move || {
            let mut times = Vec::with_capacity(count as usize);
            let mut buf = [0u8; 8];
            for _ in 0..count {
                // The writer's clock reading, in ns since `base`; a timed-out read ends the run.
                let Ok(8) = rx.recv(&mut buf) else { break };
                let woke = base.elapsed();
                times.push(woke.saturating_sub(Duration::from_nanos(u64::from_le_bytes(buf))));
            }
            times
        })
        .map_err(|e| format!("thread: {e}"))?;
    for _ in 0..count {
        std::thread::sleep(interval);
        let t0 = base.elapsed().as_nanos() as u64;
        if tx.send(&t0.to_le_bytes()).is_err() {
            break;
        }
    }
    let times = reader.join().map_err(|_| "the wake-up probe's reader panicked".to_owned())?;
    Rtt::of(count, times).ok_or_else(|| "no wake-up measured".to_owned())
}

/// How long sealing one datagram of a ping's size (a 110-byte body) takes with this CPU's
/// preferred cipher, `count` times each: right after `interval` asleep (its code and data gone
/// cold, as a data plane thread's between the packets of a ping), and right after that, warm.
/// Returns (cold, warm).
pub fn seal_times(count: u32, interval: Duration) -> Result<(Rtt, Rtt), String> {
    use std::time::Instant;
    use weft_sleeve::{Cipher, Config, Role, Session, SessionIds};
    const BODY: usize = 110;
    let now = Instant::now();
    let mut s = Session::new(&[7; 32], Role::Initiator, SessionIds { local: 1, remote: 2 }, Config::sealed(Cipher::preferred()), now);
    let mut buf = [0u8; 256];
    let (mut cold, mut warm) = (Vec::with_capacity(count as usize), Vec::with_capacity(count as usize));
    for _ in 0..count {
        std::thread::sleep(interval);
        for times in [&mut cold, &mut warm] {
            let t = Instant::now();
            s.seal_in_place(now, &mut buf, BODY).map_err(|e| format!("seal: {e}"))?;
            times.push(t.elapsed());
        }
    }
    let stats = |times| Rtt::of(count, times).ok_or_else(|| "no seal measured".to_owned());
    Ok((stats(cold)?, stats(warm)?))
}

fn clock_ticks_per_second() -> u64 {
    // USER_HZ is 100 on every Linux architecture weft targets.
    100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_cpu_is_parsed_from_the_aggregate_line_and_counts_busy_cores() {
        let before = MachineCpu::parse("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(before, MachineCpu { busy: 150, idle: 850 });
        // 2 CPUs: 300 busy ticks of 400 in all is 1.5 cores.
        let after = MachineCpu { busy: 450, idle: 950 };
        let cores = after.busy_cores_since(&before) / std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!((cores - 0.75).abs() < 1e-9, "{cores}");
        assert!(MachineCpu::parse("cpu 1 2 3\n").is_err());
        assert!(MachineCpu::parse("intr 1\n").is_err());
    }

    #[test]
    fn every_seal_is_timed_cold_and_warm() {
        let (cold, warm) = seal_times(5, Duration::from_millis(1)).unwrap();
        assert_eq!((cold.received, warm.received), (5, 5));
        assert!(cold.p50 > Duration::ZERO && warm.p50 > Duration::ZERO, "{cold:?} {warm:?}");
    }

    #[test]
    fn every_wake_up_is_measured_and_none_is_negative() {
        let w = wake_up_times(20, Duration::from_millis(1)).unwrap();
        assert_eq!((w.sent, w.received), (20, 20));
        assert!(w.p50 > Duration::ZERO && w.p50 <= w.p99 && w.p99 < Duration::from_secs(1), "{w:?}");
    }

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
