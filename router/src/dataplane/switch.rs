//! The switch (sans-IO): learns which peer each MAC address lives behind, ages entries out, and
//! decides where a frame goes.
//!
//! Frames come from two sides. From the local bridge (read from `weft-tap`, [`Switch::from_local`]):
//! the source is learned as local; the verdict is a peer (the destination's MAC is known behind
//! it), a flood (group or unknown destination: every peer, along our broadcast tree), or a drop.
//! From a peer (over an overlay, addressed to us or broadcast by `origin`,
//! [`PeerLearning::from_peer`]): the frame is delivered to the bridge, and its source is learned
//! as behind `origin`. That verdict needs no table, so the receive path decides each frame without
//! the switch's lock and applies what a whole batch taught under one lock afterwards
//! ([`Switch::learn_from_peers`]); until then (microseconds) a reply to a new address is flooded
//! and one to an address that moved goes to its old place. Relaying frames addressed to other
//! peers is routing, not switching: the data plane does it from the mesh routes without asking
//! here. Expired entries are never used; [`Switch::handle_timeout`] removes them.
//!
//! Contract: the caller passes `now`; nothing here reads a clock or does I/O. Link-local control
//! frames (01:80:c2:00:00:0X: STP, pause, LACP, LLDP) never cross hosts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use weft_mesh::peer::PeerName;

use super::ethernet::{Frame, Mac};

/// How long an unrefreshed MAC entry lives (Linux bridges default to 300 s).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// Where a MAC address lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Behind this host's bridge.
    Local,
    /// Behind another peer.
    Peer(PeerName),
}

/// Why a frame was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Malformed,
    /// Addressed to an 802.1D link-local control group.
    LinkLocalControl,
    /// From the bridge, for a MAC that is on the bridge too (the bridge delivers it).
    LocalDestination,
    /// A source address that no station may use (group or all-zero).
    BadSource,
}

/// What to do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send to this peer (the data plane finds the next hop).
    ToPeer(PeerName),
    /// Send to every peer, along this host's broadcast tree.
    Flood,
    /// Write to the local bridge.
    Local,
    /// Drop, for this reason.
    Drop(DropReason),
}

/// What learning a source address changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// A new address.
    New,
    /// An address seen before at the same place.
    Refreshed,
    /// An address that moved (e.g. a pod moved hosts), from the given origin.
    Moved(Origin),
}

/// Counters of the switch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchStats {
    /// Addresses learned for the first time.
    pub learned: u64,
    /// Addresses that moved between origins.
    pub moved: u64,
    /// Entries aged out.
    pub aged: u64,
    /// Frames dropped, by reason.
    pub dropped: HashMap<DropReason, u64>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    origin: Origin,
    seen: Instant,
}

/// The MAC table and forwarding decisions of one host.
#[derive(Debug)]
pub struct Switch {
    table: HashMap<Mac, Entry>,
    max_age: Duration,
    stats: SwitchStats,
}

impl Switch {
    /// A switch whose entries live `max_age` without being refreshed.
    pub fn new(max_age: Duration) -> Switch {
        Switch { table: HashMap::new(), max_age, stats: SwitchStats::default() }
    }

    /// Decides for a frame read from the local bridge.
    pub fn from_local(&mut self, now: Instant, frame: &[u8]) -> Verdict {
        let Ok(f) = Frame::new_checked(frame) else { return self.drop(DropReason::Malformed) };
        if f.dst().is_link_local_control() {
            return self.drop(DropReason::LinkLocalControl);
        }
        if let Err(r) = self.learn(now, f.src(), Origin::Local) {
            return self.drop(r);
        }
        if f.dst().is_group() {
            return Verdict::Flood;
        }
        match self.lookup(now, f.dst()) {
            Some(Origin::Peer(p)) => Verdict::ToPeer(p),
            Some(Origin::Local) => self.drop(DropReason::LocalDestination),
            None => Verdict::Flood,
        }
    }

    /// Learns what a batch of frames from peers taught ([`PeerLearning::from_peer`]) and counts
    /// its drops; leaves `batch` empty (with its capacity) for the next one.
    pub fn learn_from_peers(&mut self, now: Instant, batch: &mut PeerLearning) {
        for (mac, origin) in batch.seen.drain(..) {
            // Sources were checked when they were noted.
            let _ = self.learn(now, mac, Origin::Peer(origin));
        }
        for r in batch.dropped.drain(..) {
            *self.stats.dropped.entry(r).or_default() += 1;
        }
    }

    /// Where `mac` lives, if known and not expired.
    pub fn lookup(&self, now: Instant, mac: Mac) -> Option<Origin> {
        self.table
            .get(&mac)
            .filter(|e| now.saturating_duration_since(e.seen) < self.max_age)
            .map(|e| e.origin)
    }

