//! Heartbeats, liveness and path MTU discovery for one peer's sleeve (sans-IO, `now` passed in).
//!
//! Control records ([`crate::wire::RecordKind::Control`]) carry, big-endian:
//!
//! ```text
//! type u8      1 heartbeat, 2 heartbeat ack, 3 PMTU probe, 4 PMTU ack
//! seq u32      echoed by the ack
//! echo u64     the sender's clock (nanoseconds), echoed by the ack: round-trip time
//! size u16     probes and their acks: the datagram size probed; 0 otherwise
//! padding      probes are padded so the datagram is `size` bytes long; ignored
//! ```
//!
//! [`Liveness`] sends a heartbeat every [`LivenessConfig::interval`], unless the peer's own
//! heartbeat arrived since our last one: our ack to it tells the peer we are alive, as its
//! heartbeat told us, so an idle link carries one heartbeat and one ack per interval, not two of
//! each (the end whose heartbeats come first keeps sending; the other only answers). Any
//! authenticated packet from the peer proves it alive; silence for
//! [`LivenessConfig::dead_after`] makes it dead (and a later packet alive again). Acks give a
//! smoothed round-trip time (gain 1/8, as TCP), at the end that sends the heartbeats.
//!
//! [`Pmtu`] finds the largest datagram the path carries, between [`PmtuConfig::min`] and
//! [`PmtuConfig::max`], in rounds of probes sent together: first `max` and the sizes of the
//! common IP MTUs ([`COMMON_IP_MTUS`]), then evenly spaced sizes between the largest answered
//! and the smallest unanswered until they meet; a size unanswered after [`PmtuConfig::tries`]
//! tries of its round is too big. A search settles within about 3 s. Searches repeat every
//! [`PmtuConfig::recheck`], and at once when the caller reports that a datagram of the current
//! size was refused ([`Pmtu::too_big`]).

use std::time::{Duration, Instant};

/// Bytes of a control message before padding.
pub const CONTROL_LEN: usize = 15;

/// A control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMsg {
    /// Are you there?
    Heartbeat {
        /// Sequence number.
        seq: u32,
        /// Sender's clock.
        echo: u64,
    },
    /// Yes.
    HeartbeatAck {
        /// The heartbeat's sequence number.
        seq: u32,
        /// The heartbeat's clock value.
        echo: u64,
    },
    /// Does a datagram of `size` bytes reach you?
    Probe {
        /// Sequence number.
        seq: u32,
        /// Sender's clock.
        echo: u64,
        /// The datagram size probed.
        size: u16,
    },
    /// It did.
    ProbeAck {
        /// The probe's sequence number.
        seq: u32,
        /// The probe's clock value.
        echo: u64,
        /// The size that arrived.
        size: u16,
    },
}

/// Why a control record could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LivenessError {
    /// Shorter than a control message.
    #[error("control record of {0} bytes is too short")]
    Truncated(usize),
    /// Unknown type.
    #[error("unknown control message type {0}")]
    UnknownType(u8),
    /// A heartbeat (or its ack) with a size, or a probe (or its ack) without one.
    #[error("control message of type {0} with size {1}")]
    BadSize(u8, u16),
    /// The buffer is too small to write into.
    #[error("no room for a control message")]
    NoRoom,
}

impl ControlMsg {
    /// Parses a control record payload (trailing padding allowed).
    pub fn parse(b: &[u8]) -> Result<ControlMsg, LivenessError> {
        if b.len() < CONTROL_LEN {
            return Err(LivenessError::Truncated(b.len()));
        }
        let seq = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
        let mut e = [0u8; 8];
        e.copy_from_slice(&b[5..13]);
        let echo = u64::from_be_bytes(e);
        let size = u16::from_be_bytes([b[13], b[14]]);
        Ok(match (b[0], size) {
            (1, 0) => ControlMsg::Heartbeat { seq, echo },
            (2, 0) => ControlMsg::HeartbeatAck { seq, echo },
            (3, 1..) => ControlMsg::Probe { seq, echo, size },
            (4, 1..) => ControlMsg::ProbeAck { seq, echo, size },
            (t @ 1..=4, s) => return Err(LivenessError::BadSize(t, s)),
            (t, _) => return Err(LivenessError::UnknownType(t)),
        })
    }

