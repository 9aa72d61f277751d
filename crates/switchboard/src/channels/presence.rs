//! Presence: who is on a topic, by key (a user id), with metadata per socket, in the
//! shape phoenix.js `Presence` reads, across every hub of the broker.
//!
//! A key may be tracked by several sockets at once (tabs, devices); each tracking is a
//! "meta" with its own `phx_ref`. Clients get the whole state once, as a
//! `presence_state` push the channel sends on join, and then `presence_diff`
//! broadcasts:
//!
//! ```text
//! presence_state: {"ann": {"metas": [{"phx_ref": "F1", "device": "phone"}, {"phx_ref": "F2", …}]}}
//! presence_diff:  {"joins": {"bob": {"metas": [{"phx_ref": "F3", …}]}}, "leaves": {}}
//! ```
//!
//! # Across hubs
//!
//! As in Phoenix.Tracker, each hub owns the entries of its own sockets and keeps a
//! replica of every other hub's (see `tracker.rs`), so that [`Presence::list`] and
//! `presence_state` answer for the whole cluster without asking anyone.
//!
//! - A hub's changes are batched for [`ChannelsConfig::presence_batch`]; each batch
//!   is broadcast to the hub's own subscribers and cast, numbered, to the other hubs,
//!   which apply it to their replica and broadcast what it changed to their own
//!   subscribers. Diffs never travel as broadcasts over the broker: each subscriber
//!   gets each change once, from its own hub, in the order its hub's list changed.
//! - A hub that goodbyes, or is silent for
//!   [`HubConfig::node_timeout`](crate::hub::HubConfig::node_timeout), is dropped:
//!   every other hub broadcasts the leaves of its entries. A restarted process is a
//!   new node, so nothing of the old one lingers.
//! - A hub heard of for the first time (a late joiner, or one back after being taken
//!   for dead), or whose casts were missed (a broker outage), is asked for a snapshot
//!   of its entries, which replaces its replica; the difference is broadcast as
//!   diffs. Requests are repeated every `node_timeout` until answered.
//!
//! A socket whose join is running is not subscribed yet; the diffs broadcast
//! meanwhile are held for it and sent after its ok reply, so that every change after
//! its `presence_state` reaches it exactly once, from one path or the other.
//!
//! [`ChannelsConfig::presence_batch`]: super::ChannelsConfig::presence_batch

use super::{
    Endpoint, Payload, Shared, Socket, intercept, protocol, room_name, socket::WeakSocket,
    tracker::Tracker,
};
use crate::{
    hub::{
        BroadcastReport, Connection, Hub, JoinError, NodeId, PeerEvent, Position, Recovery, Target,
    },
    sync::{lock, read},
};
use serde_json::{Value, json};
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

/// The name of presence's cluster service (see `hub/cluster.rs`).
const SERVICE: &str = "presence";

/// The event of the full state, pushed to a socket that joined.
pub const PRESENCE_STATE: &str = "presence_state";
/// The event of a change, broadcast to a topic.
pub const PRESENCE_DIFF: &str = "presence_diff";

/// Why a presence could not be tracked or updated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// Metadata must be a JSON object (phoenix.js adds `phx_ref` to it).
    #[error("presence metadata must be a json object")]
    NotAnObject,
    /// This socket already tracks this key on this topic (`Phoenix.Presence.track`
    /// answers `{:error, {:already_tracked, …}}` too); use [`Presence::update`].
    #[error("key already tracked by this socket")]
    AlreadyTracked,
    /// This socket does not track this key on this topic.
    #[error("key not tracked by this socket")]
    NotTracked,
    /// The channel is closed.
    #[error("channel is closed")]
    Closed,
}

/// The presence of a hub's channels, across the hubs of its broker: track, update,
/// untrack, list.
///
/// Obtained from [`Endpoint::presence`] or [`Socket::presence`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct Presence {
    endpoint: Endpoint,
}

/// Presence's state inside an endpoint.
#[derive(Debug)]
pub(crate) struct PresenceState {
    inner: Mutex<Inner>,
    /// Sockets whose join runs, by topic: not yet subscribed, they get the diffs held.
    /// Locked for the whole of a delivery and of a subscription, so that a socket gets
    /// each diff either through the room or held, never both, never neither.
    joining: Mutex<HashMap<String, Vec<WeakSocket>>>,
}

