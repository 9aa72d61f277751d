//! Phoenix channels on the hub: the V2 protocol that the `phoenix` npm client speaks,
//! topics, event routing with replies, broadcasts, and presence.
//!
//! A socket endpoint ([`Channels`]) upgrades `/socket/websocket` (phoenix.js appends
//! `/websocket` and `?vsn=2.0.0` to the URL it is given), asks the
//! [`connect`](Channels::connect) callback whether the client may connect, and routes
//! every topic a client joins to the [`Channel`] handler whose pattern matches it.
//!
//! ```no_run
//! use serde_json::{Value, json};
//! use switchboard::channels::{Channel, Channels, HandleIn, Payload, Refused, Reply, Socket};
//! use switchboard::hub::{Hub, HubConfig};
//!
//! #[derive(Clone)]
//! struct User(String);
//!
//! struct Room;
//!
//! impl Channel for Room {
//!     async fn join(&self, _topic: &str, _payload: Value, socket: &Socket) -> Result<Value, Value> {
//!         // Authorisation per topic: what `connect` assigned is here.
//!         match socket.assigned::<User>() {
//!             Some(_) => Ok(json!({})),
//!             None => Err(json!({"reason": "unauthorized"})),
//!         }
//!     }
//!
//!     async fn handle_in(&self, event: &str, payload: Payload, socket: &Socket) -> HandleIn {
//!         match event {
//!             "ping" => Reply::ok(payload).into(),
//!             "shout" => {
//!                 // Encoded once for every subscriber of the topic.
//!                 socket.broadcast("shout", payload);
//!                 HandleIn::NoReply
//!             }
//!             _ => Reply::error(json!({"reason": "unknown event"})).into(),
//!         }
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::new(HubConfig::default());
//! let channels = Channels::new(hub.clone())
//!     .connect(|info| async move {
//!         // Refusing closes with 3000 (CloseCode::UNAUTHORIZED) right after the 101.
//!         match info.auth_token() {
//!             Some(token) if !token.is_empty() => {
//!                 info.assign(User(token.to_owned()));
//!                 Ok(())
//!             }
//!             _ => Err(Refused::new("token required")),
//!         }
//!     })
//!     .channel("room:*", Room);
//! let app: axum::Router = channels.into_router(); // GET /socket/websocket
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await?;
//! switchboard::serve(listener, app, &hub).await
//! # }
//! ```
//!
//! # On the hub
//!
//! Each socket is a hub connection, and a joined topic is a hub room, named
//! [`room_name`]`(topic)` (`phx:` + the topic) so that channel topics and plain rooms
//! never mix. The hub's limits, buffer policy, keepalive, metrics and broker therefore
//! apply to channels too: a broadcast to a topic is encoded once into one frame shared
//! by every subscriber, and reaches the subscribers held by other hubs of the broker.
//!
//! # Intercepted events
//!
//! A channel that lists an event in [`Channel::intercepts`] sees every broadcast of that
//! event once per subscriber, in [`Channel::handle_out`], and may let it through, replace
//! it or drop it. That costs a call per subscriber, and a JSON encoding per replaced
//! payload; the frames let through unchanged still share one encoding. It runs on the
//! broadcaster's task and reaches the subscribers on this hub only (the broker carries
//! frames, not events); other events keep the shared fast path.
//!
//! # Presence
//!
//! [`Presence`] tracks keys (user ids) with metadata per socket and broadcasts
//! `presence_diff`s that phoenix.js `Presence` applies as they are. It spans the hubs
//! of the broker, as Phoenix Presence spans a cluster: each hub owns its sockets'
//! entries and keeps a replica of the others', `presence_state` and
//! [`Presence::list`] answer for every hub, every subscriber gets every change once
//! from its own hub, and a hub that dies takes its entries with it within
//! [`HubConfig::node_timeout`](crate::hub::HubConfig::node_timeout). Changes are
//! batched for [`ChannelsConfig::presence_batch`].

pub mod protocol;

mod handler;
mod heartbeat;
mod intercept;
mod presence;
mod socket;
mod state;
mod topic;
mod tracker;
mod upgrade;

pub use presence::{PRESENCE_DIFF, PRESENCE_STATE, Presence, PresenceError};
pub use protocol::{DecodeError, EncodeError, Payload};
pub use socket::{PushError, Socket};
pub use topic::PatternError;

