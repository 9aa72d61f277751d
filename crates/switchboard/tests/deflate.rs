//! permessage-deflate end to end: negotiated by each server upgrade path and by the
//! client, messages compressed on the wire both ways, the client's 1010 on an answer it
//! cannot honour, and the message limit held on the inflated size.

use axum::{Router, response::Response, routing::get};
use bytes::BytesMut;
use std::{net::SocketAddr, time::Duration};
use switchboard::{
    CloseCode, Compression, Error, Message, WebSocketConfig,
    axum::WebSocketUpgrade,
    client::{ClientConfig, ConnectError, connect_with},
    hub::{Connection, Handler, Hub, HubConfig},
    proto::{
        Decoder, Frame, Limits, OpCode, Role,
        deflate::{DeflateParams, Deflater},
        handshake::{ClientHandshakeError, http1},
    },
    upgrade::{AcceptConfig, accept_with},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const MODES: [Compression; 3] = [
    Compression::Dedicated {
        window_bits: 15,
        level: 6,
        threshold: 0,
    },
    Compression::Dedicated {
        window_bits: 9,
        level: 1,
        threshold: 100,
    },
    Compression::Shared {
        level: 6,
        threshold: 0,
    },
];

fn config(compression: Compression) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(64 << 20)
        .close_timeout(Duration::from_secs(2))
        .compression(compression)
}

