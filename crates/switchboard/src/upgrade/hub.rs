//! Registering upgrades with a hub, whichever way they came in: an axum route
//! ([`crate::ws()`], which extracts a [`HubUpgrade`]), a hyper service
//! ([`HubUpgrade::from_request`]) or a bare stream
//! ([`StreamUpgrade::register`](super::StreamUpgrade::register)).
//!
//! Every way applies the same rules before the 101: the origin allow-list (403), the
//! hub's capacity and shutdown (503 with `Retry-After`), the client address's share
//! (429 with `Retry-After`), the hub's settings for the connection (message size,
//! compression, buffer), and `on_open` (open means ready).

use super::{CONNECTION_CLOSE, Rejection, ResponseBody, Upgrade, UpgradeFut, Upgraded, refused};
use crate::{
    WebSocket, WebSocketConfig,
    hub::{
        Assigns, Handler, Hub, ProxyHeader, Refusal, Refused, Registration, RequestInfo, abandon,
        client_addr, drive, open,
    },
};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header, request::Parts};
use std::{net::SocketAddr, sync::Arc};
use switchboard_proto::{CloseCode, CloseFrame, Utf8Bytes, deflate::DeflateParams};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

/// What clients with a backoff (ours) read as the earliest retry, in seconds, when a
/// hub is full or shutting down, or the client has its share of connections.
pub(crate) const RETRY_AFTER: HeaderValue = HeaderValue::from_static("5");

/// An upgrade request on its way into a hub, from a hyper service
/// ([`HubUpgrade::from_request`]) or an axum handler (it is an extractor, feature
/// `axum`), for handlers that need to do work (authenticate, pick a handler) before
/// registering.
///
/// It carries the route parameters (axum's, or those given with [`HubUpgrade::param`]),
/// the query, and the request's extensions (what middleware and extractors inserted)
/// into the connection, as its [`assigns`](crate::hub::Connection::assigned).
///
/// With hyper alone (no axum):
///
/// ```no_run
/// use http::{Request, Response};
/// use hyper::{body::Incoming, server::conn::http1, service::service_fn};
/// use hyper_util::rt::TokioIo;
/// use switchboard::{HubUpgrade, hub::{Handler, Hub, HubConfig}, upgrade::ResponseBody};
/// # struct Chat;
/// # impl Handler for Chat {}
///
/// async fn service(hub: Hub, mut request: Request<Incoming>) -> Response<ResponseBody> {
///     let Some(room) = request.uri().path().strip_prefix("/chat/").map(str::to_owned) else {
///         return Response::builder().status(404).body("not found".into()).unwrap();
///     };
///     match HubUpgrade::from_request(&mut request) {
///         // Answers 101 once `Chat::on_open` has run, or 403/503 as the hub decides.
///         Ok(upgrade) => upgrade.param("room", room).register(&hub, Chat).await,
///         Err(rejection) => rejection.into_response(),
///     }
/// }
///
/// # async fn run() -> std::io::Result<()> {
/// let hub = Hub::new(HubConfig::default());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// loop {
///     let (stream, _) = listener.accept().await?;
///     let hub = hub.clone();
///     let service = service_fn(move |request| {
///         let hub = hub.clone();
///         async move { Ok::<_, std::convert::Infallible>(service(hub, request).await) }
///     });
///     tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades());
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct HubUpgrade {
    upgrade: Upgrade,
    head: HubRequest,
}

/// Why a request could not be upgraded into a hub; answer it with
/// [`HubRejection::into_response`] (under axum it is an `IntoResponse`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubRejection {
    /// Not a valid WebSocket handshake (400, 405, 426).
    #[error(transparent)]
    Upgrade(#[from] Rejection),
    /// The `Origin` is not allowed (403).
    #[error("origin not allowed")]
    Origin,
    /// The hub is at `max_connections` or shutting down (503 with `Retry-After`).
    #[error("server is full")]
    Full,
    /// The client's address has `max_connections_per_ip` connections open (429 Too
    /// Many Requests with `Retry-After`).
    #[error("too many connections from this address")]
    TooManyPerIp,
}

impl From<Refused> for HubRejection {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Full | Refused::Draining => Self::Full,
            Refused::TooManyPerIp => Self::TooManyPerIp,
        }
    }
}