use crate::{
    CloseCode,
    hub::{Assigns, BroadcastReport, Census, ClusterAnswer, ConnectionId, Framing, History, Hub},
    sync::{lock, read, write},
};
use axum::{Router, routing::MethodRouter};
use handler::SocketHandler;
use presence::PresenceState;
use serde_json::{Value, json};
use std::{
    collections::HashSet,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};
use topic::TopicPattern;

/// The prefix of the hub rooms that hold channel topics.
pub const ROOM_PREFIX: &str = "phx:";

/// The hub room that holds the subscribers of `topic`, e.g. for
/// [`Hub::room_size`](crate::hub::Hub::room_size).
pub fn room_name(topic: &str) -> String {
    format!("{ROOM_PREFIX}{topic}")
}

/// A channel handler: what happens on the topics its pattern matches. One value serves
/// every socket and topic; per-socket state lives in the [`Socket`]'s assigns (see
/// there how a channel's assigns layer over its connection's).
///
/// Callbacks of one socket run one at a time, in the order its messages arrived. A
/// callback that panics crashes only its channel: the client gets `phx_error` (and
/// rejoins, as phoenix.js does), the other channels and sockets go on. A `join` that
/// panics is refused with `{"reason": "join crashed"}`, as Phoenix does. The exception
/// is [`Channel::handle_out`], which runs on the broadcaster's task, outside the
/// socket's: a panic there closes that socket with 1011 (see its docs).
pub trait Channel: Send + Sync + 'static {
    /// A client asks to join `topic` with `payload` (phoenix.js: the channel's params).
    /// `Ok(response)` accepts (the client's join `receive("ok")` gets `response`);
    /// `Err(reason)` refuses (`receive("error")` gets `reason`).
    ///
    /// Until it returns, the socket is not subscribed to the topic: broadcasts do not
    /// reach it, and its own pushes (e.g. `presence_state`) and presence diffs are held
    /// and sent right after the ok reply, or dropped if the join is refused.
    fn join(
        &self,
        topic: &str,
        payload: Value,
        socket: &Socket,
    ) -> impl Future<Output = Result<Value, Value>> + Send;

    /// A message for a joined topic. The default refuses every event with an error
    /// reply, `{"reason": "unhandled event"}`.
    fn handle_in(
        &self,
        event: &str,
        payload: Payload,
        socket: &Socket,
    ) -> impl Future<Output = HandleIn> + Send {
        let _ = (event, payload, socket);
        async { Reply::error(json!({"reason": "unhandled event"})).into() }
    }

    /// The broadcast events this channel filters per subscriber with
    /// [`Channel::handle_out`] (Phoenix `intercept`). Read once, when the channel is
    /// registered.
    fn intercepts(&self) -> &[&str] {
        &[]
    }

    /// An intercepted broadcast on its way to this socket: deliver it, replace its
    /// payload, or drop it. Runs on the broadcaster's task, once per subscriber, so it
    /// must be quick and must not block. If it panics, the broadcast goes on to the
    /// other subscribers and this socket, which would miss the message, is closed with
    /// 1011 (phoenix.js reconnects and rejoins).
    fn handle_out(&self, event: &str, payload: &Payload, socket: &Socket) -> Out {
        let _ = (event, payload, socket);
        Out::Deliver
    }

    /// The channel ended; called once per successful join.
    fn terminate(
        &self,
        reason: TerminateReason,
        socket: &Socket,
    ) -> impl Future<Output = ()> + Send {
        let _ = (reason, socket);
        async {}
    }
}

/// What [`Channel::handle_in`] answers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HandleIn {
    /// No reply (Phoenix `{:noreply, socket}`); a client waiting for one times out.
    NoReply,
    /// A `phx_reply` to the message.
    Reply(Reply),
    /// Ends the channel after the reply, if any: the client gets `phx_close` (Phoenix
    /// `{:stop, :normal, reply, socket}`).
    Stop(Option<Reply>),
}

impl From<Reply> for HandleIn {
    fn from(reply: Reply) -> Self {
        Self::Reply(reply)
    }
}

/// A reply to a client's message: a status (`ok`, `error`, or any other that the
/// client's `receive(status, …)` listens for) and a response.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The status.
    pub status: String,
    /// The response: JSON, or bytes for a binary reply.
    pub response: Payload,
}

