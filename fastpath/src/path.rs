//! One peer's fast path, sans-IO: heartbeats over the VXLAN device, and whether the path is
//! usable.
//!
//! Each side sends a heartbeat every [`INTERVAL`] carrying a fresh nonce and the last nonce it
//! received from the other. A heartbeat that echoes one of our nonces sent within [`HOLD`] proves
//! that the path worked both ways within that time (ours crossed, then theirs). States:
//!
//! - [`State::Probing`]: new, nothing proven yet; traffic uses the sleeve;
//! - [`State::Established`]: proven within [`HOLD`]; traffic uses the kernel path;
//! - [`State::OnHold`]: the proof is older than [`HOLD`] (or, when probing, never came within
//!   [`PROBE_LIMIT`]) while the peer's router still answers on the sleeve: the path is broken
//!   (a blocked UDP 6785, say), traffic goes back to the sleeve. Heartbeats go on, so the path
//!   is established again by itself as soon as they cross.
//!
//! When the peer's router is silent on the sleeve too (it is restarting, or its host is gone),
//! an established path stays established: the kernels forward on their own, so traffic between
//! the pods goes on while a router restarts, and the sleeve could not carry it either.
//!
//! Contract: the caller passes `now` and calls [`Path::handle_timeout`] by
//! [`Path::poll_timeout`]; every state change is queued with its reason ([`Path::poll_change`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Time between heartbeats.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// How old the proof may be before an established path goes on hold: four heartbeats.
pub const HOLD: Duration = Duration::from_secs(1);
/// How long a new path probes before it is reported on hold.
pub const PROBE_LIMIT: Duration = Duration::from_secs(2);
/// Our nonces remembered for matching echoes (more than [`HOLD`] / [`INTERVAL`]).
const SENT_KEPT: usize = 8;

/// The state of a peer's fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not proven yet.
    Probing,
    /// Heartbeats cross both ways: use it.
    Established,
    /// Heartbeats stopped crossing while the peer is alive: do not use it.
    OnHold,
}

impl State {
    /// The word `status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Probing => "probing",
            State::Established => "established",
            State::OnHold => "on hold",
        }
    }
}

/// A state change and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The state before.
    pub from: State,
    /// The state now.
    pub to: State,
    /// Why, in words for a log line.
    pub reason: String,
}

/// A heartbeat to send: our nonce, and the last nonce we received from the peer (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    /// Our nonce for this heartbeat (never 0).
    pub nonce: u64,
    /// The peer's last nonce we received.
    pub echo: u64,
}

/// One peer's fast path.
#[derive(Debug)]
pub struct Path {
    state: State,
    since: Instant,
    created: Instant,
    next_nonce: u64,
    sent: VecDeque<(u64, Instant)>,
    peer_nonce: u64,
    last_rx: Option<Instant>,
    last_proof: Option<Instant>,
    next_tx: Instant,
    sleeve_alive: bool,
    changes: VecDeque<Change>,
}

impl Path {
    /// A new path, probing; `seed` starts the nonces (pass something unpredictable).
    pub fn new(now: Instant, seed: u64) -> Path {
        Path {
            state: State::Probing,
            since: now,
            created: now,
            next_nonce: seed.max(1),
            sent: VecDeque::with_capacity(SENT_KEPT),
            peer_nonce: 0,
            last_rx: None,
            last_proof: None,
            next_tx: now,
            sleeve_alive: true,
            changes: VecDeque::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Since when it is in this state.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// A heartbeat from the peer arrived over the VXLAN path.
    pub fn handle(&mut self, now: Instant, nonce: u64, echo: u64) {
        self.last_rx = Some(now);
        self.peer_nonce = nonce;
        if echo != 0 && self.sent.iter().any(|&(n, at)| n == echo && now.saturating_duration_since(at) < HOLD) {
            self.last_proof = Some(now);
        }
        self.evaluate(now);
    }

    /// Whether the peer's router is known to be alive although the VXLAN path is silent (the
    /// sleeve heard from it after the last heartbeat here): it decides whether silence on the
    /// VXLAN path means a broken path or a silent router. Initially true.
    pub fn set_sleeve_alive(&mut self, now: Instant, alive: bool) {
        self.sleeve_alive = alive;
        self.evaluate(now);
    }

    /// The next heartbeat to send, if one is due.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Beat> {
        if now < self.next_tx {
            return None;
        }
        self.next_tx = now + INTERVAL;
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1).max(1);
        if self.sent.len() == SENT_KEPT {
            self.sent.pop_front();
        }
        self.sent.push_back((nonce, now));
        Some(Beat { nonce, echo: self.peer_nonce })
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_tx;
        if self.state == State::Established
            && self.sleeve_alive
            && let Some(p) = self.last_proof
        {
            t = t.min(p + HOLD);
        }
        if self.state == State::Probing {
            t = t.min(self.since + PROBE_LIMIT);
        }
        t
    }

