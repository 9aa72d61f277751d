//! The handle a channel callback holds: [`Socket`], one joined channel of one client
//! socket, with its assigns and its pushes.
//!
//! A channel's life has three phases (joining, joined, closed), and its pushes depend
//! on the phase: while `join` runs they are held (a client must see the ok reply
//! before anything else of the topic), once joined they go straight out, once closed
//! they are refused (counted on the connection, or returned by [`Socket::try_push`]). The phase lives here, beside the pushes it governs; what moves a channel
//! from one phase to the next is the socket's handler (`handler.rs`).

use super::{
    Endpoint, Payload, Presence,
    protocol::{self, EncodeError},
};
use crate::{
    Message,
    hub::{Assigns, BroadcastReport, Connection, ConnectionId, Outgoing, Unsent},
    sync::lock,
};
use serde_json::Value;
use std::{
    fmt,
    sync::{Arc, Mutex, Weak},
};

/// The `{name}` segments a topic pattern captured.
pub(super) type Params = Vec<(String, String)>;

/// One joined channel of a socket, as the channel handler sees it: the topic, the join
/// ref, the connection, and the assigns. Cheap to clone; clones share state, so a task
/// may keep one to push later.
///
/// # Assigns
///
/// A channel reads its connection's assigns (what middleware inserted into the upgrade
/// request, what [`Channels::connect`](super::Channels::connect) assigned, what
/// [`Connection::assign`] set since), under assigns of its own, as a Phoenix channel
/// starts from its socket's assigns and assigns on its own copy:
///
/// - [`Socket::assigned`] looks in the channel's own assigns first, then in the
///   connection's, at the time of the call (a value the connection gets later is seen);
/// - [`Socket::assign`] and [`Socket::with_assigns`] set and change the channel's own
///   assigns only: the socket's other channels do not see them, and they shadow a
///   value of the same type in the connection's for this channel;
/// - to change what every channel of the socket sees, assign on the connection:
///   `socket.connection().assign(value)`.
#[derive(Clone)]
pub struct Socket {
    inner: Arc<SocketInner>,
}

/// A [`Socket`] that does not keep its channel alive: presence notes the sockets
/// whose join runs with these, so that one whose task was dropped mid-join goes away.
#[derive(Clone, Debug)]
pub(crate) struct WeakSocket(Weak<SocketInner>);

impl WeakSocket {
    pub(crate) fn upgrade(&self) -> Option<Socket> {
        self.0.upgrade().map(|inner| Socket { inner })
    }
}

struct SocketInner {
    conn: Connection,
    topic: String,
    join_ref: Option<String>,
    params: Params,
    /// The channel's own assigns, over the connection's.
    assigns: Mutex<Assigns>,
    phase: Mutex<Phase>,
    endpoint: Endpoint,
}

/// Where a channel is in its life.
enum Phase {
    /// `join` is running: pushes and presence diffs wait for the ok reply.
    Joining(Held),
    Joined,
    Closed,
}

/// What a running join sent, held until its ok reply.
///
/// The held messages are the connection's outbound queue in waiting, so they count in
/// its buffer from the moment they are held (in `buffered_amount`, against the hub's
/// `max_buffered_bytes`, beside what the connection has queued) and get its policy:
/// past the bound a message is dropped and counted (and with `BufferPolicy::Close`
/// the socket is closed with 1008), as if the join had sent it straight to a stalled
/// client. Failing the join instead would punish the client for what the server's own
/// callback did. Their bytes are given back when they leave the hold (sent after the
/// ok reply, or dropped with the channel).
struct Held {
    conn: Connection,
    items: Vec<Deferred>,
    bytes: usize,
}

enum Deferred {
    Push(Message),
    /// A broadcast this socket was not subscribed for yet (a presence diff): sent to
    /// it alone, as the subscribers got it already.
    Broadcast(&'static str, Value),
}

impl Held {
    fn new(conn: Connection) -> Self {
        Self {
            conn,
            items: Vec::new(),
            bytes: 0,
        }
    }

