//! The three server upgrade paths (hyper, axum, raw `accept`) and the client, over real
//! TCP on 127.0.0.1: handshakes, rejections with the statuses the RFCs ask for, the
//! first frame a client pipelines behind its handshake, and the handshake's limits.

mod common;

use axum::{Router, routing::get};
use bytes::BytesMut;
use common::{
    ACCEPT, Behaviour, Event, HyperIo, RawReader, Server, assert_eof, axum_server,
    handshake_request, http_exchange, hyper_server, raw_server, read_body, read_response, within,
};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use std::{
    convert::Infallible,
    net::SocketAddr,
    time::{Duration, Instant},
};
use switchboard::{
    CloseCode, Message, WebSocketConfig,
    axum::WebSocketUpgrade,
    client::{self, ClientConfig, ConnectError},
    proto::{
        Frame,
        handshake::{ClientHandshakeError, http1::ParseError},
    },
    upgrade::{AcceptConfig, AcceptError, ResponseBody, upgrade},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc::{UnboundedReceiver, unbounded_channel},
};

/// Writes the handshake and a masked text frame in one write, before reading anything;
/// checks that the server decoded that frame (it arrived with the head, so only the
/// server's already-read bytes can hold it) and echoed it.
async fn pipelined_first_frame(mut server: Server, path: &str) {
    let text = "sent before the 101 arrived";
    let mut out = BytesMut::from(handshake_request(path, "").as_bytes());
    Frame::text(text)
        .masked([0x37, 0xfa, 0x21, 0x3d])
        .write_to(&mut out);
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&out).await.unwrap();

    let (response, rest) = read_response(&mut tcp).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["sec-websocket-accept"], ACCEPT);
    match server.event().await {
        Event::Received(message) => assert_eq!(message, Message::text(text)),
        other => panic!("expected the pipelined frame, got {other:?}"),
    }
    let mut reader = RawReader::new(rest);
    assert_eq!(reader.message(&mut tcp).await, Message::text(text));
}

/// `client::connect` to `url`: text and binary both ways, then a normal close.
async fn client_exchange(url: &str) {
    let (mut ws, response) = within("connect", client::connect(url)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello, κόσμε")).await.unwrap();
    assert_eq!(
        within("text echo", ws.recv()).await.unwrap().unwrap(),
        Message::text("hello, κόσμε")
    );
    let binary = vec![0, 1, 2, 0x80, 0xff];
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(
        within("binary echo", ws.recv()).await.unwrap().unwrap(),
        Message::binary(binary)
    );
    within("close", ws.close(CloseCode::NORMAL, "done"))
        .await
        .unwrap();
}

/// [`client_exchange`] against one of our servers, which must have seen our close.
async fn client_exchange_seen(mut server: Server, path: &str) {
    client_exchange(&server.url(path)).await;
    let events = server.until_end().await;
    match events.as_slice() {
        [Event::Received(Message::Close(Some(close))), Event::Ended] => {
            assert_eq!(close.code, CloseCode::NORMAL);
            assert_eq!(close.reason, "done");
        }
        other => panic!("expected our close then the end, got {other:?}"),
    }
}

// --- hyper ---

#[tokio::test]
async fn hyper_receives_a_pipelined_first_frame() {
    pipelined_first_frame(hyper_server(HyperIo::Tcp, Behaviour::Echo).await, "/").await;
}

#[tokio::test]
async fn hyper_over_a_wrapped_stream_receives_a_pipelined_first_frame() {
    pipelined_first_frame(
        hyper_server(HyperIo::Wrapped, Behaviour::Echo).await,
        "/chat?room=1",
    )
    .await;
}

#[tokio::test]
async fn hyper_answers_a_bad_handshake_with_its_status_and_reason() {
    let server = hyper_server(HyperIo::Tcp, Behaviour::Echo).await;
    let request = handshake_request("/", "").replace("Version: 13", "Version: 8");
    let (response, body, _) = http_exchange(server.addr, request.as_bytes()).await;
    assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(response.headers()["sec-websocket-version"], "13");
    assert_eq!(body, b"sec-websocket-version is not 13");
}

#[tokio::test]
async fn client_connects_to_hyper() {
    client_exchange_seen(hyper_server(HyperIo::Tcp, Behaviour::Echo).await, "/").await;
}

// --- axum ---

#[tokio::test]
async fn axum_receives_a_pipelined_first_frame() {
    pipelined_first_frame(axum_server(Behaviour::Echo).await, "/ws").await;
}

#[tokio::test]
async fn axum_selects_the_clients_preferred_supported_protocol() {
    let server = axum_server(Behaviour::Echo).await;
    // The server lists "b" first, but the client's preference decides.
    let request = handshake_request("/ws", "Sec-WebSocket-Protocol: a, b\r\n");
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let (response, _) = read_response(&mut tcp).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["sec-websocket-protocol"], "a");

    // Through our client, which checks the answer is one it offered.
    let config = ClientConfig::default().protocols(["c", "b", "a"]);
    let (_ws, response) = client::connect_with(&server.url("/ws"), &config)
        .await
        .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "b");

    // No protocol in common: none selected, and the connection still opens.
    let config = config.protocols(["c"]);
    let (_ws, response) = client::connect_with(&server.url("/ws"), &config)
        .await
        .unwrap();
    assert!(!response.headers().contains_key("sec-websocket-protocol"));
}

