//! Cluster-wide queries and remote control: the hub's questions (room sizes, members,
//! rooms, connections) asked of every hub on the broker, and joins, leaves and
//! disconnections of connections held by other hubs.
//!
//! Each is one request over the broker (see the `cluster` module), answered by every
//! hub for its own connections, and gathered until every live hub has replied or the
//! timeout has passed. The answer ([`ClusterAnswer`]) names the hubs that replied and
//! those that did not, so that a partial answer is never taken for a whole one (the
//! Socket.IO adapter's `fetchSockets` only says "timeout reached").

use super::{Connection, ConnectionId, Hub, NodeId};
use crate::CloseCode;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

/// The cluster service that answers every query and control of this module.
const SERVICE: &str = "queries";

/// A question or an order to the hubs, as it travels.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "q", rename_all = "snake_case")]
enum Ask {
    ConnectionCount,
    RoomSize {
        room: String,
    },
    RoomMembers {
        room: String,
    },
    Rooms,
    Connection {
        id: ConnectionId,
    },
    Join {
        who: Selected,
        room: String,
    },
    Leave {
        who: Selected,
        room: String,
    },
    Disconnect {
        who: Selected,
        code: u16,
        reason: String,
    },
}

/// The connections an order applies to, as it travels (see [`Connections`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Selected {
    Id { id: ConnectionId },
    Room { room: String },
    All,
}

/// The answer of a cluster-wide query or order: the value gathered from the hubs that
/// replied, and which hubs did not reply within the timeout.
///
/// `missing` names every hub that this hub took for alive when it asked and that did
/// not answer in time (stalled, overloaded, cut off from the broker, or gone since),
/// so that a partial answer is never mistaken for a whole one: `value` is then what
/// the hubs in `replied` hold, and says nothing of the others. A hub that says
/// goodbye or is taken for dead while the query waits is named missing at once,
/// without waiting for the timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterAnswer<T> {
    /// What the hubs in `replied` answered, put together (summed, merged, listed).
    pub value: T,
    /// The hubs that replied, this one included, in node id order.
    pub replied: Vec<NodeId>,
    /// The hubs that did not reply within the timeout, in node id order.
    pub missing: Vec<NodeId>,
}

impl<T> ClusterAnswer<T> {
    /// Whether every hub asked replied: `value` covers the whole cluster, as far as
    /// this hub knows it ([`Hub::nodes`]).
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// The value if every hub replied, or [`Incomplete`] naming those that did not: for
    /// callers to whom a partial answer is an error (`?`).
    pub fn complete(self) -> Result<T, Incomplete> {
        if self.missing.is_empty() {
            Ok(self.value)
        } else {
            Err(Incomplete {
                replied: self.replied,
                missing: self.missing,
            })
        }
    }
}

/// Why [`ClusterAnswer::complete`] has no value: some hubs did not reply in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} of {} hubs did not reply in time: {}", missing.len(), missing.len() + replied.len(), Nodes(missing))]
#[non_exhaustive]
pub struct Incomplete {
    /// The hubs that replied.
    pub replied: Vec<NodeId>,
    /// The hubs that did not.
    pub missing: Vec<NodeId>,
}

/// Node ids separated by commas, for [`Incomplete`]'s message.
struct Nodes<'a>(&'a [NodeId]);

impl fmt::Display for Nodes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, node) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{node}")?;
        }
        Ok(())
    }
}

/// What a hub knows of one of its connections, as a cluster query returns it: what
/// Socket.IO's `fetchSockets` gives of a remote socket (id, rooms, data), serializable
/// so that it can go into a response as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The connection's id ([`Connection::id`]).
    pub id: ConnectionId,
    /// The hub that holds it (the id's [`ConnectionId::node`], spelled out).
    pub node: NodeId,
    /// The client's address ([`Connection::remote_addr`]), when known.
    pub remote_addr: Option<SocketAddr>,
    /// The rooms it is in ([`Connection::rooms`]), sorted.
    pub rooms: Vec<String>,
    /// Its metadata ([`Connection::metadata_entries`]), in the order the keys were
    /// first set. Assigns are not included: they are any Rust value, not data that can
    /// cross the broker.
    pub metadata: Vec<(String, String)>,
}

