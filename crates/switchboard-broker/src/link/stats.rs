//! The counters of a networked engine: written by its tasks ([`Counters`]), read by
//! the application ([`BrokerStats`]) and served as the hub's broker metrics.

use crate::BrokerMetrics;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

/// How long gaps are summed before they are logged: the gaps of one outage show up as
/// publishers resume, within moments of each other, and make one line.
const MISSED_LOG_WINDOW: Duration = Duration::from_secs(1);

/// One of the counters of [`BrokerStats`], as an engine writes it ([`Counters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Counter {
    /// [`BrokerStats::published`].
    Published,
    /// [`BrokerStats::received`].
    Received,
    /// [`BrokerStats::lost`].
    Lost,
    /// [`BrokerStats::shed`] (count it in [`Counter::Lost`] too).
    Shed,
    /// [`BrokerStats::missed`].
    Missed,
    /// [`BrokerStats::unconfirmed`].
    Unconfirmed,
    /// [`BrokerStats::malformed`].
    Malformed,
    /// [`BrokerStats::reconnects`].
    Reconnects,
}

#[derive(Debug, Default)]
struct Cells {
    published: AtomicU64,
    received: AtomicU64,
    lost: AtomicU64,
    shed: AtomicU64,
    missed: AtomicU64,
    unconfirmed: AtomicU64,
    malformed: AtomicU64,
    reconnects: AtomicU64,
    pending: AtomicU64,
    /// Envelopes missed since the current log window opened (0: none open).
    missed_window: AtomicU64,
}

impl Cells {
    fn cell(&self, counter: Counter) -> &AtomicU64 {
        match counter {
            Counter::Published => &self.published,
            Counter::Received => &self.received,
            Counter::Lost => &self.lost,
            Counter::Shed => &self.shed,
            Counter::Missed => &self.missed,
            Counter::Unconfirmed => &self.unconfirmed,
            Counter::Malformed => &self.malformed,
            Counter::Reconnects => &self.reconnects,
        }
    }
}

/// Counters of a networked broker (Redis, NATS), since it was made; a cheap handle,
/// shared with the broker, readable after the hub has taken it.
#[derive(Debug, Clone, Default)]
pub struct BrokerStats(Arc<Cells>);

impl BrokerStats {
    /// Envelopes the server accepted from this hub (an engine whose server confirms
    /// nothing: those its client took), and stream messages the server stored.
    pub fn published(&self) -> u64 {
        self.0.published.load(Relaxed)
    }

    /// Envelopes from other hubs handed to this hub.
    pub fn received(&self) -> u64 {
        self.0.received.load(Relaxed)
    }

    /// Envelopes that could not be published: the link was down, more than the
    /// engine's `max_pending_publishes` were waiting, the message was not text or
    /// binary, the server refused it.
    pub fn lost(&self) -> u64 {
        self.0.lost.load(Relaxed)
    }

    /// Of [`BrokerStats::lost`], the publishes shed because a queue was full (the
    /// engine's `max_pending_publishes` were already waiting, or a stream's own queue
    /// was full).
    pub fn shed(&self) -> u64 {
        self.0.shed.load(Relaxed)
    }

    /// Envelopes other hubs published for this hub that never reached it, counted
    /// from the gaps in each publisher's numbering of each channel when its next
    /// envelope arrives: a subscription the server dropped (a restart, a client it
    /// disconnected or that fell behind), a publisher's shed. `received + missed` is
    /// what the other hubs published for this hub once they publish again after a gap.
    pub fn missed(&self) -> u64 {
        self.0.missed.load(Relaxed)
    }

    /// Stream publishes sent whose answer never came (the link failed on the way):
    /// stored or not, nobody knows; their futures said `StreamError::Unconfirmed`.
    /// Neither in [`BrokerStats::lost`] nor in [`BrokerStats::published`].
    pub fn unconfirmed(&self) -> u64 {
        self.0.unconfirmed.load(Relaxed)
    }

    /// Messages on this hub's channels that were not envelopes this version
    /// understands, and stream entries that were not messages (skipped by a read).
    pub fn malformed(&self) -> u64 {
        self.0.malformed.load(Relaxed)
    }

