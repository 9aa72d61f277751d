//! Rooms that span machines: a switchboard [`Broker`] over NATS, with streams with
//! history on JetStream.
//!
//! Every hub attached to the same NATS server (or cluster) and prefix forms one
//! backplane: a broadcast to a room reaches the room's members on every hub, a
//! broadcast to all reaches every connection, a send to a connection id reaches the
//! hub that holds it, and the cluster's own traffic (presence, queries and their
//! replies) travels as envelopes to one hub or to every hub.
//!
//! ```no_run
//! use switchboard::hub::{Hub, HubConfig};
//! use switchboard_nats::{NatsBroker, NatsConfig};
//!
//! # fn run() -> Result<(), switchboard_nats::ConnectError> {
//! // Only the configuration is checked here: the hub starts even while NATS is down.
//! let broker = NatsBroker::new(NatsConfig::default().url("nats://127.0.0.1:4222"))?;
//! let stats = broker.stats();
//! let hub = Hub::with_broker(HubConfig::default(), broker);
//! # let _ = (hub, stats);
//! # Ok(())
//! # }
//! ```
//!
//! [`NatsBroker::connect`] does the same but fails at once when NATS cannot be
//! reached, for a process that must not start without it.
//!
//! # Subjects
//!
//! With the default prefix `switchboard`, a hub subscribes to `switchboard.all`, to
//! `switchboard.node.<its node id>` (16 hex digits), and to `switchboard.room.<room>`
//! for each room that has a member on it, from the first member's join to the last
//! member's leave. A room name is any string: it is written as one subject token
//! (ASCII letters, digits and `-` as they are, every other byte as `_` and two hex
//! digits: `lobby.1` is `lobby_2E1`, the empty name `_`), so that `.`, spaces, `*` and
//! `>` in a name neither split nor widen a subject; a token past 200 bytes is cut and
//! ends with `_H` and a hash of the whole (NATS closes a connection that sends a
//! protocol line past 4 KB). Publishing to a room costs one publish, whatever the
//! number of hubs. A hub also sends itself probes on `<prefix>.probe.<its node id>`
//! (see Readiness).
//!
//! # Delivery
//!
//! NATS core delivers at most once, in order per publisher. Envelopes use the wire
//! format of every engine (`switchboard_broker::wire`): each hub numbers its envelopes
//! per subject, and a receiving hub counts every number it never saw in
//! [`BrokerStats::missed`](switchboard_broker::link::BrokerStats::missed) when the publisher's next envelope on that subject arrives:
//! a restart of NATS, a slow consumer NATS disconnected, messages the client dropped
//! because this hub fell behind ([`BrokerStats::slow_consumer`] counts those events),
//! a publisher's shed; logged once per outage with its count. While the link to NATS is down, envelopes cannot be published:
//! each one is counted in [`BrokerStats::lost`](switchboard_broker::link::BrokerStats::lost), as is one the client does not take
//! within 500 ms (its buffer full: NATS does not read). The client reconnects by itself,
//! waiting between attempts with jittered backoff up to [`NatsConfig::max_backoff`],
//! and subscribes again to everything the hub had.
//!
//! # Streams with history, on JetStream
//!
//! A room that keeps history (the hub's `HubConfig::history`) has one JetStream stream
//! of its own, so that its offsets are contiguous: offsets are the stream's sequence
//! numbers. The stream is named `<prefix>_S<room>` (both written as above; a name past
//! 200 bytes is cut and ends with a hash), stores on `<prefix>.stream.<room>`, keeps
//! at most the history's `max_len` messages (`max_messages`, older ones discarded) none
//! older than its `max_age`, in file storage with one replica (`num_replicas: 1`: on a
//! NATS cluster, a room's history lives on one server), and **republishes** every message it
//! stores onto the room's subject with its `Nats-Stream` and `Nats-Sequence` headers
//! (JetStream's RePublish, nats-server 2.9 or newer): storing and numbering are one
//! step in the server, and every hub subscribed to the room, the publishing one
//! included, is handed the room's messages in offset order. The stream is created by
//! the first publish to the room (its limits updated when a hub asks for others); a
//! read makes none. Each stream's publishes go through a task of the stream's own, in
//! the hub's order, so that a slow JetStream holds up neither the other streams nor
//! the core envelopes (the cluster's heartbeats among them). The first publish to a
//! stream on a link waits for JetStream's acknowledgement before the stream's next
//! publishes go: a stream just made may answer that it is not there for a moment, and
//! the message is sent again (within 2 s) without going behind them. A stream
//! JetStream failed to make is not asked for again for 1 s: its publishes are refused
//! meanwhile. A stream message larger than the server's `max_payload` is refused
//! before it is sent (NATS would close the connection on it).
//!
//! A stream's epoch is drawn at random by the hub that makes the stream and written in
//! its description (`switchboard epoch <hex>`; a stream made otherwise takes its
//! creation time): a NATS restarted without its storage, or the stream deleted (`nats
//! stream rm`) and made again by the next publish, gives the room a new epoch, so that
//! no client mistakes the new sequence for the old one. A read of a room that has no
//! stream answers offset 0 in an epoch the hub remembers, and the stream this hub
//! makes for the room takes that epoch; a stream another hub makes has its own, which
//! the reading hub takes as the stream starting anew. A hub learns a stream's epoch
//! from its info, once per stream and again after a reconnect or when the sequence
//! goes back.
//!
//! A stream publish resolves once JetStream acknowledged it, to its sequence; a publish
//! that was not sent (the link down, the queue full, the stream refused) to
//! [`StreamError::Unavailable`] (so does one JetStream answered with an error:
//! limits, size), counted in [`BrokerStats::lost`](switchboard_broker::link::BrokerStats::lost), and one sent whose acknowledgement never came to
//! [`StreamError::Unconfirmed`]: it may be stored, and delivered. Reads
//! ([`Broker::read_stream`]) take the stream's info (epoch, newest sequence) and get
//! the messages after the offset asked for by sequence, at most `max_len` of them,
//! within 2 s.
//!
//! # Bounded memory
//!
//! - Publishes wait for the link in a queue of [`NatsConfig::max_pending_publishes`].
//!   Full, it sheds the new envelope, counted in [`BrokerStats::shed`](switchboard_broker::link::BrokerStats::shed) and
//!   [`BrokerStats::lost`](switchboard_broker::link::BrokerStats::lost) here, and in [`BrokerStats::missed`](switchboard_broker::link::BrokerStats::missed) on the hubs that would
//!   have received it.
//! - A stream's publishes wait for its task in a queue of 64; past that they are shed,
//!   counted in [`BrokerStats::shed`](switchboard_broker::link::BrokerStats::shed) and [`BrokerStats::lost`](switchboard_broker::link::BrokerStats::lost).
//! - Arrivals wait for the hub in a queue of [`NatsConfig::max_pending_deliveries`];
//!   each subscription holds at most as many messages in the client (so the bound is
//!   per subscription: a hub in R rooms may hold up to (R + 3) ×
//!   [`NatsConfig::max_pending_deliveries`] messages in the client while it is
//!   behind, plus the queue). Past that, the
//!   client drops what arrives for the subscription (a slow-consumer event, counted in
//!   [`BrokerStats::slow_consumer`]; the messages themselves in
//!   [`BrokerStats::missed`](switchboard_broker::link::BrokerStats::missed) through the publishers' numbering).
//! - The per-subject numbers are kept in bounded maps on both sides.
//! - A stream holds at most `max_len` messages for at most `max_age`; a read returns at
//!   most `max_len` messages. A room's stream persists after its messages expire
//!   (`max_age` empties it, it does not delete it): delete idle streams with `nats
//!   stream rm` if rooms come and go by the million. Reads make no stream.
//!
//! # Readiness
//!
//! The hub is not ready (`Hub::is_ready`, the `/ready` route answers 503) until the
//! client is connected and NATS has taken every subscription the hub has: the hub
//! sends a probe to its own probe subject and is ready on that connection once the
//! probe came back (NATS handles a connection's messages in order, so every
//! subscription sent before it is in place). It is not ready from the moment the
//! client's connection is not up (taken from the client's state and its count of
//! connections, not from its events, which can be lost) until it is back and a probe
//! came back on it, nor after NATS reported an error (a permission refused) until the
//! next connection. Every 2 s the hub sends a probe again: one that does not come back
//! within 2 s (NATS frozen, its machine gone: the client's own pings, every 2 s, do not
//! go while the hub publishes) makes the hub not ready and the client reconnect.
//!
//! # Versions
//!
//! Envelopes carry a format version (see `switchboard_broker::wire`); a hub drops an
//! envelope of another version and counts it in [`BrokerStats::malformed`](switchboard_broker::link::BrokerStats::malformed), so the
//! hubs of one prefix must run the same version.

