//! Phoenix channels on two hubs attached to the real Redis: a topic is a hub room, so a
//! broadcast on a topic (from a socket's `handle_in`, or from the endpoint) reaches the
//! topic's subscribers on the other hub too.

mod common;

use common::{REDIS, subscribers, unique_prefix, within};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::{
    channels::{Channel, Channels, Endpoint, HandleIn, Payload, Socket, room_name},
    hub::{Hub, HubConfig},
};
use switchboard_redis::{RedisBroker, RedisConfig};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as TMessage;

/// Joins anyone; `shout` is broadcast to the topic.
struct Room;

impl Channel for Room {
    async fn join(&self, _topic: &str, _payload: Value, _socket: &Socket) -> Result<Value, Value> {
        Ok(json!({}))
    }

    async fn handle_in(&self, event: &str, payload: Payload, socket: &Socket) -> HandleIn {
        if event == "shout" {
            socket.broadcast("shout", payload);
        }
        HandleIn::NoReply
    }
}

/// A hub on Redis under `prefix` serving `/socket/websocket`; its endpoint and address.
async fn channels_node(prefix: &str) -> (Endpoint, std::net::SocketAddr) {
    let broker = RedisBroker::connect(RedisConfig::default().url(REDIS).prefix(prefix))
        .await
        .unwrap();
    let hub = Hub::with_broker(HubConfig::default(), broker);
    subscribers(&format!("{prefix}:node:{}", hub.node()), 1).await;
    let channels = Channels::new(hub.clone()).channel("room:*", Room);
    let endpoint = channels.endpoint();
    let app: axum::Router = channels.into_router();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { switchboard::serve(listener, app, &hub).await });
    (endpoint, addr)
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Client, frame: Value) {
    ws.send(TMessage::text(frame.to_string())).await.unwrap();
}

async fn next(ws: &mut Client) -> Value {
    match within("a channel message", ws.next()).await {
        Some(Ok(TMessage::Text(text))) => serde_json::from_str(&text).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// A V2 client joined to `topic` (the join's reply read).
async fn joined(addr: std::net::SocketAddr, topic: &str) -> Client {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    send(&mut ws, json!(["1", "1", topic, "phx_join", {}])).await;
    let reply = next(&mut ws).await;
    assert_eq!(reply[3], "phx_reply");
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    ws
}

#[tokio::test]
async fn topic_broadcasts_reach_subscribers_on_the_other_hub() {
    let prefix = unique_prefix("channels");
    let (_a, a_addr) = channels_node(&prefix).await;
    let (b, b_addr) = channels_node(&prefix).await;
    let mut alice = joined(a_addr, "room:lobby").await;
    let mut bob = joined(b_addr, "room:lobby").await;
    let room = format!("{prefix}:room:{}", room_name("room:lobby"));
    subscribers(&room, 2).await;

    // From a socket on hub a, through its channel's handle_in.
    send(
        &mut alice,
        json!(["1", "2", "room:lobby", "shout", {"body": "hi from a"}]),
    )
    .await;
    for ws in [&mut alice, &mut bob] {
        let frame = next(ws).await;
        assert_eq!(
            frame,
            json!([null, null, "room:lobby", "shout", {"body": "hi from a"}])
        );
    }
    // From hub b's endpoint, outside any socket.
    b.broadcast("room:lobby", "news", json!({"n": 1}));
    for ws in [&mut alice, &mut bob] {
        let frame = next(ws).await;
        assert_eq!(frame, json!([null, null, "room:lobby", "news", {"n": 1}]));
    }
}
