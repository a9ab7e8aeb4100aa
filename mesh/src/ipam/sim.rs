//! A deterministic simulator of many IPAM peers on a virtual clock.
//!
//! Peers are [`Ipam`] cores exchanging their messages over virtual links with latency, jitter,
//! random loss and partitions (a message crossing partition groups, or reaching a crashed peer,
//! is dropped at delivery). After every call into a core the simulator persists the state the
//! core reports dirty (the bytes of [`persist::encode_state`]) before delivering its messages or
//! recording an answered allocation, as [`super::PersistentIpam`] does on disk; a crash drops
//! the core, a restart rebuilds it from those bytes.
//!
//! [`Sim::check`] verifies, across every peer (crashed ones by their persisted state): no address
//! is usable by two peers, every allocation lies in its peer's usable space (so no address is
//! allocated twice), every allocation ever answered and not released is still held, and a
//! hand-over acknowledged by its receiver is in the receiver's persisted ring.
//! Everything random comes from one seed: a run is a pure function of its seed and actions.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::alloc::{AllocError, Bootstrap, Config, Destination, HandOver, Ipam};
use super::persist;
use super::ring::{Cidr, Span};
use crate::peer::PeerName;

/// The seeded generator of the mesh simulator, shared.
pub use crate::sim::SimRng as Rng;

/// Simulation parameters.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of the random generator (also picks peer names).
    pub seed: u64,
    /// Number of peers.
    pub peers: usize,
    /// The cluster range (small ranges exercise donation).
    pub range: Cidr,
    /// Bootstrap by consensus among all peers (else: a seed list of the first half).
    pub consensus: bool,
    /// One-way latency.
    pub latency: Duration,
    /// Extra delay, uniform in `0..jitter`.
    pub jitter: Duration,
    /// Probability a message is lost.
    pub loss: f64,
    /// Cores' gossip interval.
    pub gossip_interval: Duration,
    /// Cores' donate timeout.
    pub donate_timeout: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            peers: 5,
            range: "10.32.0.0/25".parse().expect("valid CIDR"),
            consensus: true,
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            loss: 0.05,
            gossip_interval: Duration::from_millis(200),
            donate_timeout: Duration::from_millis(100),
        }
    }
}

/// One step of a schedule. Peer indices are taken modulo the peer count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Allocate for a new container on a peer.
    Allocate(usize),
    /// Release the `n`-th allocation (modulo) of a peer.
    Release(usize, usize),
    /// Claim a random address (by `n`) on a peer: must fail unless usable and free there.
    Claim(usize, u64),
    /// Crash a peer (it keeps what it persisted).
    Crash(usize),
    /// Restart a crashed peer from its persisted state.
    Restart(usize),
    /// Split peers into two groups by the bits of `mask`.
    Partition(u64),
    /// Join all groups again.
    Heal,
    /// Orderly shutdown of a peer.
    Shutdown(usize),
    /// `rmpeer` of a crashed peer (the second index) issued on the first.
    Rmpeer(usize, usize),
    /// Let virtual time pass.
    Advance(Duration),
}

#[derive(Debug)]
struct SimPeer {
    name: PeerName,
    core: Option<Ipam>,
    disk: Vec<u8>,
    /// Removed by rmpeer: never restarts, its pods are gone.
    removed: bool,
    left: bool,
    group: u64,
    /// Answered, unreleased allocations: container → address.
    ledger: BTreeMap<String, Ipv4Addr>,
    /// For crashed peers: usable spans and allocations as persisted.
    frozen: Option<(Vec<Span>, Vec<u32>)>,
}

