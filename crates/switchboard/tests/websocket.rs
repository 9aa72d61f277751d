//! `WebSocket<S>` against tokio-tungstenite, an implementation nobody here wrote, over
//! an in-memory pipe (the opening handshake is covered by the upgrade tests).

use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use switchboard::{CloseCode, Error, Message, Role, WebSocket, WebSocketConfig};
use tokio::io::{AsyncWriteExt, DuplexStream, duplex};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, protocol::Role as TRole},
};

type Peer = WebSocketStream<DuplexStream>;

const SIZES: [usize; 7] = [0, 1, 125, 126, 65535, 65536, 16 << 20];

async fn pair(ours: Role) -> (WebSocket<DuplexStream>, Peer) {
    let (a, b) = duplex(1 << 16);
    let theirs = match ours {
        Role::Server => TRole::Client,
        Role::Client => TRole::Server,
    };
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let peer = WebSocketStream::from_raw_socket(b, theirs, Some(config)).await;
    let ws = WebSocket::from_raw_socket(
        a,
        ours,
        WebSocketConfig::default().close_timeout(Duration::from_millis(500)),
    );
    (ws, peer)
}

/// Exactly `len` bytes of text with multi-byte characters in it.
fn text_of(len: usize) -> String {
    "é".repeat(len / 2) + &"x".repeat(len % 2)
}

#[tokio::test]
async fn messages_of_every_size_both_ways_in_both_roles() {
    for role in [Role::Server, Role::Client] {
        let (mut ws, mut peer) = pair(role).await;
        let echo = tokio::spawn(async move {
            while let Some(Ok(m)) = peer.next().await {
                if m.is_text() || m.is_binary() {
                    peer.send(m).await.unwrap();
                }
            }
        });
        for len in SIZES {
            let text = text_of(len);
            assert_eq!(text.len(), len);
            ws.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(text));
            let bin: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            ws.send(Message::binary(bin.clone())).await.unwrap();
            assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(bin));
        }
        ws.close(CloseCode::NORMAL, "done").await.unwrap();
        echo.await.unwrap();
    }
}

#[tokio::test]
async fn fragmented_messages_from_the_peer_are_reassembled() {
    use tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let (mut ws, mut peer) = pair(Role::Server).await;
    let frag = |op, fin, data: &[u8]| {
        let mut f = Frame::message(data.to_vec(), op, fin);
        f.header_mut().is_final = fin;
        tungstenite::Message::Frame(f)
    };
    peer.send(frag(OpCode::Data(Data::Text), false, "κό".as_bytes()))
        .await
        .unwrap();
    peer.send(tungstenite::Message::Ping("mid".into()))
        .await
        .unwrap();
    peer.send(frag(OpCode::Data(Data::Continue), false, "σμ".as_bytes()))
        .await
        .unwrap();
    peer.send(frag(OpCode::Data(Data::Continue), true, "ε".as_bytes()))
        .await
        .unwrap();
    assert_eq!(
        ws.recv().await.unwrap().unwrap(),
        Message::Ping("mid".into())
    );
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("κόσμε"));
    // The ping was answered automatically.
    assert_eq!(
        peer.next().await.unwrap().unwrap(),
        tungstenite::Message::Pong("mid".into())
    );
}

#[tokio::test]
async fn peer_close_is_echoed_and_reported() {
    let (mut ws, mut peer) = pair(Role::Server).await;
    peer.close(Some(tungstenite::protocol::CloseFrame {
        code: 4001.into(),
        reason: "bye now".into(),
    }))
    .await
    .unwrap();
    let Some(Ok(Message::Close(Some(frame)))) = ws.recv().await else {
        panic!("expected the peer's close frame");
    };
    assert_eq!(frame.code, CloseCode(4001));
    assert_eq!(frame.reason, "bye now");
    assert!(ws.recv().await.is_none());
    // The peer got our echo of its code.
    match peer.next().await {
        Some(Ok(tungstenite::Message::Close(Some(echo)))) => assert_eq!(u16::from(echo.code), 4001),
        other => panic!("expected a close echo, got {other:?}"),
    }
}

