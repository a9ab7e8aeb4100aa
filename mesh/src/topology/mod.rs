//! Topology gossip: who is in the mesh and who is connected to whom (sans-IO).
//!
//! Every peer owns one [`PeerEntry`] (its connections and capabilities) and is the only one that
//! changes it, bumping `version` each time; `incarnation` changes when the peer restarts. Copies
//! merge by `(incarnation, version)`: the higher pair wins, ties keep what we have.
//!
//! [`Topology`] holds our view of all entries and decides what to gossip. The cost of a quiet
//! mesh does not grow with its size:
//! - *Updates*: an entry that changed (ours, or a newer copy learned from a neighbour) is sent
//!   once to every neighbour but those known to hold it already (the one it came from, and any
//!   that sent us the same version meanwhile); a copy that is not newer is not forwarded, so a
//!   change floods the mesh once. Changes are coalesced for [`Config::flood_delay`] after the
//!   first: at a cold start, when every peer learns every entry within a few round trips, each
//!   neighbour gets one message per delay instead of one per message received, and copies that
//!   arrive from several neighbours within it are not sent back to any of them. A neighbour
//!   that sends an entry older than ours gets ours back.
//! - *Anti-entropy*: every [`Config::digest_interval`] (jittered) we send a *digest* of our table
//!   (its size and the wrapping sum of [`entry_digest`] over its entries, 14 bytes) to
//!   [`Config::digest_fanout`] neighbours in turn, and one to a neighbour as soon as its
//!   connection is established. A neighbour whose digest differs answers with its *bucket sums*
//!   (entries bucketed by a hash of the name, [`wire::bucket_of`], about 8 per bucket); we
//!   answer with a *repair*: all our entries in the buckets that differ. The neighbour merges
//!   them and sends back, as an update, its entries in those buckets that we lack or hold older.
//!   So a quiet mesh exchanges digests only, and a divergence costs a few buckets.
//!
//! Neighbours are the peers our own entry lists as established. Peers not reachable from us over
//! established, symmetric connections (each side lists the other as established) are removed
//! after [`Config::gc_after`]; they are not offered in repairs meanwhile. Reachability is
//! rechecked at most once per [`Config::recheck_interval`].
//!
//! If someone gossips an entry under our own name that is not older than ours (a copy from our
//! previous run), we move past it: a newer incarnation becomes `theirs + 1` at version 1, else our
//! version becomes `theirs + 1`. [`Topology::incarnation`] tells the caller what we now use.
//!
//! Entries are held as `Arc<PeerEntry>`; [`Interner`] lets many cores in one process (the
//! simulator) share the decoded copies of identical entries.
//!
//! Wire format: [`wire`].

pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
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

pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Timing and size knobs.
#[derive(Clone, Debug)]
pub struct Config {
    /// How often (on average; each wait is scaled by a random factor in [0.5, 1.5)) digests go
    /// out.
    pub digest_interval: Duration,
    /// How many neighbours (in turn) get each round of digests.
    pub digest_fanout: usize,
    /// Minimum time between two reachability checks.
    pub recheck_interval: Duration,
    /// How long a peer stays unreachable before its entry is dropped.
    pub gc_after: Duration,
    /// Messages are split so each stays under this many bytes (an entry or bucket larger than
    /// this is still sent, alone).
    pub max_message_len: usize,
    /// How long changed entries wait, after the first change, before they are flooded together
    /// (zero: at the next [`poll_transmit`](Topology::poll_transmit)).
    pub flood_delay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            digest_interval: Duration::from_secs(2),
            digest_fanout: 2,
            recheck_interval: Duration::from_millis(100),
            gc_after: Duration::from_secs(10),
            max_message_len: 60 * 1024,
            flood_delay: Duration::from_millis(10),
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
    /// Digests received that differed from ours.
    pub digest_mismatches: u64,
    /// Repair messages received.
    pub repairs_received: u64,
    /// Times we moved our own stamp past a copy of our entry gossiped by others.
    pub self_conflicts: u64,
    /// Entries garbage-collected as unreachable.
    pub collected: u64,
}

