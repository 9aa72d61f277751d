//! Channel topics with history (`Channels::history`) on the wire, against a client
//! speaking raw Phoenix V2 over tokio-tungstenite: the position a broadcast carries, the
//! `_position` of a join, the `stream` key of its reply, and the missed broadcasts that
//! follow it.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::{net::SocketAddr, time::Duration};
use switchboard::{
    channels::{Channel, Channels, Endpoint, HandleIn, Out, Payload, Reply, Socket},
    hub::{
        Broker, Envelope, History, Hub, HubConfig, Inbox, MemoryBroker, MemoryNetwork, Position,
        StreamError, StreamFuture, StreamRead,
    },
};
use tokio::{net::TcpStream, time::timeout};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async, tungstenite::Message as WsMessage,
};

/// How long any single step may take before the test counts as hung.
const STEP: Duration = Duration::from_secs(10);

/// Echoes its join payload in the ok reply (so that a test sees what `join` got) and
/// broadcasts what it is sent.
struct Feed;

impl Channel for Feed {
    async fn join(&self, _topic: &str, payload: Value, _socket: &Socket) -> Result<Value, Value> {
        Ok(json!({ "params": payload }))
    }

    async fn handle_in(&self, event: &str, payload: Payload, socket: &Socket) -> HandleIn {
        socket.broadcast(event, payload);
        Reply::ok(json!({})).into()
    }
}

/// `Feed`, with its `secret` event intercepted and replaced by `{"masked": true}`.
struct Masked;

impl Channel for Masked {
    async fn join(&self, topic: &str, payload: Value, socket: &Socket) -> Result<Value, Value> {
        Feed.join(topic, payload, socket).await
    }

    fn intercepts(&self) -> &'static [&'static str] {
        &["secret"]
    }

    fn handle_out(&self, _event: &str, _payload: &Payload, _socket: &Socket) -> Out {
        Out::Replace(json!({"masked": true}).into())
    }
}

struct Server {
    addr: SocketAddr,
    endpoint: Endpoint,
}

/// `feed:*` keeps the default history, `short:*` three messages, `long:*` a thousand,
/// `plain:*` none.
async fn server() -> Server {
    server_with(HubConfig::default()).await
}

async fn server_with(config: HubConfig) -> Server {
    serve_hub(Hub::new(config)).await
}

