//! Rooms that span machines: a switchboard [`Broker`] over Redis pub/sub.
//!
//! Every hub attached to the same Redis server and prefix forms one backplane: a
//! broadcast to a room reaches the room's members on every hub, a broadcast to all
//! reaches every connection, and a send to a connection id reaches the hub that holds
//! it. Channel topics are hub rooms, so a broadcast on a topic reaches its subscribers
//! on every hub too (presence is still per hub).
//!
//! ```no_run
//! use switchboard::hub::{Hub, HubConfig};
//! use switchboard_redis::{RedisBroker, RedisConfig};
//!
//! # async fn run() -> Result<(), switchboard_redis::ConnectError> {
//! // Only the URL is checked here: the hub starts even while Redis is down.
//! let broker = RedisBroker::new(RedisConfig::default().url("redis://127.0.0.1:6379/"))?;
//! let stats = broker.stats();
//! let hub = Hub::with_broker(HubConfig::default(), broker);
//! # let _ = (hub, stats);
//! # Ok(())
//! # }
//! ```
//!
//! [`RedisBroker::connect`] does the same but fails at once when Redis cannot be
//! reached, for a process that must not start without it.
//!
//! # TLS
//!
//! A `rediss://` URL connects over TLS (rustls, on the `ring` provider), every
//! connection of the broker: its publisher, its subscriber and its reads. The server's
//! certificate must chain to Mozilla's roots (webpki-roots, compiled in: the same on
//! every machine), or, for a deployment with a private CA, to the certificates given
//! to [`RedisConfig::root_certificates`] (PEM), which then are the only roots trusted.
//! The certificate must name the host of the URL (a DNS name, or an IP address for a
//! URL that gives one).
//!
//! ```no_run
//! use switchboard::hub::{Hub, HubConfig};
//! use switchboard_redis::{RedisBroker, RedisConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let ca = std::fs::read("/etc/redis/ca.pem")?;
//! let config = RedisConfig::default()
//!     .url("rediss://:password@redis.internal:6380/")
//!     .root_certificates(ca);
//! let hub = Hub::with_broker(HubConfig::default(), RedisBroker::connect(config).await?);
//! # let _ = hub;
//! # Ok(())
//! # }
//! ```
//!
//! A certificate that does not verify is a connection that fails: the hub is not
//! ready, logs why (`invalid peer certificate: UnknownIssuer`, say) and tries again
//! with backoff, as for a Redis that is down; [`RedisBroker::connect`] returns the
//! error. Root certificates that are not PEM certificates are refused at once
//! ([`ConnectError::InvalidCertificates`]), and so are root certificates for a
//! deployment without any `rediss://` URL and a URL that asks not to check the
//! certificate (`rediss://…/#insecure`) ([`ConnectError::Unsupported`]).
//!
//! The hub presents no certificate of its own: mutual TLS is not supported, and the
//! server must run with `tls-auth-clients no` (or `optional`); a server that asks for
//! one refuses the connection, and the hub logs the TLS alert it sent.
//!
//! TLS runs on rustls with its `ring` provider. If the process has no default rustls
//! provider when a TLS broker is made, ring is installed as the default: redis-rs
//! builds its TLS settings from the default, and rustls panics when two providers
//! (ring and aws-lc-rs, as a dependency such as reqwest may bring) are compiled in
//! and none is chosen. An application that installs its own default first keeps it.
//!
//! # Sentinel
//!
//! With [`RedisConfig::sentinel`], the hub asks every Sentinel at once which server
//! is the master of the service (`SENTINEL get-master-addr-by-name`, each within half
//! a second), at every connection and reconnection. The address named by more than
//! half of the Sentinels that answered is the master; a tie, or no majority, fails
//! that attempt (logged, with what each Sentinel said), and the hub tries again with
//! backoff: a Sentinel cut off from the others, still naming the old master, is
//! outvoted rather than allowed to split the hubs between two masters. The hub then
//! connects to the master with the scheme, credentials and database of
//! [`RedisConfig::url`] (whose host and port are not used), once it says it is the
//! master (`HELLO`, whose answer has the role: a Sentinel may name a replica not
//! promoted yet). The Sentinels' URLs carry their own scheme and credentials;
//! [`RedisConfig::root_certificates`] serve their `rediss://` too. Over TLS, the
//! master's certificate must name the address the Sentinels announce: an IP address
//! (the replica's `replica-announce-ip`, or the one the master sees it from), unless
//! the Sentinels run with `resolve-hostnames yes` and `announce-hostnames yes`.
//!
//! The role is asked with `HELLO` (no arguments; Redis 6.2 or later), which every ACL
//! user may run (`@fast @connection`), rather than `ROLE` (`@dangerous`).
//!
//! ```no_run
//! use switchboard_redis::{RedisBroker, RedisConfig};
//!
//! # fn run() -> Result<(), switchboard_redis::ConnectError> {
//! let sentinels = ["redis://10.0.0.1:26379/", "redis://10.0.0.2:26379/", "redis://10.0.0.3:26379/"];
//! let config = RedisConfig::default()
//!     .url("redis://:password@redis/0")
//!     .sentinel("mymaster", sentinels);
//! let broker = RedisBroker::new(config)?;
//! # let _ = broker;
//! # Ok(())
//! # }
//! ```
//!
//! A failover is followed: a master that dies ends the link, and the reconnection
//! finds the new one through the Sentinels (with the usual backoff, while they elect
//! it); a Sentinel's failover of a live master (`SENTINEL FAILOVER`, say) closes its
//! clients' connections (`CLIENT KILL`), which ends the link the same way. A master
//! demoted behind the Sentinels' back (`REPLICAOF` by an operator, the other side of
//! a split) keeps its clients connected, so the link asks its server for its role
//! every second (a slow answer is waited for up to two seconds) and leaves it when
//! it is no longer the master, or at once when a stream's publish meets `READONLY`. The failover is an outage like any
//! other: the hub is not ready until it has subscribed again on the new master,
//! publishes meanwhile are lost and counted, other hubs count what they missed, and
//! rooms with history are filled from the new master's streams. Its replication is
//! asynchronous: what the old master took in its last moments, and had not passed on,
//! is gone, and a stream's offsets taken then may be given again to new messages.
//!
//! # Channels
//!
//! With the default prefix `switchboard`, a hub subscribes to `switchboard:all`, to
//! `switchboard:node:<its node id>` (16 hex digits, as `NodeId` displays), and to
//! `switchboard:room:<name>` for each room that has a member on it, from the first
//! member's join to the last member's leave.
//! Publishing to a room costs one `PUBLISH`, whatever the number of hubs. On a Redis
//! Cluster, channels are sharded (see Redis Cluster below).
//!
//! # Delivery
//!
//! Redis pub/sub delivers at most once, in order per publishing hub. A hub that joins a
//! room starts receiving the room's messages once Redis has confirmed the subscription
//! (a round trip after the join). While the link to Redis is down, envelopes cannot be
//! published: each one is counted in [`BrokerStats::lost`], and the hub reconnects
//! with jittered backoff (so that hubs do not all come back at the same instant),
//! subscribing again to everything it had in batches (one `SUBSCRIBE` per thousand
//! channels, all in one write). Room subscriptions are never dropped.
//!
//! Nothing is lost silently: each hub numbers its envelopes per channel, and a
//! receiving hub counts every number it never saw in [`BrokerStats::missed`] (served as
//! `switchboard_broker_missed_total`), when the publisher's next envelope on that
//! channel arrives: a subscription Redis dropped (`CLIENT KILL`, its output-buffer
//! limit, a restart) or a publisher's shed is counted on the hub that missed it, and
//! logged once per outage with its count.
//!
//! Rooms that keep history lose nothing of this: their messages are numbered by Redis
//! and a hub fills any gap from the stream before it delivers newer ones (below).
//!
//! # Streams with history
//!
//! A room that keeps history (the hub's `HubConfig::history`) is published through
//! [`Broker::publish_stream`]: one Lua script (loaded once per link, run by
//! `EVALSHA`, loaded again if Redis answers `NOSCRIPT`, and loaded at the head of a
//! pipeline where an envelope follows a stream publish, so that a `NOSCRIPT` retry
//! does not put the stream publish after it) does, in one atomic step,
//! what every hub then relies on:
//!
//! - takes the stream's next offset (`HINCRBY` on the stream's meta, a hash that also
//!   holds its epoch), and creates the epoch if the stream has none, from a random one
//!   the publishing hub proposes: a Redis that lost its data (a restart without
//!   persistence, `FLUSHALL`, an evicted key) therefore gives the stream a new epoch,
//!   and what an old epoch left behind is deleted with it;
//! - keeps the message in a Redis stream under the id `<offset>-<Redis time in ms>`
//!   (ordered by offset, and dated for the age limit, never before the newest entry
//!   should Redis's clock step back, with nothing more per entry than the payload under
//!   a field `t` or `b` for its kind), trimmed to the history's `max_len` (capped at
//!   2^32) and, counting from Redis's clock, to its `max_age` (capped at ten years);
//! - sets the keys' expiry, only ever extending it: the stream's to `max_age` (an idle
//!   stream holds nothing young enough to read; a day without `max_age`, so that even
//!   `History::no_max_age` forgets a stream idle for a day), the meta's a day longer,
//!   so that a client that had seen everything of a room that went quiet still
//!   recovers (nothing missed) instead of being told to reload for a new epoch (a meta
//!   only read, never published to, lives a minute past its last read);
//! - publishes the envelope, with its position, on the room's channel, so that every
//!   hub subscribed to the room, the publishing one included, is handed the room's
//!   messages in offset order.
//!
//! The two keys share the room's channel name as a hash tag,
//! `{switchboard:room:<name>}:s` and `{switchboard:room:<name>}:m`, so that a Redis
//! Cluster keeps them on one shard, where the script runs.
//!
//! Stream publishes wait in the same queue, and go out in the same pipelines and in the
//! same order, as the others (the one exception: a `SCRIPT FLUSH` that Redis runs in
//! the middle of a pipeline puts the stream publishes after it behind the envelopes): they are shed, lost and counted the same way, and the
//! future of a publish lost resolves to [`StreamError::Unavailable`] (not published).
//! A publish sent when the link failed before its answer came resolves to
//! [`StreamError::Unconfirmed`]: the script may have run, and the message gone to
//! every hub, so an application that publishes it again may publish it twice. Reads
//! ([`Broker::read_stream`]) run a second script, atomically with the epoch and the
//! newest offset, on a connection of their own (neither the subscriber, nor the
//! publisher, which a burst of reads would hold up), waiting at most 2 s.
//!
//! Pub/sub still delivers a stream's messages at most once; what makes them gapless is
//! the offset: a hub that sees one skipped (its subscription dropped, a blip) reads the
//! missing ones from the stream before it delivers newer ones. A stream's envelope
//! therefore carries no publisher's number and is not counted in
//! [`BrokerStats::missed`].
//!
//! Streams need Redis 5.0 or newer (Redis Streams, and scripts replicated by their
//! effects, so that one may read Redis's clock).
//!
//! # Bounded memory
//!
//! - At most [`RedisConfig::max_pending_publishes`] publishes are pending: queued
//!   for the link, queued for their master's pipeline, or on their way unanswered.
//!   Past it, the broker sheds the new envelope (drop newest: what waits keeps its
//!   order), counted in [`BrokerStats::shed`] and [`BrokerStats::lost`] on this hub,
//!   and in [`BrokerStats::missed`] on the hubs that would have received it.
//! - Arrivals wait for the hub in a queue of [`RedisConfig::max_pending_deliveries`],
//!   fanned out by a task of their own, not by the one that talks to Redis. Full, the
//!   broker stops reading from Redis (it reads its own pub/sub connection, at the
//!   hub's pace): Redis holds what follows up to its `client-output-buffer-limit
//!   pubsub`, then closes the connection, and the hub counts what it missed.
//! - The per-channel numbers are kept in bounded maps on both sides, which forget
//!   channels a hub left or that stayed idle (a forgotten counter restarts under a new
//!   epoch, which receivers do not mistake for a gap).
//! - A stream holds at most its history's `max_len` messages, none older than its
//!   `max_age`, and its keys expire when it stays idle (see above); a read returns at
//!   most `max_len` messages.
//!
//! # Readiness
//!
//! The hub is not ready (`Hub::is_ready`, and the `/ready` route answers 503) until
//! Redis has confirmed every subscription the hub has, at start (Redis may be down
//! then: the hub serves its own members meanwhile) and from the moment the link fails
//! until the new link has subscribed again: while it is down, a hub would accept
//! clients and deliver them nothing that other hubs publish. On a Redis Cluster, the
//! same holds for each master: the hub is not ready while any one is down or has
//! subscriptions unconfirmed, even though the others deliver.
//!
//! A subscriber connection is sent a `PING` every second, and one that reads nothing
//! for 3 s (unless it waits for the hub) is taken as lost, as is a pipeline of
//! publishes unanswered for 2 s: a frozen or cut-off Redis ends the link within
//! seconds, its losses counted, rather than hold it silent.
//!
//! # Redis Cluster
//!
//! [`RedisConfig::cluster`] (some of the cluster's node URLs; the others are found
//! from them) spreads the rooms over the cluster's shards with sharded pub/sub
//! (`SSUBSCRIBE`/`SPUBLISH`, Redis 7.0 or newer): each channel lives on the master
//! that serves its slot, so the pub/sub traffic grows with the number of masters
//! rather than be copied to every node as `PUBLISH` is in a cluster.
//!
//! - A room's channel is `{switchboard:room:<name>}`: the hash tag of its stream's
//!   keys (`{switchboard:room:<name>}:s`, `:m`), so that the channel and the keys
//!   hash to the same slot whatever braces the name has, and the publish script
//!   publishes on the shard it runs on. `switchboard:all` and the node channels live
//!   on their own slots' shards. A prefix with `{` or `}` is refused on a cluster.
//! - The nodes are reached as the first node URL says: its scheme (`rediss://`: TLS,
//!   with [`RedisConfig::root_certificates`]) and credentials.
//! - A hub keeps a subscriber connection and a publisher connection per master (a
//!   shard), from the map of the slots that most of the known nodes give
//!   (`CLUSTER SLOTS`, asked of the seeds and the last map's nodes at once). Publishes
//!   are sent in one pipeline per master, each master's on its own, in the hub's order
//!   on each master (so on each channel); subscriptions go, grouped per slot, to the
//!   channel's master. Stream reads go to the stream's master, on a connection per
//!   master, following `MOVED` and `ASK`. A node URL with a database other than 0 is
//!   refused ([`ConnectError::Unsupported`]).
//! - A shard fails alone: a master that dies, freezes or is cut off (its connection
//!   breaks, a pipeline goes unanswered for 2 s, its subscriber answers no `PING` for
//!   3 s) fails its own connections, and the other shards keep delivering. Its
//!   publishes on their way count as lost (streams': unconfirmed), those for its slots
//!   while it is down are lost at once; the map is asked for again with backoff until
//!   its slots have a live master, whose channels are then subscribed. The hub is not
//!   ready while any master is down or any subscription unconfirmed.
//! - A slot that moves (Redis unsubscribes its channels with a `sunsubscribe` of its
//!   own, or answers a publish with `MOVED`) makes the hub ask for the map and
//!   subscribe those channels alone on their new master. A publish answered with
//!   `MOVED` or `ASK` is published again where Redis says; `TRYAGAIN` and
//!   `CLUSTERDOWN` are retried a few times within 350 ms, then counted as lost. A
//!   stream publish `ASK`ed to a slot's next master is sent again on the old one,
//!   where the room's subscribers stay until the move ends. What is lost is counted
//!   as on a single Redis ([`BrokerStats::lost`], [`BrokerStats::missed`]), and stream
//!   rooms are filled from their streams.
//! - A failover loses what the master acknowledged and had not replicated yet (Redis
//!   replicates asynchronously): a stream may lose its newest messages there, and its
//!   next offsets then reuse theirs.
//!
//! # Versions
//!
//! Envelopes start with a format version: 3 since they carry their publisher's
//! per-channel number (2 had 64-bit node ids, without numbers); a stream's messages are
//! version 4, with their position where version 3 has the number. A hub drops an
//! envelope of another version and counts it in
//! [`BrokerStats::malformed`], so the hubs of one prefix must run the same version:
//! upgrade them together, or bring the new ones up on a new prefix.

