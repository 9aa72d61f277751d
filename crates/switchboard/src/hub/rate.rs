//! The message rate a client may send at: a token bucket per connection, kept by the
//! connection's own task (no lock, no shared state), refilled from the clock reading
//! the task takes for keepalive anyway.

/// How many data messages a client may send: `per_second` on average, and up to
/// `burst` at once after a quiet spell (a token bucket of `burst` tokens, refilled at
/// `per_second`).
///
/// ```
/// use switchboard::hub::{HubConfig, MessageRate, RatePolicy};
///
/// // A game's input: 60 a second, a second's worth at once.
/// let config = HubConfig::default()
///     .max_message_rate(MessageRate::new(60, 60))
///     .rate_policy(RatePolicy::Close);
/// assert_eq!(config.max_message_rate.per_second, 60);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageRate {
    /// Messages a second, on average.
    pub per_second: u32,
    /// Messages at once: the bucket's size. 0 lets no message through.
    pub burst: u32,
}

impl MessageRate {
    /// No bound worth the name (some four billion a second): for benchmarks, or a
    /// server whose clients are all its own.
    pub const UNLIMITED: Self = Self::new(u32::MAX, u32::MAX);

    /// `per_second` on average, up to `burst` at once.
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst }
    }
}

/// What happens to a data message a client sends over
/// [`HubConfig::max_message_rate`](super::HubConfig::max_message_rate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RatePolicy {
    /// The message is not handed to [`Handler::on_message`](super::Handler::on_message);
    /// the drop is counted
    /// ([`Connection::rate_limited_messages`](super::Connection::rate_limited_messages)).
    Drop,
    /// The connection is closed with 1008 "message rate exceeded" (RFC 6455 §7.4.1: "a
    /// message that violates its policy"); the message is dropped and counted as with
    /// [`RatePolicy::Drop`], and no later one reaches the handler.
    Close,
}

/// One tick of the bucket: a message costs a million, so that a refill of
/// `per_second` per microsecond is exact in integers.
const MESSAGE: u64 = 1_000_000;

/// A connection's bucket, in millionths of a message.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    tokens: u64,
    /// When it was last refilled, in the hub's microseconds.
    refilled: u64,
}

impl TokenBucket {
    /// A full bucket: a client may send its burst as soon as it is open.
    pub(crate) fn new(rate: MessageRate, now_micros: u64) -> Self {
        Self {
            tokens: u64::from(rate.burst).saturating_mul(MESSAGE),
            refilled: now_micros,
        }
    }

    /// Takes one message's token at `now_micros`; `false` when the bucket is empty.
    pub(crate) fn take(&mut self, rate: MessageRate, now_micros: u64) -> bool {
        let elapsed = now_micros.saturating_sub(self.refilled);
        self.refilled = self.refilled.max(now_micros);
        let capacity = u64::from(rate.burst).saturating_mul(MESSAGE);
        let refill = elapsed.saturating_mul(u64::from(rate.per_second));
        self.tokens = self.tokens.saturating_add(refill).min(capacity);
        match self.tokens.checked_sub(MESSAGE) {
            Some(left) => {
                self.tokens = left;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let rate = MessageRate::new(10, 3);
        let mut bucket = TokenBucket::new(rate, 0);
        assert!((0..3).all(|_| bucket.take(rate, 0)), "the burst");
        assert!(!bucket.take(rate, 0), "empty");
        // 10 a second: one every 100 ms.
        assert!(!bucket.take(rate, 99_999));
        assert!(bucket.take(rate, 100_000));
        assert!(!bucket.take(rate, 100_000));
        // A long silence fills the bucket to its burst, no more.
        let later = 100_000_000;
        assert!((0..3).all(|_| bucket.take(rate, later)));
        assert!(!bucket.take(rate, later));
    }

    #[test]
    fn unlimited_never_runs_out_and_a_zero_burst_lets_nothing_through() {
        let mut bucket = TokenBucket::new(MessageRate::UNLIMITED, 0);
        assert!((0..100_000).all(|_| bucket.take(MessageRate::UNLIMITED, 0)));
        let closed = MessageRate::new(1_000, 0);
        let mut bucket = TokenBucket::new(closed, 0);
        assert!(!bucket.take(closed, u64::MAX));
    }
}
