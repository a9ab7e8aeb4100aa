//! A deterministic in-process simulator of topology gossip between many peers.
//!
//! Each simulated peer is a [`Topology`] core (and, optionally, a [`RouteEngine`]) driven on a
//! virtual clock. Peers are joined by virtual links that model a reliable, ordered control
//! connection (as a QUIC stream is): a message arrives after the link latency plus random jitter;
//! a lost packet is retransmitted after `rto`, delaying it and everything behind it. Cutting a
//! link drops what is in flight, and both ends notice `detect_down` later (their connection
//! becomes not established); healing reconnects both ends. A connection is established as soon
//! as a link is added (the handshake is not simulated).
//!
//! Everything random comes from one seeded generator, so a run is a pure function of its seed
//! and the calls made. The clock starts at one `Instant` read when the simulator is created;
//! the cores never read it.
//!
//! Rounds: a message sent by a peer carries one more than the highest round the peer has
//! received, so the rounds to convergence are the length of the longest causal chain of gossip
//! messages that led there.
//!
//! Decoded entries are shared between the simulated peers through one [`Interner`] (the bytes
//! still cross the wire format), and so are the bytes of the entries in messages in flight: a
//! message waiting for delivery holds the bytes before its first entry and a shared copy of
//! each entry's bytes, and is put back together (byte for byte) when delivered. So thousands of
//! peers fit in memory, even during a cold start of all of them at once, when every entry
//! crosses about every link.
//! [`bounded_degree_graph`](Sim::bounded_degree_graph) builds the partial mesh that
//! [`crate::degree`] chooses; [`steady_state`](Sim::steady_state) measures the gossip bytes of a
//! quiet mesh.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::peer::PeerName;
use crate::routes::{RouteEngine, Routes};
use crate::topology::{
    Capabilities, Config, Direction, GossipPacket, Interner, Topology, entry_digest,
};

/// Simulation parameters.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of the random generator.
    pub seed: u64,
    /// One-way link latency.
    pub latency: Duration,
    /// Extra one-way delay, uniform in `0..jitter`.
    pub jitter: Duration,
    /// Probability that a transmission attempt is lost (and retransmitted after `rto`), below 1.
    pub loss: f64,
    /// Retransmission delay after a loss.
    pub rto: Duration,
    /// How long after a cut both ends notice their connection is down.
    pub detect_down: Duration,
    /// Configuration of every peer's topology core.
    pub topology: Config,
    /// Give every peer a route engine with this coalescing interval (None: no route engines).
    pub route_interval: Option<Duration>,
    /// How often convergence is checked while running until converged.
    pub check_every: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(2),
            loss: 0.0,
            rto: Duration::from_millis(30),
            detect_down: Duration::from_secs(1),
            topology: Config::default(),
            route_interval: Some(Duration::from_millis(50)),
            check_every: Duration::from_millis(1),
        }
    }
}

/// A small seeded generator (SplitMix64): stable across platforms and crate versions.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n` must not be zero.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How a run until convergence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Convergence {
    /// Virtual time from the start of the run.
    pub time: Duration,
    /// Longest causal chain of gossip messages delivered in the run.
    pub rounds: u32,
}

#[derive(Debug)]
struct SimPeer {
    topo: Topology,
    engine: Option<RouteEngine>,
    round: u32,
    bytes_sent: u64,
    messages_sent: u64,
    scheduled: Option<Instant>,
    touched: bool,
}

#[derive(Debug)]
struct Link {
    up: bool,
    epoch: u64,
    /// Latest scheduled arrival per direction (0: lower index to higher), for ordering.
    tail: [Instant; 2],
}

/// A message in flight.
#[derive(Debug)]
enum Payload {
    /// Bytes without entries (or malformed), as sent.
    Raw(Vec<u8>),
    /// The bytes before the first entry, then the entries' bytes, shared.
    Shared {
        head: Box<[u8]>,
        entries: Vec<Arc<[u8]>>,
    },
}

