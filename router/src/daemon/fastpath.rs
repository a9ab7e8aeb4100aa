//! The fast path's control side: which peers may use kernel VXLAN, the heartbeats that prove
//! the path per peer, and the kernel state that steers their pods' MACs onto it.
//!
//! A peer is a *candidate* when it is directly connected (it has a sleeve link), its topology
//! entry does not say it has no fast path (an entry may arrive after the connection), and — with a cluster password — its underlay address is in
//! `--trusted-subnets`. A candidate whose heartbeats say it sends from another address than the
//! one we see (a NAT between us) is dropped. For each candidate the fast-path thread (`weft-fastpath`)
//! runs a [`weft_fastpath::path::Path`]: every 250 ms a heartbeat goes out of `weft-vxlan` to the
//! peer's heartbeat MAC (a VXLAN FDB entry points it at the peer's address); heartbeats arrive
//! at our own heartbeat MAC, a local entry of the bridge, which hands them up to the bridge
//! device where a raw socket reads them — they never reach a pod.
//!
//! While a peer's path is established, every MAC the switch has learned behind that peer gets
//! two kernel entries: `MAC dst PEER dev weft-vxlan self` (where VXLAN sends it) and
//! `MAC dev weft-vxlan master static sticky` (the bridge sends it to `weft-vxlan`, not to
//! `weft-tap`, and learning elsewhere cannot move it); so a unicast frame to a fast-path peer
//! takes exactly one path, and the router never sees it. Broadcast and unknown unicast still
//! reach only `weft-tap` (`weft-vxlan` floods nothing and learns nothing, and is isolated from
//! `weft-tap`), and the router floods them over the sleeve as before. Entries are reconciled
//! every [`RECONCILE`] from the switch, and removed when the path goes on hold. The switch
//! entries of MACs on an established path are refreshed (the router no longer sees their
//! frames), so they live as long as the path does.
//!
//! Nothing is flushed on exit: the kernel keeps forwarding while the router restarts. On start
//! the thread adopts the entries it finds: those of a peer whose path becomes established are
//! taught to the switch and kept; those of a peer whose path goes on hold, and any left after
//! [`GRACE`], are removed. The entries of a peer that disconnects are kept for [`GRACE`] too
//! (it may be restarting), and its path with them, although the switch forgets the peer's MACs
//! when its connection is lost: they are taught to the switch again once it is connected, so a
//! router restart of any length within [`GRACE`] does not interrupt pod traffic on either side.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use weft_fastpath::path::{self, Path, State};
use weft_fastpath::wire::{self, Heartbeat, HeartbeatRepr};
use weft_kernel::netlink::{BridgeFdbKind, FdbEntry};
use weft_kernel::packet::PacketSocket;
use weft_kernel::{Handle, chain};
use weft_mesh::ipam::Cidr;
use weft_mesh::peer::PeerName;

use crate::dataplane::Shared;
use crate::dataplane::ethernet::Mac;
use crate::dataplane::switch::Origin;

/// The VXLAN device's name.
pub const VXLAN: &str = "weft-vxlan";
/// The VXLAN network identifier.
pub const VNI: u32 = 0x7766;
/// The fast path's UDP port.
pub const PORT: u16 = 6785;
/// How often kernel entries are reconciled with the switch.
pub const RECONCILE: Duration = Duration::from_millis(250);
/// How long entries found at start, or left by a peer that disconnected, are kept unproven.
pub const GRACE: Duration = Duration::from_secs(15);
/// The longest the thread sleeps while it has peers (a candidate's change, such as a restarted
/// peer connecting again, is seen within this); heartbeats wake it as they arrive.
const TICK: Duration = Duration::from_millis(50);

/// A peer that may use the fast path, as the control plane sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Its underlay address, as our connection sees it.
    pub ip: IpAddr,
    /// Our underlay address towards it.
    pub local: IpAddr,
    /// When the sleeve last heard from it.
    pub sleeve_rx: Option<Instant>,
    /// Since when its current connection is up.
    pub since: Instant,
}

/// A peer's fast-path state, for `status` and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Established, probing or on hold; `None` when it is not a candidate (NAT).
    pub state: Option<State>,
    /// Why it is not in use.
    pub reason: Option<String>,
}

