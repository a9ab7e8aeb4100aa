//! Routes over the topology: unicast next hops and per-source broadcast trees.
//!
//! Only established, symmetric connections count (A lists B established and B lists A
//! established). Unicast: the next hop towards a destination is the first hop of a shortest
//! path found by breadth-first search from us; every hop gets one step closer, so there are no
//! loops even while peers disagree on ties.
//!
//! Broadcast: the tree of source S is defined independently of who computes it, so every peer
//! with the same topology computes the same tree and each peer receives each broadcast exactly
//! once: the parent of a peer V ≠ S is, among V's neighbours one step closer to S, the one with
//! the lowest name. A peer forwards S's broadcasts to its children in S's tree, and accepts them
//! only from its parent there ([`Routes::broadcast_parent`]): while peers' views of the
//! topology differ (a peer restarted, a link was cut), two of them may each take us for their
//! child, and without that check we would deliver the frame twice. Computing our
//! children needs distances from S to us, our neighbours and theirs only; by symmetry those are
//! distances *from* the peers within two hops of us, so we run one BFS per such peer instead of
//! one per source.
//!
//! [`RouteEngine`] recomputes at most once per interval and publishes each [`Routes`] snapshot
//! through an [`ArcSwap`], so the forwarding hot path reads routes without locks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::peer::PeerName;
use crate::topology::{PeerEntry, Topology};

const UNREACHABLE: u32 = u32::MAX;

/// The symmetric, established connection graph, nodes indexed in name order.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    names: Vec<PeerName>,
    offsets: Vec<u32>,
    targets: Vec<u32>,
}

