//! Peering: the glue between the mesh transport and everything that uses it.
//!
//! It owns the QUIC endpoint's events and the dial targets, and for each event updates the
//! control plane (topology gossip and routes), IPAM (its messages travel over the mesh, relayed
//! with their origin kept: unicast along next hops, broadcast along the origin's spanning tree),
//! and the data plane (a sleeve link per authenticated connection, rekeyed when the mesh says).
//!
//! Duplicate connections between one pair of peers (both dialled at once) are resolved the same
//! way on both sides: the connection dialled by the peer with the smaller name is kept, unless
//! the new one comes from a newer incarnation of the peer (it restarted; the old one is dead).
//! The mesh endpoint already refuses, at the peer's `Hello`, a duplicate that this rule would
//! close (same address and incarnation), so such a loser is never reported up here.
//! Most duplicates are never made: an address gossip reports for a peer with a smaller name is
//! dialled only after [`LARGER_NAME_DELAY`] (that peer is expected to dial us), no address is
//! dialled while a connection from it is being handshaken or its peer is connected (through
//! whichever address: a NAT's outside address gossip reports for a connected peer is not
//! dialled), and new dials are paced ([`MAX_DIALS_IN_FLIGHT`], [`MAX_NEW_DIALS_PER_TICK`]) so
//! that many routers starting at once do not time each other's handshakes out.
//!
//! Dialling gives up on what cannot work: an address this host has no route to (the kernel's
//! route lookup, through a UDP `connect`) is not dialled, and a gossiped one is dropped at once;
//! a gossiped address that keeps failing is dropped after a few tries (see
//! [`weft_mesh::transport::targets`]). Dropped addresses are shown as such in `weft status
//! connections`, with why.
//!
//! Under a connection limit below the cluster size (bounded-degree mode), the peers a router
//! wants are those [`weft_mesh::degree`] pairs it with, from the names gossip reports; both
//! ends of a pair compute the same pairs, so they agree. Only wanted peers' gossiped addresses
//! are dialled. Once the names known have not changed for [`DEGREE_SETTLE`], a connection that
//! has lasted as long to a peer no longer wanted (at the start every configured peer is dialled)
//! is closed, one per tick, and only when the peer stays reachable through the others (by the
//! connection graph gossip reports, without that connection). Its targets are then *parked*:
//! kept waiting, not dialled, while the peer is not wanted and is reached through a relay (or
//! was let go within [`DEGREE_SETTLE`], while routes catch up), so neither end dials it again;
//! a peer that becomes wanted again, or unreachable, is dialled as before. Parked targets are
//! not shown as failures in `status`.
//!
//! Two live routers with one name (a copied identity) are told apart from a restart by where
//! their connections come from. A second connection for a name from another address replaces
//! the first when it brings a newer incarnation (a restart that moved), or at an equal one by the
//! tie-break above when the two could be one multi-homed router dialling and dialled at once; it
//! is refused as a conflict when it brings an older incarnation, or when it comes from the
//! address whose connection was let go for that name within [`CONFLICT_WINDOW`] (a restarted
//! router never comes back from its old address, a live copy does). So the connection that
//! stays, stays: no flapping. A conflict is logged as an error naming both addresses (at most
//! every [`CONFLICT_LOG_EVERY`]) and shown in `status connections` as the refused connection's
//! reason, here and on the refused router. A peer calling itself by the zero or the broadcast
//! name is refused.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;

use weft_kernel::chain;
use weft_mesh::ipam::{Destination, HandOver};
use weft_mesh::peer::PeerName;
use weft_mesh::topology::Direction;
use weft_mesh::transport::proto::EVERYONE;
use weft_mesh::transport::targets::{self, Source, Targets};
use weft_mesh::transport::{ConnHandle, ConnInfo, Event, MeshEndpoint, Message};
use weft_sleeve::liveness::PeerState;
use weft_sleeve::{Config as SleeveConfig, Role, Session, SessionIds};

use crate::dataplane::links::SleeveLink;
use crate::dataplane::Shared;
use crate::daemon::Daemon;

/// How long a sleeve sender waits for the peer to prove it has a new secret before using it.
const SECRET_SWITCH_DELAY: Duration = Duration::from_secs(1);

/// Datagram size until path MTU discovery says otherwise: a 1500-byte IPv4 path.
pub const DEFAULT_DATAGRAM: usize = 1472;

/// How long a connection let go for a name is remembered: if the same name connects again from
/// the same address within it while the other connection is up, two live routers share the name.
pub const CONFLICT_WINDOW: Duration = Duration::from_secs(600);
/// A conflict between the same two addresses is logged as an error at most this often (the
/// refused router dials again every second or so).
pub const CONFLICT_LOG_EVERY: Duration = Duration::from_secs(60);
/// How long a leaving router waits for the receiver of its range to acknowledge it.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a dial of a target whose connection was lost recently may take before it is given
/// up and tried again (the peer may be restarting: a fresh dial reaches it sooner than the late
/// retransmissions of a long one); doubled after each such dial that failed, up to 8 times.
const RECENT_DIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a new gossiped address of a peer with a smaller name waits before we dial it (the
/// peer is expected to dial us: the connection it dials is the one both ends keep), jittered.
pub const LARGER_NAME_DELAY: Duration = Duration::from_secs(3);
/// How long a new gossiped address of a peer with a larger name waits before we dial it,
/// jittered: many addresses learned at once are not dialled in one burst.
const GOSSIP_DIAL_DELAY: Duration = Duration::from_millis(300);
/// How many dials may be in progress at once.
pub const MAX_DIALS_IN_FLIGHT: usize = 3;
/// How many dials may start per tick of the peering loop.
pub const MAX_NEW_DIALS_PER_TICK: usize = 2;
/// How long a target is put back when a connection from its address is being handshaken.
const HANDSHAKING_DELAY: Duration = Duration::from_secs(2);

/// How long the names known must be unchanged, and a connection must have lasted, before a
/// connection to a peer no longer wanted under the connection limit is closed; also how long
/// after such a close its targets stay parked while routes catch up.
pub const DEGREE_SETTLE: Duration = Duration::from_secs(5);

/// How long shutdown waits for every peer to acknowledge the `Bye` (the mesh gives up on one
/// connection after its own `bye_timeout`; this bounds them all).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests from the local API.
#[derive(Debug)]
pub enum Command {
    /// `weft connect ADDR`.
    Connect(String),
    /// `weft forget ADDR`.
    Forget(String),
    /// A target's host name was looked up (internal: lookups run beside the event loop).
    Resolved(String, Result<SocketAddr, String>),
    /// The Nodes' targets, all of them (from the Kubernetes controller: `--kube-peers`).
    Kubernetes(BTreeSet<String>),
}

struct Up {
    info: ConnInfo,
    handle: ConnHandle,
    /// When it came up.
    since: Instant,
}

/// One of two connections to one peer name, as [`Duplicates`] compares them.
#[derive(Clone, Copy, Debug)]
struct Side {
    remote: SocketAddr,
    incarnation: u64,
    direction: Direction,
}

impl Side {
    fn of(i: &ConnInfo) -> Side {
        Side { remote: i.remote, incarnation: i.incarnation, direction: i.direction }
    }
}

/// What to do with a new connection to a peer already connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Close the new one (a duplicate of the same router).
    KeepOld,
    /// Close the old one (the router restarted, or the tie-break prefers the new one).
    ReplaceOld,
    /// Two live routers share the name: refuse the new one, say so.
    Conflict,
}