/// What the control plane and the fast-path thread share.
#[derive(Debug, Default)]
pub struct FastShared {
    candidates: Mutex<HashMap<PeerName, Candidate>>,
    status: Mutex<HashMap<PeerName, PeerStatus>>,
    /// State changes to established.
    pub to_established: AtomicU64,
    /// State changes to on hold.
    pub to_on_hold: AtomicU64,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FastShared {
    /// Replaces the candidates.
    pub fn set_candidates(&self, c: HashMap<PeerName, Candidate>) {
        *lock(&self.candidates) = c;
    }

    /// The fast-path state of `peer`, if it is or was a candidate.
    pub fn status(&self, peer: PeerName) -> Option<PeerStatus> {
        lock(&self.status).get(&peer).cloned()
    }

    /// Peers by state word, for metrics.
    pub fn counts(&self) -> HashMap<&'static str, usize> {
        let mut out = HashMap::new();
        for s in lock(&self.status).values() {
            *out.entry(s.state.map_or("not candidate", State::as_str)).or_default() += 1;
        }
        out
    }
}

/// Which peers may use the fast path: the rules of the module doc, without the NAT check.
#[derive(Debug)]
pub struct Selector {
    /// Cluster password set: only trusted subnets.
    pub encrypted: bool,
    /// `--trusted-subnets`.
    pub trusted: Vec<Cidr>,
    locals: HashMap<IpAddr, IpAddr>,
    links: HashMap<PeerName, (u64, Instant)>,
}

impl Selector {
    /// A selector.
    pub fn new(encrypted: bool, trusted: Vec<Cidr>) -> Selector {
        Selector { encrypted, trusted, locals: HashMap::new(), links: HashMap::new() }
    }

    /// Whether the fast path may carry frames to a peer at `ip` unencrypted.
    pub fn trusted(&self, ip: IpAddr) -> bool {
        !self.encrypted || matches!(ip, IpAddr::V4(v4) if self.trusted.iter().any(|c| c.contains(u32::from(v4))))
    }

    /// The candidates among the directly connected peers of `dp`; `fastpath(peer)` is false for
    /// a peer whose topology entry says it has no fast path.
    pub fn candidates(&mut self, now: Instant, dp: &Shared, fastpath: impl Fn(PeerName) -> bool) -> HashMap<PeerName, Candidate> {
        let mut out = HashMap::new();
        let links = dp.links.all();
        self.links.retain(|p, _| links.iter().any(|l| l.peer == *p));
        for l in links {
            let ip = l.addr().ip();
            if !fastpath(l.peer) || !self.trusted(ip) {
                continue;
            }
            let since = match self.links.get(&l.peer) {
                Some(&(id, at)) if id == l.conn_id => at,
                _ => {
                    self.links.insert(l.peer, (l.conn_id, now));
                    now
                }
            };
            let local = match self.locals.get(&ip) {
                Some(a) => *a,
                None => match local_towards(ip) {
                    Some(a) => *self.locals.entry(ip).or_insert(a),
                    None => continue,
                },
            };
            out.insert(l.peer, Candidate { ip, local, sleeve_rx: l.last_rx(), since });
        }
        out
    }
}