impl Reply {
    /// A reply with any status.
    pub fn new(status: impl Into<String>, response: impl Into<Payload>) -> Self {
        Self {
            status: status.into(),
            response: response.into(),
        }
    }

    /// An `ok` reply.
    pub fn ok(response: impl Into<Payload>) -> Self {
        Self::new("ok", response)
    }

    /// An `error` reply.
    pub fn error(response: impl Into<Payload>) -> Self {
        Self::new("error", response)
    }
}

/// What [`Channel::handle_out`] does with an intercepted broadcast.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Out {
    /// Deliver it unchanged (the shared encoding).
    Deliver,
    /// Deliver this payload instead, as a push of the same event to this socket.
    Replace(Payload),
    /// Do not deliver it to this socket.
    Drop,
}

/// Why a channel ended, for [`Channel::terminate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TerminateReason {
    /// The client left (`phx_leave`).
    Left,
    /// The socket closed (by either side, or a keepalive timeout).
    Closed,
    /// The client joined the same topic again; this join is replaced.
    DuplicateJoin,
    /// [`HandleIn::Stop`].
    Stopped,
    /// A callback of the channel panicked.
    Crashed,
}

/// What a client sent when it connected, for [`Channels::connect`]: the query
/// parameters (phoenix.js `params`, plus `vsn`), the auth token and the headers; and
/// the connection's assigns, which start with what middleware inserted into the
/// upgrade request (the request's extensions, axum's own left out).
///
/// What `connect` assigns here is the connection's: every channel of the socket reads
/// it with [`Socket::assigned`], and the hub sees it with
/// [`Connection::assigned`](crate::hub::Connection::assigned).
#[derive(Debug)]
pub struct ConnectInfo {
    params: Vec<(String, String)>,
    auth_token: Option<String>,
    headers: http::HeaderMap,
    /// Shared with the upgrade, which hands them to the connection once `connect`
    /// accepts.
    assigns: Arc<Mutex<Assigns>>,
}

impl ConnectInfo {
    /// Sets an assign of the connection (replacing one of the same type).
    pub fn assign<T: Clone + Send + Sync + 'static>(&self, value: T) {
        lock(&self.assigns).insert(value);
    }

    /// A copy of an assign: what a middleware inserted (e.g. the user a session
    /// cookie names), or what this `connect` assigned.
    pub fn assigned<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        lock(&self.assigns).get::<T>().cloned()
    }

    /// Reads or changes the assigns in place. The lock is held for `f` only: do not
    /// call back into these assigns from it.
    pub fn with_assigns<R>(&self, f: impl FnOnce(&mut Assigns) -> R) -> R {
        f(&mut lock(&self.assigns))
    }

    /// A query parameter, e.g. `token` for `new Socket("/socket", {params: {token}})`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every query parameter, in order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The token of phoenix.js's `authToken` option, which travels in the
    /// `Sec-WebSocket-Protocol` header (so that it stays out of URLs and logs).
    pub fn auth_token(&self) -> Option<&str> {
        self.auth_token.as_deref()
    }

    /// A request header, e.g. `cookie` or `user-agent`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// When the credentials expire (a token's `exp`): the socket is then closed with
    /// [`CloseCode::TOKEN_EXPIRED`] and reason "token expired", and switchboard's JS
    /// client reconnects with a fresh token. A token that has already expired is
    /// better refused with [`Refused::expired`].
    pub fn expires_at(&self, at: SystemTime) {
        lock(&self.assigns).insert(TokenExpiry(at));
    }
}

/// What [`ConnectInfo::expires_at`] set, carried in the assigns until the socket's
/// state takes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenExpiry(pub(crate) SystemTime);

/// A refused connection. The client's upgrade is accepted and at once closed with
/// [`Refused::code`] and [`Refused::reason`] (at most 123 bytes, cut at a character
/// boundary): a browser sees the code, where the HTTP status of a refused upgrade
/// would reach it as 1006, like a server that is down.
///
/// [`Refused::new`] closes with [`CloseCode::UNAUTHORIZED`] (3000), on which
/// switchboard's JS client stops reconnecting; [`Refused::expired`] with
/// [`CloseCode::TOKEN_EXPIRED`] (4401), on which it asks for a fresh token and
/// reconnects. phoenix.js reconnects after any close it did not ask for: see
/// `docs/channels.md` for how its users stop it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connection refused: {reason}")]
#[non_exhaustive]
pub struct Refused {
    /// The close code, [`CloseCode::UNAUTHORIZED`] unless changed.
    pub code: CloseCode,
    /// Why, for the close frame.
    pub reason: String,
}