/// A hyper service answers its WebSocket route and its other routes with one body type,
/// this crate's `ResponseBody`.
#[tokio::test]
async fn hyper_service_answers_every_route_with_the_response_body() {
    let (listener, addr) = common::listen().await;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let service = service_fn(|mut request: Request<Incoming>| async move {
                let response: Response<ResponseBody> = if request.uri().path() != "/ws" {
                    let mut response = Response::new(ResponseBody::from("no such page"));
                    *response.status_mut() = StatusCode::NOT_FOUND;
                    response
                } else {
                    match upgrade(&mut request) {
                        Ok((response, connection)) => {
                            tokio::spawn(connection);
                            response
                        }
                        Err(rejection) => rejection.into_response(),
                    }
                };
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades(),
            );
        }
    });
    let page = b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let (response, body, _) = http_exchange(addr, page).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(body, b"no such page");
    let (response, body, _) =
        http_exchange(addr, b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(body, b"no upgrade header");
    let (response, body, _) = http_exchange(addr, handshake_request("/ws", "").as_bytes()).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(body.is_empty());
}

#[tokio::test]
async fn axum_rejects_bad_handshakes_with_the_right_status() {
    let server = axum_server(Behaviour::Echo).await;

    // An ordinary GET: 426 naming the protocol to upgrade to.
    let (response, body, _) =
        http_exchange(server.addr, b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(response.headers()["upgrade"], "websocket");
    assert_eq!(body, b"no upgrade header");

    // POST reaching the extractor (routed with any()): its own 405.
    let post = handshake_request("/any", "").replacen("GET", "POST", 1);
    let (response, body, _) = http_exchange(server.addr, post.as_bytes()).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET");
    assert_eq!(body, b"method POST is not GET");

    // POST to a get() route: axum's router answers 405 before the extractor runs.
    let post = handshake_request("/ws", "").replacen("GET", "POST", 1);
    let (response, _, _) = http_exchange(server.addr, post.as_bytes()).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);

    // Another WebSocket version: 426 with the version we speak.
    let v8 = handshake_request("/ws", "").replace("Version: 13", "Version: 8");
    let (response, _, _) = http_exchange(server.addr, v8.as_bytes()).await;
    assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(response.headers()["sec-websocket-version"], "13");

    // A key that is not 16 bytes of base64: 400.
    for key in ["not base64!", "c2hvcnQ="] {
        let bad_key = handshake_request("/ws", "").replace(common::KEY, key);
        let (response, _, _) = http_exchange(server.addr, bad_key.as_bytes()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "key {key}");
    }

    // Our client reports the refusal with the status.
    let err = client::connect(&format!("ws://{}/nowhere", server.addr))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Handshake(ClientHandshakeError::UnexpectedStatus(
                StatusCode::NOT_FOUND
            ))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn client_connects_to_axum() {
    client_exchange_seen(axum_server(Behaviour::Echo).await, "/ws").await;
}

/// The address the server's upgraded stream reports for its peer, seen from a client
/// that connected to `addr` (the client's own address is the answer).
async fn peer_seen_by(addr: SocketAddr, mut seen: UnboundedReceiver<Option<SocketAddr>>) {
    let (ws, _) = client::connect(&format!("ws://{addr}/ws")).await.unwrap();
    let client_addr = ws.get_ref().tcp().local_addr().unwrap();
    let peer = within("peer address", seen.recv()).await.unwrap();
    assert_eq!(peer, Some(client_addr));
}

#[tokio::test]
async fn hyper_upgrade_knows_the_peer_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, seen) = unbounded_channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let service = service_fn(move |mut request: Request<Incoming>| {
            let tx = tx.clone();
            async move {
                let (response, connection) = switchboard::upgrade::upgrade(&mut request).unwrap();
                tokio::spawn(async move {
                    let ws = connection.await.unwrap();
                    tx.send(ws.get_ref().peer_addr()).unwrap();
                });
                Ok::<_, Infallible>(response)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades()
            .await;
    });
    peer_seen_by(addr, seen).await;
}

