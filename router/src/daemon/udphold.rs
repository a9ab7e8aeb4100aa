//! Pods' UDP coalescing, adaptively: GRO's hold on a pod's datagrams (`weft_kernel::offload`,
//! `--pod-udp-coalesce-us`) only while the pod sends fast enough for coalescing to pay.
//!
//! The hold lets the router carry a pod's burst of datagrams as one super-frame, but makes a lone
//! datagram (a DNS query, its answer) wait for GRO's flush timer: on the development VM that
//! timer fires 37–47 µs late, and a request/answer pair over the sleeve paid about 90 µs for it.
//! So with `--pod-udp-coalesce-above PPS` (the default) no pod is held when it attaches; a thread
//! reads each pod port's received-packet counter (the packets its pod sent) every
//! [`SAMPLE`], holds the port's datagrams once its pod sends at least PPS packets a second, and
//! lets go once it has sent fewer than a quarter of that for [`RELEASE_AFTER`]. With
//! `--pod-udp-coalesce-above 0` every pod is held always.
//!
//! [`Holds`] decides (sans-IO, tested without ports); [`UdpHold`] is the thread: it lists the
//! bridge's veth ports by netlink every [`RESCAN`], reads their counters from
//! `/proc/thread-self/net/dev` (one small read for all ports), and sets a port's hold with
//! [`Handle::set_pod_udp_coalescing`]. While no port is held and the router reads fewer frames
//! from the TAP than one pod would have to send to be held (a pod not held sends each datagram
//! as a frame of its own), it reads nothing else: at idle the thread costs a wake-up per sample.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weft_kernel::netlink::Handle;

/// How often the pods' counters are read.
pub const SAMPLE: Duration = Duration::from_millis(100);
/// How often the list of pod ports is read again (a new pod is watched from then on).
pub const RESCAN: Duration = Duration::from_secs(1);
/// How long a held pod must send slowly before its hold is lifted.
pub const RELEASE_AFTER: Duration = Duration::from_secs(1);
/// How long a port whose hold could not be changed is left before trying again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A change to make on a port: hold its pod's datagrams, or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The pod's host-side veth.
    pub port: String,
    /// Hold (true) or let go.
    pub hold: bool,
    /// The pod's packet rate that decided it, packets per second.
    pub rate: u64,
}

#[derive(Debug)]
struct Port {
    index: u32,
    packets: u64,
    at: Instant,
    held: bool,
    /// Since when a held port's pod sends slowly.
    slow_since: Option<Instant>,
    /// No change is tried before then (after one failed).
    retry_at: Option<Instant>,
}

/// The decisions: which ports are held, from their counters.
#[derive(Debug)]
pub struct Holds {
    above: u64,
    ports: HashMap<String, Port>,
}

impl Holds {
    /// Holds a pod's datagrams while it sends at least `above` packets a second (`above > 0`).
    pub fn new(above: u64) -> Holds {
        Holds { above: above.max(1), ports: HashMap::new() }
    }

    /// Takes one reading of every pod port: name, interface index and the packets its pod has sent.
    /// A port not in `readings` is forgotten (its pod is gone). Returns the changes to make.
    pub fn observe(&mut self, now: Instant, readings: &[(String, u32, u64)]) -> Vec<Change> {
        self.ports.retain(|name, _| readings.iter().any(|(n, _, _)| n == name));
        let mut changes = Vec::new();
        for (name, index, packets) in readings {
            let Some(p) = self.ports.get_mut(name) else {
                // First seen: not held (the router lifts every hold at start, weft-cni sets none).
                self.ports.insert(name.clone(), Port { index: *index, packets: *packets, at: now, held: false, slow_since: None, retry_at: None });
                continue;
            };
            if p.index != *index || *packets < p.packets {
                // Another veth of the same name, or its counter restarted: a new port, not held.
                *p = Port { index: *index, packets: *packets, at: now, held: false, slow_since: None, retry_at: None };
                continue;
            }
            let elapsed = now.saturating_duration_since(p.at);
            if elapsed.is_zero() {
                continue;
            }
            let rate = ((*packets - p.packets) as u128 * 1_000_000 / elapsed.as_micros().max(1)) as u64;
            p.packets = *packets;
            p.at = now;
            if p.retry_at.is_some_and(|t| now < t) {
                continue;
            }
            if !p.held {
                if rate >= self.above {
                    changes.push(Change { port: name.clone(), hold: true, rate });
                }
            } else if rate >= self.above / 4 {
                p.slow_since = None;
            } else {
                let since = *p.slow_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= RELEASE_AFTER {
                    changes.push(Change { port: name.clone(), hold: false, rate });
                }
            }
        }
        changes
    }

    /// Records the outcome of a change: made, or refused by the kernel (tried again after
    /// [`RETRY_AFTER`]).
    pub fn applied(&mut self, now: Instant, change: &Change, ok: bool) {
        if let Some(p) = self.ports.get_mut(&change.port) {
            if ok {
                p.held = change.hold;
                p.slow_since = None;
                p.retry_at = None;
            } else {
                p.retry_at = Some(now + RETRY_AFTER);
            }
        }
    }