#[derive(Debug)]
struct Inner {
    tracker: Tracker,
    /// Diffs for the local subscribers, in the order the tracker made them, delivered
    /// outside this lock, so that a `handle_out` may read the presence.
    outbox: Ordered<(String, Value)>,
    /// Messages for the other hubs, in order, sent outside this lock: a broker may
    /// deliver in place (`MemoryNetwork` does), and the peer's answer comes back into
    /// this hub's presence before the publish returns.
    wire: Ordered<Wire>,
    /// A flush is scheduled for the end of the current batch.
    flushing: bool,
    batch: Duration,
    /// Snapshots asked for and not yet received, by hub, with the ask's number.
    syncs: HashMap<NodeId, u64>,
    asked: u64,
}

/// A queue that one task at a time empties, in order, outside the presence lock; the
/// others only add to it.
#[derive(Debug)]
struct Ordered<T> {
    queue: VecDeque<T>,
    /// A task is emptying it.
    busy: bool,
}

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            busy: false,
        }
    }
}

/// A message of presence for the other hubs.
#[derive(Debug)]
enum Wire {
    /// A batch, to every hub.
    Cast(Value),
    /// A snapshot or a request for one, to one hub.
    To(NodeId, Value),
}

impl PresenceState {
    pub(crate) fn new(batch: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                tracker: Tracker::default(),
                outbox: Ordered::default(),
                wire: Ordered::default(),
                flushing: false,
                batch,
                syncs: HashMap::new(),
                asked: 0,
            }),
            joining: Mutex::default(),
        }
    }

    /// This hub's own entries (the `switchboard_presence_entries` gauge).
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).tracker.len()
    }

    pub(crate) fn set_batch(&self, batch: Duration) {
        lock(&self.inner).batch = batch;
    }
}

impl Presence {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    /// Tracks `key` for this socket's topic with `meta` (a JSON object); the join goes
    /// to every subscriber of the topic on every hub in the next `presence_diff`
    /// (within [`ChannelsConfig::presence_batch`](super::ChannelsConfig::presence_batch)).
    /// Returns the meta's `phx_ref`.
    ///
    /// Called inside [`Channel::join`](super::Channel::join), the joining client gets
    /// the diff too, after its ok reply; if the join fails, the key is untracked and
    /// nobody is told of it (or told of its leave, if the batch left meanwhile). The
    /// presence ends when the channel does (leave, stop, crash, close, timeout).
    pub fn track(
        &self,
        socket: &Socket,
        key: impl Into<String>,
        meta: Value,
    ) -> Result<String, PresenceError> {
        let Value::Object(meta) = meta else {
            return Err(PresenceError::NotAnObject);
        };
        if socket.is_closed() {
            return Err(PresenceError::Closed);
        }
        let phx_ref = new_ref();
        let (topic, id) = (socket.topic(), socket.id());
        self.inner()
            .tracker
            .track(topic, id, key.into(), meta, phx_ref.clone())?;
        self.changed(socket);
        Ok(phx_ref)
    }

    /// Replaces the meta this socket tracks for `key`; the diff carries the old meta in
    /// `leaves` and the new one in `joins`, with `phx_ref_prev` naming the old.
    pub fn update(&self, socket: &Socket, key: &str, meta: Value) -> Result<String, PresenceError> {
        let Value::Object(meta) = meta else {
            return Err(PresenceError::NotAnObject);
        };
        let phx_ref = new_ref();
        let (topic, id) = (socket.topic(), socket.id());
        self.inner()
            .tracker
            .update(topic, id, key, meta, phx_ref.clone())?;
        self.changed(socket);
        Ok(phx_ref)
    }

    /// Stops tracking `key` for this socket; returns whether it was tracked.
    pub fn untrack(&self, socket: &Socket, key: &str) -> bool {
        let left = self
            .inner()
            .tracker
            .untrack(socket.topic(), socket.id(), key);
        if left {
            self.schedule();
        }
        left
    }

