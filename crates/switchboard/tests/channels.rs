//! `switchboard::channels` against a client speaking raw Phoenix V2 JSON (and binary)
//! over tokio-tungstenite: every reply, push and close is checked on the wire.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};
use switchboard::{
    CloseCode as SbCloseCode,
    channels::{
        Channel, Channels, ChannelsConfig, EncodeError, HandleIn, Out, Payload, PushError, Refused,
        Reply, Socket, TerminateReason, room_name,
    },
    hub::{Hub, HubConfig},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
    time::timeout,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{
        self, Message as WsMessage, client::IntoClientRequest, http::HeaderValue,
        protocol::frame::coding::CloseCode,
    },
};

/// How long any single step may take before the test counts as hung.
const STEP: Duration = Duration::from_secs(10);

/// How long a `brief…` token lives.
const BRIEF: Duration = Duration::from_millis(300);

#[derive(Clone, Debug)]
struct User(String);

#[derive(Clone, Debug)]
struct Token(String);

/// The test channel: every behaviour a test needs, keyed by event.
struct Room {
    terminated: UnboundedSender<(String, TerminateReason)>,
}

impl Channel for Room {
    async fn join(&self, topic: &str, payload: Value, socket: &Socket) -> Result<Value, Value> {
        if topic == "room:crash" {
            panic!("join crashes on purpose");
        }
        if topic == "room:flood" {
            // Pushes `pushes` messages of `size` bytes before the ok reply; answers
            // how many were refused.
            // Sends `queued` bytes straight on the connection first.
            let number = |key| payload.get(key).and_then(Value::as_u64).unwrap_or(0);
            let queued = vec![0; number("queued") as usize];
            if !queued.is_empty() {
                socket.connection().try_send(queued).unwrap();
            }
            let body = "x".repeat(number("size") as usize);
            let payload = Payload::Json(json!({ "body": body }));
            let refused = (0..number("pushes"))
                .filter(|_| match socket.try_push("flood", payload.clone()) {
                    Ok(()) => false,
                    // Handed back, to be retried.
                    Err(PushError::Dropped(back)) => back == payload,
                    Err(other) => panic!("{other}"),
                })
                .count();
            return Ok(json!({ "refused": refused }));
        }
        let Some(user) = payload.get("user").and_then(Value::as_str) else {
            return Err(json!({"reason": "user required"}));
        };
        socket.assign(User(user.to_owned()));
        let presence = socket.presence();
        presence
            .track(socket, user, json!({"device": payload.get("device")}))
            .map_err(|e| json!({"reason": e.to_string()}))?;
        socket.push("presence_state", presence.list(topic));
        Ok(json!({"topic": topic, "token": socket.assigned::<Token>().map(|t| t.0)}))
    }

    async fn handle_in(&self, event: &str, payload: Payload, socket: &Socket) -> HandleIn {
        match event {
            "ping" => Reply::ok(payload).into(),
            "shout" => {
                socket.broadcast("shout", payload);
                HandleIn::NoReply
            }
            "shout_from" => {
                socket.broadcast_from("shout", payload);
                HandleIn::NoReply
            }
            "secret" => {
                socket.broadcast("secret", payload);
                HandleIn::NoReply
            }
            "push_me" => {
                socket.push("pushed", payload);
                HandleIn::NoReply
            }
            "stop" => HandleIn::Stop(Some(Reply::ok(json!({"bye": true})))),
            "crash" => panic!("handle_in crashes on purpose"),
            _ => Reply::error(json!({"reason": "unknown event"})).into(),
        }
    }

    fn intercepts(&self) -> &[&str] {
        &["secret"]
    }

    fn handle_out(&self, _event: &str, _payload: &Payload, socket: &Socket) -> Out {
        match socket.assigned::<User>() {
            Some(User(name)) if name == "eve" => Out::Drop,
            Some(User(name)) if name == "bob" => Out::Replace(json!({"redacted": true}).into()),
            Some(User(name)) if name == "mallory" => panic!("handle_out crashes on purpose"),
            _ => Out::Deliver,
        }
    }

    async fn terminate(&self, reason: TerminateReason, socket: &Socket) {
        let _ = self.terminated.send((socket.topic().to_owned(), reason));
    }
}

/// `user:{id}`: only the user whose token is `id` may join.
struct UserChannel;

impl Channel for UserChannel {
    async fn join(&self, _topic: &str, _payload: Value, socket: &Socket) -> Result<Value, Value> {
        match (socket.param("id"), socket.assigned::<Token>()) {
            (Some(id), Some(Token(token))) if id == token => Ok(json!({"id": id})),
            _ => Err(json!({"reason": "unauthorized"})),
        }
    }
}

struct Server {
    addr: SocketAddr,
    hub: Hub,
    terminated: UnboundedReceiver<(String, TerminateReason)>,
}

