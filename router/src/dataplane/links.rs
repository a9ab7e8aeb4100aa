//! The sleeve links: one per directly connected peer, found without locks by peer name (for
//! sending) and by our session index (for receiving).
//!
//! A link owns the peer's sleeve [`Session`], the peer's sleeve address (updated from
//! authenticated packets, so a peer behind NAT is answered at its outside address), the datagram
//! size the path carries, the reassembly state of fragmented super-frames, heartbeats and the
//! path MTU search, and counters. Locks, each held briefly and never two of one link at once:
//! the session (the TAP thread seals one frame under it, the sleeve thread opens the datagrams of
//! one received GRO message under it); the reassembler (only the sleeve thread, per received
//! message that holds fragments); the health (timers, control records, status). The receive
//! time and the address are atomics, written per datagram without a lock; [`SleeveLink::health`]
//! hands liveness the latest receive time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::ArcSwap;
use weft_mesh::peer::PeerName;
use weft_sleeve::Session;
use weft_sleeve::frag::{ReasmConfig, Reassembler};
use weft_sleeve::liveness::{Liveness, LivenessConfig, Pmtu, PmtuConfig};

/// Per-link counters.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Frames sent to this peer (as origin or relay).
    pub frames_out: AtomicU64,
    /// Frame bytes sent.
    pub bytes_out: AtomicU64,
    /// Datagrams sent.
    pub datagrams_out: AtomicU64,
    /// Frames received from this peer.
    pub frames_in: AtomicU64,
    /// Frame bytes received.
    pub bytes_in: AtomicU64,
    /// Datagrams received and authenticated.
    pub datagrams_in: AtomicU64,
}

/// Heartbeats and the path MTU search of a link.
#[derive(Debug)]
pub struct LinkHealth {
    /// Heartbeats, liveness, round-trip time.
    pub liveness: Liveness,
    /// The path MTU search.
    pub pmtu: Pmtu,
}

impl LinkHealth {
    /// The next path MTU probe due, once the peer has been heard from on this link. Before that
    /// a probe can only be lost (a peer behind NAT is not reachable at its sleeve address until
    /// it has sent us something; its end of the session may not be installed yet), and a search
    /// whose first round is all lost settles on a size far below the path's.
    pub fn poll_probe(&mut self, now: Instant) -> Option<weft_sleeve::liveness::ControlMsg> {
        self.liveness.last_seen()?;
        self.pmtu.poll_probe(now)
    }
}

/// The sleeve to one peer.
#[derive(Debug)]
pub struct SleeveLink {
    /// The peer.
    pub peer: PeerName,
    /// The session index we chose (receivers find the link by it).
    pub local_index: u32,
    /// The mesh connection this link belongs to.
    pub conn_id: u64,
    /// Bytes the session adds to each datagram (header, and tag when sealed).
    pub overhead: usize,
    addr: ArcSwap<SocketAddr>,
    session: Mutex<Session>,
    datagram: AtomicUsize,
    next_frag: AtomicU32,
    reasm: Mutex<Reassembler>,
    live: Mutex<LinkHealth>,
    epoch: Instant,
    last_rx_ms: AtomicU64,
    /// Counters.
    pub stats: LinkStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SleeveLink {
    /// A link over `session` to `peer` at `addr`, sending datagrams of at most `max_datagram`
    /// bytes once path MTU discovery has proven them (until then, of the search's floor), with
    /// heartbeats timed by `liveness`.
    pub fn new(peer: PeerName, conn_id: u64, session: Session, addr: SocketAddr, max_datagram: usize, liveness: LivenessConfig, now: Instant) -> SleeveLink {
        let pmtu = Pmtu::new(now, PmtuConfig { max: max_datagram.min(u16::MAX as usize) as u16, ..PmtuConfig::default() });
        let datagram = usize::from(pmtu.current());
        SleeveLink {
            peer,
            local_index: session.ids().local,
            conn_id,
            overhead: session.overhead(),
            addr: ArcSwap::from_pointee(addr),
            session: Mutex::new(session),
            datagram: AtomicUsize::new(datagram),
            next_frag: AtomicU32::new(1),
            reasm: Mutex::new(Reassembler::new(ReasmConfig::default())),
            live: Mutex::new(LinkHealth { liveness: Liveness::new(now, liveness), pmtu }),
            epoch: now,
            last_rx_ms: AtomicU64::new(0),
            stats: LinkStats::default(),
        }
    }

    /// Where datagrams to the peer go.
    pub fn addr(&self) -> SocketAddr {
        **self.addr.load()
    }

    /// The peer sent an authenticated packet from `from`: answer there from now on (NAT).
    /// Returns true when the address changed.
    pub fn seen(&self, now: Instant, from: SocketAddr) -> bool {
        self.last_rx_ms.store(now.saturating_duration_since(self.epoch).as_millis() as u64 + 1, Ordering::Relaxed);
        if self.addr() == from {
            return false;
        }
        self.addr.store(Arc::new(from));
        true
    }

    /// When the last authenticated packet arrived (None: never).
    pub fn last_rx(&self) -> Option<Instant> {
        match self.last_rx_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.epoch + std::time::Duration::from_millis(ms - 1)),
        }
    }

    /// The session, locked.
    pub fn session(&self) -> MutexGuard<'_, Session> {
        lock(&self.session)
    }

    /// Heartbeats and path MTU, locked; liveness has heard of every packet [`seen`](Self::seen)
    /// so far.
    pub fn health(&self) -> MutexGuard<'_, LinkHealth> {
        let mut h = lock(&self.live);
        if let Some(t) = self.last_rx() {
            h.liveness.on_receive(t);
        }
        h
    }

    /// The reassembly state, locked.
    pub fn reassembler(&self) -> MutexGuard<'_, Reassembler> {
        lock(&self.reasm)
    }

    /// Largest datagram to send to this peer.
    pub fn datagram(&self) -> usize {
        self.datagram.load(Ordering::Relaxed)
    }

    /// Largest body of a datagram to this peer: the datagram less the session's header and tag.
    pub fn max_body(&self) -> usize {
        self.datagram().saturating_sub(self.overhead)
    }

    /// Sets the datagram size (from path MTU discovery).
    pub fn set_datagram(&self, n: usize) {
        self.datagram.store(n, Ordering::Relaxed)
    }

    /// A fresh id for a fragmented super-frame.
    pub fn next_frag_id(&self) -> u32 {
        self.next_frag.fetch_add(1, Ordering::Relaxed)
    }
}