mod link;
mod names;
mod stream;

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard_broker::{
    Broker, BrokerMetrics, Envelope, History, Inbox, NodeId, Position, StreamError, StreamFuture,
    StreamRead, Target,
    link::{DEFAULT_MAX_PENDING_DELIVERIES, DEFAULT_MAX_PENDING_PUBLISHES, Outbox, RoomChanges},
    lock,
};
use tokio::{runtime::Handle, sync::mpsc};

/// Where to find NATS and how to name the subjects.
///
/// Start from [`NatsConfig::default`] (a NATS on this machine) and change what you
/// need, one method per setting:
///
/// ```
/// use std::time::Duration;
/// use switchboard_nats::NatsConfig;
///
/// let config = NatsConfig::default()
///     .url("nats://nats.internal:4222")
///     .prefix("chat")
///     .max_backoff(Duration::from_secs(2));
/// assert_eq!(config.prefix, "chat");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsConfig {
    /// The NATS server, as a `nats://` URL (`nats://[user:password@]host[:port]`;
    /// `tls://` for TLS), or several separated by commas (a cluster).
    ///
    /// Default `nats://127.0.0.1:4222`: NATS's own port on this machine.
    pub url: String,
    /// Subjects are named `prefix.…` and streams `<prefix>_S…`: hubs on different
    /// prefixes do not hear each other. Tokens separated by `.`, without spaces or
    /// wildcards.
    ///
    /// Default `switchboard`.
    pub prefix: String,
    /// The longest wait between reconnection attempts: waits grow from 50 ms up to
    /// this, each drawn at random between 50 ms and three times the previous one
    /// (decorrelated jitter), so that hubs that lost NATS together do not come back
    /// together.
    ///
    /// Default 5 s.
    pub max_backoff: Duration,
    /// The most publishes waiting for the link to NATS: past it, the new publish is
    /// shed (drop newest) and counted in [`BrokerStats::shed`](switchboard_broker::link::BrokerStats::shed) and
    /// [`BrokerStats::lost`](switchboard_broker::link::BrokerStats::lost). 0 is taken as 1.
    ///
    /// Default 1,024: room for a burst, and a bound on what a stalled link holds.
    pub max_pending_publishes: usize,
    /// The most envelopes from other hubs waiting for this hub to take them, and the
    /// most messages each subscription holds in the client before it drops what
    /// follows (a slow consumer: counted, see [`BrokerStats::slow_consumer`]). 0 is
    /// taken as 1.
    ///
    /// Default 1,024.
    pub max_pending_deliveries: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            prefix: "switchboard".to_owned(),
            max_backoff: Duration::from_secs(5),
            max_pending_publishes: DEFAULT_MAX_PENDING_PUBLISHES,
            max_pending_deliveries: DEFAULT_MAX_PENDING_DELIVERIES,
        }
    }
}

