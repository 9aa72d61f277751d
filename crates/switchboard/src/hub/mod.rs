//! The hub: every connection of a server, by id, in rooms, with broadcast, limits,
//! keepalive and backpressure.
//!
// The example serves through axum: without the feature it is shown, not compiled.
#![cfg_attr(feature = "axum", doc = "```no_run")]
#![cfg_attr(not(feature = "axum"), doc = "```ignore")]
//! use switchboard::hub::{Connection, Handler, Hub, HubConfig};
//! use switchboard::Message;
//!
//! struct Chat;
//!
//! impl Handler for Chat {
//!     async fn on_open(&self, conn: &Connection) {
//!         let room = conn.param("room").unwrap_or("lobby").to_owned();
//!         conn.join(&room);
//!         conn.hub().to(&room).except(conn.id()).send_text("a user joined");
//!     }
//!     async fn on_message(&self, conn: &Connection, message: Message) {
//!         for room in conn.rooms() {
//!             conn.hub().to(&room).send(message.clone());
//!         }
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::new(HubConfig::default());
//! let app = axum::Router::new().route("/chat/{room}", switchboard::ws(hub.clone(), Chat));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! switchboard::serve(listener, app, &hub).await
//! # }
//! ```

mod assigns;
mod broadcast;
mod client_ip;
mod cluster;
mod config;
mod connection;
mod driver;
mod handler;
mod instruments;
mod keepalive;
mod outgoing;
mod queries;
mod rate;
mod registry;
mod streams;

pub use assigns::Assigns;
pub use broadcast::{Broadcast, BroadcastReport};
pub use client_ip::{IpNet, IpNetError, ProxyHeader};
pub use config::{BufferPolicy, HubConfig, Origins};
pub use connection::{Connection, ConnectionState, JoinError, SendError};
pub use handler::Handler;
pub use queries::{ClusterAnswer, ClusterQuery, ConnectionInfo, Connections, Incomplete};
pub use rate::{MessageRate, RatePolicy};
pub use streams::Recovery;
pub use switchboard_broker::{
    Broker, BrokerMetrics, ConnectionId, DEFAULT_MAX_STREAMS, Envelope, Epoch, History, Inbox,
    MemoryBroker, MemoryNetwork, NodeId, ParseEpochError, ParseIdError, Position, StreamEntry,
    StreamError, StreamFuture, StreamRead, Target,
};

pub(crate) use client_ip::client_addr;
#[cfg(feature = "axum")]
pub(crate) use cluster::PeerEvent;
pub(crate) use connection::{Closer, RequestInfo, Unsent};
pub(crate) use driver::{abandon, drive, open};
#[cfg(feature = "axum")]
pub(crate) use handler::Panicked;
pub(crate) use handler::catch;
#[cfg_attr(not(any(feature = "axum", feature = "metrics")), allow(unused_imports))]
pub(crate) use instruments::{Census, JoinResult};
pub(crate) use instruments::{Instruments, Refusal};
pub(crate) use outgoing::Outgoing;
pub(crate) use rate::TokenBucket;
// For channels' history topics (`Hub::keep_history`).
#[cfg_attr(not(feature = "axum"), allow(unused_imports))]
pub(crate) use streams::Framing;
pub(crate) use streams::Histories;