/// Shares decoded entries between the cores of one process: an entry seen again (same name,
/// stamp and bytes) is handed out as the same `Arc`. A router has one core and needs none
/// ([`Topology::handle`] decodes every entry itself); the simulator runs thousands.
#[derive(Debug, Default)]
pub struct Interner {
    map: HashMap<InternKey, (Box<[u8]>, Arc<PeerEntry>)>,
}

/// Name, incarnation and version.
type InternKey = (PeerName, u64, u64);

impl Interner {
    /// An empty interner.
    pub fn new() -> Self {
        Interner::default()
    }

    fn get(&mut self, view: &EntryView<'_>) -> Arc<PeerEntry> {
        let (i, v) = view.stamp();
        let key = (view.name(), i, v);
        if let Some((bytes, e)) = self.map.get(&key) {
            if **bytes == *view.bytes() {
                return e.clone();
            }
        }
        let e = Arc::new(view.to_entry());
        self.map.insert(key, (view.bytes().into(), e.clone()));
        e
    }

    /// Forgets entries no core holds any more.
    pub fn prune(&mut self) {
        self.map.retain(|_, (_, e)| Arc::strong_count(e) > 1);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[derive(Debug)]
struct Record {
    entry: Arc<PeerEntry>,
    /// The neighbour this version came from (None: ours, or learned before any neighbour).
    from: Option<PeerName>,
    /// Listed in `Topology::dirty`.
    dirty: bool,
}

/// What one neighbour is owed beyond the flooded updates.
#[derive(Debug, Default)]
struct Pending {
    /// Our digest.
    digest: bool,
    /// Our bucket sums at this order.
    buckets: Option<u8>,
    /// Our entries of these buckets (order, buckets ascending).
    repair: Option<(u8, Vec<u16>)>,
    /// These entries, as an update.
    entries: BTreeSet<PeerName>,
}

/// Our view of the mesh topology and the gossip state machine.
#[derive(Debug)]
pub struct Topology {
    config: Config,
    me: PeerName,
    records: HashMap<PeerName, Record>,
    /// Entries changed since the last flood, for every neighbour but those holding them.
    dirty: Vec<PeerName>,
    /// When the dirty entries are flooded.
    flood_due: Option<Instant>,
    /// Per dirty entry: the neighbours that sent us its current version (they hold it).
    holders: HashMap<PeerName, Vec<PeerName>>,
    /// Peers unreachable from us, since when.
    unreachable: HashMap<PeerName, Instant>,
    pending: BTreeMap<PeerName, Pending>,
    outbox: VecDeque<Transmit>,
    next_digest: Instant,
    digest_turn: usize,
    rng: u64,
    recheck_due: Option<Instant>,
    last_recheck: Option<Instant>,
    gc_due: Option<Instant>,
    generation: u64,
    digest: u64,
    stats: Stats,
}

/// The bucket order for a table of `peers` entries: about 8 entries per bucket.
fn order_for(peers: usize) -> u8 {
    let buckets = peers.div_ceil(8).max(1).next_power_of_two();
    (buckets.trailing_zeros() as u8).min(wire::MAX_BUCKET_ORDER)
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
            next_digest: now,
            config,
            me,
            records: HashMap::new(),
            dirty: Vec::new(),
            flood_due: None,
            holders: HashMap::new(),
            unreachable: HashMap::new(),
            pending: BTreeMap::new(),
            outbox: VecDeque::new(),
            digest_turn: 0,
            rng: mix(me.to_u64() ^ incarnation) | 1,
            recheck_due: None,
            last_recheck: None,
            gc_due: None,
            generation: 0,
            digest: 0,
            stats: Stats::default(),
        };
        t.next_digest = now + t.digest_wait();
        t.digest = entry_digest(me, incarnation, 1);
        t.records.insert(
            me,
            Record {
                entry: Arc::new(entry),
                from: None,
                dirty: false,
            },
        );
        t
    }

