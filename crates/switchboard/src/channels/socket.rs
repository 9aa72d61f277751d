//! One client socket: the upgrade (connect callback, 403), the channels it joined
//! (topic → join_ref and handler), and the routing of its messages, as a hub
//! [`Handler`].
//!
//! The server's side of each exchange follows `Phoenix.Socket` (`handle_in` clauses)
//! and `Phoenix.Channel.Server`; each rule below names the clause it mirrors.

use super::{
    Assigns, ChannelsConfig, ConnectFn, ConnectInfo, DynChannel, Endpoint, HandleIn, Out, Payload,
    Presence, Refused, Reply, Route, TerminateReason,
    heartbeat::Heartbeats,
    lock,
    protocol::{self, ChannelMessage, DecodeError, EncodeError},
    room_name,
};
use crate::{
    HubRejection, HubUpgrade, Message,
    hub::{
        BroadcastReport, Connection, ConnectionId, Handler, Hub, Outgoing, Panicked, SendError,
        catch,
    },
    route::CLOSE,
};
use axum::{
    extract::{FromRequestParts, Request},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get},
};
use http::{StatusCode, header};
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    fmt,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

/// The `{name}` segments a topic pattern captured.
type Params = Vec<(String, String)>;

/// The subprotocol phoenix.js offers when it sends an auth token; a server that does
/// not select it fails the browser's handshake.
const SUBPROTOCOL: &str = "phoenix";
/// The prefix of the auth token's subprotocol (phoenix.js `AUTH_TOKEN_PREFIX`).
const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

/// One joined channel of a socket, as the channel handler sees it: the topic, the join
/// ref, the connection, and the channel's assigns. Cheap to clone; clones share state,
/// so a task may keep one to push later.
#[derive(Clone)]
pub struct Socket {
    inner: Arc<SocketInner>,
}