    /// Whether any port is held.
    pub fn any_held(&self) -> bool {
        self.ports.values().any(|p| p.held)
    }

    /// The ports held now, by name.
    pub fn held(&self) -> Vec<String> {
        let mut v: Vec<String> = self.ports.iter().filter(|(_, p)| p.held).map(|(n, _)| n.clone()).collect();
        v.sort();
        v
    }
}

/// Each interface's received packets, from the text of `/proc/net/dev` (two header lines, then
/// `NAME: rx_bytes rx_packets ...`; a name cannot hold `:`).
pub fn received_packets(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().skip(2).filter_map(|line| {
        let (name, counters) = line.split_once(':')?;
        Some((name.trim(), counters.split_whitespace().nth(1)?.parse().ok()?))
    })
}

/// The running thread, and the ports it holds.
pub struct UdpHold {
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<String>>>,
    thread: JoinHandle<()>,
}

impl UdpHold {
    /// Starts watching the veth ports of `bridge`: held `hold` long while their pod sends at
    /// least `above` packets a second; `tap_frames` reads the frames the router has read from
    /// the TAP so far (a counter that only grows).
    pub fn start(bridge: String, hold: Duration, above: u64, tap_frames: impl Fn() -> u64 + Send + 'static) -> std::io::Result<UdpHold> {
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (s, h) = (stop.clone(), held.clone());
        let thread = std::thread::Builder::new().name("weft-udphold".into()).spawn(move || run(&bridge, hold, above, &tap_frames, &s, &h))?;
        Ok(UdpHold { stop, held, thread })
    }

    /// A handle on the ports held now (for the status).
    pub fn held(&self) -> Arc<Mutex<Vec<String>>> {
        self.held.clone()
    }

    /// Stops the thread; the holds stay as they are (the next start lifts them).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn run(bridge: &str, hold: Duration, above: u64, tap_frames: &dyn Fn() -> u64, stop: &AtomicBool, held: &Mutex<Vec<String>>) {
    let mut holds = Holds::new(above);
    let mut nl: Option<Handle> = None;
    let mut ports: Vec<(String, u32)> = Vec::new();
    let mut next_scan = Instant::now();
    let (mut frames, mut frames_at) = (tap_frames(), Instant::now());
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(SAMPLE);
        let now = Instant::now();
        let (f, elapsed) = (tap_frames(), now.saturating_duration_since(frames_at));
        let busy = u128::from(f.saturating_sub(frames)) * 1_000_000 >= u128::from(above) * elapsed.as_micros();
        (frames, frames_at) = (f, now);
        if !busy && !holds.any_held() {
            continue;
        }
        if nl.is_none() {
            nl = Handle::open().inspect_err(|e| tracing::debug!("pod UDP coalescing: netlink: {}", weft_kernel::chain(e))).ok();
        }
        let Some(h) = nl.as_mut() else { continue };
        if now >= next_scan {
            next_scan = now + RESCAN;
            match bridge_ports(h, bridge) {
                Ok(p) => ports = p,
                Err(e) => {
                    tracing::debug!("pod UDP coalescing: cannot list the pod ports: {}", weft_kernel::chain(&e));
                    nl = None;
                    continue;
                }
            }
        }
        let Ok(text) = std::fs::read_to_string("/proc/thread-self/net/dev") else { continue };
        let counts: HashMap<&str, u64> = received_packets(&text).collect();
        let readings: Vec<(String, u32, u64)> = ports.iter().filter_map(|(n, i)| Some((n.clone(), *i, *counts.get(n.as_str())?))).collect();
        let changes = holds.observe(now, &readings);
        for c in &changes {
            let r = h.set_pod_udp_coalescing(&c.port, c.hold.then_some(hold));
            match &r {
                Ok(()) if c.hold => tracing::info!(port = %c.port, packets_per_second = c.rate, "pod UDP coalescing: holding the pod's datagrams ({} µs)", hold.as_micros()),
                Ok(()) => tracing::info!(port = %c.port, packets_per_second = c.rate, "pod UDP coalescing: no longer holding the pod's datagrams"),
                Err(e) => tracing::debug!(port = %c.port, "pod UDP coalescing: cannot change the hold: {}", weft_kernel::chain(e)),
            }
            holds.applied(now, c, r.is_ok());
        }
        // A held pod deleted meanwhile leaves the list without a change.
        let now_held = holds.held();
        let mut shown = held.lock().unwrap_or_else(|p| p.into_inner());
        if *shown != now_held {
            *shown = now_held;
        }
    }
}