/// Entries' bytes by name and stamp, shared by the messages in flight.
type EntryBytes = HashMap<(PeerName, u64, u64), Arc<[u8]>>;

impl Payload {
    /// Splits `bytes` into the part before the entries and the entries (which run to the end
    /// of a well-formed message), sharing the entries' bytes through `store`.
    fn pack(bytes: Vec<u8>, store: &mut EntryBytes) -> Payload {
        let Ok(packet) = GossipPacket::new_checked(&bytes[..]) else {
            return Payload::Raw(bytes);
        };
        let Some(first) = packet.entries().next() else {
            return Payload::Raw(bytes);
        };
        let start = first.bytes().as_ptr() as usize - bytes.as_ptr() as usize;
        let mut entries = Vec::with_capacity(usize::from(packet.entry_count()));
        for view in packet.entries() {
            let (incarnation, version) = view.stamp();
            let key = (view.name(), incarnation, version);
            let shared = match store.get(&key) {
                Some(b) if **b == *view.bytes() => b.clone(),
                _ => {
                    let b: Arc<[u8]> = view.bytes().into();
                    store.insert(key, b.clone());
                    b
                }
            };
            entries.push(shared);
        }
        Payload::Shared {
            head: bytes[..start].into(),
            entries,
        }
    }

    /// The message's bytes, into `out` (cleared first).
    fn unpack(&self, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Payload::Raw(b) => out.extend_from_slice(b),
            Payload::Shared { head, entries } => {
                out.extend_from_slice(head);
                for e in entries {
                    out.extend_from_slice(e);
                }
            }
        }
    }
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        epoch: u64,
        round: u32,
        payload: Payload,
    },
    Down {
        a: usize,
        b: usize,
        epoch: u64,
    },
}

#[derive(Debug)]
struct Scheduled {
    at: Instant,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The simulator.
#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    rng: SimRng,
    epoch: Instant,
    now: Instant,
    peers: Vec<SimPeer>,
    index: HashMap<PeerName, usize>,
    links: HashMap<(usize, usize), Link>,
    events: BinaryHeap<Reverse<Scheduled>>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    touched: Vec<usize>,
    seq: u64,
    max_round: u32,
    dropped: u64,
    malformed: u64,
    interner: Interner,
    entry_bytes: EntryBytes,
    scratch: Vec<u8>,
}

/// Gossip sent by a quiet mesh over a measured stretch of virtual time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SteadyState {
    /// Mean gossip bytes each peer sent per second.
    pub bytes_per_peer_per_sec: f64,
    /// The most bytes one peer sent per second.
    pub max_bytes_per_peer_per_sec: f64,
    /// Mean gossip messages each peer sent per second.
    pub messages_per_peer_per_sec: f64,
}

