//! [`Ipam`]: one peer's sans-IO IPAM core.
//!
//! It owns the peer's view of the ring, its allocations, the bootstrapping consensus, donation
//! requests and replies, pending `rmpeer` reclaims, and the hand-over of a leaving peer until
//! its receiver acknowledges it. It does no I/O and reads no clock: time is
//! passed in, messages come in through [`Ipam::handle`] and go out through
//! [`Ipam::poll_transmit`] as opaque bytes (see [`super::msg`]), timers through
//! [`Ipam::poll_timeout`] / [`Ipam::handle_timeout`].
//!
//! Contract with the driver: whenever [`Ipam::take_dirty`] returns true the state must be
//! persisted before an allocation is answered and before any transmit is sent
//! ([`super::PersistentIpam`] does this). Messages must be handed to [`Ipam::handle`] with
//! `from` set to the peer that produced them (the originator, even when the mesh relayed them):
//! a ring counts as that peer's acknowledgement of a reclaim, and of a hand-over.
//!
//! Gossip: a change of the ring goes to every peer at once. Without changes, every
//! [`Config::gossip_interval`] the ring goes to [`Config::gossip_fanout`] peers only, in turn
//! (the peers this core has heard from or finds in the ring, in name order, starting after
//! itself), so each peer receives about `gossip_fanout` rings per interval whatever the cluster
//! size: the ring grows with the number of peers, and sending it to all of them every interval
//! made the idle traffic between two routers grow with the cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::DecodeError;
use super::msg::Message;
use super::ring::{Cidr, Entry, Ring, RingError, Span};
use crate::peer::PeerName;

/// How the first division of the ring is agreed.
///
/// Safety argument. *Seeds*: every peer given the same seed list computes the identical ring
/// locally ([`Ring::divide`]); a peer with a different list produces version-1 entries that
/// conflict and are refused on merge, never silently used by others. *Consensus*: a peer divides
/// only when (a) it has received proposals from a quorum (`expected / 2 + 1`, itself included)
/// and (b) it knows exactly `expected` peer names (its own, the proposers' and the names they
/// report; known sets only grow); it then divides among exactly those names. Every peer that
/// divides therefore uses a set of `expected` names, and two such sets are equal whenever the
/// peers taking part in the initial round number at most `expected` (the operator's contract,
/// as in Weave Net). A peer that hears of more than `expected` names before dividing refuses to
/// divide and says so in its status; a ring already divided elsewhere is adopted instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Divide among this fixed list of peers (may or may not include this peer).
    Seeds(Vec<PeerName>),
    /// Agree on the division among `expected` initial peers.
    Consensus {
        /// The number of initial peers.
        expected: usize,
    },
}

/// The most peers [`Ipam`] remembers having heard from (for whom the periodic gossip may go
/// to); more than any cluster has.
pub const MAX_HEARD: usize = 1 << 16;

/// Configuration of a peer's IPAM core.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster range (identical on every peer).
    pub range: Cidr,
    /// How the first division is agreed.
    pub bootstrap: Bootstrap,
    /// How often the ring (or a proposal) is gossiped even without changes.
    pub gossip_interval: Duration,
    /// To how many peers the ring goes every `gossip_interval` without changes (a proposal,
    /// before there is a ring, goes to all).
    pub gossip_fanout: usize,
    /// How long to wait for a donate reply before asking another peer.
    pub donate_timeout: Duration,
    /// How often a hand-over is sent again until the receiver acknowledges it.
    pub handover_retry: Duration,
}

impl Config {
    /// Defaults (range 10.32.0.0/12, gossip every 5 s to 2 peers, donate timeout 2 s,
    /// hand-over sent again every second) with `bootstrap`.
    pub fn new(bootstrap: Bootstrap) -> Config {
        Config {
            range: Cidr::DEFAULT,
            bootstrap,
            gossip_interval: Duration::from_secs(5),
            gossip_fanout: 2,
            donate_timeout: Duration::from_secs(2),
            handover_retry: Duration::from_secs(1),
        }
    }
}

/// The owner of an allocation: a container and one of its interfaces.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Holder {
    /// The container ID (CNI `CNI_CONTAINERID`).
    pub container: String,
    /// The interface name inside it (CNI `CNI_IFNAME`).
    pub iface: String,
}

impl Holder {
    /// A holder from its parts.
    pub fn new(container: &str, iface: &str) -> Holder {
        Holder {
            container: container.to_owned(),
            iface: iface.to_owned(),
        }
    }
}

/// Where a transmit goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Destination {
    /// One peer.
    Peer(PeerName),
    /// Every peer (ring gossip, proposals).
    All,
}

/// One message to send.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Transmit {
    /// Its destination.
    pub to: Destination,
    /// The encoded [`Message`].
    pub payload: Vec<u8>,
}

/// Where the peer stands.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Status {
    /// The ring is divided and this peer has free space (or has not needed more).
    Ready,
    /// The first division has not happened yet.
    AwaitingConsensus {
        /// Proposals needed (expected / 2 + 1).
        quorum: usize,
        /// Distinct peers heard from (this one included).
        known: usize,
        /// Peer names known (must reach `expected`).
        names: usize,
        /// The expected number of initial peers.
        expected: usize,
    },
    /// The ring is divided but this peer has no free space; it asked another for a donation.
    WaitingForSpace {
        /// The peer currently asked, if any.
        asked: Option<PeerName>,
    },
    /// This peer left (its space handed over, see [`Ipam::hand_over`]).
    Left,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Ready => f.write_str("ready"),
            Status::AwaitingConsensus {
                quorum,
                known,
                names,
                expected,
            } => {
                write!(f, "awaiting consensus: quorum {quorum}, known {known}")?;
                if names > expected {
                    write!(
                        f,
                        " ({names} peers heard of but {expected} expected: fix the expected count or use a seed list)"
                    )
                } else {
                    write!(f, " ({names} of {expected} expected peers named)")
                }
            }
            Status::WaitingForSpace { asked: Some(p) } => {
                write!(f, "waiting for space: asked {p} to donate")
            }
            Status::WaitingForSpace { asked: None } => {
                f.write_str("waiting for space: no peer has free space; will ask again")
            }
            Status::Left => f.write_str("left the ring"),
        }
    }
}

/// Where the hand-over of a peer that left stands (see [`Ipam::hand_over`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HandOver {
    /// The space was handed to this peer, which has not yet acknowledged it.
    Waiting(PeerName),
    /// This peer sent a ring carrying everything handed to it: it has merged and persisted it.
    Acknowledged(PeerName),
}

