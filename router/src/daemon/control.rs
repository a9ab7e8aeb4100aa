//! The router's control plane, sans-IO: topology gossip and routes (from `weft_mesh`), plus
//! what this router knows of its own connections and attempts, for `weft status`.
//!
//! The daemon feeds it connection events from the mesh transport and the gossip it receives,
//! sends what [`Control::poll_transmit`] returns, and calls [`Control::handle_timeout`] when
//! [`Control::poll_timeout`] says. Routes are published for the data plane on every change.
//!
//! Gossip goes out in rounds at most every [`GOSSIP_PACE`]: the first change after a quiet
//! spell at once, the changes that follow it together at the end of the pause. An entry that
//! changes many times within a pause (a router whose connections come up one after another at
//! start) is sent once, at its last version, instead of once per change to every neighbour by
//! every peer: with N routers starting at once, N² connections each flooding an entry of N
//! connections over N² links made the start-up traffic grow like N⁵.
//!
//! The topology itself coalesces changes for `topology::Config::flood_delay` (10 ms) and does
//! not send an entry back to neighbours that sent it: that bounds the copies per change, which
//! the simulator's cold starts measure; the pace here bounds how often a router sends at all,
//! which is what a host of many routers on a few cores needs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_api::types::{Connection as ApiConnection, ConnectionCounts, ConnectionState, Peer as ApiPeer, PeerLink};
use weft_mesh::peer::PeerName;
use weft_mesh::routes::{RouteEngine, RoutesHandle};
use weft_mesh::topology::{self, Capabilities, Direction, HandleError, Topology, Transmit};

/// How often routes may be recomputed.
const ROUTE_INTERVAL: Duration = Duration::from_millis(50);
/// The shortest time between two rounds of gossip (see the module doc).
pub const GOSSIP_PACE: Duration = Duration::from_millis(100);

/// What the sleeve of an established connection says about the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sleeve {
    /// Heartbeats are answered (or none has been missed yet).
    Alive,
    /// No heartbeat answered while the mesh connection still hears the peer: the sleeve's
    /// port is blocked somewhere between.
    Blocked,
    /// Neither heartbeats nor the mesh connection hear the peer: it is gone, or its path is
    /// (the mesh connection will time out).
    Unreachable,
}

/// One of our connections, or an attempt at one.
#[derive(Clone, Debug)]
struct Conn {
    direction: Direction,
    remote: SocketAddr,
    peer: Option<PeerName>,
    nickname: Option<String>,
    state: ConnectionState,
    reason: Option<String>,
    retry_at: Option<Instant>,
    mtu: Option<u32>,
    rtt: Option<Duration>,
    sleeve: Sleeve,
    path_mtu: Option<u32>,
}

impl Conn {
    /// A record with nothing measured or said about it yet.
    fn new(direction: Direction, remote: SocketAddr, peer: Option<PeerName>, state: ConnectionState) -> Conn {
        Conn { direction, remote, peer, nickname: None, state, reason: None, retry_at: None, mtu: None, rtt: None, sleeve: Sleeve::Alive, path_mtu: None }
    }
}

/// Topology, routes and our connections.
///
/// Connections are recorded once per peer: established ones by peer name, attempts (dialling,
/// retrying, refused, dropped) by address. An attempt at an address or a peer that is already
/// connected (a duplicate dial in either direction, a redial that lost the race) is never
/// recorded beside the live connection nor over it; the live one is all `status` shows. Each
/// change of state starts from a fresh record, so no reason outlives the state it explained.
#[derive(Debug)]
pub struct Control {
    topology: Topology,
    routes: RouteEngine,
    established: BTreeMap<PeerName, Conn>,
    attempts: BTreeMap<SocketAddr, Conn>,
    encrypted: bool,
    /// No gossip before this (the pause after a round).
    gossip_from: Option<Instant>,
    /// Whether the current round sent anything.
    gossip_round: bool,
}