impl Refused {
    /// A refusal: the credentials are missing or wrong ([`CloseCode::UNAUTHORIZED`]).
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            code: CloseCode::UNAUTHORIZED,
            reason: reason.into(),
        }
    }

    /// The token was valid once and has expired ([`CloseCode::TOKEN_EXPIRED`], reason
    /// "token expired"): a client that can renew it may come back.
    pub fn expired() -> Self {
        Self::new("token expired").code(CloseCode::TOKEN_EXPIRED)
    }

    /// Closes with `code` instead, e.g. [`CloseCode::FORBIDDEN`] for a client that is
    /// known and not allowed.
    pub fn code(mut self, code: CloseCode) -> Self {
        self.code = code;
        self
    }
}

/// Settings of a [`Channels`] endpoint.
///
/// Start from [`ChannelsConfig::default`] and change what you need, one method per
/// setting:
///
/// ```
/// use std::time::Duration;
/// use switchboard::channels::{Channels, ChannelsConfig};
/// use switchboard::hub::{Hub, HubConfig};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let config = ChannelsConfig::default()
///     .max_channels(20)
///     .heartbeat_timeout(Duration::from_secs(90));
/// let channels = Channels::new(Hub::new(HubConfig::default())).config(config);
/// let app: axum::Router = channels.into_router();
/// # let _ = app;
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelsConfig {
    /// Topics one socket may have joined at once; the next join gets an error reply,
    /// `{"reason": "too many channels"}`.
    ///
    /// Default 100: a page joins a handful; every join holds server memory and a room
    /// membership, so a client must not open thousands. Each joined topic is a room of
    /// the hub, so the hub's
    /// [`max_rooms_per_connection`](crate::hub::HubConfig::max_rooms_per_connection)
    /// (default 100 too) bounds it as well: a join past it gets an error reply,
    /// `{"reason": "too many rooms"}`. Raise both together.
    ///
    /// The hub's other per-client limits hold for a channels socket as for any hub
    /// connection: connections per address, the message rate (a message over it is
    /// dropped before its event is routed, so a join or push gets no reply and the
    /// client's own timeout fires), the outbound buffer.
    pub max_channels: usize,
    /// The longest topic a socket may join, in bytes; a longer join gets an error reply,
    /// `{"reason": "topic too long"}`.
    ///
    /// Default 255: the longest topic the V2 binary frames can carry (their length
    /// fields are one byte), far above what `room:{id}` topics need. A joined topic is
    /// kept several times (the socket's table, the hub's room index, presence), so this
    /// and [`ChannelsConfig::max_channels`] together bound what one socket's topics cost
    /// the server: at most `max_channels × max_topic_len` bytes of names.
    pub max_topic_len: usize,
    /// How long a socket may send nothing before it is closed with 1001 "heartbeat
    /// timeout". Any message counts, and so do the client's WebSocket pings (as in
    /// Phoenix, whose timeout is reset by every frame received); pongs to the hub's
    /// pings do not, so a client whose socket layer stopped (a frozen tab, a dead
    /// phoenix.js) is let go. `Duration::ZERO` turns it off (as Phoenix's `timeout:
    /// :infinity`; the hub's keepalive still closes dead connections), rather than
    /// closing every socket at once.
    ///
    /// Default 60 s, Phoenix's (its websocket transport's `timeout`): phoenix.js sends
    /// a `heartbeat` on the `phoenix` topic every 30 s, so a live client always makes
    /// it, with room for one late beat.
    pub heartbeat_timeout: Duration,
    /// How long a hub gathers its presence changes before it sends them, as one
    /// `presence_diff` per topic to its subscribers and one message to the other hubs.
    /// `Duration::ZERO` sends every change at once.
    ///
    /// Default 50 ms: a member list a person reads lags by no more than that, while a
    /// busy topic gets one diff per interval instead of one per join (at 500 joins/s,
    /// 25 joins share one message to each of the topic's clients, and one cast to the
    /// other hubs). Phoenix.Tracker gathers its deltas between nodes for 1.5 s, but
    /// sends local diffs one by one; here both are batched, so the interval is kept
    /// short.
    pub presence_batch: Duration,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        Self {
            max_channels: 100,
            max_topic_len: 255,
            heartbeat_timeout: Duration::from_secs(60),
            presence_batch: Duration::from_millis(50),
        }
    }
}

