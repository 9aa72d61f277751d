//! Accepting a WebSocket on a bare stream, without an HTTP server.

use super::hub::{HubRejection, HubRequest, RETRY_AFTER, request_assigns, websocket_config};
use crate::{
    WebSocket, WebSocketConfig,
    hub::{Handler, Hub, Registration, abandon, drive, open},
};
use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use std::{io, net::SocketAddr, sync::Arc, time::Duration};
use switchboard_proto::{
    Role,
    deflate::DeflateParams,
    handshake::{
        HandshakeError, ServerHandshake,
        http1::{self, ParseError},
    },
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::timeout,
};

/// Settings of [`accept_with`].
///
/// Start from [`AcceptConfig::default`] and change what you need, one method per
/// setting:
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard::{Message, WebSocketConfig, upgrade::{AcceptConfig, accept_with}};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = AcceptConfig::default()
///     .websocket(WebSocketConfig::default().max_message_size(1 << 20))
///     .handshake_timeout(Duration::from_secs(5))
///     .protocols(["chat.v2"]);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
/// let (stream, _) = listener.accept().await?;
/// let (mut ws, _request) = accept_with(stream, &config).await?;
/// while let Some(message) = ws.recv().await {
///     if let message @ (Message::Text(_) | Message::Binary(_)) = message? {
///         ws.send(message).await?;
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcceptConfig {
    /// Settings of the connection once accepted.
    ///
    /// Default [`WebSocketConfig::default`].
    pub websocket: WebSocketConfig,
    /// The longest request head accepted; a longer one is answered 431.
    ///
    /// Default [`http1::MAX_HEAD_LEN`] (32 KiB): room for large cookies, while a client
    /// that never ends its head cannot make us buffer more.
    pub max_head_len: usize,
    /// How long a client may take to send its whole request head.
    ///
    /// Default 10 s: a slowloris client trickling bytes holds a socket no longer.
    pub handshake_timeout: Duration,
    /// Subprotocols this server speaks; the first one the client offers is selected.
    ///
    /// Default none: the handshake selects no subprotocol, whatever the client offers.
    pub protocols: Vec<String>,
}

impl Default for AcceptConfig {
    fn default() -> Self {
        Self {
            websocket: WebSocketConfig::default(),
            max_head_len: http1::MAX_HEAD_LEN,
            handshake_timeout: Duration::from_secs(10),
            protocols: Vec::new(),
        }
    }
}

impl AcceptConfig {
    /// Sets [`AcceptConfig::websocket`].
    pub fn websocket(mut self, websocket: WebSocketConfig) -> Self {
        self.websocket = websocket;
        self
    }

    /// Sets [`AcceptConfig::max_head_len`], in bytes.
    pub fn max_head_len(mut self, max: usize) -> Self {
        self.max_head_len = max;
        self
    }

    /// Sets [`AcceptConfig::handshake_timeout`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets [`AcceptConfig::protocols`].
    pub fn protocols<I>(mut self, protocols: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.protocols = protocols.into_iter().map(Into::into).collect();
        self
    }
}

/// Why [`accept`] failed. The client has been answered with [`AcceptError::status`]
/// where it could be.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The transport failed.
    #[error("transport failed")]
    Io(#[from] io::Error),
    /// The client did not send its whole head within the handshake timeout.
    #[error("handshake timed out")]
    Timeout,
    /// The transport ended before the head did.
    #[error("connection closed during the handshake")]
    Eof,
    /// The head is not valid HTTP/1.1, or too large.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The request is not a valid WebSocket handshake.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The hub refused the `Origin` ([`StreamUpgrade::register`]).
    #[error("origin not allowed")]
    Origin,
    /// The hub is at `max_connections` or shutting down ([`StreamUpgrade::register`]);
    /// answered 503 with `Retry-After`.
    #[error("server is full")]
    Full,
    /// The client's address has the hub's `max_connections_per_ip` connections open
    /// ([`StreamUpgrade::register`]); answered 429 with `Retry-After`.
    #[error("too many connections from this address")]
    TooManyPerIp,
}

