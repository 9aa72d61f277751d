//! The client side: open a connection to a WebSocket server.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use switchboard::{Message, client};
//!
//! let (mut ws, _response) = client::connect("ws://127.0.0.1:9001/chat").await?;
//! ws.send(Message::text("hello")).await?;
//! if let Some(reply) = ws.recv().await {
//!     println!("{:?}", reply?);
//! }
//! # Ok(()) }
//! ```
//!
//! `wss://` needs the `tls` feature: the server's certificate is checked against
//! Mozilla's roots by default, or against the roots of `ClientConfig::roots` (see
//! `switchboard::tls`). Over a stream of your own (another TLS library, a proxy's tunnel),
//! run the handshake with [`handshake`].

use crate::{WebSocket, WebSocketConfig};
use bytes::BytesMut;
use http::{HeaderName, HeaderValue, Response, Uri};
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use switchboard_proto::{
    CloseCode, Frame, Role,
    handshake::{ClientHandshake, ClientHandshakeError, ClientRequestError, http1},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    time::timeout,
};

/// Settings of a client connection.
///
/// Start from [`ClientConfig::default`] and change what you need, one method per
/// setting:
///
/// ```no_run
/// use std::time::Duration;
/// use http::{HeaderName, HeaderValue};
/// use switchboard::{Compression, WebSocketConfig, client::{self, ClientConfig}};
///
/// # async fn run() -> Result<(), client::ConnectError> {
/// let config = ClientConfig::default()
///     .websocket(WebSocketConfig::default().compression(Compression::dedicated()))
///     .protocols(["chat.v2", "chat.v1"])
///     .headers([(
///         HeaderName::from_static("authorization"),
///         HeaderValue::from_static("Bearer abc"),
///     )])
///     .timeout(Duration::from_secs(3));
/// let (ws, response) = client::connect_with("ws://127.0.0.1:9001/chat", &config).await?;
/// # let _ = (ws, response);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Settings of the connection once open. Its
    /// [`compression`](WebSocketConfig::compression) decides whether permessage-deflate
    /// is offered; an answer the client cannot honour fails the connection with 1010.
    ///
    /// Default [`WebSocketConfig::default`].
    pub websocket: WebSocketConfig,
    /// Subprotocols to offer, in order of preference.
    ///
    /// Default none: a server that speaks no subprotocol accepts the connection.
    pub protocols: Vec<String>,
    /// Extra request headers (e.g. `Origin`, `Authorization`).
    ///
    /// Default none: the handshake's own headers are all a server needs.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// How long connecting and the opening handshake may take together.
    ///
    /// Default 10 s: a round trip or two for a live server, and a bound on the wait for
    /// one that accepts the connection and never answers.
    pub timeout: Duration,
    /// The certificates a `wss://` server's chain must end at (feature `tls`).
    ///
    /// Default [`Roots::WebPki`](crate::tls::Roots::WebPki), Mozilla's, what browsers
    /// trust.
    #[cfg(feature = "tls")]
    pub roots: crate::tls::Roots,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            websocket: WebSocketConfig::default(),
            protocols: Vec::new(),
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            #[cfg(feature = "tls")]
            roots: crate::tls::Roots::default(),
        }
    }
}

impl ClientConfig {
    /// Sets [`ClientConfig::websocket`].
    pub fn websocket(mut self, websocket: WebSocketConfig) -> Self {
        self.websocket = websocket;
        self
    }