impl NatsConfig {
    /// Sets [`NatsConfig::url`].
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Sets [`NatsConfig::prefix`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`NatsConfig::max_backoff`].
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// Sets [`NatsConfig::max_pending_publishes`]; the broker takes 0 as 1.
    pub fn max_pending_publishes(mut self, max: usize) -> Self {
        self.max_pending_publishes = max;
        self
    }

    /// Sets [`NatsConfig::max_pending_deliveries`]; the broker takes 0 as 1.
    pub fn max_pending_deliveries(mut self, max: usize) -> Self {
        self.max_pending_deliveries = max;
        self
    }

    /// The servers of [`NatsConfig::url`], each checked.
    fn servers(&self) -> Result<Vec<String>, std::io::Error> {
        let servers: Vec<String> = self
            .url
            .split(',')
            .map(|url| url.trim().to_owned())
            .collect();
        for server in &servers {
            server.parse::<async_nats::ServerAddr>()?;
        }
        Ok(servers)
    }

    fn subject_all(&self) -> String {
        format!("{}.all", self.prefix)
    }

    fn subject_node(&self, node: NodeId) -> String {
        format!("{}.node.{node}", self.prefix)
    }

    /// Where a hub sends itself the probes that confirm its subscriptions.
    fn subject_probe(&self, node: NodeId) -> String {
        format!("{}.probe.{node}", self.prefix)
    }

