//! Which addresses to dial, and when (sans-IO, `now` passed in).
//!
//! Targets come from the command line and environment ([`Source::Configured`], kept until
//! `weft forget`), from Kubernetes Nodes ([`Source::Kubernetes`], kept while the Node exists)
//! and from gossip ([`Source::Gossip`], the addresses other peers report for their connections;
//! [`State::Dropped`] after [`Config::gossip_give_up`] failures in a row, or at once when the
//! host has no route to it ([`Targets::drop_target`]); a dropped target keeps its reason for
//! `weft status`, is not dialled and not learned again from gossip, and comes back only when
//! the mesh learns that its peer is back ([`Targets::dial_now`]) or another source names it). A target's source only rises (gossip, Kubernetes,
//! configured), so a target both configured and a Node's stays when its Node goes. A target is dialled when it is due, not
//! already being dialled or connected, and the connection limit allows. Failures back off
//! exponentially from [`Config::base`] to [`Config::max`], each delay scaled by a random factor
//! in [0.5, 1.5) so that peers restarting together do not dial in lockstep. Failures are
//! forgiven (the backoff starts again from the base) only after a connection that stayed up
//! for [`Config::stable`]: a peer that keeps accepting and dropping is backed off like one that
//! never answers.
//!
//! Recovery is faster than first contact: for [`Config::recent`] after an established
//! connection to a target is lost ([`Targets::lost`]), it is retried every
//! [`Config::recent_retry`] (jittered the same way) without backoff and without counting
//! towards a gossip target's give-up, so a peer that restarts is reached within about that
//! long of listening again. [`Targets::dial_now`] makes a waiting target due at once, its
//! backoff reset: for when the mesh learns that the peer is back (gossip reports it connected).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Where a target came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--peer`, `WEFT_PEERS` or `weft connect`.
    Configured,
    /// A Kubernetes Node's address (`--kube-peers`).
    Kubernetes,
    /// Learned from gossip.
    Gossip,
}

impl Source {
    /// Which source wins when a target comes from two.
    fn rank(self) -> u8 {
        match self {
            Source::Gossip => 0,
            Source::Kubernetes => 1,
            Source::Configured => 2,
        }
    }
}

/// What is happening with a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting to be dialled at this time.
    Idle(Instant),
    /// A dial is in progress.
    Dialling,
    /// Connected.
    Connected,
    /// Given up (a gossiped address that failed too often or has no route); not dialled.
    Dropped,
}

/// Backoff and limits.
#[derive(Clone, Debug)]
pub struct Config {
    /// First retry delay.
    pub base: Duration,
    /// Largest retry delay.
    pub max: Duration,
    /// Gossip-learned targets are dropped after this many failures in a row.
    pub gossip_give_up: u32,
    /// How long after losing an established connection a target is retried quickly.
    pub recent: Duration,
    /// The retry delay during [`recent`](Self::recent) (jittered).
    pub recent_retry: Duration,
    /// How long a connection must have lasted for its loss to reset the backoff.
    pub stable: Duration,
    /// Losses of connections shorter than [`stable`](Self::stable) in a row that still open a
    /// quick window (a peer restarted twice within seconds is still reached at once); after
    /// more, the target backs off (a peer that accepts and drops).
    pub quick_short_losses: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
            gossip_give_up: 5,
            recent: Duration::from_secs(20),
            recent_retry: Duration::from_millis(500),
            stable: Duration::from_secs(10),
            quick_short_losses: 3,
        }
    }
}

#[derive(Clone, Debug)]
struct Target {
    source: Source,
    state: State,
    failures: u32,
    last_error: Option<String>,
    /// Retried quickly until then (an established connection was lost).
    recent_until: Option<Instant>,
    /// When the current connection came up.
    connected_at: Option<Instant>,
    /// Connections lost before [`Config::stable`] since the last one that lasted.
    short_losses: u32,
    /// Quick retries that failed since the connection was lost.
    quick_failures: u32,
}

/// The dial targets.
#[derive(Debug)]
pub struct Targets {
    config: Config,
    targets: BTreeMap<String, Target>,
    rng: u64,
}

impl Targets {
    /// No targets; `seed` drives the jitter.
    pub fn new(config: Config, seed: u64) -> Targets {
        Targets { config, targets: BTreeMap::new(), rng: seed | 1 }
    }

    /// Adds a target (due at once). Its source only rises: a configured target stays configured;
    /// a dropped one named by a higher source is dialled again.
    pub fn add(&mut self, now: Instant, addr: &str, source: Source) {
        self.add_after(now, addr, source, Duration::ZERO);
    }

