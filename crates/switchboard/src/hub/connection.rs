//! The handle to one connection: identity, state, metadata, sends from any task.

use super::{
    Assigns, BufferPolicy, ConnectionId, Hub, Outgoing,
    outgoing::{Queued, Stamp},
};
use crate::{sync::lock, ws::OutboxClose};
use atomic_waker::AtomicWaker;
use std::{
    collections::VecDeque,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU8, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard_proto::{
    CloseCode, CloseFrame, Frame, Message, Utf8Bytes, close::MAX_REASON_LEN,
    deflate::DeflateParams, frame::MAX_CONTROL_PAYLOAD,
};
use tracing::Span;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Registered, `on_open` not finished: the client has not had its 101 yet.
    Connecting,
    /// Messages flow.
    Open,
    /// A close frame was sent or received; the close handshake is under way.
    Closing,
    /// Ended; sends are refused.
    Closed,
}

impl ConnectionState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Connecting,
            1 => Self::Open,
            2 => Self::Closing,
            _ => Self::Closed,
        }
    }
}

/// A message a connection did not queue, handed back to the caller, who may retry it or
/// send it elsewhere (as tokio's `mpsc::error::TrySendError<T>` hands back its `T`).
///
/// Returned by the `try_` sends ([`Connection::try_send`]) and by the control sends
/// ([`Connection::send_ping`], [`Connection::send_pong`], [`Connection::close`]). Every
/// such failure is also counted, whichever send met it: a [`SendError::Dropped`] in
/// [`Connection::dropped_messages`], the others in [`Connection::refused_messages`],
/// and both in [`HubMetrics`](super::HubMetrics).
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closing or closed.
    #[error("connection is closed")]
    Closed(Message),
    /// The connection's outbound buffer is full and the policy dropped the message
    /// (with [`BufferPolicy::Close`], the connection is also being closed with 1008).
    #[error("outbound buffer full: message dropped")]
    Dropped(Message),
    /// A ping, pong or close payload over 125 bytes (RFC 6455 §5.5): nothing was sent,
    /// and nothing was cut to fit.
    #[error("control frame payload of {} bytes exceeds 125", .0.len())]
    ControlFrameTooLong(Message),
}

impl SendError {
    /// The message that was not sent.
    pub fn message(&self) -> &Message {
        match self {
            Self::Closed(message) | Self::Dropped(message) | Self::ControlFrameTooLong(message) => {
                message
            }
        }
    }

    /// The message that was not sent, to retry it or send it elsewhere.
    pub fn into_message(self) -> Message {
        match self {
            Self::Closed(message) | Self::Dropped(message) | Self::ControlFrameTooLong(message) => {
                message
            }
        }
    }

    pub(crate) fn new(unsent: Unsent, message: Message) -> Self {
        match unsent {
            Unsent::Closed => Self::Closed(message),
            Unsent::Dropped => Self::Dropped(message),
        }
    }
}

/// Prints the message's kind and size, not its payload, which may be large or private
/// (tokio's `SendError<T>` prints no `T` for the same reason).
impl fmt::Debug for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let variant = match self {
            Self::Closed(_) => "Closed",
            Self::Dropped(_) => "Dropped",
            Self::ControlFrameTooLong(_) => "ControlFrameTooLong",
        };
        let message = self.message();
        f.debug_struct(variant)
            .field("opcode", &message.opcode())
            .field("len", &message.len())
            .finish_non_exhaustive()
    }
}

/// Why a connection did not join a room ([`Connection::try_join`], [`Hub::try_join`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The connection has ended (after its `on_close`), or belongs to another hub.
    #[error("connection is closed")]
    Closed,
    /// The connection is in
    /// [`HubConfig::max_rooms_per_connection`](super::HubConfig::max_rooms_per_connection)
    /// rooms already.
    #[error("too many rooms")]
    TooManyRooms,
    /// [`Connection::join_from`] on a room that keeps no history (no
    /// [`HubConfig::history`](super::HubConfig::history) pattern names it): nothing
    /// changed.
    #[error("this room keeps no history")]
    NoHistory,
    /// [`Connection::join_from`] by a member of the room: it stays one, gets nothing
    /// replayed, and no recovery is counted. (A connection that becomes a member
    /// while its `join_from` waits for the engine gets `Ok` with
    /// [`Recovery::recovered`](super::Recovery::recovered) `false`, not counted
    /// either.)
    #[error("already a member of this room")]
    AlreadyMember,
}

