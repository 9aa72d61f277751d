//! The task that owns the connections to Redis: it publishes what the hub sends,
//! follows the hub's rooms with subscriptions, hands what arrives to the hub's inbox,
//! and reconnects when Redis goes away.

use crate::{BrokerStats, ConnectError, Publish, RedisConfig, RoomChanges, codec};
use bytes::Bytes;
use futures_util::StreamExt;
use redis::{
    Client, RedisResult,
    aio::{MultiplexedConnection, PubSubSink, PubSubStream},
};
use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard_broker::Inbox;
use tokio::sync::mpsc::Receiver;

/// Publishes that wait are sent together, up to this many in one pipeline.
const MAX_BATCH: u64 = 256;

/// The first wait before reconnecting; it doubles up to `RedisConfig::max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// How long one attempt to reopen the link may take: an unreachable host can hold a
/// TCP connect for minutes, and the publishes waiting meanwhile (to count as lost) are
/// taken only between attempts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection for publishing and one for subscriptions (Redis allows nothing but
/// subscription commands on a subscribed connection).
pub(crate) struct Link {
    client: Client,
    publisher: MultiplexedConnection,
    sink: PubSubSink,
    stream: PubSubStream,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

impl Link {
    pub(crate) async fn open(config: &RedisConfig) -> Result<Self, ConnectError> {
        let client = Client::open(config.url.as_str())
            .map_err(|error| ConnectError::InvalidUrl(Box::new(error)))?;
        Self::open_with(client)
            .await
            .map_err(|error| ConnectError::Connect(Box::new(error)))
    }

    async fn open_with(client: Client) -> RedisResult<Self> {
        let publisher = client.get_multiplexed_async_connection().await?;
        let (sink, stream) = client.get_async_pubsub().await?.split();
        Ok(Self {
            client,
            publisher,
            sink,
            stream,
        })
    }

    async fn subscribe(&mut self, channels: impl IntoIterator<Item = String>) -> RedisResult<()> {
        for channel in channels {
            self.sink.subscribe(channel).await?;
        }
        Ok(())
    }
}

/// Why serving stopped.
enum Ended {
    /// The broker was dropped or its hub is gone: nothing more to do.
    Done,
    /// The link failed; reconnect.
    Failed(String),
}

/// Serves one hub until the broker is dropped or the hub is gone; `ready` is `true`
/// while the link is up with all of the hub's subscriptions confirmed.
pub(crate) async fn run(
    mut link: Link,
    config: RedisConfig,
    inbox: Inbox,
    mut publishes: Receiver<Publish>,
    changes: Arc<RoomChanges>,
    stats: BrokerStats,
    ready: Arc<AtomicBool>,
) {
    let mut rooms = HashSet::new();
    let own = [config.channel_all(), config.channel_node(inbox.node())];
    let mut subscribed = link.subscribe(own.clone()).await;
    loop {
        let failure = match subscribed {
            Ok(()) => {
                // Redis confirmed every subscription the hub has: envelopes for any of
                // its connections reach it again.
                ready.store(true, Relaxed);
                let mut session = Session {
                    link: &mut link,
                    config: &config,
                    inbox: &inbox,
                    rooms: &mut rooms,
                    changes: &changes,
                    stats: &stats,
                };
                match session.serve(&mut publishes).await {
                    Ended::Done => return,
                    Ended::Failed(failure) => failure,
                }
            }
            Err(error) => error.to_string(),
        };
        // Until the new link has subscribed to everything again, this hub would miss
        // what other hubs publish for its connections.
        ready.store(false, Relaxed);
        // Once per outage: the retries that follow are logged at `debug`.
        tracing::warn!(%failure, "lost the link to Redis; reconnecting");
        let down = Instant::now();
        let Some((new, lost)) = reconnect(&link.client, &config, &mut publishes, &stats).await
        else {
            return;
        };
        tracing::info!(outage = ?down.elapsed(), lost, "link to Redis restored");
        link = new;
        stats.count(&stats.0.reconnects);
        // The room changes asked for meanwhile: subscribed below, with the others.
        for (room, wanted) in changes.take() {
            note(&mut rooms, room, wanted);
        }
        let rooms_now: Vec<String> = rooms.iter().map(|r| config.channel_room(r)).collect();
        subscribed = link.subscribe(own.iter().cloned().chain(rooms_now)).await;
    }
}

/// The state one connected stretch works on.
struct Session<'a> {
    link: &'a mut Link,
    config: &'a RedisConfig,
    inbox: &'a Inbox,
    /// The rooms this hub has members in: subscribed now, and again after a reconnect.
    rooms: &'a mut HashSet<String>,
    changes: &'a RoomChanges,
    stats: &'a BrokerStats,
}