    /// Writes the message (without padding) into `b`; returns [`CONTROL_LEN`].
    pub fn emit(&self, b: &mut [u8]) -> Result<usize, LivenessError> {
        let b = b.get_mut(..CONTROL_LEN).ok_or(LivenessError::NoRoom)?;
        let (t, seq, echo, size) = match *self {
            ControlMsg::Heartbeat { seq, echo } => (1, seq, echo, 0),
            ControlMsg::HeartbeatAck { seq, echo } => (2, seq, echo, 0),
            ControlMsg::Probe { seq, echo, size } => (3, seq, echo, size),
            ControlMsg::ProbeAck { seq, echo, size } => (4, seq, echo, size),
        };
        b[0] = t;
        b[1..5].copy_from_slice(&seq.to_be_bytes());
        b[5..13].copy_from_slice(&echo.to_be_bytes());
        b[13..15].copy_from_slice(&size.to_be_bytes());
        Ok(CONTROL_LEN)
    }

    /// The datagram size this message should be padded to (probes), if any.
    pub fn pad_to(&self) -> usize {
        match *self {
            ControlMsg::Probe { size, .. } => usize::from(size),
            _ => 0,
        }
    }
}

/// Whether the peer's sleeve is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Nothing received yet.
    Unknown,
    /// Heard from within `dead_after`.
    Alive,
    /// Silent for `dead_after`.
    Dead,
}

/// Heartbeat timing (default: every 400 ms, dead after 2 s of silence, so a dead peer or path
/// is known within 2.4 s; the router derives both from its `--peer-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct LivenessConfig {
    /// Time between heartbeats.
    pub interval: Duration,
    /// Silence after which the peer is dead.
    pub dead_after: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig { interval: Duration::from_millis(400), dead_after: Duration::from_secs(2) }
    }
}

/// Heartbeats and liveness of one peer.
#[derive(Debug)]
pub struct Liveness {
    config: LivenessConfig,
    epoch: Instant,
    started: Instant,
    next_heartbeat: Instant,
    last_rx: Option<Instant>,
    /// Whether a heartbeat of the peer's arrived since we last sent or skipped one.
    answered: bool,
    seq: u32,
    srtt: Option<Duration>,
}

impl Liveness {
    /// Starts now; the first heartbeat is due at once.
    pub fn new(now: Instant, config: LivenessConfig) -> Liveness {
        Liveness { config, epoch: now, started: now, next_heartbeat: now, last_rx: None, answered: false, seq: 0, srtt: None }
    }

    fn clock(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// An authenticated packet arrived from the peer at `at` (an earlier time than one already
    /// reported changes nothing, so a caller may report receive times in batches).
    pub fn on_receive(&mut self, at: Instant) {
        self.last_rx = self.last_rx.max(Some(at));
    }

    /// Handles a heartbeat message; returns the ack to send, if any.
    pub fn on_control(&mut self, now: Instant, msg: &ControlMsg) -> Option<ControlMsg> {
        match *msg {
            ControlMsg::Heartbeat { seq, echo } => {
                self.answered = true;
                Some(ControlMsg::HeartbeatAck { seq, echo })
            }
            ControlMsg::Probe { seq, echo, size } => Some(ControlMsg::ProbeAck { seq, echo, size }),
            ControlMsg::HeartbeatAck { echo, .. } => {
                let sent = self.epoch + Duration::from_nanos(echo);
                if sent <= now {
                    let sample = now - sent;
                    self.srtt = Some(match self.srtt {
                        None => sample,
                        Some(s) => s - s / 8 + sample / 8,
                    });
                }
                None
            }
            ControlMsg::ProbeAck { .. } => None,
        }
    }

    /// A heartbeat, when one is due and the peer sent none since our last (see the module doc).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<ControlMsg> {
        if now < self.next_heartbeat {
            return None;
        }
        self.next_heartbeat = now + self.config.interval;
        if std::mem::take(&mut self.answered) {
            return None;
        }
        self.seq = self.seq.wrapping_add(1);
        Some(ControlMsg::Heartbeat { seq: self.seq, echo: self.clock(now) })
    }

