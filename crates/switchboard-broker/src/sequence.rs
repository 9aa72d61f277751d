//! No silent loss between hubs: publishers number their envelopes per channel, and
//! receivers count the numbers they never saw. Engine-neutral, so that every broker
//! (Redis, NATS…) counts loss the same way; the engine only carries a [`Stamp`] on the
//! wire next to each envelope.
//!
//! A counter is per (publisher, channel), not per publisher: a hub receives only the
//! channels it subscribes to, so one sequence across all of a publisher's channels
//! would show every envelope for a room this hub is not in as a gap.
//!
//! Both sides keep bounded maps: a publisher forgets the counters of channels it has
//! not published on for a while, and a receiver those of channels it left and of
//! publishers it has not heard from. A forgotten counter starts again at 1 under a new
//! epoch, which the receiver recognises as a reset, not as a gap.

use crate::NodeId;
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// What a publisher writes next to an envelope: which incarnation of its counter for
/// the channel (`epoch`) and the envelope's number in it (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// Changes whenever the publisher starts a channel's counter again (after
    /// forgetting it), so that a receiver tells a reset from a gap.
    pub epoch: u32,
    /// The envelope's number on its channel within `epoch`: 1, 2, 3…
    pub sequence: u64,
}

/// Entries a map keeps before it forgets the least recently used; the default bound
/// of [`Sequencer`] and [`GapDetector`].
pub const DEFAULT_MAX_CHANNELS: usize = 65_536;

/// How long a networked engine's [`Sequencer`] keeps the counter of a channel it does
/// not publish on: its receivers keep theirs longer ([`RECEIVER_IDLE`]).
pub const PUBLISHER_IDLE: Duration = Duration::from_secs(60);

/// How long a networked engine's [`GapDetector`] remembers a publisher's counter on a
/// channel without hearing from it: longer than publishers keep theirs
/// ([`PUBLISHER_IDLE`]), so that a forgotten counter shows up as a reset rather than
/// hides a gap.
pub const RECEIVER_IDLE: Duration = Duration::from_secs(600);

/// A publisher's counters, one per channel it publishes on.
///
/// Publishes must be stamped in the order they go on the wire: take the stamp and
/// queue the envelope under one lock.
#[derive(Debug)]
pub struct Sequencer {
    counters: HashMap<String, Counter>,
    next_epoch: u32,
    max: usize,
    idle: Duration,
}

#[derive(Debug)]
struct Counter {
    epoch: u32,
    last: u64,
    used: Instant,
}

impl Sequencer {
    /// Counters for at most `max` channels (0 is taken as 1); a counter unused for
    /// `idle` is forgotten when room is needed.
    pub fn new(max: usize, idle: Duration) -> Self {
        Self {
            counters: HashMap::new(),
            // Random, so that a broker made again for the same node id does not reuse
            // the epochs its receivers remember.
            next_epoch: rand::random(),
            max: max.max(1),
            idle,
        }
    }

    /// The stamp of the next envelope on `channel`.
    pub fn next(&mut self, channel: &str, now: Instant) -> Stamp {
        if !self.counters.contains_key(channel) && self.counters.len() >= self.max {
            self.make_room(now);
        }
        if let Some(counter) = self.counters.get_mut(channel) {
            counter.last += 1;
            counter.used = now;
            return Stamp {
                epoch: counter.epoch,
                sequence: counter.last,
            };
        }
        let epoch = self.next_epoch;
        self.next_epoch = self.next_epoch.wrapping_add(1);
        let counter = Counter {
            epoch,
            last: 1,
            used: now,
        };
        self.counters.insert(channel.to_owned(), counter);
        Stamp { epoch, sequence: 1 }
    }

    /// How many channels have a counter now.
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// Whether no channel has a counter.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    fn make_room(&mut self, now: Instant) {
        let idle = self.idle;
        self.counters
            .retain(|_, counter| now.saturating_duration_since(counter.used) < idle);
        let uses = self.counters.values().map(|counter| counter.used);
        if let Some(oldest) = oldest_eighth(uses, self.max) {
            self.counters.retain(|_, counter| counter.used > oldest);
        }
    }
}

/// When the map is still full: the time at or before which its oldest eighth was
/// used, to forget them all at once (one scan per `max / 8` new entries, not per entry).
fn oldest_eighth(uses: impl Iterator<Item = Instant>, max: usize) -> Option<Instant> {
    let mut uses: Vec<Instant> = uses.collect();
    if uses.len() < max {
        return None;
    }
    let cut = (uses.len() / 8).min(uses.len() - 1);
    let (_, nth, _) = uses.select_nth_unstable(cut);
    Some(*nth)
}