/// The veth ports of `bridge` (pods' host ends): name and index.
fn bridge_ports(nl: &mut Handle, bridge: &str) -> weft_kernel::Result<Vec<(String, u32)>> {
    let Some(br) = nl.find_link(bridge)? else { return Ok(Vec::new()) };
    Ok(nl.links()?.into_iter().filter(|l| l.master == Some(br.index) && l.kind.as_deref() == Some("veth")).map(|l| (l.name, l.index)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_pod_is_held_while_it_sends_fast_and_let_go_after_a_second_of_slow() {
        let t0 = Instant::now();
        let mut h = Holds::new(20_000);
        let r = |packets: u64| vec![("vp0".to_owned(), 7, packets)];
        assert!(h.observe(t0, &r(1_000)).is_empty(), "first reading: no rate yet");
        // 1000 packets in 100 ms: 10 000/s, below.
        assert!(h.observe(at(t0, 100), &r(2_000)).is_empty());
        // 3000 in 100 ms: 30 000/s.
        let c = h.observe(at(t0, 200), &r(5_000));
        assert_eq!(c, vec![Change { port: "vp0".into(), hold: true, rate: 30_000 }]);
        h.applied(at(t0, 200), &c[0], true);
        assert_eq!(h.held(), vec!["vp0".to_owned()]);
        // Held and coalesced, a pod still sending a quarter of the threshold stays held.
        let mut n = 5_000;
        for ms in (300..=2_000).step_by(100) {
            n += 500;
            assert!(h.observe(at(t0, ms), &r(n)).is_empty(), "at {ms} ms");
        }
        // Slow from 2100 ms on: let go once a second of it has passed.
        for ms in (2_100..3_100).step_by(100) {
            n += 10;
            assert!(h.observe(at(t0, ms), &r(n)).is_empty(), "at {ms} ms");
        }
        let c = h.observe(at(t0, 3_100), &r(n + 10));
        assert_eq!(c, vec![Change { port: "vp0".into(), hold: false, rate: 100 }]);
        h.applied(at(t0, 3_100), &c[0], true);
        assert!(h.held().is_empty());
    }

    #[test]
    fn a_short_lull_does_not_let_go_and_a_refused_change_is_retried_later() {
        let t0 = Instant::now();
        let mut h = Holds::new(1_000);
        let r = |packets: u64| vec![("vp0".to_owned(), 7, packets)];
        h.observe(t0, &r(0));
        let c = h.observe(at(t0, 100), &r(500));
        assert_eq!(c.len(), 1);
        h.applied(at(t0, 100), &c[0], false);
        assert!(h.held().is_empty(), "refused: not held");
        assert!(h.observe(at(t0, 200), &r(1_000)).is_empty(), "not tried again at once");
        assert!(h.observe(at(t0, 5_100), &r(1_000)).is_empty(), "slow meanwhile");
        let c = h.observe(at(t0, 5_200), &r(1_500));
        assert_eq!(c.len(), 1, "tried again after {RETRY_AFTER:?}");
        h.applied(at(t0, 5_200), &c[0], true);
        // Half a second slow, then fast again: still held, and the slow clock starts over.
        assert!(h.observe(at(t0, 5_700), &r(1_500)).is_empty());
        assert!(h.observe(at(t0, 5_800), &r(1_600)).is_empty());
        assert!(h.observe(at(t0, 6_700), &r(1_600)).is_empty(), "slow again: the clock started over at 6.7 s");
        assert!(h.observe(at(t0, 7_600), &r(1_600)).is_empty());
        assert_eq!(h.observe(at(t0, 7_700), &r(1_600)).len(), 1, "a second slow");
        assert_eq!(h.held(), vec!["vp0".to_owned()]);
    }

    #[test]
    fn gone_replaced_and_restarted_ports_start_over_unheld() {
        let t0 = Instant::now();
        let mut h = Holds::new(1_000);
        h.observe(t0, &[("a".into(), 1, 0), ("b".into(), 2, 0)]);
        for c in h.observe(at(t0, 100), &[("a".into(), 1, 1_000), ("b".into(), 2, 1_000)]) {
            h.applied(at(t0, 100), &c, true);
        }
        assert_eq!(h.held(), vec!["a".to_owned(), "b".to_owned()]);
        // b's pod is gone, a's veth now another (new index), c new: nothing held, no change.
        let c = h.observe(at(t0, 200), &[("a".into(), 9, 5_000), ("c".into(), 3, 5_000)]);
        assert!(c.is_empty() && h.held().is_empty(), "{c:?}");
        // A counter that went backwards is a new port too.
        assert!(h.observe(at(t0, 300), &[("c".into(), 3, 5_000)]).is_empty());
        assert!(h.observe(at(t0, 400), &[("c".into(), 3, 10)]).is_empty());
        assert_eq!(h.observe(at(t0, 500), &[("c".into(), 3, 1_010)]).len(), 1);
    }

    #[test]
    fn received_packets_are_read_from_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:    1234      17    0    0    0     0          0         0     1234      17    0    0    0     0       0          0\n  \
vethab12: 99999 123456 0 0 0 0 0 0 5 6 0 0 0 0 0 0\n\
garbage line\n";
        let v: Vec<(&str, u64)> = received_packets(text).collect();
        assert_eq!(v, vec![("lo", 17), ("vethab12", 123_456)]);
    }
}