impl ConnectionInfo {
    /// What `conn` tells of itself now.
    pub fn of(conn: &Connection) -> Self {
        let mut rooms = conn.rooms();
        rooms.sort_unstable();
        Self {
            id: conn.id(),
            node: conn.id().node(),
            remote_addr: conn.remote_addr(),
            rooms,
            metadata: conn.metadata_entries(),
        }
    }

    /// A metadata entry, as [`Connection::metadata`] gives it on the connection's hub.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        let (_, value) = self.metadata.iter().find(|(k, _)| k == key)?;
        Some(value)
    }
}

/// Which connections a remote order ([`ClusterQuery::join`], [`ClusterQuery::leave`],
/// [`ClusterQuery::disconnect`]) applies to: one by id, the members of a room on every
/// hub, or every connection of the cluster. A [`ConnectionId`] converts into one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connections(Selected);

impl Connections {
    /// The connection `id`, on whichever hub holds it (the hub its id names).
    pub fn id(id: ConnectionId) -> Self {
        Self(Selected::Id { id })
    }

    /// The members of `room`, on every hub (Socket.IO's `io.in(room)`).
    pub fn in_room(room: &str) -> Self {
        Self(Selected::Room {
            room: room.to_owned(),
        })
    }

    /// Every connection, on every hub.
    pub fn all() -> Self {
        Self(Selected::All)
    }

    /// The one hub to ask, if the selection lives on one.
    fn node(&self) -> Option<NodeId> {
        match &self.0 {
            Selected::Id { id } => Some(id.node()),
            Selected::Room { .. } | Selected::All => None,
        }
    }
}

impl From<ConnectionId> for Connections {
    fn from(id: ConnectionId) -> Self {
        Self::id(id)
    }
}

/// Queries and orders for every hub on the broker, made by [`Hub::cluster`]; each
/// method sends one request and waits for the replies, at most for the timeout
/// ([`HubConfig::cluster_timeout`](super::HubConfig::cluster_timeout) unless
/// [`ClusterQuery::timeout`] says otherwise).
///
/// The hubs asked are those this hub knows to be alive ([`Hub::nodes`]). A hub that
/// started less than [`HubConfig::node_heartbeat`](super::HubConfig::node_heartbeat)
/// (and a quarter) ago may not have heard from every other hub yet: its queries of
/// every hub wait the whole timeout, and count every hub that replies in it.
/// Otherwise, with the in-memory broker alone, this hub is the whole cluster: every
/// answer is this hub's, complete, at once.
#[derive(Debug, Clone, Copy)]
#[must_use = "a cluster query does nothing until one of its methods is awaited"]
pub struct ClusterQuery<'a> {
    hub: &'a Hub,
    timeout: Duration,
}

impl<'a> ClusterQuery<'a> {
    fn new(hub: &'a Hub) -> Self {
        Self {
            hub,
            timeout: hub.config().cluster_timeout,
        }
    }

    /// Waits at most `timeout` for the replies, instead of
    /// [`HubConfig::cluster_timeout`](super::HubConfig::cluster_timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The connections registered on every hub ([`Hub::connection_count`] summed).
    pub async fn connection_count(&self) -> ClusterAnswer<usize> {
        self.ask(None, &Ask::ConnectionCount, 0, |sum, n: usize| *sum += n)
            .await
    }

    /// The members of `room` on every hub ([`Hub::room_size`] summed).
    pub async fn room_size(&self, room: &str) -> ClusterAnswer<usize> {
        let ask = Ask::RoomSize {
            room: room.to_owned(),
        };
        self.ask(None, &ask, 0, |sum, n: usize| *sum += n).await
    }