/// Our address on the route to `ip` (no packet is sent).
fn local_towards(ip: IpAddr) -> Option<IpAddr> {
    let bind = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect((ip, PORT)).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// The running fast-path thread.
pub struct FastPath {
    shared: Arc<FastShared>,
    thread: JoinHandle<()>,
}

impl FastPath {
    /// Starts the thread; `bridge` is the pod bridge, `me` this peer.
    pub fn start(me: PeerName, bridge: String, dp: Arc<Shared>) -> std::io::Result<FastPath> {
        let shared = Arc::new(FastShared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("weft-fastpath".into()).spawn(move || {
            let mut w = Worker::new(me, bridge, dp, s);
            w.run();
        })?;
        Ok(FastPath { shared, thread })
    }

    /// What the thread shares.
    pub fn shared(&self) -> &Arc<FastShared> {
        &self.shared
    }

    /// Stops the thread; the kernel's entries stay (see the module doc).
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// One peer the thread tracks.
struct Peer {
    path: Path,
    cand: Candidate,
    /// Present among the candidates; if not, since when it is gone.
    gone: Option<Instant>,
}

struct Worker {
    me: PeerName,
    bridge: String,
    dp: Arc<Shared>,
    shared: Arc<FastShared>,
    nl: Option<Handle>,
    tx: Option<PacketSocket>,
    rx: Option<PacketSocket>,
    peers: HashMap<PeerName, Peer>,
    /// Peers whose heartbeats say they send from another address (NAT): advertised address.
    nat: HashMap<PeerName, (IpAddr, IpAddr)>,
    /// MAC → (peer, its address) as programmed in the kernel.
    programmed: HashMap<Mac, (PeerName, IpAddr)>,
    /// Entries found at start: MAC → address, until [`GRACE`] after `started`.
    adopted: HashMap<Mac, IpAddr>,
    /// Heartbeat entries programmed: peer → address.
    beats: HashMap<PeerName, IpAddr>,
    started: Instant,
    next_reconcile: Instant,
    seed: u64,
}

impl Worker {
    fn new(me: PeerName, bridge: String, dp: Arc<Shared>, shared: Arc<FastShared>) -> Worker {
        let now = Instant::now();
        let seed = (me.to_u64() ^ u64::from(std::process::id()).rotate_left(32) ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)) | 1;
        Worker {
            me,
            bridge,
            dp,
            shared,
            nl: None,
            tx: None,
            rx: None,
            peers: HashMap::new(),
            nat: HashMap::new(),
            programmed: HashMap::new(),
            adopted: HashMap::new(),
            beats: HashMap::new(),
            started: now,
            next_reconcile: now,
            seed,
        }
    }

    fn run(&mut self) {
        self.open();
        self.adopt();
        let mut buf = [0u8; 256];
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.update_candidates(now);
            self.receive(now, &mut buf);
            self.timers(now);
            if now >= self.next_reconcile {
                self.next_reconcile = now + RECONCILE;
                self.reconcile(now);
                self.publish(now);
            }
            self.wait(now);
        }
    }

    /// Sleeps until a heartbeat arrives or the next timer is due: at most [`TICK`] while there
    /// are peers, [`RECONCILE`] without (an idle router wakes a few times a second, not fifty).
    fn wait(&self, now: Instant) {
        let cap = if self.peers.is_empty() { RECONCILE } else { TICK };
        // Only the paths `timers` runs (not a departed peer's, nor one behind NAT).
        let paths = self.peers.iter().filter(|(n, p)| p.gone.is_none() && !self.nat.contains_key(*n)).map(|(_, p)| p.path.poll_timeout());
        let due = paths.chain([self.next_reconcile, now + cap]).min().unwrap_or(now + cap);
        let timeout = due.saturating_duration_since(Instant::now()).max(Duration::from_millis(2));
        match &self.rx {
            Some(rx) => {
                let mut fds = [PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
                let t = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
                if let Err(e) = poll(&mut fds, t)
                    && e != nix::errno::Errno::EINTR
                {
                    tracing::debug!("fast path: poll: {e}");
                    std::thread::sleep(timeout);
                }
            }
            None => std::thread::sleep(timeout),
        }
    }

    /// Opens (or reopens, after a repair recreated a device) the netlink handle and sockets.
    fn open(&mut self) {
        if self.nl.is_none() {
            match Handle::open() {
                Ok(nl) => self.nl = Some(nl),
                Err(e) => {
                    tracing::warn!("fast path: netlink: {}", chain(&e));
                    return;
                }
            }
        }
        let Some(nl) = self.nl.as_mut() else { return };
        let (vx, br) = match (nl.index(VXLAN), nl.index(&self.bridge)) {
            (Ok(v), Ok(b)) => (v, b),
            _ => return, // the plumbing repair creates them
        };
        if self.tx.as_ref().is_none_or(|s| s.ifindex() != vx) {
            match PacketSocket::open(vx, 0) {
                Ok(s) => self.tx = Some(s),
                Err(e) => tracing::warn!("fast path: raw socket on {VXLAN}: {e}"),
            }
        }
        if self.rx.as_ref().is_none_or(|s| s.ifindex() != br) {
            match PacketSocket::open(br, wire::ETHERTYPE) {
                Ok(s) => self.rx = Some(s),
                Err(e) => tracing::warn!("fast path: raw socket on {}: {e}", self.bridge),
            }
        }
    }

    /// Takes note of the per-MAC entries a previous run left.
    fn adopt(&mut self) {
        let Some(nl) = self.nl.as_mut() else { return };
        let Ok(entries) = nl.fdb_entries(VXLAN) else { return };
        for e in entries {
            if e.mac == [0; 6] || e.mac[0] == wire::heartbeat_mac([0; 6])[0] {
                continue;
            }
            if let Some(ip) = e.dst {
                self.adopted.insert(Mac(e.mac), ip);
            }
        }
        if !self.adopted.is_empty() {
            tracing::info!("fast path: found {} MAC entries of an earlier run: kept until their peers' paths are known (at most {GRACE:?})", self.adopted.len());
        }
    }

    fn update_candidates(&mut self, now: Instant) {
        let cands = lock(&self.shared.candidates).clone();
        tracing::trace!(n = cands.len(), "fast path: candidates");
        for (p, c) in &cands {
            if let Some((seen, adv)) = self.nat.get(p)
                && *seen == c.ip
            {
                let _ = adv;
                continue;
            }
            match self.peers.get_mut(p) {
                Some(peer) => {
                    if peer.gone.take().is_some() {
                        tracing::info!(peer = %p, "fast path: connected again; its path is kept ({})", peer.path.state().as_str());
                    }
                    if peer.cand.ip != c.ip {
                        tracing::info!(peer = %p, from = %peer.cand.ip, to = %c.ip, "fast path: the peer's address changed: probing afresh");
                        self.flush_peer(*p);
                        self.peers.remove(p);
                        continue;
                    }
                    peer.cand = c.clone();
                }
                None => {
                    self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    tracing::info!(peer = %p, addr = %c.ip, "fast path: candidate; probing the VXLAN path");
                    self.peers.insert(*p, Peer { path: Path::new(now, self.seed >> 1 | 1), cand: c.clone(), gone: None });
                }
            }
        }
        let gone: Vec<PeerName> = self.peers.keys().filter(|p| !cands.contains_key(p)).copied().collect();
        for p in gone {
            let Some(peer) = self.peers.get_mut(&p) else { continue };
            let since = *peer.gone.get_or_insert_with(|| {
                tracing::info!(peer = %p, "fast path: no longer connected; its entries are kept for {GRACE:?}");
                now
            });
            if now.saturating_duration_since(since) >= GRACE || self.nat.contains_key(&p) {
                tracing::info!(peer = %p, "fast path: gone for {GRACE:?}: its entries are removed");
                self.flush_peer(p);
                self.remove_beat(p);
                self.peers.remove(&p);
            }
        }
        self.nat.retain(|p, (seen, _)| cands.get(p).is_some_and(|c| c.ip == *seen));
    }

    fn receive(&mut self, now: Instant, buf: &mut [u8]) {
        for _ in 0..64 {
            let Some(rx) = self.rx.as_ref() else { return };
            let n = match rx.recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!("fast path: receive: {e}");
                    return;
                }
            };
            let hb = match Heartbeat::new_checked(&buf[..n]) {
                Ok(h) => HeartbeatRepr::parse(&h),
                Err(e) => {
                    tracing::debug!("fast path: not a heartbeat: {e}");
                    continue;
                }
            };
            if hb.dst != wire::heartbeat_mac(self.me.0) {
                continue;
            }
            let from = PeerName(hb.sender);
            let Some(peer) = self.peers.get_mut(&from) else { continue };
            if hb.underlay != peer.cand.ip {
                if !self.nat.contains_key(&from) {
                    tracing::info!(peer = %from, seen = %peer.cand.ip, advertised = %hb.underlay, "fast path: the peer sends from another address than we see (NAT between us): it stays on the sleeve");
                }
                self.nat.insert(from, (peer.cand.ip, hb.underlay));
                continue;
            }
            peer.path.handle(now, hb.nonce, hb.echo);
        }
    }

    fn timers(&mut self, now: Instant) {
        let mut out = Vec::new();
        let mut changes = Vec::new();
        for (p, peer) in &mut self.peers {
            if self.nat.contains_key(p) {
                continue;
            }
            // The peer's router is alive while the VXLAN path is silent when the sleeve heard
            // from it after the last heartbeat (by more than a heartbeat's interval), on a
            // connection up for longer than the hold time (a restarted router gets that long).
            let alive = peer.gone.is_none()
                && now.saturating_duration_since(peer.cand.since) >= path::HOLD
                && match (peer.cand.sleeve_rx, peer.path.last_heard()) {
                    (Some(s), Some(h)) => s > h + path::INTERVAL,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
            peer.path.set_sleeve_alive(now, alive);
            if now >= peer.path.poll_timeout() {
                peer.path.handle_timeout(now);
            }
            if peer.gone.is_none()
                && let Some(b) = peer.path.poll_transmit(now)
            {
                out.push((*p, peer.cand.ip, peer.cand.local, b));
            }
            while let Some(c) = peer.path.poll_change() {
                changes.push((*p, c));
            }
        }
        for (p, c) in changes {
            match c.to {
                State::Established => {
                    self.shared.to_established.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(peer = %p, "fast path established: {}", c.reason);
                }
                State::OnHold => {
                    self.shared.to_on_hold.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %p, "fast path on hold, traffic back on the sleeve: {}", c.reason);
                    self.flush_peer(p);
                }
                State::Probing => {}
            }
        }
        for (p, ip, local, b) in out {
            self.send_beat(p, ip, local, b);
        }
    }

    fn send_beat(&mut self, p: PeerName, ip: IpAddr, local: IpAddr, b: path::Beat) {
        if self.beats.get(&p) != Some(&ip) {
            let Some(nl) = self.nl.as_mut() else { return };
            match nl.fdb_replace(VXLAN, &FdbEntry { mac: wire::heartbeat_mac(p.0), dst: Some(ip) }) {
                Ok(()) => {
                    self.beats.insert(p, ip);
                }
                Err(e) => {
                    tracing::warn!(peer = %p, "fast path: heartbeat entry: {}", chain(&e));
                    return;
                }
            }
        }
        let repr = HeartbeatRepr { dst: wire::heartbeat_mac(p.0), src: wire::heartbeat_mac(self.me.0), sender: self.me.0, underlay: local, nonce: b.nonce, echo: b.echo };
        let mut frame = [0u8; wire::FRAME_LEN];
        repr.emit(&mut frame);
        if let Some(tx) = &self.tx
            && let Err(e) = tx.send(&frame)
        {
            tracing::debug!(peer = %p, "fast path: send heartbeat: {e}");
        }
    }

    fn remove_beat(&mut self, p: PeerName) {
        if let (Some(ip), Some(nl)) = (self.beats.remove(&p), self.nl.as_mut()) {
            let _ = nl.fdb_delete(VXLAN, &FdbEntry { mac: wire::heartbeat_mac(p.0), dst: Some(ip) });
        }
    }

    /// Removes every MAC entry programmed for `p` (its path went on hold or it left).
    fn flush_peer(&mut self, p: PeerName) {
        let macs: Vec<Mac> = self.programmed.iter().filter(|(_, (q, _))| *q == p).map(|(m, _)| *m).collect();
        let ip = self.peers.get(&p).map(|x| x.cand.ip);
        let mut adopted: Vec<(Mac, IpAddr)> = Vec::new();
        if let Some(ip) = ip {
            adopted = self.adopted.iter().filter(|(_, a)| **a == ip).map(|(m, a)| (*m, *a)).collect();
        }
        for (m, a) in &adopted {
            self.adopted.remove(m);
            self.unprogram(*m, *a);
        }
        for m in macs {
            if let Some((_, a)) = self.programmed.remove(&m) {
                self.unprogram(m, a);
            }
        }
    }

    fn unprogram(&mut self, m: Mac, ip: IpAddr) {
        let Some(nl) = self.nl.as_mut() else { return };
        // The bridge first, so no frame is sent to the VXLAN device without a destination.
        if let Err(e) = nl.bridge_fdb_delete(VXLAN, m.0)
            && !e.is_not_found()
        {
            tracing::warn!("fast path: {}", chain(&e));
        }
        if let Err(e) = nl.fdb_delete(VXLAN, &FdbEntry { mac: m.0, dst: Some(ip) })
            && !e.is_not_found()
        {
            tracing::warn!("fast path: {}", chain(&e));
        }
    }

    fn program(&mut self, m: Mac, ip: IpAddr) -> bool {
        let Some(nl) = self.nl.as_mut() else { return false };
        // The VXLAN destination first, then the bridge's entry that sends the MAC there.
        let r = nl.fdb_replace(VXLAN, &FdbEntry { mac: m.0, dst: Some(ip) }).and_then(|()| nl.bridge_fdb_add(VXLAN, m.0, BridgeFdbKind::StaticSticky));
        match r {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("fast path: program {m}: {}", chain(&e));
                false
            }
        }
    }

    /// Makes the kernel's per-MAC entries those of the switch's MACs behind established peers.
    fn reconcile(&mut self, now: Instant) {
        self.open();
        let established: HashMap<PeerName, IpAddr> =
            self.peers.iter().filter(|(_, x)| x.path.state() == State::Established).map(|(p, x)| (*p, x.cand.ip)).collect();
        let connected: HashSet<PeerName> = self.peers.iter().filter(|(_, x)| x.gone.is_none()).map(|(p, _)| *p).collect();
        let by_ip: HashMap<IpAddr, PeerName> = established.iter().map(|(p, ip)| (*ip, *p)).collect();
        // Entries of an earlier run: taught to the switch once their peer is established,
        // removed when its path is on hold, or after the grace period.
        let adopt: Vec<(Mac, PeerName, IpAddr)> = self.adopted.iter().filter_map(|(m, ip)| by_ip.get(ip).map(|p| (*m, *p, *ip))).collect();
        let mut desired: HashMap<Mac, (PeerName, IpAddr)> = HashMap::new();
        {
            let mut sw = self.dp.switch.lock().unwrap_or_else(|p| p.into_inner());
            for (m, p, ip) in &adopt {
                if sw.lookup(now, *m).is_none() {
                    let _ = sw.learn(now, *m, Origin::Peer(*p));
                }
                self.adopted.remove(m);
                self.programmed.insert(*m, (*p, *ip));
            }
            for (m, origin) in sw.entries(now) {
                if let Origin::Peer(p) = origin
                    && let Some(ip) = established.get(&p)
                {
                    desired.insert(m, (p, *ip));
                }
            }
            // The switch forgets a peer's MACs when its connection is lost; while the peer is
            // in its grace period (its router restarting) and after it is back, its path kept,
            // the entries stay: the kernels forward on without the routers. Only the switch
            // learning a MAC elsewhere moves it.
            for (m, (p, ip)) in &self.programmed {
                if established.get(p) == Some(ip) && !desired.contains_key(m) && sw.lookup(now, *m).is_none() {
                    desired.insert(*m, (*p, *ip));
                }
            }
            // The router no longer sees these MACs' frames: keep them while their path lives
            // (behind a connected peer: the switch sends nothing to one that is not).
            for (m, (p, _)) in &desired {
                if connected.contains(p) {
                    let _ = sw.learn(now, *m, Origin::Peer(*p));
                }
            }
        }
        let on_hold: HashSet<IpAddr> = self.peers.values().filter(|x| x.path.state() == State::OnHold).map(|x| x.cand.ip).collect();
        let expired = now.saturating_duration_since(self.started) >= GRACE;
        let stale: Vec<(Mac, IpAddr)> = self.adopted.iter().filter(|(_, ip)| expired || on_hold.contains(ip)).map(|(m, ip)| (*m, *ip)).collect();
        for (m, ip) in stale {
            self.adopted.remove(&m);
            tracing::info!("fast path: removing the stale entry of an earlier run for {m} (dst {ip})");
            self.unprogram(m, ip);
        }
        let remove: Vec<(Mac, IpAddr)> = self.programmed.iter().filter(|(m, v)| desired.get(m) != Some(v)).map(|(m, (_, ip))| (*m, *ip)).collect();
        for (m, ip) in remove {
            self.programmed.remove(&m);
            if !desired.contains_key(&m) {
                self.unprogram(m, ip);
            }
        }
        for (m, v) in desired {
            if !self.programmed.contains_key(&m) && self.program(m, v.1) {
                self.programmed.insert(m, v);
            }
        }
    }

    fn publish(&mut self, now: Instant) {
        let mut st = HashMap::new();
        for (p, peer) in &self.peers {
            st.insert(*p, PeerStatus { state: Some(peer.path.state()), reason: peer.path.reason(now) });
        }
        for (p, (seen, adv)) in &self.nat {
            st.insert(*p, PeerStatus { state: None, reason: Some(format!("not used: the peer sends from {adv}, we see {seen} (NAT between us)")) });
        }
        *lock(&self.shared.status) = st;
    }
}