impl HubRejection {
    /// The response to send: the status, `Retry-After` with 503 and 429,
    /// `Connection: close`, and the reason as text.
    pub fn into_response(self) -> Response<ResponseBody> {
        let status = match self {
            Self::Upgrade(rejection) => return rejection.into_response(),
            Self::Origin => StatusCode::FORBIDDEN,
            Self::Full => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyPerIp => StatusCode::TOO_MANY_REQUESTS,
        };
        let mut response = Response::new(ResponseBody::from(self.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let (name, value) = CONNECTION_CLOSE;
        headers.insert(name, value);
        if let StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS = status {
            headers.insert(header::RETRY_AFTER, RETRY_AFTER);
        }
        response
    }
}

impl HubUpgrade {
    /// Validates the WebSocket handshake of a request received by hyper and takes what
    /// the connection carries from it: the query, the extensions (as assigns), the
    /// `Origin` and `Host` for the origin check.
    pub fn from_request<B>(request: &mut Request<B>) -> Result<Self, HubRejection> {
        let upgrade = Upgrade::from_request(request)?;
        let pending = PendingSlot::take(request.extensions_mut());
        let assigns = request_assigns(request.extensions());
        let (uri, headers) = (request.uri(), request.headers());
        let mut head = HubRequest::new(uri, headers, uri.path(), Vec::new(), assigns);
        head.pending = pending;
        Ok(Self { upgrade, head })
    }

    /// Like [`HubUpgrade::from_request`], for a request already split into parts.
    pub fn from_parts(parts: &mut Parts) -> Result<Self, HubRejection> {
        let upgrade = Upgrade::from_parts(parts)?;
        let pending = PendingSlot::take(&mut parts.extensions);
        let assigns = request_assigns(&parts.extensions);
        let route = parts.uri.path();
        Ok(Self::new(
            upgrade,
            parts,
            route,
            Vec::new(),
            assigns,
            pending,
        ))
    }

    /// An upgrade with the route (its pattern, or the request's path), the route
    /// parameters and assigns a router found, and the pending handshake's slot `serve`
    /// gave it.
    pub(crate) fn new(
        upgrade: Upgrade,
        parts: &Parts,
        route: &str,
        params: Vec<(String, String)>,
        assigns: Assigns,
        pending: Option<PendingSlot>,
    ) -> Self {
        let mut head = HubRequest::new(&parts.uri, &parts.headers, route, params, assigns);
        head.pending = pending;
        Self { upgrade, head }
    }

    /// Adds a route parameter, for [`Connection::param`](crate::hub::Connection::param):
    /// hyper has no router, so the service says what its route captured.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.head.param(name.into(), value.into());
        self
    }

    /// Adds an assign, for [`Connection::assigned`](crate::hub::Connection::assigned):
    /// what the service found out about the request (e.g. the user a cookie names),
    /// beside what its extensions carried.
    pub fn assign<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.head.info.assigns.insert(value);
        self
    }

    /// Selects the first subprotocol the client offered that is in `supported`.
    pub fn protocols(mut self, supported: &[&str]) -> Self {
        self.upgrade = self.upgrade.protocols(supported);
        self
    }

    /// The peer's address, when the service knows it (hyper's accept loop does; the
    /// request does not tell): the connection's
    /// [`remote_addr`](crate::hub::Connection::remote_addr), or the proxy the client's
    /// address is read from ([`HubConfig::trusted_proxies`](crate::hub::HubConfig::trusted_proxies)),
    /// and what [`HubConfig::max_connections_per_ip`](crate::hub::HubConfig::max_connections_per_ip)
    /// counts. Without it, the connection is not counted there.
    pub fn peer_addr(mut self, peer: SocketAddr) -> Self {
        self.upgrade = self.upgrade.peer_addr(peer);
        self
    }

    /// The assigns the connection will start with, for the channels' `connect`.
    #[cfg(feature = "axum")]
    pub(crate) fn assigns_mut(&mut self) -> &mut Assigns {
        &mut self.head.info.assigns
    }

    /// This crate's own state on the connection to be (see `RequestInfo::internal`).
    #[cfg(feature = "axum")]
    pub(crate) fn internal_mut(&mut self) -> &mut Assigns {
        &mut self.head.info.internal
    }

    /// The origin check alone, for work that must not run for a refused origin.
    #[cfg(feature = "axum")]
    pub(crate) fn check_origin(&self, hub: &Hub) -> Result<(), HubRejection> {
        self.head.check_origin(hub, self.upgrade.peer())
    }