/// An echo server on the raw accept path.
async fn raw_echo(compression: Compression) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = AcceptConfig::default().websocket(config(compression));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let accept = accept.clone();
            tokio::spawn(async move {
                let Ok((mut ws, _)) = accept_with(tcp, &accept).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.recv().await {
                    if message.is_data() && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An echo server on the axum (hence hyper) upgrade path.
async fn axum_echo(compression: Compression) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/",
        get(move |upgrade: WebSocketUpgrade| async move {
            let response: Response =
                upgrade
                    .config(config(compression))
                    .on_upgrade(|mut ws| async move {
                        while let Some(Ok(message)) = ws.recv().await {
                            if message.is_data() && ws.send(message).await.is_err() {
                                return;
                            }
                        }
                    });
            response
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn client(compression: Compression) -> ClientConfig {
    ClientConfig::default().websocket(config(compression))
}

/// Compressible text of `len` bytes, with multi-byte characters.
fn text_of(len: usize) -> String {
    let mut text: String = "ünïcödé and ascii, ".chars().cycle().take(len).collect();
    while text.len() > len {
        text.pop();
    }
    let pad = len - text.len();
    text + &"x".repeat(pad)
}

async fn echo_every_size(addr: SocketAddr, compression: Compression) {
    let (mut ws, response) = connect_with(&format!("ws://{addr}/"), &client(compression))
        .await
        .unwrap();
    assert!(
        response.headers()["sec-websocket-extensions"]
            .to_str()
            .unwrap()
            .starts_with("permessage-deflate"),
    );
    let agreed = ws.deflate().expect("deflate in force");
    assert_eq!(
        agreed.server_no_context_takeover,
        matches!(compression, Compression::Shared { .. })
    );
    for len in [0, 1, 99, 100, 1000, 65_536, 1 << 20, 16 << 20] {
        let text = text_of(len);
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(text));
        let binary: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
        ws.send(Message::binary(binary.clone())).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(binary));
    }
    ws.close(CloseCode::NORMAL, "done").await.unwrap();
}

#[tokio::test]
async fn raw_accept_negotiates_and_echoes_in_every_mode() {
    for mode in MODES {
        echo_every_size(raw_echo(mode).await, mode).await;
    }
}

#[tokio::test]
async fn axum_upgrade_negotiates_and_echoes() {
    for mode in MODES {
        echo_every_size(axum_echo(mode).await, mode).await;
    }
}

#[tokio::test]
async fn shared_mode_answers_without_context_takeover() {
    let addr = raw_echo(Compression::shared()).await;
    let (_ws, response) = connect_with(&format!("ws://{addr}/"), &client(Compression::dedicated()))
        .await
        .unwrap();
    let answer = response.headers()["sec-websocket-extensions"]
        .to_str()
        .unwrap();
    assert!(answer.contains("server_no_context_takeover"), "{answer}");
    assert!(answer.contains("client_no_context_takeover"), "{answer}");
}

#[tokio::test]
async fn a_disabled_server_declines_and_the_client_goes_uncompressed() {
    let addr = raw_echo(Compression::Disabled).await;
    let (mut ws, response) =
        connect_with(&format!("ws://{addr}/"), &client(Compression::dedicated()))
            .await
            .unwrap();
    assert!(!response.headers().contains_key("sec-websocket-extensions"));
    assert_eq!(ws.deflate(), None);
    let text = text_of(10_000);
    ws.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(text));
}

/// A server that answers any handshake with `extensions`, then reports the first frame
/// the client sends.
async fn answering(
    extensions: &'static str,
) -> (SocketAddr, tokio::task::JoinHandle<Option<Message>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let (request, len) = loop {
            if let Some(head) = http1::parse_request(&buf).unwrap() {
                break head;
            }
            tcp.read_buf(&mut buf).await.unwrap();
        };
        let _ = buf.split_to(len);
        let mut handshake =
            switchboard::proto::handshake::ServerHandshake::from_request(&request).unwrap();
        handshake.set_extensions(http::HeaderValue::from_static(extensions));
        let mut out = Vec::new();
        http1::write_response(&handshake.response(), &mut out);
        tcp.write_all(&out).await.unwrap();
        let mut decoder = Decoder::new(Role::Server, Limits::default());
        decoder.feed(buf);
        loop {
            if let Ok(Some(message)) = decoder.decode() {
                return Some(message);
            }
            let mut buf = decoder.read_buf(4096);
            if tcp.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return None;
            }
            decoder.feed(buf);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn the_client_fails_with_1010_on_an_answer_it_did_not_offer() {
    for (answer, expected) in [
        (
            "permessage-deflate; server_max_window_bits=16",
            "invalid value",
        ),
        ("permessage-deflate; bogus", "not defined"),
        ("x-other", "not offered"),
    ] {
        let (addr, server) = answering(answer).await;
        let error = connect_with(&format!("ws://{addr}/"), &client(Compression::dedicated()))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                ConnectError::Handshake(ClientHandshakeError::Deflate(_))
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains(expected), "{error}");
        let Some(Message::Close(Some(close))) = server.await.unwrap() else {
            panic!("no close frame for {answer}");
        };
        assert_eq!(close.code, CloseCode::EXTENSION_REQUIRED);
    }
}

#[tokio::test]
async fn a_deflate_bomb_closes_with_1009_without_inflating_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let accept = AcceptConfig::default()
            .websocket(config(Compression::dedicated()).max_message_size(1 << 20));
        let (mut ws, _) = accept_with(tcp, &accept).await.unwrap();
        ws.recv().await.unwrap()
    });
    // The client runs the handshake, then sends a frame crafted by hand: 64 MiB of
    // zeros, compressed to about 64 KiB.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let handshake = switchboard::proto::handshake::ClientHandshake::new(
        &format!("ws://{addr}/").parse().unwrap(),
        [3; 16],
    )
    .unwrap()
    .with_deflate(Compression::dedicated().deflate_config().unwrap());
    let mut out = Vec::new();
    http1::write_request(&handshake.request(), &mut out);
    tcp.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let (response, len) = loop {
        if let Some(head) = http1::parse_response(&buf).unwrap() {
            break head;
        }
        tcp.read_buf(&mut buf).await.unwrap();
    };
    let _ = buf.split_to(len);
    let params: DeflateParams = handshake
        .validate_response(&response)
        .unwrap()
        .deflate()
        .unwrap();
    let mut deflater = Deflater::new(&params, Role::Client, 9);
    let bomb = deflater
        .frame(OpCode::Binary, &vec![0u8; 64 << 20])
        .unwrap();
    assert!(bomb.payload().len() < 100 << 10, "{}", bomb.payload().len());
    let mut wire = BytesMut::new();
    bomb.masked([1, 2, 3, 4]).write_to(&mut wire);
    tcp.write_all(&wire).await.unwrap();
    let error = server.await.unwrap().unwrap_err();
    assert!(matches!(error, Error::Protocol(_)), "{error:?}");
    assert_eq!(error.close_code(), CloseCode::MESSAGE_TOO_BIG);
    // The client reads the server's close frame: 1009.
    let mut decoder = Decoder::new(Role::Client, Limits::default());
    decoder.feed(buf);
    let close = loop {
        if let Some(message) = decoder.decode().unwrap() {
            break message;
        }
        let mut buf = decoder.read_buf(4096);
        assert_ne!(tcp.read_buf(&mut buf).await.unwrap(), 0);
        decoder.feed(buf);
    };
    let Message::Close(Some(close)) = close else {
        panic!("{close:?}");
    };
    assert_eq!(close.code, CloseCode::MESSAGE_TOO_BIG);
}