mod cluster;
mod codec;
mod connect;
mod error;
mod link;
mod pubsub;
mod reader;
mod shard;
mod stream;

pub use error::ConnectError;
pub use switchboard_broker::link::BrokerStats;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};
use switchboard_broker::{
    Broker, BrokerMetrics, Envelope, History, Inbox, NodeId, Position, StreamError, StreamFuture,
    StreamRead, Target,
    link::{
        Counters, DEFAULT_MAX_PENDING_DELIVERIES, DEFAULT_MAX_PENDING_PUBLISHES, Outbox,
        RoomChanges,
    },
    lock,
};
use tokio::{runtime::Handle, sync::mpsc};

/// Where to find Redis and how to name the channels.
///
/// Start from [`RedisConfig::default`] (a Redis on this machine) and change what you
/// need, one method per setting:
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard::hub::{Hub, HubConfig};
/// use switchboard_redis::{RedisBroker, RedisConfig};
///
/// # async fn run() -> Result<(), switchboard_redis::ConnectError> {
/// let config = RedisConfig::default()
///     .url("redis://redis.internal:6379/")
///     .prefix("chat")
///     .max_backoff(Duration::from_secs(2));
/// let hub = Hub::with_broker(HubConfig::default(), RedisBroker::new(config)?);
/// # let _ = hub;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Which deployment the hubs share: one server at [`RedisConfig::url`] (the
    /// default), a master found through Sentinels, or a Redis Cluster.
    pub deployment: Deployment,
    /// Root certificates (PEM) that a TLS server's certificate must chain to, for
    /// `rediss://` URLs (the server's, the Sentinels'): a deployment with a private
    /// CA; these are then the only roots trusted. `None` (the default): Mozilla's
    /// roots, compiled in (webpki-roots), the same on every machine. See the crate's
    /// TLS section.
    pub root_certificates: Option<Vec<u8>>,
    /// The Redis server, as a `redis://` URL (`redis://[:password@]host[:port][/db]`),
    /// or `rediss://` for TLS. With Sentinels, its scheme, credentials and database
    /// only: the master's host and port come from the Sentinels.
    ///
    /// Default `redis://127.0.0.1:6379/`: Redis's own port on this machine, where a
    /// development Redis listens; a deployment names its shared Redis here.
    pub url: String,
    /// Channels are named `prefix:…`: hubs on different prefixes do not hear each
    /// other, which lets several applications share one Redis.
    ///
    /// Default `switchboard`, the name of the framework, which other applications'
    /// channels are unlikely to start with.
    pub prefix: String,
    /// The longest wait between reconnection attempts: waits grow from 50 ms up to
    /// this, each drawn at random between 50 ms and three times the previous one
    /// (decorrelated jitter), so that hubs that lost Redis together do not come back
    /// together.
    ///
    /// Default 5 s: a restarted Redis is found again within seconds, and hubs that lost
    /// it do not hammer it meanwhile.
    pub max_backoff: Duration,
    /// The most publishes pending: waiting for the link to Redis, waiting for their
    /// master's next pipeline, or sent and not answered yet (all counted in
    /// [`BrokerStats::pending_publishes`]). Past it, the new publish is shed (drop
    /// newest) and counted in [`BrokerStats::shed`] and
    /// [`BrokerStats::lost`] here, and in [`BrokerStats::missed`] on the hubs that
    /// would have received it. Room subscriptions do not count: they are never
    /// dropped. 0 is taken as 1.
    ///
    /// Default 1,024: four full pipelines, room for a burst while Redis answers a
    /// round trip, and a bound on what a stalled link holds (this many envelopes, each
    /// at most the hub's message size).
    pub max_pending_publishes: usize,
    /// The most envelopes from other hubs waiting for this hub to take them. When it
    /// is full the broker stops reading from Redis, which then holds what follows in
    /// its output buffer for this hub and, past its `client-output-buffer-limit
    /// pubsub` (32 MB, or 8 MB for a minute, by default), closes the connection: the
    /// hub reconnects and counts what it missed in [`BrokerStats::missed`]. 0 is taken
    /// as 1.
    ///
    /// Default 1,024: room for a burst while the hub fans the previous envelopes out,
    /// and a bound (this many envelopes) on what a slow hub holds.
    pub max_pending_deliveries: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            deployment: Deployment::Single,
            root_certificates: None,
            url: "redis://127.0.0.1:6379/".to_owned(),
            prefix: "switchboard".to_owned(),
            max_backoff: Duration::from_secs(5),
            max_pending_publishes: DEFAULT_MAX_PENDING_PUBLISHES,
            max_pending_deliveries: DEFAULT_MAX_PENDING_DELIVERIES,
        }
    }
}