    /// The subject `room`'s envelopes travel on: `<prefix>.room.<room as one token>`
    /// (see the crate's Subjects section); for tools that watch it.
    pub fn room_subject(&self, room: &str) -> String {
        format!("{}.room.{}", self.prefix, names::token(room))
    }

    /// Where a room's stream stores its messages (republished onto the room's subject).
    fn subject_stored(&self, room: &str) -> String {
        format!("{}.stream.{}", self.prefix, names::token(room))
    }

    /// The subject an envelope is published on.
    fn subject_of(&self, envelope: &Envelope) -> String {
        match &envelope.target {
            Target::All | Target::Nodes => self.subject_all(),
            Target::Room(room) => self.room_subject(room),
            Target::Connection(id) => self.subject_node(id.node()),
            Target::Node(node) => self.subject_node(*node),
        }
    }
}

/// Why a [`NatsBroker`] could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The prefix cannot start subjects (empty tokens, spaces, wildcards).
    #[error("invalid NATS subject prefix {0:?}")]
    InvalidPrefix(String),
    /// [`NatsConfig::url`] is not a NATS server's URL (or a list of them).
    #[error("invalid NATS URL")]
    InvalidUrl(#[source] std::io::Error),
    /// NATS could not be reached ([`NatsBroker::connect`]).
    #[error("could not connect to NATS: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What the publishing task sends, in the order the hub asked: an envelope (on its
/// subject) is one core publish, a stream's message a JetStream publish, whose
/// acknowledgement is the position.
type Publish = switchboard_broker::link::Publish<stream::StreamPublish>;

/// A hub's attachment to NATS. Give it to `switchboard::hub::Hub::with_broker`.
#[derive(Debug)]
pub struct NatsBroker {
    config: NatsConfig,
    /// Bounded by [`NatsConfig::max_pending_publishes`].
    outbox: Outbox<stream::StreamPublish>,
    rooms: Arc<RoomChanges>,
    /// Until the hub starts the broker: the client [`NatsBroker::connect`] made, if
    /// any, and the publishes' receiving end.
    pending: Mutex<Option<(Option<async_nats::Client>, mpsc::Receiver<Publish>)>>,
    runtime: Option<Handle>,
    link: Arc<link::State>,
    /// The client, once the hub started the broker: reads go through it.
    client: Arc<OnceLock<async_nats::Client>>,
    /// The node id of the hub that started the broker.
    node: Arc<OnceLock<NodeId>>,
}

impl NatsBroker {
    /// A broker that connects to NATS once a hub takes it, and keeps trying while NATS
    /// is down: the hub starts at once, serves its own members and is not ready until
    /// the link is up with its subscriptions. Fails only for a prefix that cannot make
    /// subjects. Call from inside a tokio runtime: the link's tasks run on it.
    pub fn new(config: NatsConfig) -> Result<Self, ConnectError> {
        if !names::valid_prefix(&config.prefix) {
            return Err(ConnectError::InvalidPrefix(config.prefix));
        }
        config.servers().map_err(ConnectError::InvalidUrl)?;
        let link = Arc::new(link::State::default());
        let (outbox, receiver) =
            Outbox::new(config.max_pending_publishes, link.stats.clone(), "NATS");
        Ok(Self {
            config,
            outbox,
            rooms: Arc::default(),
            pending: Mutex::new(Some((None, receiver))),
            runtime: Handle::try_current().ok(),
            link,
            client: Arc::default(),
            node: Arc::default(),
        })
    }

    /// Like [`NatsBroker::new`], but connects first and fails at once if NATS cannot
    /// be reached. After that, the client reconnects as [`NatsBroker::new`]'s does.
    pub async fn connect(config: NatsConfig) -> Result<Self, ConnectError> {
        let broker = Self::new(config)?;
        let client = link::options(&broker.config, &broker.link)
            .connect(broker.config.servers().map_err(ConnectError::InvalidUrl)?)
            .await
            .map_err(|error| ConnectError::Connect(Box::new(error)))?;
        if let Some((first, _)) = lock(&broker.pending).as_mut() {
            *first = Some(client);
        }
        Ok(broker)
    }

    /// Counters of this broker, readable after the hub has taken it.
    pub fn stats(&self) -> BrokerStats {
        BrokerStats {
            shared: self.link.stats.stats(),
            slow_consumer: self.link.slow_consumer.clone(),
        }
    }

    /// A handle on this broker's link, usable after the hub has taken the broker: to
    /// cut it (a test's blip of one hub, an operator moving hubs to the server now
    /// behind the same address).
    pub fn link(&self) -> LinkHandle {
        LinkHandle {
            client: self.client.clone(),
            node: self.node.clone(),
            state: self.link.clone(),
        }
    }
}

impl Broker for NatsBroker {
    fn start(&self, inbox: Inbox) {
        let Some((first, publishes)) = lock(&self.pending).take() else {
            tracing::error!("NatsBroker started twice; the second hub is not attached");
            return;
        };
        let Some(runtime) = self.runtime.clone().or_else(|| Handle::try_current().ok()) else {
            tracing::error!("NatsBroker made and started outside a tokio runtime; not attached");
            return;
        };
        tracing::info!(node = %inbox.node(), "hub attached to NATS");
        let _ = self.node.set(inbox.node());
        let task = link::Task {
            config: self.config.clone(),
            inbox,
            changes: self.rooms.clone(),
            state: self.link.clone(),
            client: self.client.clone(),
        };
        runtime.spawn(link::run(task, first, publishes));
    }

    fn publish(&self, envelope: Envelope) {
        self.outbox
            .publish(self.config.subject_of(&envelope), &envelope);
    }

    /// Queues the JetStream publish behind the publishes already waiting: counted, shed
    /// and lost as they are (see the crate's Streams section).
    fn publish_stream(&self, envelope: Envelope, history: History) -> StreamFuture<Position> {
        let (stats, subject) = (self.link.stats.clone(), self.config.subject_of(&envelope));
        let made = stream::StreamPublish::new(&self.config, &envelope, history);
        let dropped = move || {
            // Dropped in a queue as the link ended: never sent.
            let why = "the link task has ended";
            stats.lose(&subject, why);
            StreamError::Unavailable(why.to_owned())
        };
        self.outbox.publish_stream(made, dropped)
    }

    /// Reads the room's JetStream stream by sequence, within 2 s.
    fn read_stream(&self, room: &str, after: u64, history: History) -> StreamFuture<StreamRead> {
        let Some(client) = self.client.get().cloned() else {
            let why = "not connected to NATS yet".to_owned();
            return Box::pin(std::future::ready(Err(StreamError::Unavailable(why))));
        };
        let read = stream::Read {
            jetstream: link::jetstream(&client),
            config: self.config.clone(),
            room: room.to_owned(),
            history,
            state: self.link.clone(),
        };
        Box::pin(read.run(after))
    }

    fn subscribe(&self, room: &str) {
        self.rooms.want(room, true);
    }

    fn unsubscribe(&self, room: &str) {
        self.rooms.want(room, false);
    }

    /// `false` until the client is connected and NATS has taken the subscriptions to
    /// every room of the hub, its node subject and `all`, and again from the moment
    /// the link fails until it is back with them.
    fn is_ready(&self) -> bool {
        self.link.is_ready(self.client.get())
    }

    fn metrics(&self) -> Option<BrokerMetrics> {
        Some(self.link.stats.stats().metrics(self.is_ready()))
    }
}

/// A handle on a [`NatsBroker`]'s link ([`NatsBroker::link`]); cheap to clone.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    client: Arc<OnceLock<async_nats::Client>>,
    node: Arc<OnceLock<NodeId>>,
    state: Arc<link::State>,
}