impl ChannelsConfig {
    /// Sets [`ChannelsConfig::max_channels`].
    pub fn max_channels(mut self, max: usize) -> Self {
        self.max_channels = max;
        self
    }

    /// Sets [`ChannelsConfig::max_topic_len`], in bytes.
    pub fn max_topic_len(mut self, max: usize) -> Self {
        self.max_topic_len = max;
        self
    }

    /// Sets [`ChannelsConfig::heartbeat_timeout`]; `Duration::ZERO` turns it off.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = timeout;
        self
    }

    /// Sets [`ChannelsConfig::presence_batch`]; `Duration::ZERO` sends every presence
    /// change at once.
    pub fn presence_batch(mut self, batch: Duration) -> Self {
        self.presence_batch = batch;
        self
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type ConnectFn = dyn Fn(ConnectInfo) -> BoxFuture<'static, Result<(), Refused>> + Send + Sync;

/// A socket endpoint: the connect callback and the channel handlers by topic pattern.
///
/// See the [module documentation](self) for an example.
pub struct Channels {
    endpoint: Endpoint,
    routes: Vec<Route>,
    connect: Option<Arc<ConnectFn>>,
    config: ChannelsConfig,
    path: String,
}

/// A channel handler and the topics it serves.
pub(crate) struct Route {
    pattern: TopicPattern,
    channel: Arc<dyn DynChannel>,
}

impl Channels {
    /// An endpoint on `hub` that accepts every client and serves no topic yet.
    pub fn new(hub: Hub) -> Self {
        let shared = Arc::new(Shared {
            hub,
            presence: PresenceState::new(ChannelsConfig::default().presence_batch),
            intercepted: RwLock::default(),
        });
        presence::join_cluster(&shared);
        if let Some(instruments) = shared.hub.instruments() {
            let census: Arc<dyn Census> = shared.clone();
            instruments.add_census(Arc::downgrade(&census));
        }
        Self {
            endpoint: Endpoint { shared },
            routes: Vec::new(),
            connect: None,
            config: ChannelsConfig::default(),
            path: "/socket".to_owned(),
        }
    }

    /// The callback that decides whether a client may connect, from the query
    /// parameters, auth token, headers and assigns of its upgrade request (Phoenix
    /// `connect/3`). `Ok(())` accepts, and what it assigned with
    /// [`ConnectInfo::assign`] is the connection's, read by every channel of the
    /// socket; `Err` accepts the upgrade and closes it at once with the refusal's code
    /// and reason (see [`Refused`]).
    pub fn connect<F, Fut>(mut self, connect: F) -> Self
    where
        F: Fn(ConnectInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Refused>> + Send + 'static,
    {
        self.connect = Some(Arc::new(move |info| Box::pin(connect(info))));
        self
    }

    /// Serves the topics that match `pattern` with `channel`: `"lobby"`, `"room:*"`
    /// (a prefix), `"user:{id}"` (a segment up to the next `:`, read with
    /// [`Socket::param`]). The first registered pattern that matches wins.
    ///
    /// # Panics
    ///
    /// If the pattern is invalid (see [`PatternError`]): a programming error, found
    /// when the server starts.
    pub fn channel(mut self, pattern: &str, channel: impl Channel) -> Self {
        let pattern = match TopicPattern::parse(pattern) {
            Ok(parsed) => parsed,
            Err(error) => panic!("invalid topic pattern {pattern:?}: {error}"),
        };
        let intercepts: Vec<String> = channel
            .intercepts()
            .iter()
            .map(|e| (*e).to_owned())
            .collect();
        write(&self.endpoint.shared.intercepted).extend(intercepts.iter().cloned());
        self.routes.push(Route {
            pattern,
            channel: Arc::new(Erased {
                channel,
                intercepts,
            }),
        });
        self
    }

    /// Makes the topics that match `topic_pattern` keep `history`: an exact topic
    /// (`"lobby"`) or a prefix ending in `*` (`"room:*"`). Each broadcast to such a topic
    /// gets a position `(offset, epoch)` in the topic's stream, which JSON broadcasts
    /// carry to the clients as a sixth element of the array; a client that rejoins with
    /// its position (`"_position"` in the join payload, which switchboard's JS client
    /// sends by itself) gets exactly the broadcasts it missed, after the join reply and
    /// before live ones, or is told it did not recover (the reply's `"stream"`).
    /// phoenix.js ignores all of it and works as before. See `docs/streams.md` for the
    /// guarantees, and [`protocol`] for the wire.
    ///
    /// The topics' room (`phx:` + topic) is a stream of the hub (as with
    /// [`HubConfig::history`](crate::hub::HubConfig::history)), kept by the hub's broker:
    /// in memory, or in Redis, where it survives the server. Binary broadcasts are not
    /// part of the stream (the V2 binary frame has no field for a position): they go to
    /// the subscribers of the moment, live only, at most once, never recovered; nor are
    /// pushes, replies, presence diffs and intercepted events.
    ///
    /// ```
    /// use switchboard::channels::Channels;
    /// use switchboard::hub::{History, Hub, HubConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let hub = Hub::new(HubConfig::default());
    /// let channels = Channels::new(hub).history("room:*", History::default().max_len(500));
    /// # let _ = channels;
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// If the pattern is not an exact topic or a prefix ending in `*` (a `{name}`
    /// segment, say): a programming error, found when the server starts.
    pub fn history(self, topic_pattern: &str, history: History) -> Self {
        match TopicPattern::parse(topic_pattern) {
            Ok(_) if !topic_pattern.contains(['{', '}']) => {}
            Ok(_) => panic!(
                "invalid history pattern {topic_pattern:?}: an exact topic or a prefix ending in `*`"
            ),
            Err(error) => panic!("invalid history pattern {topic_pattern:?}: {error}"),
        }
        // Each broadcast is framed once per hub, for every subscriber there.
        let frame: Framing = Arc::new(protocol::with_position);
        self.endpoint
            .shared
            .hub
            .keep_history(&room_name(topic_pattern), history, Some(frame));
        self
    }

    /// Replaces the settings.
    pub fn config(mut self, config: ChannelsConfig) -> Self {
        self.endpoint
            .shared
            .presence
            .set_batch(config.presence_batch);
        self.config = config;
        self
    }

    /// The path [`Channels::into_router`] mounts the socket under (default `/socket`,
    /// phoenix.js's `new Socket("/socket")`); the upgrade is served at
    /// `{path}/websocket`.
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.trim_end_matches('/').to_owned();
        self
    }

    /// The handle for broadcasts and presence from anywhere in the application.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    /// The upgrade handler alone, to mount at a path of your choosing (phoenix.js
    /// connects to the URL it is given plus `/websocket`).
    pub fn route<S: Clone + Send + Sync + 'static>(self) -> MethodRouter<S> {
        let handler = Arc::new(SocketHandler::new(self.endpoint, self.routes, self.config));
        upgrade::route(handler, self.connect)
    }

    /// A router that serves the socket at `{path}/websocket` (default
    /// `/socket/websocket`), to merge into the application's.
    pub fn into_router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        let path = format!("{}/websocket", self.path);
        Router::new().route(&path, self.route())
    }
}