    /// The next wait between digest rounds: the interval scaled by a factor in [0.5, 1.5).
    fn digest_wait(&mut self) -> Duration {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let unit =
            (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        self.config.digest_interval.mul_f64(0.5 + unit)
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
        self.records.get(&name).map(|r| &*r.entry)
    }

    /// All entries, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &PeerEntry> + '_ {
        self.records.values().map(|r| &*r.entry)
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

    /// Bytes of memory this core holds (its tables, the entries, what is queued), by the sizes
    /// of its structures and the capacities of their allocations; entries shared through an
    /// [`Interner`] are counted in full by every core holding them.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let slot = |kv: usize, cap: usize| cap * (kv + 1);
        let entries: usize = self
            .records
            .values()
            .map(|r| {
                // The Arc's counts, the entry, its nickname and its connections.
                16 + size_of::<PeerEntry>()
                    + r.entry.nickname.capacity()
                    + r.entry.connections.capacity() * size_of::<Connection>()
            })
            .sum();
        let pending: usize = self
            .pending
            .values()
            .map(|p| {
                size_of::<(PeerName, Pending)>()
                    + p.entries.len() * size_of::<PeerName>() * 2
                    + p.repair.as_ref().map_or(0, |r| r.1.capacity() * 2)
            })
            .sum();
        let outbox: usize = self.outbox.iter().map(|t| t.payload.capacity()).sum();
        size_of::<Self>()
            + slot(size_of::<(PeerName, Record)>(), self.records.capacity())
            + entries
            + slot(
                size_of::<(PeerName, Instant)>(),
                self.unreachable.capacity(),
            )
            + self.dirty.capacity() * size_of::<PeerName>()
            + slot(size_of::<(PeerName, Vec<PeerName>)>(), self.holders.capacity())
            + self.holders.values().map(|h| h.capacity() * size_of::<PeerName>()).sum::<usize>()
            + pending
            + self.outbox.capacity() * size_of::<Transmit>()
            + outbox
    }