    /// The members of `room` on every hub, sorted by id (Socket.IO's
    /// `io.in(room).fetchSockets()`).
    pub async fn room_members(&self, room: &str) -> ClusterAnswer<Vec<ConnectionInfo>> {
        let ask = Ask::RoomMembers {
            room: room.to_owned(),
        };
        let mut answer = self
            .ask(
                None,
                &ask,
                Vec::new(),
                |all, mut some: Vec<ConnectionInfo>| {
                    all.append(&mut some);
                },
            )
            .await;
        answer.value.sort_unstable_by_key(|info| info.id);
        answer
    }

    /// The rooms that have members on any hub, with their sizes across the cluster
    /// ([`Hub::rooms`] and [`Hub::room_size`] of every hub, merged).
    pub async fn rooms(&self) -> ClusterAnswer<BTreeMap<String, usize>> {
        self.ask(
            None,
            &Ask::Rooms,
            BTreeMap::new(),
            |all, some: Vec<(String, usize)>| {
                for (room, size) in some {
                    *all.entry(room).or_default() += size;
                }
            },
        )
        .await
    }

    /// The connection `id`, asked of the hub that holds it: `None` in `value` if that
    /// hub replied that it has no such connection (it ended), or if the hub did not
    /// reply (then named in `missing`).
    pub async fn connection(&self, id: ConnectionId) -> ClusterAnswer<Option<ConnectionInfo>> {
        let ask = Ask::Connection { id };
        self.ask(Some(id.node()), &ask, None, |found, info| *found = info)
            .await
    }

    /// Makes the connections `who` join `room`, on the hubs that hold them (Socket.IO's
    /// `socketsJoin`), and waits for the hubs to acknowledge: `value` counts the
    /// connections that are members of `room` now, among those selected on the hubs
    /// that replied. A join refused (the connection ended, or is in
    /// [`HubConfig::max_rooms_per_connection`](super::HubConfig::max_rooms_per_connection)
    /// rooms) is not counted.
    ///
    /// When this returns, the joins are done on the hubs that replied; as after any
    /// join, a broadcast from another hub reaches the new members once their hub's
    /// broker has subscribed to `room` (with Redis, a round trip later).
    ///
    /// A hub that did not reply (named in `missing`) may have done the join or not; a
    /// connection whose hub is not known to be alive ([`Hub::nodes`]) is answered at
    /// once, with its hub missing and nothing done.
    pub async fn join(&self, who: impl Into<Connections>, room: &str) -> ClusterAnswer<usize> {
        let who = who.into();
        let node = who.node();
        let ask = Ask::Join {
            who: who.0,
            room: room.to_owned(),
        };
        self.ask(node, &ask, 0, |sum, n: usize| *sum += n).await
    }

    /// Makes the connections `who` leave `room` (Socket.IO's `socketsLeave`), as
    /// [`ClusterQuery::join`] does: `value` counts those that were members and left.
    pub async fn leave(&self, who: impl Into<Connections>, room: &str) -> ClusterAnswer<usize> {
        let who = who.into();
        let node = who.node();
        let ask = Ask::Leave {
            who: who.0,
            room: room.to_owned(),
        };
        self.ask(node, &ask, 0, |sum, n: usize| *sum += n).await
    }

    /// Starts the close handshake of the connections `who` with `code` and `reason`
    /// ([`Connection::close`] on the hubs that hold them; Socket.IO's
    /// `disconnectSockets`), as [`ClusterQuery::join`] does: `value` counts those whose
    /// close was started. One already closing, or a reason over 123 bytes, is not
    /// counted (see [`Connection::close`]); a code that a close frame must not carry
    /// ([`CloseCode::is_sendable`]: 1005, 1006, 1015, reserved codes) closes none.
    pub async fn disconnect(
        &self,
        who: impl Into<Connections>,
        code: CloseCode,
        reason: &str,
    ) -> ClusterAnswer<usize> {
        let who = who.into();
        let node = who.node();
        let ask = Ask::Disconnect {
            who: who.0,
            code: code.as_u16(),
            reason: reason.to_owned(),
        };
        self.ask(node, &ask, 0, |sum, n: usize| *sum += n).await
    }

