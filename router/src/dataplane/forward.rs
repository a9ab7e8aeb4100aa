//! Forwarding plans: given a switch verdict (frames from the bridge) or a relay envelope (frames
//! from a peer), which next hops get a copy, with which envelope, and whether the bridge does.
//! Pure functions over a [`RouteView`], so the rules are tested without sockets.
//!
//! Relaying, as Weave does: a frame for a peer that is not directly connected goes to the next
//! hop on the way; a broadcast goes along the origin's spanning tree and is delivered at every
//! peer on it. The envelope's layout is the sleeve's ([`weft_sleeve::wire::EnvelopeRepr`], peer
//! names as raw bytes); the rules are here: an origin sets `hops` to [`MAX_HOPS`], each relay
//! takes one, and a frame with none left is dropped, so a transient routing loop cannot circulate
//! a frame forever. A frame whose origin is this peer is dropped. A broadcast is accepted only
//! from our parent in its origin's tree: while peers' views of the mesh differ, two of them may
//! each forward it to us, and the second copy would reach the pods twice.

use weft_mesh::peer::PeerName;
use weft_sleeve::wire::{BROADCAST_PEER, EnvelopeRepr};

use super::switch::Verdict;

/// Relays a frame may take (more than any sane mesh diameter).
pub const MAX_HOPS: u8 = 16;

/// A fresh envelope from origin `src` to `dst` (a peer, or [`BROADCAST`]).
pub fn envelope(dst: PeerName, src: PeerName) -> EnvelopeRepr {
    EnvelopeRepr { dst: dst.0, src: src.0, hops: MAX_HOPS }
}

/// Destination of a broadcast.
pub const BROADCAST: PeerName = PeerName(BROADCAST_PEER);

/// What the forwarder needs to know of the mesh routes.
pub trait RouteView {
    /// The neighbour to send to on the way to `dest` (`dest` itself when directly connected).
    fn next_hop(&self, dest: PeerName) -> Option<PeerName>;
    /// The neighbours this peer forwards `source`'s broadcasts to (its children in `source`'s
    /// spanning tree).
    fn broadcast_hops(&self, source: PeerName) -> &[PeerName];
    /// The neighbour `source`'s broadcasts must come from (this peer's parent in the tree);
    /// `None` when `source` is not (yet) in the routes.
    fn broadcast_parent(&self, source: PeerName) -> Option<PeerName>;
}

/// Where copies of a frame go on (no allocation: a tree's hops are borrowed from the routes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Onward<'a> {
    /// Nowhere.
    #[default]
    Nowhere,
    /// To one next hop.
    One(PeerName, EnvelopeRepr),
    /// To each of these next hops, all with the same envelope.
    Tree(&'a [PeerName], EnvelopeRepr),
}

impl Onward<'_> {
    /// Every (next hop, envelope) copy.
    pub fn sends(&self) -> impl Iterator<Item = (PeerName, EnvelopeRepr)> + '_ {
        let (one, tree, env) = match *self {
            Onward::Nowhere => (None, &[][..], None),
            Onward::One(h, e) => (Some((h, e)), &[][..], None),
            Onward::Tree(hops, e) => (None, hops, Some(e)),
        };
        one.into_iter().chain(tree.iter().filter_map(move |h| env.map(|e| (*h, e))))
    }
}

/// What to do with one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan<'a> {
    /// Write the frame to the local bridge.
    pub local: bool,
    /// Copies sent on.
    pub onward: Onward<'a>,
    /// Why nothing was sent where something should have been (no route, hop limit).
    pub dropped: Option<&'static str>,
}

/// For a frame read from the bridge.
pub fn from_bridge<R: RouteView>(me: PeerName, verdict: Verdict, routes: &R) -> Plan<'_> {
    match verdict {
        Verdict::ToPeer(p) => match routes.next_hop(p) {
            Some(hop) => Plan { onward: Onward::One(hop, envelope(p, me)), ..Plan::default() },
            None => Plan { dropped: Some("no route"), ..Plan::default() },
        },
        Verdict::Flood => Plan {
            onward: Onward::Tree(routes.broadcast_hops(me), envelope(BROADCAST, me)),
            ..Plan::default()
        },
        Verdict::Local | Verdict::Drop(_) => Plan::default(),
    }
}

