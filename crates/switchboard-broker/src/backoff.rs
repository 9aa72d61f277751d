//! Waits between reconnection attempts, with jitter: hubs that lost their broker at
//! the same instant (it restarted) would otherwise all come back at the same instants
//! and meet it as one wave each time.

use rand::{Rng, SeedableRng, rngs::StdRng};
use std::time::Duration;

/// Decorrelated jitter (as in "Exponential Backoff And Jitter", AWS architecture blog):
/// each wait is drawn uniformly between `base` and three times the previous wait,
/// capped at `max`. Waits grow about exponentially while no two hubs keep the same
/// schedule.
///
/// ```
/// use std::time::Duration;
/// use switchboard_broker::Backoff;
///
/// let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
/// let wait = backoff.next_wait();
/// assert!(wait >= Duration::from_millis(50) && wait <= Duration::from_millis(150));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    previous: Duration,
    rng: StdRng,
}

impl Backoff {
    /// Waits from `base` up to `max` (a `max` below `base` is taken as `base`), seeded
    /// from the operating system.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self::seeded(base, max, rand::random())
    }

    /// The same with a fixed seed: a test sees the same waits on every run.
    pub fn seeded(base: Duration, max: Duration, seed: u64) -> Self {
        Self {
            base,
            max: max.max(base),
            previous: base,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let high = self.previous.saturating_mul(3).min(self.max).max(self.base);
        let wait = if high > self.base {
            self.rng.random_range(self.base..=high)
        } else {
            self.base
        };
        self.previous = wait;
        wait
    }

    /// The link is up again: the next outage starts from `base`.
    pub fn reset(&mut self) {
        self.previous = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn every_wait_is_within_base_and_three_times_the_last_and_the_cap() {
        let mut backoff = Backoff::seeded(BASE, MAX, 7);
        let mut previous = BASE;
        for _ in 0..1000 {
            let wait = backoff.next_wait();
            assert!(wait >= BASE && wait <= MAX, "{wait:?}");
            assert!(wait <= previous * 3, "{wait:?} after {previous:?}");
            previous = wait;
        }
    }

    #[test]
    fn waits_grow_to_the_cap_and_reset_starts_over() {
        let mut backoff = Backoff::seeded(BASE, MAX, 7);
        let waits: Vec<Duration> = (0..40).map(|_| backoff.next_wait()).collect();
        // Thirty draws in, waits sit in the upper range.
        assert!(waits[30..].iter().any(|w| *w > MAX / 2), "{waits:?}");
        backoff.reset();
        assert!(backoff.next_wait() <= BASE * 3);
    }

    #[test]
    fn hubs_do_not_share_a_schedule() {
        // A seed per hub: first waits spread over the range instead of coinciding.
        let firsts: Vec<Duration> = (0..20)
            .map(|seed| Backoff::seeded(BASE, MAX, seed).next_wait())
            .collect();
        let distinct: std::collections::HashSet<_> = firsts.iter().collect();
        assert!(distinct.len() >= 15, "{firsts:?}");
        // The same seed, the same schedule: the tests above are deterministic.
        let again: Vec<Duration> = (0..20)
            .map(|seed| Backoff::seeded(BASE, MAX, seed).next_wait())
            .collect();
        assert_eq!(firsts, again);
    }

    #[test]
    fn a_cap_below_the_base_waits_the_base() {
        let mut backoff = Backoff::seeded(BASE, Duration::ZERO, 1);
        assert_eq!(backoff.next_wait(), BASE);
    }
}
