//! The tasks that own a hub's link to NATS: one publishes what the hub sends, in
//! order; one follows the hub's rooms with subscriptions and says when the hub is
//! ready; one per subscription reads what arrives, counts the gaps in it and queues it
//! for the delivery task that feeds the hub's inbox. The client reconnects by itself
//! (with our backoff) and subscribes again; its events tell us when.

use crate::{NatsConfig, Publish, stream};
use async_nats::{Client, ConnectOptions, Event, Subscriber, connection::State as Connection};
use bytes::Bytes;
use futures_util::StreamExt;
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard_broker::{
    Backoff, DEFAULT_MAX_CHANNELS, Envelope, GapDetector, Inbox, NodeId, Position, RECEIVER_IDLE,
    link::{Aborting, Counter, Counters, RoomChanges, deliver},
    lock, wire,
};
use tokio::sync::{
    Notify,
    mpsc::{self, Receiver, Sender},
};

/// The shortest wait before reconnecting; waits grow with jitter up to
/// `NatsConfig::max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// How long one attempt to connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a request (a flush, a JetStream call) may wait for NATS's answer.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a publish may wait for the client to take it: its buffer is full while
/// NATS does not read (frozen), and the hub's publishes must not stall behind it.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

/// How often the client pings NATS (when it sends nothing else) and the link sends a
/// probe through NATS: a NATS that stops answering (frozen, or its machine gone) is
/// taken as lost within this and [`REQUEST_TIMEOUT`].
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// How often the link looks at the client's connection (and asks NATS again after a
/// probe failed).
const RETRY: Duration = Duration::from_millis(100);

/// What the client's events and the tasks share: the counters and the link's state.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) stats: Counters,
    /// Slow-consumer events (see `BrokerStats::slow_consumer`): NATS's own counter,
    /// beside those every engine keeps.
    pub(crate) slow_consumer: Arc<AtomicU64>,
    /// The client's count of connections (the first one included), once it is made.
    connects: OnceLock<Arc<async_nats::Statistics>>,
    /// The connection (by the client's count) whose subscriptions a probe came back
    /// through: the hub is ready while it is the client's current one.
    confirmed: AtomicU64,
    /// The connection on which NATS reported an error (a permission refused): the
    /// hub is not ready until the next one.
    refused: AtomicU64,
    /// Woken by the client's connection events: the link looks at once rather than
    /// at its next [`RETRY`] (the events are only a hint, they can be lost).
    changed: Notify,
    /// The streams' epochs and which streams this link has made sure of.
    pub(crate) streams: stream::Known,
}

impl State {
    /// Follows the client's events (called by the client, on its own task). They
    /// can be lost (the client drops them when its channel is full): the link's state
    /// is taken from the client itself, the events only add what it does not keep.
    fn event(&self, event: Event) {
        match event {
            Event::SlowConsumer(sid) => {
                let events = self.slow_consumer.fetch_add(1, Relaxed) + 1;
                if events.is_power_of_two() {
                    tracing::warn!(sid, events, "the hub is behind: NATS messages dropped");
                }
            }
            Event::ServerError(error) => {
                self.refused.store(self.connects(), Relaxed);
                tracing::error!(%error, "NATS refused the hub something: not ready until the next connection");
            }
            Event::Connected | Event::Disconnected => self.changed.notify_one(),
            other => tracing::debug!(event = %other, "NATS client event"),
        }
    }

    /// The client's connections so far (0 before the first one).
    fn connects(&self) -> u64 {
        self.connects
            .get()
            .map_or(0, |statistics| statistics.connects.load(Relaxed))
    }

    /// See `Broker::is_ready`: the client connected, on the connection a probe
    /// came back through, and NATS refused nothing on it.
    pub(crate) fn is_ready(&self, client: Option<&Client>) -> bool {
        let Some(client) = client else { return false };
        let connects = self.connects();
        client.connection_state() == Connection::Connected
            && self.confirmed.load(Relaxed) == connects
            && self.refused.load(Relaxed) != connects
    }

    pub(crate) fn is_connected(&self, client: &Client) -> bool {
        client.connection_state() == Connection::Connected
    }