impl Graph {
    /// Builds the graph of the given entries (one per name; the first wins on duplicates).
    /// Connections to peers without an entry and one-sided connections are left out.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a PeerEntry>) -> Graph {
        let mut by_name: Vec<&PeerEntry> = entries.into_iter().collect();
        by_name.sort_by_key(|e| e.name);
        by_name.dedup_by_key(|e| e.name);
        let names: Vec<PeerName> = by_name.iter().map(|e| e.name).collect();
        // Names as integers (the same order) make the lookups cheap comparisons.
        let keys: Vec<u64> = names.iter().map(|n| n.to_u64()).collect();
        let index = |n: PeerName| keys.binary_search(&n.to_u64()).ok().map(|i| i as u32);
        // Each node's established remotes, sorted: a flat array with offsets.
        let mut offsets = Vec::with_capacity(names.len() + 1);
        let mut remotes: Vec<u32> = Vec::new();
        offsets.push(0usize);
        for (i, e) in by_name.iter().enumerate() {
            let start = remotes.len();
            for c in e.connections.iter().filter(|c| c.established) {
                if let Some(j) = index(c.remote).filter(|&j| j != i as u32) {
                    remotes.push(j);
                }
            }
            remotes[start..].sort_unstable();
            let mut end = start;
            for k in start..remotes.len() {
                if k == start || remotes[k] != remotes[end - 1] {
                    remotes[end] = remotes[k];
                    end += 1;
                }
            }
            remotes.truncate(end);
            offsets.push(remotes.len());
        }
        let of = |i: usize| &remotes[offsets[i]..offsets[i + 1]];
        let mut symmetric: Vec<(u32, u32)> = Vec::with_capacity(remotes.len());
        for a in 0..names.len() {
            for &b in of(a) {
                if of(b as usize).binary_search(&(a as u32)).is_ok() {
                    symmetric.push((a as u32, b));
                }
            }
        }
        Graph::from_sorted_edges(names, &symmetric)
    }

    /// Builds a graph over `names` (sorted, unique) from undirected `links` between them; for
    /// tests and benchmarks. Links naming unknown peers are ignored.
    pub fn from_links(mut names: Vec<PeerName>, links: &[(PeerName, PeerName)]) -> Graph {
        names.sort_unstable();
        names.dedup();
        let index = |n: PeerName| names.binary_search(&n).ok().map(|i| i as u32);
        let mut edges = Vec::with_capacity(links.len() * 2);
        for &(a, b) in links {
            if let (Some(i), Some(j)) = (index(a), index(b)) {
                if i != j {
                    edges.push((i, j));
                    edges.push((j, i));
                }
            }
        }
        edges.sort_unstable();
        edges.dedup();
        Graph::from_sorted_edges(names, &edges)
    }

    fn from_sorted_edges(names: Vec<PeerName>, edges: &[(u32, u32)]) -> Graph {
        let mut offsets = vec![0u32; names.len() + 1];
        for &(a, _) in edges {
            offsets[a as usize + 1] += 1;
        }
        for i in 0..names.len() {
            offsets[i + 1] += offsets[i];
        }
        // Edges are sorted by (from, to): targets land grouped by node, each group in name order.
        let targets = edges.iter().map(|&(_, b)| b).collect();
        Graph {
            names,
            offsets,
            targets,
        }
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True without peers.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Peer names in index order (sorted).
    pub fn names(&self) -> &[PeerName] {
        &self.names
    }

    /// The index of `name`.
    pub fn index(&self, name: PeerName) -> Option<usize> {
        self.names.binary_search(&name).ok()
    }

    /// Indices of the neighbours of node `i`, ascending. `i` must be below [`len`](Self::len).
    pub fn neighbours(&self, i: usize) -> &[u32] {
        &self.targets[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Bytes of memory the graph's arrays hold.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.names.capacity() * std::mem::size_of::<PeerName>()
            + (self.offsets.capacity() + self.targets.capacity()) * 4
    }

    /// Hop counts from node `from` (`u32::MAX`: unreachable).
    pub fn distances(&self, from: usize) -> Vec<u32> {
        let mut dist = vec![UNREACHABLE; self.len()];
        let mut queue = VecDeque::with_capacity(self.len());
        dist[from] = 0;
        queue.push_back(from as u32);
        while let Some(u) = queue.pop_front() {
            let d = dist[u as usize] + 1;
            for &v in self.neighbours(u as usize) {
                if dist[v as usize] == UNREACHABLE {
                    dist[v as usize] = d;
                    queue.push_back(v);
                }
            }
        }
        dist
    }

    /// Per node index: reachable from `from` (all false when `from` is not in the graph).
    pub fn reachable_from(&self, from: PeerName) -> Vec<bool> {
        match self.index(from) {
            Some(i) => self
                .distances(i)
                .into_iter()
                .map(|d| d != UNREACHABLE)
                .collect(),
            None => vec![false; self.len()],
        }
    }
}

/// A snapshot of our routes; lookups allocate nothing and take no locks.
#[derive(Clone, Debug)]
pub struct Routes {
    me: PeerName,
    /// Reachable destinations, sorted, with `next` in parallel.
    dests: Vec<PeerName>,
    next: Vec<PeerName>,
    /// Broadcast sources, sorted, with `ranges` into `hops` and `parents` in parallel.
    sources: Vec<PeerName>,
    ranges: Vec<(u32, u32)>,
    hops: Vec<PeerName>,
    /// Our parent in each source's tree (ourselves for our own broadcasts).
    parents: Vec<PeerName>,
}

impl Routes {
    /// No routes.
    pub fn empty(me: PeerName) -> Routes {
        Routes {
            me,
            dests: Vec::new(),
            next: Vec::new(),
            sources: Vec::new(),
            ranges: Vec::new(),
            hops: Vec::new(),
            parents: Vec::new(),
        }
    }

    /// Computes our routes over `graph`.
    pub fn compute(me: PeerName, graph: &Graph) -> Routes {
        let mut routes = Routes::empty(me);
        let Some(m) = graph.index(me) else {
            return routes;
        };
        let n = graph.len();

        // Unicast: BFS from us, remembering each node's first hop.
        let mut dist = vec![UNREACHABLE; n];
        let mut first = vec![UNREACHABLE; n];
        let mut queue = VecDeque::with_capacity(n);
        dist[m] = 0;
        queue.push_back(m as u32);
        while let Some(u) = queue.pop_front() {
            let u = u as usize;
            for &v in graph.neighbours(u) {
                let v = v as usize;
                if dist[v] == UNREACHABLE {
                    dist[v] = dist[u] + 1;
                    first[v] = if u == m { v as u32 } else { first[u] };
                    queue.push_back(v as u32);
                }
            }
        }
        for v in 0..n {
            if v != m && dist[v] != UNREACHABLE {
                routes.dests.push(graph.names[v]);
                routes.next.push(graph.names[first[v] as usize]);
            }
        }

        // Broadcast: distance rows for every node within two hops of us.
        let mut row_of = vec![usize::MAX; n];
        let mut rows: Vec<Vec<u32>> = Vec::new();
        let mut want = |x: usize, rows: &mut Vec<Vec<u32>>| {
            if row_of[x] == usize::MAX {
                row_of[x] = rows.len();
                rows.push(graph.distances(x));
            }
        };
        want(m, &mut rows);
        for &v in graph.neighbours(m) {
            want(v as usize, &mut rows);
            for &u in graph.neighbours(v as usize) {
                want(u as usize, &mut rows);
            }
        }
        let d = |x: usize, s: usize| rows[row_of[x]][s];
        for (s, &d_me) in dist.iter().enumerate() {
            if d_me == UNREACHABLE {
                continue;
            }
            let start = routes.hops.len() as u32;
            for &v in graph.neighbours(m) {
                let v = v as usize;
                if d(v, s) != d_me + 1 {
                    continue;
                }
                // V's parent: its lowest-named neighbour one step closer to S (neighbours are in
                // name order, so the first one found).
                let parent = graph
                    .neighbours(v)
                    .iter()
                    .map(|&u| u as usize)
                    .find(|&u| d(u, s) == d_me);
                if parent == Some(m) {
                    routes.hops.push(graph.names[v]);
                }
            }
            // Our own parent, by the same rule.
            let parent = match d_me {
                0 => m,
                _ => graph.neighbours(m).iter().map(|&u| u as usize).find(|&u| d(u, s) + 1 == d_me).unwrap_or(m),
            };
            routes.sources.push(graph.names[s]);
            routes.ranges.push((start, routes.hops.len() as u32));
            routes.parents.push(graph.names[parent]);
        }
        routes
    }

    /// Bytes of memory the snapshot's arrays hold.
    pub fn heap_bytes(&self) -> usize {
        let name = std::mem::size_of::<PeerName>();
        std::mem::size_of::<Self>()
            + (self.dests.capacity()
                + self.next.capacity()
                + self.sources.capacity()
                + self.hops.capacity())
                * name
            + self.ranges.capacity() * 8
    }

    /// Whose routes these are.
    pub fn me(&self) -> PeerName {
        self.me
    }

    /// The neighbour to send to on the way to `dest` (`dest` itself when directly connected);
    /// `None` for ourselves and unreachable peers.
    pub fn next_hop(&self, dest: PeerName) -> Option<PeerName> {
        self.dests.binary_search(&dest).ok().map(|i| self.next[i])
    }

    /// The neighbours we forward `source`'s broadcasts to (our children in its tree; for
    /// `source` = us, where our own broadcasts go). Empty for unknown sources.
    pub fn broadcast_next_hops(&self, source: PeerName) -> &[PeerName] {
        match self.sources.binary_search(&source) {
            Ok(i) => {
                let (a, b) = self.ranges[i];
                &self.hops[a as usize..b as usize]
            }
            Err(_) => &[],
        }
    }

    /// The neighbour `source`'s broadcasts reach us from (our parent in its tree; us for our
    /// own); `None` for unknown sources.
    pub fn broadcast_parent(&self, source: PeerName) -> Option<PeerName> {
        self.sources.binary_search(&source).ok().map(|i| self.parents[i])
    }

    /// Reachable peers (not us), sorted.
    pub fn reachable(&self) -> &[PeerName] {
        &self.dests
    }
}

/// A cheap, cloneable reader of the current routes.
#[derive(Clone, Debug)]
pub struct RoutesHandle(Arc<ArcSwap<Routes>>);

impl RoutesHandle {
    /// The current snapshot (lock-free; hold it briefly).
    pub fn load(&self) -> arc_swap::Guard<Arc<Routes>> {
        self.0.load()
    }

    /// The current snapshot, owned.
    pub fn load_full(&self) -> Arc<Routes> {
        self.0.load_full()
    }
}

/// Keeps [`Routes`] in step with a [`Topology`], recomputing at most once per interval.
///
/// Call [`handle_timeout`](Self::handle_timeout) after every topology change and when
/// [`poll_timeout`](Self::poll_timeout) is due.
#[derive(Debug)]
pub struct RouteEngine {
    me: PeerName,
    interval: Duration,
    shared: Arc<ArcSwap<Routes>>,
    computed: Option<u64>,
    last: Option<Instant>,
    due: Option<Instant>,
    recomputations: u64,
}

impl RouteEngine {
    /// An engine with empty routes that recomputes at most once per `interval`.
    pub fn new(me: PeerName, interval: Duration) -> Self {
        RouteEngine {
            me,
            interval,
            shared: Arc::new(ArcSwap::from_pointee(Routes::empty(me))),
            computed: None,
            last: None,
            due: None,
            recomputations: 0,
        }
    }

    /// A reader for the hot path.
    pub fn routes(&self) -> RoutesHandle {
        RoutesHandle(self.shared.clone())
    }

    /// How many times routes were computed.
    pub fn recomputations(&self) -> u64 {
        self.recomputations
    }

    /// When a coalesced recomputation is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }

    /// Recomputes if the topology changed since the last computation and the interval allows;
    /// otherwise schedules it.
    pub fn handle_timeout(&mut self, now: Instant, topology: &Topology) {
        if self.computed == Some(topology.generation()) {
            self.due = None;
            return;
        }
        match self.last.map(|l| l + self.interval) {
            Some(earliest) if now < earliest => self.due = Some(earliest),
            _ => self.recompute(now, topology),
        }
    }

    /// Recomputes now, whatever the interval says.
    pub fn recompute(&mut self, now: Instant, topology: &Topology) {
        let routes = Routes::compute(self.me, &topology.graph());
        self.shared.store(Arc::new(routes));
        self.computed = Some(topology.generation());
        self.last = Some(now);
        self.due = None;
        self.recomputations += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Capabilities, Connection, Direction};

    fn name(n: u8) -> PeerName {
        PeerName([0x0e, 0, 0, 0, 0, n])
    }

    fn entry(n: u8, conns: &[(u8, bool)]) -> PeerEntry {
        PeerEntry {
            name: name(n),
            nickname: String::new(),
            incarnation: 1,
            version: 1,
            capabilities: Capabilities::default(),
            connections: conns
                .iter()
                .map(|&(r, established)| Connection {
                    remote: name(r),
                    addr: ([10, 0, 0, r], 6783).into(),
                    direction: Direction::Outbound,
                    established,
                })
                .collect(),
        }
    }

    #[test]
    fn only_symmetric_established_connections_count() {
        let es = [
            entry(1, &[(2, true), (3, true), (4, false), (9, true)]),
            entry(2, &[(1, true)]),
            entry(3, &[]),
            entry(4, &[(1, true)]),
        ];
        let g = Graph::from_entries(&es);
        assert_eq!(g.len(), 4);
        assert_eq!(g.neighbours(0), &[1]);
        assert_eq!(g.neighbours(1), &[0]);
        assert!(g.neighbours(2).is_empty() && g.neighbours(3).is_empty());
        let r = Routes::compute(name(1), &g);
        assert_eq!(r.next_hop(name(2)), Some(name(2)));
        assert_eq!(r.next_hop(name(3)), None);
        assert_eq!(r.next_hop(name(4)), None);
        assert_eq!(r.next_hop(name(1)), None);
    }

    /// Square 1-2-3-4-1 with a tail 3-5.
    fn square() -> Graph {
        let names = (1..=5).map(name).collect();
        let links = [(1, 2), (2, 3), (3, 4), (4, 1), (3, 5)].map(|(a, b)| (name(a), name(b)));
        Graph::from_links(names, &links)
    }

    #[test]
    fn unicast_next_hops_follow_shortest_paths() {
        let g = square();
        let r1 = Routes::compute(name(1), &g);
        assert_eq!(r1.next_hop(name(2)), Some(name(2)));
        assert_eq!(r1.next_hop(name(4)), Some(name(4)));
        assert_eq!(
            r1.next_hop(name(3)),
            Some(name(2)),
            "tie broken towards the lower name"
        );
        assert_eq!(r1.next_hop(name(5)), Some(name(2)));
        let r5 = Routes::compute(name(5), &g);
        for d in [1, 2, 3, 4] {
            assert_eq!(r5.next_hop(name(d)), Some(name(3)));
        }
        assert_eq!(r1.reachable(), &[name(2), name(3), name(4), name(5)]);
    }

    #[test]
    fn broadcast_trees_agree_and_cover_everyone_once() {
        let g = square();
        let all: Vec<Routes> = (1..=5).map(|n| Routes::compute(name(n), &g)).collect();
        let at = |n: PeerName| &all[(n.0[5] - 1) as usize];
        // Source 1: 1 -> 2, 4; 2 -> 3 (3's parents at distance 1 are 2 and 4: 2 is lower); 3 -> 5.
        assert_eq!(
            at(name(1)).broadcast_next_hops(name(1)),
            &[name(2), name(4)]
        );
        assert_eq!(at(name(2)).broadcast_next_hops(name(1)), &[name(3)]);
        assert_eq!(at(name(4)).broadcast_next_hops(name(1)), &[] as &[PeerName]);
        assert_eq!(at(name(3)).broadcast_next_hops(name(1)), &[name(5)]);
        for s in 1..=5 {
            let mut got = [0u32; 5];
            let mut queue = vec![name(s)];
            while let Some(p) = queue.pop() {
                for &c in at(p).broadcast_next_hops(name(s)) {
                    got[(c.0[5] - 1) as usize] += 1;
                    queue.push(c);
                }
            }
            got[(s - 1) as usize] += 1;
            assert_eq!(got, [1; 5], "source {s}");
            // Every child names as its parent the peer that forwards to it.
            for p in 1..=5 {
                for &c in at(name(p)).broadcast_next_hops(name(s)) {
                    assert_eq!(at(c).broadcast_parent(name(s)), Some(name(p)), "source {s}, child {c}");
                }
            }
            assert_eq!(at(name(s)).broadcast_parent(name(s)), Some(name(s)));
        }
        assert!(at(name(1)).broadcast_next_hops(name(77)).is_empty());
        assert_eq!(at(name(1)).broadcast_parent(name(77)), None);
    }

    #[test]
    fn engine_coalesces_and_publishes() {
        let t0 = Instant::now();
        let me = name(1);
        let mut topo = Topology::new(
            t0,
            Default::default(),
            me,
            "a".into(),
            1,
            Capabilities::default(),
        );
        let mut engine = RouteEngine::new(me, Duration::from_millis(50));
        let handle = engine.routes();
        engine.handle_timeout(t0, &topo);
        assert_eq!(engine.recomputations(), 1);
        let t1 = t0 + Duration::from_millis(10);
        topo.set_connection(
            t1,
            name(2),
            ([10, 0, 0, 2], 6783).into(),
            Direction::Outbound,
            true,
        );
        engine.handle_timeout(t1, &topo);
        assert_eq!(engine.recomputations(), 1, "too soon");
        assert_eq!(engine.poll_timeout(), Some(t0 + Duration::from_millis(50)));
        topo.set_nickname(t1, "b");
        engine.handle_timeout(t1, &topo);
        engine.handle_timeout(t0 + Duration::from_millis(50), &topo);
        assert_eq!(engine.recomputations(), 2, "two changes, one recomputation");
        assert_eq!(engine.poll_timeout(), None);
        // One-sided connection: still no route to 2.
        assert_eq!(handle.load().next_hop(name(2)), None);
        engine.handle_timeout(t0 + Duration::from_secs(1), &topo);
        assert_eq!(engine.recomputations(), 2, "nothing changed");
    }
}