/// Counters of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Steps applied.
    pub steps: u64,
    /// Allocations answered.
    pub allocated: u64,
    /// Allocations refused for lack of space (donation asked).
    pub waited: u64,
    /// Releases.
    pub released: u64,
    /// Successful claims.
    pub claimed: u64,
    /// Crashes and restarts.
    pub crashes: u64,
    /// Restarts.
    pub restarts: u64,
    /// Shutdowns.
    pub shutdowns: u64,
    /// Hand-overs of shutdowns acknowledged by their receivers.
    pub handovers_acknowledged: u64,
    /// rmpeer calls that reclaimed something.
    pub reclaims: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages dropped (loss, partition, crashed receiver).
    pub dropped: u64,
    /// Donations given (summed over live cores at the end is not kept; counted on delivery).
    pub donations: u64,
    /// Invariant checks run.
    pub checks: u64,
}

/// The simulator.
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    rng: Rng,
    start: Instant,
    now: Instant,
    peers: Vec<SimPeer>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    in_flight: HashMap<u64, (usize, usize, Vec<u8>)>,
    seq: u64,
    next_container: u64,
    stats: SimStats,
}

/// A violated invariant, with the step it was found at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invariant violated at step {step} (t={time:?}): {what}")]
pub struct Violation {
    /// The step.
    pub step: u64,
    /// Virtual time since the start.
    pub time: Duration,
    /// What went wrong.
    pub what: String,
}

impl Sim {
    /// A simulator with `cfg.peers` fresh peers, all up and in one group.
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let start = Instant::now();
        let mut names: Vec<PeerName> = Vec::new();
        while names.len() < cfg.peers {
            let n = PeerName::from_u64(rng.next_u64());
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let mut sim = Sim {
            rng,
            start,
            now: start,
            peers: Vec::new(),
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            seq: 0,
            next_container: 0,
            stats: SimStats::default(),
            cfg,
        };
        for name in names {
            sim.peers.push(SimPeer {
                name,
                core: None,
                disk: Vec::new(),
                removed: false,
                left: false,
                group: 0,
                ledger: BTreeMap::new(),
                frozen: None,
            });
        }
        for i in 0..sim.peers.len() {
            let core = Ipam::new(sim.peers[i].name, sim.core_config(), start)
                .expect("valid simulator config");
            sim.peers[i].core = Some(core);
            sim.pump(i);
        }
        sim
    }