impl fmt::Debug for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channels")
            .field("path", &self.path)
            .field(
                "patterns",
                &self.routes.iter().map(|r| &r.pattern).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The running side of a [`Channels`] endpoint: broadcasts to topics and presence,
/// from channel callbacks or anywhere else (an HTTP handler, a background task).
/// Cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    shared: Arc<Shared>,
}

struct Shared {
    hub: Hub,
    presence: PresenceState,
    /// Every event some channel intercepts: a broadcast of any other event takes the
    /// shared fast path without looking at its subscribers.
    intercepted: RwLock<HashSet<String>>,
}

impl Census for Shared {
    fn presence_entries(&self) -> usize {
        self.presence.len()
    }
}

impl Endpoint {
    /// The hub the sockets are on.
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// The presence of this endpoint's topics.
    pub fn presence(&self) -> Presence {
        Presence::new(self.clone())
    }

    /// Sends `event` with `payload` to every subscriber of `topic` (Phoenix
    /// `Endpoint.broadcast`), as `[null, null, topic, event, payload]`: one encoding for
    /// all of them, also handed to the broker for the other hubs.
    ///
    /// Fire-and-forget: the report says what happened on this hub, and each subscriber
    /// that did not take the message counts it (see [`BroadcastReport`]). A message
    /// that cannot be encoded (a binary payload whose topic or event is over 255
    /// bytes) reaches no one and is logged; [`Endpoint::try_broadcast`] returns that
    /// error instead.
    ///
    /// On a topic with history ([`Channels::history`]) a JSON broadcast goes to the
    /// stream's engine, which delivers it to every hub, this one included: the report
    /// is empty, and while the engine is unavailable the broadcast reaches nobody. A
    /// binary one goes live, as on any topic (see `docs/streams.md`).
    pub fn broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: impl Into<Payload>,
    ) -> BroadcastReport {
        self.report(self.try_broadcast(topic, event, payload), topic, event)
    }

    /// [`Endpoint::broadcast`] to everyone but the socket `except` (Phoenix
    /// `broadcast_from`).
    pub fn broadcast_from(
        &self,
        except: ConnectionId,
        topic: &str,
        event: &str,
        payload: impl Into<Payload>,
    ) -> BroadcastReport {
        let result = self.try_broadcast_from(except, topic, event, payload);
        self.report(result, topic, event)
    }

    /// [`Endpoint::broadcast`], or the error when the message cannot be encoded.
    pub fn try_broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<BroadcastReport, EncodeError> {
        self.broadcast_inner(None, topic, event, payload.into())
    }

    /// [`Endpoint::broadcast_from`], or the error when the message cannot be encoded.
    pub fn try_broadcast_from(
        &self,
        except: ConnectionId,
        topic: &str,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<BroadcastReport, EncodeError> {
        self.broadcast_inner(Some(except), topic, event, payload.into())
    }

    /// The subscribers of `topic` on this hub only; for every hub on the broker,
    /// [`Endpoint::cluster_subscribers`].
    pub fn subscribers(&self, topic: &str) -> usize {
        self.shared.hub.room_size(&room_name(topic))
    }

    /// The subscribers of `topic` on every hub on the broker, gathered within
    /// [`HubConfig::cluster_timeout`](crate::hub::HubConfig::cluster_timeout); the
    /// answer names the hubs that did not reply (see [`ClusterAnswer`]). For another
    /// timeout, or the subscribers themselves,
    /// `hub.cluster().timeout(t).room_size(&room_name(topic))` and
    /// [`ClusterQuery::room_members`](crate::hub::ClusterQuery::room_members) ask the
    /// same of the topic's room ([`room_name`]).
    pub async fn cluster_subscribers(&self, topic: &str) -> ClusterAnswer<usize> {
        self.shared.hub.cluster().room_size(&room_name(topic)).await
    }

    /// The report of a fire-and-forget broadcast: an encoding error is logged, as
    /// there is no recipient to count it.
    fn report(
        &self,
        result: Result<BroadcastReport, EncodeError>,
        topic: &str,
        event: &str,
    ) -> BroadcastReport {
        result.unwrap_or_else(|error| {
            tracing::warn!(%error, topic, event, "broadcast could not be encoded");
            BroadcastReport::default()
        })
    }

    fn broadcast_inner(
        &self,
        except: Option<ConnectionId>,
        topic: &str,
        event: &str,
        payload: Payload,
    ) -> Result<BroadcastReport, EncodeError> {
        let message = protocol::encode_broadcast(topic, event, &payload)?;
        let room = room_name(topic);
        if !read(&self.shared.intercepted).contains(event) {
            let hub = &self.shared.hub;
            let broadcast = hub.to(&room);
            let broadcast = match except {
                Some(id) => broadcast.except(id),
                None => broadcast,
            };
            // A binary frame cannot carry a position: kept in the stream, it would be
            // replayed by every recovery from before it. It stays out, live only.
            if matches!(payload, Payload::Binary(_)) && hub.history_of(&room).is_some() {
                return Ok(broadcast.send_live(message));
            }
            return Ok(broadcast.send(message));
        }
        Ok(intercept::deliver_intercepted(
            &self.shared.hub,
            except,
            &room,
            topic,
            event,
            &payload,
            message,
        ))
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("hub", &self.shared.hub)
            .finish_non_exhaustive()
    }
}