/// Why an allocation or claim could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The ring is not divided yet.
    #[error("no address yet: {0}")]
    NotReady(Status),
    /// No free space here; a donation was requested, retry when the ring changes.
    #[error("no free address on this peer yet: {0}")]
    WaitingForSpace(Status),
    /// This peer left the ring.
    #[error("this peer has left the ring")]
    Left,
    /// The address is outside the cluster range.
    #[error("{addr} is outside the cluster range {range}")]
    OutOfRange {
        /// The address.
        addr: Ipv4Addr,
        /// The range.
        range: Cidr,
    },
    /// The address is the range's network or broadcast address.
    #[error("{0} is reserved (first or last address of the cluster range)")]
    Reserved(Ipv4Addr),
    /// Another peer owns the address (or it is a reclaim not yet confirmed).
    #[error("{addr} is not usable by this peer (owner: {owner:?}); claim it on its owner")]
    NotOwned {
        /// The address.
        addr: Ipv4Addr,
        /// Its owner in this peer's ring.
        owner: Option<PeerName>,
    },
    /// The address is allocated to someone else.
    #[error("{addr} is already allocated to {} {}", holder.container, holder.iface)]
    InUse {
        /// The address.
        addr: Ipv4Addr,
        /// Its holder.
        holder: Holder,
    },
    /// The holder already has a different address.
    #[error("{} {} already holds {addr}", holder.container, holder.iface)]
    HolderHasAddress {
        /// The holder.
        holder: Holder,
        /// Its address.
        addr: Ipv4Addr,
    },
}

/// Why a peer's space could not be handed over or reclaimed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShrinkError {
    /// `rmpeer` of this peer itself.
    #[error("cannot rmpeer this peer itself; shut it down instead")]
    Myself,
    /// The router reports the peer alive.
    #[error("peer {0} is alive: refusing to reclaim its space (stop it first)")]
    Alive(PeerName),
    /// The ring is not divided yet.
    #[error("the ring is not divided yet")]
    NotReady,
    /// This peer has left.
    #[error("this peer has left the ring")]
    Left,
    /// Shutdown with space but no live peer to hand it to.
    #[error("no live peer to hand this peer's space to; it keeps its space")]
    NoLivePeer,
    /// The ring refused the change.
    #[error("ring refused the change")]
    Ring(#[source] RingError),
}

/// Why an incoming message was not used (counted in [`Stats`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The bytes are not a valid message.
    #[error("malformed IPAM message from {from}")]
    Malformed {
        /// The sender.
        from: PeerName,
        /// What was wrong.
        #[source]
        source: DecodeError,
    },
    /// The ring it carried cannot be merged into ours.
    #[error("ring from {from} refused")]
    Refused {
        /// The sender.
        from: PeerName,
        /// Why.
        #[source]
        source: RingError,
    },
}

/// Why a core could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// The seed list is empty or larger than the range.
    #[error("bad seed list")]
    Seeds(#[source] RingError),
    /// `Consensus { expected: 0 }`.
    #[error("the expected number of initial peers must be at least 1")]
    ZeroExpected,
    /// Persisted state covers another range than configured.
    #[error("persisted IPAM state covers {persisted} but the configured range is {configured}")]
    RangeChanged {
        /// The persisted range.
        persisted: Cidr,
        /// The configured range.
        configured: Cidr,
    },
}

/// A reclaimed run not usable until every peer in `waiting` has gossiped a ring carrying
/// exactly `(this peer, version, reclaimed)` over it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PendingReclaim {
    /// The addresses.
    pub span: Span,
    /// The version the reclaim wrote.
    pub version: u32,
    /// Peers yet to acknowledge it.
    pub waiting: BTreeSet<PeerName>,
}

/// The persistent part of a core.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct State {
    /// The ring.
    pub ring: Ring,
    /// Allocations by address.
    pub allocations: BTreeMap<u32, Holder>,
    /// Reclaims awaiting acknowledgement.
    pub pending: Vec<PendingReclaim>,
    /// Whether the peer left.
    pub left: bool,
}

/// Counters.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Malformed messages dropped.
    pub malformed: u64,
    /// Rings refused (conflicts, attempts to take our space).
    pub refused: u64,
    /// Donations this peer gave.
    pub donations_given: u64,
    /// Donate requests this peer sent.
    pub donations_asked: u64,
}

/// A hand-over in flight: what was handed to whom, at which versions.
#[derive(Debug, Clone)]
struct HandingOver {
    to: PeerName,
    spans: Vec<(Span, u32)>,
    retry_at: Instant,
    acknowledged: bool,
}

#[derive(Debug, Default, Clone)]
struct Donation {
    wanted: bool,
    asked: Option<(PeerName, Instant)>,
    refused: BTreeSet<PeerName>,
    retry_at: Option<Instant>,
}

/// One peer's IPAM core; see the module doc. A clone is a full snapshot (state, timers, queued
/// messages), which [`super::PersistentIpam`] restores when a change cannot be saved.
#[derive(Debug, Clone)]
pub struct Ipam {
    me: PeerName,
    config: Config,
    ring: Ring,
    allocations: BTreeMap<u32, Holder>,
    by_holder: HashMap<Holder, u32>,
    pending: Vec<PendingReclaim>,
    usable: Vec<Span>,
    proposers: BTreeSet<PeerName>,
    known: BTreeSet<PeerName>,
    /// Peers a message came from (at most [`MAX_HEARD`]): with the ring's owners, whom the
    /// periodic gossip goes to.
    heard: BTreeSet<PeerName>,
    donation: Donation,
    handing_over: Option<HandingOver>,
    outbox: VecDeque<Transmit>,
    gossip_due: bool,
    /// The periodic gossip (to `gossip_fanout` peers) is due.
    periodic_due: bool,
    /// Where the periodic gossip's turn is, counted from this peer's place in name order.
    turn: usize,
    next_gossip: Instant,
    dirty: bool,
    cursor: u32,
    left: bool,
    stats: Stats,
    last_error: Option<String>,
}

impl Ipam {
    /// A fresh core for peer `me` (nothing persisted yet).
    pub fn new(me: PeerName, config: Config, now: Instant) -> Result<Ipam, SetupError> {
        let state = State {
            ring: Ring::new(config.range),
            allocations: BTreeMap::new(),
            pending: Vec::new(),
            left: false,
        };
        let mut ipam = Ipam::from_state(me, config, state, now)?;
        ipam.dirty = true;
        Ok(ipam)
    }