    /// Holds `item`, which takes `len` bytes, unless that passes the connection's bound.
    fn hold(&mut self, item: Deferred, len: usize) -> Result<(), Unsent> {
        self.conn.reserve(len)?;
        self.bytes += len;
        self.items.push(item);
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.conn.release(self.bytes);
    }
}

/// A push a socket did not send, with its payload handed back to the caller, who may
/// retry it (as tokio's `mpsc::error::TrySendError<T>` hands back its `T`).
///
/// Returned by [`Socket::try_push`]; a [`Socket::push`] meets the same failures and
/// counts them on the connection ([`Connection::dropped_messages`] for
/// [`PushError::Dropped`], [`Connection::refused_messages`] for [`PushError::Closed`])
/// and the hub.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The message could not be encoded (a binary header field over 255 bytes).
    #[error("{error}")]
    Encode {
        /// What did not fit.
        error: EncodeError,
        /// The payload that was not sent.
        payload: Payload,
    },
    /// The connection's buffer policy dropped it (see
    /// [`SendError::Dropped`](crate::hub::SendError::Dropped)).
    #[error("outbound buffer full: push dropped")]
    Dropped(Payload),
    /// The channel has ended (left, stopped, crashed, or its join was refused), or its
    /// connection is closing.
    #[error("channel is closed")]
    Closed(Payload),
}

impl PushError {
    /// The payload that was not sent.
    pub fn payload(&self) -> &Payload {
        match self {
            Self::Encode { payload, .. } | Self::Dropped(payload) | Self::Closed(payload) => {
                payload
            }
        }
    }

    /// The payload that was not sent, to retry it or send it elsewhere.
    pub fn into_payload(self) -> Payload {
        match self {
            Self::Encode { payload, .. } | Self::Dropped(payload) | Self::Closed(payload) => {
                payload
            }
        }
    }

    fn new(unsent: Unsent, payload: Payload) -> Self {
        match unsent {
            Unsent::Closed => Self::Closed(payload),
            Unsent::Dropped => Self::Dropped(payload),
        }
    }
}

impl Socket {
    pub(super) fn new(
        conn: Connection,
        topic: String,
        join_ref: Option<String>,
        params: Params,
        endpoint: Endpoint,
    ) -> Self {
        Self {
            inner: Arc::new(SocketInner {
                conn: conn.clone(),
                topic,
                join_ref,
                params,
                assigns: Mutex::default(),
                phase: Mutex::new(Phase::Joining(Held::new(conn))),
                endpoint,
            }),
        }
    }

    /// The topic, e.g. `room:lobby`.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// A `{name}` segment of the channel's topic pattern, e.g. `id` for `user:{id}`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.inner
            .params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `ref` of the join that opened this channel; pushes carry it.
    pub fn join_ref(&self) -> Option<&str> {
        self.inner.join_ref.as_deref()
    }

    /// The socket's id on the hub.
    pub fn id(&self) -> ConnectionId {
        self.inner.conn.id()
    }

    /// The hub connection under this socket (shared by all its channels).
    pub fn connection(&self) -> &Connection {
        &self.inner.conn
    }

    /// The endpoint, for broadcasts to other topics.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The endpoint's presence.
    pub fn presence(&self) -> Presence {
        self.inner.endpoint.presence()
    }

