//! Which inbound connections may start a handshake (sans-IO, `now` passed in).
//!
//! Before a connection is authenticated it costs memory and, with a password, PAKE work, and a
//! failed PAKE is one password guess. So an inbound connection is admitted only if
//!
//! - fewer than [`Limits::max_pending`] connections are unauthenticated in total, and fewer than
//!   [`Limits::max_pending_per_source`] from its source;
//! - its source has failures left: each source has a bucket of [`Limits::failure_burst`] failed
//!   password attempts that refills by one every [`Limits::failure_refill`]; an empty bucket
//!   refuses, and a source never has more handshakes under way than failures left.
//!
//! A source is an IPv4 address or an IPv6 /64 (one host usually owns a whole /64). The table of
//! sources is bounded by [`Limits::max_sources`]: a source without handshakes under way whose
//! bucket is full is forgotten at once; when the table is full, the least restricted source is
//! forgotten. Refusals say whether to log them: each blocked source at most once per
//! [`LOG_EVERY`], and refusals for the connection caps at most once per [`LOG_EVERY`] in all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How often a refusal is logged at most (per blocked source, and for the caps in all).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Unauthenticated connections at once, in total.
    pub max_pending: usize,
    /// Unauthenticated connections at once from one source.
    pub max_pending_per_source: usize,
    /// Failed password attempts a source may make in a burst.
    pub failure_burst: u32,
    /// A source gets one more attempt back after this long.
    pub failure_refill: Duration,
    /// Sources remembered at most (more than `max_pending`).
    pub max_sources: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_pending: 64, max_pending_per_source: 8, failure_burst: 10, failure_refill: Duration::from_secs(30), max_sources: 4096 }
    }
}

/// The key a connection's source address is counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of `ip`: the address itself for IPv4 (also when mapped into IPv6), its /64
    /// for IPv6.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(_) => Source(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => Source(IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into())),
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/64"),
        }
    }
}

/// Why a connection is refused before its handshake.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The source has used up its failed password attempts.
    #[error("{from} made {burst} failed password attempts; its next attempt is allowed in {} s", retry_in.as_secs().max(1))]
    Failures {
        /// The source.
        from: Source,
        /// Its burst of attempts.
        burst: u32,
        /// When it gets an attempt back.
        retry_in: Duration,
    },
    /// The source has as many handshakes under way as it may.
    #[error("{from} has {pending} unauthenticated connections already (limit {limit})")]
    PerSource {
        /// The source.
        from: Source,
        /// Its unauthenticated connections.
        pending: usize,
        /// How many it may have now: the per-source cap, or its failures left if fewer.
        limit: usize,
    },
    /// Too many handshakes under way in all.
    #[error("{pending} unauthenticated connections already (limit {limit})")]
    Total {
        /// Unauthenticated connections.
        pending: usize,
        /// The cap.
        limit: usize,
    },
}

/// How a handshake that was admitted ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Authenticated, or failed for another reason than the password.
    Other,
    /// A failed password attempt (wrong key confirmation, malformed PAKE message).
    PasswordFailed,
}

#[derive(Clone, Debug)]
struct Entry {
    pending: usize,
    tokens: u32,
    /// Tokens were last brought up to date at this time.
    since: Instant,
    last_logged: Option<Instant>,
}

/// The admission state.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    sources: HashMap<Source, Entry>,
    pending: usize,
    caps_logged: Option<Instant>,
}

impl Admission {
    /// Nothing admitted yet. `max_sources` is raised above `max_pending` if it is not.
    pub fn new(mut limits: Limits) -> Admission {
        limits.max_sources = limits.max_sources.max(limits.max_pending + 1);
        limits.failure_burst = limits.failure_burst.max(1);
        Admission { limits, sources: HashMap::new(), pending: 0, caps_logged: None }
    }

    /// Unauthenticated connections now.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Unauthenticated connections from `ip`'s source now.
    pub fn pending_from(&self, ip: IpAddr) -> usize {
        self.sources.get(&Source::of(ip)).map_or(0, |e| e.pending)
    }