impl LinkHandle {
    /// The node id of the hub that took the broker; `None` before.
    pub fn node(&self) -> Option<NodeId> {
        self.node.get().copied()
    }

    /// Whether the broker is ready now (`Broker::is_ready`).
    pub fn is_ready(&self) -> bool {
        self.state.is_ready(self.client.get())
    }

    /// Closes the connection to NATS and returns once the link is down (not ready) or
    /// already back: the client reconnects by itself, with its backoff, and subscribes
    /// again; what was published for this hub meanwhile is missed, and counted.
    /// Returns `false` when there is no link to cut (the hub has not taken the broker,
    /// or it is gone).
    pub async fn force_reconnect(&self) -> bool {
        let Some(client) = self.client.get() else {
            return false;
        };
        let connects = client.statistics();
        let before = connects.connects.load(Relaxed);
        if client.force_reconnect().await.is_err() {
            return false;
        }
        // The client may take the command late, or be back before we look.
        let deadline = Instant::now() + link::REQUEST_TIMEOUT;
        while client.connection_state() == async_nats::connection::State::Connected
            && connects.connects.load(Relaxed) == before
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}

/// Counters of a [`NatsBroker`]; a cheap handle, shared with the broker. Those every
/// networked engine keeps ([`switchboard_broker::link::BrokerStats`]: published,
/// received, lost, shed, missed, unconfirmed, malformed, reconnects, pending
/// publishes) are its methods through `Deref`; NATS adds
/// [`BrokerStats::slow_consumer`].
///
/// In NATS's terms: published counts the envelopes handed to the NATS client (core
/// NATS confirms nothing) and the stream messages JetStream acknowledged; lost
/// includes a stream's publish JetStream refused; missed, the gaps a restart of NATS,
/// a slow consumer or a publisher's shed left; reconnects, the client's.
#[derive(Debug, Clone)]
pub struct BrokerStats {
    shared: switchboard_broker::link::BrokerStats,
    slow_consumer: Arc<AtomicU64>,
}

impl BrokerStats {
    /// Slow-consumer events: times the client dropped a message for a subscription
    /// whose [`NatsConfig::max_pending_deliveries`] were full. The messages dropped are
    /// in `missed` (through the gaps they leave), so they are not counted twice; a
    /// stream's are filled by the hub from the stream.
    pub fn slow_consumer(&self) -> u64 {
        self.slow_consumer.load(Relaxed)
    }
}

impl std::ops::Deref for BrokerStats {
    type Target = switchboard_broker::link::BrokerStats;

