//! Accepting a WebSocket on a bare stream, without an HTTP server.

use crate::{WebSocket, WebSocketConfig};
use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use std::{io, time::Duration};
use switchboard_proto::{
    Role,
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
}

impl AcceptError {
    /// The HTTP status the client was answered with, if any.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Io(_) | Self::Eof => None,
            Self::Timeout => Some(StatusCode::REQUEST_TIMEOUT),
            Self::Parse(e) => Some(e.status()),
            Self::Handshake(e) => Some(e.status()),
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
    // The handshake's state (request, timer, buffers) lives on the heap while it runs,
    // so that the task awaiting it does not carry its size for the connection's life.
    Box::pin(handshake(io, config)).await
}

async fn handshake<S>(
    mut io: S,
    config: &AcceptConfig,
) -> Result<(WebSocket<S>, Request<()>), AcceptError>
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
    let (request, deflate) = match head.and_then(|(request, len)| {
        let mut handshake = ServerHandshake::from_request(&request)?;
        let supported: Vec<&str> = config.protocols.iter().map(String::as_str).collect();
        handshake.select_protocol(&supported);
        let deflate = config.websocket.compression.negotiate(&mut handshake);
        Ok((request, len, handshake, deflate))
    }) {
        Ok((request, len, handshake, deflate)) => {
            let _ = buf.split_to(len);
            let mut out = Vec::with_capacity(256);
            handshake.write_response(&mut out);
            io.write_all(&out).await?;
            (request, deflate)
        }
        Err(error) => {
            refuse(&mut io, &error).await;
            return Err(error);
        }
    };
    let mut ws = WebSocket::from_partially_read(io, buf, Role::Server, config.websocket);
    if let Some(params) = deflate {
        ws = ws.with_deflate(params);
    }
    Ok((ws, request))
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