    /// As [`add`](Self::add), a new target due only after `delay` (scaled by a random factor in
    /// [0.5, 1.5) unless zero): for pacing the dials of many addresses learned at once.
    pub fn add_after(&mut self, now: Instant, addr: &str, source: Source, delay: Duration) {
        let at = if delay.is_zero() { now } else { now + delay.mul_f64(0.5 + self.jitter()) };
        let t = self.targets.entry(addr.to_owned()).or_insert(Target {
            source,
            state: State::Idle(at),
            failures: 0,
            last_error: None,
            recent_until: None,
            connected_at: None,
            short_losses: 0,
            quick_failures: 0,
        });
        if source.rank() > t.source.rank() {
            t.source = source;
            if t.state == State::Dropped {
                t.state = State::Idle(now);
                t.failures = 0;
            }
        }
    }

    /// Gives a gossiped target up at once (e.g. no route to it), `reason` kept; true if it was
    /// a gossiped target (the others are never dropped: the caller retries them).
    pub fn drop_target(&mut self, addr: &str, reason: &str) -> bool {
        match self.targets.get_mut(addr) {
            Some(t) if t.source == Source::Gossip => {
                t.state = State::Dropped;
                t.last_error = Some(reason.to_owned());
                true
            }
            _ => false,
        }
    }

    /// Dropped targets and why, for `weft status`.
    pub fn dropped(&self) -> Vec<(String, String)> {
        self.targets.iter().filter(|(_, t)| t.state == State::Dropped).map(|(a, t)| (a.clone(), t.last_error.clone().unwrap_or_default())).collect()
    }

    /// Why the last attempt at `addr` failed, if it did.
    pub fn last_error(&self, addr: &str) -> Option<&str> {
        self.targets.get(addr).and_then(|t| t.last_error.as_deref())
    }

    /// Where a target came from.
    pub fn source(&self, addr: &str) -> Option<Source> {
        self.targets.get(addr).map(|t| t.source)
    }

    /// Removes a target; true if it was there.
    pub fn forget(&mut self, addr: &str) -> bool {
        self.targets.remove(addr).is_some()
    }

    /// Configured targets, for `weft status targets`.
    pub fn configured(&self) -> Vec<String> {
        self.targets.iter().filter(|(_, t)| t.source == Source::Configured).map(|(a, _)| a.clone()).collect()
    }

    /// A target's state.
    pub fn state(&self, addr: &str) -> Option<State> {
        self.targets.get(addr).map(|t| t.state)
    }

    /// Targets to dial now, at most `room` of them; they become [`State::Dialling`].
    pub fn due(&mut self, now: Instant, room: usize) -> Vec<String> {
        self.due_except(now, room, |_| false)
    }

    /// As [`due`](Self::due), leaving waiting the targets `covered` says need no dial now (e.g.
    /// their peer is connected through another address).
    pub fn due_except(&mut self, now: Instant, room: usize, covered: impl Fn(&str) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        for (a, t) in self.targets.iter_mut() {
            if out.len() >= room {
                break;
            }
            if matches!(t.state, State::Idle(at) if at <= now) && !covered(a) {
                t.state = State::Dialling;
                out.push(a.clone());
            }
        }
        out
    }