/// Why the hub did not queue a message, before the message is handed back (a
/// broadcast's recipients share one encoding, which no single one of them owns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unsent {
    /// Counted in `refused_messages`.
    Closed,
    /// Counted in `dropped_messages`.
    Dropped,
}

/// Frames queued by senders, taken by the connection task.
#[derive(Debug, Default)]
pub(crate) struct Outbound {
    pub(crate) frames: VecDeque<(Queued, Stamp)>,
    /// Bytes queued here or in the connection's write queue, not yet written (a message
    /// queued for compression counts its uncompressed size until the task compresses
    /// it).
    pub(crate) buffered: usize,
    /// Boxed: every connection has the field, only a closing one fills it.
    pub(crate) close: Option<Box<OutboxClose>>,
    /// No more data frames are accepted.
    pub(crate) closed: bool,
    /// Who asked for the close under way, for the connection's close event.
    pub(crate) closed_by: Closer,
}

/// Who started the close of a connection, as its close event says (`closed_by`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closer {
    /// The peer: its close frame came first, or its transport ended.
    #[default]
    Peer,
    /// The application ([`Connection::close`]).
    Server,
    /// The hub, for a reason of its own (shutdown, pong timeout, buffer policy, a
    /// handler's panic, a protocol error): the close's code and reason say which.
    Hub,
}

impl Closer {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Server => "server",
            Self::Hub => "hub",
        }
    }
}

/// The handle to one connection. Cheap to clone, `Send + Sync`; every method can be
/// called from any task or thread, and none waits for the peer.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    id: ConnectionId,
    hub: Hub,
    state: AtomicU8,
    outbound: Mutex<Outbound>,
    /// The connection's task, woken when its queue gets something to write.
    wake: AtomicWaker,
    /// Key–value pairs; a list, as a connection has a few (a map would cost every
    /// connection its table).
    metadata: Mutex<Vec<(String, String)>>,
    /// Taken from the request when the connection is made; changed by the application.
    assigns: Mutex<Assigns>,
    request: RequestInfo,
    keepalive: Keepalive,
    /// See [`Connection::dropped_messages`] and [`Connection::refused_messages`].
    dropped: AtomicU64,
    refused: AtomicU64,
    /// See [`Connection::rate_limited_messages`] and [`Connection::refused_joins`].
    rate_limited: AtomicU64,
    refused_joins: AtomicU64,
    /// Every event of the connection is recorded in it (a disabled span, which costs
    /// nothing to enter, when no subscriber wants it).
    span: Span,
}

/// What the upgrade request carried, copied into the connection.
#[derive(Debug, Default)]
pub(crate) struct RequestInfo {
    /// Route parameters, then query parameters (`params` of them are the route's): one
    /// list, as every connection carries it.
    pub(crate) pairs: Box<[(String, String)]>,
    pub(crate) params: usize,
    /// The connection's first assigns: what middleware inserted into the request, what
    /// a channels `connect` assigned.
    pub(crate) assigns: Assigns,
    /// State of this crate's own layers on the connection (the channels a socket
    /// joined), out of the application's reach: clearing the assigns cannot break them.
    /// Set before the connection is made, read without a lock.
    #[cfg(feature = "axum")]
    pub(crate) internal: Assigns,
    pub(crate) remote_addr: Option<SocketAddr>,
    /// The permessage-deflate agreement of the opening handshake.
    pub(crate) deflate: Option<DeflateParams>,
}

/// Keepalive bookkeeping, in microseconds since the hub started (0 = never).
#[derive(Debug, Default)]
pub(crate) struct Keepalive {
    pub(crate) last_seen: AtomicU64,
    pub(crate) ping_sent: AtomicU64,
    pub(crate) last_ping: AtomicU64,
    pub(crate) last_pong: AtomicU64,
    pub(crate) rtt: AtomicU64,
}