    fn core_config(&self) -> Config {
        let bootstrap = if self.cfg.consensus {
            Bootstrap::Consensus {
                expected: self.cfg.peers,
            }
        } else {
            let n = self.cfg.peers.div_ceil(2);
            Bootstrap::Seeds(self.peers.iter().take(n).map(|p| p.name).collect())
        };
        Config {
            range: self.cfg.range,
            bootstrap,
            gossip_interval: self.cfg.gossip_interval,
            gossip_fanout: 2,
            donate_timeout: self.cfg.donate_timeout,
            handover_retry: self.cfg.donate_timeout,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The core of peer `i`, if it is up.
    pub fn core(&self, i: usize) -> Option<&Ipam> {
        self.peers.get(i)?.core.as_ref()
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there are no peers.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Persists peer `i`'s dirty state, then sends everything it has to send.
    fn pump(&mut self, i: usize) {
        let now = self.now;
        let peer = &mut self.peers[i];
        let Some(core) = peer.core.as_mut() else {
            return;
        };
        if core.take_dirty() {
            peer.disk = persist::encode_state(core);
        }
        let mut out = Vec::new();
        while let Some(t) = core.poll_transmit(now) {
            out.push(t);
        }
        for t in out {
            let targets: Vec<usize> = match t.to {
                Destination::All => (0..self.peers.len()).filter(|&j| j != i).collect(),
                Destination::Peer(p) => self
                    .peers
                    .iter()
                    .position(|q| q.name == p)
                    .into_iter()
                    .collect(),
            };
            for j in targets {
                if self.rng.chance(self.cfg.loss) {
                    self.stats.dropped += 1;
                    continue;
                }
                let jitter = self.rng.below(self.cfg.jitter.as_nanos().max(1) as u64);
                let at = now + self.cfg.latency + Duration::from_nanos(jitter);
                self.seq += 1;
                self.queue.push(Reverse((at, self.seq)));
                self.in_flight.insert(self.seq, (i, j, t.payload.clone()));
            }
        }
    }

    /// Runs messages and timers up to `now + dt`.
    pub fn advance(&mut self, dt: Duration) {
        let end = self.now + dt;
        loop {
            let next_msg = self.queue.peek().map(|Reverse((t, _))| *t);
            let next_timer = self
                .peers
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((p.core.as_ref()?.poll_timeout()?, i)))
                .min();
            let msg_first = match (next_msg, next_timer) {
                (Some(m), Some((t, _))) => m <= t,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if msg_first {
                let Some(Reverse((at, seq))) = self.queue.peek().copied() else {
                    break;
                };
                if at > end {
                    break;
                }
                self.queue.pop();
                self.now = self.now.max(at);
                let Some((from, to, payload)) = self.in_flight.remove(&seq) else {
                    continue;
                };
                self.deliver(from, to, &payload);
            } else {
                let Some((t, i)) = next_timer else { break };
                if t > end {
                    break;
                }
                self.now = self.now.max(t);
                if let Some(core) = self.peers[i].core.as_mut() {
                    core.handle_timeout(self.now);
                }
                self.pump(i);
            }
        }
        self.now = end;
    }

    fn deliver(&mut self, from: usize, to: usize, payload: &[u8]) {
        if self.peers[from].group != self.peers[to].group || self.peers[to].core.is_none() {
            self.stats.dropped += 1;
            return;
        }
        self.stats.delivered += 1;
        let now = self.now;
        let name = self.peers[from].name;
        let Some(core) = self.peers[to].core.as_mut() else {
            return;
        };
        let given = core.stats().donations_given;
        let waiting = matches!(core.hand_over(), Some(HandOver::Waiting(_)));
        // Refused rings (e.g. from a peer whose reclaim lost) are counted by the core; the
        // invariant check is what decides whether anything went wrong.
        let _ = core.handle(now, name, payload);
        self.stats.donations += core.stats().donations_given - given;
        if waiting && matches!(core.hand_over(), Some(HandOver::Acknowledged(_))) {
            self.stats.handovers_acknowledged += 1;
        }
        self.pump(to);
    }

    fn live(&self, i: usize) -> Vec<PeerName> {
        self.peers
            .iter()
            .enumerate()
            .filter(|&(j, p)| {
                j != i && p.core.is_some() && !p.left && p.group == self.peers[i].group
            })
            .map(|(_, p)| p.name)
            .collect()
    }

    /// Applies one action (ignored when it does not apply, e.g. restarting a running peer).
    pub fn apply(&mut self, action: Action) {
        let n = self.peers.len();
        let now = self.now;
        self.stats.steps += 1;
        match action {
            Action::Allocate(i) => {
                let i = i % n;
                let Some(core) = self.peers[i].core.as_mut() else {
                    return;
                };
                self.next_container += 1;
                let c = format!("c{}", self.next_container);
                let r = core.allocate(now, &c, "eth0");
                self.pump(i);
                match r {
                    Ok(a) => {
                        self.stats.allocated += 1;
                        self.peers[i].ledger.insert(c, a);
                    }
                    Err(AllocError::WaitingForSpace(_)) => self.stats.waited += 1,
                    Err(_) => {}
                }
            }
            Action::Release(i, k) => {
                let i = i % n;
                if self.peers[i].ledger.is_empty() {
                    return;
                }
                let k = k % self.peers[i].ledger.len();
                let Some(c) = self.peers[i].ledger.keys().nth(k).cloned() else {
                    return;
                };
                let Some(core) = self.peers[i].core.as_mut() else {
                    return;
                };
                let got = core.release(&c, Some("eth0"));
                self.pump(i);
                self.peers[i].ledger.remove(&c);
                self.stats.released += got.len() as u64;
            }
            Action::Claim(i, x) => {
                let i = i % n;
                let Some(core) = self.peers[i].core.as_mut() else {
                    return;
                };
                let range = core.ring().range();
                let addr = Ipv4Addr::from((range.base() as u64 + x % range.size()) as u32);
                self.next_container += 1;
                let c = format!("c{}", self.next_container);
                let r = core.claim(&c, "eth0", addr);
                self.pump(i);
                if r.is_ok() {
                    self.stats.claimed += 1;
                    self.peers[i].ledger.insert(c, addr);
                }
            }
            Action::Crash(i) => {
                let i = i % n;
                let Some(core) = self.peers[i].core.take() else {
                    return;
                };
                // What it persisted is exactly its state: pump persisted after every call.
                debug_assert_eq!(persist::encode_state(&core), self.peers[i].disk);
                let allocs = core.allocations().map(|(a, _)| u32::from(a)).collect();
                self.peers[i].frozen = Some((core.usable().to_vec(), allocs));
                self.stats.crashes += 1;
            }
            Action::Restart(i) => {
                let i = i % n;
                let p = &self.peers[i];
                if p.core.is_some() || p.removed {
                    return;
                }
                let (name, state) =
                    persist::decode_state(&p.disk).expect("simulated disk holds a valid state");
                assert_eq!(name, p.name);
                let core = Ipam::from_state(name, self.core_config(), state, now)
                    .expect("state fits the config");
                self.peers[i].core = Some(core);
                self.peers[i].frozen = None;
                self.stats.restarts += 1;
                self.pump(i);
            }
            Action::Partition(mask) => {
                for (j, p) in self.peers.iter_mut().enumerate() {
                    p.group = (mask >> (j % 64)) & 1;
                }
            }
            Action::Heal => {
                for p in &mut self.peers {
                    p.group = 0;
                }
            }
            Action::Shutdown(i) => {
                let i = i % n;
                let live = self.live(i);
                let Some(core) = self.peers[i].core.as_mut() else {
                    return;
                };
                if core.has_left() || core.shutdown(now, &live).is_err() {
                    return;
                }
                self.pump(i);
                self.peers[i].left = true;
                self.peers[i].ledger.clear();
                self.stats.shutdowns += 1;
            }
            Action::Rmpeer(i, d) => {
                let (i, d) = (i % n, d % n);
                if i == d || self.peers[d].core.is_some() {
                    return;
                }
                let known: Vec<PeerName> = self
                    .peers
                    .iter()
                    .filter(|p| !p.left && !p.removed)
                    .map(|p| p.name)
                    .collect();
                let live = self.live(i);
                let dead = self.peers[d].name;
                let Some(core) = self.peers[i].core.as_mut() else {
                    return;
                };
                let r = core.rmpeer(now, dead, &known, &live);
                self.pump(i);
                if let Ok(k) = r {
                    // The operator declared it dead: it never comes back, its pods are gone.
                    self.peers[d].removed = true;
                    self.peers[d].ledger.clear();
                    if k > 0 {
                        self.stats.reclaims += 1;
                    }
                }
            }
            Action::Advance(dt) => self.advance(dt),
        }
    }

    /// A random action, weighted towards allocations and time passing.
    pub fn random_action(&mut self) -> Action {
        let n = self.peers.len() as u64;
        let peer = self.rng.below(n) as usize;
        match self.rng.below(100) {
            0..=29 => Action::Allocate(peer),
            30..=44 => Action::Release(peer, self.rng.below(1 << 16) as usize),
            45..=49 => Action::Claim(peer, self.rng.next_u64()),
            50..=52 => Action::Crash(peer),
            53..=58 => Action::Restart(peer),
            59..=60 => Action::Partition(self.rng.next_u64()),
            61..=64 => Action::Heal,
            65 if self.rng.chance(0.1) => Action::Shutdown(peer),
            66..=67 if self.rng.chance(0.3) => Action::Rmpeer(peer, self.rng.below(n) as usize),
            _ => Action::Advance(Duration::from_millis(1 + self.rng.below(80))),
        }
    }

    /// Applies `steps` random actions, checking the invariant after every one.
    pub fn run_random(&mut self, steps: u64) -> Result<(), Violation> {
        for _ in 0..steps {
            let a = self.random_action();
            self.apply(a);
            self.check()?;
        }
        Ok(())
    }

    /// Heals partitions, restarts crashed peers that were not removed, and lets time pass.
    pub fn settle(&mut self, dt: Duration) {
        self.apply(Action::Heal);
        for i in 0..self.peers.len() {
            self.apply(Action::Restart(i));
        }
        self.advance(dt);
    }

    /// Checks the invariants across all peers (see the module doc).
    pub fn check(&mut self) -> Result<(), Violation> {
        self.stats.checks += 1;
        let fail = |what: String| Violation {
            step: self.stats.steps,
            time: self.now - self.start,
            what,
        };
        let mut spans: Vec<(u32, u64, usize)> = Vec::new();
        let mut owner_of: HashMap<u32, usize> = HashMap::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.removed {
                continue;
            }
            let (usable, allocs): (Vec<Span>, Vec<u32>) = match (&p.core, &p.frozen) {
                (Some(c), _) => (
                    c.usable().to_vec(),
                    c.allocations().map(|(a, _)| u32::from(a)).collect(),
                ),
                (None, Some((u, a))) => (u.clone(), a.clone()),
                (None, None) => continue,
            };
            for a in &allocs {
                if !usable.iter().any(|s| *a >= s.start && (*a as u64) < s.end) {
                    return Err(fail(format!(
                        "peer {} holds {} outside its usable space",
                        p.name,
                        Ipv4Addr::from(*a)
                    )));
                }
                if let Some(j) = owner_of.insert(*a, i) {
                    return Err(fail(format!(
                        "{} allocated by both {} and {}",
                        Ipv4Addr::from(*a),
                        self.peers[j].name,
                        p.name
                    )));
                }
            }
            spans.extend(usable.iter().map(|s| (s.start, s.end, i)));
            // An acknowledged hand-over is on the receiver's disk: its persisted ring has every
            // address handed over at the version the hand-over wrote, or a later one.
            if let Some(c) = &p.core
                && let Some(HandOver::Acknowledged(to)) = c.hand_over()
                && let Some(r) = self.peers.iter().find(|q| q.name == to)
            {
                let theirs = persist::decode_state(&r.disk).map_err(|e| fail(format!("{to}'s disk: {e}")))?.1.ring;
                for (span, version) in c.handed_over() {
                    let behind = theirs
                        .pieces()
                        .filter(|q| q.end > span.start as u64 && (q.start as u64) < span.end)
                        .any(|q| q.entry.version < *version);
                    if theirs.is_empty() || behind {
                        return Err(fail(format!("{} counts its hand-over to {to} acknowledged, but {to}'s disk lacks {}", p.name, Ipv4Addr::from(span.start))));
                    }
                }
            }
            if let Some(c) = &p.core {
                for (container, addr) in &p.ledger {
                    if c.lookup(container, "eth0") != Some(*addr) {
                        return Err(fail(format!(
                            "peer {} lost allocation {container} -> {addr}",
                            p.name
                        )));
                    }
                }
            }
        }
        spans.sort();
        for w in spans.windows(2) {
            if (w[1].0 as u64) < w[0].1 {
                return Err(fail(format!(
                    "{}-{} usable by {} overlaps {}-{} usable by {}",
                    Ipv4Addr::from(w[0].0),
                    Ipv4Addr::from((w[0].1 - 1) as u32),
                    self.peers[w[0].2].name,
                    Ipv4Addr::from(w[1].0),
                    Ipv4Addr::from((w[1].1 - 1) as u32),
                    self.peers[w[1].2].name,
                )));
            }
        }
        Ok(())
    }
}