struct SocketInner {
    conn: Connection,
    topic: String,
    join_ref: Option<String>,
    params: Params,
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
/// The held messages are the connection's outbound queue in waiting, so they get its
/// bound (the hub's `max_buffered_bytes`) and its policy: past the bound a message is
/// dropped and counted (and with `BufferPolicy::Close` the socket is closed with
/// 1008), exactly as if the join had sent it straight to a stalled client. Failing the
/// join instead would punish the client for what the server's own callback did.
#[derive(Default)]
struct Held {
    items: Vec<Deferred>,
    bytes: usize,
}

enum Deferred {
    Push(Message),
    Broadcast(&'static str, Value),
}

impl Held {
    /// Holds `item`, which takes `len` bytes, unless that passes the bound.
    fn hold(&mut self, item: Deferred, len: usize, conn: &Connection) -> Result<(), SendError> {
        if self.bytes + len > conn.hub().config().max_buffered_bytes {
            return Err(conn.overflow());
        }
        self.bytes += len;
        self.items.push(item);
        Ok(())
    }
}

/// Why a push to a socket failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The message could not be encoded (a binary header field over 255 bytes).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The connection did not take it (closed, or its buffer policy dropped it).
    #[error(transparent)]
    Send(#[from] SendError),
    /// The channel has ended (left, stopped, crashed, or its join was refused).
    #[error("channel is closed")]
    Closed,
}

impl Socket {
    fn new(
        conn: Connection,
        topic: String,
        join_ref: Option<String>,
        params: Params,
        assigns: Assigns,
        endpoint: Endpoint,
    ) -> Self {
        Self {
            inner: Arc::new(SocketInner {
                conn,
                topic,
                join_ref,
                params,
                assigns: Mutex::new(assigns),
                phase: Mutex::new(Phase::Joining(Held::default())),
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

    /// Sets an assign of this channel (replacing one of the same type).
    pub fn assign<T: Clone + Send + Sync + 'static>(&self, value: T) {
        lock(&self.inner.assigns).insert(value);
    }

    /// A copy of an assign of this channel.
    pub fn assigned<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        lock(&self.inner.assigns).get::<T>().cloned()
    }

    /// Reads or changes the assigns in place. The lock is held for `f` only: do not
    /// call back into this socket's assigns from it.
    pub fn with_assigns<R>(&self, f: impl FnOnce(&mut Assigns) -> R) -> R {
        f(&mut lock(&self.inner.assigns))
    }

    /// Sends `event` to this socket only (Phoenix `push`): `[join_ref, null, topic,
    /// event, payload]`. Inside [`Channel::join`](super::Channel::join), the push leaves
    /// right after the ok reply.
    pub fn push(&self, event: &str, payload: impl Into<Payload>) -> Result<(), PushError> {
        let message = protocol::encode_push(self.join_ref(), self.topic(), event, &payload.into())?;
        let mut phase = lock(&self.inner.phase);
        match &mut *phase {
            Phase::Joining(held) => {
                let len = message.len();
                Ok(held.hold(Deferred::Push(message), len, &self.inner.conn)?)
            }
            Phase::Joined => Ok(self.inner.conn.send(message)?),
            Phase::Closed => Err(PushError::Closed),
        }
    }

    /// Sends `event` to every subscriber of this topic, this socket included (Phoenix
    /// `broadcast`); encoded once for all.
    pub fn broadcast(
        &self,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<BroadcastReport, EncodeError> {
        self.inner.endpoint.broadcast(self.topic(), event, payload)
    }

    /// Sends `event` to every subscriber of this topic but this socket (Phoenix
    /// `broadcast_from`).
    pub fn broadcast_from(
        &self,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<BroadcastReport, EncodeError> {
        self.inner
            .endpoint
            .broadcast_from(self.id(), self.topic(), event, payload)
    }

    /// Whether the channel has ended.
    pub fn is_closed(&self) -> bool {
        matches!(*lock(&self.inner.phase), Phase::Closed)
    }

    /// Holds a broadcast until the join succeeds (or drops it past the bound, see
    /// [`Held`]); `false` when no join is running.
    pub(crate) fn defer_broadcast(&self, event: &'static str, payload: &Value) -> bool {
        match &mut *lock(&self.inner.phase) {
            Phase::Joining(held) => {
                let item = Deferred::Broadcast(event, payload.clone());
                let _ = held.hold(item, json_len(payload), &self.inner.conn);
                true
            }
            _ => false,
        }
    }

    /// The join succeeded and the socket is subscribed: sends what waited for it, the
    /// pushes first (so that `presence_state` precedes the diffs, whichever order the
    /// join made them in), then the broadcasts, each in order.
    fn joined(&self) {
        let deferred = {
            let mut phase = lock(&self.inner.phase);
            match std::mem::replace(&mut *phase, Phase::Joined) {
                Phase::Joining(held) => held.items,
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
                Deferred::Push(message) => {
                    let _ = self.inner.conn.send(message);
                }
                Deferred::Broadcast(event, payload) => {
                    let _ = self.broadcast(event, payload);
                }
            }
        }
    }

    fn close(&self) {
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

/// The channels of one connection, kept in the connection's assigns.
#[derive(Default)]
pub(crate) struct ConnState {
    /// What `connect` returned; each channel starts with a copy.
    assigns: Mutex<Assigns>,
    channels: Mutex<HashMap<String, Joined>>,
    /// When the client last sent a message, in the hub's clock, for the heartbeat
    /// timeout.
    last_heard: AtomicU64,
}

#[derive(Clone)]
struct Joined {
    socket: Socket,
    channel: Arc<dyn DynChannel>,
}

impl ConnState {
    fn get(&self, topic: &str) -> Option<Joined> {
        lock(&self.channels).get(topic).cloned()
    }

    fn remove(&self, topic: &str) -> Option<Joined> {
        lock(&self.channels).remove(topic)
    }

    /// The client sent something.
    pub(crate) fn heard(&self, hub: &Hub) {
        self.last_heard.store(hub.now_micros(), Relaxed);
    }

    pub(crate) fn last_heard(&self) -> u64 {
        self.last_heard.load(Relaxed)
    }
}

/// The hub handler of every socket of one endpoint.
pub(crate) struct SocketHandler {
    endpoint: Endpoint,
    routes: Vec<Route>,
    config: ChannelsConfig,
    heartbeats: Arc<Heartbeats>,
}

impl SocketHandler {
    pub(crate) fn new(endpoint: Endpoint, routes: Vec<Route>, config: ChannelsConfig) -> Self {
        let heartbeats = Heartbeats::new(endpoint.hub().clone(), config.heartbeat_timeout);
        Self {
            endpoint,
            routes,
            config,
            heartbeats,
        }
    }

    fn route(&self, topic: &str) -> Option<(Arc<dyn DynChannel>, Params)> {
        self.routes.iter().find_map(|route| {
            route
                .pattern
                .matches(topic)
                .map(|params| (route.channel.clone(), params))
        })
    }

    async fn dispatch(&self, conn: &Connection, state: &ConnState, message: ChannelMessage) {
        // Phoenix.Socket: `handle_in(_, %{topic: "phoenix", event: "heartbeat"})` answers
        // before any channel lookup.
        if message.topic == protocol::HEARTBEAT_TOPIC && message.event == protocol::HEARTBEAT {
            reply(
                conn,
                None,
                message.msg_ref.as_deref(),
                &message.topic,
                &Reply::ok(json!({})),
            );
            return;
        }
        match message.event.as_str() {
            protocol::JOIN => self.join(conn, state, message).await,
            protocol::LEAVE => self.leave(conn, state, message).await,
            _ => self.handle_in(conn, state, message).await,
        }
    }

    async fn join(&self, conn: &Connection, state: &ConnState, message: ChannelMessage) {
        let ChannelMessage {
            join_ref,
            msg_ref,
            topic,
            payload,
            ..
        } = message;
        let msg_ref = msg_ref.as_deref();
        let join_ref = join_ref.or_else(|| msg_ref.map(str::to_owned));
        let refuse = |reason: &str| {
            let reason = json!({ "reason": reason });
            reply(
                conn,
                join_ref.as_deref(),
                msg_ref,
                &topic,
                &Reply::error(reason),
            );
        };
        // Checked first, so that a long topic costs nothing but this reply.
        if topic.len() > self.config.max_topic_len {
            refuse("topic too long");
            return;
        }
        // Phoenix.Socket, join of a topic already joined: the old channel is shut down
        // and the client told with phx_close (its old join_ref) before the new join.
        if let Some(old) = state.remove(&topic) {
            self.end(
                conn,
                old,
                TerminateReason::DuplicateJoin,
                Some(protocol::CLOSE),
            )
            .await;
        }
        let Some((channel, params)) = self.route(&topic) else {
            // Phoenix.Socket `encode_ignore`: the reply carries no join_ref.
            let reason = json!({"reason": "unmatched topic"});
            reply(conn, None, msg_ref, &topic, &Reply::error(reason));
            return;
        };
        if lock(&state.channels).len() >= self.config.max_channels {
            refuse("too many channels");
            return;
        }
        // phoenix.js sends the channel's params as a JSON object; a binary join has no
        // meaning in Phoenix (V2JSONSerializer decodes binary frames as pushes only).
        let Payload::Json(payload) = payload else {
            refuse("join payload must be json");
            return;
        };
        let assigns = lock(&state.assigns).clone();
        let socket = Socket::new(
            conn.clone(),
            topic.clone(),
            join_ref.clone(),
            params,
            assigns,
            self.endpoint.clone(),
        );
        let result = catch(channel.join(&topic, payload, &socket)).await;
        let join_ref = join_ref.as_deref();
        match result {
            Ok(Ok(response)) => {
                lock(&state.channels).insert(
                    topic.clone(),
                    Joined {
                        socket: socket.clone(),
                        channel,
                    },
                );
                // Phoenix.Channel.Server `init_join` subscribes before the reply leaves.
                conn.join(&room_name(&topic));
                reply(conn, join_ref, msg_ref, &topic, &Reply::ok(response));
                socket.joined();
            }
            Ok(Err(reason)) => {
                socket.close();
                self.endpoint.presence().forget_socket(&socket);
                reply(conn, join_ref, msg_ref, &topic, &Reply::error(reason));
            }
            Err(Panicked) => {
                socket.close();
                self.endpoint.presence().forget_socket(&socket);
                // Phoenix.Channel.Server.join: a join that crashes answers this.
                let reason = json!({"reason": "join crashed"});
                reply(conn, join_ref, msg_ref, &topic, &Reply::error(reason));
            }
        }
    }

    async fn leave(&self, conn: &Connection, state: &ConnState, message: ChannelMessage) {
        let msg_ref = message.msg_ref.as_deref();
        let topic = &message.topic;
        let Some(joined) = state.get(topic) else {
            // Phoenix.Socket: a leave of a topic not joined is answered ok.
            let join_ref = message.join_ref.as_deref();
            reply(conn, join_ref, msg_ref, topic, &Reply::ok(json!({})));
            return;
        };
        // Phoenix.Socket: a leave with another join_ref raced a server close of that
        // join, whose phx_close already went out: no answer.
        if message.join_ref.is_some() && message.join_ref.as_deref() != joined.socket.join_ref() {
            return;
        }
        state.remove(topic);
        // Phoenix.Channel.Server: `{:stop, {:shutdown, :left}, :ok, socket}`, the reply
        // and then phx_close.
        conn.leave(&room_name(topic));
        reply(
            conn,
            joined.socket.join_ref(),
            msg_ref,
            topic,
            &Reply::ok(json!({})),
        );
        self.end(conn, joined, TerminateReason::Left, Some(protocol::CLOSE))
            .await;
    }

    async fn handle_in(&self, conn: &Connection, state: &ConnState, message: ChannelMessage) {
        let ChannelMessage {
            msg_ref,
            topic,
            event,
            payload,
            ..
        } = message;
        let msg_ref = msg_ref.as_deref();
        let Some(joined) = state.get(&topic) else {
            // Phoenix.Socket: a push to a topic not joined is `encode_ignore`d.
            let reason = json!({"reason": "unmatched topic"});
            reply(conn, None, msg_ref, &topic, &Reply::error(reason));
            return;
        };
        let socket = &joined.socket;
        let result = catch(joined.channel.handle_in(&event, payload, socket)).await;
        match result {
            Ok(HandleIn::NoReply) => {}
            Ok(HandleIn::Reply(answer)) => {
                reply(conn, socket.join_ref(), msg_ref, &topic, &answer);
            }
            Ok(HandleIn::Stop(answer)) => {
                if let Some(answer) = answer {
                    reply(conn, socket.join_ref(), msg_ref, &topic, &answer);
                }
                if let Some(joined) = state.remove(&topic) {
                    self.end(
                        conn,
                        joined,
                        TerminateReason::Stopped,
                        Some(protocol::CLOSE),
                    )
                    .await;
                }
            }
            Err(Panicked) => {
                // Phoenix.Socket `encode_on_exit`: a channel that crashed sends
                // phx_error, and phoenix.js rejoins.
                if let Some(joined) = state.remove(&topic) {
                    self.end(
                        conn,
                        joined,
                        TerminateReason::Crashed,
                        Some(protocol::ERROR),
                    )
                    .await;
                }
            }
        }
    }

    /// Ends a channel already removed from the socket's table: unsubscribes it, tells
    /// the client (`notify`), leaves its presences, and runs `terminate`.
    async fn end(
        &self,
        conn: &Connection,
        joined: Joined,
        reason: TerminateReason,
        notify: Option<&str>,
    ) {
        let Joined { socket, channel } = joined;
        conn.leave(&room_name(socket.topic()));
        socket.close();
        if let Some(event) = notify {
            let _ = conn.send(protocol::encode_control(
                socket.join_ref(),
                socket.topic(),
                event,
            ));
        }
        self.endpoint.presence().untrack_socket(&socket);
        if catch(channel.terminate(reason, &socket)).await.is_err() {
            tracing::warn!(topic = socket.topic(), "channel terminate panicked");
        }
    }

    /// A message that is not V2: an error reply when it says which message it was,
    /// otherwise a close that says why.
    fn malformed(&self, conn: &Connection, message: &Message, error: &DecodeError) {
        tracing::debug!(id = conn.id(), %error, "malformed channel message");
        let salvaged = match message {
            Message::Text(text) => protocol::salvage(text.as_str()),
            _ => None,
        };
        match salvaged {
            Some((join_ref, msg_ref, topic)) => {
                let reason = json!({"reason": format!("malformed message: {error}")});
                reply(
                    conn,
                    join_ref.as_deref(),
                    Some(&msg_ref),
                    &topic,
                    &Reply::error(reason),
                );
            }
            None => {
                let _ = conn.close(error.close_code(), format!("malformed message: {error}"));
            }
        }
    }
}

impl Handler for SocketHandler {
    async fn on_open(&self, conn: &Connection) {
        if let Some(state) = conn.assign::<Arc<ConnState>>() {
            self.heartbeats.watch(conn, state);
        }
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        let Some(state) = conn.assign::<Arc<ConnState>>().cloned() else {
            return;
        };
        state.heard(conn.hub());
        match protocol::decode(&message) {
            Some(Ok(decoded)) => self.dispatch(conn, &state, decoded).await,
            Some(Err(error)) => self.malformed(conn, &message, &error),
            None => {}
        }
    }

    async fn on_close(&self, conn: &Connection, _code: crate::CloseCode, _reason: &str) {
        self.heartbeats.unwatch(conn);
        let Some(state) = conn.assign::<Arc<ConnState>>().cloned() else {
            return;
        };
        // Draining the table also breaks the cycle connection → state → socket →
        // connection.
        let joined: Vec<Joined> = lock(&state.channels).drain().map(|(_, j)| j).collect();
        for joined in joined {
            self.end(conn, joined, TerminateReason::Closed, None).await;
        }
    }
}

/// Sends a `phx_reply`; an encoding failure (a binary status or ref over 255 bytes) is
/// answered with an error reply in JSON instead, which always encodes.
fn reply(
    conn: &Connection,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    reply: &Reply,
) {
    let message = protocol::encode_reply(join_ref, msg_ref, topic, &reply.status, &reply.response)
        .unwrap_or_else(|error| {
            tracing::warn!(%error, topic, "reply could not be encoded");
            let reason = Payload::Json(json!({"reason": error.to_string()}));
            match protocol::encode_reply(join_ref, msg_ref, topic, "error", &reason) {
                Ok(message) => message,
                Err(_) => Message::text("[]"),
            }
        });
    let _ = conn.send(message);
}

/// Delivers a broadcast of an intercepted event to the subscribers of `room` on this
/// hub, asking each subscriber's channel whether and what to deliver.
pub(crate) fn deliver_intercepted(
    hub: &Hub,
    except: Option<ConnectionId>,
    room: &str,
    topic: &str,
    event: &str,
    payload: &Payload,
    message: Message,
) -> BroadcastReport {
    let frame = Outgoing::new(message);
    let mut report = BroadcastReport::default();
    for conn in hub.room_members(room) {
        if Some(conn.id()) == except {
            continue;
        }
        let joined = conn
            .assign::<Arc<ConnState>>()
            .and_then(|state| state.get(topic));
        let out = match &joined {
            Some(joined) if joined.channel.intercepts(event) => {
                let (channel, socket) = (&joined.channel, &joined.socket);
                catch_unwind(AssertUnwindSafe(|| {
                    channel.handle_out(event, payload, socket)
                }))
                .unwrap_or(Out::Drop)
            }
            _ => Out::Deliver,
        };
        let result = match out {
            Out::Deliver => conn.enqueue(&frame),
            Out::Replace(payload) => {
                let join_ref = joined.as_ref().and_then(|j| j.socket.join_ref());
                match protocol::encode_push(join_ref, topic, event, &payload) {
                    Ok(message) => conn.send(message),
                    Err(error) => {
                        tracing::warn!(%error, topic, event, "handle_out payload could not be encoded");
                        continue;
                    }
                }
            }
            Out::Drop => continue,
        };
        report.count(result);
    }
    report
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

/// The upgrade route: vsn, origin, the connect callback, then the hub.
pub(crate) fn route<S: Clone + Send + Sync + 'static>(
    handler: Arc<SocketHandler>,
    connect: Option<Arc<ConnectFn>>,
) -> MethodRouter<S> {
    get(move |request: Request| {
        let (handler, connect) = (handler.clone(), connect.clone());
        async move { upgrade(handler, connect, request).await }
    })
}

async fn upgrade(
    handler: Arc<SocketHandler>,
    connect: Option<Arc<ConnectFn>>,
    request: Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    let params: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    // Phoenix.Socket `negotiate_serializer`: only the V2 serializer (`~> 2.0.0`) is
    // offered here; phoenix.js sends `vsn=2.0.0`. A client that names no version is
    // taken to speak V2 too (Phoenix would assume 1.0.0, which has no arrays).
    if let Some((_, vsn)) = params.iter().find(|(k, _)| k == "vsn") {
        if !vsn.starts_with("2.") {
            let body = format!("unsupported protocol version {vsn}: this endpoint speaks 2.x");
            return (StatusCode::FORBIDDEN, [CLOSE], body).into_response();
        }
    }
    let state = Arc::new(ConnState::default());
    parts.extensions.insert(state.clone());
    let upgrade = match HubUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade.protocols(&[SUBPROTOCOL]),
        Err(rejection) => return rejection.into_response(),
    };
    let hub = handler.endpoint.hub().clone();
    // The origin is checked again when registering; checking it first keeps a
    // cross-site page from running the application's connect callback at all.
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
    };
    if !hub
        .config()
        .allowed_origins
        .allows(header(header::ORIGIN), header(header::HOST))
    {
        return HubRejection::Origin.into_response();
    }
    if let Some(connect) = connect {
        let info = ConnectInfo {
            auth_token: auth_token(&parts.headers),
            params,
            headers: parts.headers.clone(),
        };
        match connect(info).await {
            Ok(assigns) => *lock(&state.assigns) = assigns,
            Err(Refused { reason }) => {
                tracing::debug!(%reason, "channels connect refused");
                return (StatusCode::FORBIDDEN, [CLOSE], reason).into_response();
            }
        }
    }
    upgrade.register_shared(&hub, handler).await
}

/// The token phoenix.js sends as the subprotocol `base64url.bearer.phx.<base64>`
/// (socket.js `transportConnect`, which encodes with `btoa` and strips the padding).
fn auth_token(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(AUTH_TOKEN_PREFIX))
        .and_then(decode_base64)
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// Decodes base64 in either alphabet (standard or URL-safe), padding optional.
fn decode_base64(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in input.trim_end_matches('=').bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_in_both_alphabets() {
        assert_eq!(decode_base64("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_base64("+/8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_base64("a b"), None);
        assert_eq!(decode_base64("").as_deref(), Some(&[][..]));
    }

    #[test]
    fn auth_token_from_the_subprotocol_header() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("phoenix, base64url.bearer.phx.c2VjcmV0"),
        );
        assert_eq!(auth_token(&headers).as_deref(), Some("secret"));
        assert_eq!(auth_token(&http::HeaderMap::new()), None);
    }
}