    /// Sets an assign of this channel (replacing one of the same type in the channel's
    /// own assigns, and shadowing one in the connection's): see [`Socket`]'s
    /// assigns.
    pub fn assign<T: Clone + Send + Sync + 'static>(&self, value: T) {
        lock(&self.inner.assigns).insert(value);
    }

    /// A copy of an assign: the channel's own, else its connection's.
    pub fn assigned<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        let own = lock(&self.inner.assigns).get::<T>().cloned();
        own.or_else(|| self.inner.conn.assigned::<T>())
    }

    /// Reads or changes the channel's own assigns in place (not the connection's:
    /// [`Connection::with_assigns`] for those). The lock is held for `f` only: do not
    /// call back into this socket's assigns from it.
    pub fn with_assigns<R>(&self, f: impl FnOnce(&mut Assigns) -> R) -> R {
        f(&mut lock(&self.inner.assigns))
    }

    /// Sends `event` to this socket only (Phoenix `push`): `[join_ref, null, topic,
    /// event, payload]`. Inside [`Channel::join`](super::Channel::join), the push leaves
    /// right after the ok reply.
    ///
    /// Fire-and-forget, as Phoenix's `push` is: a push not sent is counted on the
    /// connection (see [`PushError`]), or for one that cannot be encoded, logged. To
    /// get the payload back instead, use [`Socket::try_push`].
    pub fn push(&self, event: &str, payload: impl Into<Payload>) {
        if let Err(PushError::Encode { error, .. }) = self.try_push(event, payload) {
            tracing::warn!(%error, topic = self.topic(), event, "push could not be encoded");
        }
    }

    /// [`Socket::push`], or the payload back in the error when the push was not sent:
    /// the channel or its connection has ended, the buffer policy dropped it, or it
    /// could not be encoded.
    pub fn try_push(&self, event: &str, payload: impl Into<Payload>) -> Result<(), PushError> {
        let payload = payload.into();
        let message = match protocol::encode_push(self.join_ref(), self.topic(), event, &payload) {
            Ok(message) => message,
            Err(error) => return Err(PushError::Encode { error, payload }),
        };
        let mut phase = lock(&self.inner.phase);
        let sent = match &mut *phase {
            Phase::Joining(held) => {
                let len = message.len();
                held.hold(Deferred::Push(message), len)
            }
            Phase::Joined => self.inner.conn.enqueue(&Outgoing::new(message)),
            Phase::Closed => Err(self.inner.conn.count_refused()),
        };
        sent.map_err(|unsent| PushError::new(unsent, payload))
    }

    /// Sends `event` to every subscriber of this topic, this socket included (Phoenix
    /// `broadcast`); encoded once for all. Fire-and-forget, as
    /// [`Endpoint::broadcast`] is.
    pub fn broadcast(&self, event: &str, payload: impl Into<Payload>) -> BroadcastReport {
        self.inner.endpoint.broadcast(self.topic(), event, payload)
    }

    /// [`Socket::broadcast`], or the encoding error (see [`Endpoint::try_broadcast`]).
    pub fn try_broadcast(
        &self,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<BroadcastReport, EncodeError> {
        self.inner
            .endpoint
            .try_broadcast(self.topic(), event, payload)
    }

    /// Sends `event` to every subscriber of this topic but this socket (Phoenix
    /// `broadcast_from`). Fire-and-forget, as [`Endpoint::broadcast`] is.
    pub fn broadcast_from(&self, event: &str, payload: impl Into<Payload>) -> BroadcastReport {
        self.inner
            .endpoint
            .broadcast_from(self.id(), self.topic(), event, payload)
    }

    /// [`Socket::broadcast_from`], or the encoding error (see
    /// [`Endpoint::try_broadcast`]).
    pub fn try_broadcast_from(
        &self,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<BroadcastReport, EncodeError> {
        self.inner
            .endpoint
            .try_broadcast_from(self.id(), self.topic(), event, payload)
    }

    /// Whether the channel has ended.
    pub fn is_closed(&self) -> bool {
        matches!(*lock(&self.inner.phase), Phase::Closed)
    }

    pub(crate) fn downgrade(&self) -> WeakSocket {
        WeakSocket(Arc::downgrade(&self.inner))
    }

    /// Whether both are the same channel of the same socket.
    pub(crate) fn same(&self, other: &Socket) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Holds a broadcast until the join succeeds (or drops it past the bound, see
    /// [`Held`]); `false` when no join is running.
    pub(crate) fn defer_broadcast(&self, event: &'static str, payload: &Value) -> bool {
        match &mut *lock(&self.inner.phase) {
            Phase::Joining(held) => {
                let item = Deferred::Broadcast(event, payload.clone());
                // Not held past the bound: counted on the connection, as a broadcast
                // dropped by the buffer policy is.
                let _ = held.hold(item, json_len(payload));
                true
            }
            _ => false,
        }
    }

    /// The join succeeded and the socket is subscribed: sends what waited for it, the
    /// pushes first (so that `presence_state` precedes the diffs, whichever order the
    /// join made them in), then the broadcasts, each in order.
    pub(super) fn joined(&self) {
        let deferred = {
            let mut phase = lock(&self.inner.phase);
            match std::mem::replace(&mut *phase, Phase::Joined) {
                // The hold gives its bytes back as it drops here, before its messages
                // are sent (and counted) again.
                Phase::Joining(mut held) => std::mem::take(&mut held.items),
                other => {
                    *phase = other;
                    return;
                }
            }
        };
        let (pushes, broadcasts): (Vec<_>, Vec<_>) = deferred
            .into_iter()
            .partition(|item| matches!(item, Deferred::Push(_)));
        for item in pushes.into_iter().chain(broadcasts) {
            match item {
                Deferred::Push(message) => self.inner.conn.send(message),
                Deferred::Broadcast(event, payload) => {
                    match protocol::encode_broadcast(self.topic(), event, &Payload::Json(payload)) {
                        Ok(message) => self.inner.conn.send(message),
                        // A JSON payload always encodes.
                        Err(error) => {
                            tracing::warn!(%error, event, "held broadcast could not be encoded")
                        }
                    }
                }
            }
        }
    }

    pub(super) fn close(&self) {
        *lock(&self.inner.phase) = Phase::Closed;
    }
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.id())
            .field("topic", &self.topic())
            .field("join_ref", &self.join_ref())
            .finish_non_exhaustive()
    }
}

/// The bytes `value` takes as JSON, counted without writing it anywhere.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