    fn attach(&self, client: &Client) {
        let _ = self.connects.set(client.statistics());
    }
}

/// A JetStream context whose requests wait at most [`REQUEST_TIMEOUT`].
pub(crate) fn jetstream(client: &Client) -> async_nats::jetstream::Context {
    let mut jetstream = async_nats::jetstream::new(client.clone());
    jetstream.set_timeout(REQUEST_TIMEOUT);
    jetstream
}

/// The client's options: our bounds, our backoff, our event handler.
pub(crate) fn options(config: &NatsConfig, state: &Arc<State>) -> ConnectOptions {
    let backoff = Mutex::new(Backoff::new(FIRST_BACKOFF, config.max_backoff));
    let events = state.clone();
    ConnectOptions::new()
        .subscription_capacity(config.max_pending_deliveries.max(1))
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .ping_interval(PING_INTERVAL)
        .max_reconnects(None)
        .reconnect_delay_callback(move |attempts| {
            let mut backoff = lock(&backoff);
            // The client counts attempts from 1 after each connection.
            if attempts <= 1 {
                backoff.reset();
            }
            backoff.next_wait()
        })
        .event_callback(move |event| {
            let state = events.clone();
            async move { state.event(event) }
        })
}

/// What the link works with, for its whole life.
pub(crate) struct Task {
    pub(crate) config: NatsConfig,
    pub(crate) inbox: Inbox,
    pub(crate) changes: Arc<RoomChanges>,
    pub(crate) state: Arc<State>,
    pub(crate) client: Arc<OnceLock<Client>>,
}

/// Serves one hub until the broker is dropped or the hub is gone, on `first` (made
/// by `NatsBroker::connect`) or on a client it makes, connecting in the background.
pub(crate) async fn run(task: Task, first: Option<Client>, publishes: Receiver<Publish>) {
    let client = match first {
        Some(client) => client,
        None => {
            let options = options(&task.config, &task.state).retry_on_initial_connect();
            // Checked by NatsBroker::new.
            let servers = task.config.servers().unwrap_or_default();
            match options.connect(servers).await {
                Ok(client) => client,
                Err(error) => {
                    tracing::error!(%error, "NATS client not made; the hub is not attached");
                    return;
                }
            }
        }
    };
    task.state.attach(&client);
    let _ = task.client.set(client.clone());
    let (deliveries, arrived) = mpsc::channel(task.config.max_pending_deliveries.max(1));
    let _delivery = Aborting(tokio::spawn(deliver(
        arrived,
        task.inbox.clone(),
        task.state.stats.clone(),
    )));
    let publisher = Aborting(tokio::spawn(publish(
        client.clone(),
        task.config.clone(),
        task.state.clone(),
        publishes,
    )));
    let receiving = Arc::new(Receiving {
        own: task.inbox.node(),
        deliveries,
        detector: Mutex::new(GapDetector::new(DEFAULT_MAX_CHANNELS, RECEIVER_IDLE)),
        state: task.state.clone(),
        jetstream: jetstream(&client),
    });
    let mut link = Link {
        task: &task,
        client,
        receiving,
        subscriptions: HashMap::new(),
    };
    link.serve(publisher).await;
}

/// The subscriptions of one hub, kept across reconnections (the client subscribes
/// again by itself).
struct Link<'a> {
    task: &'a Task,
    client: Client,
    receiving: Arc<Receiving>,
    /// Per subject: the task that reads its subscription.
    subscriptions: HashMap<String, Aborting<()>>,
}

