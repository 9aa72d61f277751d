//! What reads one subscriber connection: counts the gaps in what arrives and hands it
//! to the delivery task, and tells the link task what it heard (confirmations, the
//! channels Redis unsubscribed by itself, that the connection is alive).

use crate::{codec, pubsub};
use bytes::Bytes;
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard_broker::{
    Envelope, GapDetector, NodeId,
    link::{Counter, Counters, Undelivered},
    lock,
};
use tokio::sync::{Notify, mpsc::Sender};

/// What the reader of one connection heard, for the link task.
#[derive(Debug)]
pub(crate) struct Heard {
    /// (Un)subscriptions Redis confirmed.
    pub(crate) confirmed: AtomicU64,
    /// The unsubscriptions sent and not confirmed yet, per channel: an unsubscription
    /// not among them is one Redis sent by itself.
    leaving: Mutex<HashMap<String, u32>>,
    /// Channels Redis unsubscribed by itself (on a Redis Cluster: their slot moved
    /// away), not taken by the link task yet.
    evicted: Mutex<Vec<String>>,
    /// Slots whose sharded subscriptions Redis refused with `MOVED` (the link's map
    /// was stale), not taken by the link task yet.
    moved: Mutex<Vec<u16>>,
    opened: Instant,
    /// When anything was last read, in ms after `opened`.
    last_read: AtomicU64,
    /// Whether the reader waits for the hub to take an envelope (and so reads nothing).
    waiting_for_hub: AtomicBool,
}

impl Default for Heard {
    fn default() -> Self {
        Self {
            confirmed: AtomicU64::new(0),
            leaving: Mutex::default(),
            evicted: Mutex::default(),
            moved: Mutex::default(),
            opened: Instant::now(),
            last_read: AtomicU64::new(0),
            waiting_for_hub: AtomicBool::new(false),
        }
    }
}

impl Heard {
    pub(crate) fn leaving(&self, channels: &[String]) {
        let mut leaving = lock(&self.leaving);
        for channel in channels {
            *leaving.entry(channel.clone()).or_default() += 1;
        }
    }

    /// Whether the unsubscription of `channel` was asked for (and is now confirmed).
    fn left(&self, channel: &str) -> bool {
        let mut leaving = lock(&self.leaving);
        let Some(count) = leaving.get_mut(channel) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            leaving.remove(channel);
        }
        true
    }

    /// The channels Redis unsubscribed by itself since the last call.
    pub(crate) fn take_evicted(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.evicted))
    }

    /// The slots whose subscriptions Redis refused with `MOVED` since the last call.
    pub(crate) fn take_moved(&self) -> Vec<u16> {
        std::mem::take(&mut *lock(&self.moved))
    }

    /// How long the connection has been silent, unless the reader is waiting for the
    /// hub (then Redis may well have spoken: nobody reads it).
    pub(crate) fn silent_for(&self) -> Option<Duration> {
        if self.waiting_for_hub.load(Relaxed) {
            return None;
        }
        let last = Duration::from_millis(self.last_read.load(Relaxed));
        Some(self.opened.elapsed().saturating_sub(last))
    }

    fn read_now(&self) {
        let since = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_read.store(since, Relaxed);
    }
}

/// Reads one connection's replies: counts the gaps in what arrives and queues it for
/// the delivery task.
#[derive(Debug)]
pub(crate) struct Reader {
    own: NodeId,
    deliveries: Sender<Envelope>,
    /// Shared by the readers of every connection, successive ones included: a gap
    /// spans the outage between them.
    detector: Arc<Mutex<GapDetector>>,
    /// This connection's.
    heard: Arc<Heard>,
    /// Notified when something was heard that the link task acts on, shared by the
    /// readers of a link.
    notify: Arc<Notify>,
    stats: Counters,
}

