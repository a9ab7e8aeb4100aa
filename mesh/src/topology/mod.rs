//! Topology gossip: who is in the mesh and who is connected to whom (sans-IO).
//!
//! Every peer owns one [`PeerEntry`] (its connections and capabilities) and is the only one that
//! changes it, bumping `version` each time; `incarnation` changes when the peer restarts. Copies
//! merge by `(incarnation, version)`: the higher pair wins, ties keep what we have.
//!
//! [`Topology`] holds our view of all entries and decides what to gossip:
//! - entries that changed (ours, or newer ones learned from a neighbour) are queued as small
//!   *update* messages to every neighbour except the one they came from, sent on the next
//!   [`poll_transmit`](Topology::poll_transmit);
//! - a neighbour whose connection becomes established gets our *full state*, and every neighbour
//!   gets it again every [`Config::full_interval`];
//! - when a neighbour sends an entry older than ours, ours is queued back to it.
//!
//! Neighbours are the peers our own entry lists as established. Peers not reachable from us over
//! established, symmetric connections (each side lists the other as established) are removed
//! after [`Config::gc_after`]. Reachability is rechecked at most once per
//! [`Config::recheck_interval`].
//!
//! If someone gossips an entry under our own name that is not older than ours (a copy from our
//! previous run), we move past it: a newer incarnation becomes `theirs + 1` at version 1, else our
//! version becomes `theirs + 1`. [`Topology::incarnation`] tells the caller what we now use.
//!
//! Wire format: [`wire`].

pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::peer::PeerName;
use crate::routes::Graph;

pub use wire::{EntryView, GossipPacket, GossipRepr, MessageKind, WireError};

/// Which side opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We connected to the remote.
    Outbound,
    /// The remote connected to us.
    Inbound,
}

/// One connection a peer reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The peer at the other end.
    pub remote: PeerName,
    /// The remote's address as seen by the reporting peer.
    pub addr: SocketAddr,
    /// Who opened it.
    pub direction: Direction,
    /// Whether it is up and authenticated (else: being set up).
    pub established: bool,
}

/// What a peer can do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Carries frames over the UDP sleeve.
    pub sleeve: bool,
    /// Can use the kernel VXLAN fast path.
    pub fastpath: bool,
    /// Requires encryption (a cluster password is set).
    pub encryption: bool,
}

/// A peer's entry, as owned and versioned by that peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    /// The peer's name.
    pub name: PeerName,
    /// Human-readable name (at most 255 bytes are gossiped).
    pub nickname: String,
    /// Changes each time the peer restarts.
    pub incarnation: u64,
    /// Bumped by the owner on every change.
    pub version: u64,
    /// Overlays and encryption.
    pub capabilities: Capabilities,
    /// The peer's connections, at most one per remote.
    pub connections: Vec<Connection>,
}

impl PeerEntry {
    /// The merge order key.
    pub fn stamp(&self) -> (u64, u64) {
        (self.incarnation, self.version)
    }
}

/// A compact fingerprint of one entry's identity and stamp; a table's digest is the wrapping sum
/// of its entries' fingerprints, so two tables with the same digest and size hold the same
/// versions (with overwhelming probability).
pub fn entry_digest(name: PeerName, incarnation: u64, version: u64) -> u64 {
    let mut h = mix(name.to_u64() ^ 0x5f3c_a1e2_9d4b_7a61);
    h = mix(h ^ incarnation);
    mix(h ^ version.rotate_left(17))
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Timing and size knobs.
#[derive(Clone, Debug)]
pub struct Config {
    /// How often every neighbour gets our full state.
    pub full_interval: Duration,
    /// Minimum time between two reachability checks.
    pub recheck_interval: Duration,
    /// How long a peer stays unreachable before its entry is dropped.
    pub gc_after: Duration,
    /// Messages are split so each stays under this many bytes (an entry larger than this is
    /// still sent, alone).
    pub max_message_len: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            full_interval: Duration::from_secs(30),
            recheck_interval: Duration::from_millis(100),
            gc_after: Duration::from_secs(10),
            max_message_len: 60 * 1024,
        }
    }
}