    /// Everyone on `topic` on every hub of the broker, as this hub's replica has it:
    /// `{key: {"metas": [meta, …]}}`, the `presence_state` payload. It includes this
    /// hub's changes still waiting for their batch.
    pub fn list(&self, topic: &str) -> Value {
        let own = self.hub().node();
        self.inner().tracker.list(topic, own)
    }

    /// Untracks every key of a channel that ended, and tells the others.
    pub(crate) fn untrack_socket(&self, socket: &Socket) {
        self.unregister(socket);
        if self
            .inner()
            .tracker
            .untrack_all(socket.topic(), socket.id())
        {
            self.schedule();
        }
    }

    /// Forgets a failed join's presences: nobody is told of them, unless their batch
    /// already left (then of their leaves).
    pub(crate) fn forget_socket(&self, socket: &Socket) {
        self.unregister(socket);
        self.inner().tracker.forget_all(socket.topic(), socket.id());
        self.schedule();
    }

    /// Notes that `socket`'s join runs: the diffs delivered until it is subscribed
    /// are held for it.
    pub(crate) fn joining(&self, socket: &Socket) {
        let mut joining = lock(&self.state().joining);
        let sockets = joining.entry(socket.topic().to_owned()).or_default();
        // Sockets dropped without an end (a task cancelled mid-join) go here.
        sockets.retain(|weak| weak.upgrade().is_some());
        sockets.push(socket.downgrade());
    }

    /// Subscribes a socket whose join succeeded to its topic's room, atomically with
    /// the deliveries of diffs (see [`PresenceState::joining`]).
    pub(crate) fn subscribe(&self, socket: &Socket, conn: &Connection) -> Result<(), JoinError> {
        let mut joining = lock(&self.state().joining);
        let subscribed = conn.try_join(&room_name(socket.topic()));
        remove_joining(&mut joining, socket);
        subscribed
    }

    /// Subscribes a socket whose join succeeded to its topic's stream room from `since`
    /// (see [`Hub::join_from_then`]), with `before` (the join reply) run before the
    /// messages it missed. The room join and the end of the held diffs happen at once,
    /// under the lock of [`PresenceState::joining`] as in [`Presence::subscribe`]: each
    /// diff reaches the socket once, through the room or held, in order.
    pub(crate) async fn subscribe_from(
        &self,
        socket: &Socket,
        conn: &Connection,
        since: Option<Position>,
        before: impl FnOnce(&Recovery) + Send,
    ) -> Result<Recovery, JoinError> {
        let room = room_name(socket.topic());
        let join = || {
            let mut joining = lock(&self.state().joining);
            let subscribed = conn.try_join(&room);
            remove_joining(&mut joining, socket);
            subscribed
        };
        let result = conn
            .hub()
            .join_from_then(conn, &room, since, join, before)
            .await;
        // A join that failed before the room join (the engine, a limit) holds no more.
        self.unregister(socket);
        result
    }

    fn unregister(&self, socket: &Socket) {
        remove_joining(&mut lock(&self.state().joining), socket);
    }

    /// After a change by `socket`: a channel that closed meanwhile has already
    /// untracked; a late change must neither linger nor be announced.
    fn changed(&self, socket: &Socket) {
        if socket.is_closed() {
            self.inner().tracker.forget_all(socket.topic(), socket.id());
        }
        self.schedule();
    }

    /// Flushes the pending changes at the end of the batch: now if batching is off
    /// or there is no runtime to wait in.
    fn schedule(&self) {
        let batch = {
            let mut inner = self.inner();
            if inner.flushing {
                return;
            }
            if !inner.batch.is_zero() && tokio::runtime::Handle::try_current().is_ok() {
                inner.flushing = true;
            }
            inner.batch
        };
        if batch.is_zero() || tokio::runtime::Handle::try_current().is_err() {
            self.flush();
            return;
        }
        let shared = Arc::downgrade(&self.endpoint.shared);
        tokio::spawn(async move {
            tokio::time::sleep(batch).await;
            if let Some(presence) = upgrade(&shared) {
                presence.flush();
            }
        });
    }