    /// Sources remembered now.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    fn refill(limits: &Limits, e: &mut Entry, now: Instant) {
        let elapsed = now.saturating_duration_since(e.since);
        let step = limits.failure_refill.max(Duration::from_millis(1));
        let n = (elapsed.as_nanos() / step.as_nanos()).min(u128::from(limits.failure_burst)) as u32;
        e.tokens = (e.tokens + n).min(limits.failure_burst);
        e.since = if e.tokens == limits.failure_burst { now } else { e.since + step * n };
    }

    /// Admits a connection from `ip` (then [`release`](Self::release) must follow), or says
    /// why not and whether to log it.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), (Refusal, bool)> {
        let source = Source::of(ip);
        let limits = &self.limits;
        if let Some(e) = self.sources.get_mut(&source) {
            Self::refill(limits, e, now);
            if e.tokens == 0 {
                let log = e.last_logged.is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY);
                if log {
                    e.last_logged = Some(now);
                }
                let retry_in = (e.since + limits.failure_refill).saturating_duration_since(now);
                return Err((Refusal::Failures { from: source, burst: limits.failure_burst, retry_in }, log));
            }
            let limit = limits.max_pending_per_source.min(e.tokens as usize);
            if e.pending >= limit {
                let pending = e.pending;
                return Err((Refusal::PerSource { from: source, pending, limit }, self.log_caps(now)));
            }
        }
        if self.pending >= self.limits.max_pending {
            let (pending, limit) = (self.pending, self.limits.max_pending);
            return Err((Refusal::Total { pending, limit }, self.log_caps(now)));
        }
        if !self.sources.contains_key(&source) && self.sources.len() >= self.limits.max_sources {
            self.evict(now);
        }
        let burst = self.limits.failure_burst;
        let e = self.sources.entry(source).or_insert(Entry { pending: 0, tokens: burst, since: now, last_logged: None });
        e.pending += 1;
        self.pending += 1;
        Ok(())
    }

    fn log_caps(&mut self, now: Instant) -> bool {
        let log = self.caps_logged.is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY);
        if log {
            self.caps_logged = Some(now);
        }
        log
    }

    /// Makes room for one source: forgets those that are back to a full bucket, else the one
    /// with the most attempts left (the oldest among equals). Sources with handshakes under way
    /// are kept; there are fewer of them than `max_sources`.
    fn evict(&mut self, now: Instant) {
        let limits = &self.limits;
        self.sources.retain(|_, e| {
            Self::refill(limits, e, now);
            e.pending > 0 || e.tokens < limits.failure_burst
        });
        if self.sources.len() < self.limits.max_sources {
            return;
        }
        let victim = self.sources.iter().filter(|(_, e)| e.pending == 0).max_by_key(|(_, e)| (e.tokens, std::cmp::Reverse(e.since))).map(|(s, _)| *s);
        if let Some(s) = victim {
            self.sources.remove(&s);
        }
    }

    /// Ends a handshake admitted for `ip`. Returns the refusal its source will now meet if this
    /// failure used up its attempts (to log that it is blocked).
    pub fn release(&mut self, ip: IpAddr, outcome: Outcome, now: Instant) -> Option<Refusal> {
        let source = Source::of(ip);
        let limits = &self.limits;
        let e = self.sources.get_mut(&source)?;
        e.pending = e.pending.saturating_sub(1);
        self.pending = self.pending.saturating_sub(1);
        Self::refill(limits, e, now);
        let mut blocked = None;
        if outcome == Outcome::PasswordFailed && e.tokens > 0 {
            if e.tokens == limits.failure_burst {
                e.since = now;
            }
            e.tokens -= 1;
            if e.tokens == 0 {
                e.last_logged = Some(now);
                blocked = Some(Refusal::Failures { from: source, burst: limits.failure_burst, retry_in: (e.since + limits.failure_refill).saturating_duration_since(now) });
            }
        }
        if e.pending == 0 && e.tokens == limits.failure_burst {
            self.sources.remove(&source);
        }
        blocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn limits() -> Limits {
        Limits { max_pending: 6, max_pending_per_source: 3, failure_burst: 4, failure_refill: Duration::from_secs(30), max_sources: 8 }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
    }

    #[test]
    fn a_source_that_fails_its_burst_is_refused_until_an_attempt_refills() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits());
        for i in 0..4 {
            a.admit(ip(1), t0).unwrap();
            let blocked = a.release(ip(1), Outcome::PasswordFailed, t0);
            assert_eq!(blocked.is_some(), i == 3, "blocked only by the 4th failure");
        }
        let (r, log) = a.admit(ip(1), t0 + Duration::from_secs(1)).unwrap_err();
        assert_eq!(r, Refusal::Failures { from: Source::of(ip(1)), burst: 4, retry_in: Duration::from_secs(29) });
        assert_eq!(r.to_string(), "192.0.2.1 made 4 failed password attempts; its next attempt is allowed in 29 s");
        assert!(!log, "the block itself was reported when it began");
        assert!(a.admit(ip(1), t0 + Duration::from_secs(11)).unwrap_err().1, "logged again after LOG_EVERY");
        assert!(!a.admit(ip(1), t0 + Duration::from_secs(12)).unwrap_err().1);

        // Another source is not affected; successes cost nothing.
        for _ in 0..10 {
            a.admit(ip(2), t0).unwrap();
            assert_eq!(a.release(ip(2), Outcome::Other, t0), None);
        }
        assert_eq!(a.sources(), 1, "a source with a full bucket is forgotten");

        // One attempt back after failure_refill, and one only.
        a.admit(ip(1), t0 + Duration::from_secs(30)).unwrap();
        assert!(a.release(ip(1), Outcome::PasswordFailed, t0 + Duration::from_secs(30)).is_some());
        assert!(matches!(a.admit(ip(1), t0 + Duration::from_secs(31)), Err((Refusal::Failures { .. }, _))));
        // After burst × refill the source is back to its full burst.
        let later = t0 + Duration::from_secs(30 + 4 * 30);
        for _ in 0..3 {
            a.admit(ip(1), later).unwrap();
        }
        assert_eq!(a.admit(ip(1), later).unwrap_err().0, Refusal::PerSource { from: Source::of(ip(1)), pending: 3, limit: 3 });
    }

    #[test]
    fn handshakes_under_way_are_capped_per_source_in_all_and_by_attempts_left() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits());
        for _ in 0..3 {
            a.admit(ip(1), t0).unwrap();
        }
        let (r, log) = a.admit(ip(1), t0).unwrap_err();
        assert!(log && matches!(r, Refusal::PerSource { pending: 3, limit: 3, .. }), "{r}");
        for _ in 0..3 {
            a.admit(ip(2), t0).unwrap();
        }
        let (r, log) = a.admit(ip(3), t0).unwrap_err();
        assert_eq!(r, Refusal::Total { pending: 6, limit: 6 });
        assert!(!log, "cap refusals are logged once per LOG_EVERY in all");
        a.release(ip(2), Outcome::Other, t0);
        a.admit(ip(3), t0).unwrap();
        assert_eq!(a.pending(), 6);

        // A source with two attempts left may have two handshakes under way, not three.
        let mut a = Admission::new(limits());
        for _ in 0..2 {
            a.admit(ip(1), t0).unwrap();
            a.release(ip(1), Outcome::PasswordFailed, t0);
        }
        a.admit(ip(1), t0).unwrap();
        a.admit(ip(1), t0).unwrap();
        assert_eq!(a.admit(ip(1), t0).unwrap_err().0, Refusal::PerSource { from: Source::of(ip(1)), pending: 2, limit: 2 });
    }

    #[test]
    fn the_table_is_bounded_and_keeps_the_most_restricted_sources() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits());
        // Eight sources with one failure each, the first with all four.
        for n in 1..=8 {
            let fails = if n == 1 { 4 } else { 1 };
            for _ in 0..fails {
                a.admit(ip(n), t0).unwrap();
                a.release(ip(n), Outcome::PasswordFailed, t0);
            }
        }
        assert_eq!(a.sources(), 8);
        for n in 9..=40 {
            a.admit(ip(n), t0).unwrap();
            a.release(ip(n), Outcome::PasswordFailed, t0);
            assert!(a.sources() <= 8);
        }
        assert!(matches!(a.admit(ip(1), t0), Err((Refusal::Failures { .. }, _))), "the blocked source is still remembered");
    }

    #[test]
    fn sources_are_addresses_and_ipv6_slash_64s() {
        let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
        assert_eq!(Source::of(v6("2001:db8:1:2::1")), Source::of(v6("2001:db8:1:2:ffff::7")));
        assert_ne!(Source::of(v6("2001:db8:1:2::1")), Source::of(v6("2001:db8:1:3::1")));
        assert_eq!(Source::of(v6("::ffff:192.0.2.1")), Source::of(ip(1)));
        assert_eq!(Source::of(v6("2001:db8:1:2::1")).to_string(), "2001:db8:1:2::/64");
        assert_ne!(Source::of(ip(1)), Source::of(ip(2)));
    }
}