/// For a frame that arrived from neighbour `from` with envelope `env`.
pub fn from_peer<R: RouteView>(me: PeerName, from: PeerName, env: EnvelopeRepr, routes: &R) -> Plan<'_> {
    if env.src == me.0 {
        return Plan { dropped: Some("own frame came back"), ..Plan::default() };
    }
    let hops = env.hops.saturating_sub(1);
    if env.is_broadcast() {
        match routes.broadcast_parent(PeerName(env.src)) {
            Some(parent) if parent != from => return Plan { dropped: Some("broadcast not from our parent in its origin's tree"), ..Plan::default() },
            // An origin not yet in our routes (it just joined): delivered, not forwarded.
            None => return Plan { local: true, ..Plan::default() },
            Some(_) => {}
        }
        let onward = if hops == 0 { Onward::Nowhere } else { Onward::Tree(routes.broadcast_hops(PeerName(env.src)), EnvelopeRepr { hops, ..env }) };
        return Plan { local: true, onward, dropped: None };
    }
    if env.dst == me.0 {
        return Plan { local: true, ..Plan::default() };
    }
    if hops == 0 {
        return Plan { dropped: Some("hop limit"), ..Plan::default() };
    }
    match routes.next_hop(PeerName(env.dst)) {
        Some(hop) => Plan { onward: Onward::One(hop, EnvelopeRepr { hops, ..env }), ..Plan::default() },
        None => Plan { dropped: Some("no route"), ..Plan::default() },
    }
}