fn key(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    /// An empty simulation.
    pub fn new(config: SimConfig) -> Self {
        let epoch = Instant::now();
        Sim {
            rng: SimRng::new(config.seed),
            config,
            epoch,
            now: epoch,
            peers: Vec::new(),
            index: HashMap::new(),
            links: HashMap::new(),
            events: BinaryHeap::new(),
            timers: BinaryHeap::new(),
            touched: Vec::new(),
            seq: 0,
            max_round: 0,
            dropped: 0,
            malformed: 0,
            interner: Interner::new(),
            entry_bytes: HashMap::new(),
            scratch: Vec::new(),
        }
    }

    /// Adds a peer with a random name; returns its index.
    pub fn add_peer(&mut self) -> usize {
        let name = loop {
            let n = PeerName::from_u64(self.rng.next_u64());
            if !self.index.contains_key(&n) && n.0 != [0xff; 6] {
                break n;
            }
        };
        let i = self.peers.len();
        let caps = Capabilities {
            sleeve: true,
            fastpath: true,
            encryption: false,
        };
        let topo = Topology::new(
            self.now,
            self.config.topology.clone(),
            name,
            format!("peer-{i}"),
            1,
            caps,
        );
        let engine = self
            .config
            .route_interval
            .map(|iv| RouteEngine::new(name, iv));
        self.peers.push(SimPeer {
            topo,
            engine,
            round: 0,
            bytes_sent: 0,
            messages_sent: 0,
            scheduled: None,
            touched: false,
        });
        self.index.insert(name, i);
        self.touch(i);
        i
    }

    /// Adds `n` peers.
    pub fn add_peers(&mut self, n: usize) {
        for _ in 0..n {
            self.add_peer();
        }
        self.flush();
    }

    /// Connects every peer into one random connected graph with about `degree` links per peer:
    /// a random spanning tree, then random extra links.
    pub fn random_connected_graph(&mut self, degree: usize) {
        let n = self.peers.len();
        for i in 1..n {
            let j = self.rng.below(i as u64) as usize;
            self.connect(i, j);
        }
        let target = n * degree / 2;
        let mut attempts = 0;
        while self.links.len() < target && attempts < target * 20 {
            attempts += 1;
            let (a, b) = (
                self.rng.below(n as u64) as usize,
                self.rng.below(n as u64) as usize,
            );
            if a != b && !self.links.contains_key(&key(a, b)) {
                self.connect(a, b);
            }
        }
        self.flush();
    }

    /// Connects every peer to the peers [`crate::degree::choose`] picks for it under
    /// `limit` connections (each chosen pair once).
    pub fn bounded_degree_graph(&mut self, limit: usize) {
        let names: Vec<PeerName> = self.peers.iter().map(|p| p.topo.me()).collect();
        for (a, b) in crate::degree::links(&names, limit) {
            let (a, b) = (self.index[&a], self.index[&b]);
            self.connect(a, b);
        }
        self.flush();
    }

    /// Hands every peer the current entries of all the others ([`Topology::install`]) and drops
    /// the messages in flight, as if the mesh had converged long ago: for measuring a large
    /// mesh's steady state and the spread of a change without simulating its cold start (at
    /// 5000 peers a cold start sends some 20 GB of gossip in all and takes a minute or two).
    pub fn assume_converged(&mut self) {
        self.flush();
        let entries: Vec<Arc<crate::topology::PeerEntry>> = self
            .peers
            .iter()
            .map(|p| Arc::new(p.topo.own().clone()))
            .collect();
        for p in &mut self.peers {
            for e in &entries {
                p.topo.install(e.clone());
            }
        }
        self.events
            .retain(|Reverse(s)| !matches!(s.event, Event::Deliver { .. }));
        for i in 0..self.peers.len() {
            self.touch(i);
        }
        self.flush();
    }

    /// Hop counts from peer `s` over links that are up (`u32::MAX`: unreachable).
    pub fn hops_from(&self, s: usize) -> Vec<u32> {
        let adj = self.adjacency();
        bfs(&adj, s)
    }

    fn adjacency(&self) -> Vec<Vec<usize>> {
        let mut adj = vec![Vec::new(); self.peers.len()];
        for (&(a, b), l) in &self.links {
            if l.up {
                adj[a].push(b);
                adj[b].push(a);
            }
        }
        adj
    }

    /// The largest hop count between two peers over links that are up (`None` if some pair is
    /// not connected), and how many peers have no link up.
    pub fn diameter(&self) -> (Option<u32>, usize) {
        let adj = self.adjacency();
        let isolated = adj.iter().filter(|a| a.is_empty()).count();
        let mut far = 0;
        for s in 0..adj.len() {
            for d in bfs(&adj, s) {
                if d == u32::MAX {
                    return (None, isolated);
                }
                far = far.max(d);
            }
        }
        (Some(far), isolated)
    }

    /// Bytes of memory peer `i`'s topology core holds ([`Topology::heap_bytes`]).
    pub fn topology_heap_bytes(&self, i: usize) -> usize {
        self.peers[i].topo.heap_bytes()
    }

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from((
            Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8),
            6783,
        ))
    }

    fn set_established(&mut self, a: usize, b: usize, established: bool) {
        let (na, nb) = (self.name(a), self.name(b));
        let now = self.now;
        self.peers[a]
            .topo
            .set_connection(now, nb, Self::addr(b), Direction::Outbound, established);
        self.peers[b]
            .topo
            .set_connection(now, na, Self::addr(a), Direction::Inbound, established);
        self.touch(a);
        self.touch(b);
    }

    /// Adds a link between `a` and `b` (a connects out) and establishes it. No-op if it exists.
    pub fn connect(&mut self, a: usize, b: usize) {
        if a == b || self.links.contains_key(&key(a, b)) {
            return;
        }
        let now = self.now;
        self.links.insert(
            key(a, b),
            Link {
                up: true,
                epoch: 0,
                tail: [now; 2],
            },
        );
        self.set_established(a, b, true);
    }

    /// Cuts the link between `a` and `b`: in-flight messages are lost and both ends notice
    /// after `detect_down`.
    pub fn cut(&mut self, a: usize, b: usize) {
        let at = self.now + self.config.detect_down;
        let Some(link) = self.links.get_mut(&key(a, b)) else {
            return;
        };
        if !link.up {
            return;
        }
        link.up = false;
        link.epoch += 1;
        let epoch = link.epoch;
        self.schedule(at, Event::Down { a, b, epoch });
    }

    /// Restores a cut link; both ends reconnect (and exchange full state).
    pub fn heal(&mut self, a: usize, b: usize) {
        let now = self.now;
        let Some(link) = self.links.get_mut(&key(a, b)) else {
            return;
        };
        if link.up {
            return;
        }
        link.up = true;
        link.epoch += 1;
        link.tail = [now; 2];
        self.set_established(a, b, false);
        self.set_established(a, b, true);
        self.flush();
    }

    /// Cuts every link between `side` and the other peers.
    pub fn partition(&mut self, side: &[usize]) {
        let mut inside = vec![false; self.peers.len()];
        for &i in side {
            inside[i] = true;
        }
        let mut crossing: Vec<(usize, usize)> = self
            .links
            .iter()
            .filter(|&(&(a, b), l)| l.up && inside[a] != inside[b])
            .map(|(&k, _)| k)
            .collect();
        crossing.sort_unstable();
        for (a, b) in crossing {
            self.cut(a, b);
        }
    }

    /// Heals every cut link.
    pub fn heal_all(&mut self) {
        let mut down: Vec<(usize, usize)> = self
            .links
            .iter()
            .filter(|(_, l)| !l.up)
            .map(|(&k, _)| k)
            .collect();
        down.sort_unstable();
        for (a, b) in down {
            self.heal(a, b);
        }
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.events.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    fn touch(&mut self, i: usize) {
        if !self.peers[i].touched {
            self.peers[i].touched = true;
            self.touched.push(i);
        }
    }

    /// Lets touched peers recompute routes, sends what they have to send, and rearms timers.
    fn flush(&mut self) {
        let now = self.now;
        while let Some(i) = self.touched.pop() {
            self.peers[i].touched = false;
            let p = &mut self.peers[i];
            if let Some(e) = p.engine.as_mut() {
                e.handle_timeout(now, &p.topo);
            }
            while let Some(t) = self.peers[i].topo.poll_transmit(now) {
                self.send(i, t.to, t.payload);
            }
            let p = &mut self.peers[i];
            let due = [
                p.topo.poll_timeout(),
                p.engine.as_ref().and_then(|e| e.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(due) = due {
                if p.scheduled != Some(due) {
                    p.scheduled = Some(due);
                    self.timers.push(Reverse((due, i)));
                }
            }
        }
    }

    fn send(&mut self, from: usize, to: PeerName, payload: Vec<u8>) {
        let Some(&to) = self.index.get(&to) else {
            self.dropped += 1;
            return;
        };
        self.peers[from].bytes_sent += payload.len() as u64;
        self.peers[from].messages_sent += 1;
        let mut delay = self.config.latency;
        if !self.config.jitter.is_zero() {
            delay += self.config.jitter.mul_f64(self.rng.unit());
        }
        while self.config.loss > 0.0 && self.rng.unit() < self.config.loss.min(0.99) {
            delay += self.config.rto;
        }
        let now = self.now;
        let dir = usize::from(from > to);
        let Some(link) = self.links.get_mut(&key(from, to)).filter(|l| l.up) else {
            self.dropped += 1;
            return;
        };
        let at = (now + delay).max(link.tail[dir]);
        link.tail[dir] = at;
        let epoch = link.epoch;
        let round = self.peers[from].round + 1;
        let payload = Payload::pack(payload, &mut self.entry_bytes);
        self.schedule(
            at,
            Event::Deliver {
                from,
                to,
                epoch,
                round,
                payload,
            },
        );
    }

    fn next_time(&self) -> Option<Instant> {
        let e = self.events.peek().map(|Reverse(s)| s.at);
        let t = self.timers.peek().map(|Reverse((t, _))| *t);
        e.into_iter().chain(t).min()
    }

    /// Processes everything due at the next event time, if it is not after `deadline`.
    /// Returns false when nothing is due by then.
    fn step(&mut self, deadline: Instant) -> bool {
        self.flush();
        let Some(next) = self.next_time().filter(|&t| t <= deadline) else {
            return false;
        };
        self.now = self.now.max(next);
        let now = self.now;
        while self.events.peek().is_some_and(|Reverse(s)| s.at <= now) {
            let Some(Reverse(s)) = self.events.pop() else {
                break;
            };
            match s.event {
                Event::Deliver {
                    from,
                    to,
                    epoch,
                    round,
                    payload,
                } => {
                    if !self
                        .links
                        .get(&key(from, to))
                        .is_some_and(|l| l.up && l.epoch == epoch)
                    {
                        self.dropped += 1;
                        continue;
                    }
                    let sender = self.name(from);
                    payload.unpack(&mut self.scratch);
                    let p = &mut self.peers[to];
                    if p.topo
                        .handle_interned(now, sender, &self.scratch, Some(&mut self.interner))
                        .is_err()
                    {
                        self.malformed += 1;
                    }
                    p.round = p.round.max(round);
                    self.max_round = self.max_round.max(round);
                    self.touch(to);
                }
                Event::Down { a, b, epoch } => {
                    if self
                        .links
                        .get(&key(a, b))
                        .is_some_and(|l| !l.up && l.epoch == epoch)
                    {
                        self.set_established(a, b, false);
                    }
                }
            }
        }
        while self.timers.peek().is_some_and(|Reverse((t, _))| *t <= now) {
            let Some(Reverse((t, i))) = self.timers.pop() else {
                break;
            };
            if self.peers[i].scheduled != Some(t) {
                continue;
            }
            self.peers[i].scheduled = None;
            self.peers[i].topo.handle_timeout(now);
            self.touch(i);
        }
        self.flush();
        true
    }

    /// Forgets shared entries and entry bytes nothing holds any more.
    fn prune(&mut self) {
        self.interner.prune();
        self.entry_bytes.retain(|_, b| Arc::strong_count(b) > 1);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let deadline = self.now + d;
        while self.step(deadline) {}
        self.now = deadline;
        self.prune();
    }

    /// Runs a quiet mesh for `d` of virtual time and reports the gossip it sent.
    pub fn steady_state(&mut self, d: Duration) -> SteadyState {
        let before: Vec<(u64, u64)> = self
            .peers
            .iter()
            .map(|p| (p.bytes_sent, p.messages_sent))
            .collect();
        self.run_for(d);
        let secs = d.as_secs_f64();
        let n = self.peers.len().max(1) as f64;
        let deltas = self
            .peers
            .iter()
            .zip(before)
            .map(|(p, (b, m))| (p.bytes_sent - b, p.messages_sent - m));
        let (mut bytes, mut msgs, mut max) = (0u64, 0u64, 0u64);
        for (b, m) in deltas {
            bytes += b;
            msgs += m;
            max = max.max(b);
        }
        SteadyState {
            bytes_per_peer_per_sec: bytes as f64 / n / secs,
            max_bytes_per_peer_per_sec: max as f64 / secs,
            messages_per_peer_per_sec: msgs as f64 / n / secs,
        }
    }

    /// Runs until [`converged`](Self::converged), for at most `max` of virtual time. Rounds are
    /// counted from the start of this call.
    pub fn run_until_converged(&mut self, max: Duration) -> Option<Convergence> {
        let start = self.now;
        let deadline = start + max;
        self.max_round = 0;
        for p in &mut self.peers {
            p.round = 0;
        }
        let events = std::mem::take(&mut self.events);
        self.events = events
            .into_iter()
            .map(|Reverse(mut s)| {
                if let Event::Deliver { round, .. } = &mut s.event {
                    *round = 1;
                }
                Reverse(s)
            })
            .collect();
        let mut last_check = None;
        loop {
            if last_check.is_none_or(|l: Instant| self.now >= l + self.config.check_every) {
                last_check = Some(self.now);
                if self.converged() {
                    self.prune();
                    return Some(Convergence {
                        time: self.now - start,
                        rounds: self.max_round,
                    });
                }
            }
            if !self.step(deadline) {
                return self.converged().then(|| Convergence {
                    time: self.now - start,
                    rounds: self.max_round,
                });
            }
        }
    }

    /// True when every peer's table holds exactly the peers of its component (over links that
    /// are up), each at the version its owner has.
    pub fn converged(&self) -> bool {
        let comp = self.components();
        let mut count = HashMap::new();
        let mut digest: HashMap<usize, u64> = HashMap::new();
        for (i, p) in self.peers.iter().enumerate() {
            let own = p.topo.own();
            *count.entry(comp[i]).or_insert(0usize) += 1;
            let d = digest.entry(comp[i]).or_insert(0);
            *d = d.wrapping_add(entry_digest(own.name, own.incarnation, own.version));
        }
        self.peers
            .iter()
            .enumerate()
            .all(|(i, p)| p.topo.len() == count[&comp[i]] && p.topo.digest() == digest[&comp[i]])
    }

    /// Like [`converged`](Self::converged) but comparing whole entries, not digests.
    pub fn tables_identical(&self) -> bool {
        let comp = self.components();
        self.peers.iter().enumerate().all(|(i, p)| {
            let members = (0..self.peers.len()).filter(|&j| comp[j] == comp[i]);
            p.topo.len() == members.clone().count()
                && members
                    .into_iter()
                    .all(|j| p.topo.entry(self.name(j)) == Some(self.peers[j].topo.own()))
        })
    }

    /// Component id per peer over links that are up.
    pub fn components(&self) -> Vec<usize> {
        let n = self.peers.len();
        let mut adj = vec![Vec::new(); n];
        for (&(a, b), l) in &self.links {
            if l.up {
                adj[a].push(b);
                adj[b].push(a);
            }
        }
        let mut comp = vec![usize::MAX; n];
        for s in 0..n {
            if comp[s] != usize::MAX {
                continue;
            }
            comp[s] = s;
            let mut stack = vec![s];
            while let Some(u) = stack.pop() {
                for &v in &adj[u] {
                    if comp[v] == usize::MAX {
                        comp[v] = s;
                        stack.push(v);
                    }
                }
            }
        }
        comp
    }

    /// Follows a broadcast from `source` along each peer's own broadcast routes over links
    /// that are up; returns how many copies each peer received (the source counts itself once).
    /// Copies sent over a missing or cut link are lost. Stops after `len()²` copies.
    pub fn broadcast_receipts(&self, source: usize) -> Vec<u32> {
        let n = self.peers.len();
        let mut got = vec![0u32; n];
        got[source] = 1;
        let src = self.name(source);
        let mut stack = vec![source];
        let mut budget = n * n;
        while let Some(p) = stack.pop() {
            let Some(routes) = self.routes(p) else {
                continue;
            };
            for hop in routes.broadcast_next_hops(src) {
                let Some(&h) = self.index.get(hop) else {
                    continue;
                };
                if !self.links.get(&key(p, h)).is_some_and(|l| l.up) {
                    continue;
                }
                got[h] += 1;
                if budget == 0 {
                    return got;
                }
                budget -= 1;
                stack.push(h);
            }
        }
        got
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True without peers.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Peer `i`'s name.
    pub fn name(&self, i: usize) -> PeerName {
        self.peers[i].topo.me()
    }

    /// The index of the peer named `name`.
    pub fn index_of(&self, name: PeerName) -> Option<usize> {
        self.index.get(&name).copied()
    }

    /// Peer `i`'s topology.
    pub fn topology(&self, i: usize) -> &Topology {
        &self.peers[i].topo
    }

    /// Peer `i`'s published routes (None without route engines).
    pub fn routes(&self, i: usize) -> Option<Arc<Routes>> {
        self.peers[i]
            .engine
            .as_ref()
            .map(|e| e.routes().load_full())
    }

    /// Gossip bytes peer `i` sent.
    pub fn bytes_sent(&self, i: usize) -> u64 {
        self.peers[i].bytes_sent
    }

    /// Gossip messages peer `i` sent.
    pub fn messages_sent(&self, i: usize) -> u64 {
        self.peers[i].messages_sent
    }

    /// Links that are up, as index pairs (lower first), sorted.
    pub fn links_up(&self) -> Vec<(usize, usize)> {
        let mut v: Vec<_> = self
            .links
            .iter()
            .filter(|(_, l)| l.up)
            .map(|(&k, _)| k)
            .collect();
        v.sort_unstable();
        v
    }

    /// Messages lost to cut links.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Messages a peer refused as malformed (always 0 unless a core is broken).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Virtual time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.now - self.epoch
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }
}

fn bfs(adj: &[Vec<usize>], s: usize) -> Vec<u32> {
    let mut d = vec![u32::MAX; adj.len()];
    d[s] = 0;
    let mut queue = std::collections::VecDeque::from([s]);
    while let Some(u) = queue.pop_front() {
        for &v in &adj[u] {
            if d[v] == u32::MAX {
                d[v] = d[u] + 1;
                queue.push_back(v);
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let (mut a, mut b) = (SimRng::new(5), SimRng::new(5));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            assert!(a.below(7) < 7);
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
            b.below(7);
            b.unit();
        }
    }

    #[test]
    fn three_in_a_line_converge_with_routes_through_the_middle() {
        let mut sim = Sim::new(SimConfig::default());
        sim.add_peers(3);
        sim.connect(0, 1);
        sim.connect(1, 2);
        let c = sim
            .run_until_converged(Duration::from_secs(5))
            .expect("converges");
        assert!(
            c.rounds >= 2,
            "the ends learn of each other through the middle: {c:?}"
        );
        sim.run_for(Duration::from_millis(100));
        let r0 = sim.routes(0).unwrap();
        assert_eq!(r0.next_hop(sim.name(2)), Some(sim.name(1)));
        assert_eq!(r0.next_hop(sim.name(1)), Some(sim.name(1)));
    }

    #[test]
    fn same_seed_same_run() {
        let run = |seed| {
            let mut sim = Sim::new(SimConfig {
                seed,
                ..SimConfig::default()
            });
            sim.add_peers(20);
            sim.random_connected_graph(3);
            let c = sim.run_until_converged(Duration::from_secs(5)).unwrap();
            (
                c,
                sim.links_up(),
                (0..20).map(|i| sim.bytes_sent(i)).collect::<Vec<_>>(),
            )
        };
        assert_eq!(run(3), run(3));
    }
}
