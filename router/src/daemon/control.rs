//! The router's control plane, sans-IO: topology gossip and routes (from `weft_mesh`), plus
//! what this router knows of its own connections and attempts, for `weft status`.
//!
//! The daemon feeds it connection events from the mesh transport and the gossip it receives,
//! sends what [`Control::poll_transmit`] returns, and calls [`Control::handle_timeout`] when
//! [`Control::poll_timeout`] says. Routes are published for the data plane on every change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_api::types::{Connection as ApiConnection, ConnectionCounts, ConnectionState, Peer as ApiPeer, PeerLink};
use weft_mesh::peer::PeerName;
use weft_mesh::routes::{RouteEngine, RoutesHandle};
use weft_mesh::topology::{self, Capabilities, Direction, HandleError, Topology, Transmit};

/// How often routes may be recomputed.
const ROUTE_INTERVAL: Duration = Duration::from_millis(50);

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
    sleeve_dead: bool,
    path_mtu: Option<u32>,
}

impl Conn {
    /// A record with nothing measured or said about it yet.
    fn new(direction: Direction, remote: SocketAddr, peer: Option<PeerName>, state: ConnectionState) -> Conn {
        Conn { direction, remote, peer, nickname: None, state, reason: None, retry_at: None, mtu: None, rtt: None, sleeve_dead: false, path_mtu: None }
    }
}

/// Topology, routes and our connections.
#[derive(Debug)]
pub struct Control {
    topology: Topology,
    routes: RouteEngine,
    conns: BTreeMap<SocketAddr, Conn>,
    encrypted: bool,
}

impl Control {
    /// A control plane for peer `me`.
    pub fn new(now: Instant, me: PeerName, nickname: String, incarnation: u64, encrypted: bool) -> Control {
        let caps = Capabilities { sleeve: true, fastpath: false, encryption: encrypted };
        let topology = Topology::new(now, topology::Config::default(), me, nickname, incarnation, caps);
        let mut routes = RouteEngine::new(me, ROUTE_INTERVAL);
        routes.recompute(now, &topology);
        Control { topology, routes, conns: BTreeMap::new(), encrypted }
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

    /// A connection to `peer` at `remote` is authenticated and up.
    pub fn connected(&mut self, now: Instant, peer: PeerName, nickname: &str, remote: SocketAddr, direction: Direction, mtu: u32) {
        // A connection replacing one to the same peer (it restarted before the old one timed
        // out) is a new neighbour all the same: it must get our full state now, not at the next
        // periodic round, which it would not if the topology saw no change.
        if self.conns.values().any(|c| c.peer == Some(peer) && c.state == ConnectionState::Established) {
            self.topology.set_connection(now, peer, remote, direction, false);
        }
        self.conns.retain(|a, c| *a == remote || c.peer != Some(peer));
        self.conns.insert(
            remote,
            Conn { nickname: Some(nickname.to_owned()), mtu: Some(mtu), ..Conn::new(direction, remote, Some(peer), ConnectionState::Established) },
        );
        self.topology.set_connection(now, peer, remote, direction, true);
        self.routes.handle_timeout(now, &self.topology);
    }

    /// We are dialling `remote`.
    pub fn dialling(&mut self, remote: SocketAddr) {
        let c = self.conns.entry(remote).or_insert(Conn::new(Direction::Outbound, remote, None, ConnectionState::Pending));
        if c.state != ConnectionState::Established {
            c.state = ConnectionState::Pending;
        }
    }

    /// An authenticated connection from `remote` was refused (`reason` says why); shown as failed
    /// until that peer connects from there. The topology is unchanged.
    pub fn refused(&mut self, remote: SocketAddr, peer: Option<PeerName>, direction: Direction, reason: String) {
        self.conns.insert(
            remote,
            Conn { reason: Some(reason), ..Conn::new(direction, remote, peer, ConnectionState::Failed) },
        );
    }

    /// A connection (or attempt) with `remote` ended or failed; `retry_at` if we will try again.
    pub fn lost(&mut self, now: Instant, remote: SocketAddr, peer: Option<PeerName>, reason: String, retry_at: Option<Instant>) {
        if let Some(p) = peer {
            self.topology.remove_connection(now, p);
            self.routes.handle_timeout(now, &self.topology);
        }
        match retry_at {
            Some(at) => {
                let c = self.conns.entry(remote).or_insert(Conn::new(Direction::Outbound, remote, peer, ConnectionState::Retrying));
                c.state = ConnectionState::Retrying;
                c.reason = Some(reason);
                c.retry_at = Some(at);
            }
            None => {
                self.conns.remove(&remote);
            }
        }
    }

    /// Records the round-trip time measured on the connection to `peer`.
    pub fn set_rtt(&mut self, peer: PeerName, rtt: Duration) {
        for c in self.conns.values_mut().filter(|c| c.peer == Some(peer)) {
            c.rtt = Some(rtt);
        }
    }

    /// Whether the sleeve to `peer` answers heartbeats (the mesh connection may be up while
    /// the sleeve's UDP port is blocked).
    /// Also records the path MTU the sleeve found (`datagram` + 28).
    pub fn set_sleeve(&mut self, peer: PeerName, alive: bool, datagram: usize) {
        for c in self.conns.values_mut().filter(|c| c.peer == Some(peer) && c.state == ConnectionState::Established) {
            c.path_mtu = Some(datagram as u32 + 28);
            if c.sleeve_dead == alive {
                if alive {
                    tracing::info!(%peer, "sleeve: heartbeats answered again");
                } else {
                    tracing::warn!(%peer, "sleeve: no heartbeat answered within the peer timeout; is the sleeve port (UDP) blocked between the hosts?");
                }
            }
            c.sleeve_dead = !alive;
        }
    }

    /// Records the largest pod packet the connection to `peer` carries whole (one datagram of
    /// the path MTU found, less the sleeve's headers; at most the pod MTU): what `status
    /// connections` shows as its MTU.
    pub fn set_carried_mtu(&mut self, peer: PeerName, mtu: u32) {
        for c in self.conns.values_mut().filter(|c| c.peer == Some(peer) && c.state == ConnectionState::Established) {
            c.mtu = Some(mtu);
        }
    }

    /// Gossip from neighbour `from`.
    pub fn gossip(&mut self, now: Instant, from: PeerName, bytes: &[u8]) -> Result<(), HandleError> {
        self.topology.handle(now, from, bytes)?;
        self.routes.handle_timeout(now, &self.topology);
        Ok(())
    }

    /// The next gossip message to send.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.topology.poll_transmit(now)
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.topology.poll_timeout(), self.routes.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.topology.handle_timeout(now);
        self.routes.handle_timeout(now, &self.topology);
    }

