//! The task that owns the connections to Redis: it publishes what the hub sends,
//! follows the hub's rooms with subscriptions, hands what arrives to the hub's inbox,
//! and reconnects when Redis goes away.

use crate::{BrokerStats, Command, RedisConfig, codec};
use bytes::Bytes;
use futures_util::StreamExt;
use redis::{
    Client, RedisResult,
    aio::{MultiplexedConnection, PubSubSink, PubSubStream},
};
use std::{collections::HashSet, time::Duration};
use switchboard::hub::Inbox;
use tokio::sync::mpsc::UnboundedReceiver;

/// Publishes that wait are sent together, up to this many in one pipeline.
const MAX_BATCH: u64 = 256;

/// The first wait before reconnecting; it doubles up to `RedisConfig::max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// How long one attempt to reopen the link may take: an unreachable host can hold a
/// TCP connect for minutes, and the commands waiting meanwhile (publishes to count as
/// lost) are taken only between attempts.
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
    pub(crate) async fn open(config: &RedisConfig) -> RedisResult<Self> {
        Self::open_with(Client::open(config.url.as_str())?).await
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

/// Serves one hub until the broker is dropped or the hub is gone.
pub(crate) async fn run(
    mut link: Link,
    config: RedisConfig,
    inbox: Inbox,
    mut commands: UnboundedReceiver<Command>,
    stats: BrokerStats,
) {
    let mut rooms = HashSet::new();
    let own = [config.channel_all(), config.channel_node(inbox.node())];
    let mut subscribed = link.subscribe(own.clone()).await;
    loop {
        let failure = match subscribed {
            Ok(()) => {
                let mut session = Session {
                    link: &mut link,
                    config: &config,
                    inbox: &inbox,
                    rooms: &mut rooms,
                    stats: &stats,
                };
                match session.serve(&mut commands).await {
                    Ended::Done => return,
                    Ended::Failed(failure) => failure,
                }
            }
            Err(error) => error.to_string(),
        };
        tracing::warn!(%failure, "lost the link to Redis; reconnecting");
        let Some(new) = reconnect(&link.client, &config, &mut commands, &mut rooms, &stats).await
        else {
            return;
        };
        link = new;
        stats.count(&stats.0.reconnects);
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
    stats: &'a BrokerStats,
}

impl Session<'_> {
    async fn serve(&mut self, commands: &mut UnboundedReceiver<Command>) -> Ended {
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else {
                        return Ended::Done;
                    };
                    if let Err(error) = self.apply(command, commands).await {
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

    /// Carries out `command`, and with a publish every publish queued behind it.
    async fn apply(
        &mut self,
        command: Command,
        commands: &mut UnboundedReceiver<Command>,
    ) -> RedisResult<()> {
        let mut next = Some(command);
        while let Some(command) = next.take() {
            match command {
                Command::Subscribe(room) => {
                    if self.rooms.insert(room.clone()) {
                        self.link
                            .sink
                            .subscribe(self.config.channel_room(&room))
                            .await?;
                    }
                }
                Command::Unsubscribe(room) => {
                    if self.rooms.remove(&room) {
                        let channel = self.config.channel_room(&room);
                        self.link.sink.unsubscribe(channel).await?;
                    }
                }
                Command::Publish { channel, payload } => {
                    next = self.publish_batch(channel, payload, commands).await?;
                }
            }
        }
        Ok(())
    }

    /// Publishes this envelope and those queued behind it in one pipeline (one round
    /// trip for a burst); returns the first other command met, for the caller to apply
    /// next, in order.
    async fn publish_batch(
        &mut self,
        channel: String,
        payload: Bytes,
        commands: &mut UnboundedReceiver<Command>,
    ) -> RedisResult<Option<Command>> {
        let mut pipe = redis::pipe();
        pipe.publish(channel, payload.as_ref()).ignore();
        let mut count: u64 = 1;
        let mut other = None;
        while count < MAX_BATCH {
            match commands.try_recv() {
                Ok(Command::Publish { channel, payload }) => {
                    pipe.publish(channel, payload.as_ref()).ignore();
                    count += 1;
                }
                Ok(command) => {
                    other = Some(command);
                    break;
                }
                Err(_) => break,
            }
        }
        match pipe.query_async::<()>(&mut self.link.publisher).await {
            Ok(()) => {
                self.stats.add(&self.stats.0.published, count);
                Ok(other)
            }
            Err(error) => {
                self.stats.add(&self.stats.0.lost, count);
                tracing::warn!(%error, count, "envelopes lost: Redis did not take them");
                // The other command still applies once the link is back.
                if let Some(command) = other {
                    offline(command, self.rooms, self.stats);
                }
                Err(error)
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
/// dropped. Commands that arrive meanwhile are taken as [`offline`] says.
async fn reconnect(
    client: &Client,
    config: &RedisConfig,
    commands: &mut UnboundedReceiver<Command>,
    rooms: &mut HashSet<String>,
    stats: &BrokerStats,
) -> Option<Link> {
    let mut delay = FIRST_BACKOFF;
    loop {
        let wait = tokio::time::sleep(delay);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                command = commands.recv() => offline(command?, rooms, stats),
            }
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, Link::open_with(client.clone())).await {
            Ok(Ok(link)) => return Some(link),
            Ok(Err(error)) => tracing::debug!(%error, ?delay, "Redis still unreachable"),
            Err(_) => tracing::debug!(?delay, "Redis did not answer in time"),
        }
        delay = (delay * 2).min(config.max_backoff);
    }
}

/// A command while the link is down: room changes are remembered for the
/// resubscription; a publish cannot happen and is counted as lost.
fn offline(command: Command, rooms: &mut HashSet<String>, stats: &BrokerStats) {
    match command {
        Command::Subscribe(room) => {
            rooms.insert(room);
        }
        Command::Unsubscribe(room) => {
            rooms.remove(&room);
        }
        Command::Publish { channel, .. } => {
            stats.count(&stats.0.lost);
            tracing::warn!(%channel, "envelope lost: no link to Redis");
        }
    }
}