#[tokio::test]
async fn axum_upgrade_knows_the_peer_address() {
    // The hub's route reports this address as the connection's remote address. axum's
    // `serve` hands hyper a wrapped stream, so the address can only come from
    // `ConnectInfo`, which is how axum apps ask for it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, seen) = unbounded_channel();
    let app = Router::new().route(
        "/ws",
        get(move |upgrade: WebSocketUpgrade| {
            let tx = tx.clone();
            async move {
                upgrade.on_upgrade(move |ws| async move {
                    tx.send(ws.get_ref().peer_addr()).unwrap();
                })
            }
        }),
    );
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    peer_seen_by(addr, seen).await;
}

// --- raw accept ---

#[tokio::test]
async fn accept_receives_a_pipelined_first_frame() {
    pipelined_first_frame(
        raw_server(AcceptConfig::default(), Behaviour::Echo).await,
        "/",
    )
    .await;
}

#[tokio::test]
async fn accept_times_out_a_slowloris_client_with_408() {
    let config = AcceptConfig::default().handshake_timeout(Duration::from_millis(200));
    let mut server = raw_server(config, Behaviour::Echo).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    // Half a head, then nothing.
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")
        .await
        .unwrap();

    let (response, rest) = read_response(&mut tcp).await;
    let waited = started.elapsed();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_secs(5),
        "answered after {waited:?}"
    );
    read_body(&mut tcp, &response, rest).await;
    assert_eof(&mut tcp).await;
    match server.event().await {
        Event::Refused(error @ AcceptError::Timeout) => {
            assert_eq!(error.status(), Some(StatusCode::REQUEST_TIMEOUT));
        }
        other => panic!("expected a handshake timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn accept_times_out_a_trickling_client_as_a_whole() {
    // One byte every 20 ms keeps every read short: only a timeout on the whole head,
    // not on each read, stops this client.
    let config = AcceptConfig::default().handshake_timeout(Duration::from_millis(200));
    let mut server = raw_server(config, Behaviour::Echo).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for byte in handshake_request("/", "X-Padding: slow\r\n").bytes() {
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0; 1];
        let n = within("408", read.read(&mut byte)).await.unwrap();
        assert_eq!(n, 1, "closed before answering: {}", head.escape_ascii());
        head.push(byte[0]);
    }
    trickle.abort();
    let waited = started.elapsed();
    assert!(
        head.starts_with(b"HTTP/1.1 408 "),
        "{}",
        head.escape_ascii()
    );
    assert!(waited < Duration::from_secs(2), "answered after {waited:?}");
    assert!(matches!(
        server.event().await,
        Event::Refused(AcceptError::Timeout)
    ));
}