    /// Refuses the client in a way that it can tell apart from a dead server: answers 101,
    /// then at once closes with `code` and `reason` (e.g.
    /// [`CloseCode::UNAUTHORIZED`](crate::CloseCode::UNAUTHORIZED), which switchboard's
    /// JS client does not retry), without registering anything on the hub.
    ///
    /// A browser sees nothing of an HTTP refusal: a 401 or 403 before the upgrade
    /// reaches the page as close code 1006, the same as a refused TCP connection, and a
    /// reconnecting client retries it forever. The close handshake is bounded by the
    /// hub's [`close_timeout`](crate::hub::HubConfig::close_timeout).
    ///
    #[cfg_attr(feature = "axum", doc = "```")]
    #[cfg_attr(not(feature = "axum"), doc = "```ignore")]
    /// use axum::{extract::State, response::{IntoResponse, Response}, routing::get};
    /// use switchboard::{CloseCode, HubUpgrade, hub::{Handler, Hub, HubConfig}};
    /// # struct Chat;
    /// # impl Handler for Chat {}
    /// # fn valid(_: &str) -> bool { true }
    ///
    /// async fn chat(State(hub): State<Hub>, upgrade: HubUpgrade) -> Response {
    ///     // Taken from a cookie or a header in a real application.
    ///     if !valid("token") {
    ///         return upgrade.refuse(&hub, CloseCode::UNAUTHORIZED, "unauthorized").into_response();
    ///     }
    ///     upgrade.register(&hub, Chat).await.into_response()
    /// }
    ///
    /// let hub = Hub::new(HubConfig::default());
    /// let app: axum::Router = axum::Router::new().route("/chat", get(chat)).with_state(hub);
    /// # let _ = app;
    /// ```
    pub fn refuse(
        self,
        hub: &Hub,
        code: CloseCode,
        reason: impl Into<Utf8Bytes>,
    ) -> Response<ResponseBody> {
        let (response, upgraded) = self.upgrade.config(websocket_config(hub)).into_parts();
        let frame = CloseFrame::new(code, reason);
        let slot = self.head.pending.and_then(|pending| pending.keep());
        tokio::spawn(close_at_once(upgraded, frame, slot));
        response
    }

    /// Checks the origin and the hub's capacity, registers the connection and runs its
    /// [`Handler::on_open`]; then answers 101 and runs the connection in the hub with
    /// `handler`, in a task of its own. A refusal is answered 403 or 503 (see
    /// [`HubRejection`]).
    ///
    /// Open means ready: the 101 leaves once `on_open` has returned, so when the client
    /// sees its connection open, what `on_open` did (rooms joined, metadata set,
    /// messages sent, which wait in the connection's queue for the socket) has happened,
    /// and whatever is published to its rooms from then on reaches it. A slow `on_open`
    /// therefore delays the 101, as in uWebSockets and Phoenix.
    pub async fn register<H: Handler>(self, hub: &Hub, handler: H) -> Response<ResponseBody> {
        self.register_shared(hub, Arc::new(handler)).await
    }

    /// [`HubUpgrade::register`] with a handler shared by many connections.
    pub async fn register_shared<H: Handler>(
        self,
        hub: &Hub,
        handler: Arc<H>,
    ) -> Response<ResponseBody> {
        match self.try_register(hub, handler) {
            Ok((response, opened)) => {
                // Sent by the connection's task once `on_open` has returned, or dropped
                // with it: either way nothing is left for the 101 to wait for.
                let _ = opened.await;
                response
            }
            Err(rejection) => rejection.into_response(),
        }
    }

    /// Registers the connection and starts its task; returns the 101 with the signal
    /// that `on_open` has returned.
    fn try_register<H: Handler>(
        self,
        hub: &Hub,
        handler: Arc<H>,
    ) -> Result<(Response<ResponseBody>, oneshot::Receiver<()>), HubRejection> {
        // What the connection carries is known before the 101: the address from the
        // request (axum's `ConnectInfo`, which `serve` provides, or `peer_addr`), the
        // compression from the response.
        let mut head = self.head;
        head.admit(hub, self.upgrade.peer())?;
        let (response, upgraded) = self.upgrade.config(websocket_config(hub)).into_parts();
        let registration = head.register(hub, upgraded.deflate());
        let (opened, on_opened) = oneshot::channel();
        tokio::spawn(run(registration, upgraded, handler, opened));
        Ok((response, on_opened))
    }
}