/// [`Channel`] with boxed futures, so that handlers of different types share a table.
pub(crate) trait DynChannel: Send + Sync {
    fn join<'a>(
        &'a self,
        topic: &'a str,
        payload: Value,
        socket: &'a Socket,
    ) -> BoxFuture<'a, Result<Value, Value>>;
    fn handle_in<'a>(
        &'a self,
        event: &'a str,
        payload: Payload,
        socket: &'a Socket,
    ) -> BoxFuture<'a, HandleIn>;
    fn intercepts(&self, event: &str) -> bool;
    fn handle_out(&self, event: &str, payload: &Payload, socket: &Socket) -> Out;
    fn terminate<'a>(&'a self, reason: TerminateReason, socket: &'a Socket) -> BoxFuture<'a, ()>;
}

struct Erased<C> {
    channel: C,
    intercepts: Vec<String>,
}

impl<C: Channel> DynChannel for Erased<C> {
    fn join<'a>(
        &'a self,
        topic: &'a str,
        payload: Value,
        socket: &'a Socket,
    ) -> BoxFuture<'a, Result<Value, Value>> {
        Box::pin(self.channel.join(topic, payload, socket))
    }

    fn handle_in<'a>(
        &'a self,
        event: &'a str,
        payload: Payload,
        socket: &'a Socket,
    ) -> BoxFuture<'a, HandleIn> {
        Box::pin(self.channel.handle_in(event, payload, socket))
    }

    fn intercepts(&self, event: &str) -> bool {
        self.intercepts.iter().any(|e| e == event)
    }

    fn handle_out(&self, event: &str, payload: &Payload, socket: &Socket) -> Out {
        self.channel.handle_out(event, payload, socket)
    }

    fn terminate<'a>(&'a self, reason: TerminateReason, socket: &'a Socket) -> BoxFuture<'a, ()> {
        Box::pin(self.channel.terminate(reason, socket))
    }
}