impl Control {
    /// A control plane for peer `me`.
    pub fn new(now: Instant, me: PeerName, nickname: String, incarnation: u64, encrypted: bool) -> Control {
        let caps = Capabilities { sleeve: true, fastpath: false, encryption: encrypted };
        let topology = Topology::new(now, topology::Config::default(), me, nickname, incarnation, caps);
        let mut routes = RouteEngine::new(me, ROUTE_INTERVAL);
        routes.recompute(now, &topology);
        Control { topology, routes, established: BTreeMap::new(), attempts: BTreeMap::new(), encrypted, gossip_from: None, gossip_round: false }
    }

    /// Advertises (or stops advertising) the kernel VXLAN fast path in our topology entry.
    pub fn set_fastpath(&mut self, now: Instant, on: bool) {
        let caps = Capabilities { fastpath: on, ..self.topology.entry(self.topology.me()).map(|e| e.capabilities).unwrap_or_default() };
        self.topology.set_capabilities(now, caps);
    }

    /// The routes, for the data plane (lock-free reads).
    pub fn routes(&self) -> RoutesHandle {
        self.routes.routes()
    }

    /// The topology (read-only).
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// How many times routes were recomputed.
    pub fn recomputations(&self) -> u64 {
        self.routes.recomputations()
    }

    /// Whether an attempt at `remote` (for `peer`, if known) would duplicate a live connection.
    fn covered(&self, remote: SocketAddr, peer: Option<PeerName>) -> bool {
        peer.is_some_and(|p| self.established.contains_key(&p)) || self.established.values().any(|c| c.remote.ip() == remote.ip())
    }

    /// A connection to `peer` at `remote` is authenticated and up.
    pub fn connected(&mut self, now: Instant, peer: PeerName, nickname: &str, remote: SocketAddr, direction: Direction, mtu: u32) {
        // A connection replacing one to the same peer (it restarted before the old one timed
        // out) is a new neighbour all the same: it must get our full state now, not at the next
        // periodic round, which it would not if the topology saw no change.
        if self.established.contains_key(&peer) {
            self.topology.set_connection(now, peer, remote, direction, false);
        }
        // Attempts at its address, or at other addresses of the peer, are settled; a refusal
        // (another router with its name) stays shown.
        self.attempts.retain(|a, c| a.ip() != remote.ip() && (c.peer != Some(peer) || c.state == ConnectionState::Failed));
        self.established.insert(
            peer,
            Conn { nickname: Some(nickname.to_owned()), mtu: Some(mtu), ..Conn::new(direction, remote, Some(peer), ConnectionState::Established) },
        );
        self.topology.set_connection(now, peer, remote, direction, true);
        self.routes.handle_timeout(now, &self.topology);
    }

    /// We are dialling `remote` (an address of `peer`, if gossip said whose). Not recorded when
    /// it duplicates a live connection.
    pub fn dialling(&mut self, remote: SocketAddr, peer: Option<PeerName>) {
        if self.covered(remote, peer) {
            self.attempts.remove(&remote);
            return;
        }
        let peer = peer.or_else(|| self.attempts.get(&remote).and_then(|c| c.peer));
        self.attempts.insert(remote, Conn::new(Direction::Outbound, remote, peer, ConnectionState::Pending));
    }

    /// An authenticated connection from `remote` was refused (`reason` says why); shown as failed
    /// until that peer connects from there. The topology is unchanged.
    pub fn refused(&mut self, remote: SocketAddr, peer: Option<PeerName>, direction: Direction, reason: String) {
        self.attempts.insert(remote, Conn { reason: Some(reason), ..Conn::new(direction, remote, peer, ConnectionState::Failed) });
    }

    /// A gossiped address was given up (`reason` says why); shown as dropped unless its peer
    /// is connected.
    pub fn dropped(&mut self, remote: SocketAddr, peer: Option<PeerName>, reason: String) {
        if self.covered(remote, peer) {
            self.attempts.remove(&remote);
            return;
        }
        let peer = peer.or_else(|| self.attempts.get(&remote).and_then(|c| c.peer));
        self.attempts.insert(remote, Conn { reason: Some(reason), ..Conn::new(Direction::Outbound, remote, peer, ConnectionState::Dropped) });
    }