    /// Hands the pending changes out: cast to the other hubs and delivered here.
    fn flush(&self) {
        let mut inner = self.inner();
        inner.flushing = false;
        let Some(batch) = inner.tracker.take_batch() else {
            return;
        };
        let topics: serde_json::Map<String, Value> = batch.diffs.iter().cloned().collect();
        // Queued under the lock: the hubs get the batches, and snapshots, in order.
        let body = json!({"t": "diff", "v": batch.version, "topics": topics});
        inner.wire.queue.push_back(Wire::Cast(body));
        self.deliver(inner, batch.diffs);
    }

    /// Queues `diffs` for the local subscribers, releases the lock, and sends what is
    /// queued for the other hubs and the local subscribers, unless other tasks are at
    /// it (which then send these too, in order).
    fn deliver(&self, mut inner: MutexGuard<'_, Inner>, diffs: Vec<(String, Value)>) {
        inner.outbox.queue.extend(diffs);
        drop(inner);
        self.send_wire();
        self.drain_outbox();
    }

    fn send_wire(&self) {
        self.empty_in_order(
            |inner| &mut inner.wire,
            |next| match next {
                Wire::Cast(body) => self.hub().cast(SERVICE, body),
                Wire::To(node, body) => self.hub().send_to_node(node, SERVICE, body),
            },
        );
    }

    fn drain_outbox(&self) {
        self.empty_in_order(
            |inner| &mut inner.outbox,
            |(topic, diff)| self.deliver_one(&topic, diff),
        );
    }

    /// Hands what `queue` holds to `each`, in order and outside the lock, unless another
    /// task is at it (which then hands on what was added meanwhile too).
    fn empty_in_order<T>(&self, queue: fn(&mut Inner) -> &mut Ordered<T>, mut each: impl FnMut(T)) {
        {
            let mut inner = self.inner();
            let ordered = queue(&mut inner);
            if ordered.busy || ordered.queue.is_empty() {
                return;
            }
            ordered.busy = true;
        }
        loop {
            let next = {
                let mut inner = self.inner();
                let ordered = queue(&mut inner);
                match ordered.queue.pop_front() {
                    Some(next) => next,
                    None => {
                        ordered.busy = false;
                        return;
                    }
                }
            };
            each(next);
        }
    }

    /// One diff to the subscribers of `topic` on this hub, and to its joining sockets.
    fn deliver_one(&self, topic: &str, diff: Value) {
        let joining = lock(&self.state().joining);
        let payload = Payload::Json(diff);
        self.local_broadcast(topic, &payload);
        let Payload::Json(diff) = &payload else {
            return;
        };
        for socket in joining.get(topic).into_iter().flatten() {
            if let Some(socket) = socket.upgrade() {
                socket.defer_broadcast(PRESENCE_DIFF, diff);
            }
        }
    }

    /// [`Endpoint::broadcast`] to this hub's subscribers only: the other hubs make
    /// their own diffs from the cast.
    fn local_broadcast(&self, topic: &str, payload: &Payload) -> BroadcastReport {
        let message = match protocol::encode_broadcast(topic, PRESENCE_DIFF, payload) {
            Ok(message) => message,
            // A JSON payload always encodes.
            Err(error) => {
                tracing::warn!(%error, topic, "presence diff could not be encoded");
                return BroadcastReport::default();
            }
        };
        let room = room_name(topic);
        let hub = self.hub();
        if read(&self.endpoint.shared.intercepted).contains(PRESENCE_DIFF) {
            return intercept::deliver_intercepted(
                hub,
                None,
                &room,
                topic,
                PRESENCE_DIFF,
                payload,
                message,
            );
        }
        hub.deliver_here(Target::Room(room), message)
    }

