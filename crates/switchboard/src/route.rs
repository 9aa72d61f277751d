//! Registering connections with a hub from axum routes.

use crate::{
    WebSocket, WebSocketConfig,
    hub::{Handler, Hub, Registration, RequestInfo, abandon, drive, open},
    upgrade::{CONNECTION_CLOSE, Rejection, Upgrade, UpgradeFut, Upgraded},
};
use axum::{
    extract::{ConnectInfo, FromRequestParts, MatchedPath, OriginalUri, RawPathParams},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get},
};
use http::{Extensions, HeaderValue, StatusCode, header, request::Parts};
use std::{net::SocketAddr, sync::Arc};
use tokio::sync::oneshot;

/// A route that upgrades every request and registers the connection with `hub`, with
/// `handler` for its callbacks.
///
/// ```no_run
/// # use switchboard::hub::{Handler, Hub, HubConfig};
/// # struct Chat;
/// # impl Handler for Chat {}
/// let hub = Hub::new(HubConfig::default());
/// let app: axum::Router = axum::Router::new().route("/chat/{room}", switchboard::ws(hub.clone(), Chat));
/// ```
pub fn ws<H: Handler, S: Clone + Send + Sync + 'static>(hub: Hub, handler: H) -> MethodRouter<S> {
    let handler = Arc::new(handler);
    get(move |upgrade: HubUpgrade| async move { upgrade.register_shared(&hub, handler).await })
}

/// An upgrade request on its way into a hub: the extractor form of [`ws`], for handlers
/// that need to do work (authenticate, pick a handler) before registering.
///
/// It carries the route parameters, the query, and the request's extensions (what
/// middleware and extractors inserted, the connection's assigns) into the connection.
///
/// ```no_run
/// use axum::{http::StatusCode, response::IntoResponse, routing::get};
/// use switchboard::{HubUpgrade, hub::{Handler, Hub, HubConfig}};
/// # struct Chat;
/// # impl Handler for Chat {}
///
/// let hub = Hub::new(HubConfig::default());
/// let app: axum::Router = axum::Router::new().route(
///     "/chat",
///     get(move |upgrade: HubUpgrade, uri: axum::http::Uri| async move {
///         if uri.query() != Some("token=ok") {
///             return StatusCode::UNAUTHORIZED.into_response();
///         }
///         // Answers 101 once `Chat::on_open` has run.
///         upgrade.register(&hub, Chat).await
///     }),
/// );
/// ```
#[derive(Debug)]
pub struct HubUpgrade {
    upgrade: Upgrade,
    request: RequestInfo,
    origin: Option<String>,
    host: Option<String>,
}

/// Why an axum request could not be upgraded into a hub.
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
}

impl IntoResponse for HubRejection {
    fn into_response(self) -> Response {
        match self {
            Self::Upgrade(rejection) => rejection.into_response().into_response(),
            Self::Origin => {
                (StatusCode::FORBIDDEN, [CONNECTION_CLOSE], self.to_string()).into_response()
            }
            Self::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                // Clients with a backoff (ours) read this as the earliest retry.
                [
                    (header::RETRY_AFTER, HeaderValue::from_static("5")),
                    CONNECTION_CLOSE,
                ],
                self.to_string(),
            )
                .into_response(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for HubUpgrade {
    type Rejection = HubRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let upgrade = Upgrade::from_parts(parts)?;
        let raw_params = RawPathParams::from_request_parts(parts, state).await.ok();
        let routed = raw_params.is_some();
        let mut pairs: Vec<(String, String)> = raw_params
            .iter()
            .flat_map(|params| params.iter())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let params = pairs.len();
        if let Some(query) = parts.uri.query() {
            pairs.extend(form_urlencoded::parse(query.as_bytes()).into_owned());
        }
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Self {
            origin: header(header::ORIGIN),
            host: header(header::HOST),
            request: RequestInfo {
                pairs: pairs.into_boxed_slice(),
                params,
                assigns: assigns(parts, routed),
                remote_addr: None,
                deflate: None,
            },
            upgrade,
        })
    }
}

/// The request's extensions, when the application put some there: its assigns.
///
/// axum's routing adds entries of its own to every request (the path parameters, which
/// a connection has as [`Connection::param`](crate::hub::Connection::param), the matched
/// path, the original URI, the peer's address); a request with nothing else gets an
/// empty set rather than a copy of those, which would cost every connection a table.
/// Counting only entries it can see, this can only err towards copying.
fn assigns(parts: &Parts, routed: bool) -> Extensions {
    let extensions = &parts.extensions;
    let routing = [
        // `RawPathParams` is found exactly when axum stored the route's parameters.
        routed,
        extensions.get::<MatchedPath>().is_some(),
        extensions.get::<OriginalUri>().is_some(),
        extensions.get::<ConnectInfo<SocketAddr>>().is_some(),
    ];
    let routing = routing.into_iter().filter(|&present| present).count();
    if extensions.len() > routing {
        extensions.clone()
    } else {
        Extensions::new()
    }
}

impl HubUpgrade {
    /// Checks the origin and the hub's capacity, registers the connection and runs its
    /// [`Handler::on_open`], then answers 101 and runs the connection in the hub with
    /// `handler`.
    ///
    /// Open means ready: the 101 leaves once `on_open` has returned, so when the client
    /// sees its connection open, what `on_open` did (rooms joined, metadata set,
    /// messages sent, which wait in the connection's queue for the socket) has happened,
    /// and whatever is published to its rooms from then on reaches it. A slow `on_open`
    /// therefore delays the 101, as in uWebSockets and Phoenix.
    pub async fn register<H: Handler>(self, hub: &Hub, handler: H) -> Response {
        self.register_shared(hub, Arc::new(handler)).await
    }

    /// [`HubUpgrade::register`] with a handler shared by many connections.
    pub async fn register_shared<H: Handler>(self, hub: &Hub, handler: Arc<H>) -> Response {
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

    /// Selects the first subprotocol the client offered that is in `supported`.
    pub fn protocols(mut self, supported: &[&str]) -> Self {
        self.upgrade = self.upgrade.protocols(supported);
        self
    }

    /// Registers the connection and starts its task; returns the 101 with the signal
    /// that `on_open` has returned.
    fn try_register<H: Handler>(
        self,
        hub: &Hub,
        handler: Arc<H>,
    ) -> Result<(Response, oneshot::Receiver<()>), HubRejection> {
        let config = hub.config();
        if !config
            .allowed_origins
            .allows(self.origin.as_deref(), self.host.as_deref())
        {
            return Err(HubRejection::Origin);
        }
        if !hub.admit() {
            return Err(HubRejection::Full);
        }
        let websocket = WebSocketConfig::default()
            // The hub's one size limit bounds frames and messages alike.
            .max_frame_size(config.max_message_size)
            .max_message_size(config.max_message_size)
            .close_timeout(config.close_timeout)
            .compression(config.compression)
            // What the hub lets a connection queue, the connection may hold unwritten.
            .max_write_buffer_size(config.max_buffered_bytes)
            // The hub's keepalive sweeper watches for silent peers.
            .idle_timeout(None);
        let (response, upgraded) = self.upgrade.config(websocket).into_parts();
        // What the connection carries is known before the 101: the address from the
        // request (axum's `ConnectInfo`, which `serve` provides), the compression from
        // the response.
        let mut request = self.request;
        request.remote_addr = upgraded.peer_addr();
        request.deflate = upgraded.deflate();
        let registration = hub.register(request);
        let (opened, on_opened) = oneshot::channel();
        tokio::spawn(run(registration, upgraded, handler, opened));
        Ok((response.into_response(), on_opened))
    }
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