impl RedisConfig {
    /// Sets [`RedisConfig::url`].
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// A master watched by Sentinels: sets [`RedisConfig::deployment`] to
    /// [`Deployment::Sentinel`].
    pub fn sentinel(
        mut self,
        service: impl Into<String>,
        sentinels: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.deployment = Deployment::Sentinel {
            service: service.into(),
            sentinels: sentinels.into_iter().map(Into::into).collect(),
        };
        self
    }

    /// A Redis Cluster: sets [`RedisConfig::deployment`] to [`Deployment::Cluster`].
    pub fn cluster(mut self, nodes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.deployment = Deployment::Cluster {
            nodes: nodes.into_iter().map(Into::into).collect(),
        };
        self
    }

    /// Sets [`RedisConfig::root_certificates`] (PEM, one certificate or several).
    pub fn root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// Sets [`RedisConfig::prefix`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`RedisConfig::max_backoff`].
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// Sets [`RedisConfig::max_pending_publishes`]; the broker takes 0 as 1.
    pub fn max_pending_publishes(mut self, max: usize) -> Self {
        self.max_pending_publishes = max;
        self
    }

    /// Sets [`RedisConfig::max_pending_deliveries`]; the broker takes 0 as 1.
    pub fn max_pending_deliveries(mut self, max: usize) -> Self {
        self.max_pending_deliveries = max;
        self
    }