impl Connection {
    pub(crate) fn new(id: ConnectionId, hub: Hub, mut request: RequestInfo, span: Span) -> Self {
        let assigns = std::mem::take(&mut request.assigns);
        let conn = Self {
            inner: Arc::new(Inner {
                id,
                hub,
                state: AtomicU8::new(0),
                outbound: Mutex::default(),
                wake: AtomicWaker::new(),
                metadata: Mutex::default(),
                assigns: Mutex::new(assigns),
                request,
                keepalive: Keepalive::default(),
                dropped: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                rate_limited: AtomicU64::new(0),
                refused_joins: AtomicU64::new(0),
                span,
            }),
        };
        conn.inner
            .keepalive
            .last_seen
            .store(conn.inner.hub.now_micros(), Relaxed);
        conn
    }

    /// The id, unique across the hubs of a deployment.
    pub fn id(&self) -> ConnectionId {
        self.inner.id
    }

    /// The span of the connection's events.
    pub(crate) fn span(&self) -> &Span {
        &self.inner.span
    }

    /// The hub this connection belongs to.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Where the connection is in its life.
    pub fn state(&self) -> ConnectionState {
        ConnectionState::from_u8(self.inner.state.load(Relaxed))
    }

    pub(crate) fn set_state(&self, state: ConnectionState) {
        self.inner.state.store(state as u8, Relaxed);
    }

    /// Whether `other` is a handle to this same connection (ids are unique only
    /// within a hub).
    pub(crate) fn is(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Marks the connection ended: every send is refused from now on.
    pub(crate) fn set_closed(&self) {
        self.set_state(ConnectionState::Closed);
        self.outbound().closed = true;
    }

    /// The client's address, when known: the peer's, or, when the peer is one of
    /// [`HubConfig::trusted_proxies`](super::HubConfig::trusted_proxies), the address
    /// its proxy header names (with the header's port, or port 0 when it gives none, as
    /// `X-Forwarded-For` never does). It is what
    /// [`HubConfig::max_connections_per_ip`](super::HubConfig::max_connections_per_ip)
    /// counts. `None` when the server could not tell (a hyper service that did not call
    /// [`HubUpgrade::peer_addr`](crate::HubUpgrade::peer_addr)).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.request.remote_addr
    }

    /// A route parameter, e.g. `room` for the route `/chat/{room}`.
    pub fn param(&self, name: &str) -> Option<&str> {
        let request = &self.inner.request;
        find(
            request.pairs.get(..request.params).unwrap_or_default(),
            name,
        )
    }

    /// A query parameter of the upgrade request, e.g. `token` in `?token=abc`.
    pub fn query(&self, name: &str) -> Option<&str> {
        let request = &self.inner.request;
        find(
            request.pairs.get(request.params..).unwrap_or_default(),
            name,
        )
    }

