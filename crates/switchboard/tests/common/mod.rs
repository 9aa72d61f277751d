//! Servers and raw-socket helpers shared by the upgrade and interop tests.
//!
//! Every server listens on real TCP at 127.0.0.1:0 and reports what its connections saw
//! on a channel, so that a test can check the server's side of a conversation (a close
//! frame, an abnormal closure) rather than only what the client got back.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use axum::{
    Router,
    extract::State,
    response::Response as AxumResponse,
    routing::{any, get},
};
use bytes::BytesMut;
use http::{Request, Response};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use std::{convert::Infallible, future::Future, net::SocketAddr, time::Duration};
use switchboard::{
    CloseCode, Error, Message, Role, WebSocket, WebSocketConfig,
    axum::WebSocketUpgrade,
    proto::{Decoder, Limits, handshake::http1 as wire},
    upgrade::{AcceptConfig, AcceptError, accept_with, upgrade},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
    task::JoinHandle,
    time::timeout,
};

pub(crate) mod hub;

/// How long any single step of a test may take before it counts as hung.
pub(crate) const STEP: Duration = Duration::from_secs(10);

/// The example echo server's limit: Autobahn's largest cases send 16 MiB messages.
pub(crate) const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// The key of RFC 6455 §1.3's example handshake, and the accept value it must produce.
pub(crate) const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub(crate) const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Awaits `future`, failing the test if it takes longer than [`STEP`].
pub(crate) async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// What a server connection does besides answering pings and close frames.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Behaviour {
    /// Echo every text and binary message, like `examples/echo.rs`.
    Echo,
    /// Echo the first data message, then close with this code and reason.
    CloseAfterFirst(CloseCode, &'static str),
}

/// Something a server connection saw.
#[derive(Debug)]
pub(crate) enum Event {
    /// `recv` returned this message (data messages are also echoed).
    Received(Message),
    /// `recv` returned this error, which ended the connection.
    Failed(Error),
    /// The server's own `close` returned this.
    Closed(Result<(), Error>),
    /// `accept_with` refused the connection.
    Refused(AcceptError),
    /// `recv` returned `None`: the connection is over.
    Ended,
}

/// A server running in the background; dropping it stops accepting.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    events: UnboundedReceiver<Event>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// A `ws://` URL for `path` on this server.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// The next thing a connection saw.
    pub(crate) async fn event(&mut self) -> Event {
        within("server event", self.events.recv())
            .await
            .expect("the server's connections hold the sender")
    }

    /// The next event that is not a received data message.
    pub(crate) async fn control_event(&mut self) -> Event {
        loop {
            match self.event().await {
                Event::Received(m) if m.is_data() => {}
                other => return other,
            }
        }
    }

    /// The events up to and including [`Event::Ended`], data messages left out.
    pub(crate) async fn until_end(&mut self) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let event = self.control_event().await;
            let end = matches!(event, Event::Ended);
            seen.push(event);
            if end {
                return seen;
            }
        }
    }
}

/// Runs one server connection: what every server below does once it has a WebSocket.
pub(crate) async fn serve_ws<S>(
    mut ws: WebSocket<S>,
    behaviour: Behaviour,
    events: UnboundedSender<Event>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A test may have finished with the channel: nobody to tell is not an error here.
    let report = |event| drop(events.send(event));
    while let Some(next) = ws.recv().await {
        let message = match next {
            Ok(message) => message,
            Err(error) => {
                report(Event::Failed(error));
                continue;
            }
        };
        let echo = message.is_data().then(|| message.clone());
        report(Event::Received(message));
        let Some(echo) = echo else { continue };
        if let Err(error) = ws.send(echo).await {
            report(Event::Failed(error));
            continue;
        }
        if let Behaviour::CloseAfterFirst(code, reason) = behaviour {
            report(Event::Closed(ws.close(code, reason).await));
        }
    }
    report(Event::Ended);
}

/// Binds a listener on 127.0.0.1:0; returns it with its address.
pub(crate) async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// The example echo server's settings.
pub(crate) fn echo_config() -> AcceptConfig {
    AcceptConfig::default().websocket(
        WebSocketConfig::default()
            .max_frame_size(MAX_MESSAGE_SIZE)
            .max_message_size(MAX_MESSAGE_SIZE),
    )
}

/// A server on `accept_with`: with [`echo_config`] and [`Behaviour::Echo`], the loop of
/// `examples/echo.rs`.
pub(crate) async fn raw_server(config: AcceptConfig, behaviour: Behaviour) -> Server {
    let (listener, addr) = listen().await;
    let (tx, events) = unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            let config = config.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match accept_with(stream, &config).await {
                    Ok((ws, _request)) => serve_ws(ws, behaviour, tx).await,
                    Err(error) => drop(tx.send(Event::Refused(error))),
                }
            });
        }
    });
    Server { addr, events, task }
}

/// How the hyper server hands the TCP stream to hyper.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HyperIo {
    /// `TokioIo<TcpStream>`: the upgrade gets the stream itself back.
    Tcp,
    /// `TokioIo<BufStream<TcpStream>>`: the upgrade keeps hyper's boxed IO.
    Wrapped,
}