impl AcceptError {
    /// What rule refused the handshake, as its event names it.
    fn cause(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::Timeout => "handshake timeout",
            Self::Eof => "eof",
            Self::Parse(ParseError::HeadTooLarge | ParseError::TooManyHeaders) => "head too large",
            Self::Parse(_) => "malformed head",
            Self::Handshake(_) => "handshake",
            Self::Origin => "origin",
            Self::Full => "full",
            Self::TooManyPerIp => "connections per ip",
        }
    }

    /// The HTTP status the client was answered with, if any.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Io(_) | Self::Eof => None,
            Self::Timeout => Some(StatusCode::REQUEST_TIMEOUT),
            Self::Parse(e) => Some(e.status()),
            Self::Handshake(e) => Some(e.status()),
            Self::Origin => Some(StatusCode::FORBIDDEN),
            Self::Full => Some(StatusCode::SERVICE_UNAVAILABLE),
            Self::TooManyPerIp => Some(StatusCode::TOO_MANY_REQUESTS),
        }
    }
}

/// Accepts a WebSocket client on `io` with the default [`AcceptConfig`].
pub async fn accept<S>(io: S) -> Result<WebSocket<S>, AcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    Ok(accept_with(io, &AcceptConfig::default()).await?.0)
}

/// Reads the opening handshake from `io`, answers it, and returns the connection with
/// the request (for its path, query and headers).
///
/// Bytes that arrive after the request head (a first frame sent without waiting for
/// the 101) are kept for the connection.
pub async fn accept_with<S>(
    io: S,
    config: &AcceptConfig,
) -> Result<(WebSocket<S>, Request<()>), AcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    StreamUpgrade::read(io, config).await?.accept().await
}

