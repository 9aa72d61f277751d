//! What moves between hubs, and the trait of what moves it.

use crate::{ConnectionId, History, NodeId, Position, StreamError, StreamFuture, StreamRead};
use std::{fmt, sync::Arc};
use switchboard_proto::Message;

/// Who an envelope is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection.
    All,
    /// The members of a room.
    Room(String),
    /// One connection; its id names the hub that holds it ([`ConnectionId::node`]).
    Connection(ConnectionId),
    /// One hub itself, not its connections: the cluster's own traffic between hubs
    /// (presence, queries and their replies). Routed as a send to one of its
    /// connections is.
    Node(NodeId),
    /// Every hub itself, not its connections: the cluster's own traffic (heartbeats,
    /// presence changes, queries). Routed as [`Target::All`] is.
    Nodes,
}

/// A message on its way between hubs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The node id of the hub that published it (hubs ignore their own envelopes).
    pub origin: NodeId,
    /// Who it is for.
    pub target: Target,
    /// A connection to leave out.
    pub except: Option<ConnectionId>,
    /// The message (text or binary).
    pub message: Message,
    /// Its position in its room's stream, for a room that keeps history: set by the
    /// engine ([`Broker::publish_stream`]), `None` for every other envelope.
    pub position: Option<Position>,
}

/// What a receiving hub does with an envelope; `false` once it is gone.
type Deliver = dyn Fn(&Envelope) -> bool + Send + Sync;

/// Where a broker delivers envelopes published by other hubs: a hub's node id and its
/// way in. Cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    node: NodeId,
    deliver: Arc<Deliver>,
}

impl Inbox {
    /// The inbox of the hub `node`: `deliver` hands it an envelope and returns `false`
    /// once the hub is gone. A hub makes its own and hands it to [`Broker::start`];
    /// tests of a broker make theirs.
    pub fn new(node: NodeId, deliver: impl Fn(&Envelope) -> bool + Send + Sync + 'static) -> Self {
        Self {
            node,
            deliver: Arc::new(deliver),
        }
    }

    /// The node id of the receiving hub.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Delivers an envelope to the receiving hub's connections (a hub skips those of
    /// its own origin, which pub/sub systems may echo back, except a stream's, with a
    /// [`Envelope::position`]: a hub delivers its own stream messages only as the
    /// engine hands them back). Returns `false` once the hub is gone, so the broker can
    /// forget this inbox.
    ///
    /// A hub's delivery of a positioned envelope only queues (it may start a task): it
    /// never calls back into the broker, so an engine may deliver a stream's messages
    /// under the lock that orders them.
    pub fn deliver(&self, envelope: &Envelope) -> bool {
        (self.deliver)(envelope)
    }
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Carries envelopes between hubs. Every method must return at once: a hub calls them
/// while sending, and sends never wait.
pub trait Broker: Send + Sync + 'static {
    /// Called once by the hub that owns this broker, with where to deliver envelopes
    /// from other hubs.
    fn start(&self, inbox: Inbox);
    /// Sends an envelope to the other hubs that may have recipients: for a room, the
    /// hubs subscribed to it; for a connection or a node, the hub named by its id; for
    /// all and for nodes, every hub.
    fn publish(&self, envelope: Envelope);
    /// This hub has its first member in `room`: deliver the room's envelopes to it.
    fn subscribe(&self, room: &str);
    /// This hub's last member left `room`.
    fn unsubscribe(&self, room: &str);
    /// Publishes an envelope for a room that keeps history ([`Target::Room`]): the
    /// engine assigns it the stream's next [`Position`] and keeps it within `history`,
    /// in one atomic step, then delivers it with [`Envelope::position`] set to every hub
    /// subscribed to the room, **this one included**: a hub hands a stream's messages
    /// to its members only as the engine numbered them, so that every hub delivers one
    /// order.
    ///
    /// Returns at once; the future resolves to the position given (or why none was),
    /// and dropping it does not cancel the publish. Default: the broker keeps no
    /// history ([`StreamError::Unsupported`]).
    fn publish_stream(&self, envelope: Envelope, history: History) -> StreamFuture<Position> {
        let _ = (envelope, history);
        Box::pin(std::future::ready(Err(StreamError::Unsupported)))
    }
    /// The messages `room`'s stream keeps after offset `after`, oldest first, with the
    /// stream's epoch and newest offset ([`StreamRead`]); `history` is the room's, so
    /// that messages older than its `max_age` are left out. Default: the broker keeps
    /// no history ([`StreamError::Unsupported`]).
    fn read_stream(&self, room: &str, after: u64, history: History) -> StreamFuture<StreamRead> {
        let _ = (room, after, history);
        Box::pin(std::future::ready(Err(StreamError::Unsupported)))
    }
    /// Whether envelopes move now: the link to the other hubs is up and every
    /// subscription the hub asked for (its rooms, its node, all) is in place. A hub is
    /// not ready while this is `false` (`Hub::is_ready`, the `/ready` route): it would
    /// accept clients and silently deliver them nothing from other hubs.
    ///
    /// Default `true`: a broker without a link (in memory) is always ready.
    fn is_ready(&self) -> bool {
        true
    }
    /// The broker's counters and the state of its link, for the hub's metrics; `None`
    /// (the default) for a broker with no link to watch, such as
    /// [`MemoryBroker`](crate::MemoryBroker). Called on every scrape: read atomics, do not wait.
    fn metrics(&self) -> Option<BrokerMetrics> {
        None
    }
}

