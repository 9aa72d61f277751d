//! The edges of the HTTP handshake on real sockets, on both server paths: `serve` (hyper
//! under a hub's router) and `accept` (a bare stream). One head limit (431), one
//! handshake timeout (408), refusals that close the connection, and a bound on the
//! connections `serve` holds before they upgrade.

mod common;

use axum::Router;
use common::{
    Behaviour, STEP, handshake_request, hub::serve_ws_route, raw_server, read_body, read_response,
    within,
};
use http::{Response, StatusCode};
use std::{io, net::SocketAddr, time::Duration};
use switchboard::proto::handshake::http1::MAX_HEADERS;
use switchboard::{
    channels::{Channels, Refused},
    hub::{Handler, Hub, HubConfig},
    upgrade::AcceptConfig,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, timeout},
};

/// A handler that does nothing: these tests stop before or at the upgrade.
struct Quiet;

impl Handler for Quiet {}

/// Keeps a server alive for as long as the test uses its address.
struct Running {
    _server: Box<dyn std::any::Any>,
}

async fn hub_server(config: HubConfig) -> (SocketAddr, Running) {
    let server = serve_ws_route::<(), _>(config, |_| Quiet).await;
    (
        server.addr,
        Running {
            _server: Box::new(server),
        },
    )
}

async fn raw(config: AcceptConfig) -> (SocketAddr, Running) {
    let server = raw_server(config, Behaviour::Echo).await;
    (
        server.addr,
        Running {
            _server: Box::new(server),
        },
    )
}

/// Both paths with a handshake timeout of `handshake_timeout`.
async fn both_paths(handshake_timeout: Duration) -> [(&'static str, SocketAddr, Running); 2] {
    let hub_config = HubConfig::default().handshake_timeout(handshake_timeout);
    let accept_config = AcceptConfig::default().handshake_timeout(handshake_timeout);
    let (serve_addr, serve_server) = hub_server(hub_config).await;
    let (raw_addr, raw_server) = raw(accept_config).await;
    [
        ("serve", serve_addr, serve_server),
        ("accept", raw_addr, raw_server),
    ]
}

/// Sends `request` and reads the response with its body.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (Response<()>, Vec<u8>, TcpStream) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let (response, rest) = read_response(&mut tcp).await;
    let body = read_body(&mut tcp, &response, rest).await;
    (response, body, tcp)
}

/// Asserts that the server closes the connection within a second: far sooner than the
/// handshake timeout (10 s by default) that would end an idle kept-alive connection. A
/// reset counts: the server may close with bytes of ours unread.
async fn closed_promptly(tcp: &mut TcpStream, what: &str) {
    let mut byte = [0; 1];
    match timeout(Duration::from_secs(1), tcp.read(&mut byte)).await {
        Ok(Ok(0)) => {}
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Ok(other) => panic!("{what}: expected the end of the stream, got {other:?}"),
        Err(_) => panic!("{what}: the connection is still open after a second"),
    }
}

/// Asserts that `head` is answered 431 on both paths, and the connection closed.
async fn refused_431_on_both_paths(head: &str) {
    for (path, addr, _server) in both_paths(Duration::from_secs(10)).await {
        let (response, _, mut tcp) = exchange(addr, head.as_bytes()).await;
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{path}"
        );
        closed_promptly(&mut tcp, path).await;
    }
}

#[tokio::test]
async fn a_40_kib_head_is_answered_431_on_both_paths() {
    let padding = format!("X-Padding: {}\r\n", "a".repeat(40 << 10));
    refused_431_on_both_paths(&handshake_request("/ws", &padding)).await;
}

/// The limit on header lines is the same on both paths too: a handshake with more than
/// `MAX_HEADERS` lines (well within 32 KiB) is answered 431 on both.
#[tokio::test]
async fn a_head_with_too_many_header_lines_is_answered_431_on_both_paths() {
    let lines: String = (0..MAX_HEADERS)
        .map(|i| format!("X-Line-{i}: {i}\r\n"))
        .collect();
    refused_431_on_both_paths(&handshake_request("/ws", &lines)).await;
}

#[tokio::test]
async fn a_head_within_32_kib_is_upgraded_on_both_paths() {
    let padding = format!("X-Padding: {}\r\n", "a".repeat(31 << 10));
    let head = handshake_request("/ws", &padding);
    for (path, addr, _server) in both_paths(Duration::from_secs(10)).await {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        let (response, _) = read_response(&mut tcp).await;
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS, "{path}");
    }
}

#[tokio::test]
async fn a_slow_head_is_answered_408_on_both_paths() {
    let handshake_timeout = Duration::from_millis(200);
    for (path, addr, _server) in both_paths(handshake_timeout).await {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        // Half a head, then nothing.
        tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")
            .await
            .unwrap();
        let (response, rest) = read_response(&mut tcp).await;
        let waited = started.elapsed();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT, "{path}");
        assert!(
            waited >= handshake_timeout - Duration::from_millis(10) && waited < STEP,
            "{path}: answered after {waited:?}"
        );
        assert_eq!(response.headers()["connection"], "close", "{path}");
        let body = read_body(&mut tcp, &response, rest).await;
        assert_eq!(body, b"handshake timed out", "{path}");
        closed_promptly(&mut tcp, path).await;
    }
}