    /// The peers our own entry lists as established: where gossip goes.
    pub fn neighbours(&self) -> impl Iterator<Item = PeerName> + '_ {
        self.own()
            .connections
            .iter()
            .filter(|c| c.established)
            .map(|c| c.remote)
    }

    fn is_neighbour(&self, name: PeerName) -> bool {
        self.own()
            .connections
            .iter()
            .any(|c| c.established && c.remote == name)
    }

    /// The symmetric, established connection graph of all known entries.
    pub fn graph(&self) -> Graph {
        Graph::from_entries(self.entries())
    }

    /// Adds or updates our connection to `remote`. A connection that becomes established gets
    /// our digest at once (and, through the exchange it starts, whatever it lacks).
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
        let was_established = match self.own().connections.iter().find(|c| c.remote == remote) {
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
            self.pending.entry(remote).or_default().digest = true;
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
            let e = Arc::make_mut(&mut r.entry);
            f(e);
            e.version = next;
        }
        self.holders.remove(&self.me);
        self.changed(now, self.me);
    }

    /// Records that `name`'s entry changed: flood it on the next `poll_transmit`, and schedule a
    /// reachability check.
    fn changed(&mut self, now: Instant, name: PeerName) {
        self.generation += 1;
        if let Some(r) = self.records.get_mut(&name) {
            if !r.dirty {
                r.dirty = true;
                self.dirty.push(name);
            }
        }
        if self.flood_due.is_none() {
            self.flood_due = Some(now + self.config.flood_delay);
        }
        if self.recheck_due.is_none() {
            let earliest = self
                .last_recheck
                .map_or(now, |l| l + self.config.recheck_interval);
            self.recheck_due = Some(earliest.max(now));
        }
    }

    /// Takes `entry` as known without gossiping it, as if learned long ago: for the simulator,
    /// which starts large meshes converged instead of simulating their cold start. An entry not
    /// newer than ours, and one under our own name, is ignored.
    pub fn install(&mut self, entry: Arc<PeerEntry>) {
        let name = entry.name;
        if name == self.me {
            return;
        }
        let stamp = entry.stamp();
        if let Some(r) = self.records.get(&name) {
            if r.entry.stamp() >= stamp {
                return;
            }
            let (i, v) = r.entry.stamp();
            self.digest = self.digest.wrapping_sub(entry_digest(name, i, v));
        }
        self.digest = self
            .digest
            .wrapping_add(entry_digest(name, stamp.0, stamp.1));
        let r = self.records.entry(name).or_insert(Record {
            entry: entry.clone(),
            from: None,
            dirty: false,
        });
        r.entry = entry;
        self.generation += 1;
    }

    /// Merges a gossip message from neighbour `from`. Returns how many entries were new or
    /// newer than ours; those are flooded to our other neighbours.
    pub fn handle(
        &mut self,
        now: Instant,
        from: PeerName,
        bytes: &[u8],
    ) -> Result<usize, HandleError> {
        self.handle_interned(now, from, bytes, None)
    }

    /// [`handle`](Self::handle), taking decoded entries from `interner` when given.
    pub fn handle_interned(
        &mut self,
        now: Instant,
        from: PeerName,
        bytes: &[u8],
        mut interner: Option<&mut Interner>,
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
                    } else if r.dirty {
                        // Not flooded yet: the sender needs no copy back.
                        let h = self.holders.entry(name).or_default();
                        if !h.contains(&from) {
                            h.push(from);
                        }
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
            let entry = match interner.as_deref_mut() {
                Some(i) => i.get(&view),
                None => Arc::new(view.to_entry()),
            };
            let r = self.records.entry(name).or_insert(Record {
                entry: entry.clone(),
                from: None,
                dirty: false,
            });
            r.entry = entry;
            r.from = Some(from);
            let h = self.holders.entry(name).or_default();
            h.clear();
            h.push(from);
            self.changed(now, name);
            learned += 1;
        }
        self.stats.entries_learned += learned as u64;
        match packet.kind() {
            MessageKind::Update => {}
            MessageKind::Digest => {
                let (peers, digest) = packet.summary().unwrap_or((0, 0));
                if peers as usize != self.len() || digest != self.digest {
                    self.stats.digest_mismatches += 1;
                    let order = order_for(self.len().max(peers as usize));
                    self.pending.entry(from).or_default().buckets = Some(order);
                }
            }
            MessageKind::Buckets => {
                let order = packet.order().unwrap_or(0);
                let ours = self.bucket_sums(order);
                let differ: Vec<u16> = packet
                    .bucket_sums()
                    .zip(ours)
                    .enumerate()
                    .filter(|(_, (theirs, ours))| theirs != ours)
                    .map(|(i, _)| i as u16)
                    .collect();
                if !differ.is_empty() {
                    self.pending.entry(from).or_default().repair = Some((order, differ));
                }
            }
            MessageKind::Repair => {
                // They sent all they hold in these buckets: what we have there that they did
                // not send goes back (what they hold older was queued above).
                self.stats.repairs_received += 1;
                let order = packet.order().unwrap_or(0);
                let buckets: Vec<u16> = packet.repair_buckets().collect();
                let sent: BTreeSet<PeerName> = packet.entries().map(|v| v.name()).collect();
                let missing: Vec<PeerName> = self
                    .records
                    .keys()
                    .filter(|n| {
                        !sent.contains(n)
                            && !self.unreachable.contains_key(n)
                            && buckets.binary_search(&wire::bucket_of(**n, order)).is_ok()
                    })
                    .copied()
                    .collect();
                if !missing.is_empty() {
                    self.pending
                        .entry(from)
                        .or_default()
                        .entries
                        .extend(missing);
                }
            }
        }
        Ok(learned)
    }

    /// The sum of [`entry_digest`] per bucket, `2^order` buckets.
    fn bucket_sums(&self, order: u8) -> Vec<u64> {
        let mut sums = vec![0u64; 1 << order.min(wire::MAX_BUCKET_ORDER)];
        for (n, r) in &self.records {
            let s = &mut sums[wire::bucket_of(*n, order) as usize];
            *s = s.wrapping_add(entry_digest(*n, r.entry.incarnation, r.entry.version));
        }
        sums
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
        self.holders.remove(&self.me);
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
            let e = Arc::make_mut(&mut r.entry);
            e.incarnation = new_inc;
            e.version = new_ver;
        }
        self.changed(now, me);
    }

    /// The next message to send, if any. Call until it returns `None` after every `handle`,
    /// `handle_timeout` and connection change.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        loop {
            if let Some(t) = self.outbox.pop_front() {
                self.stats.messages_sent += 1;
                self.stats.bytes_sent += t.payload.len() as u64;
                return Some(t);
            }
            if !self.dirty.is_empty() && self.flood_due.is_none_or(|d| now >= d) {
                self.flood();
                continue;
            }
            let (to, pending) = self.pending.pop_first()?;
            if !self.is_neighbour(to) {
                continue;
            }
            self.encode(to, pending);
        }
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has something to send (or to look at).
    pub fn has_transmit(&self) -> bool {
        !self.outbox.is_empty() || !self.dirty.is_empty() || !self.pending.is_empty()
    }

    /// Queues the changed entries as updates to every neighbour but the one each came from.
    fn flood(&mut self) {
        let mut names = std::mem::take(&mut self.dirty);
        names.sort_unstable();
        self.flood_due = None;
        let mut holders = std::mem::take(&mut self.holders);
        // Encode each entry once; each neighbour's messages copy the encodings.
        let mut encoded = Vec::new();
        let mut spans: Vec<(Vec<PeerName>, usize, usize)> = Vec::with_capacity(names.len());
        for n in &names {
            if let Some(r) = self.records.get_mut(n) {
                r.dirty = false;
                let start = encoded.len();
                wire::emit_entry(&r.entry, &mut encoded);
                spans.push((holders.remove(n).unwrap_or_default(), start, encoded.len()));
            }
        }
        holders.clear();
        self.holders = holders;
        let neighbours: Vec<PeerName> = self.neighbours().collect();
        let max = self.config.max_message_len;
        for to in neighbours {
            let mut msg = Vec::new();
            let mut count = 0u16;
            for (held, a, b) in &spans {
                let (a, b) = (*a, *b);
                if held.contains(&to) {
                    continue;
                }
                if count > 0 && (msg.len() + (b - a) > max || count == u16::MAX) {
                    self.push_update(to, &mut msg, count);
                    count = 0;
                }
                if msg.is_empty() {
                    wire::emit_header(MessageKind::Update, 0, &mut msg);
                }
                msg.extend_from_slice(&encoded[a..b]);
                count += 1;
            }
            if count > 0 {
                self.push_update(to, &mut msg, count);
            }
        }
    }

    /// Queues an update message built with a placeholder count.
    fn push_update(&mut self, to: PeerName, msg: &mut Vec<u8>, count: u16) {
        msg[2..4].copy_from_slice(&count.to_be_bytes());
        self.outbox.push_back(Transmit {
            to,
            payload: std::mem::take(msg),
        });
    }

    fn encode(&mut self, to: PeerName, pending: Pending) {
        if pending.digest {
            let mut payload = Vec::with_capacity(wire::DIGEST_LEN);
            wire::emit_digest(self.len() as u32, self.digest, &mut payload);
            self.outbox.push_back(Transmit { to, payload });
        }
        if let Some(order) = pending.buckets {
            let sums = self.bucket_sums(order);
            let mut payload = Vec::with_capacity(7 + 8 * sums.len());
            wire::emit_buckets(self.len() as u32, order, &sums, &mut payload);
            self.outbox.push_back(Transmit { to, payload });
        }
        if let Some((order, buckets)) = pending.repair {
            self.encode_repair(to, order, &buckets);
        }
        if !pending.entries.is_empty() {
            let max = self.config.max_message_len;
            let mut msg = Vec::new();
            let mut count = 0u16;
            for n in &pending.entries {
                let Some(r) = self.records.get(n) else {
                    continue;
                };
                let l = wire::entry_len(&r.entry);
                if count > 0 && (msg.len() + l > max || count == u16::MAX) {
                    self.push_update(to, &mut msg, count);
                    count = 0;
                }
                if msg.is_empty() {
                    wire::emit_header(MessageKind::Update, 0, &mut msg);
                }
                // Invariant: the record exists (checked above).
                if let Some(r) = self.records.get(n) {
                    wire::emit_entry(&r.entry, &mut msg);
                }
                count += 1;
            }
            if count > 0 {
                self.push_update(to, &mut msg, count);
            }
        }
    }

    /// Queues repair messages with all our reachable entries in `buckets`: whole buckets per
    /// message, as many as fit.
    fn encode_repair(&mut self, to: PeerName, order: u8, buckets: &[u16]) {
        let mut per_bucket: Vec<Vec<&PeerEntry>> = vec![Vec::new(); buckets.len()];
        for (n, r) in &self.records {
            if self.unreachable.contains_key(n) {
                continue;
            }
            if let Ok(i) = buckets.binary_search(&wire::bucket_of(*n, order)) {
                per_bucket[i].push(&r.entry);
            }
        }
        let max = self.config.max_message_len;
        let mut out = Vec::new();
        let mut group: Vec<usize> = Vec::new();
        let mut len = wire::REPAIR_FIXED_LEN;
        let mut count = 0usize;
        let flush = |group: &mut Vec<usize>, out: &mut Vec<Transmit>| {
            let list: Vec<u16> = group.iter().map(|&i| buckets[i]).collect();
            let entries: Vec<&PeerEntry> = group
                .iter()
                .flat_map(|&i| per_bucket[i].iter().copied())
                .collect();
            let mut payload = Vec::new();
            wire::emit_repair_head(order, &list, entries.len() as u16, &mut payload);
            for e in entries {
                wire::emit_entry(e, &mut payload);
            }
            out.push(Transmit { to, payload });
            group.clear();
        };
        for (i, entries) in per_bucket.iter().enumerate() {
            let l: usize = 2 + entries.iter().map(|e| wire::entry_len(e)).sum::<usize>();
            let n = entries.len();
            if !group.is_empty() && (len + l > max || count + n > u16::MAX as usize) {
                flush(&mut group, &mut out);
                len = wire::REPAIR_FIXED_LEN;
                count = 0;
            }
            group.push(i);
            len += l;
            count += n;
        }
        if !group.is_empty() {
            flush(&mut group, &mut out);
        }
        self.outbox.extend(out);
    }

    /// When [`handle_timeout`](Self::handle_timeout) next needs to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let flood = self.flood_due.filter(|_| !self.dirty.is_empty());
        [Some(self.next_digest), self.recheck_due, self.gc_due, flood]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs what is due: a round of digests, reachability check, garbage collection.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_digest {
            let neighbours: Vec<PeerName> = self.neighbours().collect();
            let k = self.config.digest_fanout.min(neighbours.len());
            for i in 0..k {
                let n = neighbours[(self.digest_turn + i) % neighbours.len()];
                self.pending.entry(n).or_default().digest = true;
            }
            self.digest_turn = self.digest_turn.wrapping_add(k);
            self.next_digest = now + self.digest_wait();
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
        for name in self.records.keys() {
            if graph.index(*name).is_some_and(|i| reachable[i]) {
                self.unreachable.remove(name);
            } else {
                self.unreachable.entry(*name).or_insert(now);
            }
        }
        self.schedule_gc();
    }

    fn schedule_gc(&mut self) {
        self.gc_due = self
            .unreachable
            .values()
            .min()
            .map(|t| *t + self.config.gc_after);
    }

    fn collect(&mut self, now: Instant) {
        let gc_after = self.config.gc_after;
        let me = self.me;
        let dead: Vec<PeerName> = self
            .unreachable
            .iter()
            .filter(|(n, t)| **n != me && now >= **t + gc_after)
            .map(|(n, _)| *n)
            .collect();
        for name in &dead {
            self.unreachable.remove(name);
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
            Config {
                flood_delay: Duration::ZERO,
                ..Config::default()
            },
            name(n),
            format!("host{n}"),
            7,
            Capabilities::default(),
        )
    }

    fn drain(t: &mut Topology, now: Instant) -> Vec<Transmit> {
        std::iter::from_fn(|| t.poll_transmit(now)).collect()
    }

    /// Delivers everything between the given topologies until quiet; returns what was sent.
    fn exchange(now: Instant, ts: &mut [Topology]) -> Vec<(PeerName, Transmit)> {
        let mut all = Vec::new();
        for _ in 0..20 {
            let mut any = false;
            for i in 0..ts.len() {
                for t in drain(&mut ts[i], now) {
                    any = true;
                    let from = ts[i].me();
                    if let Some(j) = ts.iter().position(|x| x.me() == t.to) {
                        ts[j].handle(now, from, &t.payload).unwrap();
                    }
                    all.push((from, t));
                }
            }
            if !any {
                return all;
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
        let kinds: Vec<MessageKind> = sent
            .iter()
            .map(|t| {
                assert_eq!(t.to, name(2));
                GossipPacket::new_checked(&t.payload[..]).unwrap().kind()
            })
            .collect();
        assert_eq!(
            kinds,
            [MessageKind::Update, MessageKind::Digest],
            "our changed entry, and a digest to the new neighbour"
        );
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
        assert_eq!(
            GossipRepr::parse(&p),
            GossipRepr::Update(vec![a.own().clone()])
        );
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
            let r = GossipRepr::Update(vec![PeerEntry {
                name: name(9),
                nickname: nick.into(),
                incarnation: inc,
                version: ver,
                capabilities: Capabilities::default(),
                connections: vec![],
            }]);
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
        GossipRepr::Update(vec![old]).emit(&mut b);
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
        for bytes in [&[][..], &[2], &[9, 1, 0, 0], &[2, 1, 0, 1, 0]] {
            assert!(a.handle(now, name(2), bytes).is_err());
        }
        assert_eq!(a.stats().malformed, 4);
        assert_eq!(a.generation(), generation);
        assert_eq!(a.len(), 1);
    }

    fn kind(t: &Transmit) -> MessageKind {
        GossipPacket::new_checked(&t.payload[..]).unwrap().kind()
    }

    #[test]
    fn a_new_neighbour_is_repaired_in_buckets_under_the_size_limit() {
        let now = Instant::now();
        let config = Config {
            max_message_len: 200,
            flood_delay: Duration::ZERO,
            ..Config::default()
        };
        let mut ts: Vec<Topology> = [1, 2]
            .map(|n| {
                Topology::new(
                    now,
                    config.clone(),
                    name(n),
                    format!("host{n}"),
                    1,
                    Capabilities::default(),
                )
            })
            .into();
        // 1 learns 20 peers (from someone that is not a neighbour).
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
        GossipRepr::Update(entries).emit(&mut b);
        ts[0].handle(now, name(9), &b).unwrap();
        assert!(drain(&mut ts[0], now).is_empty(), "no neighbour yet");
        link(now, &mut ts, 0, 1);
        let sent = exchange(now, &mut ts);
        assert_eq!(ts[1].len(), 22);
        assert_eq!(ts[1].digest(), ts[0].digest());
        let repairs: Vec<&Transmit> = sent
            .iter()
            .filter(|(from, t)| *from == name(1) && kind(t) == MessageKind::Repair)
            .map(|(_, t)| t)
            .collect();
        assert!(repairs.len() > 1, "split: {}", repairs.len());
        for t in &repairs {
            let p = GossipPacket::new_checked(&t.payload[..]).unwrap();
            assert!(
                t.payload.len() <= 200 || p.repair_buckets().len() == 1,
                "a repair over the limit carries one bucket"
            );
        }
        assert_eq!(ts[0].stats().digest_mismatches, 1);
        assert_eq!(ts[1].stats().repairs_received, repairs.len() as u64);
    }

    #[test]
    fn a_quiet_mesh_exchanges_digests_only_and_a_divergence_costs_a_bucket() {
        const N: usize = 24;
        let now = Instant::now();
        let mut ts: Vec<Topology> = (1..=N as u8).map(|n| topo(now, n)).collect();
        for i in 0..N {
            link(now, &mut ts, i, (i + 1) % N);
        }
        exchange(now, &mut ts);
        assert!(
            ts.iter()
                .all(|t| t.len() == N && t.digest() == ts[0].digest())
        );
        let next_timer = |ts: &[Topology]| ts.iter().filter_map(|t| t.poll_timeout()).min();

        // Quiet: each peer sends a round of digests every 1 to 3 s, and nothing else goes.
        let mut at = now;
        let mut digests = 0;
        while at < now + Duration::from_secs(20) {
            at = next_timer(&ts).unwrap();
            for t in ts.iter_mut() {
                t.handle_timeout(at);
            }
            for (_, t) in exchange(at, &mut ts) {
                assert_eq!(kind(&t), MessageKind::Digest);
                assert_eq!(t.payload.len(), wire::DIGEST_LEN);
                digests += 1;
            }
        }
        assert!(
            (N * 2 * 6..=N * 2 * 20).contains(&digests),
            "{digests} digests in 20 s"
        );

        // Peer 6 renames itself and its update is lost: the next mismatching digests repair
        // one bucket each.
        ts[5].set_nickname(at, "renamed");
        assert!(!drain(&mut ts[5], at).is_empty());
        let mut repaired = Vec::new();
        while ts
            .iter()
            .any(|t| t.entry(name(6)).unwrap().nickname != "renamed")
        {
            assert!(at < now + Duration::from_secs(60), "not repaired");
            at = next_timer(&ts).unwrap();
            for t in ts.iter_mut() {
                t.handle_timeout(at);
            }
            repaired.extend(exchange(at, &mut ts));
        }
        let repairs: Vec<_> = repaired
            .iter()
            .filter(|(_, t)| kind(t) == MessageKind::Repair)
            .collect();
        assert!(!repairs.is_empty());
        for (_, t) in repairs {
            let p = GossipPacket::new_checked(&t.payload[..]).unwrap();
            assert_eq!(p.order(), Some(2), "4 buckets for 24 peers");
            assert_eq!(p.repair_buckets().len(), 1, "one bucket differs");
            assert!(p.entry_count() < 12, "{} entries", p.entry_count());
        }
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
        let gc = t1 + Config::default().gc_after;
        ts[0].handle_timeout(gc - Duration::from_millis(1));
        assert_eq!(ts[0].len(), 3, "kept until the end of the grace period");
        assert!(ts[0].poll_timeout().unwrap() <= gc);
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
        GossipRepr::Update(vec![ts[1].own().clone()]).emit(&mut b);
        ts[0].handle(now, name(2), &b).unwrap();
        ts[0].handle_timeout(now);
        let g = ts[0].graph();
        assert!(!g.reachable_from(name(1))[g.index(name(2)).unwrap()]);
    }
}