    /// Every address known and not expired, with where it lives.
    pub fn entries(&self, now: Instant) -> impl Iterator<Item = (Mac, Origin)> + '_ {
        self.table.iter().filter(move |(_, e)| now.saturating_duration_since(e.seen) < self.max_age).map(|(m, e)| (*m, e.origin))
    }

    /// Records that `mac` was seen at `origin`.
    pub fn learn(&mut self, now: Instant, mac: Mac, origin: Origin) -> Result<Learned, DropReason> {
        if is_bad_source(mac) {
            return Err(DropReason::BadSource);
        }
        let fresh = Entry { origin, seen: now };
        Ok(match self.table.insert(mac, fresh) {
            None => {
                self.stats.learned += 1;
                Learned::New
            }
            Some(old) if old.origin == origin => Learned::Refreshed,
            Some(old) => {
                self.stats.moved += 1;
                tracing::debug!(%mac, from = ?old.origin, to = ?origin, "MAC moved");
                Learned::Moved(old.origin)
            }
        })
    }

    /// Forgets every address learned behind `peer` (it left the mesh).
    pub fn forget_peer(&mut self, peer: PeerName) {
        self.table.retain(|_, e| e.origin != Origin::Peer(peer));
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work: the oldest entry's expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.table.values().map(|e| e.seen + self.max_age).min()
    }

    /// Ages out entries not refreshed within the maximum age.
    pub fn handle_timeout(&mut self, now: Instant) {
        let before = self.table.len();
        let max_age = self.max_age;
        self.table.retain(|_, e| now.saturating_duration_since(e.seen) < max_age);
        self.stats.aged += (before - self.table.len()) as u64;
    }

    /// Number of addresses in the table (expired ones included until aged out).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The switch's counters.
    pub fn stats(&self) -> &SwitchStats {
        &self.stats
    }

    fn drop(&mut self, r: DropReason) -> Verdict {
        *self.stats.dropped.entry(r).or_default() += 1;
        Verdict::Drop(r)
    }
}

/// A source address no station may use: a group address or all zeros.
fn is_bad_source(mac: Mac) -> bool {
    mac.is_group() || mac == Mac::default()
}

/// What frames from peers teach the switch, noted without its lock while a receive batch is
/// delivered, then applied at once by [`Switch::learn_from_peers`]. Keeps its capacity between
/// batches, so the receive path does not allocate once warm.
#[derive(Debug, Default)]
pub struct PeerLearning {
    seen: Vec<(Mac, PeerName)>,
    dropped: Vec<DropReason>,
}

impl PeerLearning {
    /// Decides for a frame that `origin` sent to us (unicast) or to everyone (broadcast): to the
    /// bridge, unless it is malformed, link-local control or from a bad source; notes its source
    /// to learn behind `origin` (once for a run of frames from the same source).
    pub fn from_peer(&mut self, origin: PeerName, frame: &[u8]) -> Verdict {
        let verdict = match Frame::new_checked(frame) {
            Err(_) => Verdict::Drop(DropReason::Malformed),
            Ok(f) if f.dst().is_link_local_control() => Verdict::Drop(DropReason::LinkLocalControl),
            Ok(f) if is_bad_source(f.src()) => Verdict::Drop(DropReason::BadSource),
            Ok(f) => {
                let seen = (f.src(), origin);
                if self.seen.last() != Some(&seen) {
                    self.seen.push(seen);
                }
                Verdict::Local
            }
        };
        if let Verdict::Drop(r) = verdict {
            self.dropped.push(r);
        }
        verdict
    }

    /// Whether nothing was noted since the last [`Switch::learn_from_peers`].
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty() && self.dropped.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = Mac([0x02, 0, 0, 0, 0, 0x0a]);
    const B: Mac = Mac([0x02, 0, 0, 0, 0, 0x0b]);
    const C: Mac = Mac([0x02, 0, 0, 0, 0, 0x0c]);