    fn channel_all(&self) -> String {
        format!("{}:all", self.prefix)
    }

    fn channel_node(&self, node: NodeId) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// The channel `room`'s envelopes travel on: `prefix:room:NAME`, or on a Redis
    /// Cluster its stream's hash tag `{prefix:room:NAME}`, so that the channel hashes to
    /// the slot of the room's stream keys (`{prefix:room:NAME}:s`), whatever braces the
    /// name has: the publish script publishes on it from the shard that holds them (see
    /// the crate's Channels section); for tools that watch it.
    ///
    /// ```
    /// use switchboard_redis::RedisConfig;
    ///
    /// let config = RedisConfig::default().prefix("chat");
    /// assert_eq!(config.channel_room("lobby"), "chat:room:lobby");
    /// let cluster = config.cluster(["redis://127.0.0.1:7000/"]);
    /// assert_eq!(cluster.channel_room("lobby"), "{chat:room:lobby}");
    /// ```
    pub fn channel_room(&self, room: &str) -> String {
        match self.deployment {
            Deployment::Cluster { .. } => self.room_tag(room),
            _ => format!("{}:room:{room}", self.prefix),
        }
    }

    /// How envelopes are published: on a Redis Cluster, to the shard of their channel
    /// only (sharded pub/sub), not to every node.
    fn publish_verb(&self) -> &'static str {
        match self.deployment {
            Deployment::Cluster { .. } => "SPUBLISH",
            _ => "PUBLISH",
        }
    }

    /// `{prefix:room:NAME}`: the hash tag of a room's stream keys.
    fn room_tag(&self, room: &str) -> String {
        format!("{{{}:room:{room}}}", self.prefix)
    }

    /// The channel an envelope is published on.
    fn channel_of(&self, envelope: &Envelope) -> String {
        match &envelope.target {
            Target::All | Target::Nodes => self.channel_all(),
            Target::Room(room) => self.channel_room(room),
            Target::Connection(id) => self.channel_node(id.node()),
            Target::Node(node) => self.channel_node(*node),
        }
    }
}