#[tokio::test]
async fn our_close_completes_the_handshake() {
    let (mut ws, mut peer) = pair(Role::Server).await;
    let peer_task = tokio::spawn(async move {
        let mut seen = None;
        while let Some(Ok(m)) = peer.next().await {
            if let tungstenite::Message::Close(c) = m {
                seen = c;
            }
        }
        seen
    });
    ws.close(CloseCode::GOING_AWAY, "server shutting down")
        .await
        .unwrap();
    let seen = peer_task.await.unwrap().expect("peer saw a close frame");
    assert_eq!(u16::from(seen.code), 1001);
    assert_eq!(seen.reason.as_str(), "server shutting down");
}

#[tokio::test]
async fn a_vanished_peer_is_an_abnormal_closure() {
    let (mut ws, peer) = pair(Role::Server).await;
    drop(peer);
    let err = ws.recv().await.unwrap().unwrap_err();
    assert!(matches!(err, Error::AbnormalClosure), "{err:?}");
    assert_eq!(err.close_code(), CloseCode::ABNORMAL);
    assert!(ws.recv().await.is_none());
}

#[tokio::test]
async fn a_silent_peer_times_out_the_close() {
    let (a, _b) = duplex(1024);
    let mut ws = WebSocket::from_raw_socket(
        a,
        Role::Server,
        WebSocketConfig::default().close_timeout(Duration::from_millis(100)),
    );
    let err = ws.close(CloseCode::NORMAL, "").await.unwrap_err();
    assert!(matches!(err, Error::CloseTimeout), "{err:?}");
}

#[tokio::test]
async fn protocol_errors_close_with_their_code() {
    // An unmasked frame sent to a server: 1002.
    let (a, mut b) = duplex(1024);
    let mut ws = WebSocket::from_raw_socket(a, Role::Server, WebSocketConfig::default());
    b.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let err = ws.recv().await.unwrap().unwrap_err();
    assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    let mut peer = WebSocketStream::from_raw_socket(b, TRole::Client, None).await;
    match peer.next().await {
        Some(Ok(tungstenite::Message::Close(Some(c)))) => assert_eq!(u16::from(c.code), 1002),
        other => panic!("expected close 1002, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let (a, b) = duplex(1 << 16);
    let mut ws = WebSocket::from_raw_socket(
        a,
        Role::Server,
        WebSocketConfig::default().max_message_size(1000),
    );
    let mut peer = WebSocketStream::from_raw_socket(b, TRole::Client, None).await;
    peer.send(tungstenite::Message::binary(vec![0u8; 1001]))
        .await
        .unwrap();
    let err = ws.recv().await.unwrap().unwrap_err();
    assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);
    match peer.next().await {
        Some(Ok(tungstenite::Message::Close(Some(c)))) => assert_eq!(u16::from(c.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn queued_frames_leave_together_and_halves_work_from_two_tasks() {
    let (mut ws, mut peer) = pair(Role::Server).await;
    for i in 0..100 {
        ws.feed(Message::text(format!("m{i}"))).unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..100 {
        assert_eq!(
            peer.next().await.unwrap().unwrap(),
            tungstenite::Message::text(format!("m{i}"))
        );
    }

    let (mut reader, writer) = ws.split();
    let sender = tokio::spawn({
        let writer = writer.clone();
        async move {
            for i in 0..50 {
                writer.send(Message::text(format!("s{i}"))).await.unwrap();
            }
        }
    });
    peer.send(tungstenite::Message::Ping("x".into()))
        .await
        .unwrap();
    peer.send(tungstenite::Message::text("from peer"))
        .await
        .unwrap();
    assert_eq!(
        reader.recv().await.unwrap().unwrap(),
        Message::Ping("x".into())
    );
    assert_eq!(
        reader.recv().await.unwrap().unwrap(),
        Message::text("from peer")
    );
    sender.await.unwrap();
    let mut got = Vec::new();
    while got.len() < 51 {
        got.push(peer.next().await.unwrap().unwrap());
    }
    assert!(got.contains(&tungstenite::Message::Pong("x".into())));
    writer.close(CloseCode::NORMAL, "").await.unwrap();
    // The peer echoes our close; the reader sees it and ends.
    let peer_done = tokio::spawn(async move { while peer.next().await.is_some() {} });
    assert!(matches!(reader.recv().await, Some(Ok(Message::Close(_)))));
    assert!(reader.recv().await.is_none());
    peer_done.await.unwrap();
}