/// A message to send to a neighbour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The neighbour.
    pub to: PeerName,
    /// An encoded gossip message ([`wire`]).
    pub payload: Vec<u8>,
}

/// Why [`Topology::handle`] refused a message. Nothing of a refused message is applied.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message is malformed.
    #[error("malformed gossip from {from}")]
    Malformed {
        /// The neighbour that sent it.
        from: PeerName,
        /// What is wrong with it.
        #[source]
        source: WireError,
    },
}

/// Counters, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages handled (well formed).
    pub messages_received: u64,
    /// Messages refused as malformed.
    pub malformed: u64,
    /// Entries that were new or newer than ours.
    pub entries_learned: u64,
    /// Messages produced by `poll_transmit`.
    pub messages_sent: u64,
    /// Bytes produced by `poll_transmit`.
    pub bytes_sent: u64,
    /// Times we moved our own stamp past a copy of our entry gossiped by others.
    pub self_conflicts: u64,
    /// Entries garbage-collected as unreachable.
    pub collected: u64,
}

#[derive(Debug)]
struct Record {
    entry: PeerEntry,
    /// The neighbour this version came from (None: ours, or learned before any neighbour).
    from: Option<PeerName>,
    unreachable_since: Option<Instant>,
}

#[derive(Debug, Default)]
struct Pending {
    full: bool,
    entries: BTreeSet<PeerName>,
}

/// Our view of the mesh topology and the gossip state machine.
#[derive(Debug)]
pub struct Topology {
    config: Config,
    me: PeerName,
    records: HashMap<PeerName, Record>,
    pending: BTreeMap<PeerName, Pending>,
    outbox: VecDeque<Transmit>,
    next_full: Instant,
    recheck_due: Option<Instant>,
    last_recheck: Option<Instant>,
    gc_due: Option<Instant>,
    generation: u64,
    digest: u64,
    stats: Stats,
}

impl Topology {
    /// A topology that knows only our own entry (version 1, no connections).
    pub fn new(
        now: Instant,
        config: Config,
        me: PeerName,
        nickname: String,
        incarnation: u64,
        capabilities: Capabilities,
    ) -> Self {
        let entry = PeerEntry {
            name: me,
            nickname,
            incarnation,
            version: 1,
            capabilities,
            connections: Vec::new(),
        };
        let mut t = Topology {
            next_full: now + config.full_interval,
            config,
            me,
            records: HashMap::new(),
            pending: BTreeMap::new(),
            outbox: VecDeque::new(),
            recheck_due: None,
            last_recheck: None,
            gc_due: None,
            generation: 0,
            digest: 0,
            stats: Stats::default(),
        };
        t.digest = entry_digest(me, incarnation, 1);
        t.records.insert(
            me,
            Record {
                entry,
                from: None,
                unreachable_since: None,
            },
        );
        t
    }

    /// Our name.
    pub fn me(&self) -> PeerName {
        self.me
    }

    /// Our current incarnation (it moves only past a newer copy of our own entry).
    pub fn incarnation(&self) -> u64 {
        self.own().incarnation
    }

    /// Our own entry.
    pub fn own(&self) -> &PeerEntry {
        // Invariant: our own record is inserted in `new` and never removed.
        &self.records[&self.me].entry
    }

    /// The entry for `name`, if known.
    pub fn entry(&self, name: PeerName) -> Option<&PeerEntry> {
        self.records.get(&name).map(|r| &r.entry)
    }

