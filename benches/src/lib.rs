//! weft's benchmarks: criterion microbenchmarks in `benches/benches/`, and the end-to-end
//! throughput comparison (`cargo run --release -p weft-benches --bin e2e`), which measures
//! overlays against baselines taken in the same run on the same test-bed links.
//!
//! This library holds what the end-to-end runs share: `iperf3` between namespaces (from the test
//! bed, which `weft demo` uses too) and the CPU time of the processes measured.

use std::time::Duration;

pub use weft_testbed::{Throughput, iperf3};

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