/// Sends `head` in one write to a server limited to `max_head_len`; expects 431.
async fn expect_431(max_head_len: usize, head: &[u8]) {
    let config = AcceptConfig::default().max_head_len(max_head_len);
    let mut server = raw_server(config, Behaviour::Echo).await;
    let (response, body, mut tcp) = http_exchange(server.addr, head).await;
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert!(!body.is_empty());
    assert_eof(&mut tcp).await;
    match server.event().await {
        Event::Refused(AcceptError::Parse(ParseError::HeadTooLarge)) => {}
        other => panic!("expected a head too large, got {other:?}"),
    }
}

#[tokio::test]
async fn accept_answers_an_unfinished_oversized_head_with_431() {
    // Exactly the limit and not finished: the server has read every byte we sent.
    let mut head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ".to_vec();
    head.resize(1024, b'a');
    expect_431(1024, &head).await;
}

#[tokio::test]
async fn accept_answers_431_to_a_client_still_sending_its_head() {
    // A 100 KiB cookie against the default 32 KiB limit: the server stops reading with
    // bytes still unread, and its answer must not be lost to a reset.
    let mut head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: ".to_vec();
    head.resize(100 * 1024, b'a');
    expect_431(switchboard::proto::handshake::http1::MAX_HEAD_LEN, &head).await;
}

#[tokio::test]
async fn accept_answers_a_finished_head_longer_than_the_limit_with_431() {
    // A whole, valid handshake of about 1.5 KiB against a 1200-byte limit: the limit
    // must hold however the head's bytes arrive.
    let padding = format!("X-Padding: {}\r\n", "a".repeat(1300));
    let head = handshake_request("/", &padding);
    assert!(head.len() > 1200 && head.len() < 2048);
    expect_431(1200, head.as_bytes()).await;
}

#[tokio::test]
async fn accept_answers_a_bad_handshake_with_400_and_a_reason() {
    let mut server = raw_server(AcceptConfig::default(), Behaviour::Echo).await;
    let no_key =
        handshake_request("/", "").replace(&format!("Sec-WebSocket-Key: {}\r\n", common::KEY), "");
    let (response, body, mut tcp) = http_exchange(server.addr, no_key.as_bytes()).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body, b"no sec-websocket-key header");
    assert_eof(&mut tcp).await;
    assert!(
        matches!(
            server.event().await,
            Event::Refused(AcceptError::Handshake(_))
        ),
        "expected a refused handshake"
    );

    // Not HTTP at all: 400 too.
    let (response, body, mut tcp) =
        http_exchange(server.addr, b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(!body.is_empty());
    assert_eof(&mut tcp).await;
}

/// Opens a raw connection through the handshake; returns it with a frame reader.
async fn raw_connect(server: &Server) -> (TcpStream, RawReader) {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(handshake_request("/", "").as_bytes())
        .await
        .unwrap();
    let (response, rest) = read_response(&mut tcp).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    (tcp, RawReader::new(rest))
}