    /// A connection (or attempt) with `remote` ended or failed; `retry_at` if we will try again.
    /// `peer` is given when it was the established connection to that peer: only then is the
    /// established record (and the topology's connection) removed.
    pub fn lost(&mut self, now: Instant, remote: SocketAddr, peer: Option<PeerName>, reason: String, retry_at: Option<Instant>) {
        if let Some(p) = peer
            && self.established.get(&p).is_some_and(|c| c.remote == remote)
        {
            self.established.remove(&p);
            self.topology.remove_connection(now, p);
            self.routes.handle_timeout(now, &self.topology);
        }
        let known = self.attempts.get(&remote).and_then(|c| c.peer);
        match retry_at {
            // A failed duplicate or redial of a live connection: nothing to show.
            Some(_) if self.covered(remote, known) => {
                self.attempts.remove(&remote);
            }
            Some(at) => {
                let c = Conn { reason: Some(reason), retry_at: Some(at), ..Conn::new(Direction::Outbound, remote, known.or(peer), ConnectionState::Retrying) };
                self.attempts.insert(remote, c);
            }
            None => {
                self.attempts.remove(&remote);
            }
        }
    }

    /// Records the round-trip time measured on the connection to `peer`.
    pub fn set_rtt(&mut self, peer: PeerName, rtt: Duration) {
        if let Some(c) = self.established.get_mut(&peer) {
            c.rtt = Some(rtt);
        }
    }

    /// Whether the sleeve to `peer` answers heartbeats, and whether the mesh connection still
    /// hears the peer (`mesh_heard`): the mesh connection may be up while the sleeve's UDP port
    /// is blocked, and a dead peer is silent on both. Also records the path MTU the sleeve found
    /// (`datagram` + 28).
    pub fn set_sleeve(&mut self, peer: PeerName, alive: bool, mesh_heard: bool, datagram: usize) {
        let Some(c) = self.established.get_mut(&peer) else { return };
        c.path_mtu = Some(datagram as u32 + 28);
        let now = match (alive, mesh_heard) {
            (true, _) => Sleeve::Alive,
            (false, true) => Sleeve::Blocked,
            (false, false) => Sleeve::Unreachable,
        };
        if now != c.sleeve {
            match now {
                Sleeve::Alive => tracing::info!(%peer, "sleeve: heartbeats answered again"),
                Sleeve::Blocked => tracing::warn!(
                    %peer,
                    "sleeve: no heartbeat answered within the peer timeout while the mesh connection still hears the peer; is the sleeve port (UDP) blocked between the hosts?"
                ),
                Sleeve::Unreachable => tracing::warn!(%peer, "peer unreachable: neither the sleeve's heartbeats nor the mesh connection hear it (the peer is down, or the path to it is)"),
            }
        }
        c.sleeve = now;
    }

    /// Records the largest pod packet the connection to `peer` carries whole (one datagram of
    /// the path MTU found, less the sleeve's headers; at most the pod MTU): what `status
    /// connections` shows as its MTU.
    pub fn set_carried_mtu(&mut self, peer: PeerName, mtu: u32) {
        if let Some(c) = self.established.get_mut(&peer) {
            c.mtu = Some(mtu);
        }
    }

    /// Gossip from neighbour `from`.
    pub fn gossip(&mut self, now: Instant, from: PeerName, bytes: &[u8]) -> Result<(), HandleError> {
        self.topology.handle(now, from, bytes)?;
        self.routes.handle_timeout(now, &self.topology);
        Ok(())
    }