impl RouteView for weft_mesh::routes::Routes {
    fn next_hop(&self, dest: PeerName) -> Option<PeerName> {
        weft_mesh::routes::Routes::next_hop(self, dest)
    }
    fn broadcast_hops(&self, source: PeerName) -> &[PeerName] {
        self.broadcast_next_hops(source)
    }
    fn broadcast_parent(&self, source: PeerName) -> Option<PeerName> {
        weft_mesh::routes::Routes::broadcast_parent(self, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Routes seen from one peer: next hops, and per source the broadcast children and parent.
    struct Table {
        next: HashMap<PeerName, PeerName>,
        bcast: HashMap<PeerName, Vec<PeerName>>,
        parent: HashMap<PeerName, PeerName>,
    }
    impl RouteView for Table {
        fn next_hop(&self, d: PeerName) -> Option<PeerName> {
            self.next.get(&d).copied()
        }
        fn broadcast_hops(&self, s: PeerName) -> &[PeerName] {
            self.bcast.get(&s).map(Vec::as_slice).unwrap_or(&[])
        }
        fn broadcast_parent(&self, s: PeerName) -> Option<PeerName> {
            self.parent.get(&s).copied()
        }
    }
    const A: PeerName = PeerName([0x0e, 0, 0, 0, 0, 0xa]);
    const B: PeerName = PeerName([0x0e, 0, 0, 0, 0, 0xb]);
    const C: PeerName = PeerName([0x0e, 0, 0, 0, 0, 0xc]);

    // The line A - B - C, as each of them sees it.
    fn at_a() -> Table {
        Table { next: [(B, B), (C, B)].into(), bcast: [(A, vec![B])].into(), parent: [(A, A), (B, B), (C, B)].into() }
    }
    fn at_b() -> Table {
        Table {
            next: [(A, A), (C, C)].into(),
            bcast: [(A, vec![C]), (C, vec![A]), (B, vec![A, C])].into(),
            parent: [(A, A), (B, B), (C, C)].into(),
        }
    }
    fn at_c() -> Table {
        Table { next: [(A, B), (B, B)].into(), bcast: [(C, vec![B])].into(), parent: [(A, B), (B, B), (C, C)].into() }
    }

    #[test]
    fn unicast_to_a_far_peer_goes_via_its_next_hop_and_is_relayed() {
        let (a, b) = (at_a(), at_b());
        let plan = from_bridge(A, Verdict::ToPeer(C), &a);
        assert_eq!(plan.onward, Onward::One(B, EnvelopeRepr { dst: C.0, src: A.0, hops: MAX_HOPS }));
        let Onward::One(_, env) = plan.onward else { unreachable!() };
        let relay = from_peer(B, A, env, &b);
        assert_eq!((relay.local, relay.onward), (false, Onward::One(C, EnvelopeRepr { dst: C.0, src: A.0, hops: MAX_HOPS - 1 })));
        let Onward::One(_, env) = relay.onward else { unreachable!() };
        let c = at_c();
        let arrive = from_peer(C, B, env, &c);
        assert!(arrive.local && arrive.onward.sends().next().is_none());
    }

    #[test]
    fn broadcasts_follow_the_sources_tree_and_are_delivered_on_the_way() {
        let (a, b) = (at_a(), at_b());
        let flood = from_bridge(A, Verdict::Flood, &a);
        let sends: Vec<_> = flood.onward.sends().collect();
        assert_eq!(sends.iter().map(|s| s.0).collect::<Vec<_>>(), vec![B]);
        let at_b_plan = from_peer(B, A, sends[0].1, &b);
        assert!(at_b_plan.local);
        assert_eq!(at_b_plan.onward.sends().map(|s| s.0).collect::<Vec<_>>(), vec![C]);
        let c = at_c();
        let at_c_plan = from_peer(C, B, at_b_plan.onward.sends().next().unwrap().1, &c);
        assert!(at_c_plan.local && at_c_plan.onward.sends().next().is_none());
    }

    #[test]
    fn a_broadcast_from_a_peer_that_is_not_our_parent_is_dropped_so_it_arrives_once() {
        // A, B and C all connected; C's parent in A's tree is A. B still has the old view (no
        // A - C link) and forwards A's broadcast to C as well: C must deliver only A's copy.
        let c = Table { next: [(A, A), (B, B)].into(), bcast: [(C, vec![A, B])].into(), parent: [(A, A), (B, B), (C, C)].into() };
        let env = envelope(BROADCAST, A);
        let direct = from_peer(C, A, env, &c);
        assert!(direct.local && direct.dropped.is_none());
        let stale = from_peer(C, B, EnvelopeRepr { hops: MAX_HOPS - 1, ..env }, &c);
        assert_eq!((stale.local, stale.onward, stale.dropped), (false, Onward::Nowhere, Some("broadcast not from our parent in its origin's tree")));
        // An origin we have no routes for yet: delivered, never forwarded.
        let d = PeerName([0x0e, 0, 0, 0, 0, 0xd]);
        let newcomer = from_peer(C, A, envelope(BROADCAST, d), &c);
        assert_eq!((newcomer.local, newcomer.onward, newcomer.dropped), (true, Onward::Nowhere, None));
    }

    #[test]
    fn loops_and_missing_routes_are_dropped_with_a_reason() {
        let (a, b) = (at_a(), at_b());
        let no_route = from_bridge(A, Verdict::ToPeer(PeerName([9; 6])), &a);
        assert_eq!((no_route.onward, no_route.dropped), (Onward::Nowhere, Some("no route")));
        let tired = from_peer(B, A, EnvelopeRepr { dst: C.0, src: A.0, hops: 1 }, &b);
        assert_eq!(tired.dropped, Some("hop limit"));
        let own = from_peer(A, B, EnvelopeRepr { dst: BROADCAST.0, src: A.0, hops: 5 }, &a);
        assert_eq!((own.local, own.dropped), (false, Some("own frame came back")));
        let last_bcast_hop = from_peer(B, A, EnvelopeRepr { dst: BROADCAST.0, src: A.0, hops: 1 }, &b);
        assert!(last_bcast_hop.local && last_bcast_hop.onward == Onward::Nowhere);
    }
}