/// A receiver's view of the publishers' counters: what arrives is compared with what
/// came before on the same channel from the same publisher, and every number skipped
/// is counted as missed.
#[derive(Debug)]
pub struct GapDetector {
    channels: HashMap<String, HashMap<NodeId, Track>>,
    len: usize,
    max: usize,
    idle: Duration,
}

#[derive(Debug)]
struct Track {
    epoch: u32,
    last: u64,
    seen: Instant,
}

impl GapDetector {
    /// Tracks at most `max` (publisher, channel) pairs (0 is taken as 1); a pair not
    /// heard from for `idle` is forgotten when room is needed. Forgetting a pair can
    /// only hide a gap, never invent one: keep `idle` longer than the publishers'.
    pub fn new(max: usize, idle: Duration) -> Self {
        Self {
            channels: HashMap::new(),
            len: 0,
            max: max.max(1),
            idle,
        }
    }

    /// Notes an envelope from `origin` on `channel`; how many of that publisher's
    /// envelopes on the channel were skipped since the last one seen. The first
    /// envelope seen from a publisher on a channel counts nothing (this hub may have
    /// subscribed just now); a new epoch counts the numbers before this one in it.
    pub fn observe(&mut self, channel: &str, origin: NodeId, stamp: Stamp, now: Instant) -> u64 {
        if let Some(track) = self
            .channels
            .get_mut(channel)
            .and_then(|origins| origins.get_mut(&origin))
        {
            track.seen = now;
            return track.advance(stamp);
        }
        if self.len >= self.max {
            self.make_room(now);
        }
        let track = Track {
            epoch: stamp.epoch,
            last: stamp.sequence,
            seen: now,
        };
        self.channels
            .entry(channel.to_owned())
            .or_default()
            .insert(origin, track);
        self.len += 1;
        0
    }

    /// This hub left `channel`: what it will not hear is not missed.
    pub fn forget(&mut self, channel: &str) {
        if let Some(origins) = self.channels.remove(channel) {
            self.len -= origins.len();
        }
    }

    /// Keeps only the channels `subscribed` says this hub is still on: after a
    /// reconnection, the channels it left meanwhile (no unsubscription was confirmed
    /// for them, the connection was gone) must not resume from old numbers when the
    /// hub comes back to them.
    pub fn retain_channels(&mut self, subscribed: impl Fn(&str) -> bool) {
        self.channels.retain(|channel, _| subscribed(channel));
        self.len = self.channels.values().map(HashMap::len).sum();
    }

    /// How many (publisher, channel) pairs are tracked now.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no pair is tracked.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn make_room(&mut self, now: Instant) {
        let idle = self.idle;
        self.retain(|track| now.saturating_duration_since(track.seen) < idle);
        let seen = self
            .channels
            .values()
            .flat_map(|o| o.values().map(|t| t.seen));
        if let Some(oldest) = oldest_eighth(seen, self.max) {
            self.retain(|track| track.seen > oldest);
        }
    }

    fn retain(&mut self, keep: impl Fn(&Track) -> bool) {
        for origins in self.channels.values_mut() {
            origins.retain(|_, track| keep(track));
        }
        self.channels.retain(|_, origins| !origins.is_empty());
        self.len = self.channels.values().map(HashMap::len).sum();
    }
}