    /// A core resuming from persisted `state`.
    pub fn from_state(
        me: PeerName,
        config: Config,
        state: State,
        now: Instant,
    ) -> Result<Ipam, SetupError> {
        if state.ring.range() != config.range {
            return Err(SetupError::RangeChanged {
                persisted: state.ring.range(),
                configured: config.range,
            });
        }
        let mut ring = state.ring;
        let mut dirty = false;
        match &config.bootstrap {
            Bootstrap::Consensus { expected: 0 } => return Err(SetupError::ZeroExpected),
            Bootstrap::Seeds(seeds) => {
                let division = Ring::divide(config.range, seeds).map_err(SetupError::Seeds)?;
                if ring.is_empty() && !state.left {
                    ring = division;
                    dirty = true;
                }
            }
            Bootstrap::Consensus { .. } => {}
        }
        let by_holder = state
            .allocations
            .iter()
            .map(|(&a, h)| (h.clone(), a))
            .collect();
        let mut ipam = Ipam {
            me,
            next_gossip: now + config.gossip_interval,
            config,
            ring,
            allocations: state.allocations,
            by_holder,
            pending: state.pending,
            usable: Vec::new(),
            proposers: [me].into(),
            known: [me].into(),
            heard: BTreeSet::new(),
            donation: Donation::default(),
            handing_over: None,
            outbox: VecDeque::new(),
            gossip_due: true,
            periodic_due: false,
            turn: 0,
            dirty,
            cursor: 0,
            left: state.left,
            stats: Stats::default(),
            last_error: None,
        };
        ipam.recompute_usable();
        Ok(ipam)
    }

    /// This peer's name.
    pub fn name(&self) -> PeerName {
        self.me
    }

    /// The current ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The runs this peer may allocate from: owned, minus unconfirmed reclaims.
    pub fn usable(&self) -> &[Span] {
        &self.usable
    }

    /// Reclaims awaiting acknowledgement.
    pub fn pending_reclaims(&self) -> &[PendingReclaim] {
        &self.pending
    }

    /// Whether this peer left the ring.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// The hand-over made by [`Ipam::shutdown`] in this run, if it handed any space over. Not
    /// persisted: a peer that restarts after leaving reports none.
    pub fn hand_over(&self) -> Option<HandOver> {
        self.handing_over.as_ref().map(|h| if h.acknowledged { HandOver::Acknowledged(h.to) } else { HandOver::Waiting(h.to) })
    }