/// What a broker reports of its traffic and link ([`Broker::metrics`]): counters since
/// the broker started, and whether its link is up now. A hub serves them as the
/// `switchboard_broker_*` metrics.
///
/// A broker crate fills one from its own counters (the fields are public; the struct
/// is `#[non_exhaustive]`, so start from [`BrokerMetrics::default`]):
///
/// ```
/// use switchboard_broker::BrokerMetrics;
///
/// let mut metrics = BrokerMetrics::default();
/// metrics.published = 3;
/// metrics.connected = true;
/// assert_eq!(metrics.lost, 0);
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerMetrics {
    /// Envelopes the backplane accepted from this hub.
    pub published: u64,
    /// Envelopes from other hubs handed to this hub.
    pub received: u64,
    /// Envelopes this hub could not publish (the link was down, or its queue to the
    /// link was full).
    pub lost: u64,
    /// Envelopes other hubs published for this hub that never reached it, counted
    /// here, on the receiving side, from the gaps in the publishers' numbering (see
    /// [`GapDetector`](crate::GapDetector)): a dropped subscription, a broker that
    /// disconnected a slow reader, a publisher's shed.
    pub missed: u64,
    /// Messages on the broker's channels that were not envelopes it understands.
    pub malformed: u64,
    /// Times the link was opened again after failing.
    pub reconnects: u64,
    /// Whether the link to the backplane is up now, with every subscription in place
    /// (what [`Broker::is_ready`] says).
    pub connected: bool,
}

/// A boxed broker is a broker: an application that picks its engine at run time (a
/// `--redis` or `--nats` flag) hands the hub a `Box<dyn Broker>`.
impl<B: Broker + ?Sized> Broker for Box<B> {
    fn start(&self, inbox: Inbox) {
        (**self).start(inbox);
    }
    fn publish(&self, envelope: Envelope) {
        (**self).publish(envelope);
    }
    fn subscribe(&self, room: &str) {
        (**self).subscribe(room);
    }
    fn unsubscribe(&self, room: &str) {
        (**self).unsubscribe(room);
    }
    fn publish_stream(&self, envelope: Envelope, history: History) -> StreamFuture<Position> {
        (**self).publish_stream(envelope, history)
    }
    fn read_stream(&self, room: &str, after: u64, history: History) -> StreamFuture<StreamRead> {
        (**self).read_stream(room, after, history)
    }
    fn is_ready(&self) -> bool {
        (**self).is_ready()
    }
    fn metrics(&self) -> Option<BrokerMetrics> {
        (**self).metrics()
    }
}