/// The slot of [`HubConfig::max_pending_handshakes`](crate::hub::HubConfig::max_pending_handshakes)
/// an upgrade request [`crate::serve`] received holds until the hub admits it (from
/// then on it holds a slot of the hub) or it is answered: whatever runs between its
/// head and its registration (middleware, a channels `connect` callback, the
/// application's own checks) is bounded with the handshakes. It travels in the
/// request's extensions, which the hub takes it from.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) struct PendingSlot(Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>);

#[cfg_attr(not(feature = "axum"), allow(dead_code))]
impl PendingSlot {
    /// A slot held until [`PendingSlot::release`] is called on any clone of it.
    pub(crate) fn new(slot: OwnedSemaphorePermit) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(slot))))
    }

    /// Takes the slot out, to hold it past the answer (a refusal's close handshake);
    /// [`PendingSlot::release`] then does nothing.
    pub(crate) fn keep(&self) -> Option<OwnedSemaphorePermit> {
        crate::sync::lock(&self.0).take()
    }

    /// Gives the slot back; later calls do nothing.
    pub(crate) fn release(&self) {
        drop(crate::sync::lock(&self.0).take());
    }

    /// The slot a request carries, taken out of its extensions (it is not an assign).
    pub(crate) fn take(extensions: &mut http::Extensions) -> Option<Self> {
        extensions.remove::<Self>()
    }
}

/// What a hub connection takes from its upgrade request, and what the checks before
/// the 101 need.
#[derive(Debug)]
pub(crate) struct HubRequest {
    info: RequestInfo,
    /// Route parameters, then query parameters (`info.params` of them are the route's),
    /// moved into `info` when the connection is registered.
    pairs: Vec<(String, String)>,
    origin: Option<String>,
    host: Option<String>,
    /// The proxy headers that may name the client, read once the peer is known to be
    /// a trusted proxy.
    forwarded_for: Option<String>,
    forwarded: Option<String>,
    /// Held until the hub admits the connection or refuses it.
    pending: Option<PendingSlot>,
    /// The route's pattern, or the request's path: a field of the connection's span.
    route: String,
}

impl HubRequest {
    pub(crate) fn new(
        uri: &Uri,
        headers: &HeaderMap,
        route: &str,
        mut pairs: Vec<(String, String)>,
        assigns: Assigns,
    ) -> Self {
        let params = pairs.len();
        if let Some(query) = uri.query() {
            pairs.extend(form_urlencoded::parse(query.as_bytes()).into_owned());
        }
        let header = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            info: RequestInfo {
                params,
                assigns,
                ..RequestInfo::default()
            },
            pairs,
            origin: header(header::ORIGIN),
            host: header(header::HOST),
            forwarded_for: ProxyHeader::XForwardedFor.read(headers),
            forwarded: ProxyHeader::Forwarded.read(headers),
            pending: None,
            route: route.to_owned(),
        }
    }

    pub(crate) fn param(&mut self, name: String, value: String) {
        self.pairs.insert(self.info.params, (name, value));
        self.info.params += 1;
    }

    fn check_origin(&self, hub: &Hub, remote: Option<SocketAddr>) -> Result<(), HubRejection> {
        let allowed = hub
            .config()
            .allowed_origins
            .allows(self.origin.as_deref(), self.host.as_deref());
        if allowed {
            return Ok(());
        }
        hub.count_refusal(Refusal::Origin);
        let origin = self.origin.as_deref().unwrap_or_default();
        let error = format!("origin {origin:?} not allowed");
        self.refused(StatusCode::FORBIDDEN, "origin", remote, &error);
        Err(HubRejection::Origin)
    }

    /// Checks the origin, then takes a slot of the hub and one of the client's address
    /// (refused when the hub is full or draining, or the address has its share). The
    /// client is `peer`, or whom the header of a trusted proxy names. The slots go to
    /// the registration, which must follow at once: nothing else gives them back.
    pub(crate) fn admit(
        &mut self,
        hub: &Hub,
        peer: Option<SocketAddr>,
    ) -> Result<(), HubRejection> {
        // Admitted or refused, the request is no longer a pending handshake: it holds a
        // slot of the hub, or is answered.
        if let Some(pending) = self.pending.take() {
            pending.release();
        }
        self.check_origin(hub, peer)?;
        let client = peer.map(|peer| self.client(hub, peer));
        hub.admit(client.map(|client| client.ip()))
            .map_err(|refused| self.refused_by_hub(hub, refused, client))?;
        self.info.remote_addr = client;
        Ok(())
    }

    /// Records the hub's refusal, as it is answered.
    fn refused_by_hub(
        &self,
        hub: &Hub,
        refused: Refused,
        client: Option<SocketAddr>,
    ) -> HubRejection {
        hub.count_refusal(match refused {
            Refused::Full => Refusal::Full,
            Refused::Draining => Refusal::Draining,
            Refused::TooManyPerIp => Refusal::TooManyPerIp,
        });
        let status = match refused {
            Refused::TooManyPerIp => StatusCode::TOO_MANY_REQUESTS,
            Refused::Full | Refused::Draining => StatusCode::SERVICE_UNAVAILABLE,
        };
        let rejection = HubRejection::from(refused);
        self.refused(status, refused.cause(), client, &rejection);
        rejection
    }

    fn refused(
        &self,
        status: StatusCode,
        cause: &'static str,
        remote: Option<SocketAddr>,
        error: &dyn std::fmt::Display,
    ) {
        refused(Some(status), cause, remote, Some(&self.route), error);
    }

    /// The client's address, as seen through the proxies the hub trusts.
    fn client(&self, hub: &Hub, peer: SocketAddr) -> SocketAddr {
        let config = hub.config();
        let forwarded = match config.proxy_header {
            ProxyHeader::XForwardedFor => &self.forwarded_for,
            ProxyHeader::Forwarded => &self.forwarded,
        };
        client_addr(
            peer,
            forwarded.as_deref(),
            &config.trusted_proxies,
            config.proxy_header,
        )
    }

    /// Registers the connection in the slots [`HubRequest::admit`] took.
    pub(crate) fn register(mut self, hub: &Hub, deflate: Option<DeflateParams>) -> Registration {
        self.info.pairs = self.pairs.into_boxed_slice();
        self.info.deflate = deflate;
        hub.register(self.info, &self.route)
    }
}