    /// When the next heartbeat is due.
    pub fn poll_timeout(&self) -> Instant {
        self.next_heartbeat
    }

    /// The peer's state at `now`.
    pub fn state(&self, now: Instant) -> PeerState {
        match self.last_rx {
            None if now.saturating_duration_since(self.started) >= self.config.dead_after => PeerState::Dead,
            None => PeerState::Unknown,
            Some(t) if now.saturating_duration_since(t) >= self.config.dead_after => PeerState::Dead,
            Some(_) => PeerState::Alive,
        }
    }

    /// Smoothed round-trip time of heartbeats.
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// When the peer was last heard from.
    pub fn last_seen(&self) -> Option<Instant> {
        self.last_rx
    }
}

/// IP MTUs common on real paths (jumbo frames, Ethernet, PPPoE, tunnels and VPNs, IPv6's
/// minimum): the first round of a search probes the datagram size each allows at once.
pub const COMMON_IP_MTUS: [u16; 15] = [9001, 9000, 8950, 1500, 1492, 1480, 1460, 1450, 1440, 1420, 1400, 1380, 1350, 1300, 1280];
/// IPv4 and UDP headers: a datagram of `n` bytes is an IP packet of `n + 28`.
pub const IP_UDP_HEADERS: u16 = 28;
/// Most probes in one refining round.
pub const REFINE_PROBES: usize = 16;

/// Path MTU search limits (datagram sizes: UDP payload bytes).
#[derive(Debug, Clone, Copy)]
pub struct PmtuConfig {
    /// Assumed to work always.
    pub min: u16,
    /// Never probed beyond.
    pub max: u16,
    /// How often the search repeats.
    pub recheck: Duration,
    /// How long a round of probes waits for its acks.
    pub probe_timeout: Duration,
    /// Times a round's unanswered probes are sent before their sizes count as too big.
    pub tries: u8,
}

impl Default for PmtuConfig {
    fn default() -> Self {
        PmtuConfig { min: 1200, max: 1472, recheck: Duration::from_secs(600), probe_timeout: Duration::from_millis(500), tries: 2 }
    }
}

/// One round of probes sent together.
#[derive(Debug)]
struct Round {
    /// Sizes still unanswered, ascending (those at or below the proven size are dropped).
    sizes: Vec<u16>,
    /// How many of `sizes` have been sent in this try.
    sent: usize,
    /// Tries so far.
    tries: u8,
    /// When the try's last probe was sent.
    at: Instant,
}

/// The path MTU search for one peer.
///
/// A search runs in rounds of probes sent at once, each round waiting at most
/// [`PmtuConfig::probe_timeout`] per try: the first round probes `max` and the datagram sizes
/// of [`COMMON_IP_MTUS`] (a path is usually one of them: found after one round); the next
/// rounds probe up to [`REFINE_PROBES`] evenly spaced sizes between the largest answered and
/// the smallest unanswered, until they are adjacent. With the defaults a search settles within
/// 3 s (one second per round that has a size too big), usually within 2.
#[derive(Debug)]
pub struct Pmtu {
    config: PmtuConfig,
    good: u16,
    bad: u16,
    round: Option<Round>,
    /// The next round is the first of a search (the common sizes).
    first_round: bool,
    next_search: Option<Instant>,
    seq: u32,
    probes: u64,
}

impl Pmtu {
    /// A search that starts at once.
    pub fn new(now: Instant, config: PmtuConfig) -> Pmtu {
        let max = config.max.max(config.min);
        Pmtu {
            config: PmtuConfig { max, ..config },
            good: config.min,
            bad: max + 1,
            round: None,
            first_round: true,
            next_search: Some(now),
            seq: 0,
            probes: 0,
        }
    }

    /// The largest datagram size proven to cross.
    pub fn current(&self) -> u16 {
        self.good
    }

    /// Whether a search is running.
    pub fn is_searching(&self) -> bool {
        self.next_search.is_none() && self.good + 1 < self.bad
    }