use crate::sync::{self, lock};
use broadcast::deliver_local;
use registry::{Registry, RoomChange};
use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{
        Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard_proto::Message;
use tokio::sync::Notify;

/// How long shutdown waits for aborted connections to end.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// The registry of a server's connections. Cheap to clone: clones share one hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    config: HubConfig,
    /// Names this hub in connection ids and broker envelopes.
    node: NodeId,
    next_id: AtomicU64,
    registry: RwLock<Registry>,
    /// Connections admitted (upgrade accepted) and not yet finished: what
    /// `max_connections` bounds.
    admitted: AtomicUsize,
    /// Connections admitted and not yet finished per client address (as
    /// [`client_ip::counted_as`] keys it): what `max_connections_per_ip` bounds. An
    /// address leaves the map with its last connection.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    draining: AtomicBool,
    /// Signalled whenever a connection finishes, for shutdown to wait on.
    finished: Notify,
    started: Instant,
    sweeper: Mutex<bool>,
    broker: Arc<dyn Broker>,
    /// See [`HubMetrics`].
    dropped: AtomicU64,
    refused: AtomicU64,
    rate_limited: AtomicU64,
    refused_joins: AtomicU64,
    /// What [`HubConfig::metrics`] records; `None` when off (always, without the
    /// feature `metrics`).
    instruments: Option<Instruments>,
    /// The other hubs on the broker, as this one sees them.
    cluster: cluster::Cluster,
    /// The rooms that keep history, and their state here.
    streams: streams::Streams,
}

/// Why [`Hub::admit`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// At `max_connections`.
    Full,
    /// Shutting down (answered as [`Refused::Full`] is).
    Draining,
    /// Its address is at `max_connections_per_ip`.
    TooManyPerIp,
}

impl Refused {
    /// The cause, as a refusal's event names it.
    pub(crate) fn cause(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Draining => "draining",
            Self::TooManyPerIp => "connections per ip",
        }
    }
}

/// Counters of a hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubMetrics {
    /// Connections registered now.
    pub connections: usize,
    /// Rooms with at least one member.
    pub rooms: usize,
    /// Messages dropped by a connection's buffer policy since the hub started (the sum
    /// of [`Connection::dropped_messages`]).
    pub dropped_messages: u64,
    /// Messages refused since the hub started because their connection was closing or
    /// closed, their channel had ended, or a control message was too long (the sum of
    /// [`Connection::refused_messages`]).
    pub refused_messages: u64,
    /// Data messages from clients dropped since the hub started because they came
    /// faster than [`HubConfig::max_message_rate`] (the sum of
    /// [`Connection::rate_limited_messages`]).
    pub rate_limited_messages: u64,
    /// Joins refused since the hub started because the connection was in
    /// [`HubConfig::max_rooms_per_connection`] rooms already (the sum of
    /// [`Connection::refused_joins`]).
    pub refused_joins: u64,
    /// Reads of stream history from the engine ([`Broker::read_stream`]): to recover
    /// joiners ([`Connection::join_from`]; joiners of one stream share them), to fill
    /// a gap, after a broker link blip.
    pub stream_reads: u64,
    /// Joins from a position that got every message missed ([`Recovery::recovered`]).
    pub streams_recovered: u64,
    /// Joins from a position that could not be recovered (another epoch, trimmed).
    pub streams_not_recovered: u64,
    /// Stream messages delivered to this hub's members from a read rather than as
    /// they were published: gaps filled (a link blip, a message lost on the way).
    pub stream_filled: u64,
    /// Stream messages this hub's members never got: trimmed by the engine before a
    /// gap could be read, lost with a history (a new epoch) or a failed read, or sent
    /// while the engine was unavailable. Each loss is also warned of, once per outage.
    pub stream_lost: u64,
}

impl Hub {
    /// A hub with the in-memory broker: rooms span this process only.
    pub fn new(config: HubConfig) -> Self {
        let hub = Self::with_broker(config, MemoryNetwork::new().broker());
        // Nobody else can join its network: its cluster queries need not wait for
        // hubs it has not heard from yet.
        hub.set_solitary();
        hub
    }