/// `docs/channels.md`, compiled as a doctest so that its server snippet cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../../docs/channels.md")]
pub struct ChannelsDocDoctests;

/// `docs/streams.md`, compiled as a doctest so that its snippets cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../../docs/streams.md")]
pub struct StreamsDocDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(
            HandleIn::from(Reply::ok(json!({"a": 1}))),
            HandleIn::Reply(Reply {
                status: "ok".into(),
                response: Payload::Json(json!({"a": 1})),
            })
        );
        assert_eq!(Reply::error(vec![1u8]).status, "error");
        assert_eq!(Reply::new("later", json!(null)).status, "later");
    }

    #[test]
    fn rooms_are_prefixed() {
        assert_eq!(room_name("room:lobby"), "phx:room:lobby");
    }

    #[test]
    #[should_panic(expected = "invalid topic pattern")]
    fn invalid_patterns_panic_at_registration() {
        struct Nothing;
        impl Channel for Nothing {
            async fn join(&self, _: &str, _: Value, _: &Socket) -> Result<Value, Value> {
                Ok(Value::Null)
            }
        }
        let hub = Hub::new(crate::hub::HubConfig::default());
        let _ = Channels::new(hub).channel("a*b", Nothing);
    }

    #[test]
    #[should_panic(expected = "an exact topic or a prefix")]
    fn history_patterns_with_segments_panic_at_registration() {
        let hub = Hub::new(crate::hub::HubConfig::default());
        let _ = Channels::new(hub).history("user:{id}", History::default());
    }

    #[test]
    fn every_config_builder_method_sets_its_field() {
        // Values other than the defaults, so that a method that sets nothing fails.
        let config = ChannelsConfig::default()
            .max_channels(1)
            .max_topic_len(2)
            .heartbeat_timeout(Duration::ZERO)
            .presence_batch(Duration::from_secs(3));
        // Exhaustive: a new field does not compile here until it has a method and a check.
        let ChannelsConfig {
            max_channels,
            max_topic_len,
            heartbeat_timeout,
            presence_batch,
        } = config;
        assert_eq!(max_channels, 1);
        assert_eq!(max_topic_len, 2);
        assert_eq!(heartbeat_timeout, Duration::ZERO);
        assert_eq!(presence_batch, Duration::from_secs(3));
    }
}
