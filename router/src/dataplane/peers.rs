//! The table of peers the data plane can send to: for each directly connected peer, its sleeve
//! address and the send half of its sleeve session. The control plane replaces the whole table
//! (copy on write, rare); the data-plane threads read it through `arc-swap`, without locks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arc_swap::ArcSwap;
use weft_mesh::peer::PeerName;

/// What the data plane knows of one directly connected peer.
pub struct Link<S> {
    /// The peer.
    pub peer: PeerName,
    /// Where its sleeve listens (learned from the connection, corrected by the first
    /// authenticated datagram from it, which is how peers behind NAT are reached).
    pub addr: ArcSwap<SocketAddr>,
    /// The send half of the sleeve session.
    pub tx: S,
    /// Datagrams sent to it.
    pub sent: AtomicU64,
}

impl<S> Link<S> {
    /// A link to `peer` at `addr`.
    pub fn new(peer: PeerName, addr: SocketAddr, tx: S) -> Link<S> {
        Link { peer, addr: ArcSwap::from_pointee(addr), tx, sent: AtomicU64::new(0) }
    }

    /// The current sleeve address.
    pub fn addr(&self) -> SocketAddr {
        **self.addr.load()
    }

    /// Moves the peer to `addr` if it differs (it roamed, or a NAT mapped it); true if changed.
    pub fn update_addr(&self, addr: SocketAddr) -> bool {
        if self.addr() == addr {
            return false;
        }
        self.addr.store(Arc::new(addr));
        true
    }
}

/// All links, replaced as a whole.
pub struct Peers<S> {
    table: ArcSwap<HashMap<PeerName, Arc<Link<S>>>>,
}

impl<S> Default for Peers<S> {
    fn default() -> Self {
        Peers { table: ArcSwap::from_pointee(HashMap::new()) }
    }
}

impl<S> Peers<S> {
    /// The link to `peer`, if connected.
    pub fn get(&self, peer: PeerName) -> Option<Arc<Link<S>>> {
        self.table.load().get(&peer).cloned()
    }

    /// Adds or replaces the link to its peer.
    pub fn insert(&self, link: Link<S>) {
        let link = Arc::new(link);
        self.table.rcu(|t| {
            let mut t = HashMap::clone(t);
            t.insert(link.peer, link.clone());
            t
        });
    }

    /// Removes the link to `peer`.
    pub fn remove(&self, peer: PeerName) {
        self.table.rcu(|t| {
            let mut t = HashMap::clone(t);
            t.remove(&peer);
            t
        });
    }

    /// The connected peers.
    pub fn peers(&self) -> Vec<PeerName> {
        self.table.load().keys().copied().collect()
    }
}