impl Reader {
    pub(crate) fn new(
        own: NodeId,
        deliveries: Sender<Envelope>,
        detector: Arc<Mutex<GapDetector>>,
        stats: Counters,
    ) -> Self {
        Self {
            own,
            deliveries,
            detector,
            heard: Arc::default(),
            notify: Arc::default(),
            stats,
        }
    }

    /// Notified when a reader heard what the link task acts on.
    pub(crate) fn notify(&self) -> &Arc<Notify> {
        &self.notify
    }

    pub(crate) fn detector(&self) -> MutexGuard<'_, GapDetector> {
        lock(&self.detector)
    }

    /// A reader like this one for one more connection: its own [`Heard`], everything
    /// else shared.
    pub(crate) fn for_connection(&self) -> Self {
        Self {
            own: self.own,
            deliveries: self.deliveries.clone(),
            detector: self.detector.clone(),
            heard: Arc::default(),
            notify: self.notify.clone(),
            stats: self.stats.clone(),
        }
    }

    pub(crate) fn heard(&self) -> &Arc<Heard> {
        &self.heard
    }

    /// Reads until the connection fails (`Err`, with why) or the hub is gone (`Ok`).
    pub(crate) async fn run(self, mut replies: pubsub::Replies) -> Result<(), String> {
        self.heard.read_now();
        loop {
            let reply = replies.next().await.map_err(|error| error.to_string())?;
            self.heard.read_now();
            match reply {
                pubsub::Reply::Message { channel, payload } => {
                    let Some(envelope) = self.accept(&channel, payload) else {
                        continue;
                    };
                    // Waits while the hub is behind: the socket is not read meanwhile.
                    // Counted as missed if the link is dropped while it waits: its
                    // number is already seen, so no gap would count it. Not a stream's:
                    // the hub finds that offset missing and fills it from the stream.
                    let waiting = envelope
                        .position
                        .is_none()
                        .then(|| Undelivered::new(&self.stats));
                    self.heard.waiting_for_hub.store(true, Relaxed);
                    let sent = self.deliveries.send(envelope).await;
                    self.heard.waiting_for_hub.store(false, Relaxed);
                    self.heard.read_now();
                    std::mem::forget(waiting);
                    if sent.is_err() {
                        return Ok(());
                    }
                }
                pubsub::Reply::Subscription {
                    channel,
                    subscribed,
                } => {
                    if !subscribed {
                        if !self.heard.left(&channel) {
                            // A Redis Cluster moved the channel's slot to another
                            // shard: the link task finds where, and subscribes there.
                            lock(&self.heard.evicted).push(channel);
                            self.notify.notify_one();
                            continue;
                        }
                        self.detector().forget(&channel);
                    }
                    self.heard.confirmed.fetch_add(1, Relaxed);
                    self.notify.notify_one();
                }
                pubsub::Reply::Moved { slot } => {
                    // Not the connection's failure: the link task asks for the map
                    // and subscribes the slot's channels where it says.
                    lock(&self.heard.moved).push(slot);
                    self.notify.notify_one();
                }
                pubsub::Reply::Pong | pubsub::Reply::Other => {}
            }
        }
    }

    /// The envelope to hand to the hub, after counting what was missed before it;
    /// `None` for our own (echoed on rooms we share) and for what is not an envelope.
    /// A stream's message is handed over even when it is our own (the hub delivers a
    /// stream's messages only as Redis numbered them), and its gaps are the hub's to
    /// find and fill, by offset.
    fn accept(&self, channel: &str, payload: Vec<u8>) -> Option<Envelope> {
        let (envelope, stamp) = match codec::decode(Bytes::from(payload)) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.stats.count(Counter::Malformed);
                tracing::warn!(%error, "dropped a message that is not an envelope");
                return None;
            }
        };
        let Some(stamp) = stamp else {
            return Some(envelope);
        };
        if envelope.origin == self.own {
            return None;
        }
        let missed = self
            .detector()
            .observe(channel, envelope.origin, stamp, Instant::now());
        if missed > 0 {
            self.stats.miss(missed);
        }
        Some(envelope)
    }
}