/// A hyper 1.x server whose service upgrades with `switchboard::upgrade::upgrade`.
pub(crate) async fn hyper_server(io: HyperIo, behaviour: Behaviour) -> Server {
    let (listener, addr) = listen().await;
    let (tx, events) = unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            match io {
                HyperIo::Tcp => tokio::spawn(serve_hyper(stream, behaviour, tx)),
                HyperIo::Wrapped => tokio::spawn(serve_hyper(
                    tokio::io::BufStream::new(stream),
                    behaviour,
                    tx,
                )),
            };
        }
    });
    Server { addr, events, task }
}

async fn serve_hyper<I>(io: I, behaviour: Behaviour, tx: UnboundedSender<Event>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |mut request: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            Ok::<_, Infallible>(match upgrade(&mut request) {
                Ok((response, connection)) => {
                    tokio::spawn(async move {
                        match connection.await {
                            Ok(ws) => serve_ws(ws, behaviour, tx).await,
                            Err(error) => drop(tx.send(Event::Failed(error))),
                        }
                    });
                    response
                }
                Err(rejection) => rejection.into_response(),
            })
        }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
}

#[derive(Clone, Debug)]
struct AxumState {
    behaviour: Behaviour,
    events: UnboundedSender<Event>,
}

/// An axum app served with `axum::serve`: `/ws` is routed with `get()`, `/any` with
/// `any()` (so that the extractor itself sees other methods). Both select subprotocol
/// `b` or `a` when offered, and allow the echo example's message size.
pub(crate) async fn axum_server(behaviour: Behaviour) -> Server {
    let (listener, addr) = listen().await;
    let (events_tx, events) = unbounded_channel();
    let app = Router::new()
        .route("/ws", get(axum_ws))
        .route("/any", any(axum_ws))
        .with_state(AxumState {
            behaviour,
            events: events_tx,
        });
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { addr, events, task }
}

async fn axum_ws(State(state): State<AxumState>, upgrade: WebSocketUpgrade) -> AxumResponse {
    upgrade
        .protocols(&["b", "a"])
        .config(
            WebSocketConfig::default()
                .max_frame_size(MAX_MESSAGE_SIZE)
                .max_message_size(MAX_MESSAGE_SIZE),
        )
        .on_upgrade(move |ws| serve_ws(ws, state.behaviour, state.events))
}

/// A valid opening handshake for `path`, as one string, with `extra` header lines
/// (each ending in CRLF) before the blank line.
pub(crate) fn handshake_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
         {extra}\r\n"
    )
}

/// Reads a response head; returns it with whatever arrived after it.
pub(crate) async fn read_response(tcp: &mut TcpStream) -> (Response<()>, BytesMut) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if let Some((response, len)) = wire::parse_response(&buf).unwrap() {
            let rest = buf.split_off(len);
            return (response, rest);
        }
        let n = within("response head", tcp.read_buf(&mut buf))
            .await
            .unwrap();
        assert_ne!(n, 0, "connection closed before the response head ended");
    }
}

/// Reads the body of `response` by its `Content-Length` (none: empty), starting with
/// `rest`.
pub(crate) async fn read_body(
    tcp: &mut TcpStream,
    response: &Response<()>,
    mut rest: BytesMut,
) -> Vec<u8> {
    let len: usize = response
        .headers()
        .get("content-length")
        .map_or(0, |len| len.to_str().unwrap().parse().unwrap());
    while rest.len() < len {
        let n = within("response body", tcp.read_buf(&mut rest))
            .await
            .unwrap();
        assert_ne!(n, 0, "connection closed before the response body ended");
    }
    assert_eq!(rest.len(), len, "bytes after the response body");
    rest.to_vec()
}

/// Sends `request` and reads the whole response (head and `Content-Length` body).
pub(crate) async fn http_exchange(
    addr: SocketAddr,
    request: &[u8],
) -> (Response<()>, Vec<u8>, TcpStream) {
    use tokio::io::AsyncWriteExt;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let (response, rest) = read_response(&mut tcp).await;
    let body = read_body(&mut tcp, &response, rest).await;
    (response, body, tcp)
}

/// Asserts that the peer closed the connection: the next read returns end of stream.
pub(crate) async fn assert_eof(tcp: &mut TcpStream) {
    let mut byte = [0; 1];
    let n = within("end of stream", tcp.read(&mut byte)).await.unwrap();
    assert_eq!(n, 0, "expected end of stream, got a byte {byte:?}");
}

/// A client-side decoder over a raw socket, for reading what a server sent.
#[derive(Debug)]
pub(crate) struct RawReader {
    decoder: Decoder,
}

impl RawReader {
    /// Starts with the bytes that arrived after the response head.
    pub(crate) fn new(rest: BytesMut) -> Self {
        let mut decoder = Decoder::new(Role::Client, Limits::default());
        decoder.feed(rest);
        Self { decoder }
    }

    /// The next message the server sent.
    pub(crate) async fn message(&mut self, tcp: &mut TcpStream) -> Message {
        loop {
            if let Some(message) = self.decoder.decode().unwrap() {
                return message;
            }
            let mut buf = self.decoder.read_buf(4096);
            let n = within("server frame", tcp.read_buf(&mut buf))
                .await
                .unwrap();
            assert_ne!(n, 0, "connection closed before a whole frame arrived");
            self.decoder.feed(buf);
        }
    }
}

/// Exactly `len` bytes of text with two-byte characters in it.
pub(crate) fn text_of(len: usize) -> String {
    "é".repeat(len / 2) + &"x".repeat(len % 2)
}

/// `len` bytes that are not all the same.
pub(crate) fn binary_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}