    /// All entries, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &PeerEntry> + '_ {
        self.records.values().map(|r| &r.entry)
    }

    /// Number of known peers, us included.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Always false: we know at least ourselves.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Changes whenever any entry is added, replaced or removed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Wrapping sum of [`entry_digest`] over all entries.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The peers our own entry lists as established: where gossip goes.
    pub fn neighbours(&self) -> impl Iterator<Item = PeerName> + '_ {
        self.own()
            .connections
            .iter()
            .filter(|c| c.established)
            .map(|c| c.remote)
    }

    /// The symmetric, established connection graph of all known entries.
    pub fn graph(&self) -> Graph {
        Graph::from_entries(self.entries())
    }

    /// Adds or updates our connection to `remote`. A connection that becomes established gets
    /// our full state pushed on it.
    pub fn set_connection(
        &mut self,
        now: Instant,
        remote: PeerName,
        addr: SocketAddr,
        direction: Direction,
        established: bool,
    ) {
        if remote == self.me {
            return;
        }
        let conn = Connection {
            remote,
            addr,
            direction,
            established,
        };
        let own = &self.records[&self.me].entry;
        let was_established = match own.connections.iter().find(|c| c.remote == remote) {
            Some(c) if *c == conn => return,
            Some(c) => c.established,
            None => false,
        };
        self.change_own(now, |e| {
            match e.connections.iter_mut().find(|c| c.remote == remote) {
                Some(c) => *c = conn,
                None => e.connections.push(conn),
            }
        });
        if established && !was_established {
            self.pending.entry(remote).or_default().full = true;
        } else if !established {
            self.pending.remove(&remote);
        }
    }

    /// Removes our connection to `remote` (it closed for good).
    pub fn remove_connection(&mut self, now: Instant, remote: PeerName) {
        if !self.own().connections.iter().any(|c| c.remote == remote) {
            return;
        }
        self.change_own(now, |e| e.connections.retain(|c| c.remote != remote));
        self.pending.remove(&remote);
    }

    /// Sets our capabilities.
    pub fn set_capabilities(&mut self, now: Instant, capabilities: Capabilities) {
        if self.own().capabilities != capabilities {
            self.change_own(now, |e| e.capabilities = capabilities);
        }
    }

    /// Sets our nickname (truncated to 255 bytes at a character boundary).
    pub fn set_nickname(&mut self, now: Instant, nickname: &str) {
        let mut end = nickname.len().min(255);
        while !nickname.is_char_boundary(end) {
            end -= 1;
        }
        let nickname = &nickname[..end];
        if self.own().nickname != nickname {
            self.change_own(now, |e| e.nickname = nickname.to_owned());
        }
    }

    fn change_own(&mut self, now: Instant, f: impl FnOnce(&mut PeerEntry)) {
        let (name, inc, ver) = {
            let e = &self.own();
            (e.name, e.incarnation, e.version)
        };
        let next = ver.saturating_add(1);
        self.digest = self
            .digest
            .wrapping_sub(entry_digest(name, inc, ver))
            .wrapping_add(entry_digest(name, inc, next));
        // Invariant: our own record always exists.
        if let Some(r) = self.records.get_mut(&self.me) {
            f(&mut r.entry);
            r.entry.version = next;
        }
        self.changed(now, self.me, None);
    }

    /// Records that `name`'s entry changed: queue it for every neighbour but `except`, and
    /// schedule a reachability check.
    fn changed(&mut self, now: Instant, name: PeerName, except: Option<PeerName>) {
        self.generation += 1;
        let neighbours: Vec<PeerName> = self.neighbours().filter(|n| Some(*n) != except).collect();
        for n in neighbours {
            self.pending.entry(n).or_default().entries.insert(name);
        }
        if self.recheck_due.is_none() {
            let earliest = self
                .last_recheck
                .map_or(now, |l| l + self.config.recheck_interval);
            self.recheck_due = Some(earliest.max(now));
        }
    }

    /// Merges a gossip message from neighbour `from`. Returns how many entries were new or
    /// newer than ours; those are queued for our other neighbours.
    pub fn handle(
        &mut self,
        now: Instant,
        from: PeerName,
        bytes: &[u8],
    ) -> Result<usize, HandleError> {
        let packet = match GossipPacket::new_checked(bytes) {
            Ok(p) => p,
            Err(source) => {
                self.stats.malformed += 1;
                return Err(HandleError::Malformed { from, source });
            }
        };
        self.stats.messages_received += 1;
        let mut learned = 0;
        for view in packet.entries() {
            let (name, stamp) = (view.name(), view.stamp());
            if name == self.me {
                self.merge_own_copy(now, &view.to_entry());
                continue;
            }
            let old = match self.records.get(&name) {
                Some(r) if r.entry.stamp() >= stamp => {
                    if r.entry.stamp() > stamp {
                        self.pending.entry(from).or_default().entries.insert(name);
                    }
                    continue;
                }
                Some(r) => Some(r.entry.stamp()),
                None => None,
            };
            if let Some((i, v)) = old {
                self.digest = self.digest.wrapping_sub(entry_digest(name, i, v));
            }
            self.digest = self
                .digest
                .wrapping_add(entry_digest(name, stamp.0, stamp.1));
            let unreachable_since = self.records.get(&name).and_then(|r| r.unreachable_since);
            self.records.insert(
                name,
                Record {
                    entry: view.to_entry(),
                    from: Some(from),
                    unreachable_since,
                },
            );
            self.changed(now, name, Some(from));
            learned += 1;
        }
        self.stats.entries_learned += learned as u64;
        Ok(learned)
    }

    fn merge_own_copy(&mut self, now: Instant, copy: &PeerEntry) {
        let own = self.own().stamp();
        if copy.stamp() < own {
            return;
        }
        if copy.stamp() == own && copy == self.own() {
            return;
        }
        self.stats.self_conflicts += 1;
        let (inc, ver) = own;
        let (new_inc, new_ver) = if copy.incarnation > inc {
            (copy.incarnation.saturating_add(1), 1)
        } else {
            (inc, copy.version.saturating_add(1))
        };
        let me = self.me;
        self.digest = self
            .digest
            .wrapping_sub(entry_digest(me, inc, ver))
            .wrapping_add(entry_digest(me, new_inc, new_ver));
        if let Some(r) = self.records.get_mut(&me) {
            r.entry.incarnation = new_inc;
            r.entry.version = new_ver;
        }
        self.changed(now, me, None);
    }

    /// The next message to send, if any. Call until it returns `None` after every `handle`,
    /// `handle_timeout` and connection change.
    pub fn poll_transmit(&mut self, _now: Instant) -> Option<Transmit> {
        loop {
            if let Some(t) = self.outbox.pop_front() {
                self.stats.messages_sent += 1;
                self.stats.bytes_sent += t.payload.len() as u64;
                return Some(t);
            }
            let (to, pending) = self.pending.pop_first()?;
            if !self.neighbours().any(|n| n == to) {
                continue;
            }
            self.encode(to, pending);
        }
    }

    fn encode(&mut self, to: PeerName, pending: Pending) {
        let (kind, mut names): (MessageKind, Vec<PeerName>) = if pending.full {
            (MessageKind::Full, self.records.keys().copied().collect())
        } else {
            (
                MessageKind::Update,
                pending
                    .entries
                    .into_iter()
                    .filter(|n| self.records.contains_key(n))
                    .collect(),
            )
        };
        names.sort_unstable();
        let mut chunk: Vec<&PeerEntry> = Vec::new();
        let mut len = wire::HEADER_LEN;
        let mut chunks = Vec::new();
        for n in &names {
            let e = &self.records[n].entry;
            let l = wire::entry_len(e);
            if !chunk.is_empty()
                && (len + l > self.config.max_message_len || chunk.len() == u16::MAX as usize)
            {
                chunks.push(std::mem::take(&mut chunk));
                len = wire::HEADER_LEN;
            }
            chunk.push(e);
            len += l;
        }
        if !chunk.is_empty() || kind == MessageKind::Full && chunks.is_empty() {
            chunks.push(chunk);
        }
        for chunk in chunks {
            let mut payload = Vec::with_capacity(
                wire::HEADER_LEN + chunk.iter().map(|e| wire::entry_len(e)).sum::<usize>(),
            );
            wire::emit_header(kind, chunk.len() as u16, &mut payload);
            for e in chunk {
                wire::emit_entry(e, &mut payload);
            }
            self.outbox.push_back(Transmit { to, payload });
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) next needs to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [Some(self.next_full), self.recheck_due, self.gc_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs what is due: periodic full state, reachability check, garbage collection.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_full {
            let neighbours: Vec<PeerName> = self.neighbours().collect();
            for n in neighbours {
                self.pending.entry(n).or_default().full = true;
            }
            self.next_full = now + self.config.full_interval;
        }
        if self.recheck_due.is_some_and(|d| now >= d) {
            self.recheck_due = None;
            self.last_recheck = Some(now);
            self.recheck(now);
        }
        if self.gc_due.is_some_and(|d| now >= d) {
            self.collect(now);
        }
    }

    fn recheck(&mut self, now: Instant) {
        let graph = self.graph();
        let reachable = graph.reachable_from(self.me);
        for (name, r) in self.records.iter_mut() {
            if graph.index(*name).is_some_and(|i| reachable[i]) {
                r.unreachable_since = None;
            } else if r.unreachable_since.is_none() {
                r.unreachable_since = Some(now);
            }
        }
        self.schedule_gc();
    }

    fn schedule_gc(&mut self) {
        self.gc_due = self
            .records
            .values()
            .filter_map(|r| r.unreachable_since)
            .min()
            .map(|t| t + self.config.gc_after);
    }

    fn collect(&mut self, now: Instant) {
        let gc_after = self.config.gc_after;
        let me = self.me;
        let dead: Vec<PeerName> = self
            .records
            .iter()
            .filter(|(n, r)| **n != me && r.unreachable_since.is_some_and(|t| now >= t + gc_after))
            .map(|(n, _)| *n)
            .collect();
        for name in &dead {
            if let Some(r) = self.records.remove(name) {
                self.digest = self.digest.wrapping_sub(entry_digest(
                    *name,
                    r.entry.incarnation,
                    r.entry.version,
                ));
            }
            for p in self.pending.values_mut() {
                p.entries.remove(name);
            }
        }
        if !dead.is_empty() {
            self.generation += 1;
            self.stats.collected += dead.len() as u64;
        }
        self.schedule_gc();
    }

    /// The neighbour we learned `name`'s current entry from (None for ours).
    pub fn learned_from(&self, name: PeerName) -> Option<PeerName> {
        self.records.get(&name).and_then(|r| r.from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u8) -> PeerName {
        PeerName([0x0e, 0, 0, 0, 0, n])
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 6783))
    }

    fn topo(now: Instant, n: u8) -> Topology {
        Topology::new(
            now,
            Config::default(),
            name(n),
            format!("host{n}"),
            7,
            Capabilities::default(),
        )
    }

    fn drain(t: &mut Topology, now: Instant) -> Vec<Transmit> {
        std::iter::from_fn(|| t.poll_transmit(now)).collect()
    }

    /// Delivers everything between the given topologies until quiet.
    fn exchange(now: Instant, ts: &mut [Topology]) {
        for _ in 0..20 {
            let mut any = false;
            for i in 0..ts.len() {
                for t in drain(&mut ts[i], now) {
                    any = true;
                    let from = ts[i].me();
                    if let Some(j) = ts.iter().position(|x| x.me() == t.to) {
                        ts[j].handle(now, from, &t.payload).unwrap();
                    }
                }
            }
            if !any {
                return;
            }
        }
        panic!("gossip did not go quiet");
    }

    fn link(now: Instant, ts: &mut [Topology], a: usize, b: usize) {
        let (na, nb) = (ts[a].me(), ts[b].me());
        ts[a].set_connection(now, nb, addr(b as u8), Direction::Outbound, true);
        ts[b].set_connection(now, na, addr(a as u8), Direction::Inbound, true);
    }

    #[test]
    fn own_changes_bump_version_and_are_pushed_to_established_neighbours_only() {
        let now = Instant::now();
        let mut a = topo(now, 1);
        assert_eq!(a.own().version, 1);
        a.set_connection(now, name(2), addr(2), Direction::Outbound, false);
        assert_eq!(a.own().version, 2);
        assert!(
            drain(&mut a, now).is_empty(),
            "nothing goes to a connection being set up"
        );
        a.set_connection(now, name(2), addr(2), Direction::Outbound, true);
        assert_eq!(a.own().version, 3);
        let sent = drain(&mut a, now);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].to, name(2));
        let p = GossipPacket::new_checked(&sent[0].payload[..]).unwrap();
        assert_eq!(p.kind(), MessageKind::Full);
        // Setting the same thing again changes nothing.
        a.set_connection(now, name(2), addr(2), Direction::Outbound, true);
        assert_eq!(a.own().version, 3);
        a.set_capabilities(
            now,
            Capabilities {
                sleeve: true,
                fastpath: true,
                encryption: false,
            },
        );
        assert_eq!(a.own().version, 4);
        let sent = drain(&mut a, now);
        assert_eq!(sent.len(), 1);
        let p = GossipPacket::new_checked(&sent[0].payload[..]).unwrap();
        assert_eq!(p.kind(), MessageKind::Update);
        assert_eq!(GossipRepr::parse(&p).entries, vec![a.own().clone()]);
    }

    #[test]
    fn line_of_three_learns_everything_and_forwards() {
        let now = Instant::now();
        let mut ts = vec![topo(now, 1), topo(now, 2), topo(now, 3)];
        link(now, &mut ts, 0, 1);
        link(now, &mut ts, 1, 2);
        exchange(now, &mut ts);
        for t in &ts {
            assert_eq!(t.len(), 3);
            assert_eq!(t.digest(), ts[0].digest());
        }
        assert_eq!(ts[0].learned_from(name(3)), Some(name(2)));
        assert_eq!(ts[0].entry(name(3)).unwrap().nickname, "host3");
        // A later change at one end reaches the other end through the middle.
        ts[2].set_nickname(now, "renamed");
        exchange(now, &mut ts);
        assert_eq!(ts[0].entry(name(3)).unwrap().nickname, "renamed");
        assert_eq!(ts[0].entry(name(3)).unwrap().version, ts[2].own().version);
    }

    #[test]
    fn older_and_equal_copies_do_not_replace_newer_ones() {
        let now = Instant::now();
        let mut a = topo(now, 1);
        let mk = |inc, ver, nick: &str| {
            let r = GossipRepr {
                kind: MessageKind::Update,
                entries: vec![PeerEntry {
                    name: name(9),
                    nickname: nick.into(),
                    incarnation: inc,
                    version: ver,
                    capabilities: Capabilities::default(),
                    connections: vec![],
                }],
            };
            let mut b = Vec::new();
            r.emit(&mut b);
            b
        };
        assert_eq!(a.handle(now, name(2), &mk(1, 5, "v5")).unwrap(), 1);
        assert_eq!(a.handle(now, name(2), &mk(1, 4, "v4")).unwrap(), 0);
        assert_eq!(a.handle(now, name(2), &mk(1, 5, "other")).unwrap(), 0);
        assert_eq!(a.entry(name(9)).unwrap().nickname, "v5");
        // A restart (higher incarnation) wins even with a lower version.
        assert_eq!(a.handle(now, name(2), &mk(2, 1, "restarted")).unwrap(), 1);
        assert_eq!(a.entry(name(9)).unwrap().nickname, "restarted");
        assert_eq!(a.stats().entries_learned, 2);
    }

    #[test]
    fn stale_copy_of_ourselves_is_outrun() {
        let now = Instant::now();
        let mut a = topo(now, 1);
        let mut old = a.own().clone();
        old.incarnation = 9;
        old.version = 40;
        let mut b = Vec::new();
        GossipRepr {
            kind: MessageKind::Full,
            entries: vec![old],
        }
        .emit(&mut b);
        a.handle(now, name(2), &b).unwrap();
        assert_eq!(a.own().stamp(), (10, 1));
        assert_eq!(a.incarnation(), 10);
        assert_eq!(a.stats().self_conflicts, 1);
    }

    #[test]
    fn malformed_is_counted_and_changes_nothing() {
        let now = Instant::now();
        let mut a = topo(now, 1);
        let generation = a.generation();
        for bytes in [&[][..], &[1], &[9, 1, 0, 0], &[1, 1, 0, 1, 0]] {
            assert!(a.handle(now, name(2), bytes).is_err());
        }
        assert_eq!(a.stats().malformed, 4);
        assert_eq!(a.generation(), generation);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn full_state_is_split_under_the_size_limit_and_repeats_periodically() {
        let now = Instant::now();
        let config = Config {
            max_message_len: 200,
            ..Config::default()
        };
        let mut a = Topology::new(
            now,
            config.clone(),
            name(1),
            "a".into(),
            1,
            Capabilities::default(),
        );
        // Learn 20 peers.
        let entries: Vec<PeerEntry> = (10..30)
            .map(|n| PeerEntry {
                name: name(n),
                nickname: format!("peer-{n}"),
                incarnation: 1,
                version: 1,
                capabilities: Capabilities::default(),
                connections: vec![],
            })
            .collect();
        let mut b = Vec::new();
        GossipRepr {
            kind: MessageKind::Full,
            entries,
        }
        .emit(&mut b);
        a.handle(now, name(2), &b).unwrap();
        a.set_connection(now, name(2), addr(2), Direction::Inbound, true);
        let sent = drain(&mut a, now);
        assert!(sent.len() > 1);
        let mut seen = 0;
        for t in &sent {
            assert!(t.payload.len() <= 200);
            seen += GossipPacket::new_checked(&t.payload[..])
                .unwrap()
                .entry_count() as usize;
        }
        assert_eq!(seen, 21);
        let due = a.poll_timeout().unwrap();
        assert!(due <= now + config.full_interval);
        a.handle_timeout(now + config.full_interval);
        assert_eq!(drain(&mut a, now + config.full_interval).len(), sent.len());
    }

    #[test]
    fn unreachable_peers_are_collected_after_the_grace_period() {
        let now = Instant::now();
        let mut ts = vec![topo(now, 1), topo(now, 2), topo(now, 3)];
        link(now, &mut ts, 0, 1);
        link(now, &mut ts, 1, 2);
        exchange(now, &mut ts);
        assert_eq!(ts[0].len(), 3);
        // 2 drops its connection to 3; 1 hears of it and 3 becomes unreachable for 1.
        let t1 = now + Duration::from_secs(1);
        ts[1].remove_connection(t1, name(3));
        ts[2].remove_connection(t1, name(2));
        exchange(t1, &mut ts);
        ts[0].handle_timeout(t1);
        assert_eq!(ts[0].len(), 3, "kept during the grace period");
        let gc = ts[0].poll_timeout().unwrap();
        assert_eq!(gc, t1 + Config::default().gc_after);
        ts[0].handle_timeout(gc);
        assert_eq!(ts[0].len(), 2);
        assert!(ts[0].entry(name(3)).is_none());
        assert_eq!(ts[0].stats().collected, 1);
    }

    #[test]
    fn one_sided_connections_do_not_make_a_peer_reachable() {
        let now = Instant::now();
        let mut ts = vec![topo(now, 1), topo(now, 2)];
        link(now, &mut ts, 0, 1);
        exchange(now, &mut ts);
        // 2 now says the connection is down, 1 still lists it.
        ts[1].set_connection(now, name(1), addr(0), Direction::Inbound, false);
        // 2's update cannot be gossiped over a non-established connection; deliver it by hand.
        let mut b = Vec::new();
        GossipRepr {
            kind: MessageKind::Update,
            entries: vec![ts[1].own().clone()],
        }
        .emit(&mut b);
        ts[0].handle(now, name(2), &b).unwrap();
        ts[0].handle_timeout(now);
        let g = ts[0].graph();
        assert!(!g.reachable_from(name(1))[g.index(name(2)).unwrap()]);
    }
}