    /// The next gossip message to send, unless the pause after the last round lasts (see the
    /// module doc): a round ends when nothing more is to be sent.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.gossip_from.is_some_and(|t| now < t) {
            return None;
        }
        let t = self.topology.poll_transmit(now);
        match (&t, self.gossip_round) {
            (Some(_), _) => self.gossip_round = true,
            (None, true) => {
                self.gossip_round = false;
                self.gossip_from = Some(now + GOSSIP_PACE);
            }
            (None, false) => {}
        }
        t
    }

    /// When [`handle_timeout`](Self::handle_timeout) (and [`poll_transmit`](Self::poll_transmit))
    /// next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let gossip = self.gossip_from.filter(|_| self.topology.has_transmit());
        [self.topology.poll_timeout(), self.routes.poll_timeout(), gossip].into_iter().flatten().min()
    }

    /// Runs the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.topology.handle_timeout(now);
        self.routes.handle_timeout(now, &self.topology);
    }

    /// The records `status` shows: established connections, then attempts that duplicate no
    /// live connection (refusals always: they explain why a second connection was closed).
    fn records(&self) -> impl Iterator<Item = &Conn> {
        let attempts = self.attempts.values().filter(|c| c.state == ConnectionState::Failed || !self.covered(c.remote, c.peer));
        self.established.values().chain(attempts)
    }

    /// Connection counts by state (the failed ones are those retrying or refused), of the
    /// records [`connections`](Self::connections) lists.
    pub fn counts(&self) -> ConnectionCounts {
        let mut n = ConnectionCounts::default();
        for c in self.records() {
            match c.state {
                ConnectionState::Established => n.established += 1,
                ConnectionState::Pending => n.pending += 1,
                ConnectionState::Retrying | ConnectionState::Failed => n.failed += 1,
                ConnectionState::Dropped => n.dropped += 1,
            }
        }
        n
    }

    /// Every peer of the topology with its gossiped connections, for `weft status peers`.
    pub fn peers(&self) -> Vec<ApiPeer> {
        let routes = self.routes.routes().load_full();
        let nick = |n: PeerName| self.topology.entry(n).map(|e| e.nickname.clone()).unwrap_or_default();
        let mut out: Vec<ApiPeer> = self
            .topology
            .entries()
            .map(|e| ApiPeer {
                name: e.name.to_string(),
                nickname: e.nickname.clone(),
                reachable: e.name == self.topology.me() || routes.next_hop(e.name).is_some(),
                via: routes.next_hop(e.name).filter(|h| *h != e.name).map(|h| format!("{h}({})", nick(h))),
                connections: e
                    .connections
                    .iter()
                    .map(|c| PeerLink {
                        name: c.remote.to_string(),
                        nickname: nick(c.remote),
                        address: c.addr.to_string(),
                        outbound: c.direction == Direction::Outbound,
                        established: c.established,
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Our connections and attempts, for `weft status connections`.
    pub fn connections(&self, now: Instant) -> Vec<ApiConnection> {
        self.records()
            .map(|c| ApiConnection {
                direction: if c.direction == Direction::Outbound { "outbound" } else { "inbound" }.into(),
                remote: c.remote.to_string(),
                peer: c.peer.map(|p| p.to_string()),
                nickname: c.nickname.clone(),
                state: c.state,
                overlay: if c.state == ConnectionState::Established { "sleeve" } else { "none" }.into(),
                encrypted: self.encrypted && c.state == ConnectionState::Established,
                mtu: c.mtu,
                rtt_ms: c.rtt.map(|r| r.as_secs_f64() * 1000.0),
                reason: match c.sleeve {
                    Sleeve::Blocked => Some("sleeve: no heartbeat answered within the peer timeout while the mesh connection hears the peer (is the sleeve's UDP port blocked?)".into()),
                    Sleeve::Unreachable => Some("peer unreachable: no heartbeat answered and the mesh connection hears nothing (the peer is down, or its path)".into()),
                    Sleeve::Alive => c.reason.clone(),
                },
                retry_in_secs: c.retry_at.map(|t| t.saturating_duration_since(now).as_secs_f64()),
                path_mtu: c.path_mtu.filter(|_| c.state == ConnectionState::Established),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u8) -> PeerName {
        PeerName([0x0e, 0, 0, 0, 0, n])
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, n], 6783))
    }

    /// Delivers every pending gossip message between the controls, round after round (a
    /// [`GOSSIP_PACE`] apart), until quiet; returns the time it ended.
    fn exchange(now: Instant, peers: &mut [Control]) -> Instant {
        let mut t = now;
        let mut quiet = 0;
        while quiet < 2 {
            let mut moved = false;
            for i in 0..peers.len() {
                while let Some(m) = peers[i].poll_transmit(t) {
                    let from = peers[i].topology().me();
                    if let Some(j) = peers.iter().position(|p| p.topology().me() == m.to) {
                        peers[j].gossip(t, from, &m.payload).unwrap();
                        moved = true;
                    }
                }
            }
            quiet = if moved { 0 } else { quiet + 1 };
            t += GOSSIP_PACE;
        }
        t
    }

    #[test]
    fn a_line_of_three_learns_its_routes_and_reports_them() {
        let now = Instant::now();
        let mut c: Vec<Control> = (1..=3).map(|i| Control::new(now, name(i), format!("h{i}"), 1, true)).collect();
        // 1 - 2 - 3: each side of each link reports it.
        c[0].connected(now, name(2), "h2", addr(2), Direction::Outbound, 1376);
        c[1].connected(now, name(1), "h1", addr(1), Direction::Inbound, 1376);
        c[1].connected(now, name(3), "h3", addr(3), Direction::Inbound, 1376);
        c[2].connected(now, name(2), "h2", addr(2), Direction::Outbound, 1376);
        exchange(now, &mut c);
        let later = now + Duration::from_secs(1);
        for x in c.iter_mut() {
            x.handle_timeout(later);
        }
        let r = c[0].routes().load_full();
        assert_eq!(r.next_hop(name(3)), Some(name(2)), "1 reaches 3 through 2");
        assert_eq!(c[2].routes().load_full().next_hop(name(1)), Some(name(2)));
        assert_eq!(c[0].peers().len(), 3);
        assert!(c[0].peers().iter().all(|p| p.reachable));
        assert_eq!(c[1].counts(), ConnectionCounts { established: 2, pending: 0, failed: 0, dropped: 0 });
        let conns = c[0].connections(later);
        assert_eq!((conns[0].state, conns[0].overlay.as_str(), conns[0].encrypted), (ConnectionState::Established, "sleeve", true));
    }

    #[test]
    fn a_peer_that_reconnects_before_its_old_connection_timed_out_gets_our_full_state() {
        let now = Instant::now();
        let mut c = Control::new(now, name(1), "h1".into(), 1, true);
        c.connected(now, name(2), "h2", addr(2), Direction::Inbound, 1376);
        c.connected(now, name(3), "h3", addr(3), Direction::Inbound, 1376);
        while c.poll_transmit(now).is_some() {}
        // Peer 2 restarted and connected again from the same address: our entry is unchanged,
        // yet the new peer 2 knows nothing and must be sent everything (here: our entry, with
        // our connection to peer 3).
        c.connected(now, name(2), "h2", addr(2), Direction::Inbound, 1376);
        let mut fresh = Control::new(now, name(2), "h2".into(), 2, true);
        let mut sent = 0;
        // After the pause that follows the first round.
        let next = now + GOSSIP_PACE;
        while let Some(t) = c.poll_transmit(next) {
            if t.to == name(2) {
                fresh.gossip(next, name(1), &t.payload).unwrap();
                sent += 1;
            }
        }
        assert!(sent > 0, "nothing sent to the reconnected peer");
        let ours = fresh.topology().entry(name(1)).map(|e| e.connections.iter().map(|x| x.remote).collect::<Vec<_>>());
        assert!(ours.is_some_and(|r| r.contains(&name(3))), "the reconnected peer did not learn our connections");
        assert_eq!(c.counts(), ConnectionCounts { established: 2, pending: 0, failed: 0, dropped: 0 });
    }

    #[test]
    fn gossip_goes_in_rounds_and_changes_within_a_pause_go_together_at_its_end() {
        let now = Instant::now();
        let mut c = Control::new(now, name(1), "h1".into(), 1, true);
        let sent = |c: &mut Control, at: Instant| std::iter::from_fn(|| c.poll_transmit(at)).count();
        // The first change after a quiet spell goes at once.
        c.connected(now, name(2), "h2", addr(2), Direction::Inbound, 1376);
        assert!(sent(&mut c, now) > 0);
        // Five more connections within the pause: nothing goes before its end ...
        for (i, n) in (3..=7).enumerate() {
            let at = now + Duration::from_millis(10 * (i as u64 + 1));
            c.connected(at, name(n), &format!("h{n}"), addr(n), Direction::Inbound, 1376);
            assert_eq!(sent(&mut c, at), 0, "sent within the pause");
        }
        // ... which the timer covers; then our entry goes once to each neighbour, at its last version.
        let end = now + GOSSIP_PACE;
        assert!(c.poll_timeout().is_some_and(|t| t <= end));
        let mut to: Vec<PeerName> = std::iter::from_fn(|| c.poll_transmit(end)).map(|t| t.to).collect();
        to.sort();
        to.dedup();
        assert_eq!(to, (2..=7).map(name).collect::<Vec<_>>());
        let mut fresh = Control::new(now, name(2), "h2".into(), 1, true);
        c.connected(end, name(2), "h2", addr(2), Direction::Inbound, 1376);
        let later = end + GOSSIP_PACE;
        for t in std::iter::from_fn(|| c.poll_transmit(later)).filter(|t| t.to == name(2)) {
            fresh.gossip(later, name(1), &t.payload).unwrap();
        }
        let ours = fresh.topology().entry(name(1)).map(|e| e.connections.len());
        assert_eq!(ours, Some(6), "the last version, with all six connections");
    }

    #[test]
    fn failures_show_their_reason_and_retry() {
        let now = Instant::now();
        let mut c = Control::new(now, name(1), "h1".into(), 1, false);
        c.dialling(addr(9), None);
        assert_eq!(c.counts(), ConnectionCounts { established: 0, pending: 1, failed: 0, dropped: 0 });
        c.lost(now, addr(9), None, "connection refused".into(), Some(now + Duration::from_secs(4)));
        assert_eq!(c.counts(), ConnectionCounts { established: 0, pending: 0, failed: 1, dropped: 0 });
        let conns = c.connections(now + Duration::from_secs(1));
        assert_eq!(conns[0].reason.as_deref(), Some("connection refused"));
        assert_eq!(conns[0].retry_in_secs, Some(3.0));
    }

    #[test]
    fn a_refused_connection_shows_as_failed_with_its_reason_until_the_peer_connects() {
        let now = Instant::now();
        let mut c = Control::new(now, name(1), "h1".into(), 1, false);
        c.connected(now, name(2), "h2", addr(2), Direction::Inbound, 1376);
        c.refused(addr(3), Some(name(2)), Direction::Inbound, "two live routers".into());
        assert_eq!(c.counts(), ConnectionCounts { established: 1, pending: 0, failed: 1, dropped: 0 });
        let conns = c.connections(now);
        let failed = conns.iter().find(|x| x.state == ConnectionState::Failed).unwrap();
        assert_eq!((failed.remote.as_str(), failed.reason.as_deref()), ("192.0.2.3:6783", Some("two live routers")));
        let ours = |c: &Control| c.topology().entry(name(1)).map(|e| e.connections.iter().filter(|x| x.remote == name(2)).count());
        assert_eq!(ours(&c), Some(1), "the topology keeps the connection that stays");
        c.connected(now, name(2), "h2", addr(3), Direction::Inbound, 1376);
        assert_eq!(c.counts(), ConnectionCounts { established: 1, pending: 0, failed: 0, dropped: 0 });
    }

    #[test]
    fn a_duplicate_dial_or_failed_redial_never_shows_beside_or_over_the_live_connection() {
        let now = Instant::now();
        let mut c = Control::new(now, name(1), "h1".into(), 1, true);
        // Peer 2 dialled us from 192.0.2.2:6783; our own dial of that address loses the race.
        c.dialling(addr(2), None);
        c.connected(now, name(2), "h2", addr(2), Direction::Inbound, 1376);
        c.dialling(addr(2), None);
        c.lost(now, addr(2), None, "no answer (QUIC handshake timed out)".into(), Some(now + Duration::from_secs(2)));
        // A gossiped address of the same peer (its NAT's outside address) fails too.
        let outside = SocketAddr::from(([203, 0, 113, 7], 6783));
        c.dialling(outside, Some(name(2)));
        c.lost(now, outside, None, "no answer".into(), Some(now + Duration::from_secs(2)));
        c.dropped(outside, Some(name(2)), "gave up".into());
        assert_eq!(c.counts(), ConnectionCounts { established: 1, pending: 0, failed: 0, dropped: 0 });
        let conns = c.connections(now);
        assert_eq!(conns.len(), 1, "{conns:?}");
        assert_eq!((conns[0].state, conns[0].direction.as_str(), conns[0].reason.as_deref()), (ConnectionState::Established, "inbound", None));
        // The established connection ends: now the retry is what there is to show.
        c.lost(now, addr(2), Some(name(2)), "timed out".into(), None);
        c.lost(now, addr(2), Some(name(2)), "timed out".into(), Some(now + Duration::from_secs(1)));
        assert_eq!(c.counts(), ConnectionCounts { established: 0, pending: 0, failed: 1, dropped: 0 });
        // A stale end of a connection already replaced leaves the new one alone.
        c.connected(now, name(2), "h2", addr(3), Direction::Outbound, 1376);
        c.lost(now, addr(2), Some(name(2)), "old one closed".into(), None);
        assert_eq!(c.counts(), ConnectionCounts { established: 1, pending: 0, failed: 0, dropped: 0 });
    }

    #[test]
    fn reasons_go_with_the_state_they_explain() {
        let now = Instant::now();
        let mut c = Control::new(now, name(1), "h1".into(), 1, false);
        c.dialling(addr(9), None);
        c.lost(now, addr(9), None, "connection refused".into(), Some(now + Duration::from_secs(1)));
        c.dialling(addr(9), None);
        let conns = c.connections(now);
        assert_eq!((conns[0].state, conns[0].reason.as_deref(), conns[0].retry_in_secs), (ConnectionState::Pending, None, None));
        c.dropped(addr(9), None, "no answer after 5 attempts".into());
        assert_eq!(c.counts(), ConnectionCounts { established: 0, pending: 0, failed: 0, dropped: 1 });
        assert_eq!(c.connections(now)[0].state, ConnectionState::Dropped);
        c.connected(now, name(9), "h9", addr(9), Direction::Inbound, 1376);
        let conns = c.connections(now);
        assert_eq!(conns.len(), 1);
        assert_eq!((conns[0].state, conns[0].reason.as_deref()), (ConnectionState::Established, None));
    }

    #[test]
    fn a_silent_sleeve_is_a_blocked_port_only_while_the_mesh_still_hears_the_peer() {
        let now = Instant::now();
        let mut c = Control::new(now, name(1), "h1".into(), 1, false);
        c.connected(now, name(2), "h2", addr(2), Direction::Outbound, 1376);
        let reason = |c: &Control| c.connections(now)[0].reason.clone().unwrap_or_default();
        c.set_sleeve(name(2), false, true, 1472);
        assert!(reason(&c).contains("blocked"), "{}", reason(&c));
        c.set_sleeve(name(2), false, false, 1472);
        assert!(reason(&c).contains("peer unreachable") && !reason(&c).contains("blocked"), "{}", reason(&c));
        c.set_sleeve(name(2), true, true, 1472);
        assert_eq!(reason(&c), "");
        assert_eq!(c.connections(now)[0].path_mtu, Some(1500));
    }
}