    /// Times the link to the server was opened again after failing.
    pub fn reconnects(&self) -> u64 {
        self.0.reconnects.load(Relaxed)
    }

    /// Publishes the link has not answered yet, queued or on their way: at most the
    /// engine's `max_pending_publishes`.
    pub fn pending_publishes(&self) -> u64 {
        self.0.pending.load(Relaxed)
    }

    /// These counters as the hub serves them, with whether the link is up now
    /// (`connected`, what `Broker::is_ready` says).
    pub fn metrics(&self, connected: bool) -> BrokerMetrics {
        BrokerMetrics {
            published: self.published(),
            received: self.received(),
            lost: self.lost(),
            missed: self.missed(),
            malformed: self.malformed(),
            reconnects: self.reconnects(),
            connected,
        }
    }
}

/// What an engine's tasks write into the [`BrokerStats`] it hands out: a cheap handle,
/// shared by the broker and its tasks. Kept apart from [`BrokerStats`] so that an
/// application reads the counters and never writes them.
#[derive(Debug, Clone, Default)]
pub struct Counters(Arc<Cells>);

impl Counters {
    /// The application's view of these counters.
    pub fn stats(&self) -> BrokerStats {
        BrokerStats(self.0.clone())
    }

    /// The value of `counter` now.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0.cell(counter).load(Relaxed)
    }

    /// Counts one in `counter`.
    pub fn count(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Counts `n` in `counter`; its total after them.
    pub fn add(&self, counter: Counter, n: u64) -> u64 {
        self.0.cell(counter).fetch_add(n, Relaxed).wrapping_add(n)
    }

    /// Sets `counter` to `value`: for a count the engine's client keeps (NATS's
    /// reconnections).
    pub fn set(&self, counter: Counter, value: u64) {
        self.0.cell(counter).store(value, Relaxed);
    }

    /// Counts a publish on `channel` as lost, and logs it at the 1st, 2nd, 4th, 8th…
    /// loss: an outage that fills the queue loses every publish, and would otherwise
    /// write a warning for each.
    pub fn lose(&self, channel: &str, why: &str) {
        let lost = self.add(Counter::Lost, 1);
        if lost.is_power_of_two() {
            tracing::warn!(%channel, lost_total = lost, "envelope lost: {why}");
        }
    }

    /// Counts `missed` envelopes from other hubs and logs them with the others of the
    /// same outage: the first gap opens a window, and one line at its end gives the
    /// sum. Call it on a tokio runtime (the window is a task).
    pub fn miss(&self, missed: u64) {
        self.add(Counter::Missed, missed);
        if self.0.missed_window.fetch_add(missed, Relaxed) > 0 {
            return;
        }
        let counters = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(MISSED_LOG_WINDOW).await;
            let missed = counters.0.missed_window.swap(0, Relaxed);
            let missed_total = counters.get(Counter::Missed);
            tracing::warn!(
                missed,
                missed_total,
                "envelopes from other hubs never arrived (link outage or slow reader)"
            );
        });
    }

    /// Counts a publish into the queue to the link; how many were pending before it.
    pub(crate) fn queued(&self) -> u64 {
        self.0.pending.fetch_add(1, Relaxed)
    }

    /// Counts `n` publishes the link is done with: call it for every publish taken
    /// from an [`Outbox`](crate::link::Outbox)'s receiver once it is answered or
    /// counted lost (or as it is taken, for a link that holds none), since the
    /// outbox's bound is on the publishes counted here.
    pub fn dequeued(&self, n: u64) {
        self.0.pending.fetch_sub(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_engine_counts_the_application_reads() {
        let counters = Counters::default();
        let stats = counters.stats();
        counters.count(Counter::Published);
        assert_eq!(counters.add(Counter::Missed, 3), 3);
        counters.lose("room", "the link is down");
        counters.set(Counter::Reconnects, 2);
        counters.queued();
        counters.queued();
        counters.dequeued(1);
        let metrics = stats.metrics(true);
        assert_eq!((metrics.published, metrics.missed, metrics.lost), (1, 3, 1));
        assert_eq!((metrics.reconnects, metrics.connected), (2, true));
        assert_eq!(stats.pending_publishes(), 1);
    }
}
