//! The sliding anti-replay window (a bitmap ring in the style of RFC 6479).
//!
//! It accepts each counter at most once, accepts any order among counters no more than
//! [`WINDOW`] behind the highest accepted one, and rejects older ones. Checking and committing
//! are separate so the caller can check before the (costly) authentication and commit only
//! after it succeeds.

const WORDS: usize = 64;
const WORD_BITS: u64 = 64;
const RING_BITS: u64 = WORDS as u64 * WORD_BITS;

/// How far behind the highest accepted counter a counter may be and still be accepted:
/// counters `highest - WINDOW + 1 ..= highest` are tracked individually.
pub const WINDOW: u64 = RING_BITS - WORD_BITS;

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The counter was already accepted.
    #[error("duplicate counter {0}")]
    Duplicate(u64),
    /// The counter is more than [`WINDOW`] behind the highest accepted one.
    #[error("counter {counter} is too old (highest accepted {highest})")]
    TooOld {
        /// The refused counter.
        counter: u64,
        /// The highest counter accepted so far.
        highest: u64,
    },
}

/// Replay window for one key. 512 bytes; never allocates.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    bits: [u64; WORDS],
    /// Highest counter committed, `None` before the first.
    highest: Option<u64>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every counter is acceptable once.
    pub fn new() -> Self {
        Self {
            bits: [0; WORDS],
            highest: None,
        }
    }

    /// The highest counter committed so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    fn slot(counter: u64) -> (usize, u64) {
        let word = ((counter / WORD_BITS) % WORDS as u64) as usize;
        (word, 1u64 << (counter % WORD_BITS))
    }

    /// Whether `counter` would be accepted now. Does not change the window.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        if highest - counter >= WINDOW {
            return Err(ReplayError::TooOld { counter, highest });
        }
        let (w, bit) = Self::slot(counter);
        if self.bits[w] & bit != 0 {
            return Err(ReplayError::Duplicate(counter));
        }
        Ok(())
    }

    /// Checks `counter` and records it as seen. Call only for authenticated packets.
    pub fn commit(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        match self.highest {
            Some(h) if counter <= h => {}
            prev => {
                // Clear the words that slide into the window between the old and new highest.
                let new_word = counter / WORD_BITS;
                let first = match prev {
                    Some(h) => h / WORD_BITS + 1,
                    None => new_word.saturating_sub(WORDS as u64 - 1),
                };
                if new_word >= first {
                    let n = (new_word - first + 1).min(WORDS as u64);
                    for i in 0..n {
                        let w = ((new_word - i) % WORDS as u64) as usize;
                        self.bits[w] = 0;
                    }
                }
                self.highest = Some(counter);
            }
        }
        let (w, bit) = Self::slot(counter);
        self.bits[w] |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_at_least_2048() {
        const { assert!(WINDOW >= 2048) };
    }

    #[test]
    fn in_order_once_each() {
        let mut w = ReplayWindow::new();
        for c in 0..10_000u64 {
            assert_eq!(w.commit(c), Ok(()));
            assert_eq!(w.commit(c), Err(ReplayError::Duplicate(c)));
        }
        assert_eq!(w.highest(), Some(9_999));
    }

    #[test]
    fn reordered_within_window_accepted_once() {
        let mut w = ReplayWindow::new();
        w.commit(5000).unwrap();
        // Everything in the window behind 5000, in descending order, is new.
        for c in (5000 - WINDOW + 1..5000).rev() {
            assert_eq!(w.check(c), Ok(()), "{c}");
            w.commit(c).unwrap();
        }
        for c in 5000 - WINDOW + 1..=5000 {
            assert_eq!(w.commit(c), Err(ReplayError::Duplicate(c)));
        }
        assert_eq!(
            w.check(5000 - WINDOW),
            Err(ReplayError::TooOld {
                counter: 5000 - WINDOW,
                highest: 5000
            })
        );
        assert!(matches!(w.check(0), Err(ReplayError::TooOld { .. })));
    }

    #[test]
    fn check_does_not_commit() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(7), Ok(()));
        assert_eq!(w.check(7), Ok(()));
        assert_eq!(w.highest(), None);
        w.commit(7).unwrap();
        assert_eq!(w.check(7), Err(ReplayError::Duplicate(7)));
        assert_eq!(w.check(6), Ok(()));
    }

    #[test]
    fn big_jump_clears_old_bits() {
        let mut w = ReplayWindow::new();
        for c in 0..300 {
            w.commit(c).unwrap();
        }
        // Jump by exactly one ring: old bits share slots with new counters.
        let far = 300 + RING_BITS;
        w.commit(far).unwrap();
        for c in far - WINDOW + 1..far {
            assert_eq!(w.check(c), Ok(()), "{c}");
        }
        w.commit(u64::MAX - 1).unwrap();
        assert_eq!(w.check(u64::MAX - 2), Ok(()));
        assert!(matches!(w.check(far), Err(ReplayError::TooOld { .. })));
        w.commit(u64::MAX).unwrap();
        assert_eq!(w.check(u64::MAX), Err(ReplayError::Duplicate(u64::MAX)));
    }

    /// Against a simple model (a set of every committed counter) on a pseudo-random walk.
    #[test]
    fn matches_model() {
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut highest: Option<u64> = None;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut base = 0u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            base += x % 3;
            let c = (base + (x >> 8) % 5000).saturating_sub(4500);
            let expect = match highest {
                Some(h) if c <= h && h - c >= WINDOW => Err(ReplayError::TooOld {
                    counter: c,
                    highest: h,
                }),
                _ if seen.contains(&c) => Err(ReplayError::Duplicate(c)),
                _ => Ok(()),
            };
            assert_eq!(w.commit(c), expect, "counter {c}");
            if expect.is_ok() {
                seen.insert(c);
                highest = Some(highest.map_or(c, |h| h.max(c)));
            }
        }
    }
}