    fn frame(dst: Mac, src: Mac) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x08, 0x00, 0x45]);
        f
    }

    fn peer(n: u8) -> PeerName {
        PeerName([0x0e, 0, 0, 0, 0, n])
    }

    /// One frame from a peer, learned at once.
    fn from_peer(s: &mut Switch, now: Instant, origin: PeerName, frame: &[u8]) -> Verdict {
        let mut batch = PeerLearning::default();
        let v = batch.from_peer(origin, frame);
        s.learn_from_peers(now, &mut batch);
        assert!(batch.is_empty());
        v
    }

    #[test]
    fn a_batch_from_peers_is_learned_at_once_and_each_source_noted_once() {
        let t = Instant::now();
        let mut s = Switch::new(DEFAULT_MAX_AGE);
        let mut batch = PeerLearning::default();
        for _ in 0..5 {
            assert_eq!(batch.from_peer(peer(2), &frame(A, B)), Verdict::Local);
        }
        assert_eq!(batch.from_peer(peer(3), &frame(A, C)), Verdict::Local);
        assert_eq!(batch.from_peer(peer(3), &frame(A, Mac::default())), Verdict::Drop(DropReason::BadSource));
        assert_eq!(batch.seen.len(), 2, "a run of frames from one source is noted once");
        assert_eq!(s.lookup(t, B), None, "nothing is learned before the batch is applied");
        s.learn_from_peers(t, &mut batch);
        assert!(batch.is_empty());
        assert_eq!((s.lookup(t, B), s.lookup(t, C)), (Some(Origin::Peer(peer(2))), Some(Origin::Peer(peer(3)))));
        assert_eq!((s.stats().learned, s.stats().dropped[&DropReason::BadSource]), (2, 1));
    }

    #[test]
    fn unknown_and_group_destinations_flood_known_ones_go_to_their_peer() {
        let t = Instant::now();
        let mut s = Switch::new(DEFAULT_MAX_AGE);
        assert_eq!(s.from_local(t, &frame(B, A)), Verdict::Flood, "B unknown");
        assert_eq!(s.from_local(t, &frame(Mac::BROADCAST, A)), Verdict::Flood);
        assert_eq!(from_peer(&mut s, t, peer(2), &frame(A, B)), Verdict::Local);
        assert_eq!(s.lookup(t, B), Some(Origin::Peer(peer(2))));
        assert_eq!(s.from_local(t, &frame(B, A)), Verdict::ToPeer(peer(2)));
        assert_eq!(s.lookup(t, A), Some(Origin::Local));
    }

    #[test]
    fn frames_between_local_stations_are_left_to_the_bridge() {
        let t = Instant::now();
        let mut s = Switch::new(DEFAULT_MAX_AGE);
        s.from_local(t, &frame(A, C));
        assert_eq!(s.from_local(t, &frame(C, A)), Verdict::Drop(DropReason::LocalDestination));
    }

    #[test]
    fn a_mac_that_moves_between_hosts_follows() {
        let t = Instant::now();
        let mut s = Switch::new(DEFAULT_MAX_AGE);
        from_peer(&mut s, t, peer(2), &frame(A, B));
        assert_eq!(s.learn(t, B, Origin::Peer(peer(3))), Ok(Learned::Moved(Origin::Peer(peer(2)))));
        assert_eq!(s.from_local(t, &frame(B, A)), Verdict::ToPeer(peer(3)));
        s.from_local(t, &frame(A, B)); // B now shows up locally
        assert_eq!(s.lookup(t, B), Some(Origin::Local));
        assert_eq!(s.stats().moved, 2);
    }

    #[test]
    fn entries_age_out_unless_refreshed() {
        let t0 = Instant::now();
        let age = Duration::from_secs(10);
        let mut s = Switch::new(age);
        from_peer(&mut s, t0, peer(2), &frame(A, B));
        from_peer(&mut s, t0, peer(2), &frame(A, C));
        assert_eq!(s.poll_timeout(), Some(t0 + age));
        from_peer(&mut s, t0 + Duration::from_secs(8), peer(2), &frame(A, C)); // refresh C only
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(s.lookup(t1, B), None, "expired entries are not used even before aging");
        s.handle_timeout(t1);
        assert_eq!((s.len(), s.stats().aged), (1, 1));
        assert_eq!(s.lookup(t1, C), Some(Origin::Peer(peer(2))));
        assert_eq!(s.from_local(t1, &frame(B, A)), Verdict::Flood);
    }

    #[test]
    fn control_frames_bad_sources_and_runts_are_dropped_and_counted() {
        let t = Instant::now();
        let mut s = Switch::new(DEFAULT_MAX_AGE);
        let stp = Mac([0x01, 0x80, 0xc2, 0, 0, 0]);
        assert_eq!(s.from_local(t, &frame(stp, A)), Verdict::Drop(DropReason::LinkLocalControl));
        assert_eq!(from_peer(&mut s, t, peer(2), &frame(stp, B)), Verdict::Drop(DropReason::LinkLocalControl));
        assert_eq!(from_peer(&mut s, t, peer(2), &frame(A, Mac::BROADCAST)), Verdict::Drop(DropReason::BadSource));
        assert_eq!(s.from_local(t, &frame(A, Mac::default())), Verdict::Drop(DropReason::BadSource));
        for n in 0..14 {
            assert_eq!(s.from_local(t, &frame(A, B)[..n]), Verdict::Drop(DropReason::Malformed));
        }
        assert_eq!(s.stats().dropped[&DropReason::Malformed], 14);
        assert_eq!(s.stats().dropped[&DropReason::LinkLocalControl], 2);
        assert!(s.lookup(t, Mac::BROADCAST).is_none());
    }

    #[test]
    fn forgetting_a_peer_removes_its_addresses() {
        let t = Instant::now();
        let mut s = Switch::new(DEFAULT_MAX_AGE);
        from_peer(&mut s, t, peer(2), &frame(A, B));
        from_peer(&mut s, t, peer(3), &frame(A, C));
        s.forget_peer(peer(2));
        assert_eq!((s.lookup(t, B), s.lookup(t, C)), (None, Some(Origin::Peer(peer(3)))));
    }
}