async fn serve_hub(hub: Hub) -> Server {
    let channels = Channels::new(hub.clone())
        .history("feed:*", History::default())
        .history("short:*", History::default().max_len(3))
        .history("long:*", History::default().max_len(1_000))
        .channel("feed:*", Feed)
        .channel("short:*", Feed)
        .channel("long:*", Feed)
        .channel("plain:*", Feed)
        .history("masked:*", History::default())
        .channel("masked:*", Masked);
    let endpoint = channels.endpoint();
    let app: axum::Router = channels.into_router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = switchboard::serve(listener, app, &hub).await;
    });
    Server { addr, endpoint }
}

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    async fn connect(server: &Server) -> Self {
        let url = format!("ws://{}/socket/websocket?vsn=2.0.0", server.addr);
        let (ws, _) = within("connect", connect_async(url)).await.unwrap();
        Self { ws }
    }

    async fn send(&mut self, message: Value) {
        let text = WsMessage::text(message.to_string());
        within("send", self.ws.send(text)).await.unwrap();
    }

    async fn next(&mut self) -> WsMessage {
        loop {
            match within("receive", self.ws.next()).await {
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                Some(Ok(message)) => return message,
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    async fn recv(&mut self) -> Value {
        match self.next().await {
            WsMessage::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Asserts that nothing was queued for this client before a marker broadcast to
    /// `topic` (which it must have joined): the marker is the next thing it receives.
    async fn next_is_marker(&mut self, server: &Server, topic: &str) {
        server.endpoint.broadcast(topic, "marker", json!({}));
        let next = self.recv().await;
        assert_eq!(fields(&next).get(3), Some(&json!("marker")), "{next}");
    }

    /// Joins `topic` with `payload`; returns the reply's payload (`status`,
    /// `response`, and `stream` on a topic with history).
    async fn join(&mut self, topic: &str, join_ref: &str, payload: Value) -> Value {
        self.send(json!([join_ref, join_ref, topic, "phx_join", payload]))
            .await;
        let reply = self.recv().await;
        let head = [
            json!(join_ref),
            json!(join_ref),
            json!(topic),
            json!("phx_reply"),
        ];
        assert_eq!(fields(&reply).get(..4), Some(&head[..]), "{reply}");
        reply[4].clone()
    }

    /// The next `n` broadcasts of `topic`: their payloads' `n` and their positions.
    async fn broadcasts(&mut self, topic: &str, count: usize) -> Vec<(Value, Value)> {
        let mut out = Vec::new();
        for _ in 0..count {
            let message = self.recv().await;
            let head = [Value::Null, Value::Null, json!(topic)];
            assert_eq!(fields(&message).get(..3), Some(&head[..]), "{message}");
            out.push((message[4]["n"].clone(), message[5].clone()));
        }
        out
    }
}

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn fields(message: &Value) -> &[Value] {
    message.as_array().map_or(&[], Vec::as_slice)
}

fn at(offset: u64, epoch: &Value) -> Value {
    json!({"offset": offset, "epoch": epoch})
}

/// Broadcasts `{"n": n}` for each `n` in `range` to `topic`.
async fn publish(server: &Server, topic: &str, range: std::ops::RangeInclusive<u64>) {
    for n in range {
        server.endpoint.broadcast(topic, "msg", json!({ "n": n }));
    }
}

#[tokio::test]
async fn broadcasts_on_a_topic_with_history_carry_their_position_and_others_do_not() {
    let server = server().await;
    let mut client = Client::connect(&server).await;
    let joined = client.join("feed:a", "1", json!({"user": "ann"})).await;
    assert_eq!(joined["status"], "ok");
    assert_eq!(joined["response"], json!({"params": {"user": "ann"}}));
    let stream = &joined["stream"];
    assert_eq!(stream["recovered"], false, "{joined}");
    assert_eq!(stream["offset"], 0, "{joined}");
    let epoch = stream["epoch"].clone();
    assert!(
        epoch
            .as_str()
            .is_some_and(|e| e.len() == 16 && e.chars().all(|c| c.is_ascii_hexdigit())),
        "{epoch}"
    );
    publish(&server, "feed:a", 1..=2).await;
    assert_eq!(
        client.broadcasts("feed:a", 2).await,
        vec![(json!(1), at(1, &epoch)), (json!(2), at(2, &epoch))]
    );
    // Pushed by a client, through the channel: the same.
    client
        .send(json!(["1", "2", "feed:a", "msg", {"n": 3}]))
        .await;
    let mut got = [client.recv().await, client.recv().await];
    got.sort_by_key(|m| m[3] == "phx_reply");
    assert_eq!(
        got[0],
        json!([null, null, "feed:a", "msg", {"n": 3}, at(3, &epoch)])
    );

    let plain = client.join("plain:a", "3", json!({"_position": 5})).await;
    assert_eq!(plain.get("stream"), None, "{plain}");
    // Not a topic with history: the payload is the channel's, untouched.
    assert_eq!(plain["response"], json!({"params": {"_position": 5}}));
    publish(&server, "plain:a", 1..=1).await;
    assert_eq!(
        client.recv().await,
        json!([null, null, "plain:a", "msg", {"n": 1}])
    );
}

#[tokio::test]
async fn a_rejoin_from_a_position_gets_the_missed_broadcasts_after_the_reply_then_live_ones() {
    let server = server().await;
    let mut client = Client::connect(&server).await;
    let joined = client.join("feed:r", "1", json!({"user": "ann"})).await;
    let epoch = joined["stream"]["epoch"].clone();
    // Stays, so that the test knows when the engine has every broadcast.
    let mut witness = Client::connect(&server).await;
    witness.join("feed:r", "w", json!({})).await;
    publish(&server, "feed:r", 1..=3).await;
    client.broadcasts("feed:r", 3).await;
    drop(client);

    publish(&server, "feed:r", 4..=60).await;
    witness.broadcasts("feed:r", 60).await;
    let mut back = Client::connect(&server).await;
    let payload = json!({"user": "ann", "_position": at(3, &epoch)});
    let joined = back.join("feed:r", "9", payload).await;
    assert_eq!(
        joined["response"],
        json!({"params": {"user": "ann"}}),
        "_position is taken out"
    );
    assert_eq!(
        joined["stream"],
        json!({"recovered": true, "offset": 60, "epoch": epoch})
    );
    let missed = back.broadcasts("feed:r", 57).await;
    let expected: Vec<(Value, Value)> = (4..=60).map(|n| (json!(n), at(n, &epoch))).collect();
    assert_eq!(missed, expected, "every missed broadcast once, in order");
    publish(&server, "feed:r", 61..=61).await;
    assert_eq!(
        back.broadcasts("feed:r", 1).await,
        vec![(json!(61), at(61, &epoch))]
    );
    back.next_is_marker(&server, "feed:r").await;
}

#[tokio::test]
async fn not_recovered_when_trimmed_from_another_epoch_or_past_the_top() {
    let server = server().await;
    let mut client = Client::connect(&server).await;
    let epoch = client.join("short:t", "1", json!({})).await["stream"]["epoch"].clone();
    publish(&server, "short:t", 1..=10).await;
    client.broadcasts("short:t", 10).await;

    let cases = [
        ("trimmed: max_len 3 keeps 8 to 10", at(2, &epoch)),
        ("another epoch", at(9, &json!("0123456789abcdef"))),
        ("past the newest", at(11, &epoch)),
    ];
    for (i, (case, position)) in cases.into_iter().enumerate() {
        let mut other = Client::connect(&server).await;
        // The marker goes there: on short:t it would take an offset and trim.
        other.join("plain:t", "p", json!({})).await;
        let joined = other
            .join("short:t", &format!("j{i}"), json!({"_position": position}))
            .await;
        assert_eq!(
            joined["stream"],
            json!({"recovered": false, "offset": 10, "epoch": epoch}),
            "{case}"
        );
        other.next_is_marker(&server, "plain:t").await;
    }
    // The edge of what is kept recovers: 7 was the last trimmed, so 8 to 10 follow.
    let mut edge = Client::connect(&server).await;
    let joined = edge
        .join("short:t", "e", json!({"_position": at(7, &epoch)}))
        .await;
    assert_eq!(joined["stream"]["recovered"], true, "{joined}");
    let missed = edge.broadcasts("short:t", 3).await;
    assert_eq!(
        missed.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        [8, 9, 10]
    );
}

#[tokio::test]
async fn a_malformed_position_refuses_the_join_with_a_reason() {
    let server = server().await;
    let mut client = Client::connect(&server).await;
    let bad = [
        json!("3"),
        json!({"offset": -1, "epoch": "ab"}),
        json!({"offset": 1, "epoch": "not hex"}),
        json!({"offset": 1}),
    ];
    for (i, position) in bad.into_iter().enumerate() {
        let reply = client
            .join("feed:bad", &i.to_string(), json!({"_position": position}))
            .await;
        assert_eq!(reply["status"], "error", "{reply}");
        let reason = reply["response"]["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("invalid _position"), "{reply}");
    }
    // The socket goes on: a good join after the bad ones.
    let joined = client
        .join("feed:bad", "ok", json!({"_position": null}))
        .await;
    assert_eq!(joined["status"], "ok", "{joined}");
}

#[tokio::test]
async fn binary_broadcasts_on_a_topic_with_history_are_live_only_and_never_replayed() {
    let server = server().await;
    let mut client = Client::connect(&server).await;
    let epoch = client.join("feed:b", "1", json!({})).await["stream"]["epoch"].clone();
    publish(&server, "feed:b", 1..=1).await;
    server.endpoint.broadcast("feed:b", "img", vec![1u8, 2, 3]);
    publish(&server, "feed:b", 2..=2).await;
    server.endpoint.broadcast("feed:b", "img", vec![4u8]);
    assert_eq!(
        client.broadcasts("feed:b", 1).await,
        vec![(json!(1), at(1, &epoch))]
    );
    // Kind 2, topic and event lengths, topic, event, data: as any binary broadcast.
    assert_eq!(
        client.next().await,
        WsMessage::binary(b"\x02\x06\x03feed:bimg\x01\x02\x03".to_vec())
    );
    assert_eq!(
        client.broadcasts("feed:b", 1).await,
        vec![(json!(2), at(2, &epoch))],
        "the binary one took no offset"
    );
    assert_eq!(
        client.next().await,
        WsMessage::binary(b"\x02\x06\x03feed:bimg\x04".to_vec())
    );

    // A recovery from before them gets the JSON ones only: the binary ones, which no
    // position could mark as delivered, are not replayed.
    let mut back = Client::connect(&server).await;
    let joined = back
        .join("feed:b", "2", json!({"_position": at(0, &epoch)}))
        .await;
    assert_eq!(joined["stream"]["recovered"], true, "{joined}");
    assert_eq!(
        back.broadcasts("feed:b", 2).await,
        vec![(json!(1), at(1, &epoch)), (json!(2), at(2, &epoch))]
    );
    back.next_is_marker(&server, "feed:b").await;
}

#[tokio::test]
async fn a_rejoin_while_broadcasts_flow_gets_each_once_in_order_reply_first() {
    let server = server().await;
    let mut first = Client::connect(&server).await;
    let epoch = first.join("long:c", "1", json!({})).await["stream"]["epoch"].clone();
    publish(&server, "long:c", 1..=10).await;
    first.broadcasts("long:c", 10).await;
    drop(first);

    // Broadcasts go on, from another task, while the client comes back from 10 (all
    // of them kept, so that it recovers however far the task got).
    let endpoint = server.endpoint.clone();
    let publisher = tokio::spawn(async move {
        for n in 11..=400u64 {
            endpoint.broadcast("long:c", "msg", json!({ "n": n }));
            if n % 20 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut back = Client::connect(&server).await;
    let joined = back
        .join("long:c", "2", json!({"_position": at(10, &epoch)}))
        .await;
    assert_eq!(joined["stream"]["recovered"], true, "{joined}");
    publisher.await.unwrap();
    let got = back.broadcasts("long:c", 390).await;
    let expected: Vec<(Value, Value)> = (11..=400).map(|n| (json!(n), at(n, &epoch))).collect();
    assert_eq!(
        got, expected,
        "the missed ones, then the live ones: no gap, no repeat"
    );
    back.next_is_marker(&server, "long:c").await;
}

#[tokio::test]
async fn a_history_topic_past_the_rooms_limit_is_refused_like_any_topic() {
    let server = server_with(HubConfig::default().max_rooms_per_connection(1)).await;
    let mut client = Client::connect(&server).await;
    assert_eq!(
        client.join("feed:one", "1", json!({})).await["status"],
        "ok"
    );
    let refused = client.join("feed:two", "2", json!({})).await;
    assert_eq!(refused["status"], "error", "{refused}");
    assert_eq!(refused["response"], json!({"reason": "too many rooms"}));
    assert_eq!(refused.get("stream"), None);
    // Refused means not subscribed: its broadcasts do not come.
    publish(&server, "feed:two", 1..=1).await;
    client.next_is_marker(&server, "feed:one").await;
}

#[tokio::test]
async fn the_hubs_most_specific_rule_decides_whether_a_topic_recovers() {
    // `feed:*` is a channels topic with history, but the hub's own exact rule for one
    // of its rooms, without framing, wins there: its broadcasts carry no position, so
    // its joins neither take a `_position` nor say where the stream is.
    let config = HubConfig::default().history("phx:feed:raw", History::default());
    let server = server_with(config).await;
    let mut client = Client::connect(&server).await;
    let joined = client.join("feed:raw", "1", json!({"_position": 5})).await;
    assert_eq!(joined["status"], "ok", "{joined}");
    assert_eq!(joined.get("stream"), None, "{joined}");
    assert_eq!(joined["response"], json!({"params": {"_position": 5}}));
    publish(&server, "feed:raw", 1..=1).await;
    assert_eq!(
        client.recv().await,
        json!([null, null, "feed:raw", "msg", {"n": 1}])
    );
}

#[tokio::test]
async fn intercepted_events_on_a_topic_with_history_are_live_only_and_take_no_offset() {
    let server = server().await;
    let mut client = Client::connect(&server).await;
    let epoch = client.join("masked:i", "1", json!({})).await["stream"]["epoch"].clone();
    publish(&server, "masked:i", 1..=1).await;
    server
        .endpoint
        .broadcast("masked:i", "secret", json!({"n": "hidden"}));
    publish(&server, "masked:i", 2..=2).await;
    assert_eq!(
        client.broadcasts("masked:i", 1).await,
        vec![(json!(1), at(1, &epoch))]
    );
    // A push to this socket (its join_ref), with no position.
    assert_eq!(
        client.recv().await,
        json!(["1", null, "masked:i", "secret", {"masked": true}])
    );
    assert_eq!(
        client.broadcasts("masked:i", 1).await,
        vec![(json!(2), at(2, &epoch))],
        "the intercepted one took no offset"
    );
    let mut back = Client::connect(&server).await;
    let joined = back
        .join("masked:i", "2", json!({"_position": at(0, &epoch)}))
        .await;
    assert_eq!(joined["stream"]["recovered"], true, "{joined}");
    assert_eq!(back.broadcasts("masked:i", 2).await.len(), 2);
    back.next_is_marker(&server, "masked:i").await;
}

/// A memory broker whose stream reads fail, as an engine that cannot be reached.
struct Unreadable(MemoryBroker);

impl Broker for Unreadable {
    fn start(&self, inbox: Inbox) {
        self.0.start(inbox);
    }
    fn publish(&self, envelope: Envelope) {
        self.0.publish(envelope);
    }
    fn subscribe(&self, room: &str) {
        self.0.subscribe(room);
    }
    fn unsubscribe(&self, room: &str) {
        self.0.unsubscribe(room);
    }
    fn publish_stream(&self, envelope: Envelope, history: History) -> StreamFuture<Position> {
        self.0.publish_stream(envelope, history)
    }
    fn read_stream(&self, _room: &str, _after: u64, _history: History) -> StreamFuture<StreamRead> {
        Box::pin(std::future::ready(Err(StreamError::Unavailable(
            "unreachable in this test".into(),
        ))))
    }
}

#[tokio::test]
async fn a_join_whose_stream_cannot_be_read_says_so_without_a_position() {
    let network = MemoryNetwork::new();
    let broker = Unreadable(network.broker());
    let server = serve_hub(Hub::with_broker(HubConfig::default(), broker)).await;
    let mut client = Client::connect(&server).await;
    let joined = client.join("feed:u", "1", json!({})).await;
    assert_eq!(joined["status"], "ok", "{joined}");
    assert_eq!(
        joined["stream"],
        json!({"recovered": false, "epoch": null}),
        "no made-up position"
    );
}