/// Decides between two connections to one peer name, and notices two live routers with it
/// (see the module doc).
#[derive(Debug, Default)]
struct Duplicates {
    /// Per name, the address whose connection was last let go, and when.
    let_go: HashMap<PeerName, (SocketAddr, Instant)>,
    /// Conflicts logged as errors, and when.
    reported: HashMap<(PeerName, SocketAddr), Instant>,
}

impl Duplicates {
    fn decide(&mut self, now: Instant, me: PeerName, peer: PeerName, old: Side, new: Side) -> Verdict {
        if old.remote == new.remote {
            // One router: both ends dialled at once, or it restarted.
            return match new.incarnation.cmp(&old.incarnation) {
                std::cmp::Ordering::Greater => Verdict::ReplaceOld,
                std::cmp::Ordering::Less => Verdict::KeepOld,
                std::cmp::Ordering::Equal => tie_break(me, peer, old, new),
            };
        }
        self.let_go.retain(|_, (_, at)| now.saturating_duration_since(*at) < CONFLICT_WINDOW);
        let came_back = self.let_go.get(&peer).is_some_and(|(a, _)| *a == new.remote);
        let verdict = if came_back || new.incarnation < old.incarnation {
            Verdict::Conflict
        } else if new.incarnation > old.incarnation {
            Verdict::ReplaceOld
        } else if new.direction != old.direction {
            // Perhaps one multi-homed router dialling and dialled at once: as for one address.
            tie_break(me, peer, old, new)
        } else {
            Verdict::KeepOld
        };
        let gone = if verdict == Verdict::ReplaceOld { old.remote } else { new.remote };
        self.let_go.insert(peer, (gone, now));
        verdict
    }

    /// Whether a conflict of `peer` at `remote` is to be logged as an error now: the first time,
    /// then every [`CONFLICT_LOG_EVERY`].
    fn report(&mut self, now: Instant, peer: PeerName, remote: SocketAddr) -> bool {
        self.reported.retain(|_, at| now.saturating_duration_since(*at) < CONFLICT_LOG_EVERY);
        let first = !self.reported.contains_key(&(peer, remote));
        if first {
            self.reported.insert((peer, remote), now);
        }
        first
    }
}

/// Both ends keep the connection dialled by the peer with the smaller name.
fn tie_break(me: PeerName, peer: PeerName, old: Side, new: Side) -> Verdict {
    let dialler = |s: Side| if s.direction == Direction::Outbound { me } else { peer };
    let preferred = me.min(peer);
    if dialler(new) == preferred || dialler(old) != preferred { Verdict::ReplaceOld } else { Verdict::KeepOld }
}

/// Connections, targets and the events that change them.
pub struct Peering {
    me: PeerName,
    endpoint: MeshEndpoint,
    encrypted: bool,
    conn_limit: usize,
    mesh_port: u16,
    conns: HashMap<PeerName, Up>,
    targets: Targets,
    /// Addresses being dialled, and the target each came from.
    dialling: HashMap<SocketAddr, String>,
    /// Where each target last resolved.
    resolved: HashMap<String, SocketAddr>,
    dp: Arc<Shared>,
    topology_generation: u64,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    duplicates: Duplicates,
    /// The targets the Nodes gave, as last set.
    kube_targets: BTreeSet<String>,
    /// The peer each target last connected to.
    target_peer: HashMap<String, PeerName>,
    /// The established connections gossip reported last time (reporter, remote).
    gossiped: HashSet<(PeerName, PeerName)>,
    /// The peers gossip reports at each mesh address (as a target: `IP:mesh port`).
    gossip_peers: HashMap<String, BTreeSet<PeerName>>,
    /// Per connected peer: datagrams its mesh connection had received, and when that last grew.
    heard: HashMap<PeerName, (u64, Instant)>,
    /// The names gossip reports, sorted, and since when they are these.
    known: (Vec<PeerName>, Instant),
    /// Under a connection limit below the cluster size: the peers paired with us (sorted).
    wanted: Option<Vec<PeerName>>,
    /// Peers whose connection ended while not wanted, and when.
    let_go: HashMap<PeerName, Instant>,
}