/// A valid opening handshake read from a bare stream, not answered yet: look at its
/// request (to route it), then [`accept`](StreamUpgrade::accept) it as a plain
/// [`WebSocket`], or [`register`](StreamUpgrade::register) it on a hub.
///
/// ```no_run
/// use switchboard::{hub::{Connection, Handler, Hub, HubConfig}, upgrade::{AcceptConfig, StreamUpgrade}};
///
/// struct Chat;
///
/// impl Handler for Chat {
///     async fn on_open(&self, conn: &Connection) {
///         conn.join(conn.param("room").unwrap_or("lobby"));
///     }
/// }
///
/// # async fn run() -> std::io::Result<()> {
/// let hub = Hub::new(HubConfig::default());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// loop {
///     let (stream, peer) = listener.accept().await?;
///     let hub = hub.clone();
///     tokio::spawn(async move {
///         // A refused handshake has been answered (400, 408, 431…) already.
///         let Ok(upgrade) = StreamUpgrade::read(stream, &AcceptConfig::default()).await else {
///             return;
///         };
///         let room = upgrade.request().uri().path().trim_start_matches('/').to_owned();
///         // Runs the connection until it ends; 403 or 503 when the hub refuses it.
///         let _ = upgrade.param("room", room).peer_addr(peer).register(&hub, Chat).await;
///     });
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct StreamUpgrade<S> {
    io: S,
    /// What arrived after the request head.
    buf: BytesMut,
    request: Request<()>,
    handshake: ServerHandshake,
    websocket: WebSocketConfig,
    params: Vec<(String, String)>,
    peer: Option<SocketAddr>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> StreamUpgrade<S> {
    /// Reads the request head from `io` (within `config`'s timeout and size limit) and
    /// validates the handshake, selecting a subprotocol from `config`'s. A failure has
    /// been answered with its status ([`AcceptError::status`]) when this returns.
    pub async fn read(io: S, config: &AcceptConfig) -> Result<Self, AcceptError> {
        // The handshake's state (request, timer, buffers) lives on the heap while it
        // runs, so that the task awaiting it does not carry its size for the
        // connection's life.
        Box::pin(read_upgrade(io, config)).await
    }

    /// The request: its path, query and headers.
    pub fn request(&self) -> &Request<()> {
        &self.request
    }

    /// Adds a route parameter, for
    /// [`Connection::param`](crate::hub::Connection::param) once registered: a bare
    /// stream has no router, so the caller says what its route captured.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Adds an assign, for [`Connection::assigned`](crate::hub::Connection::assigned)
    /// once registered: what the caller found out about the request (e.g. the user a
    /// cookie names), as a middleware would have put it in the request's extensions.
    pub fn assign<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.request.extensions_mut().insert(value);
        self
    }

    /// The peer's address, for
    /// [`Connection::remote_addr`](crate::hub::Connection::remote_addr) once
    /// registered (a generic stream cannot tell it), or the proxy the client's address
    /// is read from ([`HubConfig::trusted_proxies`](crate::hub::HubConfig::trusted_proxies));
    /// what [`HubConfig::max_connections_per_ip`](crate::hub::HubConfig::max_connections_per_ip)
    /// counts. Without it, the connection is not counted there.
    pub fn peer_addr(mut self, peer: SocketAddr) -> Self {
        self.peer = Some(peer);
        self
    }

    /// Answers 101 with the settings of the [`AcceptConfig`] it was read with, and
    /// returns the connection with the request.
    pub async fn accept(mut self) -> Result<(WebSocket<S>, Request<()>), AcceptError> {
        let deflate = self.websocket.compression.negotiate(&mut self.handshake);
        self.answer().await?;
        let Self {
            io,
            buf,
            request,
            websocket,
            ..
        } = self;
        Ok((connection(io, buf, websocket, deflate), request))
    }

    /// Registers the connection on `hub` and runs it until it ends, with `handler` for
    /// its callbacks: the axum route's rules, on a bare stream. The origin must be
    /// allowed (else 403) and the hub have room and not be shutting down (else 503 with
    /// `Retry-After`); the connection gets the hub's settings (message size,
    /// compression, buffer) rather than the [`AcceptConfig`]'s; [`Handler::on_open`]
    /// runs before the 101 (open means ready).
    ///
    /// Returns once the connection has ended and [`Handler::on_close`] has run; `Err`
    /// when it was refused (answered), or when the 101 could not be written (then
    /// `on_close` has run with 1006).
    ///
    /// From the registration on, the connection holds a slot of the hub
    /// (`max_connections`, and `max_connections_per_ip` when
    /// [`StreamUpgrade::peer_addr`] was given). The tasks an accept loop spawns before
    /// that, for handshakes still being read, are the loop's to bound: with a
    /// semaphore, as `switchboard::serve` does with `max_pending_handshakes`.
    pub async fn register<H: Handler>(self, hub: &Hub, handler: H) -> Result<(), AcceptError> {
        self.register_shared(hub, Arc::new(handler)).await
    }

    /// [`StreamUpgrade::register`] with a handler shared by many connections.
    pub async fn register_shared<H: Handler>(
        self,
        hub: &Hub,
        handler: Arc<H>,
    ) -> Result<(), AcceptError> {
        // The handshake's state is on the heap and gone once the 101 is out: this
        // future is held for the connection's life, and keeps room for the largest
        // state it can be in.
        let (mut ws, registration, healthy) =
            Box::pin(self.admit_and_answer(hub, &*handler)).await?;
        drive(&mut ws, &registration, &*handler, healthy).await;
        Ok(())
    }

    /// The checks, the registration, `on_open` and the 101: the connection, registered,
    /// with whether `on_open` returned.
    async fn admit_and_answer<H: Handler>(
        mut self,
        hub: &Hub,
        handler: &H,
    ) -> Result<(WebSocket<S>, Registration, bool), AcceptError> {
        let params = std::mem::take(&mut self.params);
        let mut head = self.hub_request(params);
        if let Err(rejection) = head.admit(hub, self.peer) {
            let error = match rejection {
                HubRejection::Origin => AcceptError::Origin,
                HubRejection::TooManyPerIp => AcceptError::TooManyPerIp,
                _ => AcceptError::Full,
            };
            refuse(&mut self.io, &error).await;
            return Err(error);
        }
        let websocket = websocket_config(hub);
        let deflate = websocket.compression.negotiate(&mut self.handshake);
        let registration = head.register(hub, deflate);
        let healthy = open(registration.conn(), handler).await;
        if let Err(error) = self.answer().await {
            abandon(&registration, handler).await;
            return Err(error);
        }
        let ws = connection(self.io, self.buf, websocket, deflate);
        Ok((ws, registration, healthy))
    }

    /// Writes the 101.
    async fn answer(&mut self) -> Result<(), AcceptError> {
        let mut out = Vec::with_capacity(256);
        self.handshake.write_response(&mut out);
        Ok(self.io.write_all(&out).await?)
    }

    /// The hub's view of this upgrade.
    fn hub_request(&self, params: Vec<(String, String)>) -> HubRequest {
        let request = &self.request;
        HubRequest::new(
            request.uri(),
            request.headers(),
            request.uri().path(),
            params,
            request_assigns(request.extensions()),
        )
    }
}

