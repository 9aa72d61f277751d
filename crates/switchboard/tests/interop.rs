//! tokio-tungstenite, an implementation nobody here wrote, as the client of our servers
//! over real TCP: the echo example's loop on `accept_with`, and an axum route.
//!
//! Each scenario runs against both servers (modules `echo_example` and `axum_route`).

mod common;

use common::{
    Behaviour, Event, MAX_MESSAGE_SIZE, Server, axum_server, binary_of, echo_config, raw_server,
    text_of, within,
};
use futures_util::{SinkExt, StreamExt};
use switchboard::{CloseCode, Error, Message};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async_with_config,
    tungstenite::{
        self, Message as TMessage,
        protocol::{
            CloseFrame as TCloseFrame, WebSocketConfig as TConfig,
            frame::{
                Frame as TFrame,
                coding::{CloseCode as TCloseCode, Data, OpCode},
            },
        },
    },
};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

const SIZES: [usize; 7] = [0, 1, 125, 126, 65535, 65536, 16 << 20];

/// Which of our servers a scenario runs against.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `examples/echo.rs`'s loop: `accept_with` on a `TcpListener`.
    EchoExample,
    /// A route with `switchboard::axum::WebSocketUpgrade`, served by `axum::serve`.
    AxumRoute,
}

async fn start(kind: Kind, behaviour: Behaviour) -> (Server, Client) {
    let (server, path) = match kind {
        Kind::EchoExample => (raw_server(echo_config(), behaviour).await, "/"),
        Kind::AxumRoute => (axum_server(behaviour).await, "/ws"),
    };
    let config = TConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE));
    let (client, response) = within(
        "connect",
        connect_async_with_config(server.url(path), Some(config), true),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 101);
    (server, client)
}

async fn next(client: &mut Client) -> TMessage {
    within("client message", client.next())
        .await
        .expect("the connection is open")
        .unwrap()
}

/// Reads until the end of the connection; returns the close frame the server sent,
/// which must carry a code.
async fn close_received(client: &mut Client) -> TCloseFrame {
    let mut close = None;
    while let Some(message) = within("client end", client.next()).await {
        match message {
            Ok(TMessage::Close(frame)) => close = Some(frame),
            Ok(other) => panic!("expected the close frame, got {other:?}"),
            // tungstenite reports the end after the close handshake as an error.
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(error) => panic!("{error}"),
        }
    }
    close
        .expect("the server sent a close frame")
        .expect("the close frame has a status code")
}

async fn messages_of_every_size(kind: Kind) {
    let (mut server, mut client) = start(kind, Behaviour::Echo).await;
    for len in SIZES {
        let text = text_of(len);
        assert_eq!(text.len(), len);
        client.send(TMessage::text(text.clone())).await.unwrap();
        assert_eq!(next(&mut client).await, TMessage::text(text.clone()));
        let binary = binary_of(len);
        client.send(TMessage::binary(binary.clone())).await.unwrap();
        assert_eq!(next(&mut client).await, TMessage::binary(binary.clone()));
        // The server decoded the very same messages.
        for expected in [Message::text(text), Message::binary(binary)] {
            match server.event().await {
                Event::Received(got) => assert!(got == expected, "message of {len} bytes"),
                other => panic!("expected a message of {len} bytes, got {other:?}"),
            }
        }
    }
}

/// One fragment; tungstenite masks it, as a client must.
fn fragment(opcode: OpCode, fin: bool, data: &[u8]) -> TMessage {
    TMessage::Frame(TFrame::message(data.to_vec(), opcode, fin))
}

async fn fragments_with_interleaved_pings(kind: Kind) {
    let (mut server, mut client) = start(kind, Behaviour::Echo).await;
    let text = OpCode::Data(Data::Text);
    let binary = OpCode::Data(Data::Binary);
    let more = OpCode::Data(Data::Continue);
    // "κόσμε" cut inside its first character: UTF-8 is checked across fragments.
    let greek = "κόσμε".as_bytes();
    let (first, rest) = greek.split_at(1);
    let (second, third) = rest.split_at(4);
    for frame in [
        fragment(text, false, first),
        TMessage::Ping("one".into()),
        fragment(more, false, second),
        fragment(more, false, &[]),
        TMessage::Ping("two".into()),
        fragment(more, true, third),
        fragment(binary, false, &[1, 2]),
        TMessage::Ping("three".into()),
        fragment(more, true, &[3]),
    ] {
        client.feed(frame).await.unwrap();
    }
    client.flush().await.unwrap();

    // Pings are answered at once, in the middle of the fragmented messages.
    for expected in [
        TMessage::Pong("one".into()),
        TMessage::Pong("two".into()),
        TMessage::text("κόσμε"),
        TMessage::Pong("three".into()),
        TMessage::binary(vec![1, 2, 3]),
    ] {
        assert_eq!(next(&mut client).await, expected);
    }
    for expected in [
        Message::Ping("one".into()),
        Message::Ping("two".into()),
        Message::text("κόσμε"),
        Message::Ping("three".into()),
        Message::binary(vec![1, 2, 3]),
    ] {
        match server.event().await {
            Event::Received(got) => assert_eq!(got, expected),
            other => panic!("expected {expected:?}, got {other:?}"),
        }
    }
}

