//! The backplane between hubs: room broadcasts, broadcasts to all, and sends to an id
//! reach connections held by other hubs (other processes or machines).
//!
//! A broker moves [`Envelope`]s; the hub delivers them. The trait is small so that it
//! maps onto any pub/sub system: Redis pub/sub channels per room and per node, NATS
//! subjects, or [`MemoryNetwork`] inside one process.

use super::{ConnectionId, Hub, HubInner, broadcast::deliver_local};
use crate::sync::lock;
use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{Arc, Mutex, Weak},
};
use switchboard_proto::Message;

/// Who an envelope is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection.
    All,
    /// The members of a room.
    Room(String),
    /// One connection; its id names the hub that holds it.
    Connection(ConnectionId),
}

/// A message on its way between hubs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The node id of the hub that published it (hubs ignore their own envelopes).
    pub origin: u64,
    /// Who it is for.
    pub target: Target,
    /// A connection to leave out.
    pub except: Option<ConnectionId>,
    /// The message (text or binary).
    pub message: Message,
}

impl Envelope {
    /// The node id of the hub holding connection `id`.
    pub fn node_of(id: ConnectionId) -> u64 {
        id >> 40
    }

    /// Whether only the hub `node` can have recipients.
    pub(crate) fn is_local_to(&self, node: u64) -> bool {
        matches!(self.target, Target::Connection(id) if Self::node_of(id) == node)
    }
}

/// Where a broker delivers envelopes published by other hubs.
#[derive(Clone)]
pub struct Inbox {
    hub: Weak<HubInner>,
    node: u64,
}

impl Inbox {
    pub(crate) fn new(hub: &Hub) -> Self {
        Self {
            hub: Arc::downgrade(&hub.inner),
            node: hub.node(),
        }
    }

    /// The node id of the receiving hub.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// Delivers an envelope to the receiving hub's connections. Returns `false` once the
    /// hub is gone, so the broker can forget this inbox.
    pub fn deliver(&self, envelope: &Envelope) -> bool {
        let Some(inner) = self.hub.upgrade() else {
            return false;
        };
        if envelope.origin != self.node {
            deliver_local(&Hub::from_inner(inner), envelope);
        }
        true
    }
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox").field("node", &self.node).finish()
    }
}

/// Carries envelopes between hubs. Every method must return at once: a hub calls them
/// while sending, and sends never wait.
pub trait Broker: Send + Sync + 'static {
    /// Called once by the hub that owns this broker, with where to deliver envelopes
    /// from other hubs.
    fn start(&self, inbox: Inbox);
    /// Sends an envelope to the other hubs that may have recipients: for a room, the
    /// hubs subscribed to it; for a connection, the hub named by its id; for all, every
    /// hub.
    fn publish(&self, envelope: Envelope);
    /// This hub has its first member in `room`: deliver the room's envelopes to it.
    fn subscribe(&self, room: &str);
    /// This hub's last member left `room`.
    fn unsubscribe(&self, room: &str);
}

/// Hubs in one process, connected to each other: the default backplane of a single
/// hub, and the way tests wire several hubs together.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    members: Arc<Mutex<HashMap<u64, Member>>>,
}

struct Member {
    inbox: Inbox,
    rooms: HashSet<String>,
}

/// One hub's attachment to a [`MemoryNetwork`].
pub struct MemoryBroker {
    network: MemoryNetwork,
    node: Mutex<Option<u64>>,
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// A broker for one more hub on this network.
    pub fn broker(&self) -> MemoryBroker {
        MemoryBroker {
            network: self.clone(),
            node: Mutex::new(None),
        }
    }
}

impl MemoryBroker {
    fn with_member(&self, f: impl FnOnce(&mut Member)) {
        let Some(node) = *lock(&self.node) else {
            return;
        };
        if let Some(member) = lock(&self.network.members).get_mut(&node) {
            f(member);
        }
    }
}

impl Broker for MemoryBroker {
    fn start(&self, inbox: Inbox) {
        *lock(&self.node) = Some(inbox.node());
        let member = Member {
            inbox: inbox.clone(),
            rooms: HashSet::new(),
        };
        lock(&self.network.members).insert(inbox.node(), member);
    }

    fn publish(&self, envelope: Envelope) {
        let origin = envelope.origin;
        let inboxes: Vec<Inbox> = lock(&self.network.members)
            .iter()
            .filter(|(node, member)| {
                **node != origin
                    && match &envelope.target {
                        Target::All => true,
                        Target::Room(room) => member.rooms.contains(room),
                        Target::Connection(id) => Envelope::node_of(*id) == **node,
                    }
            })
            .map(|(_, member)| member.inbox.clone())
            .collect();
        for inbox in inboxes {
            inbox.deliver(&envelope);
        }
    }

    fn subscribe(&self, room: &str) {
        self.with_member(|m| {
            m.rooms.insert(room.to_owned());
        });
    }

    fn unsubscribe(&self, room: &str) {
        self.with_member(|m| {
            m.rooms.remove(room);
        });
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        if let Some(node) = *lock(&self.node) {
            lock(&self.network.members).remove(&node);
        }
    }
}

impl fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryNetwork")
            .field("hubs", &lock(&self.members).len())
            .finish()
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("node", &*lock(&self.node))
            .finish()
    }
}