impl Track {
    /// The numbers skipped before `stamp`.
    fn advance(&mut self, stamp: Stamp) -> u64 {
        if stamp.epoch != self.epoch {
            // The publisher started this counter again, at 1: pub/sub keeps a
            // publisher's order, so a different epoch is a newer one.
            self.epoch = stamp.epoch;
            self.last = stamp.sequence;
            return stamp.sequence.saturating_sub(1);
        }
        if stamp.sequence <= self.last {
            // Not newer: a duplicate, which no gap explains.
            return 0;
        }
        let missed = stamp.sequence - self.last - 1;
        self.last = stamp.sequence;
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    fn node(bits: u64) -> NodeId {
        NodeId::from_bits(bits)
    }

    #[test]
    fn counters_are_per_channel_and_start_at_one() {
        let now = Instant::now();
        let mut sequencer = Sequencer::new(8, IDLE);
        let a1 = sequencer.next("a", now);
        let b1 = sequencer.next("b", now);
        let a2 = sequencer.next("a", now);
        assert_eq!((a1.sequence, b1.sequence, a2.sequence), (1, 1, 2));
        assert_eq!(a1.epoch, a2.epoch);
        assert_ne!(a1.epoch, b1.epoch);
    }

    #[test]
    fn a_receiver_counts_exactly_the_skipped_numbers() {
        let now = Instant::now();
        let mut sequencer = Sequencer::new(8, IDLE);
        let mut detector = GapDetector::new(8, IDLE);
        let stamps: Vec<Stamp> = (0..10).map(|_| sequencer.next("room", now)).collect();
        let mut missed = 0;
        // 2, 3 and 6, 7, 8 are lost.
        for i in [0, 3, 4, 8, 9] {
            missed += detector.observe("room", node(1), stamps[i], now);
        }
        assert_eq!(missed, 5);
        // A duplicate or a stale number counts nothing.
        assert_eq!(detector.observe("room", node(1), stamps[4], now), 0);
    }

    #[test]
    fn publishers_and_channels_do_not_blur_each_other() {
        let now = Instant::now();
        let (mut one, mut two) = (Sequencer::new(8, IDLE), Sequencer::new(8, IDLE));
        let mut detector = GapDetector::new(8, IDLE);
        let mut missed = 0;
        for _ in 0..5 {
            missed += detector.observe("a", node(1), one.next("a", now), now);
            // This hub does not hear `b`: one's counter for it moves on unseen.
            one.next("b", now);
            missed += detector.observe("a", node(2), two.next("a", now), now);
        }
        assert_eq!(missed, 0);
        assert_eq!(detector.len(), 2);
    }

    #[test]
    fn a_first_sight_counts_nothing_and_a_reset_is_no_gap() {
        let now = Instant::now();
        let mut sequencer = Sequencer::new(1, IDLE);
        let mut detector = GapDetector::new(8, IDLE);
        for _ in 0..5 {
            sequencer.next("a", now);
        }
        // Subscribed late: 1 to 5 went before this hub listened.
        assert_eq!(
            detector.observe("a", node(1), sequencer.next("a", now), now),
            0
        );
        // `b` takes the only slot: `a`'s counter is forgotten and starts again at 1.
        sequencer.next("b", now + IDLE * 2);
        assert_eq!(sequencer.len(), 1);
        let restarted = sequencer.next("a", now + IDLE * 4);
        assert_eq!(restarted.sequence, 1);
        assert_eq!(detector.observe("a", node(1), restarted, now), 0);
        // In the new epoch, numbers skipped count again; those of a new epoch's
        // start too.
        sequencer.next("a", now + IDLE * 4);
        assert_eq!(
            detector.observe("a", node(1), sequencer.next("a", now), now),
            1
        );
        let mut other = Sequencer::new(8, IDLE);
        other.next("c", now);
        other.next("c", now);
        let third = other.next("c", now);
        assert_eq!(
            detector.observe(
                "c",
                node(1),
                Stamp {
                    epoch: 9,
                    sequence: 1
                },
                now
            ),
            0
        );
        assert_eq!(detector.observe("c", node(1), third, now), 2);
    }

    #[test]
    fn both_maps_stay_within_their_bound() {
        let start = Instant::now();
        let mut sequencer = Sequencer::new(64, IDLE);
        let mut detector = GapDetector::new(64, IDLE);
        for i in 0..10_000_u64 {
            let now = start + Duration::from_millis(i);
            let channel = format!("room{i}");
            let stamp = sequencer.next(&channel, now);
            detector.observe(&channel, node(i % 3), stamp, now);
            assert!(sequencer.len() <= 64 && detector.len() <= 64);
        }
        // The most recent stay: a busy channel is not forgotten for idle ones.
        assert!(sequencer.counters.contains_key("room9999"));
    }

    fn later_of(stamp: Stamp) -> Stamp {
        Stamp {
            sequence: stamp.sequence + 10,
            ..stamp
        }
    }

    #[test]
    fn leaving_a_channel_forgets_it() {
        let now = Instant::now();
        let mut detector = GapDetector::new(8, IDLE);
        let stamp = Stamp {
            epoch: 1,
            sequence: 1,
        };
        detector.observe("a", node(1), stamp, now);
        detector.observe("a", node(2), stamp, now);
        detector.observe("b", node(1), stamp, now);
        detector.forget("a");
        assert_eq!(detector.len(), 1);
        detector.observe("c", node(1), stamp, now);
        detector.retain_channels(|channel| channel == "c");
        assert_eq!(detector.len(), 1);
        assert_eq!(detector.observe("b", node(1), later_of(stamp), now), 0);
        // Back in `a` later: a first sight again, however far the publisher went.
        let later = Stamp {
            epoch: 1,
            sequence: 50,
        };
        assert_eq!(detector.observe("a", node(1), later, now), 0);
    }
}