/// All links, readable without locks.
#[derive(Debug, Default)]
pub struct Links {
    by_peer: ArcSwap<HashMap<PeerName, Arc<SleeveLink>>>,
    by_index: ArcSwap<HashMap<u32, Arc<SleeveLink>>>,
}

impl Links {
    /// The link to `peer`.
    pub fn get(&self, peer: PeerName) -> Option<Arc<SleeveLink>> {
        self.by_peer.load().get(&peer).cloned()
    }

    /// The link whose local session index is `index`.
    pub fn by_index(&self, index: u32) -> Option<Arc<SleeveLink>> {
        self.by_index.load().get(&index).cloned()
    }

    /// Installs a link, replacing any link to the same peer.
    pub fn insert(&self, link: Arc<SleeveLink>) {
        let old = self.by_peer.load().get(&link.peer).map(|l| l.local_index);
        self.by_peer.rcu(|t| {
            let mut t = HashMap::clone(t);
            t.insert(link.peer, link.clone());
            t
        });
        self.by_index.rcu(|t| {
            let mut t = HashMap::clone(t);
            if let Some(i) = old {
                t.remove(&i);
            }
            t.insert(link.local_index, link.clone());
            t
        });
    }

    /// Removes the link to `peer` if it belongs to connection `conn_id`; true if removed.
    pub fn remove(&self, peer: PeerName, conn_id: u64) -> bool {
        let Some(link) = self.get(peer).filter(|l| l.conn_id == conn_id) else { return false };
        self.by_peer.rcu(|t| {
            let mut t = HashMap::clone(t);
            t.remove(&peer);
            t
        });
        self.by_index.rcu(|t| {
            let mut t = HashMap::clone(t);
            t.remove(&link.local_index);
            t
        });
        true
    }

    /// Every link.
    pub fn all(&self) -> Vec<Arc<SleeveLink>> {
        self.by_peer.load().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_mtu_search_waits_until_the_peer_is_heard_from() {
        let t0 = Instant::now();
        let mut h = LinkHealth { liveness: Liveness::new(t0, LivenessConfig::default()), pmtu: Pmtu::new(t0, PmtuConfig::default()) };
        assert!(h.poll_probe(t0).is_none() && h.pmtu.probes() == 0, "nothing heard: no probe");
        assert!(h.poll_probe(t0 + std::time::Duration::from_secs(2)).is_none());
        let t1 = t0 + std::time::Duration::from_secs(2);
        h.liveness.on_receive(t1);
        assert!(h.poll_probe(t1).is_some(), "heard from: the search starts");
    }
}