impl Peering {
    /// Peering over `endpoint`, starting with the configured targets.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        now: Instant,
        me: PeerName,
        endpoint: MeshEndpoint,
        dp: Arc<Shared>,
        encrypted: bool,
        conn_limit: usize,
        mesh_port: u16,
        initial: &[String],
        commands: tokio::sync::mpsc::UnboundedSender<Command>,
    ) -> Peering {
        let mut targets = Targets::new(targets::Config::default(), me.to_u64() ^ now.elapsed().as_nanos() as u64 ^ std::process::id() as u64);
        for t in initial {
            targets.add(now, t, Source::Configured);
        }
        Peering {
            me,
            endpoint,
            encrypted,
            conn_limit,
            mesh_port,
            conns: HashMap::new(),
            targets,
            dialling: HashMap::new(),
            resolved: HashMap::new(),
            dp,
            topology_generation: 0,
            commands,
            duplicates: Duplicates::default(),
            kube_targets: BTreeSet::new(),
            target_peer: HashMap::new(),
            gossiped: HashSet::new(),
            gossip_peers: HashMap::new(),
            heard: HashMap::new(),
            known: (Vec::new(), now),
            wanted: None,
            let_go: HashMap::new(),
        }
    }

    /// Configured targets (for `weft status targets`).
    pub fn configured_targets(&self) -> Vec<String> {
        self.targets.configured()
    }

    /// Handles an API command.
    pub fn command(&mut self, now: Instant, d: &Daemon, cmd: Command) {
        match cmd {
            Command::Connect(a) => {
                tracing::info!("connect {a} (requested through the API)");
                self.targets.add(now, &a, Source::Configured);
            }
            Command::Forget(a) => {
                tracing::info!("forget {a} (requested through the API)");
                self.targets.forget(&a);
            }
            // A target forgotten while its name was being looked up stays forgotten.
            Command::Resolved(t, _) if self.targets.state(&t).is_none() => {}
            Command::Resolved(t, Ok(addr)) => self.dial(d, t, addr),
            Command::Resolved(t, Err(e)) => {
                tracing::info!("peer {t}: {e}");
                self.dial_failed(now, d, &t, None, e);
            }
            Command::Kubernetes(set) => self.set_kube_targets(now, set),
        }
        self.publish_targets(d);
    }

    /// Makes the Nodes' targets `set`: new ones are dialled, those of Nodes gone are forgotten
    /// (unless configured too).
    fn set_kube_targets(&mut self, now: Instant, set: BTreeSet<String>) {
        for gone in self.kube_targets.difference(&set) {
            if self.targets.source(gone) == Some(Source::Kubernetes) {
                tracing::info!("forget {gone} (its Node is gone)");
                self.targets.forget(gone);
            }
        }
        for new in set.difference(&self.kube_targets) {
            tracing::info!("connect {new} (a Node)");
            self.targets.add(now, new, Source::Kubernetes);
        }
        self.kube_targets = set;
    }

    fn publish_targets(&self, d: &Daemon) {
        let mut listed: BTreeSet<String> = self.targets.configured().into_iter().collect();
        listed.extend(self.kube_targets.iter().filter(|t| self.targets.source(t).is_some()).cloned());
        *d.targets.lock().unwrap_or_else(|p| p.into_inner()) = listed;
    }

    /// Dials due targets, learns targets from gossip, runs timers and flushes messages.
    pub fn tick(&mut self, now: Instant, d: &Daemon) {
        self.learn_targets(now, d);
        self.close_unwanted(now, d);
        self.let_go.retain(|_, at| now.saturating_duration_since(*at) < DEGREE_SETTLE);
        // Connections to peers not wanted (being let go) do not take the room of wanted ones.
        let counted = self.conns.keys().filter(|p| !self.is_parked(**p)).count();
        let room = self
            .conn_limit
            .saturating_sub(counted + self.dialling.len())
            .min(MAX_DIALS_IN_FLIGHT.saturating_sub(self.dialling.len()))
            .min(MAX_NEW_DIALS_PER_TICK);
        let routes = d.control().routes().load_full();
        let due = {
            let (live, resolved, gossip_peers) = (self.live(), &self.resolved, &self.gossip_peers);
            let (target_peer, wanted, let_go) = (&self.target_peer, &self.wanted, &self.let_go);
            let parked = |t: &str| {
                let gossiped = gossip_peers.get(t).filter(|s| s.len() == 1).and_then(|s| s.first().copied());
                let peer = target_peer.get(t).copied().or(gossiped);
                peer.is_some_and(|p| {
                    wanted.as_ref().is_some_and(|w| w.binary_search(&p).is_err())
                        && (let_go.contains_key(&p) || routes.next_hop(p).is_some_and(|h| h != p))
                })
            };
            self.targets.due_except(now, room, |t| covered(&live, resolved, gossip_peers, t) || parked(t))
        };
        for t in due {
            if let Ok(addr) = t.parse::<SocketAddr>() {
                self.dial(d, t, addr);
                continue;
            }
            // A host name: look it up beside the event loop, so a slow resolver stalls nothing.
            let tx = self.commands.clone();
            tokio::spawn(async move {
                let r = match tokio::net::lookup_host(t.as_str()).await {
                    Ok(mut a) => a.find(|a| a.is_ipv4()).ok_or_else(|| "name has no IPv4 address".to_owned()),
                    Err(e) => Err(format!("cannot resolve: {e}")),
                };
                let _ = tx.send(Command::Resolved(t, r));
            });
        }
        // Whether each mesh connection still hears its peer (keep-alives arrive every fifth of
        // the peer timeout): tells a blocked sleeve port from a peer that is gone.
        let heard_within = d.config.peer_timeout / 2;
        for (p, u) in &self.conns {
            let n = u.handle.datagrams_received();
            let e = self.heard.entry(*p).or_insert((n, now));
            if n != e.0 {
                *e = (n, now);
            }
        }
        let heard = |p: &PeerName| self.heard.get(p).is_some_and(|(_, at)| now.saturating_duration_since(*at) < heard_within);
        let health: Vec<(PeerName, bool, bool, usize, u16)> = self
            .dp
            .links
            .all()
            .iter()
            .map(|l| (l.peer, l.health().liveness.state(now) != PeerState::Dead, heard(&l.peer), l.datagram(), crate::dataplane::ip_mtu(l)))
            .collect();
        {
            let mut c = d.control();
            for (p, alive, mesh_heard, datagram, carried) in health {
                c.set_sleeve(p, alive, mesh_heard, datagram);
                c.set_carried_mtu(p, u32::from(carried).min(d.pod_mtu()));
            }
            c.handle_timeout(now);
        }
        let ipam = d.ipam.with(|i| i.handle_timeout(now));
        if let Err(e) = ipam {
            tracing::warn!("IPAM: {}", chain(&e));
        }
        self.flush(now, d);
    }

    /// The connected peers and their connections' addresses.
    fn live(&self) -> Vec<(PeerName, IpAddr)> {
        self.conns.values().map(|u| (u.info.peer, u.info.remote.ip())).collect()
    }

    /// The peer gossip reports at target `t`'s address, when there is exactly one.
    fn gossip_peer(&self, t: &str) -> Option<PeerName> {
        self.gossip_peers.get(t).filter(|s| s.len() == 1).and_then(|s| s.first().copied())
    }

    fn dial(&mut self, d: &Daemon, t: String, addr: SocketAddr) {
        let now = Instant::now();
        self.resolved.insert(t.clone(), addr);
        let peer = self.target_peer.get(&t).copied().or_else(|| self.gossip_peer(&t));
        if covered(&self.live(), &self.resolved, &self.gossip_peers, &t) {
            self.targets.connected(now, &t);
            d.control().dialling(addr, peer);
            return;
        }
        if self.endpoint.handshaking_with(addr.ip()) {
            tracing::debug!(target = %t, "a connection from {addr} is being handshaken: not dialling it now");
            self.targets.postpone(now, &t, HANDSHAKING_DELAY);
            return;
        }
        if let Err(e) = route_to(addr) {
            let reason = format!("no route to {addr} from this host ({e})");
            if self.targets.drop_target(&t, &reason) {
                tracing::info!(target = %t, "not dialling a gossiped address: {reason}; dropped");
                d.control().dropped(addr, peer, reason);
            } else {
                tracing::info!(target = %t, "not dialling: {reason}");
                self.dial_failed(now, d, &t, Some(addr), reason);
            }
            return;
        }
        d.control().dialling(addr, peer);
        if self.targets.is_recent(now, &t) {
            // 1 s, then 2, 4 and 8 s after quick retries that timed out (a loaded peer).
            self.endpoint.connect_within(addr, RECENT_DIAL_TIMEOUT * (1 << self.targets.quick_failures(&t).min(3)));
        } else {
            self.endpoint.connect(addr);
        }
        self.dialling.insert(addr, t);
    }

    fn dial_failed(&mut self, now: Instant, d: &Daemon, target: &str, addr: Option<SocketAddr>, reason: String) {
        let retry = self.targets.failed(now, target, &reason);
        let addr = addr.or_else(|| self.resolved.get(target).copied());
        if let Some(a) = addr {
            self.record_failure(now, d, target, a, None, reason, retry);
        }
    }

    /// Shows a failed target in the control plane's records: retrying, or dropped (said once in
    /// the log), or nothing more.
    #[allow(clippy::too_many_arguments)]
    fn record_failure(&self, now: Instant, d: &Daemon, target: &str, addr: SocketAddr, peer: Option<PeerName>, reason: String, retry: Option<Instant>) {
        let peer = peer.or_else(|| self.target_peer.get(target).copied()).or_else(|| self.gossip_peer(target));
        if retry.is_none() && self.targets.state(target) == Some(targets::State::Dropped) {
            tracing::info!(%target, "giving up on a gossiped address after repeated failures (last: {reason})");
            d.control().dropped(addr, peer, format!("given up after repeated failures; last: {reason}"));
        } else {
            d.control().lost(now, addr, peer, reason, retry);
        }
    }

    /// Addresses that gossip reports for peers we are not connected to become targets.
    fn learn_targets(&mut self, now: Instant, d: &Daemon) {
        let c = d.control();
        let topo = c.topology();
        if topo.generation() == self.topology_generation {
            return;
        }
        self.topology_generation = topo.generation();
        let mut learned = Vec::new();
        let mut gossiped = HashSet::new();
        // Under a connection limit below the cluster size, gossip offers only the peers of the
        // bounded-degree mesh (all of them otherwise).
        let mut known: Vec<PeerName> = topo.entries().map(|e| e.name).collect();
        known.sort_unstable();
        let chosen = weft_mesh::degree::choose(self.me, &known, self.conn_limit);
        if known != self.known.0 {
            self.wanted = (known.len() > self.conn_limit + 1).then(|| weft_mesh::degree::partners(self.me, &known, self.conn_limit));
            self.known = (known, now);
        }
        let mut gossip_peers: HashMap<String, BTreeSet<PeerName>> = HashMap::new();
        for e in topo.entries() {
            for conn in &e.connections {
                if conn.remote == self.me || !conn.established {
                    continue;
                }
                let a = SocketAddr::new(conn.addr.ip(), self.mesh_port).to_string();
                gossip_peers.entry(a.clone()).or_default().insert(conn.remote);
                if !self.conns.contains_key(&conn.remote) {
                    if chosen.binary_search(&conn.remote).is_ok() {
                        learned.push((a, conn.remote));
                    }
                    gossiped.insert((e.name, conn.remote));
                }
            }
        }
        drop(c);
        self.gossip_peers = gossip_peers;
        for (a, p) in learned {
            if self.targets.state(&a).is_none() {
                // The peer with the smaller name dials: the connection both ends keep.
                let delay = if p < self.me { LARGER_NAME_DELAY } else { GOSSIP_DIAL_DELAY };
                self.targets.add_after(now, &a, Source::Gossip, delay);
            }
        }
        self.dial_the_returned(now, gossiped);
    }

    /// Whether `p` is not wanted under the connection limit (always false without one).
    fn is_parked(&self, p: PeerName) -> bool {
        self.wanted.as_ref().is_some_and(|w| w.binary_search(&p).is_err())
    }

    /// Closes one settled connection to a peer no longer wanted, if the peer stays reachable
    /// without it.
    fn close_unwanted(&mut self, now: Instant, d: &Daemon) {
        if self.wanted.is_none() || now.saturating_duration_since(self.known.1) < DEGREE_SETTLE {
            return;
        }
        let mut candidates: Vec<PeerName> = self
            .conns
            .iter()
            .filter(|(p, u)| self.is_parked(**p) && now.saturating_duration_since(u.since) >= DEGREE_SETTLE)
            .map(|(p, _)| *p)
            .collect();
        candidates.sort_unstable();
        let reachable_without = |p: PeerName| {
            let c = d.control();
            let topo = c.topology();
            let mut own = topo.own().clone();
            own.connections.retain(|c| c.remote != p);
            let graph = weft_mesh::routes::Graph::from_entries(topo.entries().filter(|e| e.name != self.me).chain(std::iter::once(&own)));
            graph.index(p).is_some_and(|i| graph.reachable_from(self.me)[i])
        };
        if let Some(p) = candidates.into_iter().find(|p| reachable_without(*p))
            && let Some(u) = self.conns.get(&p)
        {
            tracing::info!(peer = %p, remote = %u.info.remote, limit = self.conn_limit, "closing the connection to a peer not chosen under the connection limit (it is reached through relays)");
            u.handle.close("not chosen under the connection limit");
            self.let_go.insert(p, now);
        }
    }

    /// A peer we are not connected to that gossip newly reports connected is back (it
    /// restarted, or its path returned): dial the targets that last reached it at once, their
    /// backoff reset, rather than when their retry falls due.
    fn dial_the_returned(&mut self, now: Instant, gossiped: HashSet<(PeerName, PeerName)>) {
        let back: HashSet<PeerName> = gossiped.difference(&self.gossiped).map(|(_, p)| *p).collect();
        self.gossiped = gossiped;
        for (t, p) in &self.target_peer {
            if back.contains(p) && !self.conns.contains_key(p) && self.targets.dial_now(now, t) {
                tracing::debug!(peer = %p, target = %t, "gossip reports the peer connected again: dialling it now");
            }
        }
    }

    /// Handles one event from the endpoint.
    pub fn event(&mut self, now: Instant, d: &Daemon, ev: Event) {
        match ev {
            Event::Up(info, handle) => self.up(now, d, info, handle),
            Event::Message { id, peer, msg } => {
                if self.conns.get(&peer).is_some_and(|u| u.info.id == id) {
                    self.message(now, d, peer, msg);
                }
            }
            Event::Rekey { id, peer, epoch, secret } => {
                if let Some(link) = self.dp.links.get(peer).filter(|l| l.conn_id == id) {
                    tracing::debug!(%peer, epoch, "sleeve: new session secret");
                    link.session().rekey(&secret, now);
                }
            }
            Event::Down { id, peer, remote, direction, reason } => self.down(now, d, id, peer, remote, direction, reason),
        }
        self.flush(now, d);
    }

    fn up(&mut self, now: Instant, d: &Daemon, info: ConnInfo, handle: ConnHandle) {
        if let Err(e) = info.peer.check() {
            tracing::warn!(remote = %info.remote, "mesh connection refused: the peer calls itself {e}");
            self.refuse(now, d, &info, &handle, format!("refused: {e}"));
            return;
        }
        if let Some(old) = self.conns.get(&info.peer) {
            match self.duplicates.decide(now, self.me, info.peer, Side::of(&old.info), Side::of(&info)) {
                Verdict::KeepOld => {
                    tracing::info!(peer = %info.peer, kept = %old.info.remote, closed = %info.remote, "duplicate connection: keeping the older one");
                    handle.close("duplicate connection");
                    self.mark_target(now, &info);
                    return;
                }
                Verdict::Conflict => {
                    let (o, n) = (&old.info, &info);
                    let reason = format!(
                        "two live routers are named {}: this one at {} (incarnation {}) and one at {} (incarnation {}), connected already; \
                         this connection is refused. Was an identity file copied? Give one of them a new identity (move its state directory's `identity` away)",
                        n.peer, n.remote, n.incarnation, o.remote, o.incarnation
                    );
                    let text = format!("two live routers share the name {}: keeping the connection from {}, refusing the one from {}", n.peer, o.remote, n.remote);
                    if self.duplicates.report(now, n.peer, n.remote) {
                        tracing::error!(peer = %n.peer, connected = %o.remote, refused = %n.remote, "{text} (said again at most every minute)");
                    } else {
                        tracing::debug!("{text}");
                    }
                    self.refuse(now, d, &info, &handle, reason);
                    return;
                }
                Verdict::ReplaceOld => {
                    tracing::info!(peer = %info.peer, closed = %old.info.remote, kept = %info.remote, "duplicate connection: replacing the older one");
                    old.handle.close("duplicate connection");
                }
            }
        }
        let sp = &info.sleeve;
        // Both ends install a new secret within milliseconds of each other (the Rekey message
        // crosses the QUIC connection first), so a short switch delay is safe.
        let config = if self.encrypted { SleeveConfig { secret_switch_delay: SECRET_SWITCH_DELAY, ..SleeveConfig::default() } } else { SleeveConfig::plain() };
        let role = if sp.initiator { Role::Initiator } else { Role::Responder };
        let session = Session::new(&sp.secret, role, SessionIds { local: sp.local_index, remote: sp.remote_index }, config, now);
        let link = SleeveLink::new(info.peer, info.id, session, sp.remote, DEFAULT_DATAGRAM, d.liveness(), now);
        self.dp.links.insert(Arc::new(link));
        d.control().connected(now, info.peer, &info.nickname, info.remote, info.direction, d.pod_mtu());
        self.mark_target(now, &info);
        self.heard.insert(info.peer, (handle.datagrams_received(), now));
        self.conns.insert(info.peer, Up { info, handle, since: now });
    }

    /// Closes an authenticated connection telling the peer why; a dialled one is retried later
    /// (with backoff), an accepted one is shown as failed, both with the reason.
    fn refuse(&mut self, now: Instant, d: &Daemon, info: &ConnInfo, handle: &ConnHandle, reason: String) {
        handle.close(&reason);
        let target = if info.direction == Direction::Outbound { self.dialling.remove(&info.remote) } else { None };
        match target {
            Some(t) => {
                let retry = self.targets.failed(now, &t, &reason);
                self.record_failure(now, d, &t, info.remote, Some(info.peer), reason, retry);
            }
            None => d.control().refused(info.remote, Some(info.peer), info.direction, reason),
        }
    }

    fn mark_target(&mut self, now: Instant, info: &ConnInfo) {
        if info.direction == Direction::Outbound
            && let Some(t) = self.dialling.remove(&info.remote)
        {
            self.targets.connected(now, &t);
            self.target_peer.insert(t, info.peer);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn down(&mut self, now: Instant, d: &Daemon, id: Option<u64>, peer: Option<PeerName>, remote: SocketAddr, direction: Direction, reason: String) {
        let current = peer.and_then(|p| self.conns.get(&p)).is_some_and(|u| Some(u.info.id) == id);
        if let Some(p) = peer.filter(|_| current) {
            self.conns.remove(&p);
            self.heard.remove(&p);
            self.dp.links.remove(p, id.unwrap_or(0));
            self.dp.forget_peer(p);
            d.control().lost(now, remote, Some(p), reason.clone(), None);
            if self.is_parked(p) {
                // Closed by us or by the peer because neither wants it: its targets are parked
                // (not dialled while it is reached through relays), not failures.
                tracing::info!(peer = %p, %remote, "connection to a peer not chosen under the connection limit closed: {reason}");
                self.let_go.insert(p, now);
                for t in self.targets_of(p, remote) {
                    if self.targets.state(&t) == Some(targets::State::Connected) {
                        self.targets.lost(now, &t, &reason);
                    }
                }
                return;
            }
            // Every target it covered (the address dialled, the address it dialled us from, the
            // addresses gossip reports for it) is dialled again: quickly if it had lasted.
            let released: Vec<String> = self
                .targets_of(p, remote)
                .into_iter()
                .filter(|t| self.targets.state(t) == Some(targets::State::Connected))
                .collect();
            for t in released {
                let retry = self.targets.lost(now, &t, &reason);
                if let Some(a) = self.resolved.get(&t).copied() {
                    self.record_failure(now, d, &t, a, Some(p), reason.clone(), retry);
                }
            }
            return;
        }
        if id.is_some() {
            return; // a duplicate we closed
        }
        // A dial that failed: retry with backoff, unless its peer got connected meanwhile (the
        // other end's dial won).
        let Some(t) = (if direction == Direction::Outbound { self.dialling.remove(&remote) } else { None }) else {
            tracing::debug!(%remote, ?direction, "mesh connection attempt failed: {reason}");
            return;
        };
        if covered(&self.live(), &self.resolved, &self.gossip_peers, &t) {
            self.targets.connected(now, &t);
            d.control().dialling(remote, peer);
            return;
        }
        let retry = self.targets.failed(now, &t, &reason);
        let a = self.resolved.get(&t).copied().unwrap_or(remote);
        self.record_failure(now, d, &t, a, peer, reason, retry);
    }

    /// The targets that stand for peer `p`, connected at `remote`.
    fn targets_of(&self, p: PeerName, remote: SocketAddr) -> Vec<String> {
        let mut out: BTreeSet<String> = self.target_peer.iter().filter(|(_, q)| **q == p).map(|(t, _)| t.clone()).collect();
        out.extend(self.resolved.iter().filter(|(_, a)| a.ip() == remote.ip()).map(|(t, _)| t.clone()));
        out.extend(self.gossip_peers.iter().filter(|(_, s)| s.contains(&p)).map(|(t, _)| t.clone()));
        out.into_iter().collect()
    }

    fn message(&mut self, now: Instant, d: &Daemon, from: PeerName, msg: Message) {
        match msg {
            Message::Gossip(bytes) => {
                if let Err(e) = d.control().gossip(now, from, &bytes) {
                    tracing::warn!(peer = %from, "gossip refused: {}", chain(&e));
                }
            }
            Message::Ipam { origin, dest, payload } => {
                let routes = d.control().routes().load_full();
                if dest == EVERYONE {
                    for hop in routes.broadcast_next_hops(origin) {
                        self.send_to(*hop, Message::Ipam { origin, dest, payload: payload.clone() });
                    }
                } else if dest != self.me {
                    if let Some(hop) = routes.next_hop(dest) {
                        self.send_to(hop, Message::Ipam { origin, dest, payload });
                    }
                    return;
                }
                if let Err(e) = d.ipam.with(|i| i.handle(now, origin, &payload)) {
                    tracing::warn!(peer = %origin, "IPAM message refused: {}", chain(&e));
                }
            }
            other => tracing::debug!(peer = %from, "unexpected control message {other:?}"),
        }
    }

    fn send_to(&self, peer: PeerName, msg: Message) {
        if let Some(u) = self.conns.get(&peer) {
            u.handle.send(msg);
        }
    }

    /// Sends what the control plane and IPAM have queued.
    pub fn flush(&mut self, now: Instant, d: &Daemon) {
        loop {
            let t = d.control().poll_transmit(now);
            let Some(t) = t else { break };
            self.send_to(t.to, Message::Gossip(t.payload));
        }
        let routes = d.control().routes().load_full();
        loop {
            let t = match d.ipam.with(|i| i.poll_transmit(now)) {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("IPAM: {}", chain(&e));
                    break;
                }
            };
            match t.to {
                Destination::Peer(p) => {
                    if let Some(hop) = routes.next_hop(p) {
                        self.send_to(hop, Message::Ipam { origin: self.me, dest: p, payload: t.payload });
                    }
                }
                Destination::All => {
                    for hop in routes.broadcast_next_hops(self.me) {
                        self.send_to(*hop, Message::Ipam { origin: self.me, dest: EVERYONE, payload: t.payload.clone() });
                    }
                }
            }
        }
    }

    /// Smoothed round-trip times of the connections, for status.
    pub fn rtts(&self) -> Vec<(PeerName, Duration)> {
        self.conns.values().map(|u| (u.info.peer, u.handle.rtt())).collect()
    }

    /// Hands this peer's part of the range to the lowest-named live peer (and releases its
    /// allocations), then keeps handling mesh events and IPAM timers (which send the hand-over
    /// again) until the receiver acknowledges that it has persisted the range, at most
    /// `timeout`. Returns the outcome (`None` when nothing was handed over); a timeout is logged.
    pub async fn hand_over(&mut self, d: &Daemon, events: &mut UnboundedReceiver<Event>, timeout: Duration) -> Option<HandOver> {
        let start = Instant::now();
        let live: Vec<PeerName> = {
            let c = d.control();
            let routes = c.routes().load_full();
            c.topology().entries().map(|e| e.name).filter(|p| routes.next_hop(*p).is_some()).collect()
        };
        let to = match d.ipam.with(|i| i.shutdown(start, &live)) {
            Ok(Some(to)) => to,
            Ok(None) => {
                tracing::info!("IPAM: nothing to hand over");
                return None;
            }
            Err(e) => {
                tracing::warn!("IPAM: cannot hand the range over: {}", chain(&e));
                return None;
            }
        };
        tracing::info!(peer = %to, "IPAM: handing this peer's range over; waiting for the peer to acknowledge it");
        self.flush(start, d);
        let deadline = tokio::time::Instant::from_std(start + timeout);
        loop {
            let state = d.ipam.with(|i| i.core().hand_over());
            if let Some(HandOver::Acknowledged(p)) = state {
                tracing::info!(peer = %p, "IPAM: the peer acknowledged the hand-over after {:?}", start.elapsed());
                return state;
            }
            let timer = d.ipam.with(|i| i.poll_timeout()).map(tokio::time::Instant::from_std).unwrap_or(deadline).min(deadline);
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.event(Instant::now(), d, ev),
                    None => break,
                },
                _ = tokio::time::sleep_until(timer) => {
                    let now = Instant::now();
                    if let Err(e) = d.ipam.with(|i| i.handle_timeout(now)) {
                        tracing::warn!("IPAM: {}", chain(&e));
                    }
                    d.control().handle_timeout(now);
                    self.flush(now, d);
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        tracing::warn!(
            peer = %to,
            "IPAM: the peer did not acknowledge the hand-over within {timeout:?}; leaving anyway (if it never got it, this peer's range stays under this peer's name: `weft rmpeer` this peer to reclaim it)"
        );
        d.ipam.with(|i| i.core().hand_over())
    }

    /// Tells every peer we are going (SIGTERM) and waits, at most 5 s, until each has
    /// acknowledged it (its connection closed), then closes the endpoint.
    pub async fn shutdown(&mut self) {
        for u in self.conns.values() {
            u.handle.close("peer shutting down");
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_TIMEOUT;
        for (p, u) in &self.conns {
            if tokio::time::timeout_at(deadline, u.handle.closed()).await.is_err() {
                tracing::warn!(peer = %p, "connection still open {SHUTDOWN_TIMEOUT:?} after saying bye: closing it");
            }
        }
        self.endpoint.shutdown().await;
    }
}

/// Whether target `t` needs no dial now: a connection from its address is up, or every peer
/// gossip reports at its address is connected (through whichever address: e.g. the outside
/// address of a NAT the peer is behind).
/// `live` lists the connected peers and their connections' addresses.
fn covered(live: &[(PeerName, IpAddr)], resolved: &HashMap<String, SocketAddr>, gossip_peers: &HashMap<String, BTreeSet<PeerName>>, t: &str) -> bool {
    let ip = resolved.get(t).map(|a| a.ip()).or_else(|| t.parse::<SocketAddr>().ok().map(|a| a.ip()));
    ip.is_some_and(|ip| live.iter().any(|(_, a)| *a == ip))
        || gossip_peers.get(t).is_some_and(|s| !s.is_empty() && s.iter().all(|p| live.iter().any(|(q, _)| q == p)))
}

/// Whether this host has a route to `addr`: the kernel's route lookup, through `connect` on a
/// UDP socket (nothing is sent). Only "no route" is an error: should the check itself fail
/// (no socket to be had), the dial decides.
fn route_to(addr: SocketAddr) -> Result<(), std::io::Error> {
    use std::io::ErrorKind::{HostUnreachable, NetworkUnreachable};
    let any: SocketAddr = if addr.is_ipv4() { (std::net::Ipv4Addr::UNSPECIFIED, 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    match std::net::UdpSocket::bind(any).and_then(|s| s.connect(addr)) {
        Err(e) if matches!(e.kind(), NetworkUnreachable | HostUnreachable) => Err(e),
        Err(e) => {
            tracing::debug!("route check for {addr}: {e}");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: PeerName = PeerName([0x0e, 0, 0, 0, 0, 9]);
    const PEER: PeerName = PeerName([0x0e, 0, 0, 0, 0, 5]);

    fn side(ip: u8, incarnation: u64, direction: Direction) -> Side {
        Side { remote: SocketAddr::from(([192, 0, 2, ip], 6783)), incarnation, direction }
    }

    #[test]
    fn one_router_dialling_and_dialled_at_once_keeps_the_smaller_names_connection() {
        let now = Instant::now();
        let mut d = Duplicates::default();
        // PEER < ME: keep what PEER dialled (our inbound one), whichever came first.
        let (out, inb) = (side(1, 3, Direction::Outbound), side(1, 3, Direction::Inbound));
        assert_eq!(d.decide(now, ME, PEER, out, inb), Verdict::ReplaceOld);
        assert_eq!(d.decide(now, ME, PEER, inb, out), Verdict::KeepOld);
        // A restart replaces its connection at once; an older incarnation never replaces a newer.
        assert_eq!(d.decide(now, ME, PEER, side(1, 3, Direction::Inbound), side(1, 4, Direction::Inbound)), Verdict::ReplaceOld);
        assert_eq!(d.decide(now, ME, PEER, side(1, 4, Direction::Inbound), side(1, 3, Direction::Outbound)), Verdict::KeepOld);
        // None of this is a conflict, however often it happens.
        for _ in 0..5 {
            assert_ne!(d.decide(now, ME, PEER, out, inb), Verdict::Conflict);
        }
    }

    #[test]
    fn a_router_that_restarted_elsewhere_replaces_its_dead_connection_once() {
        let now = Instant::now();
        let mut d = Duplicates::default();
        assert_eq!(d.decide(now, ME, PEER, side(1, 3, Direction::Inbound), side(2, 4, Direction::Inbound)), Verdict::ReplaceOld);
        // Its old address never comes back; a later restart at a third address is no conflict either.
        let later = now + Duration::from_secs(30);
        assert_eq!(d.decide(later, ME, PEER, side(2, 4, Direction::Inbound), side(3, 5, Direction::Inbound)), Verdict::ReplaceOld);
    }

    #[test]
    fn copies_with_one_incarnation_are_a_conflict_and_the_first_connection_stays() {
        let now = Instant::now();
        let mut d = Duplicates::default();
        let (a, b) = (side(1, 7, Direction::Inbound), side(2, 7, Direction::Inbound));
        // The first duplicate might be one multi-homed router: keep the old one, remember b.
        assert_eq!(d.decide(now, ME, PEER, a, b), Verdict::KeepOld);
        // b dials again while a is up: two live routers. Every further attempt is refused too.
        for i in 1..=5 {
            assert_eq!(d.decide(now + Duration::from_secs(i * 10), ME, PEER, a, b), Verdict::Conflict, "attempt {i}");
        }
    }

    #[test]
    fn a_copy_started_later_takes_over_once_and_the_original_is_then_refused() {
        let now = Instant::now();
        let mut d = Duplicates::default();
        let (original, copy) = (side(1, 7, Direction::Inbound), side(2, 8, Direction::Inbound));
        // Indistinguishable from a restart that moved: the newer incarnation is taken ...
        assert_eq!(d.decide(now, ME, PEER, original, copy), Verdict::ReplaceOld);
        // ... but the original comes back, older, while the copy is up: a conflict, for good.
        for i in 1..=5 {
            assert_eq!(d.decide(now + Duration::from_secs(i), ME, PEER, copy, original), Verdict::Conflict, "attempt {i}");
        }
        // An older incarnation from another address is a conflict even the first time.
        let mut fresh = Duplicates::default();
        assert_eq!(fresh.decide(now, ME, PEER, copy, original), Verdict::Conflict);
    }

    #[test]
    fn a_conflict_is_logged_once_a_minute() {
        let now = Instant::now();
        let mut d = Duplicates::default();
        let at = |ip| side(ip, 1, Direction::Inbound).remote;
        let logged: Vec<bool> = (0..130).map(|s| d.report(now + Duration::from_secs(s), PEER, at(1))).collect();
        assert_eq!(logged.iter().filter(|l| **l).count(), 3, "at 0, 60 and 120 s");
        assert!(logged[0] && logged[60] && logged[120]);
        assert!(d.report(now + Duration::from_secs(1), PEER, at(2)), "another address is another conflict");
    }

    #[test]
    fn the_route_check_tells_no_route_from_a_route() {
        // Loopback always has a route; 203.0.113.0/24 has none in a namespace with only loopback
        // (the unit tests may run anywhere, so only the first is asserted everywhere).
        assert!(route_to(SocketAddr::from(([127, 0, 0, 1], 6783))).is_ok());
    }

    #[test]
    fn a_target_is_covered_by_a_connection_from_its_address_or_of_every_peer_gossip_reports_there() {
        const OTHER: PeerName = PeerName([0x0e, 0, 0, 0, 0, 6]);
        let nat: IpAddr = [203, 0, 113, 7].into();
        let mut resolved: HashMap<String, SocketAddr> = HashMap::new();
        resolved.insert("b:6783".into(), SocketAddr::from(([192, 0, 2, 2], 6783)));
        let mut gossip: HashMap<String, BTreeSet<PeerName>> = HashMap::new();
        gossip.insert("203.0.113.7:6783".into(), [PEER, OTHER].into_iter().collect());
        assert!(!covered(&[], &resolved, &gossip, "203.0.113.7:6783"), "nothing is connected");
        // PEER connected from its inside address: the NAT's address also stands for OTHER.
        let inside: IpAddr = [10, 9, 0, 5].into();
        assert!(!covered(&[(PEER, inside)], &resolved, &gossip, "203.0.113.7:6783"));
        assert!(covered(&[(PEER, inside), (OTHER, inside)], &resolved, &gossip, "203.0.113.7:6783"));
        // A connection from the address itself (the peer dialled us), by address or host name.
        assert!(covered(&[(OTHER, nat)], &resolved, &gossip, "203.0.113.7:6783"));
        assert!(covered(&[(OTHER, [192, 0, 2, 2].into())], &resolved, &gossip, "b:6783"));
        assert!(!covered(&[(OTHER, [192, 0, 2, 3].into())], &resolved, &gossip, "b:6783"));
    }

    #[test]
    fn what_was_let_go_is_forgotten_after_the_window() {
        let now = Instant::now();
        let mut d = Duplicates::default();
        let (a, b) = (side(1, 7, Direction::Outbound), side(2, 7, Direction::Outbound));
        assert_eq!(d.decide(now, ME, PEER, a, b), Verdict::KeepOld);
        assert_eq!(d.decide(now + CONFLICT_WINDOW + Duration::from_secs(1), ME, PEER, a, b), Verdict::KeepOld);
    }
}