/// A hand-driven client that offered a bare `permessage-deflate` and completed the
/// handshake: the socket, what arrived after the response, and the agreement.
async fn raw_deflate_client(addr: SocketAddr) -> (TcpStream, BytesMut, DeflateParams) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let handshake = switchboard::proto::handshake::ClientHandshake::new(
        &format!("ws://{addr}/").parse().unwrap(),
        [5; 16],
    )
    .unwrap()
    .with_deflate(Default::default());
    let mut out = Vec::new();
    http1::write_request(&handshake.request(), &mut out);
    tcp.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let (response, len) = loop {
        if let Some(head) = http1::parse_response(&buf).unwrap() {
            break head;
        }
        tcp.read_buf(&mut buf).await.unwrap();
    };
    let _ = buf.split_to(len);
    let params = handshake
        .validate_response(&response)
        .unwrap()
        .deflate()
        .unwrap();
    (tcp, buf, params)
}

/// Reads `count` frames raw: opcode, RSV1 and payload length of each, in order.
async fn raw_frames(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    count: usize,
) -> Vec<(OpCode, bool, u64)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        while let Ok(Some((header, header_len))) = switchboard::proto::FrameHeader::parse(buf) {
            let total = header_len + header.payload_len as usize;
            if buf.len() < total {
                break;
            }
            let _ = buf.split_to(total);
            seen.push((header.opcode, header.rsv1, header.payload_len));
        }
        if seen.len() < count {
            assert_ne!(tcp.read_buf(buf).await.unwrap(), 0);
        }
    }
    seen
}

#[tokio::test]
async fn frames_on_the_wire_carry_rsv1_and_control_frames_do_not() {
    // Our server, a hand-driven client: the server's frames are read raw.
    let addr = raw_echo(Compression::shared()).await;
    let (mut tcp, mut buf, params) = raw_deflate_client(addr).await;
    assert!(params.server_no_context_takeover);
    let mut wire = BytesMut::new();
    Frame::text("a".repeat(5000))
        .masked([9, 9, 9, 9])
        .write_to(&mut wire);
    Frame::ping("p").masked([9, 9, 9, 9]).write_to(&mut wire);
    tcp.write_all(&wire).await.unwrap();
    // The pong comes first or second; the echo is compressed, the pong is not.
    let mut seen = raw_frames(&mut tcp, &mut buf, 2).await;
    seen.sort_by_key(|(op, ..)| op.as_u8());
    assert_eq!(seen[0].0, OpCode::Text);
    assert!(seen[0].1 && seen[0].2 < 100, "{seen:?}");
    assert_eq!(seen[1], (OpCode::Pong, false, 1));
}