/// Which Redis deployment the hubs of one prefix share ([`RedisConfig::deployment`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Deployment {
    /// One Redis server (or a proxy in front of one), at [`RedisConfig::url`].
    Single,
    /// The master that these Sentinels (`redis://host:26379/` URLs) watch under the
    /// name `service`: asked of the Sentinels at every (re)connection, so that the
    /// hubs follow a failover. The master is reached with the scheme (`rediss://` for
    /// TLS), credentials and database of [`RedisConfig::url`]; its host and port are
    /// not used.
    Sentinel {
        /// The master's name in the Sentinels' configuration (`mymaster`).
        service: String,
        /// The Sentinels, tried in turn.
        sentinels: Vec<String>,
    },
    /// A Redis Cluster (7.0 or newer: sharded pub/sub), found from any of these nodes'
    /// URLs; each room lives on the shard its channel hashes to.
    Cluster {
        /// Some of the cluster's nodes: the rest are found from them.
        nodes: Vec<String>,
    },
}

/// What the link task publishes, in the order the hub asked: an envelope is one
/// `PUBLISH` (`SPUBLISH` on a cluster), a stream's message the publish script, whose
/// reply is the position.
type Publish = switchboard_broker::link::Publish<stream::StreamPublish>;

/// A hub's attachment to Redis. Give it to `switchboard::hub::Hub::with_broker`.
#[derive(Debug)]
pub struct RedisBroker {
    config: RedisConfig,
    servers: cluster::Servers,
    /// Bounded by [`RedisConfig::max_pending_publishes`].
    outbox: Outbox<stream::StreamPublish>,
    rooms: Arc<RoomChanges>,
    /// Until the hub starts the broker: the link [`RedisBroker::connect`] opened, if
    /// any, and the publishes' receiving end.
    pending: Mutex<Option<(Option<link::Link>, mpsc::Receiver<Publish>)>>,
    /// The runtime the broker was made in, where its tasks run.
    runtime: Option<Handle>,
    stats: Counters,
    /// Set by the link task: see [`Broker::is_ready`].
    ready: Arc<AtomicBool>,
    /// Streams are read on a connection of their own.
    reads: Arc<stream::Reads>,
}