    /// Sets [`ClientConfig::protocols`], in order of preference.
    pub fn protocols<I>(mut self, protocols: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.protocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// Sets [`ClientConfig::headers`].
    pub fn headers(mut self, headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>) -> Self {
        self.headers = headers.into_iter().collect();
        self
    }

    /// Sets [`ClientConfig::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::roots`].
    #[cfg(feature = "tls")]
    pub fn roots(mut self, roots: crate::tls::Roots) -> Self {
        self.roots = roots;
        self
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL does not parse.
    #[error("invalid url")]
    InvalidUrl(#[from] http::uri::InvalidUri),
    /// The URL or the protocols cannot form a handshake.
    #[error(transparent)]
    Request(#[from] ClientRequestError),
    /// `wss://` without the `tls` feature of switchboard: turn it on, or bring a TLS
    /// stream of your own to [`handshake`].
    #[error(
        "wss:// needs the `tls` feature of switchboard (or a TLS stream of your own, given to client::handshake)"
    )]
    TlsUnsupported,
    /// The TLS handshake failed (e.g. a certificate that does not chain to the
    /// [`ClientConfig::roots`](ClientConfig) or does not name the host).
    #[error("tls handshake failed")]
    Tls(#[source] io::Error),
    /// Connecting or writing failed.
    #[error("transport failed")]
    Io(#[from] io::Error),
    /// The server did not answer within the timeout.
    #[error("handshake timed out")]
    Timeout,
    /// The server's answer is not HTTP/1.1.
    #[error(transparent)]
    Parse(#[from] http1::ParseError),
    /// The server closed the connection before answering.
    #[error("connection closed during the handshake")]
    Eof,
    /// The server's answer does not accept the handshake; it carries the status (e.g. a
    /// 403 or a 503) when the server refused.
    #[error(transparent)]
    Handshake(#[from] ClientHandshakeError),
}

/// Connects to `url` (`ws://host[:port]/path?query`, or `wss://` with the `tls`
/// feature) with the default settings.
pub async fn connect(url: &str) -> Result<(WebSocket<MaybeTlsStream>, Response<()>), ConnectError> {
    connect_with(url, &ClientConfig::default()).await
}

/// Connects to `url` with the given settings.
pub async fn connect_with(
    url: &str,
    config: &ClientConfig,
) -> Result<(WebSocket<MaybeTlsStream>, Response<()>), ConnectError> {
    let uri: Uri = url.parse()?;
    let request = build_request(&uri, config)?;
    let tls = matches!(uri.scheme_str(), Some("wss" | "https"));
    if tls && !cfg!(feature = "tls") {
        return Err(ConnectError::TlsUnsupported);
    }
    let host = uri.host().ok_or(ClientRequestError::MissingHost)?;
    // An IPv6 literal keeps its brackets in the URI but not in a socket address.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    timeout(config.timeout, async {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let stream = if tls {
            MaybeTlsStream::tls(tcp, host, config).await?
        } else {
            MaybeTlsStream::plain(tcp)
        };
        run_handshake(stream, &request, config.websocket).await
    })
    .await
    .unwrap_or(Err(ConnectError::Timeout))
}

/// The stream of a connection [`connect`] opened: TCP for `ws://`, TLS over TCP for
/// `wss://`.
#[derive(Debug)]
pub struct MaybeTlsStream {
    inner: Transport,
}

#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    // Boxed: rustls' state is a few kilobytes, and a plain connection should not pay it.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl MaybeTlsStream {
    fn plain(tcp: TcpStream) -> Self {
        Self {
            inner: Transport::Plain(tcp),
        }
    }

    #[cfg(feature = "tls")]
    async fn tls(tcp: TcpStream, host: &str, config: &ClientConfig) -> Result<Self, ConnectError> {
        let tls = crate::tls::connect(tcp, host, &config.roots).await?;
        Ok(Self {
            inner: Transport::Tls(Box::new(tls)),
        })
    }

    #[cfg(not(feature = "tls"))]
    async fn tls(_: TcpStream, _: &str, _: &ClientConfig) -> Result<Self, ConnectError> {
        Err(ConnectError::TlsUnsupported)
    }

    /// Whether the connection runs over TLS (`wss://`).
    pub fn is_tls(&self) -> bool {
        !matches!(self.inner, Transport::Plain(_))
    }

    /// The TCP stream underneath, e.g. for its addresses.
    pub fn tcp(&self) -> &TcpStream {
        match &self.inner {
            Transport::Plain(tcp) => tcp,
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.get_ref().0,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match &mut $self.get_mut().inner {
            Transport::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            #[cfg(feature = "tls")]
            Transport::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $e
            }
        }
    };
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Transport::Plain(tcp) => tcp.is_write_vectored(),
            #[cfg(feature = "tls")]
            Transport::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}

/// Runs the opening handshake for `url` over a stream the caller opened (e.g. TLS).
pub async fn handshake<S>(
    io: S,
    url: &str,
    config: &ClientConfig,
) -> Result<(WebSocket<S>, Response<()>), ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let uri: Uri = url.parse()?;
    let request = build_request(&uri, config)?;
    timeout(
        config.timeout,
        run_handshake(io, &request, config.websocket),
    )
    .await
    .unwrap_or(Err(ConnectError::Timeout))
}

fn build_request(uri: &Uri, config: &ClientConfig) -> Result<ClientHandshake, ConnectError> {
    let protocols: Vec<&str> = config.protocols.iter().map(String::as_str).collect();
    let mut request = ClientHandshake::new(uri, rand::random())?.with_protocols(&protocols)?;
    for (name, value) in &config.headers {
        request = request.with_header(name.clone(), value.clone());
    }
    if let Some(deflate) = config.websocket.compression.deflate_config() {
        request = request.with_deflate(deflate);
    }
    Ok(request)
}

async fn run_handshake<S>(
    mut io: S,
    request: &ClientHandshake,
    config: WebSocketConfig,
) -> Result<(WebSocket<S>, Response<()>), ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(512);
    http1::write_request(&request.request(), &mut out);
    io.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(1024);
    let (response, len) = loop {
        if let Some(head) = http1::parse_response(&buf)? {
            break head;
        }
        if buf.len() >= http1::MAX_HEAD_LEN {
            return Err(http1::ParseError::HeadTooLarge.into());
        }
        buf.reserve(1024);
        if io.read_buf(&mut buf).await? == 0 {
            return Err(ConnectError::Eof);
        }
    };
    let accepted = match request.validate_response(&response) {
        Ok(accepted) => accepted,
        Err(error) => {
            refuse_extensions(&mut io, &error).await;
            return Err(error.into());
        }
    };
    // Frames the server sent right after its 101 are part of the connection.
    let _ = buf.split_to(len);
    let ws = WebSocket::from_partially_read(io, buf, Role::Client, config);
    let ws = match accepted.deflate() {
        Some(params) => ws.with_deflate(params),
        None => ws,
    };
    Ok((ws, response))
}