    /// A message of presence on another hub.
    fn receive(&self, from: NodeId, body: &Value) {
        let topics = body.get("topics").and_then(Value::as_object);
        let version = body.get("v").and_then(Value::as_u64);
        match (body.get("t").and_then(Value::as_str), version, topics) {
            (Some("diff"), Some(version), Some(topics)) => {
                let mut inner = self.inner();
                let (diffs, missed) = inner.tracker.apply_cast(from, version, topics);
                if missed {
                    self.ask_snapshot(&mut inner, from);
                }
                self.deliver(inner, diffs);
            }
            (Some("state"), Some(version), Some(topics)) => {
                let mut inner = self.inner();
                if let Some(diffs) = inner.tracker.replace(from, version, topics) {
                    inner.syncs.remove(&from);
                    self.deliver(inner, diffs);
                }
            }
            (Some("sync"), ..) => {
                let mut inner = self.inner();
                let (version, topics) = inner.tracker.snapshot();
                // Queued under the lock: ordered with this hub's batches (see `flush`).
                let body = json!({"t": "state", "v": version, "topics": topics});
                inner.wire.queue.push_back(Wire::To(from, body));
                self.deliver(inner, Vec::new());
            }
            _ => tracing::debug!(%from, "ignored a malformed presence message"),
        }
    }

    fn peer_event(&self, event: PeerEvent) {
        match event {
            PeerEvent::Up(node) | PeerEvent::Gap(node) => {
                let mut inner = self.inner();
                self.ask_snapshot(&mut inner, node);
                self.deliver(inner, Vec::new());
            }
            PeerEvent::Down(node) => {
                let mut inner = self.inner();
                inner.syncs.remove(&node);
                let diffs = inner.tracker.drop_node(node);
                self.deliver(inner, diffs);
            }
        }
    }

    /// Asks `node` for a snapshot of its entries, again every `node_timeout` until one
    /// arrives or the node is gone.
    fn ask_snapshot(&self, inner: &mut Inner, node: NodeId) {
        inner.asked += 1;
        let ask = inner.asked;
        inner.syncs.insert(node, ask);
        inner
            .wire
            .queue
            .push_back(Wire::To(node, json!({"t": "sync"})));
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let retry = self.hub().config().node_timeout;
        let shared = Arc::downgrade(&self.endpoint.shared);
        tokio::spawn(async move {
            tokio::time::sleep(retry).await;
            let Some(presence) = upgrade(&shared) else {
                return;
            };
            let alive = presence.hub().nodes().contains(&node);
            let mut inner = presence.inner();
            if alive && inner.syncs.get(&node) == Some(&ask) {
                tracing::debug!(%node, "presence snapshot not received: asking again");
                presence.ask_snapshot(&mut inner, node);
            }
            presence.deliver(inner, Vec::new());
        });
    }

    fn hub(&self) -> &Hub {
        &self.endpoint.shared.hub
    }

    fn state(&self) -> &PresenceState {
        &self.endpoint.shared.presence
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.state().inner)
    }
}

fn remove_joining(joining: &mut HashMap<String, Vec<WeakSocket>>, socket: &Socket) {
    if let Some(sockets) = joining.get_mut(socket.topic()) {
        sockets.retain(|weak| weak.upgrade().is_some_and(|s| !s.same(socket)));
        if sockets.is_empty() {
            joining.remove(socket.topic());
        }
    }
}

fn upgrade(shared: &Weak<Shared>) -> Option<Presence> {
    let shared = shared.upgrade()?;
    Some(Presence::new(Endpoint { shared }))
}

/// Makes the endpoint's presence a member of the cluster: it answers the other hubs'
/// presence messages and follows their comings and goings. One endpoint per hub does
/// (the last one made): presence is a service of the hub.
pub(crate) fn join_cluster(shared: &Arc<Shared>) {
    let hub = shared.hub.clone();
    let weak = Arc::downgrade(shared);
    hub.serve_cluster(
        SERVICE,
        Arc::new(move |_: &Hub, from, body| {
            if let Some(presence) = upgrade(&weak) {
                presence.receive(from, &body);
            }
            Value::Null
        }),
    );
    let weak = Arc::downgrade(shared);
    hub.on_peer_event(Arc::new(move |_: &Hub, event| {
        if let Some(presence) = upgrade(&weak) {
            presence.peer_event(event);
        }
    }));
}

/// A fresh `phx_ref`. Clients compare refs only for equality; 64 random bits keep them
/// apart across restarts and hubs, when clients still hold refs from before.
fn new_ref() -> String {
    format!("F{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_are_distinct() {
        assert_ne!(new_ref(), new_ref());
    }
}