    /// The earliest time a target falls due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.targets
            .values()
            .filter_map(|t| match t.state {
                State::Idle(at) => Some(at),
                _ => None,
            })
            .min()
    }

    /// A dial of `addr` connected (or its peer is connected otherwise). The backoff is reset
    /// only if the connection then lasts [`Config::stable`] (see [`lost`](Self::lost)).
    pub fn connected(&mut self, now: Instant, addr: &str) {
        if let Some(t) = self.targets.get_mut(addr) {
            if t.state != State::Connected {
                t.connected_at = Some(now);
            }
            t.state = State::Connected;
            t.last_error = None;
            t.quick_failures = 0;
        }
    }

    /// A dial failed or a connection to `addr` ended: returns when it will be retried (None if
    /// the target was dropped or is unknown).
    pub fn failed(&mut self, now: Instant, addr: &str, reason: &str) -> Option<Instant> {
        let give_up = self.config.gossip_give_up;
        let t = self.targets.get_mut(addr)?;
        t.last_error = Some(reason.to_owned());
        let delay = if t.recent_until.is_some_and(|u| now < u) {
            t.quick_failures = t.quick_failures.saturating_add(1);
            self.config.recent_retry
        } else {
            t.failures = t.failures.saturating_add(1);
            if t.source == Source::Gossip && t.failures >= give_up {
                t.state = State::Dropped;
                return None;
            }
            self.config.base.saturating_mul(1u32 << (t.failures - 1).min(16)).min(self.config.max)
        };
        let at = now + delay.mul_f64(0.5 + self.jitter());
        if let Some(t) = self.targets.get_mut(addr) {
            t.state = State::Idle(at);
        }
        Some(at)
    }

    /// Puts a target being dialled back to waiting, due after `delay`, without counting a
    /// failure (the dial was not made: e.g. the peer is dialling us right now).
    pub fn postpone(&mut self, now: Instant, addr: &str, delay: Duration) {
        let at = now + delay.mul_f64(0.5 + self.jitter());
        if let Some(t) = self.targets.get_mut(addr).filter(|t| t.state == State::Dialling) {
            t.state = State::Idle(at);
        }
    }

    /// The established connection to `addr` was lost: it is retried every
    /// [`Config::recent_retry`] for [`Config::recent`] (the peer may be restarting), without
    /// counting failures. The backoff is reset only if the connection had lasted
    /// [`Config::stable`]; after more than [`Config::quick_short_losses`] shorter ones in a row
    /// no new quick window is opened either (a peer that accepts and drops is backed off). Returns when it will be retried (None if
    /// dropped or unknown).
    pub fn lost(&mut self, now: Instant, addr: &str, reason: &str) -> Option<Instant> {
        let (recent, stable, quick) = (self.config.recent, self.config.stable, self.config.quick_short_losses);
        let t = self.targets.get_mut(addr)?;
        if t.connected_at.take().is_some_and(|at| now.saturating_duration_since(at) >= stable) {
            t.failures = 0;
            t.short_losses = 0;
        } else {
            t.short_losses = t.short_losses.saturating_add(1);
        }
        t.recent_until = (t.short_losses <= quick).then_some(now + recent);
        self.failed(now, addr, reason)
    }

    /// Whether `addr` lost an established connection within [`Config::recent`].
    pub fn is_recent(&self, now: Instant, addr: &str) -> bool {
        self.targets.get(addr).is_some_and(|t| t.recent_until.is_some_and(|u| now < u))
    }

    /// How many quick retries of `addr` failed since its connection was lost: a dial timeout
    /// kept short for a restarting peer is lengthened with it, so that a loaded peer whose
    /// handshakes take longer is still reached.
    pub fn quick_failures(&self, addr: &str) -> u32 {
        self.targets.get(addr).map_or(0, |t| t.quick_failures)
    }

    /// Makes a target waiting for its retry, or dropped, due now, its backoff reset (the peer is
    /// known to be back). True if it was waiting or dropped.
    pub fn dial_now(&mut self, now: Instant, addr: &str) -> bool {
        match self.targets.get_mut(addr) {
            Some(t) if matches!(t.state, State::Idle(at) if at > now) || t.state == State::Dropped => {
                t.state = State::Idle(now);
                t.failures = 0;
                true
            }
            _ => false,
        }
    }

    /// xorshift64*: a jitter factor in [0, 1).
    fn jitter(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_exponentially_with_jitter_up_to_the_cap() {
        let now = Instant::now();
        let mut t = Targets::new(Config::default(), 42);
        t.add(now, "192.0.2.2:6783", Source::Configured);
        assert_eq!(t.due(now, 10), vec!["192.0.2.2:6783".to_owned()]);
        assert!(t.due(now, 10).is_empty(), "not twice while dialling");
        let mut delays = Vec::new();
        for _ in 0..10 {
            let at = t.failed(now, "192.0.2.2:6783", "refused").unwrap();
            delays.push(at - now);
            assert_eq!(t.due(at - Duration::from_millis(1), 10).len(), 0);
            assert_eq!(t.due(at, 10).len(), 1);
        }
        for (i, d) in delays.iter().enumerate() {
            let nominal = Duration::from_secs(1 << i.min(6)).min(Config::default().max);
            assert!(*d >= nominal / 2 && *d < nominal * 3 / 2, "try {i}: {d:?} vs {nominal:?}");
        }
        assert!(delays.windows(2).any(|w| w[0] != w[1] / 2), "jittered");
    }

    #[test]
    fn gossip_targets_are_dropped_after_repeated_failures_configured_ones_never() {
        let now = Instant::now();
        let mut t = Targets::new(Config { gossip_give_up: 3, ..Config::default() }, 1);
        t.add(now, "a:1", Source::Gossip);
        t.add(now, "b:1", Source::Configured);
        for _ in 0..3 {
            t.due(now + Duration::from_secs(3600), 10);
            t.failed(now, "a:1", "x");
            t.failed(now, "b:1", "x");
        }
        assert_eq!(t.state("a:1"), Some(State::Dropped));
        assert_eq!(t.dropped(), vec![("a:1".to_owned(), "x".to_owned())]);
        assert!(matches!(t.state("b:1"), Some(State::Idle(_))));
        assert_eq!(t.configured(), vec!["b:1".to_owned()]);
        t.connected(now, "b:1");
        assert_eq!(t.state("b:1"), Some(State::Connected));
        assert!(t.forget("b:1") && !t.forget("b:1"));
    }

    #[test]
    fn a_source_only_rises_and_kubernetes_targets_are_kept_through_failures() {
        let now = Instant::now();
        let mut t = Targets::new(Config { gossip_give_up: 2, ..Config::default() }, 3);
        t.add(now, "n:1", Source::Gossip);
        t.add(now, "n:1", Source::Kubernetes);
        assert_eq!(t.source("n:1"), Some(Source::Kubernetes));
        for _ in 0..5 {
            t.failed(now, "n:1", "x");
        }
        assert_eq!(t.source("n:1"), Some(Source::Kubernetes), "a Node's target is kept while the Node exists");
        t.add(now, "n:1", Source::Configured);
        t.add(now, "n:1", Source::Kubernetes);
        t.add(now, "n:1", Source::Gossip);
        assert_eq!(t.source("n:1"), Some(Source::Configured));
        assert_eq!(t.configured(), vec!["n:1".to_owned()]);
    }

    #[test]
    fn a_lost_connection_is_retried_quickly_for_a_while_then_backs_off() {
        let now = Instant::now();
        let mut t = Targets::new(Config::default(), 3);
        t.add(now, "g:1", Source::Gossip);
        t.due(now, 10);
        t.connected(now, "g:1");
        let now = now + Config::default().stable;
        let first = t.lost(now, "g:1", "timed out").unwrap();
        assert!(first - now >= Duration::from_millis(250) && first - now < Duration::from_millis(750), "{:?}", first - now);
        assert!(t.is_recent(now, "g:1"));
        assert_eq!(t.quick_failures("g:1"), 1);
        // Many quick failures in the window neither back off nor drop a gossip target.
        let mut at = first;
        for _ in 0..30 {
            assert_eq!(t.due(at, 10).len(), 1);
            let next = t.failed(at, "g:1", "no answer").unwrap();
            assert!(next - at < Duration::from_millis(750), "{:?}", next - at);
            at = next;
        }
        // After the window, exponential backoff again from the base.
        let late = now + Config::default().recent + Duration::from_secs(1);
        assert!(!t.is_recent(late, "g:1"));
        t.due(late + Duration::from_secs(100), 10);
        let next = t.failed(late, "g:1", "no answer").unwrap();
        assert!(next - late >= Duration::from_millis(500), "{:?}", next - late);
    }

    #[test]
    fn a_peer_restarted_again_within_seconds_is_retried_quickly_but_one_that_keeps_dropping_backs_off() {
        let config = Config::default();
        let mut now = Instant::now();
        let mut t = Targets::new(config.clone(), 9);
        t.add(now, "p:1", Source::Configured);
        t.due(now, 10);
        for loss in 1..=config.quick_short_losses + 1 {
            t.connected(now, "p:1");
            now += Duration::from_secs(4); // shorter than `stable`
            let next = t.lost(now, "p:1", "timed out").unwrap();
            let quick = loss <= config.quick_short_losses;
            assert_eq!(t.is_recent(now, "p:1"), quick, "loss {loss}");
            if quick {
                assert!(next - now < Duration::from_millis(750), "loss {loss}: {:?}", next - now);
            }
            assert_eq!(t.due(next, 10).len(), 1);
            now = next;
        }
    }

    #[test]
    fn dial_now_resets_a_waiting_targets_backoff() {
        let now = Instant::now();
        let mut t = Targets::new(Config::default(), 5);
        t.add(now, "b:1", Source::Configured);
        for _ in 0..6 {
            t.due(now + Duration::from_secs(3600), 10);
            t.failed(now, "b:1", "refused");
        }
        assert!(t.due(now, 10).is_empty(), "backed off");
        assert!(t.dial_now(now, "b:1"));
        assert_eq!(t.due(now, 10), vec!["b:1".to_owned()]);
        assert!(!t.dial_now(now, "b:1"), "not while dialling");
        let again = t.failed(now, "b:1", "refused").unwrap();
        assert!(again - now < Duration::from_millis(1500), "backoff restarted from the base");
    }

    #[test]
    fn a_dropped_gossip_target_stays_dropped_until_its_peer_is_back_or_another_source_names_it() {
        let now = Instant::now();
        let mut t = Targets::new(Config::default(), 11);
        t.add(now, "g:1", Source::Gossip);
        let mut at = now;
        for i in 0..Config::default().gossip_give_up {
            assert_eq!(t.due(at, 10), vec!["g:1".to_owned()], "attempt {i}");
            match t.failed(at, "g:1", "no answer") {
                Some(next) => at = next,
                None => assert_eq!(i + 1, Config::default().gossip_give_up, "dropped too early"),
            }
        }
        assert_eq!(t.state("g:1"), Some(State::Dropped));
        assert!(t.due(at + Duration::from_secs(3600), 10).is_empty(), "a dropped target is not dialled");
        assert_eq!(t.poll_timeout(), None);
        // Gossip naming it again changes nothing; the peer reported back does.
        t.add(now, "g:1", Source::Gossip);
        assert_eq!(t.state("g:1"), Some(State::Dropped));
        assert!(t.dial_now(at, "g:1"));
        assert_eq!(t.due(at, 10), vec!["g:1".to_owned()]);
        // No route: dropped at once with the reason; a configured target never is.
        assert!(t.drop_target("g:1", "no route to host"));
        assert_eq!(t.dropped(), vec![("g:1".to_owned(), "no route to host".to_owned())]);
        t.add(now, "c:1", Source::Configured);
        assert!(!t.drop_target("c:1", "no route to host"));
        // A Node's address revives it.
        t.add(at, "g:1", Source::Kubernetes);
        assert_eq!(t.state("g:1"), Some(State::Idle(at)));
    }

    #[test]
    fn the_backoff_is_reset_only_after_a_stable_connection() {
        let now = Instant::now();
        let cfg = Config::default();
        let mut t = Targets::new(cfg.clone(), 13);
        t.add(now, "c:1", Source::Configured);
        // A peer that accepts and drops at once: quick retries for one window, then the delays
        // keep growing.
        let mut at = now;
        let mut delays = Vec::new();
        while at < now + cfg.recent + Duration::from_secs(120) {
            t.due(at, 10);
            t.connected(at, "c:1");
            let next = t.lost(at + Duration::from_millis(100), "c:1", "closed").unwrap();
            delays.push(next - at);
            at = next;
        }
        assert!(delays[0] < Duration::from_millis(900), "{delays:?}");
        assert!(delays.len() < 60, "{} tries in {:?}", delays.len(), at - now);
        assert!(*delays.last().unwrap() >= Duration::from_secs(8), "{delays:?}");
        // A connection that lasted: retried quickly again, from the base.
        t.due(at, 10);
        t.connected(at, "c:1");
        let up = at + cfg.stable;
        let next = t.lost(up, "c:1", "closed").unwrap();
        assert!(next - up < Duration::from_millis(750), "{:?}", next - up);
        assert!(t.is_recent(up, "c:1"));
        let late = up + cfg.recent + Duration::from_secs(1);
        t.due(late, 10);
        let next = t.failed(late, "c:1", "no answer").unwrap();
        assert!(next - late < Duration::from_millis(1500), "backoff from the base: {:?}", next - late);
    }

    #[test]
    fn covered_and_delayed_targets_wait() {
        let now = Instant::now();
        let mut t = Targets::new(Config::default(), 17);
        t.add(now, "a:1", Source::Gossip);
        t.add(now, "b:1", Source::Gossip);
        assert_eq!(t.due_except(now, 10, |a| a == "a:1"), vec!["b:1".to_owned()]);
        assert_eq!(t.due(now, 10), vec!["a:1".to_owned()], "due once no longer covered");
        t.add_after(now, "d:1", Source::Gossip, Duration::from_secs(2));
        assert!(t.due(now + Duration::from_millis(999), 10).is_empty());
        assert_eq!(t.due(now + Duration::from_secs(3), 10), vec!["d:1".to_owned()]);
        t.postpone(now, "d:1", Duration::from_secs(2));
        assert!(t.due(now + Duration::from_millis(999), 10).is_empty(), "postponed");
        assert_eq!(t.due(now + Duration::from_secs(3), 10), vec!["d:1".to_owned()], "and no failure counted");
        assert_eq!(t.last_error("d:1"), None);
    }

    #[test]
    fn the_limit_caps_how_many_are_dialled_at_once() {
        let now = Instant::now();
        let mut t = Targets::new(Config::default(), 7);
        for i in 0..5 {
            t.add(now, &format!("h{i}:1"), Source::Gossip);
        }
        assert_eq!(t.due(now, 2).len(), 2);
        assert_eq!(t.due(now, 10).len(), 3);
        assert_eq!(t.poll_timeout(), None);
    }
}