async fn pings_are_answered_with_the_same_payload(kind: Kind) {
    let (_server, mut client) = start(kind, Behaviour::Echo).await;
    for payload in [Vec::new(), b"data".to_vec(), binary_of(125)] {
        client
            .send(TMessage::Ping(payload.clone().into()))
            .await
            .unwrap();
        assert_eq!(next(&mut client).await, TMessage::Pong(payload.into()));
    }
}

/// The client closes with `code`; the server must see it, and echo it back.
async fn client_closes_with(kind: Kind, code: u16, reason: &str) {
    let (mut server, mut client) = start(kind, Behaviour::Echo).await;
    client.send(TMessage::text("before")).await.unwrap();
    assert_eq!(next(&mut client).await, TMessage::text("before"));
    client
        .close(Some(TCloseFrame {
            code: TCloseCode::from(code),
            reason: reason.into(),
        }))
        .await
        .unwrap();
    let echo = close_received(&mut client).await;
    assert_eq!(u16::from(echo.code), code);
    // The server waits for the client to close the transport (RFC 6455 §7.1.1).
    drop(client);

    match server.until_end().await.as_slice() {
        [Event::Received(Message::Close(Some(close))), Event::Ended] => {
            assert_eq!(close.code, CloseCode(code));
            assert_eq!(close.reason, reason);
        }
        other => panic!("expected the client's close then the end, got {other:?}"),
    }
}

async fn client_closes_normally(kind: Kind) {
    client_closes_with(kind, 1000, "bye").await;
}

async fn client_closes_with_an_application_code(kind: Kind) {
    client_closes_with(kind, 4321, "application says: done, ελπίζω").await;
}

/// Exchanges a message, so that nothing is left unread, then returns the client.
async fn after_one_echo(kind: Kind) -> (Server, Client) {
    let (server, mut client) = start(kind, Behaviour::Echo).await;
    client.send(TMessage::text("hello")).await.unwrap();
    assert_eq!(next(&mut client).await, TMessage::text("hello"));
    (server, client)
}

fn assert_abnormal_end(events: &[Event]) -> &Error {
    match events {
        [Event::Failed(error), Event::Ended] => {
            assert_eq!(error.close_code(), CloseCode::ABNORMAL);
            error
        }
        other => panic!("expected a failure then the end, got {other:?}"),
    }
}

async fn client_vanishes(kind: Kind) {
    let (mut server, client) = after_one_echo(kind).await;
    // The TCP connection ends (FIN) without a close frame.
    drop(client);
    let events = server.until_end().await;
    let error = assert_abnormal_end(&events);
    assert!(matches!(error, Error::AbnormalClosure), "{error:?}");
}

async fn client_resets_the_connection(kind: Kind) {
    let (mut server, client) = after_one_echo(kind).await;
    let MaybeTlsStream::Plain(tcp) = client.get_ref() else {
        panic!("plain TCP expected");
    };
    // Closing with SO_LINGER 0 sends RST rather than FIN.
    tcp.set_zero_linger().unwrap();
    drop(client);
    assert_abnormal_end(&server.until_end().await);
}

async fn server_closes(kind: Kind) {
    let (mut server, mut client) = start(
        kind,
        Behaviour::CloseAfterFirst(CloseCode(4002), "server done"),
    )
    .await;
    client.send(TMessage::text("last")).await.unwrap();
    assert_eq!(next(&mut client).await, TMessage::text("last"));
    let close = close_received(&mut client).await;
    assert_eq!(u16::from(close.code), 4002);
    assert_eq!(close.reason.as_str(), "server done");
    drop(client);
    // tungstenite answered our close frame, so the handshake completed cleanly.
    match server.until_end().await.as_slice() {
        [Event::Closed(Ok(())), Event::Ended] => {}
        other => panic!("expected a completed close handshake, got {other:?}"),
    }
}

macro_rules! against {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn messages_of_every_size() {
                super::messages_of_every_size($kind).await;
            }

            #[tokio::test]
            async fn fragments_with_interleaved_pings() {
                super::fragments_with_interleaved_pings($kind).await;
            }

            #[tokio::test]
            async fn pings_are_answered_with_the_same_payload() {
                super::pings_are_answered_with_the_same_payload($kind).await;
            }

            #[tokio::test]
            async fn client_closes_normally() {
                super::client_closes_normally($kind).await;
            }

            #[tokio::test]
            async fn client_closes_with_an_application_code() {
                super::client_closes_with_an_application_code($kind).await;
            }

            #[tokio::test]
            async fn client_vanishes() {
                super::client_vanishes($kind).await;
            }

            #[tokio::test]
            async fn client_resets_the_connection() {
                super::client_resets_the_connection($kind).await;
            }

            #[tokio::test]
            async fn server_closes() {
                super::server_closes($kind).await;
            }
        }
    };
}

against!(echo_example, Kind::EchoExample);
against!(axum_route, Kind::AxumRoute);