    /// Sets an assign of the connection (replacing one of the same type), for every
    /// later reader: its callbacks, and the channels of a channels socket.
    pub fn assign<T: Clone + Send + Sync + 'static>(&self, value: T) {
        lock(&self.inner.assigns).insert(value);
    }

    /// A copy of an assign of the connection: what a middleware or extractor inserted
    /// into the upgrade request's extensions (e.g. the authenticated user), what a
    /// channels `connect` callback assigned, or what [`Connection::assign`] set.
    pub fn assigned<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        lock(&self.inner.assigns).get::<T>().cloned()
    }

    /// Reads or changes the assigns in place (to borrow a value rather than copy it).
    /// The lock is held for `f` only: do not call back into this connection's assigns
    /// from it.
    pub fn with_assigns<R>(&self, f: impl FnOnce(&mut Assigns) -> R) -> R {
        f(&mut lock(&self.inner.assigns))
    }

    /// This crate's own state of type `T` on the connection (see `RequestInfo::internal`).
    #[cfg(feature = "axum")]
    pub(crate) fn internal<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.inner.request.internal.get()
    }

    /// Sets a metadata entry.
    pub fn set_metadata(&self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        let mut metadata = lock(&self.inner.metadata);
        match metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => metadata.push((key, value)),
        }
    }

    /// A metadata entry.
    pub fn metadata(&self, key: &str) -> Option<String> {
        find(&lock(&self.inner.metadata), key).map(str::to_owned)
    }

    /// Removes a metadata entry, returning it.
    pub fn remove_metadata(&self, key: &str) -> Option<String> {
        let mut metadata = lock(&self.inner.metadata);
        let index = metadata.iter().position(|(k, _)| k == key)?;
        // `remove`, not `swap_remove`: the few entries keep the order they were set in.
        Some(metadata.remove(index).1)
    }

    /// Every metadata entry as `(key, value)`, in the order their keys were first set.
    pub fn metadata_entries(&self) -> Vec<(String, String)> {
        lock(&self.inner.metadata).clone()
    }

    /// Joins a room (created on first join); returns whether the connection is a member
    /// now: `false`, and nothing changes, once the connection has ended, or when it is
    /// in [`HubConfig::max_rooms_per_connection`](super::HubConfig::max_rooms_per_connection)
    /// rooms already ([`Connection::try_join`] says which).
    pub fn join(&self, room: &str) -> bool {
        self.inner.hub.join(self, room)
    }

    /// Joins a room, or says why not (see [`Hub::try_join`]): to tell a client that
    /// asked for the room what went wrong.
    ///
    /// ```
    /// # use switchboard::hub::{Connection, JoinError};
    /// fn join_asked(conn: &Connection, room: &str) {
    ///     match conn.try_join(room) {
    ///         Ok(()) => conn.send_text(format!("joined {room}")),
    ///         Err(JoinError::TooManyRooms) => conn.send_text("leave a room first"),
    ///         Err(_) => {}
    ///     }
    /// }
    /// ```
    pub fn try_join(&self, room: &str) -> Result<(), JoinError> {
        self.inner.hub.try_join(self, room)
    }

    /// Joins a room that keeps history ([`HubConfig::history`](super::HubConfig::history))
    /// from `since`, the position of the last message it got (from an earlier
    /// connection, say): it receives exactly the messages published after `since`, in
    /// order and without duplicates, before any newer message, then live ones. When
    /// that is impossible (the stream is in another epoch: its history was lost; or
    /// the messages after `since` were trimmed), it joins live and
    /// [`Recovery::recovered`](super::Recovery::recovered) is `false`: reload what
    /// depends on the missed messages.
    ///
    /// Waits only when the hub must read the history from the engine (with Redis, one
    /// round trip, shared by every connection joining the stream meanwhile). Refused
    /// as [`Connection::try_join`] is, with [`JoinError::NoHistory`] for a room
    /// without history, and with [`JoinError::AlreadyMember`] for a connection in the
    /// room already (it gets the live messages; the ones before cannot be replayed
    /// without repeating some).
    ///
    /// ```
    /// # use switchboard::hub::{Connection, Position};
    /// async fn rejoin(conn: &Connection, since: Position) {
    ///     match conn.join_from("news", since).await {
    ///         Ok(recovery) if !recovery.recovered => conn.send_text("reload"),
    ///         _ => {}
    ///     }
    /// }
    /// ```
    pub async fn join_from(
        &self,
        room: &str,
        since: super::Position,
    ) -> Result<super::Recovery, JoinError> {
        self.inner.hub.join_from(self, room, since).await
    }

    /// Leaves a room (removed when its last member leaves); returns whether the
    /// connection was a member.
    pub fn leave(&self, room: &str) -> bool {
        self.inner.hub.leave(self, room)
    }

    /// The rooms this connection is in.
    pub fn rooms(&self) -> Vec<String> {
        self.inner.hub.rooms_of(self.id())
    }

    /// Whether this connection is in `room`.
    pub fn in_room(&self, room: &str) -> bool {
        self.inner.hub.is_member(self.id(), room)
    }

    /// Queues a message, fire-and-forget, as Socket.IO's `emit` and Phoenix's `push` are:
    /// a message the connection does not take (it is closing, or its buffer policy
    /// dropped it) is counted in [`Connection::dropped_messages`] or
    /// [`Connection::refused_messages`] and in the hub's metrics. To get it back
    /// instead, use [`Connection::try_send`].
    ///
    /// A close message starts the close handshake, as [`Connection::close`] does; a ping
    /// or pong is queued as by [`Connection::send_ping`].
    pub fn send(&self, message: impl Into<Message>) {
        // Counted already; dropping the error is what makes this fire-and-forget.
        let _ = self.try_send(message);
    }

    /// Queues a text message, fire-and-forget (see [`Connection::send`]).
    pub fn send_text(&self, text: impl Into<Utf8Bytes>) {
        self.send(Message::Text(text.into()));
    }

    /// Queues a binary message, fire-and-forget (see [`Connection::send`]).
    pub fn send_binary(&self, data: impl Into<bytes::Bytes>) {
        self.send(Message::Binary(data.into()));
    }

    /// Queues a message, or hands it back in the error: when the connection is closing
    /// or closed, when the buffer policy dropped it, or for a control message, when its
    /// payload is over 125 bytes. The failure is counted as by [`Connection::send`].
    ///
    /// ```
    /// # use switchboard::hub::{Connection, SendError};
    /// # use switchboard::Message;
    /// fn send_or_keep(conn: &Connection, message: Message, later: &mut Vec<Message>) {
    ///     match conn.try_send(message) {
    ///         Ok(()) => {}
    ///         // The buffer is full now: keep the message for a retry.
    ///         Err(SendError::Dropped(message)) => later.push(message),
    ///         Err(_) => {}
    ///     }
    /// }
    /// ```
    pub fn try_send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        match message.into() {
            Message::Close(close) => {
                self.close_with(close.unwrap_or_else(|| CloseFrame::new(CloseCode::NORMAL, "")))
            }
            control @ (Message::Ping(_) | Message::Pong(_)) => self.send_control(control),
            data => {
                let outgoing = Outgoing::new(data);
                self.enqueue(&outgoing)
                    .map_err(|unsent| SendError::new(unsent, outgoing.into_message()))
            }
        }
    }

    /// Queues a ping (never dropped by the buffer policy).
    ///
    /// The control sends return their result, unlike [`Connection::send`]: they are
    /// rare (the hub pings for keepalive and answers pings itself), and their one
    /// failure a caller makes, a payload over 125 bytes (RFC 6455 §5.5), is a
    /// programming error to report, not a frame to cut silently to size.
    pub fn send_ping(&self, payload: impl Into<bytes::Bytes>) -> Result<(), SendError> {
        self.send_control(Message::Ping(payload.into()))
    }

    /// Queues a pong (never dropped by the buffer policy); returns its result for the
    /// reason [`Connection::send_ping`] does.
    pub fn send_pong(&self, payload: impl Into<bytes::Bytes>) -> Result<(), SendError> {
        self.send_control(Message::Pong(payload.into()))
    }

    /// Starts the close handshake: the close frame leaves after the messages already
    /// queued; later sends are refused.
    ///
    /// Returns its result for the reason [`Connection::send_ping`] does: a reason over
    /// 123 bytes (a close payload over 125, RFC 6455 §5.5) is refused, not cut, and
    /// the connection stays open; [`SendError::Closed`] says that a close was already
    /// under way, so this one's code and reason will not be sent.
    pub fn close(&self, code: CloseCode, reason: impl Into<Utf8Bytes>) -> Result<(), SendError> {
        self.close_with(CloseFrame {
            code,
            reason: reason.into(),
        })
    }

    fn close_with(&self, frame: CloseFrame) -> Result<(), SendError> {
        if frame.reason.len() > MAX_REASON_LEN {
            self.count_refused();
            return Err(SendError::ControlFrameTooLong(Message::Close(Some(frame))));
        }
        if self.request_close(OutboxClose::Graceful(frame.clone()), Closer::Server) {
            Ok(())
        } else {
            self.count_refused();
            Err(SendError::Closed(Message::Close(Some(frame))))
        }
    }

    /// Starts the close handshake for the hub's own reasons (shutdown, a panic, a
    /// protocol error): the reason is cut to fit, and a close already under way is
    /// left as it is, uncounted, since no caller of this crate asked for it.
    pub(crate) fn close_for(&self, code: CloseCode, reason: impl Into<Utf8Bytes>) {
        self.request_close(
            OutboxClose::Graceful(CloseFrame::new(code, reason)),
            Closer::Hub,
        );
    }

    /// Bytes queued and not yet written to the socket.
    pub fn buffered_amount(&self) -> usize {
        self.outbound().buffered
    }

    /// Messages for this connection that its buffer policy dropped
    /// ([`SendError::Dropped`]): it was reading slower than it was sent to. Broadcasts
    /// count here too, as do a channel's pushes.
    pub fn dropped_messages(&self) -> u64 {
        self.inner.dropped.load(Relaxed)
    }

    /// Messages for this connection refused for any other reason than the buffer
    /// policy: it was closing or closed ([`SendError::Closed`], a broadcast that
    /// reached it during its close included), the channel a push was for had ended, or
    /// a control message was over 125 bytes ([`SendError::ControlFrameTooLong`]).
    /// With [`Connection::dropped_messages`], every message sent to this connection
    /// and not queued is counted once.
    pub fn refused_messages(&self) -> u64 {
        self.inner.refused.load(Relaxed)
    }

    /// Data messages from this client dropped because they came faster than
    /// [`HubConfig::max_message_rate`](super::HubConfig::max_message_rate): they never
    /// reached [`Handler::on_message`](super::Handler::on_message).
    pub fn rate_limited_messages(&self) -> u64 {
        self.inner.rate_limited.load(Relaxed)
    }

    /// Joins of this connection refused because it was in
    /// [`HubConfig::max_rooms_per_connection`](super::HubConfig::max_rooms_per_connection)
    /// rooms already.
    pub fn refused_joins(&self) -> u64 {
        self.inner.refused_joins.load(Relaxed)
    }

    /// Counts a join refused for the room limit.
    pub(crate) fn count_refused_join(&self) {
        self.inner.refused_joins.fetch_add(1, Relaxed);
    }

    /// Counts a message dropped for the rate limit; returns how many were, this one
    /// included.
    pub(crate) fn count_rate_limited(&self) -> u64 {
        self.inner.hub.count_rate_limited();
        self.inner.rate_limited.fetch_add(1, Relaxed) + 1
    }

    /// When the last keepalive ping was sent.
    pub fn last_ping(&self) -> Option<Instant> {
        self.inner
            .hub
            .instant(self.inner.keepalive.last_ping.load(Relaxed))
    }

    /// When the last pong arrived.
    pub fn last_pong(&self) -> Option<Instant> {
        self.inner
            .hub
            .instant(self.inner.keepalive.last_pong.load(Relaxed))
    }

    /// The round-trip time measured by the last keepalive ping.
    pub fn rtt(&self) -> Option<Duration> {
        match self.inner.keepalive.rtt.load(Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    fn send_control(&self, message: Message) -> Result<(), SendError> {
        if message.len() > MAX_CONTROL_PAYLOAD {
            self.count_refused();
            return Err(SendError::ControlFrameTooLong(message));
        }
        let mut out = self.outbound();
        if out.closed {
            drop(out);
            self.count_refused();
            return Err(SendError::Closed(message));
        }
        // Control frames are never dropped: they are small and the protocol needs them.
        let encoded = message.into_frame().encode();
        out.buffered += encoded.len();
        self.push(out, Queued::Frame(encoded), 0);
        Ok(())
    }

    /// Queues the keepalive ping, unless the connection is closing: then there is
    /// nothing to keep alive, and nothing a caller sent to count.
    pub(crate) fn ping(&self) {
        let mut out = self.outbound();
        if !out.closed {
            let encoded = Frame::ping(bytes::Bytes::new()).encode();
            out.buffered += encoded.len();
            self.push(out, Queued::Frame(encoded), 0);
        }
    }

    /// Queues a data message under the buffer policy; shared by sends and broadcasts
    /// (which encode once and hand the same bytes to every recipient). A message not
    /// queued is counted here, whichever way it was sent.
    pub(crate) fn enqueue(&self, message: &Outgoing) -> Result<(), Unsent> {
        let config = self.inner.hub.config();
        let mut out = self.outbound();
        if out.closed {
            drop(out);
            return Err(self.count_refused());
        }
        if out.buffered + message.plain_len() > config.max_buffered_bytes {
            drop(out);
            return Err(self.overflow());
        }
        let queued = message.queued_for(self.deflate(), &config.compression);
        out.buffered += queued.charged();
        self.push(out, queued, message.stamp());
        Ok(())
    }

    /// Counts `len` bytes held elsewhere for this connection (a channel's pushes while
    /// it joins) in its buffer, under the bound and policy of a send; give them back
    /// with [`Connection::release`].
    #[cfg(feature = "axum")]
    pub(crate) fn reserve(&self, len: usize) -> Result<(), Unsent> {
        let mut out = self.outbound();
        if out.closed {
            drop(out);
            return Err(self.count_refused());
        }
        if out.buffered + len > self.inner.hub.config().max_buffered_bytes {
            drop(out);
            return Err(self.overflow());
        }
        out.buffered += len;
        Ok(())
    }

    /// Gives back bytes counted by [`Connection::reserve`].
    #[cfg(feature = "axum")]
    pub(crate) fn release(&self, len: usize) {
        let mut out = self.outbound();
        out.buffered = out.buffered.saturating_sub(len);
    }

    /// A message would pass `max_buffered_bytes`: counts its drop and applies the
    /// buffer policy.
    fn overflow(&self) -> Unsent {
        let earlier = self.inner.dropped.fetch_add(1, Relaxed);
        self.inner.hub.count_drop();
        let policy = self.inner.hub.config().buffer_policy;
        // The first drop only: a slow consumer meets its limit once per message.
        if earlier == 0 {
            tracing::debug!(
                parent: &self.inner.span,
                ?policy,
                max_buffered_bytes = self.inner.hub.config().max_buffered_bytes,
                "slow consumer: outbound buffer full, message dropped"
            );
        }
        if policy == BufferPolicy::Close {
            let frame = CloseFrame::new(CloseCode::POLICY_VIOLATION, "slow consumer");
            self.request_close(OutboxClose::Abort(frame), Closer::Hub);
        }
        Unsent::Dropped
    }

    /// Counts a message refused for a reason other than the buffer policy (see
    /// [`Connection::refused_messages`]).
    pub(crate) fn count_refused(&self) -> Unsent {
        self.inner.refused.fetch_add(1, Relaxed);
        self.inner.hub.count_refused();
        Unsent::Closed
    }

    /// Queues a frame (already counted in `buffered`) and wakes the connection's task if
    /// the queue was empty: otherwise it was woken already and has not drained it yet.
    fn push(&self, mut out: MutexGuard<'_, Outbound>, queued: Queued, stamp: Stamp) {
        let was_empty = out.frames.is_empty();
        out.frames.push_back((queued, stamp));
        drop(out);
        if was_empty {
            self.inner.wake.wake();
        }
    }

    /// Asks the connection's task to close, for `by`; `false` when a close is under way
    /// already (an abort still replaces it: it ends the connection without waiting).
    pub(crate) fn request_close(&self, request: OutboxClose, by: Closer) -> bool {
        let mut out = self.outbound();
        if out.closed && !matches!(request, OutboxClose::Abort(_)) {
            return false;
        }
        out.closed = true;
        out.closed_by = by;
        out.close = Some(Box::new(request));
        drop(out);
        self.inner.wake.wake();
        true
    }

    /// The permessage-deflate agreement of the opening handshake.
    pub(crate) fn deflate(&self) -> Option<&DeflateParams> {
        self.inner.request.deflate.as_ref()
    }

    pub(crate) fn outbound(&self) -> MutexGuard<'_, Outbound> {
        lock(&self.inner.outbound)
    }

    pub(crate) fn wake(&self) -> &AtomicWaker {
        &self.inner.wake
    }

    pub(crate) fn keepalive(&self) -> &Keepalive {
        &self.inner.keepalive
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id())
            .field("state", &self.state())
            .field("remote_addr", &self.remote_addr())
            .finish_non_exhaustive()
    }
}

fn find<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
