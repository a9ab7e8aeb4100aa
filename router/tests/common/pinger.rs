//! Pings from a pod every 50 ms, with each reply's wall-clock time (`ping -D`), to measure how
//! long traffic stops and when it comes back; duplicates (`DUP!`) counted.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weft_testbed::{NodeId, TestBed};

/// A `ping` running in a pod's namespace (bounded by its own deadline).
pub struct Pinger {
    child: Child,
    /// Who pings whom, for messages.
    pub what: String,
}

/// What a finished pinger saw.
#[derive(Debug, Default)]
pub struct PingLog {
    /// Unix times of the replies, in order.
    pub replies: Vec<f64>,
    /// Replies ping marked as duplicates.
    pub dups: usize,
}

/// Seconds since the Unix epoch, as `ping -D` prints them.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Pinger {
    /// Starts pinging `to` from `pod` every 50 ms for at most `secs` seconds.
    pub fn start(bed: &TestBed, pod: NodeId, to: Ipv4Addr, secs: u32, what: &str) -> Pinger {
        let child = Command::new("ip")
            .args(["netns", "exec", bed.ns(pod).name(), "ping", "-n", "-D", "-i", "0.05", "-W", "1", "-w", &secs.to_string()])
            .arg(to.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run ping in the pod");
        Pinger { child, what: what.to_owned() }
    }

    /// Stops the ping (SIGINT, as a user would: it prints what it has) and reads its output.
    pub fn finish(self) -> PingLog {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let out = self.child.wait_with_output().expect("wait for ping");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut log = PingLog::default();
        for l in text.lines().filter(|l| l.contains("bytes from")) {
            if l.contains("DUP!") {
                log.dups += 1;
            }
            if let Some(t) = l.strip_prefix('[').and_then(|r| r.split_once(']')).and_then(|(t, _)| t.parse().ok()) {
                log.replies.push(t);
            }
        }
        log
    }
}

impl PingLog {
    /// Seconds from `since` (Unix time) to the first reply after it.
    pub fn first_reply_after(&self, since: f64) -> Option<Duration> {
        self.replies.iter().find(|t| **t >= since).map(|t| Duration::from_secs_f64(t - since))
    }

    /// The longest time between two replies after `since` (or from `since` to the first).
    pub fn longest_gap_after(&self, since: f64) -> Duration {
        let mut prev = since;
        let mut gap: f64 = 0.0;
        for t in self.replies.iter().filter(|t| **t >= since) {
            gap = gap.max(t - prev);
            prev = *t;
        }
        Duration::from_secs_f64(gap)
    }
}