    /// The spans [`Ipam::shutdown`] handed over in this run, each with the version it wrote.
    pub fn handed_over(&self) -> &[(Span, u32)] {
        self.handing_over.as_ref().map_or(&[], |h| &h.spans)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The last refused ring or other problem, for status output.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Where this peer stands.
    pub fn status(&self) -> Status {
        if self.left {
            return Status::Left;
        }
        if self.ring.is_empty() {
            let expected = match self.config.bootstrap {
                Bootstrap::Consensus { expected } => expected,
                Bootstrap::Seeds(_) => 0,
            };
            return Status::AwaitingConsensus {
                quorum: expected / 2 + 1,
                known: self.proposers.len(),
                names: self.known.len(),
                expected,
            };
        }
        if self.donation.wanted {
            return Status::WaitingForSpace {
                asked: self.donation.asked.map(|(p, _)| p),
            };
        }
        Status::Ready
    }

    /// Allocations in address order.
    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Addr, &Holder)> + '_ {
        self.allocations
            .iter()
            .map(|(&a, h)| (Ipv4Addr::from(a), h))
    }

    /// The address held by `container`/`iface`, if any.
    pub fn lookup(&self, container: &str, iface: &str) -> Option<Ipv4Addr> {
        self.by_holder
            .get(&Holder::new(container, iface))
            .map(|&a| Ipv4Addr::from(a))
    }

    /// Free addresses this peer can allocate now.
    pub fn free_count(&self) -> u64 {
        let total: u64 = self.usable.iter().map(|s| s.end - s.start as u64).sum();
        let reserved = self
            .usable
            .iter()
            .map(|s| self.reserved_in(*s))
            .sum::<u64>();
        total - reserved - self.allocations.len() as u64
    }

    /// Whether state changed since the last call; the caller must then persist before answering
    /// or transmitting. Clears the flag.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Marks the state as not yet persisted (after a failed save).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// An address for `container`/`iface`: the one it already holds (idempotent), or the next
    /// free one this peer owns. With no free space, asks a peer to donate and returns
    /// [`AllocError::WaitingForSpace`]: retry after handling messages.
    pub fn allocate(
        &mut self,
        now: Instant,
        container: &str,
        iface: &str,
    ) -> Result<Ipv4Addr, AllocError> {
        let holder = Holder::new(container, iface);
        if let Some(&a) = self.by_holder.get(&holder) {
            return Ok(Ipv4Addr::from(a));
        }
        if self.left {
            return Err(AllocError::Left);
        }
        if self.ring.is_empty() {
            return Err(AllocError::NotReady(self.status()));
        }
        match self.find_free() {
            Some(a) => {
                self.insert(a, holder);
                self.cursor = a.wrapping_add(1);
                Ok(Ipv4Addr::from(a))
            }
            None => {
                self.want_space(now);
                Err(AllocError::WaitingForSpace(self.status()))
            }
        }
    }

    /// Allocates exactly `addr` to `container`/`iface` (idempotent for the same holder).
    pub fn claim(
        &mut self,
        container: &str,
        iface: &str,
        addr: Ipv4Addr,
    ) -> Result<(), AllocError> {
        let holder = Holder::new(container, iface);
        let a = u32::from(addr);
        match self.by_holder.get(&holder) {
            Some(&held) if held == a => return Ok(()),
            Some(&held) => {
                return Err(AllocError::HolderHasAddress {
                    holder,
                    addr: Ipv4Addr::from(held),
                });
            }
            None => {}
        }
        if self.left {
            return Err(AllocError::Left);
        }
        let range = self.ring.range();
        if !range.contains(a) {
            return Err(AllocError::OutOfRange { addr, range });
        }
        if self.is_reserved(a) {
            return Err(AllocError::Reserved(addr));
        }
        if let Some(h) = self.allocations.get(&a) {
            return Err(AllocError::InUse {
                addr,
                holder: h.clone(),
            });
        }
        if !self.is_usable(a) {
            return Err(AllocError::NotOwned {
                addr,
                owner: self.ring.owner(addr),
            });
        }
        self.insert(a, holder);
        Ok(())
    }

    /// Releases the address of `container`/`iface`, or of every interface of `container` when
    /// `iface` is `None`. Returns what was released (empty when nothing was held: idempotent).
    pub fn release(&mut self, container: &str, iface: Option<&str>) -> Vec<Ipv4Addr> {
        let holders: Vec<Holder> = match iface {
            Some(i) => vec![Holder::new(container, i)],
            None => self
                .by_holder
                .keys()
                .filter(|h| h.container == container)
                .cloned()
                .collect(),
        };
        let mut out = Vec::new();
        for h in holders {
            if let Some(a) = self.by_holder.remove(&h) {
                self.allocations.remove(&a);
                self.dirty = true;
                out.push(Ipv4Addr::from(a));
            }
        }
        out.sort();
        out
    }

    /// Releases every allocation whose container is not in `keep` (CNI GC). Returns them.
    pub fn gc<'a>(&mut self, keep: impl IntoIterator<Item = &'a str>) -> Vec<(Ipv4Addr, Holder)> {
        let keep: BTreeSet<&str> = keep.into_iter().collect();
        let gone: Vec<(u32, Holder)> = self
            .allocations
            .iter()
            .filter(|(_, h)| !keep.contains(h.container.as_str()))
            .map(|(&a, h)| (a, h.clone()))
            .collect();
        for (a, h) in &gone {
            self.allocations.remove(a);
            self.by_holder.remove(h);
            self.dirty = true;
        }
        gone.into_iter()
            .map(|(a, h)| (Ipv4Addr::from(a), h))
            .collect()
    }

    /// Orderly shutdown: releases every allocation (the pods go away with the host) and hands all
    /// space to the lowest-named peer of `live` (other than this one and removed peers). Returns
    /// the receiver, or `None` when there was nothing to hand over. Flush transmits afterwards,
    /// and keep handling messages and timers until [`Ipam::hand_over`] says the receiver
    /// acknowledged (the hand-over is sent again every [`Config::handover_retry`] until then).
    pub fn shutdown(
        &mut self,
        now: Instant,
        live: &[PeerName],
    ) -> Result<Option<PeerName>, ShrinkError> {
        if self.left {
            return Ok(None);
        }
        // Only space this peer really owns is handed over: a reclaim not yet acknowledged by
        // every peer may be contested (another peer may hold the same addresses through a
        // hand-over this peer never saw), so it stays unconfirmed under this peer's name, for a
        // later `rmpeer` of this peer to sort out. Handing it over would make it definite.
        let owned = subtract(&self.ring.owned_by(self.me), self.pending.iter().map(|p| p.span));
        let target = live
            .iter()
            .copied()
            .filter(|p| *p != self.me && !self.ring.removed().contains(p))
            .min();
        if !owned.is_empty() && target.is_none() {
            return Err(ShrinkError::NoLivePeer);
        }
        let mut ring = self.ring.clone();
        let mut handed = Vec::with_capacity(owned.len());
        if let Some(t) = target {
            for span in &owned {
                let version = ring.transfer(*span, self.me, t).map_err(ShrinkError::Ring)?;
                handed.push((*span, version));
            }
        }
        self.ring = ring;
        self.allocations.clear();
        self.by_holder.clear();
        self.pending.clear();
        self.donation = Donation::default();
        self.left = true;
        self.dirty = true;
        self.recompute_usable();
        self.gossip_due = true;
        let to = target.filter(|_| !handed.is_empty());
        if let Some(t) = to {
            self.push(Destination::Peer(t), Message::HandOver(self.ring.clone()));
            self.handing_over = Some(HandingOver { to: t, spans: handed, retry_at: now + self.config.handover_retry, acknowledged: false });
        }
        Ok(to)
    }

    /// `rmpeer dead`: reclaims every piece `dead` owns for this peer, flagged reclaimed. `live` is
    /// the router's list of live peers (refused if it holds `dead`); `known` every peer the mesh
    /// knows of. The space becomes usable once every known peer (and every owner in the ring),
    /// except `dead` and removed peers, has gossiped a ring acknowledging the reclaim. Returns how
    /// many addresses were reclaimed (0 when `dead` owns nothing, e.g. a second `rmpeer`).
    pub fn rmpeer(
        &mut self,
        _now: Instant,
        dead: PeerName,
        known: &[PeerName],
        live: &[PeerName],
    ) -> Result<u64, ShrinkError> {
        if dead == self.me {
            return Err(ShrinkError::Myself);
        }
        if live.contains(&dead) {
            return Err(ShrinkError::Alive(dead));
        }
        if self.left {
            return Err(ShrinkError::Left);
        }
        if self.ring.is_empty() {
            return Err(ShrinkError::NotReady);
        }
        let mut ring = self.ring.clone();
        let spans = ring.reclaim(dead, self.me).map_err(ShrinkError::Ring)?;
        let mut witnesses: BTreeSet<PeerName> = known.iter().chain(live).copied().collect();
        witnesses.extend(ring.shares().into_keys());
        witnesses.remove(&self.me);
        witnesses.remove(&dead);
        witnesses.retain(|p| !ring.removed().contains(p));
        let changed = ring != self.ring;
        self.ring = ring;
        for (span, version) in &spans {
            self.pending.push(PendingReclaim {
                span: *span,
                version: *version,
                waiting: witnesses.clone(),
            });
        }
        self.settle_pending();
        if changed {
            self.dirty = true;
            self.gossip_due = true;
        }
        Ok(spans.iter().map(|(s, _)| s.end - s.start as u64).sum())
    }

    /// Handles one message `bytes` produced by peer `from`.
    pub fn handle(
        &mut self,
        now: Instant,
        from: PeerName,
        bytes: &[u8],
    ) -> Result<(), HandleError> {
        if from == self.me {
            return Ok(());
        }
        let msg = match Message::parse(bytes) {
            Ok(m) => m,
            Err(source) => {
                self.stats.malformed += 1;
                return Err(HandleError::Malformed { from, source });
            }
        };
        if self.heard.len() < MAX_HEARD {
            self.heard.insert(from);
        }
        match msg {
            Message::Gossip(ring) => self.merge_from(now, from, &ring)?,
            Message::HandOver(ring) => {
                // The answer leaves only after the merged ring is persisted (see the module
                // contract), so it tells the sender its space is safe here.
                self.merge_from(now, from, &ring)?;
                self.push(Destination::Peer(from), Message::Gossip(self.ring.clone()));
            }
            Message::Proposal { known } => {
                if self.ring.is_empty() {
                    self.proposers.insert(from);
                    self.known.insert(from);
                    self.known.extend(known);
                    self.try_divide();
                } else {
                    self.push(Destination::Peer(from), Message::Gossip(self.ring.clone()));
                }
            }
            Message::DonateRequest => self.donate(from),
            Message::DonateReply { granted, ring } => {
                let merged = self.merge_from(now, from, &ring);
                if self.donation.asked.is_some_and(|(p, _)| p == from) {
                    self.donation.asked = None;
                    if !granted {
                        self.donation.refused.insert(from);
                    }
                }
                self.check_space(now);
                merged?;
            }
        }
        Ok(())
    }

    /// The next message to send, if any. Persist first if [`Ipam::take_dirty`] says so.
    pub fn poll_transmit(&mut self, _now: Instant) -> Option<Transmit> {
        if self.periodic_due && !self.gossip_due && !self.ring.is_empty() {
            self.periodic_due = false;
            for p in self.periodic_targets() {
                self.push(Destination::Peer(p), Message::Gossip(self.ring.clone()));
            }
        }
        if self.gossip_due || self.periodic_due {
            self.gossip_due = false;
            self.periodic_due = false;
            if !self.ring.is_empty() {
                self.push(Destination::All, Message::Gossip(self.ring.clone()));
            } else if matches!(self.config.bootstrap, Bootstrap::Consensus { .. }) && !self.left {
                self.push(
                    Destination::All,
                    Message::Proposal {
                        known: self.known.clone(),
                    },
                );
            }
        }
        self.outbox.pop_front()
    }

    /// When [`Ipam::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            Some(self.next_gossip),
            self.donation.asked.map(|(_, t)| t),
            self.donation.retry_at,
            self.handing_over.as_ref().filter(|h| !h.acknowledged).map(|h| h.retry_at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs timers due at `now`: periodic gossip, donate timeouts and retries, hand-over
    /// retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(h) = self.handing_over.as_mut().filter(|h| !h.acknowledged && now >= h.retry_at) {
            h.retry_at = now + self.config.handover_retry;
            let to = h.to;
            self.push(Destination::Peer(to), Message::HandOver(self.ring.clone()));
        }
        if now >= self.next_gossip {
            self.periodic_due = true;
            self.next_gossip = now + self.config.gossip_interval;
        }
        if let Some((p, t)) = self.donation.asked
            && now >= t
        {
            self.donation.asked = None;
            self.donation.refused.insert(p);
        }
        if self.donation.retry_at.is_some_and(|t| now >= t) {
            self.donation.retry_at = None;
        }
        self.check_space(now);
    }

    /// The next [`Config::gossip_fanout`] peers in turn for the periodic gossip: those heard
    /// from and the ring's owners, in name order from this peer's place, without this peer
    /// and removed peers (all of them when they are no more than the fanout).
    fn periodic_targets(&mut self) -> Vec<PeerName> {
        let mut all: BTreeSet<PeerName> = self.heard.iter().copied().chain(self.ring.shares().into_keys()).collect();
        all.remove(&self.me);
        all.retain(|p| !self.ring.removed().contains(p));
        let all: Vec<PeerName> = all.into_iter().collect();
        let n = all.len();
        if n <= self.config.gossip_fanout {
            return all;
        }
        let start = all.partition_point(|p| *p < self.me) + self.turn;
        self.turn = (self.turn + self.config.gossip_fanout) % n;
        (0..self.config.gossip_fanout).map(|i| all[(start + i) % n]).collect()
    }

    fn push(&mut self, to: Destination, msg: Message) {
        self.outbox.push_back(Transmit {
            to,
            payload: msg.to_bytes(),
        });
    }

    fn insert(&mut self, a: u32, holder: Holder) {
        self.by_holder.insert(holder.clone(), a);
        self.allocations.insert(a, holder);
        self.dirty = true;
    }

    fn try_divide(&mut self) {
        let Bootstrap::Consensus { expected } = self.config.bootstrap else {
            return;
        };
        if !self.ring.is_empty()
            || self.proposers.len() < expected / 2 + 1
            || self.known.len() != expected
        {
            return;
        }
        let names: Vec<PeerName> = self.known.iter().copied().collect();
        match Ring::divide(self.config.range, &names) {
            Ok(ring) => {
                self.ring = ring;
                self.dirty = true;
                self.gossip_due = true;
                self.recompute_usable();
            }
            Err(e) => self.last_error = Some(e.to_string()),
        }
    }

    fn merge_from(
        &mut self,
        now: Instant,
        from: PeerName,
        theirs: &Ring,
    ) -> Result<(), HandleError> {
        // Whatever becomes of the merge here, the receiver's own ring carrying the handed-over
        // space at the versions written (or later ones) shows it merged and persisted it.
        if let Some(h) = self.handing_over.as_mut().filter(|h| h.to == from && !h.acknowledged) {
            h.acknowledged = carries(theirs, &h.spans);
        }
        let merged = self.ring.merge(theirs, self.me).and_then(|m| {
            // Confirmed space may never be lost, not even to a reclaim tie-break.
            for span in &self.usable {
                for p in m
                    .pieces()
                    .filter(|p| p.end > span.start as u64 && (p.start as u64) < span.end)
                {
                    if p.entry.owner != self.me {
                        return Err(RingError::TakesMyRange {
                            span: *span,
                            me: self.me,
                            theirs: p.entry,
                        });
                    }
                }
            }
            Ok(m)
        });
        let merged = match merged {
            Ok(m) => m,
            Err(source) => {
                self.stats.refused += 1;
                self.last_error = Some(format!("ring from {from} refused: {source}"));
                return Err(HandleError::Refused { from, source });
            }
        };
        if merged != self.ring {
            self.ring = merged;
            self.dirty = true;
            self.gossip_due = true;
        }
        // The sender's own ring acknowledges the reclaims it carries exactly.
        let me = self.me;
        for p in &mut self.pending {
            let want = Entry {
                owner: me,
                version: p.version,
                reclaimed: true,
            };
            if p.waiting.contains(&from) && covers_exactly(theirs, p.span, want) {
                p.waiting.remove(&from);
                self.dirty = true;
            }
        }
        self.settle_pending();
        self.check_space(now);
        Ok(())
    }

    /// Restricts pending reclaims to what the ring still gives us, drops removed witnesses, and
    /// makes fully acknowledged reclaims usable.
    fn settle_pending(&mut self) {
        let mut out = Vec::with_capacity(self.pending.len());
        for mut p in std::mem::take(&mut self.pending) {
            p.waiting.retain(|w| !self.ring.removed().contains(w));
            if p.waiting.is_empty() {
                self.dirty = true;
                continue;
            }
            let want = Entry {
                owner: self.me,
                version: p.version,
                reclaimed: true,
            };
            let mut kept: Vec<Span> = Vec::new();
            for piece in self.ring.pieces().filter(|q| q.entry == want) {
                let s = piece.start.max(p.span.start);
                let e = piece.end.min(p.span.end);
                if (s as u64) < e {
                    kept.push(Span { start: s, end: e });
                }
            }
            if kept != [p.span] {
                self.dirty = true;
            }
            for span in kept {
                out.push(PendingReclaim {
                    span,
                    version: p.version,
                    waiting: p.waiting.clone(),
                });
            }
        }
        self.pending = out;
        self.recompute_usable();
    }

    /// What this peer may allocate from: what it owns, less unconfirmed reclaims; nothing once
    /// it has left.
    fn recompute_usable(&mut self) {
        self.usable = if self.left { Vec::new() } else { subtract(&self.ring.owned_by(self.me), self.pending.iter().map(|p| p.span)) };
    }

    fn is_usable(&self, a: u32) -> bool {
        self.usable
            .iter()
            .any(|s| a >= s.start && (a as u64) < s.end)
    }

    fn is_reserved(&self, a: u32) -> bool {
        let r = self.ring.range();
        r.size() > 2 && (a == r.base() || a as u64 == r.end() - 1)
    }

    fn reserved_in(&self, s: Span) -> u64 {
        let r = self.ring.range();
        if r.size() <= 2 {
            return 0;
        }
        let inside = |a: u64| a >= s.start as u64 && a < s.end;
        inside(r.base() as u64) as u64 + inside(r.end() - 1) as u64
    }

    /// The first free, unreserved address in `[start, end)`.
    fn first_free_in(&self, start: u32, end: u64) -> Option<u32> {
        let mut cand = start as u64;
        loop {
            for &k in self.allocations.range(cand as u32..).map(|(k, _)| k) {
                if k as u64 != cand {
                    break;
                }
                cand += 1;
                if cand >= end {
                    break;
                }
            }
            if cand >= end {
                return None;
            }
            if self.is_reserved(cand as u32) {
                cand += 1;
                continue;
            }
            return Some(cand as u32);
        }
    }

    fn find_free(&self) -> Option<u32> {
        let c = self.cursor;
        let after = self
            .usable
            .iter()
            .filter(|s| s.end > c as u64)
            .map(|s| (s.start.max(c), s.end));
        let before = self
            .usable
            .iter()
            .filter(|s| s.start < c)
            .map(|s| (s.start, s.end.min(c as u64)));
        after
            .chain(before)
            .find_map(|(s, e)| self.first_free_in(s, e))
    }

    /// The largest run of free addresses this peer could give away, halved (upper half).
    fn donatable(&self) -> Option<Span> {
        let mut best: Option<Span> = None;
        let mut consider = |s: u64, e: u64| {
            if e > s && best.is_none_or(|b| e - s > b.end - b.start as u64) {
                best = Some(Span {
                    start: s as u32,
                    end: e,
                });
            }
        };
        for span in &self.usable {
            let mut cur = span.start as u64;
            let r = self.ring.range();
            let taken = self
                .allocations
                .range(span.start..)
                .map(|(&k, _)| k as u64)
                .take_while(|&k| k < span.end)
                .chain(
                    [r.base() as u64, r.end() - 1]
                        .into_iter()
                        .filter(|&k| r.size() > 2 && k >= span.start as u64 && k < span.end),
                );
            let mut taken: Vec<u64> = taken.collect();
            taken.sort_unstable();
            for k in taken {
                consider(cur, k);
                cur = cur.max(k + 1);
            }
            consider(cur, span.end);
        }
        let b = best?;
        let len = b.end - b.start as u64;
        let give = (len / 2).max(1);
        Some(Span {
            start: (b.end - give) as u32,
            end: b.end,
        })
    }

    fn donate(&mut self, to: PeerName) {
        let span = if self.left || self.ring.is_empty() {
            None
        } else {
            self.donatable()
        };
        let granted = match span {
            Some(span) => match self.ring.transfer(span, self.me, to) {
                Ok(_) => {
                    self.stats.donations_given += 1;
                    self.dirty = true;
                    self.gossip_due = true;
                    self.recompute_usable();
                    true
                }
                Err(e) => {
                    self.last_error = Some(e.to_string());
                    false
                }
            },
            None => false,
        };
        self.push(
            Destination::Peer(to),
            Message::DonateReply {
                granted,
                ring: self.ring.clone(),
            },
        );
    }

    fn want_space(&mut self, now: Instant) {
        self.donation.wanted = true;
        self.check_space(now);
    }

    /// Clears the donation state once space is free; otherwise asks the next candidate.
    fn check_space(&mut self, now: Instant) {
        if !self.donation.wanted {
            return;
        }
        if self.left || self.find_free().is_some() {
            self.donation = Donation::default();
            return;
        }
        if self.donation.asked.is_some() || self.donation.retry_at.is_some() {
            return;
        }
        let mut candidates: Vec<(u64, PeerName)> = self
            .ring
            .shares()
            .into_iter()
            .filter(|(p, _)| {
                *p != self.me
                    && !self.donation.refused.contains(p)
                    && !self.ring.removed().contains(p)
            })
            .map(|(p, n)| (n, p))
            .collect();
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        match candidates.first() {
            Some(&(_, p)) => {
                self.donation.asked = Some((p, now + self.config.donate_timeout));
                self.stats.donations_asked += 1;
                self.push(Destination::Peer(p), Message::DonateRequest);
            }
            None => {
                self.donation.refused.clear();
                self.donation.retry_at = Some(now + self.config.donate_timeout);
            }
        }
    }
}