    /// A hub whose rooms and broadcasts also reach the other hubs on `broker`.
    pub fn with_broker(mut config: HubConfig, broker: impl Broker) -> Self {
        // See the setting: with no slot, `serve` would accept nothing.
        config.max_pending_handshakes = config.max_pending_handshakes.max(1);
        config.max_http_connections = config.max_http_connections.max(1);
        // Hubs of one deployment must not share a node id: each drops the envelopes of
        // its own node. With 64 random bits they do not, in practice (see `NodeId`).
        let node = NodeId::random();
        let instruments = Instruments::for_config(&config);
        let streams = streams::Streams::new(&config.histories);
        let hub = Self {
            inner: Arc::new(HubInner {
                config,
                node,
                next_id: AtomicU64::new(1),
                registry: RwLock::default(),
                admitted: AtomicUsize::new(0),
                per_ip: Mutex::default(),
                draining: AtomicBool::new(false),
                finished: Notify::new(),
                started: Instant::now(),
                sweeper: Mutex::new(false),
                broker: Arc::new(broker),
                dropped: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                rate_limited: AtomicU64::new(0),
                refused_joins: AtomicU64::new(0),
                instruments,
                cluster: cluster::Cluster::new(),
                streams,
            }),
        };
        hub.inner.broker.start(hub.inbox());
        hub.serve_queries();
        hub.start_heartbeat();
        hub
    }

    /// Where the broker delivers envelopes from other hubs. It holds the hub weakly: a
    /// broker keeps its inbox, and the hub keeps its broker.
    fn inbox(&self) -> Inbox {
        let hub = Arc::downgrade(&self.inner);
        let node = self.node();
        Inbox::new(node, move |envelope| {
            let Some(inner) = hub.upgrade() else {
                return false;
            };
            let hub = Hub::from_inner(inner);
            if let Some(position) = envelope.position {
                // A stream's messages come back to their publisher too: it delivers
                // them only as the engine numbered them.
                hub.receive_stream(envelope, position);
                return true;
            }
            // Pub/sub systems echo a hub's publishes back to it on the rooms it shares.
            if envelope.origin == node {
                return true;
            }
            match envelope.target {
                Target::Node(_) | Target::Nodes => hub.receive_cluster(envelope),
                _ => {
                    deliver_local(&hub, envelope);
                }
            }
            true
        })
    }

    /// The settings.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// This hub's node id: 64 random bits, drawn when the hub was made, that its
    /// connections' ids carry ([`ConnectionId::node`]).
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// A connection of this hub by id; for one held by another hub,
    /// [`ClusterQuery::connection`] (and [`ClusterQuery::join`], [`ClusterQuery::leave`],
    /// [`ClusterQuery::disconnect`] to act on it).
    pub fn connection(&self, id: ConnectionId) -> Option<Connection> {
        self.read().connections.get(&id).cloned()
    }

    /// The connections registered on this hub now; for every hub on the broker,
    /// [`ClusterQuery::connection_count`] (`hub.cluster().connection_count()`).
    pub fn connection_count(&self) -> usize {
        self.read().connections.len()
    }

    /// Every connection registered now.
    pub fn connections(&self) -> Vec<Connection> {
        self.read().connections.values().cloned().collect()
    }

    /// Members of `room` on this hub only; for every hub on the broker,
    /// [`ClusterQuery::room_size`] (`hub.cluster().room_size(room)`).
    pub fn room_size(&self, room: &str) -> usize {
        self.read()
            .rooms
            .get(room)
            .map_or(0, |members| members.len())
    }