impl Link<'_> {
    async fn serve(&mut self, mut publisher: Aborting<()>) {
        let config = &self.task.config;
        let probe = config.subject_probe(self.task.inbox.node());
        let Ok(mut probe) = self.client.subscribe(probe).await else {
            // Only a closed client refuses: the broker is going.
            return;
        };
        self.subscribe(config.subject_all()).await;
        self.subscribe(config.subject_node(self.task.inbox.node()))
            .await;
        self.apply_room_changes().await;
        let (task, state) = (self.task, self.task.state.clone());
        let deliveries = self.receiving.deliveries.clone();
        let mut seen = 0;
        let mut checked = Instant::now();
        loop {
            let connects = state.connects();
            if connects != seen {
                self.connected(seen, connects);
                seen = connects;
            }
            if state.is_connected(&self.client) {
                if state.confirmed.load(Relaxed) != connects {
                    self.confirm(&mut probe, connects).await;
                    checked = Instant::now();
                } else if checked.elapsed() >= PING_INTERVAL {
                    self.check(&mut probe, connects).await;
                    checked = Instant::now();
                }
            }
            tokio::select! {
                () = task.changes.changed() => self.apply_room_changes().await,
                () = state.changed.notified() => {}
                () = tokio::time::sleep(RETRY) => {}
                _ = &mut publisher.0 => return,
                () = deliveries.closed() => return,
            }
        }
    }

    /// A new connection (the client counted `connects`, `seen` before).
    fn connected(&self, seen: u64, connects: u64) {
        let stats = &self.task.state.stats;
        stats.set(Counter::Reconnects, connects.saturating_sub(1));
        if seen > 0 {
            tracing::info!(lost = stats.get(Counter::Lost), "link to NATS restored");
        }
        // A NATS restarted without its storage has no stream we knew.
        self.task.state.streams.clear();
    }

    /// Makes the hub ready on the connection the client counted `connects` once a
    /// probe came back on it: NATS has then taken every subscription sent before.
    async fn confirm(&self, probe: &mut Subscriber, connects: u64) {
        let asked = Instant::now();
        if self.round_trip(probe, connects).await {
            self.task.state.confirmed.store(connects, Relaxed);
            let rooms = self.subscriptions.len().saturating_sub(2);
            tracing::info!(rooms, took = ?asked.elapsed(), "subscribed to NATS");
        }
    }

    /// Checks that NATS still answers: a NATS frozen (or its machine gone) keeps the
    /// connection open, and the client's own pings never go while the hub publishes.
    /// Without an answer, the hub is not ready and the client connects again.
    async fn check(&self, probe: &mut Subscriber, connects: u64) {
        if self.round_trip(probe, connects).await {
            return;
        }
        self.task.state.confirmed.store(0, Relaxed);
        tracing::warn!("NATS did not answer within {REQUEST_TIMEOUT:?}; reconnecting");
        let reconnect = self.client.force_reconnect();
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, reconnect).await;
    }

    /// Sends a probe to this hub's own probe subject; whether it came back within
    /// [`REQUEST_TIMEOUT`].
    async fn round_trip(&self, probe: &mut Subscriber, connects: u64) -> bool {
        let token = Bytes::from(format!("{connects} {:?}", Instant::now()));
        let subject = self.task.config.subject_probe(self.task.inbox.node());
        let round_trip = async {
            self.client.publish(subject, token.clone()).await.ok()?;
            // Skips what an earlier probe, given up, brought back late.
            while let Some(message) = probe.next().await {
                if message.payload == token {
                    return Some(());
                }
            }
            None
        };
        matches!(
            tokio::time::timeout(REQUEST_TIMEOUT, round_trip).await,
            Ok(Some(()))
        )
    }

    /// Subscribes to the rooms the hub came to have and drops those it left.
    async fn apply_room_changes(&mut self) {
        for (room, wanted) in self.task.changes.take() {
            let subject = self.task.config.room_subject(&room);
            if wanted {
                if !self.subscriptions.contains_key(&subject) {
                    self.subscribe(subject).await;
                }
            } else if self.subscriptions.remove(&subject).is_some() {
                // What this hub will not hear is not missed.
                lock(&self.receiving.detector).forget(&subject);
                let name = crate::names::stream_name(&self.task.config.prefix, &room);
                self.task.state.streams.forget(&name);
            }
        }
    }

    async fn subscribe(&mut self, subject: String) {
        match self.client.subscribe(subject.clone()).await {
            Ok(subscriber) => {
                let reader = self.receiving.clone().read(subject.clone(), subscriber);
                self.subscriptions
                    .insert(subject, Aborting(tokio::spawn(reader)));
            }
            // Only a closed client refuses: the broker is going.
            Err(error) => tracing::error!(%subject, %error, "NATS refused a subscription"),
        }
    }
}