    /// Probes sent so far.
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// The sizes of the next round, ascending: in (good, bad).
    fn next_round(&mut self) -> Vec<u16> {
        let (lo, hi) = (self.good, self.bad);
        let mut sizes: Vec<u16> = if self.first_round {
            self.first_round = false;
            COMMON_IP_MTUS.iter().filter_map(|m| m.checked_sub(IP_UDP_HEADERS)).chain([hi - 1]).filter(|s| *s > lo && *s < hi).collect()
        } else {
            let gap = usize::from(hi - lo - 1);
            let n = gap.min(REFINE_PROBES);
            (1..=n).map(|i| lo + (i * (gap + 1) / (n + 1)).max(1) as u16).filter(|s| *s > lo && *s < hi).collect()
        };
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// The next probe to send (pad it to its size), when one is due: call until it returns
    /// `None`, as a round sends several at once.
    pub fn poll_probe(&mut self, now: Instant) -> Option<ControlMsg> {
        if let Some(at) = self.next_search {
            if now < at {
                return None;
            }
            self.next_search = None;
            self.good = self.config.min;
            self.bad = self.config.max + 1;
            self.round = None;
            self.first_round = true;
        }
        for _ in 0..4 {
            match &mut self.round {
                Some(r) if r.sizes.is_empty() => self.round = None,
                Some(r) if r.sent < r.sizes.len() => {
                    let size = r.sizes[r.sent];
                    r.sent += 1;
                    r.at = now;
                    self.seq = self.seq.wrapping_add(1);
                    self.probes += 1;
                    return Some(ControlMsg::Probe { seq: self.seq, echo: 0, size });
                }
                Some(r) if now < r.at + self.config.probe_timeout => return None,
                Some(r) if r.tries < self.config.tries => {
                    r.tries += 1;
                    r.sent = 0;
                }
                Some(r) => {
                    // Unanswered after every try: the smallest of them is too big.
                    self.bad = self.bad.min(r.sizes[0]);
                    self.round = None;
                }
                None if self.good + 1 >= self.bad => {
                    self.next_search = Some(now + self.config.recheck);
                    return None;
                }
                None => {
                    let sizes = self.next_round();
                    self.round = Some(Round { sizes, sent: 0, tries: 1, at: now });
                }
            }
        }
        None
    }

    /// A probe of `size` came back.
    pub fn on_ack(&mut self, _now: Instant, size: u16) {
        if size > self.good && size < self.bad {
            self.good = size;
        }
        let good = self.good;
        if let Some(r) = &mut self.round {
            let before = r.sizes.len();
            r.sizes.retain(|s| *s > good);
            r.sent = r.sent.saturating_sub(before - r.sizes.len());
        }
    }

    /// A datagram of `size` bytes was refused (EMSGSIZE, or an ICMP "fragmentation needed"):
    /// search again below it.
    pub fn too_big(&mut self, _now: Instant, size: u16) {
        if size <= self.good && size > self.config.min {
            self.good = self.config.min;
            self.bad = size;
            self.round = None;
            self.first_round = true;
            self.next_search = None;
        }
    }

    /// When [`poll_probe`](Self::poll_probe) next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (&self.round, self.next_search) {
            (Some(r), _) if r.sent < r.sizes.len() => Some(r.at),
            (Some(r), _) => Some(r.at + self.config.probe_timeout),
            (None, Some(at)) => Some(at),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip_and_bad_bytes_are_errors() {
        for m in [
            ControlMsg::Heartbeat { seq: 1, echo: 2 },
            ControlMsg::HeartbeatAck { seq: 3, echo: 4 },
            ControlMsg::Probe { seq: 5, echo: 6, size: 1400 },
            ControlMsg::ProbeAck { seq: 7, echo: 8, size: 1472 },
        ] {
            let mut b = [0u8; 64];
            assert_eq!(m.emit(&mut b), Ok(CONTROL_LEN));
            assert_eq!(ControlMsg::parse(&b), Ok(m), "with padding");
            assert_eq!(ControlMsg::parse(&b[..CONTROL_LEN]), Ok(m));
        }
        assert_eq!(ControlMsg::parse(&[1; 14]), Err(LivenessError::Truncated(14)));
        assert_eq!(ControlMsg::parse(&[9; 15]), Err(LivenessError::UnknownType(9)));
        let mut hb = [0u8; CONTROL_LEN];
        hb[0] = 1;
        hb[14] = 7;
        assert_eq!(ControlMsg::parse(&hb), Err(LivenessError::BadSize(1, 7)), "found by the fuzzer");
        assert_eq!(ControlMsg::Heartbeat { seq: 0, echo: 0 }.emit(&mut [0; 3]), Err(LivenessError::NoRoom));
    }

    #[test]
    fn heartbeats_keep_their_cadence_and_silence_means_dead() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, LivenessConfig::default());
        let mut sent = 0;
        for ms in (0..10_000).step_by(100) {
            if l.poll_transmit(t0 + Duration::from_millis(ms)).is_some() {
                sent += 1;
            }
        }
        assert_eq!(sent, 25, "one heartbeat every 400 ms");
        assert_eq!(l.state(t0), PeerState::Unknown);
        assert_eq!(l.state(t0 + Duration::from_millis(1900)), PeerState::Unknown);
        assert_eq!(l.state(t0 + Duration::from_secs(6)), PeerState::Dead, "never heard from");
        l.on_receive(t0 + Duration::from_secs(6));
        assert_eq!(l.state(t0 + Duration::from_secs(7)), PeerState::Alive);
        assert_eq!(l.state(t0 + Duration::from_millis(7900)), PeerState::Alive);
        assert_eq!(l.state(t0 + Duration::from_secs(8)), PeerState::Dead, "2 s of silence");
        l.on_receive(t0 + Duration::from_secs(12));
        assert_eq!(l.state(t0 + Duration::from_secs(12)), PeerState::Alive);
        // A receive time reported late does not move the last one back.
        l.on_receive(t0 + Duration::from_secs(8));
        assert_eq!(l.last_seen(), Some(t0 + Duration::from_secs(12)));
    }

    /// Two ends at 400 ms, started at the same or at different phases, each heartbeat arriving
    /// 5 ms after it was sent: returns the heartbeats each sent over 10 s and the longest
    /// silence either heard.
    fn pair(phase_ms: u64) -> (u32, u32, Duration) {
        let t0 = Instant::now();
        let mut ends = [Liveness::new(t0, LivenessConfig::default()), Liveness::new(t0 + Duration::from_millis(phase_ms), LivenessConfig::default())];
        let (mut sent, mut last_heard, mut longest) = ([0u32; 2], [t0; 2], Duration::ZERO);
        // (arrival, to whom, message), in order of arrival.
        let mut wire: Vec<(Instant, usize, ControlMsg)> = Vec::new();
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            wire.sort_by_key(|m| m.0);
            while wire.first().is_some_and(|m| m.0 <= now) {
                let (at, to, msg) = wire.remove(0);
                longest = longest.max(at - last_heard[to]);
                last_heard[to] = at;
                ends[to].on_receive(at);
                if let Some(ack) = ends[to].on_control(at, &msg) {
                    wire.push((at + Duration::from_millis(5), 1 - to, ack));
                }
            }
            for (i, end) in ends.iter_mut().enumerate() {
                if now >= t0 + Duration::from_millis(if i == 1 { phase_ms } else { 0 })
                    && let Some(hb) = end.poll_transmit(now)
                {
                    sent[i] += 1;
                    wire.push((now + Duration::from_millis(5), 1 - i, hb));
                }
            }
        }
        (sent[0], sent[1], longest)
    }

    #[test]
    fn an_idle_link_carries_one_heartbeat_and_one_ack_per_interval_and_both_ends_hear_each_other() {
        for phase in [0, 1, 5, 100, 200, 395, 399] {
            let (a, b, longest) = pair(phase);
            // 25 intervals in 10 s: one heartbeat per interval in all, not one per end (50),
            // give or take the first of each end and a round where both crossed.
            assert!((25..=28).contains(&(a + b)), "phase {phase} ms: {a} + {b} heartbeats");
            // Liveness holds: the longest silence stays far below the 2 s of `dead_after`.
            assert!(longest <= Duration::from_millis(810), "phase {phase} ms: {longest:?} of silence");
        }
    }

    #[test]
    fn acks_give_a_smoothed_round_trip_time_and_requests_get_acks() {
        let t0 = Instant::now();
        let mut a = Liveness::new(t0, LivenessConfig::default());
        let mut b = Liveness::new(t0, LivenessConfig::default());
        for i in 0..20u64 {
            let now = t0 + Duration::from_secs(i);
            let hb = a.poll_transmit(now).unwrap();
            let ack = b.on_control(now + Duration::from_millis(5), &hb).unwrap();
            assert!(matches!(ack, ControlMsg::HeartbeatAck { .. }));
            assert_eq!(a.on_control(now + Duration::from_millis(10), &ack), None);
        }
        let rtt = a.rtt().unwrap();
        assert!(rtt >= Duration::from_millis(9) && rtt <= Duration::from_millis(11), "{rtt:?}");
        let probe = ControlMsg::Probe { seq: 1, echo: 2, size: 1300 };
        assert_eq!(b.on_control(t0, &probe), Some(ControlMsg::ProbeAck { seq: 1, echo: 2, size: 1300 }));
    }

    /// Runs the search against a path carrying datagrams up to `path`, with timers polled every
    /// 50 ms (as the router does) and acks coming back at once; returns (found, probes, time).
    fn search(p: &mut Pmtu, t: &mut Instant, path: u16) -> (u16, u64, Duration) {
        let (start, t0) = (p.probes(), *t);
        for _ in 0..400 {
            while let Some(m) = p.poll_probe(*t) {
                match m {
                    ControlMsg::Probe { size, .. } if size <= path => p.on_ack(*t, size),
                    _ => {}
                }
            }
            if !p.is_searching() {
                break;
            }
            *t += Duration::from_millis(50);
        }
        (p.current(), p.probes() - start, *t - t0)
    }

    #[test]
    fn the_search_finds_the_path_mtu_within_3_s_and_follows_it_when_it_shrinks() {
        // Datagram sizes: 1472 is a 1500-byte path, 1252 a 1280-byte one.
        for path in [1472, 1464, 1452, 1450, 1400, 1373, 1372, 1300, 1252, 1251, 1201, 1200] {
            let mut t = Instant::now();
            let mut p = Pmtu::new(t, PmtuConfig::default());
            let (found, probes, took) = search(&mut p, &mut t, path);
            println!("path {path}: found {found} with {probes} probes in {took:?}");
            assert_eq!(found, path.max(1200));
            assert!(took <= Duration::from_secs(3), "{took:?}");
            assert!(probes <= 60, "{probes} probes");
            if COMMON_IP_MTUS.contains(&(path + IP_UDP_HEADERS)) {
                assert!(took <= Duration::from_millis(2100), "a common size takes two rounds at most: {took:?}");
            }
        }
        // A 1280-byte path is found in one round when it is the largest size allowed.
        let mut t = Instant::now();
        let mut p = Pmtu::new(t, PmtuConfig { max: 1252, ..PmtuConfig::default() });
        let (found, _, took) = search(&mut p, &mut t, 1252);
        assert_eq!((found, took), (1252, Duration::ZERO));
        // The path shrinks: a refused datagram restarts the search below it.
        let mut t = Instant::now();
        let mut p = Pmtu::new(t, PmtuConfig::default());
        assert_eq!(search(&mut p, &mut t, 1472).0, 1472);
        p.too_big(t, 1472);
        assert_eq!(p.current(), 1200, "back to the floor while searching");
        assert_eq!(search(&mut p, &mut t, 1380).0, 1380);
        // And the periodic recheck finds it grown again.
        t += Duration::from_secs(601);
        assert_eq!(search(&mut p, &mut t, 1472).0, 1472);
    }

    #[test]
    fn a_lost_probe_is_sent_again_before_its_size_counts_as_too_big() {
        let mut t = Instant::now();
        let mut p = Pmtu::new(t, PmtuConfig::default());
        // The first round's probes are all lost once; the path carries 1472.
        let first: Vec<u16> = std::iter::from_fn(|| p.poll_probe(t)).map(|m| m.pad_to() as u16).collect();
        assert!(first.contains(&1472) && first.contains(&1252), "{first:?}");
        t += Duration::from_millis(500);
        let again: Vec<u16> = std::iter::from_fn(|| p.poll_probe(t)).map(|m| m.pad_to() as u16).collect();
        assert_eq!(again, first, "the second try");
        p.on_ack(t, 1472);
        assert_eq!(p.current(), 1472);
        assert!(!p.is_searching());
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = ControlMsg::parse(&b);
        }
    }
}