    /// The members of `room` on this hub only; for every hub on the broker,
    /// [`ClusterQuery::room_members`] (`hub.cluster().room_members(room)`).
    pub fn room_members(&self, room: &str) -> Vec<Connection> {
        self.read()
            .rooms
            .get(room)
            .map(|members| members.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The rooms that have members on this hub only; for every hub on the broker, with
    /// their sizes, [`ClusterQuery::rooms`] (`hub.cluster().rooms()`).
    pub fn rooms(&self) -> Vec<String> {
        self.read().rooms.keys().map(|r| r.to_string()).collect()
    }

    /// Adds a connection to a room; returns whether it is a member now.
    ///
    /// A connection that has ended (it is no longer registered: after its `on_close`),
    /// or that belongs to another hub, is refused, and nothing changes: `false`; so is
    /// a join past [`HubConfig::max_rooms_per_connection`]. [`Hub::try_join`] says why.
    pub fn join(&self, conn: &Connection, room: &str) -> bool {
        self.try_join(conn, room).is_ok()
    }

    /// Adds a connection to a room, or says why not: the connection has ended or
    /// belongs to another hub ([`JoinError::Closed`]), or it is in
    /// [`HubConfig::max_rooms_per_connection`] rooms already
    /// ([`JoinError::TooManyRooms`], counted in [`Connection::refused_joins`] and
    /// logged at `debug`). Joining a room it is in already is `Ok`.
    pub fn try_join(&self, conn: &Connection, room: &str) -> Result<(), JoinError> {
        // The broker hears of the change under the registry's lock: a leave and a join
        // racing on one room must reach it in the order they changed the room.
        let mut registry = self.write();
        // Leaving every room happens once, when the connection is unregistered: a
        // membership added after it would keep the room, and the broker's
        // subscription, for ever.
        if !registry.holds(conn) {
            return Err(JoinError::Closed);
        }
        let max = self.inner.config.max_rooms_per_connection;
        if registry.room_count(conn.id()) >= max && !registry.is_member(conn.id(), room) {
            drop(registry);
            conn.count_refused_join();
            self.inner.refused_joins.fetch_add(1, Relaxed);
            tracing::debug!(connection = %conn.id(), room, max, "join refused: too many rooms");
            return Err(JoinError::TooManyRooms);
        }
        if let RoomChange::Created(room) = registry.join(conn, room) {
            self.inner.broker.subscribe(&room);
            drop(registry);
            self.stream_room_created(&room);
        }
        Ok(())
    }

    /// Why [`Hub::try_join`] would refuse `conn` now, without counting it: for joins
    /// that do work (a read) before they join.
    pub(crate) fn check_join(&self, conn: &Connection, room: &str) -> Result<(), JoinError> {
        let registry = self.read();
        if !registry.holds(conn) {
            return Err(JoinError::Closed);
        }
        let max = self.inner.config.max_rooms_per_connection;
        if registry.room_count(conn.id()) >= max && !registry.is_member(conn.id(), room) {
            return Err(JoinError::TooManyRooms);
        }
        Ok(())
    }

    /// Removes a connection from a room; returns whether it was a member.
    ///
    /// A connection of another hub is refused, as by [`Hub::join`]: `false`.
    pub fn leave(&self, conn: &Connection, room: &str) -> bool {
        let mut registry = self.write();
        if !registry.holds(conn) {
            return false;
        }
        match registry.leave(conn.id(), room) {
            RoomChange::None => false,
            RoomChange::Removed(room) => {
                if self.stream_room_removed(&room) {
                    self.inner.broker.unsubscribe(&room);
                }
                true
            }
            RoomChange::Created(_) | RoomChange::Resized => true,
        }
    }

    /// A broadcast to the members of `room`, on every hub of the broker.
    pub fn to(&self, room: &str) -> Broadcast<'_> {
        Broadcast::new(self, Target::Room(room.to_owned()))
    }

    /// A broadcast to every connection, on every hub of the broker.
    pub fn all(&self) -> Broadcast<'_> {
        Broadcast::new(self, Target::All)
    }

    /// Sends to every connection.
    pub fn broadcast(&self, message: impl Into<Message>) -> BroadcastReport {
        self.all().send(message)
    }

    /// Sends to every connection except one.
    pub fn broadcast_except(
        &self,
        message: impl Into<Message>,
        except: ConnectionId,
    ) -> BroadcastReport {
        self.all().except(except).send(message)
    }

    /// Delivers `message` to this hub's connections that `target` names, without the
    /// broker: for state every hub delivers to its own (presence diffs, made by each
    /// hub from its replica).
    #[cfg(feature = "axum")]
    pub(crate) fn deliver_here(&self, target: Target, message: Message) -> BroadcastReport {
        let envelope = Envelope {
            origin: self.node(),
            target,
            except: None,
            message,
            position: None,
        };
        deliver_local(self, &envelope)
    }