async fn server_with(hub_config: HubConfig, config: ChannelsConfig) -> Server {
    let hub = Hub::new(hub_config);
    let (terminated_tx, terminated) = unbounded_channel();
    let channels = Channels::new(hub.clone())
        .config(config)
        .connect(|info| async move {
            // phoenix.js's `authToken`, else the `token` param.
            let token = info.auth_token().or_else(|| info.param("token"));
            match token {
                Some("bad") => Err(Refused::new("bad token")),
                Some("banned") => Err(Refused::new("banned").code(SbCloseCode::FORBIDDEN)),
                Some("stale") => Err(Refused::expired()),
                Some(token) => {
                    if token.starts_with("brief") {
                        info.expires_at(SystemTime::now() + BRIEF);
                    }
                    info.assign(Token(token.to_owned()));
                    Ok(())
                }
                None => Ok(()),
            }
        })
        .channel(
            "room:*",
            Room {
                terminated: terminated_tx,
            },
        )
        .channel("user:{id}", UserChannel);
    let app: axum::Router = channels.into_router();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve_hub = hub.clone();
    tokio::spawn(async move {
        let _ = switchboard::serve_with_shutdown(
            listener,
            app,
            &serve_hub,
            std::future::pending::<()>(),
        )
        .await;
    });
    Server {
        addr,
        hub,
        terminated,
    }
}