    fn deref(&self) -> &Self::Target {
        &self.shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builder_method_sets_its_field() {
        let config = NatsConfig::default()
            .url("nats://nats.example:4333")
            .prefix("chat")
            .max_backoff(Duration::from_secs(1))
            .max_pending_publishes(2)
            .max_pending_deliveries(3);
        // Exhaustive: a new field does not compile here until it has a method and a check.
        let NatsConfig {
            url,
            prefix,
            max_backoff,
            max_pending_publishes,
            max_pending_deliveries,
        } = config;
        assert_eq!(url, "nats://nats.example:4333");
        assert_eq!(prefix, "chat");
        assert_eq!(max_backoff, Duration::from_secs(1));
        assert_eq!(max_pending_publishes, 2);
        assert_eq!(max_pending_deliveries, 3);
    }

    #[test]
    fn a_url_that_is_not_nats_is_refused_and_a_list_is_taken() {
        for bad in [
            "http://127.0.0.1:4222",
            "nats://a:b:c",
            "nats://127.0.0.1:4222,redis://x",
        ] {
            let refused = NatsBroker::new(NatsConfig::default().url(bad));
            assert!(matches!(refused, Err(ConnectError::InvalidUrl(_))), "{bad}");
        }
        let list = NatsConfig::default().url("nats://a:4222, tls://b:4223,c");
        assert_eq!(
            list.servers().unwrap(),
            ["nats://a:4222", "tls://b:4223", "c"]
        );
    }

    #[test]
    fn a_prefix_that_cannot_make_subjects_is_refused() {
        let refused = NatsBroker::new(NatsConfig::default().prefix("a b"));
        assert!(matches!(refused, Err(ConnectError::InvalidPrefix(_))));
    }

    #[test]
    fn subjects_follow_the_targets() {
        let config = NatsConfig::default().prefix("p");
        let node = NodeId::from_bits(0xab);
        let envelope = |target| Envelope {
            origin: node,
            target,
            except: None,
            message: switchboard_proto::Message::text("x"),
            position: None,
        };
        assert_eq!(config.subject_of(&envelope(Target::All)), "p.all");
        assert_eq!(config.subject_of(&envelope(Target::Nodes)), "p.all");
        assert_eq!(
            config.subject_of(&envelope(Target::Node(node))),
            "p.node.00000000000000ab"
        );
        assert_eq!(
            config.subject_of(&envelope(Target::Room("a.b".into()))),
            "p.room.a_2Eb"
        );
        assert_eq!(config.subject_stored("a.b"), "p.stream.a_2Eb");
    }
}