    /// Asks `ask` of `to` (one hub, or every live hub), decodes each reply as an `R`
    /// and folds it into `value`.
    async fn ask<T, R: DeserializeOwned>(
        &self,
        to: Option<NodeId>,
        ask: &Ask,
        mut value: T,
        mut fold: impl FnMut(&mut T, R),
    ) -> ClusterAnswer<T> {
        let mut missing = BTreeSet::new();
        let mut replied = Vec::new();
        if let Some(node) = to.filter(|node| !self.is_alive(*node)) {
            // Gone, or never heard of: waiting for the timeout would change nothing.
            return ClusterAnswer {
                value,
                replied,
                missing: vec![node],
            };
        }
        let body = match serde_json::to_value(ask) {
            Ok(body) => body,
            // Values built here always serialize.
            Err(error) => {
                tracing::error!(%error, "a cluster query could not be encoded");
                Value::Null
            }
        };
        // A hub that started moments ago may not know every other hub yet: rather than
        // leave them out unnamed, it waits the whole timeout for whoever replies.
        let gathered = if to.is_none() && self.hub.is_young() {
            let gathered = self.hub.request_everyone_for(SERVICE, body, self.timeout);
            gathered.await
        } else {
            self.hub.request(to, SERVICE, body, self.timeout).await
        };
        missing.extend(gathered.missing);
        for (node, reply) in gathered.replies {
            match serde_json::from_value::<R>(reply) {
                Ok(reply) => {
                    fold(&mut value, reply);
                    replied.push(node);
                }
                // A hub without this service (another version) replies null: it did
                // not answer the question, so it is missing, not empty.
                Err(error) => {
                    tracing::warn!(%node, %error, "a hub's reply to a cluster query is unreadable");
                    missing.insert(node);
                }
            }
        }
        ClusterAnswer {
            value,
            replied,
            missing: missing.into_iter().collect(),
        }
    }

    fn is_alive(&self, node: NodeId) -> bool {
        node == self.hub.node() || self.hub.nodes().contains(&node)
    }
}

impl Hub {
    /// Queries and orders for every hub on the broker: the cluster-wide counterparts of
    /// [`Hub::room_size`], [`Hub::room_members`], [`Hub::rooms`],
    /// [`Hub::connection_count`], and joins, leaves and disconnections of connections
    /// held by any hub. Each answer says which hubs replied within the timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::hub::{Connections, Hub, HubConfig};
    /// use switchboard::CloseCode;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let hub = Hub::new(HubConfig::default());
    /// let size = hub.cluster().room_size("lobby").await;
    /// if size.is_complete() {
    ///     println!("{} in the lobby", size.value);
    /// } else {
    ///     println!("at least {} in the lobby ({:?} did not answer)", size.value, size.missing);
    /// }
    /// // Shorter than the default for a page that must render quickly:
    /// let rooms = hub.cluster().timeout(Duration::from_millis(200)).rooms().await;
    /// assert!(rooms.value.is_empty());
    /// // Everyone in the lobby, wherever they are connected, into the hall; then out.
    /// let moved = hub.cluster().join(Connections::in_room("lobby"), "hall").await;
    /// assert_eq!(moved.value, 0);
    /// hub.cluster()
    ///     .disconnect(Connections::in_room("hall"), CloseCode::NORMAL, "closing time")
    ///     .await;
    /// # }
    /// ```
    pub fn cluster(&self) -> ClusterQuery<'_> {
        ClusterQuery::new(self)
    }

    /// Makes this hub answer the cluster queries of the others.
    pub(crate) fn serve_queries(&self) {
        self.serve_cluster(SERVICE, Arc::new(|hub, _, body| answer(hub, body)));
    }
}