/// Every connection joins one room and broadcasts what it sends to the room.
struct Room;

impl Handler for Room {
    async fn on_open(&self, conn: &Connection) {
        conn.join("room");
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        conn.hub().to("room").send(message);
    }
}

/// A hub compressing as `compression` says, serving [`Room`] at `/`.
async fn hub_room(compression: Compression) -> (Hub, SocketAddr) {
    let config = HubConfig::default().compression(compression);
    let hub = Hub::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/", switchboard::ws(hub.clone(), Room));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (hub, addr)
}

#[tokio::test]
async fn hub_broadcasts_reach_compressing_and_plain_clients_in_both_modes() {
    for mode in [Compression::shared(), Compression::dedicated()] {
        let (hub, addr) = hub_room(mode).await;
        let url = format!("ws://{addr}/");
        let (mut compressing, _) = connect_with(&url, &client(mode)).await.unwrap();
        assert!(compressing.deflate().is_some());
        let (mut plain, _) = connect_with(&url, &client(Compression::Disabled))
            .await
            .unwrap();
        assert!(plain.deflate().is_none());
        let (mut raw, mut buf, params) = raw_deflate_client(addr).await;
        assert_eq!(
            params.server_no_context_takeover,
            matches!(mode, Compression::Shared { .. })
        );
        while hub.room_size("room") < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Past the 1 KiB threshold, twice (the second rides on the first's context in
        // dedicated mode), then under it.
        let sent = [text_of(5000), text_of(6000), "short".to_owned()];
        for text in &sent {
            compressing.send(Message::text(text.clone())).await.unwrap();
        }
        for ws in [&mut compressing, &mut plain] {
            for text in &sent {
                assert_eq!(
                    ws.recv().await.unwrap().unwrap(),
                    Message::text(text.clone())
                );
            }
        }
        let frames = raw_frames(&mut raw, &mut buf, 3).await;
        assert!(frames[0].1 && frames[0].2 < 1000, "{mode:?}: {frames:?}");
        assert!(frames[1].1 && frames[1].2 < 1000, "{mode:?}: {frames:?}");
        assert_eq!(frames[2], (OpCode::Text, false, 5), "{mode:?}");
    }
}

#[tokio::test]
async fn dedicated_messages_are_charged_uncompressed_until_their_task_compresses_them() {
    const LIMIT: usize = 64 << 10;
    let config = HubConfig::default()
        .compression(Compression::dedicated())
        .max_buffered_bytes(LIMIT);
    let hub = Hub::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/", switchboard::ws(hub.clone(), Room));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (mut ws, _) = connect_with(&format!("ws://{addr}/"), &client(Compression::dedicated()))
        .await
        .unwrap();
    while hub.room_size("room") < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let conn = hub.room_members("room").remove(0);
    // Compressible messages past the threshold, with a short plain one every fifth. On
    // this one-thread runtime the connection's task cannot run before the loop ends:
    // every message waits uncompressed, charged in full.
    let sent: Vec<String> = (0..100)
        .map(|i| match i % 5 {
            4 => format!("short {i}"),
            _ => format!("{i:03} {}", "status update ".repeat(150)),
        })
        .collect();
    let mut queued = Vec::new();
    for text in &sent {
        if hub.to("room").send_text(text.clone()).queued == 1 {
            queued.push(text.clone());
        }
    }
    assert!(conn.buffered_amount() <= LIMIT);
    let dropped = (sent.len() - queued.len()) as u64;
    assert!(dropped > 0, "2 KiB messages past a 64 KiB buffer");
    assert_eq!(conn.dropped_messages(), dropped, "every drop counted");
    // In the order queued, compressed messages and plain ones alike.
    for text in &queued {
        let received = ws.recv().await.unwrap().unwrap();
        assert!(received == Message::text(text.clone()), "{:.9}", text);
    }
    // Written: nothing left charged, compressed or not.
    while conn.buffered_amount() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