    /// Sends to one connection by id, whichever hub of the broker holds it. The report
    /// counts the local delivery only; a remote one is handed to the broker.
    pub fn send_to(&self, id: ConnectionId, message: impl Into<Message>) -> BroadcastReport {
        Broadcast::new(self, Target::Connection(id)).send(message)
    }

    /// Counters.
    pub fn metrics(&self) -> HubMetrics {
        let [
            stream_reads,
            streams_recovered,
            streams_not_recovered,
            stream_filled,
            stream_lost,
        ] = self.inner.streams.counters();
        let registry = self.read();
        HubMetrics {
            stream_reads,
            streams_recovered,
            streams_not_recovered,
            stream_filled,
            stream_lost,
            connections: registry.connections.len(),
            rooms: registry.rooms.len(),
            dropped_messages: self.inner.dropped.load(Relaxed),
            refused_messages: self.inner.refused.load(Relaxed),
            rate_limited_messages: self.inner.rate_limited.load(Relaxed),
            refused_joins: self.inner.refused_joins.load(Relaxed),
        }
    }

    /// The broker's counters and link state, when it reports them
    /// ([`Broker::metrics`]; the Redis broker does, the in-memory one does not).
    pub fn broker_metrics(&self) -> Option<BrokerMetrics> {
        self.inner.broker.metrics()
    }

    /// Graceful shutdown: refuses new connections, sends
    /// [`HubConfig::shutdown_close`] (1001 by default; 1012 for a restart, with the
    /// [`HubConfig::reconnect_window`] in the reason) to every connection, and waits
    /// for their close handshakes until `deadline` has passed; connections still open
    /// then are ended (a callback that never returns is waited for one more second at
    /// most). Then it tells the other hubs on the broker that it is gone, so that they
    /// forget it (and its presences) at once rather than after
    /// [`HubConfig::node_timeout`].
    pub async fn shutdown(&self, deadline: Duration) {
        self.close_connections(deadline).await;
        self.leave_cluster();
        tracing::info!(node = %self.node(), "hub shut down");
    }

    async fn close_connections(&self, deadline: Duration) {
        self.inner.draining.store(true, Relaxed);
        let going_away = self.inner.config.shutdown_frame();
        let connections = self.connections();
        tracing::info!(
            node = %self.node(),
            connections = connections.len(),
            ?deadline,
            code = going_away.code.as_u16(),
            "hub shutting down: closing every connection"
        );
        for conn in connections {
            conn.close_for(going_away.code, going_away.reason.clone());
        }
        if tokio::time::timeout(deadline, self.wait_idle())
            .await
            .is_ok()
        {
            return;
        }
        let connections = self.connections();
        tracing::info!(
            node = %self.node(),
            connections = connections.len(),
            "hub shutdown deadline passed: aborting the connections still open"
        );
        for conn in connections {
            conn.request_close(
                crate::ws::OutboxClose::Abort(going_away.clone()),
                Closer::Hub,
            );
        }
        // An aborted connection ends at once unless a callback of its own never returns;
        // shutdown does not wait for such a callback past one more grace period.
        let _ = tokio::time::timeout(ABORT_GRACE, self.wait_idle()).await;
    }