#[tokio::test]
async fn refusals_close_the_connection_promptly() {
    let (open, _open) = hub_server(HubConfig::default()).await;
    let full_config = HubConfig::default().max_connections(0);
    let (full, _full) = hub_server(full_config).await;
    let (channels, _channels) = channels_refusing_every_client().await;
    let (raw, _raw) = raw(AcceptConfig::default()).await;
    let foreign = handshake_request("/ws", "Origin: http://evil.example\r\n");
    let old_version = handshake_request("/ws", "").replace("Version: 13", "Version: 8");
    let refusals = [
        (
            "serve, foreign origin",
            open,
            foreign,
            StatusCode::FORBIDDEN,
        ),
        (
            "serve, hub full",
            full,
            handshake_request("/ws", ""),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "serve, bad version",
            open,
            old_version.clone(),
            StatusCode::UPGRADE_REQUIRED,
        ),
        (
            // A connect refusal is a 101 and a close frame (tests/channels.rs); an
            // unsupported protocol version is refused over HTTP.
            "serve, channels protocol version",
            channels,
            handshake_request("/socket/websocket?vsn=1.0.0", ""),
            StatusCode::FORBIDDEN,
        ),
        (
            "accept, bad version",
            raw,
            old_version,
            StatusCode::UPGRADE_REQUIRED,
        ),
    ];
    for (what, addr, request, status) in refusals {
        let (response, _, mut tcp) = exchange(addr, request.as_bytes()).await;
        assert_eq!(response.status(), status, "{what}");
        assert_eq!(response.headers()["connection"], "close", "{what}");
        closed_promptly(&mut tcp, what).await;
    }
}

async fn channels_refusing_every_client() -> (SocketAddr, Running) {
    channels_refusing_every_client_with(HubConfig::default()).await
}

async fn channels_refusing_every_client_with(config: HubConfig) -> (SocketAddr, Running) {
    let hub = Hub::new(config);
    let app: Router = Channels::new(hub.clone())
        .connect(|_| async { Err::<_, Refused>(Refused::new("nobody may connect")) })
        .into_router();
    let server = common::hub::serve(hub, app, ()).await;
    (
        server.addr,
        Running {
            _server: Box::new(server),
        },
    )
}

/// A refusal after the 101 (close 3000) holds its pending handshake's slot until its
/// close handshake ends: a flood of refused clients is bounded as their handshakes are.
#[tokio::test]
async fn a_refused_client_holds_its_pending_slot_until_its_close_handshake_ends() {
    let config = HubConfig::default().max_pending_handshakes(1);
    let (addr, _server) = channels_refusing_every_client_with(config).await;
    let request = handshake_request("/socket/websocket?vsn=2.0.0", "");
    let mut refused = TcpStream::connect(addr).await.unwrap();
    refused.write_all(request.as_bytes()).await.unwrap();
    let (response, _) = within("the refusal", read_response(&mut refused)).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    // The refused client neither answers the close frame nor hangs up.
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting.write_all(request.as_bytes()).await.unwrap();
    let mut byte = [0; 1];
    let early = timeout(Duration::from_millis(300), waiting.peek(&mut byte)).await;
    assert!(
        early.is_err(),
        "answered while the refusal closes: {early:?}"
    );
    // It hangs up: the close handshake ends, and its slot goes to the waiting one.
    drop(refused);
    let (response, _) = within("the waiting handshake", read_response(&mut waiting)).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
}

#[tokio::test]
async fn connections_past_the_pending_handshake_limit_wait_for_a_free_slot() {
    let config = HubConfig::default().max_pending_handshakes(2);
    let (addr, _server) = hub_server(config).await;
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        slow.push(tcp);
    }
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting
        .write_all(handshake_request("/ws", "").as_bytes())
        .await
        .unwrap();
    let mut byte = [0; 1];
    let early = timeout(Duration::from_millis(300), waiting.peek(&mut byte)).await;
    assert!(early.is_err(), "answered past the limit: {early:?}");

    // A slow client gives up: its slot goes to the waiting one.
    drop(slow.pop());
    let (response, _) = within("the waiting handshake", read_response(&mut waiting)).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
}