async fn server() -> Server {
    server_with(HubConfig::default(), ChannelsConfig::default()).await
}

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    async fn connect(server: &Server) -> Self {
        Self::connect_query(server, "vsn=2.0.0").await.unwrap()
    }

    async fn connect_query(server: &Server, query: &str) -> Result<Self, tungstenite::Error> {
        let url = format!("ws://{}/socket/websocket?{query}", server.addr);
        let (ws, _) = within("connect", connect_async(url)).await?;
        Ok(Self { ws })
    }

    /// Connects as phoenix.js does with `authToken`: the subprotocols `phoenix` and
    /// `base64url.bearer.phx.{token in base64, unpadded}`; returns the protocol the
    /// server selected too.
    async fn connect_with_token(server: &Server, protocols: &str) -> (Self, Option<String>) {
        let url = format!("ws://{}/socket/websocket?vsn=2.0.0", server.addr);
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(protocols).unwrap(),
        );
        let (ws, response) = within("connect", tokio_tungstenite::connect_async(request))
            .await
            .unwrap();
        let selected = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        (Self { ws }, selected)
    }

    async fn send(&mut self, message: Value) {
        self.send_raw(WsMessage::text(message.to_string())).await;
    }

    async fn send_raw(&mut self, message: WsMessage) {
        within("send", self.ws.send(message)).await.unwrap();
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

    async fn recv_binary(&mut self) -> Vec<u8> {
        match self.next().await {
            WsMessage::Binary(data) => data.to_vec(),
            other => panic!("expected a binary message, got {other:?}"),
        }
    }

    /// Asserts that nothing arrives for a while.
    async fn silent(&mut self) {
        let next = timeout(Duration::from_millis(200), self.ws.next()).await;
        assert!(next.is_err(), "unexpected message: {next:?}");
    }

    async fn closed_with(&mut self) -> (CloseCode, String) {
        match self.next().await {
            WsMessage::Close(Some(frame)) => (frame.code, frame.reason.to_string()),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Sends a Phoenix heartbeat with `msg_ref` and asserts its ok reply.
    async fn heartbeat(&mut self, msg_ref: &str) {
        self.send(json!([null, msg_ref, "phoenix", "heartbeat", {}]))
            .await;
        assert_eq!(
            self.recv().await,
            reply(None, msg_ref, "phoenix", "ok", json!({}))
        );
    }

    /// Joins `topic` as `user`; returns the ok reply's response and the presence_state.
    async fn join(&mut self, topic: &str, join_ref: &str, user: &str) -> (Value, Value) {
        self.send(json!([join_ref, join_ref, topic, "phx_join", {"user": user}]))
            .await;
        let reply = self.recv().await;
        assert_eq!(reply[0], join_ref, "{reply}");
        assert_eq!(reply[1], join_ref);
        assert_eq!(reply[2], topic);
        assert_eq!(reply[3], "phx_reply");
        assert_eq!(reply[4]["status"], "ok", "{reply}");
        let state = self.recv().await;
        assert_eq!(
            state.as_array().map(|a| a[..4].to_vec()),
            Some(vec![
                json!(join_ref),
                json!(null),
                json!(topic),
                json!("presence_state")
            ]),
            "the held push follows the reply: {state}"
        );
        // The own join diff, held during the join, arrives once subscribed.
        let diff = self.recv().await;
        assert_eq!(diff[3], "presence_diff", "{diff}");
        assert!(diff[4]["joins"].get(user).is_some(), "{diff}");
        (reply[4]["response"].clone(), state[4].clone())
    }
}

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn reply(
    join_ref: Option<&str>,
    msg_ref: &str,
    topic: &str,
    status: &str,
    response: Value,
) -> Value {
    json!([join_ref, msg_ref, topic, "phx_reply", {"status": status, "response": response}])
}

#[tokio::test]
async fn heartbeat_is_answered_ok() {
    let server = server().await;
    let mut client = Client::connect(&server).await;
    client.heartbeat("1").await;
}

#[tokio::test]
async fn join_reply_echoes_refs_and_holds_pushes_until_after_it() {
    let server = server().await;
    let mut client = Client::connect_query(&server, "vsn=2.0.0&token=t1")
        .await
        .unwrap();
    let (response, state) = client.join("room:lobby", "3", "ann").await;
    assert_eq!(response, json!({"topic": "room:lobby", "token": "t1"}));
    let metas = &state["ann"]["metas"];
    assert_eq!(metas.as_array().map(Vec::len), Some(1), "{state}");
    assert!(metas[0]["phx_ref"].is_string());
    assert_eq!(server.hub.room_size(&room_name("room:lobby")), 1);

    client
        .send(json!(["3", "4", "room:lobby", "ping", {"n": 1}]))
        .await;
    assert_eq!(
        client.recv().await,
        reply(Some("3"), "4", "room:lobby", "ok", json!({"n": 1}))
    );
    client
        .send(json!(["3", "5", "room:lobby", "push_me", {"n": 2}]))
        .await;
    assert_eq!(
        client.recv().await,
        json!(["3", null, "room:lobby", "pushed", {"n": 2}])
    );
    client
        .send(json!(["3", "6", "room:lobby", "nope", {}]))
        .await;
    assert_eq!(
        client.recv().await,
        reply(
            Some("3"),
            "6",
            "room:lobby",
            "error",
            json!({"reason": "unknown event"})
        )
    );
}

#[tokio::test]
async fn refused_and_unmatched_joins() {
    let server = server().await;
    let mut client = Client::connect_query(&server, "vsn=2.0.0&token=42")
        .await
        .unwrap();
    // The channel refuses: the reply carries the join's refs and the reason.
    client
        .send(json!(["1", "1", "room:a", "phx_join", {}]))
        .await;
    assert_eq!(
        client.recv().await,
        reply(
            Some("1"),
            "1",
            "room:a",
            "error",
            json!({"reason": "user required"})
        )
    );
    // No channel serves the topic: as Phoenix, no join_ref.
    client
        .send(json!(["2", "2", "nowhere", "phx_join", {}]))
        .await;
    assert_eq!(
        client.recv().await,
        reply(
            None,
            "2",
            "nowhere",
            "error",
            json!({"reason": "unmatched topic"})
        )
    );
    // Topic parameters against the connect assigns.
    client
        .send(json!(["3", "3", "user:42", "phx_join", {}]))
        .await;
    assert_eq!(
        client.recv().await,
        reply(Some("3"), "3", "user:42", "ok", json!({"id": "42"}))
    );
    client
        .send(json!(["4", "4", "user:7", "phx_join", {}]))
        .await;
    assert_eq!(
        client.recv().await,
        reply(
            Some("4"),
            "4",
            "user:7",
            "error",
            json!({"reason": "unauthorized"})
        )
    );
    // The refused join left nothing behind.
    assert_eq!(server.hub.room_size(&room_name("room:a")), 0);
    assert_eq!(server.hub.room_size(&room_name("user:42")), 1);
}

#[tokio::test]
async fn push_before_join_gets_an_error_reply() {
    let server = server().await;
    let mut client = Client::connect(&server).await;
    client.send(json!(["1", "2", "room:a", "ping", {}])).await;
    assert_eq!(
        client.recv().await,
        reply(
            None,
            "2",
            "room:a",
            "error",
            json!({"reason": "unmatched topic"})
        )
    );
    // A leave of a topic not joined is answered ok, as Phoenix does.
    client
        .send(json!(["1", "3", "room:a", "phx_leave", {}]))
        .await;
    assert_eq!(
        client.recv().await,
        reply(Some("1"), "3", "room:a", "ok", json!({}))
    );
}

#[tokio::test]
async fn broadcasts_reach_every_subscriber_and_broadcast_from_skips_the_sender() {
    let server = server().await;
    let mut ann = Client::connect(&server).await;
    let mut bob = Client::connect(&server).await;
    let mut other = Client::connect(&server).await;
    ann.join("room:a", "1", "ann").await;
    bob.join("room:a", "1", "bob").await;
    other.join("room:b", "1", "cid").await;
    // ann sees bob's arrival.
    let diff = ann.recv().await;
    assert_eq!(diff[3], "presence_diff");

    ann.send(json!(["1", "2", "room:a", "shout", {"hi": 1}]))
        .await;
    let expected = json!([null, null, "room:a", "shout", {"hi": 1}]);
    assert_eq!(ann.recv().await, expected);
    assert_eq!(bob.recv().await, expected);

    ann.send(json!(["1", "3", "room:a", "shout_from", {"hi": 2}]))
        .await;
    assert_eq!(
        bob.recv().await,
        json!([null, null, "room:a", "shout", {"hi": 2}])
    );
    ann.silent().await;
    other.silent().await;
}

#[tokio::test]
async fn intercepted_events_are_filtered_per_recipient() {
    let server = server().await;
    let mut ann = Client::connect(&server).await;
    let mut bob = Client::connect(&server).await;
    let mut eve = Client::connect(&server).await;
    ann.join("room:s", "1", "ann").await;
    bob.join("room:s", "2", "bob").await;
    eve.join("room:s", "3", "eve").await;
    // Drain the presence diffs of the later joins.
    for _ in 0..2 {
        assert_eq!(ann.recv().await[3], "presence_diff");
    }
    assert_eq!(bob.recv().await[3], "presence_diff");

    ann.send(json!(["1", "9", "room:s", "secret", {"code": 7}]))
        .await;
    assert_eq!(
        ann.recv().await,
        json!([null, null, "room:s", "secret", {"code": 7}])
    );
    // Replaced: a push to bob's join.
    assert_eq!(
        bob.recv().await,
        json!(["2", null, "room:s", "secret", {"redacted": true}])
    );
    eve.silent().await;
}

/// `handle_out` runs on the broadcaster's task: a panic there must neither reach the
/// broadcaster nor lose the message silently. The socket it was for is closed with 1011
/// (phoenix.js reconnects and rejoins); the other subscribers get the message.
#[tokio::test]
async fn a_panicking_handle_out_closes_its_socket_with_1011() {
    let server = server().await;
    let mut ann = Client::connect(&server).await;
    let mut mallory = Client::connect(&server).await;
    ann.join("room:s", "1", "ann").await;
    mallory.join("room:s", "2", "mallory").await;
    assert_eq!(ann.recv().await[3], "presence_diff");

    ann.send(json!(["1", "9", "room:s", "secret", {"code": 7}]))
        .await;
    assert_eq!(
        ann.recv().await,
        json!([null, null, "room:s", "secret", {"code": 7}])
    );
    assert_eq!(mallory.closed_with().await.0, CloseCode::Error);
}

#[tokio::test]
async fn duplicate_join_closes_the_old_channel_first() {
    let mut server = server().await;
    let mut client = Client::connect(&server).await;
    client.join("room:a", "1", "ann").await;
    client
        .send(json!(["5", "5", "room:a", "phx_join", {"user": "ann"}]))
        .await;
    assert_eq!(
        client.recv().await,
        json!(["1", "1", "room:a", "phx_close", {}])
    );
    // The old presence leaves (the socket was unsubscribed, so it is not told), then
    // the new join is answered.
    assert_eq!(
        client.recv().await,
        reply(
            Some("5"),
            "5",
            "room:a",
            "ok",
            json!({"topic": "room:a", "token": null})
        )
    );
    assert_eq!(
        server.terminated.recv().await,
        Some(("room:a".to_owned(), TerminateReason::DuplicateJoin))
    );
    assert_eq!(server.hub.room_size(&room_name("room:a")), 1);
}

#[tokio::test]
async fn leave_replies_then_closes_and_later_pushes_are_unmatched() {
    let mut server = server().await;
    let mut client = Client::connect(&server).await;
    client.join("room:a", "1", "ann").await;
    client
        .send(json!(["1", "2", "room:a", "phx_leave", {}]))
        .await;
    assert_eq!(
        client.recv().await,
        reply(Some("1"), "2", "room:a", "ok", json!({}))
    );
    assert_eq!(
        client.recv().await,
        json!(["1", "1", "room:a", "phx_close", {}])
    );
    assert_eq!(
        server.terminated.recv().await,
        Some(("room:a".to_owned(), TerminateReason::Left))
    );
    client.send(json!(["1", "3", "room:a", "ping", {}])).await;
    assert_eq!(
        client.recv().await,
        reply(
            None,
            "3",
            "room:a",
            "error",
            json!({"reason": "unmatched topic"})
        )
    );
    assert_eq!(server.hub.room_size(&room_name("room:a")), 0);
}

#[tokio::test]
async fn stop_replies_then_closes() {
    let mut server = server().await;
    let mut client = Client::connect(&server).await;
    client.join("room:a", "1", "ann").await;
    client.send(json!(["1", "2", "room:a", "stop", {}])).await;
    assert_eq!(
        client.recv().await,
        reply(Some("1"), "2", "room:a", "ok", json!({"bye": true}))
    );
    assert_eq!(
        client.recv().await,
        json!(["1", "1", "room:a", "phx_close", {}])
    );
    assert_eq!(
        server.terminated.recv().await,
        Some(("room:a".to_owned(), TerminateReason::Stopped))
    );
}

#[tokio::test]
async fn a_crashing_channel_errors_alone() {
    let mut server = server().await;
    let mut client = Client::connect(&server).await;
    let mut bystander = Client::connect(&server).await;
    client.join("room:a", "1", "ann").await;
    client.join("room:b", "2", "ann").await;
    bystander.join("room:a", "1", "bob").await;
    assert_eq!(client.recv().await[3], "presence_diff");

    client.send(json!(["1", "3", "room:a", "crash", {}])).await;
    assert_eq!(
        client.recv().await,
        json!(["1", "1", "room:a", "phx_error", {}])
    );
    assert_eq!(
        server.terminated.recv().await,
        Some(("room:a".to_owned(), TerminateReason::Crashed))
    );
    // The bystander sees ann leave; its socket and ann's other channel go on.
    let diff = bystander.recv().await;
    assert!(diff[4]["leaves"].get("ann").is_some(), "{diff}");
    client.send(json!(["2", "4", "room:b", "ping", {}])).await;
    assert_eq!(
        client.recv().await,
        reply(Some("2"), "4", "room:b", "ok", json!({}))
    );
    bystander
        .send(json!(["1", "2", "room:a", "ping", {}]))
        .await;
    assert_eq!(
        bystander.recv().await,
        reply(Some("1"), "2", "room:a", "ok", json!({}))
    );
    // A join that panics is refused as Phoenix refuses it.
    client
        .send(json!(["5", "5", "room:crash", "phx_join", {"user": "ann"}]))
        .await;
    assert_eq!(
        client.recv().await,
        reply(
            Some("5"),
            "5",
            "room:crash",
            "error",
            json!({"reason": "join crashed"})
        )
    );
}

#[tokio::test]
async fn presence_state_and_diffs_with_two_sockets_per_key() {
    let server = server().await;
    let mut watcher = Client::connect(&server).await;
    watcher.join("room:p", "1", "watcher").await;
    let mut phone = Client::connect(&server).await;
    let mut laptop = Client::connect(&server).await;
    phone.join("room:p", "1", "ann").await;
    let diff = watcher.recv().await;
    assert_eq!(diff[3], "presence_diff");
    assert_eq!(diff[4]["leaves"], json!({}));
    let phone_ref = diff[4]["joins"]["ann"]["metas"][0]["phx_ref"].clone();

    let (_, state) = laptop.join("room:p", "1", "ann").await;
    let metas = state["ann"]["metas"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(metas.len(), 2, "two sockets, one key: {state}");
    assert!(state.get("watcher").is_some());
    let diff = watcher.recv().await;
    let laptop_ref = diff[4]["joins"]["ann"]["metas"][0]["phx_ref"].clone();
    assert_ne!(phone_ref, laptop_ref);
    assert_eq!(
        phone.recv().await,
        diff,
        "one encoding for every subscriber"
    );

    // Closing the phone leaves its meta only.
    drop(phone);
    let diff = watcher.recv().await;
    assert_eq!(
        diff,
        json!([null, null, "room:p", "presence_diff", {
            "joins": {},
            "leaves": {"ann": {"metas": [{"device": null, "phx_ref": phone_ref}]}}
        }])
    );
    let state = server_presence(&server).await;
    assert_eq!(state["ann"]["metas"].as_array().map(Vec::len), Some(1));
}

/// The presence list as seen by a fresh joiner.
async fn server_presence(server: &Server) -> Value {
    let mut client = Client::connect(server).await;
    let (_, state) = client.join("room:p", "9", "probe").await;
    state
}

#[tokio::test]
async fn binary_push_gets_a_binary_reply_and_binary_broadcasts() {
    let server = server().await;
    let mut client = Client::connect(&server).await;
    client.join("room:bin", "12", "ann").await;
    // serializer.js binaryEncode: kind 0, sizes of join_ref, ref, topic, event.
    let mut push = vec![0u8, 2, 3, 8, 4];
    push.extend_from_slice(b"12123room:binping");
    push.extend_from_slice(&[0, 1, 2, 255]);
    client.send_raw(WsMessage::binary(push)).await;
    let mut expected = vec![1u8, 2, 3, 8, 2];
    expected.extend_from_slice(b"12123room:binok");
    expected.extend_from_slice(&[0, 1, 2, 255]);
    assert_eq!(client.recv_binary().await, expected);

    let mut shout = vec![0u8, 2, 1, 8, 5];
    shout.extend_from_slice(b"127room:binshout");
    shout.extend_from_slice(b"raw");
    client.send_raw(WsMessage::binary(shout)).await;
    let mut expected = vec![2u8, 8, 5];
    expected.extend_from_slice(b"room:binshoutraw");
    assert_eq!(client.recv_binary().await, expected);
}

#[tokio::test]
async fn malformed_messages_get_an_error_reply_or_a_close_and_spare_other_sockets() {
    let server = server().await;
    let mut bystander = Client::connect(&server).await;
    bystander.join("room:a", "1", "bob").await;

    let mut client = Client::connect(&server).await;
    // Readable ref and topic: an error reply.
    client.send(json!(["1", "2", "room:a", 5, {}])).await;
    assert_eq!(
        client.recv().await,
        reply(
            Some("1"),
            "2",
            "room:a",
            "error",
            json!({"reason": "malformed message: event must be a string"})
        )
    );
    client.send(json!(["1", "3", "room:a"])).await;
    let answer = client.recv().await;
    assert_eq!(answer[4]["status"], "error");
    // Unreadable: a close with the reason.
    client.send_raw(WsMessage::text("{not json")).await;
    let (code, reason) = client.closed_with().await;
    assert_eq!(code, CloseCode::Policy);
    assert!(
        reason.starts_with("malformed message: invalid json"),
        "{reason}"
    );

    let mut client = Client::connect(&server).await;
    client.send_raw(WsMessage::binary(vec![9u8, 1, 2])).await;
    let (code, reason) = client.closed_with().await;
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("kind 9"), "{reason}");

    let mut client = Client::connect(&server).await;
    client
        .send_raw(WsMessage::binary(vec![0u8, 200, 0, 0, 0]))
        .await;
    let (code, _) = client.closed_with().await;
    assert_eq!(code, CloseCode::Policy);

    bystander
        .send(json!(["1", "2", "room:a", "ping", {}]))
        .await;
    assert_eq!(
        bystander.recv().await,
        reply(Some("1"), "2", "room:a", "ok", json!({}))
    );
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let config = HubConfig::default().max_message_size(1024);
    let server = server_with(config, ChannelsConfig::default()).await;
    let mut client = Client::connect(&server).await;
    client.join("room:a", "1", "ann").await;
    let big = "x".repeat(2048);
    client
        .send(json!(["1", "2", "room:a", "ping", {"big": big}]))
        .await;
    let (code, _) = client.closed_with().await;
    assert_eq!(code, CloseCode::Size);
}

#[tokio::test]
async fn joins_per_socket_are_limited() {
    let config = ChannelsConfig::default().max_channels(2);
    let server = server_with(HubConfig::default(), config).await;
    let mut client = Client::connect(&server).await;
    client.join("room:a", "1", "ann").await;
    client.join("room:b", "2", "ann").await;
    client
        .send(json!(["3", "3", "room:c", "phx_join", {"user": "ann"}]))
        .await;
    assert_eq!(
        client.recv().await,
        reply(
            Some("3"),
            "3",
            "room:c",
            "error",
            json!({"reason": "too many channels"})
        )
    );
}

#[tokio::test]
async fn topics_longer_than_the_limit_are_refused_with_an_error_reply() {
    let server = server().await;
    let mut client = Client::connect(&server).await;
    let limit = ChannelsConfig::default().max_topic_len;
    let longest = format!("room:{}", "x".repeat(limit - "room:".len()));
    client.join(&longest, "1", "ann").await;
    let too_long = format!("{longest}y");
    client
        .send(json!(["2", "2", too_long, "phx_join", {"user": "ann"}]))
        .await;
    assert_eq!(
        client.recv().await,
        reply(
            Some("2"),
            "2",
            &too_long,
            "error",
            json!({"reason": "topic too long"})
        )
    );
    assert_eq!(server.hub.room_size(&room_name(&too_long)), 0);
}

#[tokio::test]
async fn a_socket_without_heartbeats_is_closed_and_a_heartbeating_one_is_not() {
    let config = ChannelsConfig::default().heartbeat_timeout(Duration::from_millis(300));
    let hub_config = HubConfig::default()
        // The hub pings quiet sockets often, and the client answers: pongs alone must
        // not keep a socket that sends no message alive.
        .ping_interval(Duration::from_millis(50));
    let server = server_with(hub_config, config).await;
    let mut silent = Client::connect(&server).await;
    let mut beating = Client::connect(&server).await;
    let started = tokio::time::Instant::now();
    let mut beats = 0;
    let closed = loop {
        beats += 1;
        let beat = beats.to_string();
        beating.heartbeat(&beat).await;
        // Reading drives tungstenite's answers to the hub's pings.
        if let Ok(message) = timeout(Duration::from_millis(100), silent.next()).await {
            break message;
        }
        assert!(started.elapsed() < STEP, "the silent socket is still open");
    };
    match closed {
        WsMessage::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Away);
            assert_eq!(frame.reason, "heartbeat timeout");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The heartbeating socket outlives the timeout three times over.
    while started.elapsed() < Duration::from_millis(900) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        beating.heartbeat("again").await;
    }
}

#[tokio::test]
async fn a_heartbeat_timeout_of_zero_turns_it_off() {
    let config = ChannelsConfig::default().heartbeat_timeout(Duration::ZERO);
    let server = server_with(HubConfig::default(), config).await;
    let mut client = Client::connect(&server).await;
    // Long enough for many sweeps, had one started.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.heartbeat("1").await;
}

/// As in Phoenix, whose transport's timeout is cowboy's `idle_timeout`, reset by every
/// frame received: a client that keeps its socket alive with WebSocket pings rather
/// than Phoenix heartbeats is not cut.
#[tokio::test]
async fn a_socket_that_sends_websocket_pings_is_alive() {
    let config = ChannelsConfig::default().heartbeat_timeout(Duration::from_millis(300));
    let server = server_with(HubConfig::default(), config).await;
    let mut client = Client::connect(&server).await;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(900) {
        client
            .send_raw(WsMessage::Ping(b"here".to_vec().into()))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.heartbeat("1").await;
}

#[tokio::test]
async fn pushes_held_during_a_join_are_bounded_by_the_outbound_buffer() {
    let hub_config = HubConfig::default().max_buffered_bytes(64 << 10);
    let server = server_with(hub_config, ChannelsConfig::default()).await;
    let mut client = Client::connect(&server).await;
    let (pushes, size) = (100, 4096);
    client
        .send(json!(["1", "1", "room:flood", "phx_join", {"pushes": pushes, "size": size}]))
        .await;
    let joined = client.recv().await;
    assert_eq!(joined[4]["status"], "ok", "{joined}");
    let refused = joined[4]["response"]["refused"].as_u64().unwrap();
    // 64 KiB hold fifteen pushes of 4 KiB and their JSON framing.
    assert_eq!(refused, pushes - 15, "{joined}");
    for _ in 0..pushes - refused {
        assert_eq!(client.recv().await[3], "flood");
    }
    client
        .send(json!(["1", "2", "room:flood", "ping", {}]))
        .await;
    assert_eq!(
        client.recv().await,
        reply(Some("1"), "2", "room:flood", "ok", json!({}))
    );
    assert_eq!(server.hub.metrics().dropped_messages, refused);
}

/// Held pushes share the connection's budget: a join cannot hold `max_buffered_bytes`
/// on top of a queue that is full already.
#[tokio::test]
async fn pushes_held_during_a_join_count_with_the_connections_queue() {
    let hub_config = HubConfig::default().max_buffered_bytes(64 << 10);
    let server = server_with(hub_config, ChannelsConfig::default()).await;
    let mut client = Client::connect(&server).await;
    let (pushes, size, queued) = (100, 4096, 48 << 10);
    client
        .send(json!(["1", "1", "room:flood", "phx_join",
            {"pushes": pushes, "size": size, "queued": queued}]))
        .await;
    // The join's own sends left first: nothing was written while it ran.
    assert_eq!(client.recv_binary().await.len(), queued);
    let joined = client.recv().await;
    assert_eq!(joined[4]["status"], "ok", "{joined}");
    let refused = joined[4]["response"]["refused"].as_u64().unwrap();
    // The 16 KiB left beside the queued 48 KiB hold three pushes of 4 KiB and their
    // JSON framing.
    assert_eq!(refused, pushes - 3, "{joined}");
    for _ in 0..pushes - refused {
        assert_eq!(client.recv().await[3], "flood");
    }
    assert_eq!(server.hub.metrics().dropped_messages, refused);
}

#[tokio::test]
async fn connect_refusals_close_with_their_code_right_after_the_101() {
    let server = server().await;
    let refusals = [
        ("vsn=2.0.0&token=bad", 3000, "bad token"),
        ("vsn=2.0.0&token=banned", 3003, "banned"),
        ("vsn=2.0.0&token=stale", 4401, "token expired"),
    ];
    for (query, code, reason) in refusals {
        let mut client = Client::connect_query(&server, query).await.unwrap();
        assert_eq!(
            client.closed_with().await,
            (CloseCode::from(code), reason.to_owned()),
            "{query}"
        );
    }
    assert_eq!(SbCloseCode::UNAUTHORIZED.as_u16(), 3000);
    assert_eq!(SbCloseCode::FORBIDDEN.as_u16(), 3003);
    assert_eq!(SbCloseCode::TOKEN_EXPIRED.as_u16(), 4401);
    // A client of another protocol version is no refusal of the application's: plain
    // HTTP.
    match Client::connect_query(&server, "vsn=1.0.0").await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("vsn=1.0.0 connected"),
    }
    assert_eq!(server.hub.connection_count(), 0);
}

#[tokio::test]
async fn the_auth_token_travels_as_a_subprotocol_and_phoenix_is_selected() {
    let server = server().await;
    // phoenix.js 1.8: `btoa(token)` without padding; "ann" is "YW5u".
    let (mut client, selected) =
        Client::connect_with_token(&server, "phoenix, base64url.bearer.phx.YW5u").await;
    assert_eq!(
        selected.as_deref(),
        Some("phoenix"),
        "browsers fail a 101 without it"
    );
    // `user:{id}` admits the socket whose connect assigned the token `id`.
    client
        .send(json!(["1", "1", "user:ann", "phx_join", {}]))
        .await;
    assert_eq!(
        client.recv().await,
        reply(Some("1"), "1", "user:ann", "ok", json!({"id": "ann"}))
    );
    // A refusal selects it too, so that a browser gets to read the close code.
    let bad = "phoenix, base64url.bearer.phx.YmFk"; // "bad"
    let (mut refused, selected) = Client::connect_with_token(&server, bad).await;
    assert_eq!(selected.as_deref(), Some("phoenix"));
    assert_eq!(
        refused.closed_with().await,
        (CloseCode::from(3000), "bad token".to_owned())
    );
}

#[tokio::test]
async fn a_socket_is_closed_with_4401_when_its_token_expires() {
    let mut server = server().await;
    let started = Instant::now();
    let mut client = Client::connect_query(&server, "vsn=2.0.0&token=brief1")
        .await
        .unwrap();
    client.join("room:expiry", "1", "ann").await;
    assert_eq!(
        client.closed_with().await,
        (CloseCode::from(4401), "token expired".to_owned())
    );
    assert!(
        started.elapsed() >= BRIEF,
        "closed after {:?}",
        started.elapsed()
    );
    assert_eq!(
        within("terminate", server.terminated.recv()).await,
        Some(("room:expiry".to_owned(), TerminateReason::Closed))
    );
    // Without an expiry, the socket lives on.
    let mut lasting = Client::connect_query(&server, "vsn=2.0.0&token=lasting")
        .await
        .unwrap();
    tokio::time::sleep(BRIEF * 2).await;
    lasting.heartbeat("1").await;
}

#[tokio::test]
async fn closing_a_socket_terminates_its_channels_and_leaves_the_rooms() {
    let mut server = server().await;
    let mut client = Client::connect(&server).await;
    client.join("room:a", "1", "ann").await;
    client.join("room:b", "2", "ann").await;
    client.ws.close(None).await.unwrap();
    // Read the server's close so that the handshake completes at once.
    while let Some(Ok(_)) = within("close", client.ws.next()).await {}
    let mut reasons = vec![
        within("terminate", server.terminated.recv()).await,
        within("terminate", server.terminated.recv()).await,
    ];
    reasons.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    assert_eq!(
        reasons,
        vec![
            Some(("room:a".to_owned(), TerminateReason::Closed)),
            Some(("room:b".to_owned(), TerminateReason::Closed)),
        ]
    );
    within("unregister", async {
        while server.hub.connection_count() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(server.hub.room_size(&room_name("room:a")), 0);
}

#[tokio::test]
async fn endpoint_broadcasts_from_outside_a_channel() {
    let hub = Hub::new(HubConfig::default());
    let (terminated, _rx) = unbounded_channel();
    let channels = Channels::new(hub.clone()).channel("room:*", Room { terminated });
    let endpoint = channels.endpoint();
    let app: axum::Router = channels.into_router();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve_hub = hub.clone();
    tokio::spawn(async move {
        let _ = switchboard::serve_with_shutdown(
            listener,
            app,
            &serve_hub,
            std::future::pending::<()>(),
        )
        .await;
    });
    let (_tx, terminated) = unbounded_channel();
    let server = Server {
        addr,
        hub,
        terminated,
    };
    let mut client = Client::connect(&server).await;
    client.join("room:news", "1", "ann").await;
    assert_eq!(endpoint.subscribers("room:news"), 1);
    let report = endpoint.broadcast("room:news", "headline", json!({"text": "hi"}));
    assert_eq!(report.queued, 1);
    assert_eq!(
        client.recv().await,
        json!([null, null, "room:news", "headline", {"text": "hi"}])
    );
    assert_eq!(
        endpoint.presence().list("room:news")["ann"]["metas"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

/// Keeps the socket of the last join, for a test to push to it after the channel ended.
#[derive(Clone, Default)]
struct Keeper(std::sync::Arc<std::sync::Mutex<Option<Socket>>>);

impl Channel for Keeper {
    async fn join(&self, _topic: &str, _payload: Value, socket: &Socket) -> Result<Value, Value> {
        *self.0.lock().unwrap() = Some(socket.clone());
        Ok(json!({}))
    }
}

#[tokio::test]
async fn a_push_to_an_ended_channel_hands_the_payload_back_and_is_counted() {
    let hub = Hub::new(HubConfig::default());
    let keeper = Keeper::default();
    let channels = Channels::new(hub.clone()).channel("kept", keeper.clone());
    let app: axum::Router = channels.into_router();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve_hub = hub.clone();
    tokio::spawn(async move {
        let _ = switchboard::serve_with_shutdown(
            listener,
            app,
            &serve_hub,
            std::future::pending::<()>(),
        )
        .await;
    });
    let (_tx, terminated) = unbounded_channel();
    let server = Server {
        addr,
        hub,
        terminated,
    };
    let mut client = Client::connect(&server).await;
    client.send(json!(["1", "1", "kept", "phx_join", {}])).await;
    assert_eq!(client.recv().await[4]["status"], "ok");
    let socket = keeper.0.lock().unwrap().clone().unwrap();
    let payload = Payload::Json(json!({"n": 1}));
    socket.try_push("while_joined", payload.clone()).unwrap();
    assert_eq!(client.recv().await[3], "while_joined");

    client
        .send(json!(["1", "2", "kept", "phx_leave", {}]))
        .await;
    assert_eq!(
        client.recv().await,
        reply(Some("1"), "2", "kept", "ok", json!({}))
    );
    let conn = socket.connection();
    let error = socket.try_push("late", payload.clone()).unwrap_err();
    assert_eq!(error, PushError::Closed(payload.clone()));
    assert_eq!(error.into_payload(), payload);
    socket.push("later", payload.clone());
    assert_eq!(conn.refused_messages(), 2, "both refusals counted");
    assert_eq!(server.hub.metrics().refused_messages, 2);

    // The connection's end refuses them the same way.
    client.ws.close(None).await.unwrap();
    within("unregister", async {
        while server.hub.connection_count() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(matches!(
        socket.try_push("gone", payload.clone()),
        Err(PushError::Closed(back)) if back == payload
    ));
    assert_eq!(conn.refused_messages(), 3);
}

#[tokio::test]
async fn a_broadcast_that_cannot_be_encoded_is_an_error_for_try_broadcast_only() {
    let server = server().await;
    let mut client = Client::connect(&server).await;
    client.join("room:a", "1", "ann").await;
    let endpoint = Channels::new(server.hub.clone()).endpoint();
    let event = "e".repeat(256);
    let binary = Payload::Binary(bytes::Bytes::from_static(b"data"));
    assert_eq!(
        endpoint.try_broadcast("room:a", &event, binary.clone()),
        Err(EncodeError::FieldTooLong {
            field: "event",
            len: 256
        })
    );
    // Fire-and-forget: logged, nobody reached.
    assert_eq!(
        endpoint.broadcast("room:a", &event, binary),
        Default::default()
    );
    client.silent().await;
}