    async fn wait_idle(&self) {
        loop {
            let finished = self.inner.finished.notified();
            if self.inner.admitted.load(Relaxed) == 0 {
                return;
            }
            finished.await;
        }
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Relaxed)
    }

    /// Whether this hub accepts connections and can deliver to them: it is not
    /// draining, and its broker's link is up with every subscription in place
    /// ([`Hub::is_broker_ready`]). What a readiness probe asks (the `/ready` route,
    /// `switchboard::ready`): a hub whose broker is down would otherwise look healthy
    /// while it delivers nothing from the other hubs.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.is_broker_ready()
    }

    /// Whether the broker moves envelopes now ([`Broker::is_ready`]): always with the
    /// in-memory broker; with Redis, while the link is up and resubscribed.
    pub fn is_broker_ready(&self) -> bool {
        self.inner.broker.is_ready()
    }

    /// Takes a connection slot, and one of the client's address when it is known, or
    /// refuses when the hub is full or draining, or the address has its share.
    pub(crate) fn admit(&self, client: Option<IpAddr>) -> Result<(), Refused> {
        if self.is_draining() {
            return Err(Refused::Draining);
        }
        let max = self.inner.config.max_connections;
        self.inner
            .admitted
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .map_err(|_| Refused::Full)?;
        let Some(client) = client else {
            return Ok(());
        };
        let key = client_ip::counted_as(client);
        let mut per_ip = lock(&self.inner.per_ip);
        let count = per_ip.get(&key).copied().unwrap_or(0);
        if count < self.inner.config.max_connections_per_ip {
            per_ip.insert(key, count + 1);
            return Ok(());
        }
        drop(per_ip);
        self.release(None);
        Err(Refused::TooManyPerIp)
    }

    /// Gives back the slots taken by [`Hub::admit`] for a client at `client`.
    pub(crate) fn release(&self, client: Option<IpAddr>) {
        if let Some(client) = client {
            let key = client_ip::counted_as(client);
            let mut per_ip = lock(&self.inner.per_ip);
            if let Some(count) = per_ip.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&key);
                }
            }
        }
        self.inner.admitted.fetch_sub(1, Relaxed);
        self.inner.finished.notify_waiters();
    }

    /// Counts a client's message dropped for its rate, for [`HubMetrics`].
    pub(crate) fn count_rate_limited(&self) {
        self.inner.rate_limited.fetch_add(1, Relaxed);
    }

    /// Registers a connection in the slot it was admitted to; the registration gives
    /// both back when dropped. `route` is the route's pattern, or the request's path.
    pub(crate) fn register(&self, request: RequestInfo, route: &str) -> Registration {
        let id = ConnectionId::new(self.node(), self.inner.next_id.fetch_add(1, Relaxed));
        // At `info`, so that the warnings and errors of a connection (a handler's
        // panic) carry its fields at the level servers usually run at; a span writes no
        // line of its own.
        let span = tracing::info_span!(
            "connection",
            id = %id,
            remote = request.remote_addr.map(tracing::field::display),
            route,
            node = %self.node(),
        );
        let conn = Connection::new(id, self.clone(), request, span);
        self.write().connections.insert(id, conn.clone());
        if let Some(instruments) = self.instruments() {
            instruments.accepted();
        }
        self.start_sweeper();
        self.start_heartbeat();
        // Admitted before shutdown began, registered after it sent its close to everyone.
        if self.is_draining() {
            let frame = self.inner.config.shutdown_frame();
            conn.close_for(frame.code, frame.reason);
        }
        Registration {
            conn,
            unregistered: AtomicBool::new(false),
        }
    }

    /// Ends a connection's membership of the hub: it leaves the registry and every
    /// room. Called once per connection, by its [`Registration`].
    fn unregister(&self, conn: &Connection) {
        let id = conn.id();
        let mut registry = self.write();
        registry.connections.remove(&id);
        for room in registry.leave_all(id) {
            if self.stream_room_removed(&room) {
                self.inner.broker.unsubscribe(&room);
            }
        }
    }

    fn start_sweeper(&self) {
        let mut started = lock(&self.inner.sweeper);
        if !*started {
            *started = true;
            tokio::spawn(keepalive::sweep(Arc::downgrade(&self.inner)));
        }
    }

    pub(crate) fn rooms_of(&self, id: ConnectionId) -> Vec<String> {
        self.read().rooms_of(id)
    }

    pub(crate) fn is_member(&self, id: ConnectionId, room: &str) -> bool {
        self.read().is_member(id, room)
    }

    /// The recorded metrics, when [`HubConfig::metrics`] is on.
    pub(crate) fn instruments(&self) -> Option<&Instruments> {
        self.inner.instruments.as_ref()
    }

    /// Counts a connection refused before its 101.
    pub(crate) fn count_refusal(&self, reason: Refusal) {
        if let Some(instruments) = self.instruments() {
            instruments.refused(reason);
        }
    }

    pub(crate) fn count_drop(&self) {
        self.inner.dropped.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_refused(&self) {
        self.inner.refused.fetch_add(1, Relaxed);
    }

    pub(crate) fn now_micros(&self) -> u64 {
        // +1 so that 0 can mean "never".
        self.inner.started.elapsed().as_micros() as u64 + 1
    }

    pub(crate) fn instant(&self, micros: u64) -> Option<Instant> {
        (micros != 0).then(|| self.inner.started + Duration::from_micros(micros - 1))
    }

    pub(crate) fn broker(&self) -> &dyn Broker {
        &*self.inner.broker
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Registry> {
        sync::read(&self.inner.registry)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        sync::write(&self.inner.registry)
    }

    fn from_inner(inner: Arc<HubInner>) -> Self {
        Self { inner }
    }
}

/// A connection's place in its hub: its slot and its registry entry, given back when
/// this is dropped, whichever way the connection's task ends (its end, a panic, the task
/// aborted or dropped with its runtime): nothing that happens to a connection can keep
/// its slot taken.
pub(crate) struct Registration {
    conn: Connection,
    /// Set by the first [`Registration::unregister`]: the registry's write lock is
    /// taken once per connection, not again when this is dropped.
    unregistered: AtomicBool,
}

impl Registration {
    /// The registered connection.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Removes the ended connection (see [`Connection::set_closed`]) from the registry
    /// and its rooms, the first time; doing it again does nothing.
    pub(crate) fn unregister(&self) {
        if !self.unregistered.swap(true, Relaxed) {
            self.conn.hub().unregister(&self.conn);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // A connection that ended normally is unregistered already, right after its
        // `on_close`; this covers every other way out of its task.
        if !*self.unregistered.get_mut() {
            self.conn.set_closed();
            self.unregister();
        }
        let client = self.conn.remote_addr().map(|addr| addr.ip());
        self.conn.hub().release(client);
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("node", &self.inner.node)
            .field("metrics", &self.metrics())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::{Connection, Hub, HubConfig, RequestInfo, broadcast::tests::admitted};

    // Tokio's: registering starts the hub's keepalive task.
    #[tokio::test]
    async fn a_connection_of_another_hub_with_a_registered_id_cannot_join() {
        let hub = Hub::new(HubConfig::default());
        let registered = admitted(&hub);
        let other = Hub::new(HubConfig::default());
        let stranger = Connection::new(
            registered.conn().id(),
            other,
            RequestInfo::default(),
            tracing::Span::none(),
        );
        assert!(!hub.join(&stranger, "room"), "joined through a borrowed id");
        assert_eq!(hub.room_size("room"), 0);
        assert!(hub.join(registered.conn(), "room"));
    }

    #[tokio::test]
    async fn a_connection_of_another_hub_with_a_registered_id_cannot_leave() {
        let hub = Hub::new(HubConfig::default());
        let registered = admitted(&hub);
        assert!(hub.join(registered.conn(), "room"));
        let other = Hub::new(HubConfig::default());
        let stranger = Connection::new(
            registered.conn().id(),
            other,
            RequestInfo::default(),
            tracing::Span::none(),
        );
        assert!(!hub.leave(&stranger, "room"), "left through a borrowed id");
        assert!(registered.conn().in_room("room"));
        assert!(hub.leave(registered.conn(), "room"));
        assert!(!hub.leave(registered.conn(), "room"), "left twice");
        assert_eq!(hub.room_size("room"), 0);
    }
}
