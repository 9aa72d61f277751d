//! `WebSocket`'s own bounds against hostile peers on real sockets: what it queues for a
//! peer that does not read, how long its close path may take, how long a silent peer
//! may hold it.
//!
//! Both ends shrink their socket buffers (the server's send buffer, the client's
//! receive buffer), so that what the kernel would otherwise absorb (megabytes on
//! loopback) stays small and the server's own queue shows.

mod common;

use bytes::BytesMut;
use common::{
    RawReader, assert_eof, handshake_request,
    hub::{raw_handshake, serve_ws_route, try_connect},
    read_response, within,
};
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};
use switchboard::{
    CloseCode, Error, Message, WebSocket, WebSocketConfig,
    hub::{Connection, Handler, HubConfig},
    proto::Frame,
    upgrade::{AcceptConfig, accept_with},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::mpsc::UnboundedSender,
};

/// The socket buffer size both ends ask for (Linux doubles it, and has a floor).
const SOCKET_BUFFER: u32 = 4096;

const KEY: [u8; 4] = [1, 2, 3, 4];

/// A listener whose accepted sockets have a small send buffer (they inherit it).
fn small_listener() -> (TcpListener, SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(SOCKET_BUFFER).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Accepts one WebSocket on `listener` with `config`.
async fn accept_one(listener: &TcpListener, config: WebSocketConfig) -> WebSocket<TcpStream> {
    let (tcp, _) = listener.accept().await.unwrap();
    let accept = AcceptConfig::default().websocket(config);
    accept_with(tcp, &accept).await.unwrap().0
}

/// A raw client with a small receive buffer, through the opening handshake; with a
/// reader of what the server sends, should the test read it.
async fn raw_client(addr: SocketAddr) -> (TcpStream, RawReader) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(SOCKET_BUFFER).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    tcp.write_all(handshake_request("/", "").as_bytes())
        .await
        .unwrap();
    let (response, rest) = read_response(&mut tcp).await;
    assert_eq!(response.status(), 101);
    (tcp, RawReader::new(rest))
}

/// `count` copies of `frame`, masked, back to back.
fn frames(frame: Frame, count: usize) -> BytesMut {
    let mut out = BytesMut::new();
    for _ in 0..count {
        frame.clone().masked(KEY).write_to(&mut out);
    }
    out
}

/// Receives until the connection ends; returns the most bytes it had queued, unwritten,
/// after any message.
async fn serve_measuring(
    ws: &mut WebSocket<TcpStream>,
    mut on_message: impl FnMut(&mut WebSocket<TcpStream>),
) -> usize {
    let mut most = 0;
    while let Some(next) = ws.recv().await {
        if next.is_ok_and(|m| m.is_data()) {
            on_message(ws);
        }
        most = most.max(ws.buffered_amount());
    }
    most
}

#[tokio::test]
async fn pings_without_reading_queue_one_pong() {
    let (listener, addr) = small_listener();
    let server = tokio::spawn(async move {
        let mut ws = accept_one(&listener, WebSocketConfig::default()).await;
        serve_measuring(&mut ws, |_| {}).await
    });
    let (mut tcp, _) = raw_client(addr).await;
    // 100,000 pings of 125 bytes (13 MB) and never a read.
    let batch = frames(Frame::ping(vec![b'p'; 125]), 1000);
    for _ in 0..100 {
        within("pings", tcp.write_all(&batch)).await.unwrap();
    }
    tcp.shutdown().await.unwrap();
    let most = within("server end", server).await.unwrap();
    // One pong may be half written while the next waits whole.
    assert!(most <= 2 * 127, "{most} bytes queued");
}