#[tokio::test]
async fn accept_closes_with_1002_on_an_unmasked_client_frame() {
    let mut server = raw_server(AcceptConfig::default(), Behaviour::Echo).await;
    let (mut tcp, mut reader) = raw_connect(&server).await;
    // "The server MUST close the connection upon receiving a frame that is not masked"
    // (RFC 6455 §5.1).
    let mut out = BytesMut::new();
    Frame::text("unmasked").write_to(&mut out);
    tcp.write_all(&out).await.unwrap();
    match reader.message(&mut tcp).await {
        Message::Close(Some(close)) => assert_eq!(close.code, CloseCode::PROTOCOL_ERROR),
        other => panic!("expected close 1002, got {other:?}"),
    }
    // The server closes the transport first (RFC 6455 §7.1.1) ...
    assert_eof(&mut tcp).await;
    // ... and waits for us to close ours before it reports the failure.
    drop(tcp);
    match server.event().await {
        Event::Failed(error) => assert_eq!(error.close_code(), CloseCode::PROTOCOL_ERROR),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert!(matches!(server.event().await, Event::Ended));
}

#[tokio::test]
async fn accept_closes_with_1009_on_an_oversized_message() {
    let config =
        AcceptConfig::default().websocket(WebSocketConfig::default().max_message_size(1000));
    let mut server = raw_server(config, Behaviour::Echo).await;
    let (mut ws, _) = client::connect(&server.url("/")).await.unwrap();
    ws.send(Message::binary(vec![7; 1000])).await.unwrap();
    assert_eq!(
        within("echo", ws.recv()).await.unwrap().unwrap(),
        Message::binary(vec![7; 1000])
    );
    ws.send(Message::binary(vec![7; 1001])).await.unwrap();
    match within("close", ws.recv()).await {
        Some(Ok(Message::Close(Some(close)))) => {
            assert_eq!(close.code, CloseCode::MESSAGE_TOO_BIG);
        }
        other => panic!("expected close 1009, got {other:?}"),
    }
    assert!(within("end", ws.recv()).await.is_none());
    match server.control_event().await {
        Event::Failed(error) => assert_eq!(error.close_code(), CloseCode::MESSAGE_TOO_BIG),
        other => panic!("expected a message too big, got {other:?}"),
    }
}

#[tokio::test]
async fn client_connects_to_accept() {
    client_exchange_seen(
        raw_server(AcceptConfig::default(), Behaviour::Echo).await,
        "/path?query=1",
    )
    .await;
}

// --- the client against another implementation ---

#[tokio::test]
async fn client_connects_to_tokio_tungstenite() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let mut close = None;
        while let Some(message) = ws.next().await {
            match message.unwrap() {
                m @ (tokio_tungstenite::tungstenite::Message::Text(_)
                | tokio_tungstenite::tungstenite::Message::Binary(_)) => {
                    ws.send(m).await.unwrap();
                }
                tokio_tungstenite::tungstenite::Message::Close(frame) => close = frame,
                _ => {}
            }
        }
        close
    });
    client_exchange(&format!("ws://{addr}/")).await;
    let close = within("tungstenite server", server)
        .await
        .unwrap()
        .expect("tungstenite saw our close frame");
    assert_eq!(u16::from(close.code), 1000);
    assert_eq!(close.reason.as_str(), "done");
}

#[tokio::test]
async fn client_reads_frames_sent_right_behind_the_101() {
    // A server that writes its 101 and a first frame in one write.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0; 1];
            assert_eq!(tcp.read(&mut byte).await.unwrap(), 1);
            head.push(byte[0]);
        }
        let (request, _) = switchboard::proto::handshake::http1::parse_request(&head)
            .unwrap()
            .unwrap();
        let handshake =
            switchboard::proto::handshake::ServerHandshake::from_request(&request).unwrap();
        let mut out = Vec::new();
        switchboard::proto::handshake::http1::write_response(&handshake.response(), &mut out);
        let mut frame = BytesMut::new();
        Frame::text("welcome").write_to(&mut frame);
        out.extend_from_slice(&frame);
        tcp.write_all(&out).await.unwrap();
        // Hold the connection open until the client goes.
        let _ = tcp.read(&mut [0; 64]).await;
    });
    let (mut ws, _) = client::connect(&format!("ws://{addr}/")).await.unwrap();
    assert_eq!(
        within("welcome", ws.recv()).await.unwrap().unwrap(),
        Message::text("welcome")
    );
}