/// This hub's reply to a query or an order.
fn answer(hub: &Hub, body: Value) -> Value {
    let ask = match serde_json::from_value::<Ask>(body) {
        Ok(ask) => ask,
        Err(error) => {
            // Null: the asker names this hub missing, rather than read a wrong answer.
            tracing::warn!(%error, "ignored a malformed cluster query");
            return Value::Null;
        }
    };
    let reply = match ask {
        Ask::ConnectionCount => serde_json::to_value(hub.connection_count()),
        Ask::RoomSize { room } => serde_json::to_value(hub.room_size(&room)),
        Ask::RoomMembers { room } => {
            let members: Vec<ConnectionInfo> = hub
                .room_members(&room)
                .iter()
                .map(ConnectionInfo::of)
                .collect();
            serde_json::to_value(members)
        }
        Ask::Rooms => serde_json::to_value(room_sizes(hub)),
        Ask::Connection { id } => {
            serde_json::to_value(hub.connection(id).as_ref().map(ConnectionInfo::of))
        }
        Ask::Join { who, room } => {
            let joined = selected(hub, &who)
                .iter()
                .filter(|conn| hub.join(conn, &room))
                .count();
            serde_json::to_value(joined)
        }
        Ask::Leave { who, room } => {
            let left = selected(hub, &who)
                .iter()
                .filter(|conn| hub.leave(conn, &room))
                .count();
            serde_json::to_value(left)
        }
        Ask::Disconnect { who, code, reason } => {
            let code = CloseCode::from(code);
            // A code a close frame must not carry (1005, 1006, 1015, reserved ones; RFC
            // 6455 §7.4) would make the client fail the connection: none is closed.
            if !code.is_sendable() {
                tracing::warn!(
                    code = code.as_u16(),
                    "refused a remote disconnect with a code that cannot be sent"
                );
                return Value::from(0);
            }
            let closed = selected(hub, &who)
                .iter()
                .filter(|conn| conn.close(code, reason.clone()).is_ok())
                .count();
            serde_json::to_value(closed)
        }
    };
    reply.unwrap_or_else(|error| {
        tracing::error!(%error, "a cluster query's reply could not be encoded");
        Value::Null
    })
}

/// Every room of this hub with its size, read under one lock.
fn room_sizes(hub: &Hub) -> Vec<(String, usize)> {
    hub.read()
        .rooms
        .iter()
        .map(|(room, members)| (room.to_string(), members.len()))
        .collect()
}

/// The connections of this hub that `who` selects.
fn selected(hub: &Hub, who: &Selected) -> Vec<Connection> {
    match who {
        Selected::Id { id } => hub.connection(*id).into_iter().collect(),
        Selected::Room { room } => hub.room_members(room),
        Selected::All => hub.connections(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incomplete_answer_names_the_missing_hubs() {
        let [a, b, c] = [1, 2, 3].map(NodeId::from_bits);
        let answer = ClusterAnswer {
            value: 4,
            replied: vec![a],
            missing: vec![b, c],
        };
        assert!(!answer.is_complete());
        let error = answer.complete().unwrap_err();
        assert_eq!(error.missing, [b, c]);
        assert_eq!(
            error.to_string(),
            format!("2 of 3 hubs did not reply in time: {b}, {c}")
        );
        let whole = ClusterAnswer {
            value: 4,
            replied: vec![a],
            missing: vec![],
        };
        assert_eq!(whole.complete(), Ok(4));
    }

    #[test]
    fn a_malformed_query_is_answered_with_null() {
        let hub = Hub::new(crate::hub::HubConfig::default());
        for body in [
            Value::Null,
            serde_json::json!({"q": "nonsense"}),
            serde_json::json!({"q": "room_size"}),
        ] {
            assert_eq!(answer(&hub, body), Value::Null);
        }
        let body = serde_json::to_value(Ask::RoomSize { room: "r".into() }).unwrap();
        assert_eq!(answer(&hub, body), serde_json::json!(0));
    }
}