/// The request's extensions as assigns: hyper's own upgrade handle is gone from them
/// (the upgrade took it), what is left is the application's. (Cloning none allocates
/// nothing.)
pub(crate) fn request_assigns(extensions: &http::Extensions) -> Assigns {
    Assigns::from_extensions(extensions.clone())
}

/// The settings of a connection of `hub`.
pub(crate) fn websocket_config(hub: &Hub) -> WebSocketConfig {
    let config = hub.config();
    WebSocketConfig::default()
        // The hub's one size limit bounds frames and messages alike.
        .max_frame_size(config.max_message_size)
        .max_message_size(config.max_message_size)
        .close_timeout(config.close_timeout)
        .compression(config.compression)
        // What the hub lets a connection queue, the connection may hold unwritten.
        .max_write_buffer_size(config.max_buffered_bytes)
        // The hub's keepalive sweeper watches for silent peers.
        .idle_timeout(None)
}

/// The life of a refused connection: its close handshake, bounded by the close timeout.
/// It keeps the pending-handshake slot of [`crate::serve`], if it has one, until then: a
/// flood of refused clients is bounded as their handshakes were.
async fn close_at_once(
    upgraded: UpgradeFut,
    frame: CloseFrame,
    slot: Option<OwnedSemaphorePermit>,
) {
    if let Ok(mut ws) = upgraded.await {
        let _ = ws.close(frame.code, frame.reason).await;
    }
    drop(slot);
}

/// A registered connection's life: `on_open` (the 101 waits for it), the upgrade, then
/// the connection in a task of its own. The registration goes along, and gives back the
/// hub's slot however this ends.
async fn run<H: Handler>(
    registration: Registration,
    upgraded: UpgradeFut,
    handler: Arc<H>,
    opened: oneshot::Sender<()>,
) {
    let healthy = open(registration.conn(), &*handler).await;
    let _ = opened.send(());
    match upgraded.await {
        // Its own task, of its own size: this one, with the upgrade's state, ends here.
        Ok(ws) => drop(tokio::spawn(live(ws, registration, handler, healthy))),
        Err(_) => abandon(&registration, &*handler).await,
    }
}

/// The connection once upgraded. The socket is an argument, used where it lies: a
/// future keeps room for every value it moves into a local or into a callee, and this
/// one is held for the connection's whole life.
async fn live<H: Handler>(
    mut ws: WebSocket<Upgraded>,
    registration: Registration,
    handler: Arc<H>,
    healthy: bool,
) {
    drive(&mut ws, &registration, &*handler, healthy).await;
}