impl RedisBroker {
    /// A broker that connects to Redis once a hub takes it, and keeps trying while
    /// Redis is down: the hub starts at once, serves its own members and is not ready
    /// (`Hub::is_ready`, `/ready`) until the link is up with its subscriptions.
    /// Fails only for a URL the Redis client does not understand, root certificates
    /// that are not PEM certificates, a Sentinel or Cluster deployment without
    /// Sentinels or nodes, or a prefix with `{` or `}` on a Redis Cluster. Call from
    /// inside a tokio runtime: the link's tasks run on it.
    pub fn new(config: RedisConfig) -> Result<Self, ConnectError> {
        let servers = cluster::Servers::new(&config)?;
        let stats = Counters::default();
        let (outbox, receiver) = Outbox::new(config.max_pending_publishes, stats.clone(), "Redis");
        let reads = stream::Reads::new(servers.clone(), config.clone(), stats.clone());
        Ok(Self {
            reads: Arc::new(reads),
            config,
            servers,
            outbox,
            rooms: Arc::default(),
            pending: Mutex::new(Some((None, receiver))),
            runtime: Handle::try_current().ok(),
            stats,
            // Not before the hub's own channels are subscribed, once a hub takes it.
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Like [`RedisBroker::new`], but connects first and fails at once if Redis cannot
    /// be reached: for a process that should not start without Redis. After that, the
    /// broker reconnects as [`RedisBroker::new`]'s does.
    pub async fn connect(config: RedisConfig) -> Result<Self, ConnectError> {
        let broker = Self::new(config)?;
        let link = link::Link::open(&broker.servers)
            .await
            .map_err(|error| ConnectError::Connect(Box::new(error)))?;
        if let Some((first, _)) = lock(&broker.pending).as_mut() {
            *first = Some(link);
        }
        Ok(broker)
    }

    /// Counters of this broker, readable after the hub has taken it.
    pub fn stats(&self) -> BrokerStats {
        self.stats.stats()
    }
}

impl Broker for RedisBroker {
    fn start(&self, inbox: Inbox) {
        let Some((first, publishes)) = lock(&self.pending).take() else {
            tracing::error!("RedisBroker started twice; the second hub is not attached");
            return;
        };
        let Some(runtime) = self.runtime.clone().or_else(|| Handle::try_current().ok()) else {
            tracing::error!("RedisBroker made and started outside a tokio runtime; not attached");
            return;
        };
        let inbox_node = inbox.node();
        let task = link::Task {
            servers: self.servers.clone(),
            reads: self.reads.clone(),
            config: self.config.clone(),
            inbox,
            changes: self.rooms.clone(),
            stats: self.stats.clone(),
            ready: self.ready.clone(),
        };
        tracing::info!(node = %inbox_node, "hub attached to Redis");
        runtime.spawn(link::run(task, first, publishes));
    }

    fn publish(&self, envelope: Envelope) {
        self.outbox
            .publish(self.config.channel_of(&envelope), &envelope);
    }

    /// Queues the publish script (see the crate's Delivery section) behind the
    /// publishes already waiting: counted, shed and lost as they are. The future says
    /// [`StreamError::Unavailable`] for a publish that was not published (shed, the
    /// link down, refused by Redis), [`StreamError::Unconfirmed`] for one sent whose
    /// answer was lost with the link (it may have been published: counted in
    /// [`BrokerStats::unconfirmed`], not as lost). A message that is not text or
    /// binary ([`StreamError::NotData`]), or not for a room
    /// ([`StreamError::NoHistory`]), is lost too.
    fn publish_stream(&self, envelope: Envelope, history: History) -> StreamFuture<Position> {
        let made = stream::StreamPublish::new(&self.config, &envelope, history);
        // The link task dropped it without an answer: it is gone with its hub, perhaps
        // with the publish sent.
        let dropped = || StreamError::Unconfirmed("the link task has ended".to_owned());
        self.outbox.publish_stream(made, dropped)
    }

    /// Runs the read script on a connection of its own (not the publishes' one, which
    /// a burst of reads would hold up), waiting at most 2 s.
    fn read_stream(&self, room: &str, after: u64, history: History) -> StreamFuture<StreamRead> {
        let (reads, room) = (self.reads.clone(), room.to_owned());
        Box::pin(async move { reads.read(&room, after, history).await })
    }

    fn subscribe(&self, room: &str) {
        self.rooms.want(room, true);
    }

    fn unsubscribe(&self, room: &str) {
        self.rooms.want(room, false);
    }

    /// `false` from the moment the link fails until it is open again and Redis has
    /// confirmed the subscriptions to every room of the hub, its node channel and
    /// `all`; also before the hub takes the broker, and while Redis has not been
    /// reached yet.
    fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    fn metrics(&self) -> Option<BrokerMetrics> {
        Some(self.stats.stats().metrics(self.is_ready()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builder_method_sets_its_field() {
        // Values other than the defaults, so that a method that sets nothing fails.
        let config = RedisConfig::default()
            .url("redis://redis.example:6380/2")
            .prefix("chat")
            .max_backoff(Duration::from_secs(1))
            .max_pending_publishes(2)
            .max_pending_deliveries(3);
        // Exhaustive: a new field does not compile here until it has a method and a check.
        let RedisConfig {
            deployment: _,
            root_certificates: _,
            url,
            prefix,
            max_backoff,
            max_pending_publishes,
            max_pending_deliveries,
        } = config;
        assert_eq!(url, "redis://redis.example:6380/2");
        assert_eq!(prefix, "chat");
        assert_eq!(max_backoff, Duration::from_secs(1));
        assert_eq!(max_pending_publishes, 2);
        assert_eq!(max_pending_deliveries, 3);
    }
}