/// The limit bounds connections whose first request head has not arrived: a client
/// that sent its head and then holds the connection (a slow request body) is the
/// application's to bound, and does not keep a handshake waiting.
#[tokio::test]
async fn a_request_whose_head_arrived_frees_its_pending_slot() {
    let config = HubConfig::default()
        .max_pending_handshakes(1)
        .handshake_timeout(Duration::from_millis(300));
    let hub = Hub::new(config);
    let app = Router::new()
        .route("/ws", switchboard::ws(hub.clone(), Quiet))
        .route(
            "/upload",
            axum::routing::post(|body: String| async move { body }),
        );
    let server = common::hub::serve(hub, app, ()).await;
    let mut slow_body = TcpStream::connect(server.addr).await.unwrap();
    slow_body
        .write_all(b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nab")
        .await
        .unwrap();

    let mut next = TcpStream::connect(server.addr).await.unwrap();
    next.write_all(handshake_request("/ws", "").as_bytes())
        .await
        .unwrap();
    let (response, _) = within("the next handshake", read_response(&mut next)).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
}

/// Plain HTTP connections (not upgrades) hold a slot of their own once their head has
/// arrived, for as long as they stay open: past `max_http_connections`, a plain request
/// is answered 503 and its connection closed, while upgrades still get in.
#[tokio::test]
async fn plain_http_connections_past_their_limit_are_answered_503() {
    let config = HubConfig::default().max_http_connections(1);
    let (addr, _server) = hub_server(config).await;
    let request = b"GET /elsewhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    // Kept alive after its answer: it holds the one slot.
    let (response, _, kept_alive) = exchange(addr, request).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let (response, _, mut refused) = exchange(addr, request).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    closed_promptly(&mut refused, "the refused plain connection").await;

    let mut upgrade = TcpStream::connect(addr).await.unwrap();
    upgrade
        .write_all(handshake_request("/ws", "").as_bytes())
        .await
        .unwrap();
    let (response, _) = within("the upgrade", read_response(&mut upgrade)).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

    // The kept-alive connection leaves: its slot frees.
    drop(kept_alive);
    let answered = within("a free slot", async {
        loop {
            let (response, _, _) = exchange(addr, request).await;
            if response.status() == StatusCode::NOT_FOUND {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    answered.await;
}

/// Opens slowly: a second.
struct SlowOpen;

impl Handler for SlowOpen {
    async fn on_open(&self, _conn: &switchboard::hub::Connection) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A connection whose `on_open` runs (its 101 waits for it) holds a slot of the hub,
/// not one of the pending handshakes: other clients are served meanwhile.
#[tokio::test]
async fn a_slow_on_open_does_not_hold_a_pending_slot() {
    let config = HubConfig::default().max_pending_handshakes(1);
    let server = serve_ws_route::<(), _>(config, |_| SlowOpen).await;
    let mut opening = TcpStream::connect(server.addr).await.unwrap();
    opening
        .write_all(handshake_request("/ws", "").as_bytes())
        .await
        .unwrap();
    // Registered: its `on_open` runs.
    within("the registration", async {
        while server.hub.connection_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let request = b"GET /elsewhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let (response, _, _) = exchange(server.addr, request).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let mut byte = [0; 1];
    assert!(
        matches!(opening.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "the other client was answered only after the on_open"
    );
    let (response, _) = within("the 101", read_response(&mut opening)).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
}

/// A limit of 0 would accept nothing: it is taken as 1.
#[tokio::test]
async fn a_pending_handshake_limit_of_0_still_serves_one_at_a_time() {
    let config = HubConfig::default().max_pending_handshakes(0);
    let (addr, _server) = hub_server(config).await;
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(handshake_request("/ws", "").as_bytes())
            .await
            .unwrap();
        let (response, _) = within("a handshake", read_response(&mut tcp)).await;
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    }
}

/// Shutdown finishes the requests in flight, but a client that has not finished its
/// first request head has none: it is let go at once instead of holding the shutdown
/// for its whole deadline (the hub's `close_timeout`, 5 s by default) and outliving it.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_half_sent_head() {
    let config = HubConfig::default().close_timeout(Duration::from_secs(3));
    let mut server = serve_ws_route::<(), _>(config, |_| Quiet).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    // Answered, so accepted after the slow one: the server holds both.
    let request = b"GET /elsewhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let (response, _, _kept_alive) = exchange(server.addr, request).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let started = Instant::now();
    drop(server.stop.take());
    within("serve's end", &mut server.served)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shutdown waited {:?} for a half-sent head",
        started.elapsed()
    );
    closed_promptly(&mut slow, "the half-sent head").await;
}

/// A request still in flight at the shutdown's deadline ends with `serve`: its
/// connection does not outlive the server that accepted it.
#[tokio::test]
async fn connections_still_busy_at_the_deadline_end_with_serve() {
    let config = HubConfig::default().close_timeout(Duration::from_millis(300));
    let hub = Hub::new(config);
    let app = Router::new().route(
        "/forever",
        axum::routing::get(std::future::pending::<&'static str>),
    );
    let mut server = common::hub::serve(hub, app, ()).await;
    let mut busy = TcpStream::connect(server.addr).await.unwrap();
    busy.write_all(b"GET /forever HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    // Answered, so accepted after the busy one: its request is in flight.
    let request = b"GET /elsewhere HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    exchange(server.addr, request).await;

    drop(server.stop.take());
    within("serve's end", &mut server.served)
        .await
        .unwrap()
        .unwrap();
    closed_promptly(&mut busy, "the busy connection").await;
}