#[tokio::test]
async fn a_peer_that_does_not_read_is_not_read_either() {
    const LIMIT: usize = 256 << 10;
    const ANSWER: usize = 64 << 10;
    let (listener, addr) = small_listener();
    let server = tokio::spawn(async move {
        let config = WebSocketConfig::default().max_write_buffer_size(LIMIT);
        let mut ws = accept_one(&listener, config).await;
        // Each request queues a large answer, as a subscription might.
        serve_measuring(&mut ws, |ws| {
            ws.feed(Message::binary(vec![7; ANSWER])).unwrap();
        })
        .await
    });
    let (mut tcp, _) = raw_client(addr).await;
    // 100 requests (6.4 MB of answers), then a close, before reading anything.
    let mut requests = frames(Frame::binary(&b"more"[..]), 100);
    requests.extend_from_slice(&frames(Frame::close(CloseCode::NORMAL, ""), 1));
    within("requests", tcp.write_all(&requests)).await.unwrap();
    // Reading the answers lets the server read on, up to our close: no deadlock.
    let mut received = Vec::new();
    within("answers", tcp.read_to_end(&mut received))
        .await
        .unwrap();
    drop(tcp);
    let most = within("server end", server).await.unwrap();
    assert!(most <= LIMIT + ANSWER + 14, "{most} bytes queued");
    // Every answer, then the close frame's echo.
    assert!(received.len() > 100 * ANSWER, "{} bytes", received.len());
    let close = &received[received.len() - 4..];
    assert_eq!(close, &[0x88, 2, 0x03, 0xE8]);
}

const CLOSE_TIMEOUT: Duration = Duration::from_millis(200);
/// Scheduling noise allowed on top of the close timeout.
const SLACK: Duration = Duration::from_millis(500);

/// A masked close frame with code 1000.
fn close_frame() -> BytesMut {
    frames(Frame::close(CloseCode::NORMAL, ""), 1)
}

#[tokio::test]
async fn a_peer_that_closes_and_stops_reading_is_left_within_the_close_timeout() {
    let (listener, addr) = small_listener();
    let server = tokio::spawn(async move {
        let config = WebSocketConfig::default().close_timeout(CLOSE_TIMEOUT);
        let mut ws = accept_one(&listener, config).await;
        // A backlog the peer will never read: our answer to its close waits behind it.
        ws.feed(Message::binary(vec![7; 512 << 10])).unwrap();
        let started = Instant::now();
        let last = tokio::time::timeout(CLOSE_TIMEOUT * 10, async {
            let mut last = None;
            while let Some(next) = ws.recv().await {
                last = Some(next);
            }
            last
        })
        .await
        .expect("recv still pending after ten close timeouts");
        (last, started.elapsed())
    });
    let (mut tcp, _) = raw_client(addr).await;
    tcp.write_all(&close_frame()).await.unwrap();
    let (last, took) = within("server end", server).await.unwrap();
    assert!(
        matches!(last, Some(Ok(Message::Close(Some(_))))),
        "ended with {last:?}"
    );
    assert!(took <= CLOSE_TIMEOUT + SLACK, "took {took:?}");
    drop(tcp);
}

#[derive(Debug)]
struct Closed(CloseCode);

/// Queues a backlog on open, reports the close.
struct Backlogged(UnboundedSender<Closed>);

impl Handler for Backlogged {
    async fn on_open(&self, conn: &Connection) {
        for _ in 0..16 {
            conn.try_send(Message::binary(vec![7; 1 << 20])).unwrap();
        }
    }

    async fn on_close(&self, _conn: &Connection, code: CloseCode, _reason: &str) {
        let _ = self.0.send(Closed(code));
    }
}

#[tokio::test]
async fn a_hub_client_that_closes_and_stops_reading_is_released_within_the_close_timeout() {
    let config = HubConfig::default()
        .close_timeout(CLOSE_TIMEOUT)
        .max_connections(1)
        // Room for the backlog (more than the kernel's buffers take on loopback).
        .max_buffered_bytes(32 << 20);
    let mut server = serve_ws_route(config, Backlogged).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    raw_handshake(&mut tcp, "/ws").await;
    tcp.write_all(&close_frame()).await.unwrap();
    let started = Instant::now();
    let closed = tokio::time::timeout(CLOSE_TIMEOUT * 10, server.events.recv())
        .await
        .expect("on_close did not run within ten close timeouts");
    assert!(
        matches!(closed, Some(Closed(CloseCode::NORMAL))),
        "{closed:?}"
    );
    assert!(
        started.elapsed() <= CLOSE_TIMEOUT + SLACK,
        "took {:?}",
        started.elapsed()
    );
    // The one slot is free again.
    let (_client, _) = try_connect(server.addr, "/ws", &[]).await.unwrap();
    drop(tcp);
}