impl Session<'_> {
    async fn serve(&mut self, publishes: &mut Receiver<Publish>) -> Ended {
        loop {
            tokio::select! {
                publish = publishes.recv() => {
                    let Some(publish) = publish else {
                        return Ended::Done;
                    };
                    if let Err((error, lost)) = self.publish_batch(publish, publishes).await {
                        return Ended::Failed(format!("{error} ({lost} envelopes lost)"));
                    }
                }
                () = self.changes.changed.notified() => {
                    if let Err(error) = self.apply_room_changes().await {
                        return Ended::Failed(error.to_string());
                    }
                }
                message = self.link.stream.next() => {
                    let Some(message) = message else {
                        return Ended::Failed("the subscription connection closed".into());
                    };
                    if !self.deliver(message.get_payload_bytes()) {
                        return Ended::Done;
                    }
                }
            }
        }
    }

    /// Subscribes to the rooms the hub came to have and unsubscribes from those it left.
    /// `rooms` takes every change even when Redis fails midway, so that the
    /// resubscription after the reconnect has them all.
    async fn apply_room_changes(&mut self) -> RedisResult<()> {
        let mut result = Ok(());
        for (room, wanted) in self.changes.take() {
            let channel = self.config.channel_room(&room);
            if note(self.rooms, room, wanted) && result.is_ok() {
                result = if wanted {
                    self.link.sink.subscribe(channel).await
                } else {
                    self.link.sink.unsubscribe(channel).await
                };
            }
        }
        result
    }

    /// Publishes this envelope and those queued behind it in one pipeline (one round
    /// trip for a burst); on failure, with how many were lost.
    async fn publish_batch(
        &mut self,
        first: Publish,
        publishes: &mut Receiver<Publish>,
    ) -> Result<(), (redis::RedisError, u64)> {
        let mut pipe = redis::pipe();
        let mut count: u64 = 0;
        let mut next = Some(first);
        while let Some(Publish { channel, payload }) = next {
            pipe.publish(channel, payload.as_ref()).ignore();
            count += 1;
            next = if count < MAX_BATCH {
                publishes.try_recv().ok()
            } else {
                None
            };
        }
        match pipe.query_async::<()>(&mut self.link.publisher).await {
            Ok(()) => {
                self.stats.add(&self.stats.0.published, count);
                Ok(())
            }
            // Reported with the outage it starts.
            Err(error) => {
                self.stats.add(&self.stats.0.lost, count);
                Err((error, count))
            }
        }
    }

    /// Hands an arrived envelope to the hub; `false` once the hub is gone.
    fn deliver(&mut self, payload: &[u8]) -> bool {
        match codec::decode(Bytes::copy_from_slice(payload)) {
            Ok(envelope) => {
                // Our own publishes come back on rooms we share; the inbox skips them.
                if envelope.origin != self.inbox.node() {
                    self.stats.count(&self.stats.0.received);
                }
                self.inbox.deliver(&envelope)
            }
            Err(error) => {
                self.stats.count(&self.stats.0.malformed);
                tracing::warn!(%error, "dropped a message that is not an envelope");
                true
            }
        }
    }
}

/// Opens the link again, waiting longer after each failure; `None` once the broker is
/// dropped. Publishes that arrive meanwhile cannot happen: each is counted as lost, and
/// their number returned with the link.
async fn reconnect(
    client: &Client,
    config: &RedisConfig,
    publishes: &mut Receiver<Publish>,
    stats: &BrokerStats,
) -> Option<(Link, u64)> {
    let mut delay = FIRST_BACKOFF;
    let mut lost = 0;
    loop {
        let wait = tokio::time::sleep(delay);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                publish = publishes.recv() => {
                    stats.count(&stats.0.lost);
                    lost += 1;
                    tracing::trace!(channel = %publish?.channel, "envelope lost: no link to Redis");
                }
            }
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, Link::open_with(client.clone())).await {
            Ok(Ok(link)) => return Some((link, lost)),
            Ok(Err(error)) => tracing::debug!(%error, ?delay, "Redis still unreachable"),
            Err(_) => tracing::debug!(?delay, "Redis did not answer in time"),
        }
        delay = (delay * 2).min(config.max_backoff);
    }
}

/// Records that the hub wants (or no longer wants) `room`; whether that changed anything.
fn note(rooms: &mut HashSet<String>, room: String, wanted: bool) -> bool {
    if wanted {
        rooms.insert(room)
    } else {
        rooms.remove(&room)
    }
}