/// After a 101 whose extensions we cannot honour the connection is open on the server's
/// side: tell it why with 1010, "the client ... has expected the server to negotiate one
/// or more extension, but the server didn't return them in the response message of the
/// WebSocket handshake" (RFC 6455 §7.4.1), best effort, and close.
async fn refuse_extensions<S: AsyncWrite + Unpin>(io: &mut S, error: &ClientHandshakeError) {
    if !matches!(
        error,
        ClientHandshakeError::Deflate(_) | ClientHandshakeError::UnexpectedExtension(_)
    ) {
        return;
    }
    let mut out = BytesMut::new();
    Frame::close(CloseCode::EXTENSION_REQUIRED, error.to_string())
        .masked(rand::random())
        .write_to(&mut out);
    let _ = io.write_all(&out).await;
    let _ = io.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Compression;

    #[test]
    fn every_builder_method_sets_its_field() {
        // Values other than the defaults, so that a method that sets nothing fails.
        let websocket = WebSocketConfig::default().compression(Compression::shared());
        let header = (
            HeaderName::from_static("origin"),
            HeaderValue::from_static("http://a.example"),
        );
        let config = ClientConfig::default()
            .websocket(websocket)
            .protocols(["b", "a"])
            .headers([header.clone()])
            .timeout(Duration::from_secs(1));
        #[cfg(feature = "tls")]
        let roots = crate::tls::Roots::Only(vec![crate::tls::Certificate::from_der(vec![1])]);
        #[cfg(feature = "tls")]
        let config = config.roots(roots.clone());
        // Exhaustive: a new field does not compile here until it has a method and a check.
        let ClientConfig {
            websocket: set_websocket,
            protocols,
            headers,
            timeout,
            #[cfg(feature = "tls")]
                roots: set_roots,
        } = config;
        assert_eq!(set_websocket, websocket);
        assert_eq!(protocols, ["b", "a"]);
        assert_eq!(headers, [header]);
        assert_eq!(timeout, Duration::from_secs(1));
        #[cfg(feature = "tls")]
        assert_eq!(set_roots, roots);
    }

    #[cfg(not(feature = "tls"))]
    #[tokio::test]
    async fn wss_without_the_feature_says_which_feature() {
        let error = connect("wss://127.0.0.1:1/").await.unwrap_err();
        assert!(matches!(error, ConnectError::TlsUnsupported), "{error:?}");
        assert!(error.to_string().contains("`tls` feature"), "{error}");
    }
}