const IDLE: Duration = Duration::from_millis(300);

/// Serves one connection with an idle limit of [`IDLE`], echoing data messages;
/// returns the last thing `recv` said.
async fn idle_server(listener: TcpListener) -> Option<Result<Message, Error>> {
    let config = WebSocketConfig::default().idle_timeout(Some(IDLE));
    let mut ws = accept_one(&listener, config).await;
    let mut last = None;
    while let Some(next) = ws.recv().await {
        if let Ok(message) = &next {
            if message.is_data() {
                ws.send(message.clone()).await.unwrap();
            }
        }
        last = Some(next);
    }
    last
}

#[tokio::test]
async fn a_peer_silent_half_way_through_a_frame_is_pinged_then_closed_with_1001() {
    let (listener, addr) = small_listener();
    let server = tokio::spawn(idle_server(listener));
    let (mut tcp, mut reader) = raw_client(addr).await;
    // The header of a 100-byte frame and 10 bytes of it, then nothing.
    let mut half = frames(Frame::binary(vec![0; 100]), 1);
    half.truncate(8 + 10);
    tcp.write_all(&half).await.unwrap();
    let started = Instant::now();
    assert!(matches!(reader.message(&mut tcp).await, Message::Ping(p) if p.is_empty()));
    let pinged = started.elapsed();
    // No answer: the close follows at the limit.
    let Message::Close(Some(close)) = reader.message(&mut tcp).await else {
        panic!("expected a close frame");
    };
    let closed = started.elapsed();
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::GOING_AWAY, "idle timeout")
    );
    // The idle clock ticks every half limit: a ping after between half and all of
    // it, the close after between one and one and a half limits.
    assert!(pinged >= IDLE / 2 - IDLE / 10, "pinged after {pinged:?}");
    assert!(closed >= IDLE - IDLE / 10, "closed after {closed:?}");
    assert!(closed <= IDLE * 3 / 2 + SLACK, "closed after {closed:?}");
    assert_eof(&mut tcp).await;
    match within("server end", server).await.unwrap() {
        Some(Err(error @ Error::Aborted(_))) => {
            assert_eq!(error.close_code(), CloseCode::GOING_AWAY)
        }
        other => panic!("ended with {other:?}"),
    }
}

#[tokio::test]
async fn a_quiet_peer_that_answers_pings_stays_connected() {
    let (listener, addr) = small_listener();
    let server = tokio::spawn(idle_server(listener));
    let (mut tcp, mut reader) = raw_client(addr).await;
    // Four idle limits of saying nothing but pongs.
    let quiet = async {
        loop {
            let Message::Ping(payload) = reader.message(&mut tcp).await else {
                panic!("expected pings only");
            };
            let pong = frames(Frame::new(switchboard::proto::OpCode::Pong, payload), 1);
            tcp.write_all(&pong).await.unwrap();
        }
    };
    let _ = tokio::time::timeout(IDLE * 4, quiet).await;
    // Still served.
    tcp.write_all(&frames(Frame::text("still here"), 1))
        .await
        .unwrap();
    let echo = loop {
        match reader.message(&mut tcp).await {
            Message::Ping(_) => {}
            other => break other,
        }
    };
    assert_eq!(echo, Message::text("still here"));
    tcp.write_all(&close_frame()).await.unwrap();
    assert!(matches!(reader.message(&mut tcp).await, Message::Close(_)));
    drop(tcp);
    let last = within("server end", server).await.unwrap();
    assert!(matches!(last, Some(Ok(Message::Close(_)))), "{last:?}");
}