    /// When a heartbeat last arrived from the peer.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_rx
    }

    /// Runs the timers: silence puts an established path on hold.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.evaluate(now);
    }

    /// The next state change, with its reason.
    pub fn poll_change(&mut self) -> Option<Change> {
        self.changes.pop_front()
    }

    /// Why the path is not in use, for `status` (None when established).
    pub fn reason(&self, now: Instant) -> Option<String> {
        match self.state {
            State::Established => None,
            State::Probing => Some("probing the VXLAN path with heartbeats".into()),
            State::OnHold => Some(self.silence(now)),
        }
    }

    fn silence(&self, now: Instant) -> String {
        let rx_ok = self.last_rx.is_some_and(|t| now.saturating_duration_since(t) < HOLD);
        if rx_ok {
            return "the peer does not hear our heartbeats over VXLAN (is UDP 6785 blocked towards it?)".into();
        }
        let quiet = now.saturating_duration_since(self.last_rx.unwrap_or(self.created));
        format!("no heartbeat over VXLAN for {} s (is UDP 6785 blocked?)", quiet.as_secs().max(1))
    }

    fn proven(&self, now: Instant) -> bool {
        self.last_proof.is_some_and(|t| now.saturating_duration_since(t) < HOLD)
    }

    fn evaluate(&mut self, now: Instant) {
        let proven = self.proven(now);
        match self.state {
            State::Probing | State::OnHold if proven => {
                self.change(now, State::Established, "heartbeats cross the VXLAN path both ways".into());
            }
            State::Established if !proven && self.sleeve_alive => {
                let why = self.silence(now);
                self.change(now, State::OnHold, why);
            }
            State::Probing if now.saturating_duration_since(self.since) >= PROBE_LIMIT && self.sleeve_alive => {
                let why = self.silence(now);
                self.change(now, State::OnHold, why);
            }
            _ => {}
        }
    }

    fn change(&mut self, now: Instant, to: State, reason: String) {
        self.changes.push_back(Change { from: self.state, to, reason });
        self.state = to;
        self.since = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sides of one path on a virtual clock; `ab`/`ba` say whether heartbeats cross each way.
    struct Pair {
        now: Instant,
        a: Path,
        b: Path,
        ab: bool,
        ba: bool,
        changes: Vec<(char, Duration, Change)>,
        start: Instant,
    }

    impl Pair {
        fn new() -> Pair {
            let now = Instant::now();
            Pair { now, a: Path::new(now, 1000), b: Path::new(now, 5000), ab: true, ba: true, changes: Vec::new(), start: now }
        }

        /// Runs for `d` in 10 ms steps.
        fn run(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now < end {
                self.now += Duration::from_millis(10);
                let now = self.now;
                self.a.handle_timeout(now);
                self.b.handle_timeout(now);
                if let Some(x) = self.a.poll_transmit(now)
                    && self.ab
                {
                    self.b.handle(now, x.nonce, x.echo);
                }
                if let Some(x) = self.b.poll_transmit(now)
                    && self.ba
                {
                    self.a.handle(now, x.nonce, x.echo);
                }
                while let Some(c) = self.a.poll_change() {
                    self.changes.push(('a', now - self.start, c));
                }
                while let Some(c) = self.b.poll_change() {
                    self.changes.push(('b', now - self.start, c));
                }
                assert!(self.a.poll_timeout() > now && self.b.poll_timeout() > now, "timers move on");
            }
        }

        fn last(&self, side: char) -> Option<&(char, Duration, Change)> {
            self.changes.iter().rev().find(|c| c.0 == side)
        }
    }

    #[test]
    fn establishes_once_heartbeats_cross_both_ways() {
        let mut p = Pair::new();
        assert_eq!(p.a.state(), State::Probing);
        p.run(Duration::from_millis(600));
        assert_eq!((p.a.state(), p.b.state()), (State::Established, State::Established));
        let (_, at, c) = p.last('a').unwrap();
        assert!(*at <= Duration::from_millis(300), "established after {at:?}");
        assert_eq!((c.from, c.to), (State::Probing, State::Established));
        assert_eq!(p.a.reason(p.now), None);
    }

    #[test]
    fn a_blocked_path_goes_on_hold_within_the_hold_time_and_comes_back_by_itself() {
        let mut p = Pair::new();
        p.run(Duration::from_secs(1));
        let blocked = p.now - p.start;
        p.ab = false;
        p.ba = false;
        p.run(Duration::from_secs(3));
        for side in ['a', 'b'] {
            let (_, at, c) = p.last(side).unwrap();
            assert_eq!(c.to, State::OnHold, "{side}");
            assert!(*at - blocked <= HOLD + INTERVAL, "{side} on hold {:?} after the block", *at - blocked);
            assert!(c.reason.contains("no heartbeat over VXLAN") && c.reason.contains("6785"), "{}", c.reason);
        }
        assert!(p.a.reason(p.now).unwrap().contains("for 3 s"), "{:?}", p.a.reason(p.now));
        let unblocked = p.now - p.start;
        p.ab = true;
        p.ba = true;
        p.run(Duration::from_secs(2));
        for side in ['a', 'b'] {
            let (_, at, c) = p.last(side).unwrap();
            assert_eq!(c.to, State::Established);
            assert!(*at - unblocked <= 2 * INTERVAL, "{side} back after {:?}", *at - unblocked);
        }
    }

    #[test]
    fn one_way_loss_is_detected_on_both_sides_with_the_direction() {
        let mut p = Pair::new();
        p.run(Duration::from_secs(1));
        p.ba = false; // A no longer hears B; B still hears A, but A's echoes of B stop.
        p.run(Duration::from_secs(2));
        assert_eq!((p.a.state(), p.b.state()), (State::OnHold, State::OnHold));
        assert!(p.a.reason(p.now).unwrap().contains("no heartbeat over VXLAN"));
        assert!(p.b.reason(p.now).unwrap().contains("does not hear our heartbeats"), "{:?}", p.b.reason(p.now));
    }

    #[test]
    fn a_silent_router_keeps_an_established_path() {
        let mut p = Pair::new();
        p.run(Duration::from_secs(1));
        // B's router stops (killed): nothing on either overlay.
        p.ab = false;
        p.ba = false;
        let now = p.now;
        p.a.set_sleeve_alive(now, false);
        p.b.set_sleeve_alive(now, false);
        p.run(Duration::from_secs(5));
        assert_eq!(p.a.state(), State::Established, "{:?}", p.changes);
        // It is back: heartbeats cross again, then the sleeve answers: nothing changed on the way.
        p.ab = true;
        p.ba = true;
        p.run(Duration::from_millis(300));
        let now = p.now;
        p.a.set_sleeve_alive(now, true);
        p.run(Duration::from_secs(1));
        assert_eq!(p.a.state(), State::Established);
        assert_eq!(p.changes.iter().filter(|c| c.0 == 'a').count(), 1, "{:?}", p.changes);
    }

    #[test]
    fn a_path_that_never_works_is_reported_on_hold_and_stale_echoes_prove_nothing() {
        let mut p = Pair::new();
        p.ab = false;
        p.run(PROBE_LIMIT + Duration::from_millis(100));
        assert_eq!(p.a.state(), State::OnHold);
        assert_eq!(p.b.state(), State::OnHold);
        // An echo of a nonce older than HOLD does not establish.
        let now = p.now;
        let mut a = Path::new(now, 77);
        let old = a.poll_transmit(now).unwrap();
        a.handle(now + HOLD + Duration::from_millis(1), 9, old.nonce);
        assert_eq!(a.state(), State::Probing);
        a.handle(now + HOLD + Duration::from_millis(2), 9, 12345);
        assert_eq!(a.state(), State::Probing, "an unknown echo proves nothing");
    }
}