/// The connection on `io`, once answered: it reads `buf`, what arrived after the
/// request head, first.
fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    buf: BytesMut,
    config: WebSocketConfig,
    deflate: Option<DeflateParams>,
) -> WebSocket<S> {
    let ws = WebSocket::from_partially_read(io, buf, Role::Server, config);
    match deflate {
        Some(params) => ws.with_deflate(params),
        None => ws,
    }
}

async fn read_upgrade<S>(mut io: S, config: &AcceptConfig) -> Result<StreamUpgrade<S>, AcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let head = timeout(
        config.handshake_timeout,
        read_head(&mut io, &mut buf, config.max_head_len),
    )
    .await
    .unwrap_or(Err(AcceptError::Timeout));
    let validated = head.and_then(|(request, len)| {
        let mut handshake = ServerHandshake::from_request(&request)?;
        let supported: Vec<&str> = config.protocols.iter().map(String::as_str).collect();
        handshake.select_protocol(&supported);
        Ok((request, len, handshake))
    });
    match validated {
        Ok((request, len, handshake)) => {
            let _ = buf.split_to(len);
            Ok(StreamUpgrade {
                io,
                buf,
                request,
                handshake,
                websocket: config.websocket,
                params: Vec::new(),
                peer: None,
            })
        }
        Err(error) => {
            super::refused(error.status(), error.cause(), None, None, &error);
            refuse(&mut io, &error).await;
            Err(error)
        }
    }
}

/// Reads until `buf` holds a whole request head.
async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    max_head_len: usize,
) -> Result<(Request<()>, usize), AcceptError> {
    loop {
        // The limit holds however the head arrived: in one read or trickled.
        let parsed = http1::parse_request(buf.get(..max_head_len).unwrap_or(buf))?;
        if let Some(head) = parsed {
            return Ok(head);
        }
        if buf.len() >= max_head_len {
            return Err(ParseError::HeadTooLarge.into());
        }
        buf.reserve(1024);
        if io.read_buf(buf).await? == 0 {
            return Err(AcceptError::Eof);
        }
    }
}

/// Answers a failed handshake with its status, best effort, and closes the stream.
async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, error: &AcceptError) {
    if let Some(refusal) = refusal(error) {
        let _ = io.write_all(&refusal).await;
        let _ = io.shutdown().await;
    }
}

/// The response to a failed handshake, with the error as its text body; `None` when
/// there is nobody to answer (see [`AcceptError::status`]).
pub(crate) fn refusal(error: &AcceptError) -> Option<Vec<u8>> {
    let mut head = match error {
        AcceptError::Handshake(e) => e.response(),
        _ => {
            let mut response = Response::new(());
            *response.status_mut() = error.status()?;
            response
        }
    };
    let headers = head.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let (name, value) = super::CONNECTION_CLOSE;
    headers.insert(name, value);
    if let AcceptError::Full | AcceptError::TooManyPerIp = error {
        headers.insert(http::header::RETRY_AFTER, RETRY_AFTER);
    }
    let mut out = Vec::with_capacity(256);
    http1::write_response_with_body(&head, error.to_string().as_bytes(), &mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Compression;

    #[test]
    fn every_builder_method_sets_its_field() {
        // Values other than the defaults, so that a method that sets nothing fails.
        let websocket = WebSocketConfig::default().compression(Compression::shared());
        let config = AcceptConfig::default()
            .websocket(websocket)
            .max_head_len(1)
            .handshake_timeout(Duration::from_secs(2))
            .protocols(["b", "a"]);
        // Exhaustive: a new field does not compile here until it has a method and a check.
        let AcceptConfig {
            websocket: set_websocket,
            max_head_len,
            handshake_timeout,
            protocols,
        } = config;
        assert_eq!(set_websocket, websocket);
        assert_eq!(max_head_len, 1);
        assert_eq!(handshake_timeout, Duration::from_secs(2));
        assert_eq!(protocols, ["b", "a"]);
    }
}
