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
//! # async fn run() -> Result<(), switchboard_redis::RedisError> {
//! let broker = RedisBroker::connect(RedisConfig::new("redis://127.0.0.1:6379/")).await?;
//! let stats = broker.stats();
//! let hub = Hub::with_broker(HubConfig::default(), broker);
//! # let _ = (hub, stats);
//! # Ok(())
//! # }
//! ```
//!
//! # Channels
//!
//! With the default prefix `switchboard`, a hub subscribes to `switchboard:all`, to
//! `switchboard:node:<its node id>`, and to `switchboard:room:<name>` for each room
//! that has a member on it, from the first member's join to the last member's leave.
//! Publishing to a room costs one `PUBLISH`, whatever the number of hubs.
//!
//! # Delivery
//!
//! Redis pub/sub delivers at most once, in order per publishing hub. A hub that joins a
//! room starts receiving the room's messages once Redis has confirmed the subscription
//! (a round trip after the join). While the link to Redis is down, envelopes cannot be
//! published: each one is counted in [`BrokerStats::lost`] and logged, and the hub
//! reconnects with backoff, subscribing again to everything it had.

mod codec;
mod link;

pub use codec::CodecError;
pub use redis::RedisError;

use bytes::Bytes;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};
use switchboard::hub::{Broker, Envelope, Inbox, Target};
use tokio::{runtime::Handle, sync::mpsc};

/// Where to find Redis and how to name the channels.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    url: String,
    prefix: String,
    max_backoff: Duration,
}

impl RedisConfig {
    /// Redis at `url` (e.g. `redis://127.0.0.1:6379/`), channels under `switchboard:`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "switchboard".to_owned(),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// Channels under `prefix:` instead: hubs on different prefixes do not hear each
    /// other, which lets several applications share one Redis.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest wait between reconnection attempts (the wait doubles from 50 ms up
    /// to this; 5 s by default).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    fn channel_all(&self) -> String {
        format!("{}:all", self.prefix)
    }

    fn channel_node(&self, node: u64) -> String {
        format!("{}:node:{node:x}", self.prefix)
    }

    fn channel_room(&self, room: &str) -> String {
        format!("{}:room:{room}", self.prefix)
    }

    /// The channel an envelope is published on.
    fn channel_of(&self, envelope: &Envelope) -> String {
        match &envelope.target {
            Target::All => self.channel_all(),
            Target::Room(room) => self.channel_room(room),
            Target::Connection(id) => self.channel_node(Envelope::node_of(*id)),
        }
    }
}

/// What the hub asks of the link task, in the order it asked.
#[derive(Debug)]
enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Publish { channel: String, payload: Bytes },
}

/// A hub's attachment to Redis. Give it to [`switchboard::hub::Hub::with_broker`].
#[derive(Debug)]
pub struct RedisBroker {
    config: RedisConfig,
    commands: mpsc::UnboundedSender<Command>,
    /// The link and the commands' receiving end until the hub starts the broker.
    pending: Mutex<Option<(link::Link, mpsc::UnboundedReceiver<Command>)>>,
    runtime: Handle,
    stats: BrokerStats,
}

impl RedisBroker {
    /// Connects to Redis (failing at once if it cannot be reached); the broker starts
    /// working when a hub takes it. Call from inside a tokio runtime: the link's task
    /// runs on it.
    pub async fn connect(config: RedisConfig) -> Result<Self, RedisError> {
        let link = link::Link::open(&config).await?;
        let (commands, receiver) = mpsc::unbounded_channel();
        Ok(Self {
            config,
            commands,
            pending: Mutex::new(Some((link, receiver))),
            runtime: Handle::current(),
            stats: BrokerStats::default(),
        })
    }

    /// Counters of this broker, readable after the hub has taken it.
    pub fn stats(&self) -> BrokerStats {
        self.stats.clone()
    }

    fn command(&self, command: Command) {
        // The task ends only when this broker is dropped or its hub is gone.
        let _ = self.commands.send(command);
    }
}

impl Broker for RedisBroker {
    fn start(&self, inbox: Inbox) {
        let pending = self.pending.lock().map(|mut p| p.take());
        let Ok(Some((link, commands))) = pending else {
            tracing::error!("RedisBroker started twice; the second hub is not attached");
            return;
        };
        let task = link::run(
            link,
            self.config.clone(),
            inbox,
            commands,
            self.stats.clone(),
        );
        self.runtime.spawn(task);
    }

    fn publish(&self, envelope: Envelope) {
        match codec::encode(&envelope) {
            Ok(payload) => self.command(Command::Publish {
                channel: self.config.channel_of(&envelope),
                payload,
            }),
            Err(error) => {
                self.stats.count(&self.stats.0.lost);
                tracing::warn!(%error, "envelope not published");
            }
        }
    }

    fn subscribe(&self, room: &str) {
        self.command(Command::Subscribe(room.to_owned()));
    }

    fn unsubscribe(&self, room: &str) {
        self.command(Command::Unsubscribe(room.to_owned()));
    }
}

/// Counters of a [`RedisBroker`]; a cheap handle, shared with the broker.
#[derive(Debug, Clone, Default)]
pub struct BrokerStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    lost: AtomicU64,
    malformed: AtomicU64,
    reconnects: AtomicU64,
}

impl BrokerStats {
    /// Envelopes Redis accepted from this hub.
    pub fn published(&self) -> u64 {
        self.0.published.load(Relaxed)
    }

    /// Envelopes from other hubs handed to this hub.
    pub fn received(&self) -> u64 {
        self.0.received.load(Relaxed)
    }

    /// Envelopes that could not be published (the link was down, or the message was
    /// not text or binary).
    pub fn lost(&self) -> u64 {
        self.0.lost.load(Relaxed)
    }

    /// Messages on our channels that were not envelopes this version understands.
    pub fn malformed(&self) -> u64 {
        self.0.malformed.load(Relaxed)
    }

    /// Times the link to Redis was opened again after failing.
    pub fn reconnects(&self) -> u64 {
        self.0.reconnects.load(Relaxed)
    }

    fn count(&self, counter: &AtomicU64) {
        self.add(counter, 1);
    }

    fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}