/// What the readers of the subscriptions share.
struct Receiving {
    own: NodeId,
    deliveries: Sender<Envelope>,
    detector: Mutex<GapDetector>,
    state: Arc<State>,
    jetstream: async_nats::jetstream::Context,
}

impl Receiving {
    /// Reads one subscription until it ends or the hub is gone.
    async fn read(self: Arc<Self>, subject: String, mut subscriber: Subscriber) {
        while let Some(message) = subscriber.next().await {
            let Some(envelope) = self.accept(&subject, message).await else {
                continue;
            };
            // Waits while the hub is behind: the client holds what follows, up to the
            // subscription's capacity, then drops it (a slow consumer, counted).
            if self.deliveries.send(envelope).await.is_err() {
                return;
            }
        }
    }

    /// The envelope to hand to the hub, after counting what was missed before it;
    /// `None` for our own (echoed on rooms we share) and for what is not an envelope.
    /// A stream's message (republished by JetStream, with its sequence) is handed over
    /// even when it is our own; its gaps are the hub's to fill, by offset.
    async fn accept(&self, subject: &str, message: async_nats::Message) -> Option<Envelope> {
        if let Some((stream, sequence)) = stream::stored_at(&message) {
            let epoch = match self
                .state
                .streams
                .epoch(&self.jetstream, &stream, sequence)
                .await
            {
                Ok(epoch) => epoch,
                Err(error) => {
                    // The hub sees the offset missing and reads it from the stream.
                    tracing::warn!(%stream, sequence, %error, "a stream's message dropped: its epoch is unknown");
                    return None;
                }
            };
            let position = Position::new(sequence, epoch);
            return match wire::decode_stored(message.payload, position) {
                Ok(envelope) => Some(envelope),
                Err(error) => self.malformed(error),
            };
        }
        let (envelope, stamp) = match wire::decode(message.payload) {
            Ok(decoded) => decoded,
            Err(error) => return self.malformed(error),
        };
        let Some(stamp) = stamp else {
            // A stream's message is only ever republished by JetStream, with its headers.
            return self.malformed(wire::WireError::Unknown("version", 4));
        };
        if envelope.origin == self.own {
            return None;
        }
        let missed = lock(&self.detector).observe(subject, envelope.origin, stamp, Instant::now());
        if missed > 0 {
            self.state.stats.miss(missed);
        }
        Some(envelope)
    }

    fn malformed(&self, error: wire::WireError) -> Option<Envelope> {
        self.state.stats.count(Counter::Malformed);
        tracing::warn!(%error, "dropped a message that is not an envelope");
        None
    }
}

/// Waits, until `deadline`, while the client has never connected yet: what the hub
/// publishes as it starts waits for the first connection, as it would in the queue of
/// a link being opened, rather than be lost at once.
async fn first_connection(client: &Client, deadline: Instant) {
    while client.connection_state() == Connection::Pending && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Publishes what the hub queued, in order, until the broker is dropped. While the
/// link is down, each publish is counted as lost: the client would hold it only until
/// its own buffer fills, and send it after the outage, late.
async fn publish(
    client: Client,
    config: NatsConfig,
    state: Arc<State>,
    mut publishes: Receiver<Publish>,
) {
    let stats = state.stats.clone();
    let mut streams = stream::Workers::new(jetstream(&client), config, state.clone());
    let first_deadline = Instant::now() + CONNECT_TIMEOUT;
    while let Some(publish) = publishes.recv().await {
        stats.dequeued(1);
        first_connection(&client, first_deadline).await;
        if client.connection_state() != Connection::Connected {
            stats.lose(publish.channel(), "no link to NATS");
            publish.lose("no link to NATS");
            continue;
        }
        match publish {
            Publish::Envelope { channel, payload } => {
                let sent = client.publish(channel.clone(), payload);
                match tokio::time::timeout(PUBLISH_TIMEOUT, sent).await {
                    Ok(Ok(())) => stats.count(Counter::Published),
                    Ok(Err(error)) => stats.lose(&channel, &error.to_string()),
                    Err(_) => stats.lose(&channel, "the NATS client took no publish"),
                }
            }
            Publish::Stream(publish) => streams.send(*publish),
        }
    }
}