/// Whether every address of each span is at its version or a later one in `ring`.
fn carries(ring: &Ring, spans: &[(Span, u32)]) -> bool {
    !ring.is_empty()
        && spans.iter().all(|(span, version)| {
            ring.pieces()
                .filter(|p| p.end > span.start as u64 && (p.start as u64) < span.end)
                .all(|p| p.entry.version >= *version)
        })
}

fn covers_exactly(ring: &Ring, span: Span, want: Entry) -> bool {
    !ring.is_empty()
        && ring
            .pieces()
            .filter(|p| p.end > span.start as u64 && (p.start as u64) < span.end)
            .all(|p| p.entry == want)
}

/// `spans` with every address of `holes` removed (both sorted or not; spans are disjoint).
fn subtract(spans: &[Span], holes: impl Iterator<Item = Span> + Clone) -> Vec<Span> {
    let mut out = Vec::new();
    for s in spans {
        let mut pieces = vec![*s];
        for h in holes.clone() {
            let mut next = Vec::new();
            for p in pieces {
                let (hs, he) = (u64::from(h.start), h.end);
                let (ps, pe) = (u64::from(p.start), p.end);
                if he <= ps || hs >= pe {
                    next.push(p);
                    continue;
                }
                if hs > ps {
                    next.push(Span { start: p.start, end: hs });
                }
                if he < pe {
                    next.push(Span { start: he as u32, end: pe });
                }
            }
            pieces = next;
        }
        out.extend(pieces);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn seeded(me: u64, seeds: &[u64], range: &str) -> Ipam {
        let mut cfg = Config::new(Bootstrap::Seeds(seeds.iter().map(|&s| p(s)).collect()));
        cfg.range = range.parse().unwrap();
        Ipam::new(p(me), cfg, Instant::now()).unwrap()
    }

    /// Delivers everything `from` has queued to `to` (ignoring destinations).
    fn flush(now: Instant, from: &mut Ipam, to: &mut Ipam) -> usize {
        let mut n = 0;
        while let Some(t) = from.poll_transmit(now) {
            to.handle(now, from.name(), &t.payload).unwrap();
            n += 1;
        }
        n
    }

    #[test]
    fn allocate_is_idempotent_and_skips_reserved() {
        let now = Instant::now();
        let mut a = seeded(1, &[1], "10.0.0.0/30");
        assert_eq!(a.status(), Status::Ready);
        assert!(a.take_dirty(), "the division must be persisted");
        let x = a.allocate(now, "c1", "eth0").unwrap();
        assert_eq!(x, Ipv4Addr::new(10, 0, 0, 1), "network address skipped");
        assert!(a.take_dirty());
        assert_eq!(a.allocate(now, "c1", "eth0").unwrap(), x);
        assert!(!a.take_dirty(), "idempotent allocation changes nothing");
        assert_eq!(
            a.allocate(now, "c1", "eth1").unwrap(),
            Ipv4Addr::new(10, 0, 0, 2)
        );
        // .3 is the broadcast address: no space left, and nobody to ask.
        assert!(matches!(
            a.allocate(now, "c2", "eth0"),
            Err(AllocError::WaitingForSpace(_))
        ));
        assert_eq!(a.free_count(), 0);
        assert_eq!(
            a.release("c1", None),
            vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
        );
        assert!(a.release("c1", None).is_empty());
        assert_eq!(
            a.allocate(now, "c2", "eth0").unwrap(),
            Ipv4Addr::new(10, 0, 0, 1)
        );
    }

    #[test]
    fn claim_checks_ownership_and_holders() {
        let now = Instant::now();
        let mut a = seeded(1, &[1, 2], "10.0.0.0/24");
        a.claim("c1", "eth0", Ipv4Addr::new(10, 0, 0, 50)).unwrap();
        a.claim("c1", "eth0", Ipv4Addr::new(10, 0, 0, 50)).unwrap();
        assert!(matches!(
            a.claim("c1", "eth0", Ipv4Addr::new(10, 0, 0, 51)),
            Err(AllocError::HolderHasAddress { .. })
        ));
        assert!(matches!(
            a.claim("c2", "eth0", Ipv4Addr::new(10, 0, 0, 50)),
            Err(AllocError::InUse { .. })
        ));
        let err = a
            .claim("c2", "eth0", Ipv4Addr::new(10, 0, 0, 200))
            .unwrap_err();
        assert_eq!(
            err,
            AllocError::NotOwned {
                addr: Ipv4Addr::new(10, 0, 0, 200),
                owner: Some(p(2))
            }
        );
        assert!(matches!(
            a.claim("c2", "eth0", Ipv4Addr::new(10, 0, 1, 1)),
            Err(AllocError::OutOfRange { .. })
        ));
        assert!(matches!(
            a.claim("c2", "eth0", Ipv4Addr::new(10, 0, 0, 0)),
            Err(AllocError::Reserved(_))
        ));
        assert_eq!(
            a.allocate(now, "c3", "eth0").unwrap(),
            Ipv4Addr::new(10, 0, 0, 1)
        );
        assert_eq!(a.lookup("c1", "eth0"), Some(Ipv4Addr::new(10, 0, 0, 50)));
        let gone = a.gc(["c3"]);
        assert_eq!(
            gone,
            vec![(Ipv4Addr::new(10, 0, 0, 50), Holder::new("c1", "eth0"))]
        );
        assert_eq!(a.allocations().count(), 1);
    }

    #[test]
    fn consensus_status_and_division() {
        let now = Instant::now();
        let cfg = |e| Config {
            range: "10.0.0.0/24".parse().unwrap(),
            ..Config::new(Bootstrap::Consensus { expected: e })
        };
        let mut a = Ipam::new(p(1), cfg(2), now).unwrap();
        let mut b = Ipam::new(p(2), cfg(2), now).unwrap();
        assert_eq!(
            a.status().to_string(),
            "awaiting consensus: quorum 2, known 1 (1 of 2 expected peers named)"
        );
        assert!(matches!(
            a.allocate(now, "c", "eth0"),
            Err(AllocError::NotReady(_))
        ));
        flush(now, &mut a, &mut b);
        assert_eq!(b.status(), Status::Ready, "b heard a quorum naming both");
        flush(now, &mut b, &mut a);
        assert_eq!(a.status(), Status::Ready);
        assert_eq!(a.ring(), b.ring());
        assert_eq!(a.ring().shares().len(), 2);
        // A third peer expecting 2 hears of too many names and says so.
        let mut e = Ipam::new(p(5), cfg(2), now).unwrap();
        let proposal = Message::Proposal {
            known: [p(3), p(4)].into(),
        }
        .to_bytes();
        e.handle(now, p(3), &proposal).unwrap();
        assert!(
            e.status()
                .to_string()
                .contains("3 peers heard of but 2 expected"),
            "{}",
            e.status()
        );
        assert!(e.ring().is_empty());
        assert!(Ipam::new(p(1), cfg(0), now).is_err());
    }

    #[test]
    fn malformed_and_conflicting_input_is_counted_not_fatal() {
        let now = Instant::now();
        let mut a = seeded(1, &[1, 2], "10.0.0.0/24");
        assert!(matches!(
            a.handle(now, p(2), &[1, 99]),
            Err(HandleError::Malformed { .. })
        ));
        let mut other = seeded(3, &[3, 4], "10.0.0.0/24");
        let _ = other.poll_transmit(now);
        let bytes = Message::Gossip(other.ring().clone()).to_bytes();
        assert!(matches!(
            a.handle(now, p(3), &bytes),
            Err(HandleError::Refused { .. })
        ));
        assert_eq!(a.stats().malformed, 1);
        assert_eq!(a.stats().refused, 1);
        assert!(a.last_error().unwrap().contains("conflicting ownership"));
        assert_eq!(
            a.ring(),
            &Ring::divide(a.ring().range(), &[p(1), p(2)]).unwrap()
        );
    }

    #[test]
    fn shutdown_hands_everything_over() {
        let now = Instant::now();
        let mut a = seeded(1, &[1, 2], "10.0.0.0/24");
        let mut b = seeded(2, &[1, 2], "10.0.0.0/24");
        a.allocate(now, "c1", "eth0").unwrap();
        assert_eq!(a.shutdown(now, &[]), Err(ShrinkError::NoLivePeer));
        assert_eq!(a.allocations().count(), 1, "nothing released when refused");
        assert_eq!(a.shutdown(now, &[p(1), p(2)]).unwrap(), Some(p(2)));
        assert_eq!(a.status(), Status::Left);
        assert_eq!(a.allocations().count(), 0);
        assert!(matches!(
            a.allocate(now, "c2", "eth0"),
            Err(AllocError::Left)
        ));
        flush(now, &mut a, &mut b);
        assert_eq!(
            b.usable(),
            &[Span {
                start: 0x0a00_0000,
                end: 0x0a00_0100
            }]
        );
        assert_eq!(b.free_count(), 254);
    }

    #[test]
    fn a_hand_over_is_done_only_once_the_receiver_acknowledges_it() {
        let t0 = Instant::now();
        let mut a = seeded(1, &[1, 2, 3], "10.0.0.0/24");
        let mut b = seeded(2, &[1, 2, 3], "10.0.0.0/24");
        let mut c = seeded(3, &[1, 2, 3], "10.0.0.0/24");
        let retry = a.config.handover_retry;
        assert_eq!(a.hand_over(), None);
        assert_eq!(a.shutdown(t0, &[p(2), p(3)]).unwrap(), Some(p(2)));
        assert_eq!(a.hand_over(), Some(HandOver::Waiting(p(2))));
        let sent: Vec<Transmit> = std::iter::from_fn(|| a.poll_transmit(t0)).collect();
        let hand_over = sent.iter().find(|t| t.to == Destination::Peer(p(2))).unwrap().payload.clone();
        assert!(matches!(Message::parse(&hand_over), Ok(Message::HandOver(_))));

        // b is slow: its gossip from before the hand-over acknowledges nothing, nor does c's
        // ring, even once c has heard of the hand-over (c is not the receiver).
        while let Some(t) = b.poll_transmit(t0) {
            a.handle(t0, p(2), &t.payload).unwrap();
        }
        assert_eq!(a.hand_over(), Some(HandOver::Waiting(p(2))));
        let broadcast = sent.iter().find(|t| t.to == Destination::All).unwrap();
        c.handle(t0, p(1), &broadcast.payload).unwrap();
        while let Some(t) = c.poll_transmit(t0) {
            a.handle(t0, p(3), &t.payload).unwrap();
        }
        assert_eq!(a.hand_over(), Some(HandOver::Waiting(p(2))));

        // Until it answers, the hand-over is sent again every retry interval, and only then.
        assert_eq!(a.poll_timeout(), Some(t0 + retry));
        a.handle_timeout(t0 + retry / 2);
        assert!(std::iter::from_fn(|| a.poll_transmit(t0 + retry / 2)).all(|t| t.to != Destination::Peer(p(2))));
        a.handle_timeout(t0 + retry);
        let again: Vec<Transmit> = std::iter::from_fn(|| a.poll_transmit(t0 + retry)).filter(|t| t.to == Destination::Peer(p(2))).collect();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].payload, hand_over, "the same ring again");

        // b handles the hand-over (twice: the first and the repeat) and answers each with its
        // ring, which carries a's space: acknowledged, and no more repeats.
        let later = t0 + retry * 2;
        for bytes in [&hand_over, &again[0].payload] {
            b.handle(later, p(1), bytes).unwrap();
        }
        assert_eq!(b.ring().shares()[&p(2)], 170);
        assert!(b.take_dirty(), "the merged ring must be persisted before the answer leaves");
        let answers: Vec<Transmit> = std::iter::from_fn(|| b.poll_transmit(later)).filter(|t| t.to == Destination::Peer(p(1))).collect();
        assert_eq!(answers.len(), 2);
        a.handle(later, p(2), &answers[0].payload).unwrap();
        assert_eq!(a.hand_over(), Some(HandOver::Acknowledged(p(2))));
        a.handle(later, p(2), &answers[1].payload).unwrap();
        assert_eq!(a.hand_over(), Some(HandOver::Acknowledged(p(2))));
        a.handle_timeout(later + retry * 10);
        // The periodic gossip may go to b by now; the hand-over does not.
        assert!(std::iter::from_fn(|| a.poll_transmit(later + retry * 10)).all(|t| !matches!(Message::parse(&t.payload), Ok(Message::HandOver(_)))));
        assert_eq!(a.poll_timeout(), Some(later + retry * 10 + a.config.gossip_interval), "only the gossip timer is left");
    }

    #[test]
    fn without_changes_the_ring_goes_to_two_peers_in_turn_and_each_gets_as_many() {
        let names: Vec<u64> = (1..=10).collect();
        let mut cores: Vec<Ipam> = names.iter().map(|&n| seeded(n, &names[1..], "10.0.0.0/16")).collect();
        let t0 = Instant::now();
        for c in &mut cores {
            while c.poll_transmit(t0).is_some() {}
        }
        let mut received = BTreeMap::<PeerName, usize>::new();
        let interval = cores[0].config.gossip_interval;
        let rounds = 9;
        for r in 1..=rounds {
            let now = t0 + interval * r;
            for c in &mut cores {
                c.handle_timeout(now);
                let sent: Vec<Transmit> = std::iter::from_fn(|| c.poll_transmit(now)).collect();
                assert_eq!(sent.len(), 2, "two rings per interval, not one to everyone");
                for t in sent {
                    let Destination::Peer(to) = t.to else { panic!("periodic gossip to all") };
                    assert_ne!(to, c.name());
                    *received.entry(to).or_default() += 1;
                }
            }
        }
        // p(1) owns nothing and is heard from by nobody here: the other nine share the turns.
        assert_eq!(received.values().sum::<usize>(), 2 * 10 * rounds as usize);
        assert!(received.values().all(|&n| n >= rounds as usize), "every owner gets rings: {received:?}");
    }

    #[test]
    fn a_peer_with_nothing_to_hand_over_waits_for_nobody() {
        let now = Instant::now();
        let mut a = seeded(1, &[2], "10.0.0.0/24");
        assert_eq!(a.shutdown(now, &[p(2)]).unwrap(), None);
        assert_eq!(a.hand_over(), None);
    }

    #[test]
    fn rmpeer_rules() {
        let now = Instant::now();
        let mut a = seeded(1, &[1, 2, 3], "10.0.0.0/24");
        let mut b = seeded(2, &[1, 2, 3], "10.0.0.0/24");
        assert_eq!(a.rmpeer(now, p(1), &[], &[]), Err(ShrinkError::Myself));
        assert_eq!(
            a.rmpeer(now, p(3), &[p(2), p(3)], &[p(3)]),
            Err(ShrinkError::Alive(p(3)))
        );
        assert_eq!(a.rmpeer(now, p(3), &[p(2), p(3)], &[p(2)]).unwrap(), 86);
        assert_eq!(
            a.pending_reclaims().len(),
            1,
            "waits for b's acknowledgement"
        );
        let before = a.usable().to_vec();
        assert_eq!(
            a.rmpeer(now, p(3), &[p(2), p(3)], &[p(2)]).unwrap(),
            0,
            "second rmpeer is a no-op"
        );
        flush(now, &mut a, &mut b);
        assert_eq!(a.usable(), before.as_slice());
        flush(now, &mut b, &mut a);
        assert!(
            a.pending_reclaims().is_empty(),
            "b's ring acknowledged the reclaim"
        );
        assert_eq!(a.ring().shares()[&p(1)], 85 + 86);
        assert_eq!(a.usable().len(), 2);
    }
}