    /// Connection counts by state; the failed ones are those retrying.
    pub fn counts(&self) -> ConnectionCounts {
        let n = |s: ConnectionState| self.conns.values().filter(|c| c.state == s).count();
        ConnectionCounts { established: n(ConnectionState::Established), pending: n(ConnectionState::Pending), failed: n(ConnectionState::Retrying) + n(ConnectionState::Failed) }
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
        self.conns
            .values()
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
                reason: if c.sleeve_dead && c.state == ConnectionState::Established {
                    Some("sleeve: no heartbeat answered within the peer timeout (is the sleeve's UDP port blocked?)".into())
                } else {
                    c.reason.clone()
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

    /// Delivers every pending gossip message between the controls, until quiet.
    fn exchange(now: Instant, peers: &mut [Control]) {
        loop {
            let mut moved = false;
            for i in 0..peers.len() {
                while let Some(t) = peers[i].poll_transmit(now) {
                    let from = peers[i].topology().me();
                    if let Some(j) = peers.iter().position(|p| p.topology().me() == t.to) {
                        peers[j].gossip(now, from, &t.payload).unwrap();
                        moved = true;
                    }
                }
            }
            if !moved {
                break;
            }
        }
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
        assert_eq!(c[1].counts(), ConnectionCounts { established: 2, pending: 0, failed: 0 });
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
        while let Some(t) = c.poll_transmit(now) {
            if t.to == name(2) {
                fresh.gossip(now, name(1), &t.payload).unwrap();
                sent += 1;
            }
        }
        assert!(sent > 0, "nothing sent to the reconnected peer");
        let ours = fresh.topology().entry(name(1)).map(|e| e.connections.iter().map(|x| x.remote).collect::<Vec<_>>());
        assert!(ours.is_some_and(|r| r.contains(&name(3))), "the reconnected peer did not learn our connections");
        assert_eq!(c.counts(), ConnectionCounts { established: 2, pending: 0, failed: 0 });
    }

    #[test]
    fn failures_show_their_reason_and_retry() {
        let now = Instant::now();
        let mut c = Control::new(now, name(1), "h1".into(), 1, false);
        c.dialling(addr(9));
        assert_eq!(c.counts(), ConnectionCounts { established: 0, pending: 1, failed: 0 });
        c.lost(now, addr(9), None, "connection refused".into(), Some(now + Duration::from_secs(4)));
        assert_eq!(c.counts(), ConnectionCounts { established: 0, pending: 0, failed: 1 });
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
        assert_eq!(c.counts(), ConnectionCounts { established: 1, pending: 0, failed: 1 });
        let conns = c.connections(now);
        let failed = conns.iter().find(|x| x.state == ConnectionState::Failed).unwrap();
        assert_eq!((failed.remote.as_str(), failed.reason.as_deref()), ("192.0.2.3:6783", Some("two live routers")));
        let ours = |c: &Control| c.topology().entry(name(1)).map(|e| e.connections.iter().filter(|x| x.remote == name(2)).count());
        assert_eq!(ours(&c), Some(1), "the topology keeps the connection that stays");
        c.connected(now, name(2), "h2", addr(3), Direction::Inbound, 1376);
        assert_eq!(c.counts(), ConnectionCounts { established: 1, pending: 0, failed: 0 });
    }
}
