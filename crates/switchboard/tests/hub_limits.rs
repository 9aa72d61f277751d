//! The per-client limits of a hub, each hit by a real client (tokio-tungstenite) through
//! `serve`: connections per address (429, and the address a trusted proxy names),
//! handshakes held before the hub admits them, rooms per connection (the hub's and a
//! channels socket's), and the message rate (dropped and counted, or closed with 1008).
//! The paths without axum (a hyper service, a bare stream) have their own tests in
//! `hub_without_axum`.

mod common;

use axum::{Router, response::IntoResponse, routing::get};
use common::{
    hub::{Client, HubServer, connect, serve, serve_ws_route, try_connect},
    within,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};
use switchboard::{
    CloseCode, HubUpgrade, Message,
    channels::{Channel, Channels, ChannelsConfig, Socket},
    hub::{Connection, Handler, Hub, HubConfig, IpNet, MessageRate, ProxyHeader, RatePolicy},
};
use tokio::sync::{Semaphore, mpsc::UnboundedSender};
use tokio_tungstenite::tungstenite::{self, Message as TMessage};

/// Reports each connection as it opens and ends; answers `join:ROOM` with the join's
/// result, and counts (and echoes) every other message it is handed.
struct Limited(UnboundedSender<Event>, Arc<AtomicUsize>);

#[derive(Debug)]
enum Event {
    Open(Connection),
    Close(CloseCode, String),
}

impl Handler for Limited {
    async fn on_open(&self, conn: &Connection) {
        let _ = self.0.send(Event::Open(conn.clone()));
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        if let Message::Text(text) = &message {
            if let Some(room) = text.strip_prefix("join:") {
                match conn.try_join(room) {
                    Ok(()) => conn.send_text("joined"),
                    Err(error) => conn.send_text(error.to_string()),
                }
                return;
            }
        }
        self.1.fetch_add(1, Relaxed);
        conn.send(message);
    }

    async fn on_close(&self, _conn: &Connection, code: CloseCode, reason: &str) {
        let _ = self.0.send(Event::Close(code, reason.to_owned()));
    }
}

type Server = HubServer<tokio::sync::mpsc::UnboundedReceiver<Event>>;

async fn limited(config: HubConfig) -> (Server, Arc<AtomicUsize>) {
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let server = serve_ws_route(config, move |tx| Limited(tx, counter)).await;
    (server, handled)
}

async fn opened(server: &mut Server) -> Connection {
    match within("on_open", server.events.recv()).await {
        Some(Event::Open(conn)) => conn,
        other => panic!("expected on_open, got {other:?}"),
    }
}

async fn closed(server: &mut Server) -> (CloseCode, String) {
    match within("on_close", server.events.recv()).await {
        Some(Event::Close(code, reason)) => (code, reason),
        other => panic!("expected on_close, got {other:?}"),
    }
}

async fn next_text(client: &mut Client) -> String {
    match within("a message", client.next()).await {
        Some(Ok(TMessage::Text(text))) => text.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// The answer that refused an upgrade.
async fn refusal(addr: SocketAddr, headers: &[(&str, &str)]) -> http::Response<Option<Vec<u8>>> {
    match try_connect(addr, "/ws", headers).await {
        Err(tungstenite::Error::Http(response)) => response,
        Ok(_) => panic!("accepted"),
        Err(error) => panic!("{error}"),
    }
}

#[tokio::test]
async fn connections_past_the_per_ip_limit_are_refused_with_429() {
    let (mut server, _) = limited(HubConfig::default().max_connections_per_ip(2)).await;
    let mut first = connect(server.addr, "/ws").await;
    opened(&mut server).await;
    let _second = connect(server.addr, "/ws").await;
    opened(&mut server).await;

    let refused = refusal(server.addr, &[]).await;
    assert_eq!(refused.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_eq!(server.hub.connection_count(), 2);
    assert!(
        server.events.try_recv().is_err(),
        "on_open ran for a refusal"
    );

    // One leaves: its address's slot is free again once its task has ended.
    first.close(None).await.unwrap();
    closed(&mut server).await;
    drop(first);
    let _third = within("a free slot", async {
        loop {
            match try_connect(server.addr, "/ws", &[]).await {
                Ok((client, _)) => return client,
                Err(tungstenite::Error::Http(response)) => {
                    assert_eq!(response.status(), http::StatusCode::TOO_MANY_REQUESTS);
                }
                Err(error) => panic!("{error}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    opened(&mut server).await;
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_counted_and_reported() {
    let config = HubConfig::default()
        .max_connections_per_ip(1)
        .trusted_proxies([IpNet::from(std::net::IpAddr::from([127, 0, 0, 1]))]);
    let (mut server, _) = limited(config).await;
    let xff = |list| [("x-forwarded-for", list)];
    // The proxy appended the address it saw; the client wrote the first one itself.
    let _ann = try_connect(server.addr, "/ws", &xff("6.6.6.6, 203.0.113.5"))
        .await
        .unwrap();
    let conn = opened(&mut server).await;
    assert_eq!(conn.remote_addr(), Some("203.0.113.5:0".parse().unwrap()));

    // Another client behind the same proxy, from the same address: its share is taken.
    let refused = refusal(server.addr, &xff("203.0.113.5")).await;
    assert_eq!(refused.status(), http::StatusCode::TOO_MANY_REQUESTS);
    // From another address, through the same proxy: let in.
    let _bob = try_connect(server.addr, "/ws", &xff("203.0.113.6"))
        .await
        .unwrap();
    let conn = opened(&mut server).await;
    assert_eq!(conn.remote_addr(), Some("203.0.113.6:0".parse().unwrap()));
}

#[tokio::test]
async fn the_proxy_header_of_an_untrusted_peer_is_ignored() {
    // 127.0.0.1 is not a trusted proxy: what its clients write is not believed.
    let config = HubConfig::default()
        .max_connections_per_ip(1)
        .trusted_proxies(["10.0.0.0/8".parse().unwrap()]);
    let (mut server, _) = limited(config).await;
    let (_client, local) = try_connect(server.addr, "/ws", &[("x-forwarded-for", "203.0.113.5")])
        .await
        .unwrap();
    let conn = opened(&mut server).await;
    assert_eq!(conn.remote_addr(), Some(local));
    // A spoofed address does not buy another share.
    let refused = refusal(server.addr, &[("x-forwarded-for", "203.0.113.6")]).await;
    assert_eq!(refused.status(), http::StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_forwarded_header_is_read_when_chosen_and_only_then() {
    let config = HubConfig::default()
        .trusted_proxies(["127.0.0.0/8".parse().unwrap()])
        .proxy_header(ProxyHeader::Forwarded);
    let (mut server, _) = limited(config).await;
    let headers = [
        ("forwarded", r#"for="[2001:db8::7]:4711";proto=http"#),
        // Passed through from the client by a proxy that writes `Forwarded`.
        ("x-forwarded-for", "6.6.6.6"),
    ];
    let _client = try_connect(server.addr, "/ws", &headers).await.unwrap();
    let conn = opened(&mut server).await;
    assert_eq!(
        conn.remote_addr(),
        Some("[2001:db8::7]:4711".parse().unwrap())
    );
}

/// Releases the handshakes it holds when told: the application's own work between the
/// upgrade request and its registration (an auth lookup).
#[derive(Clone)]
struct Gate {
    entered: Arc<AtomicUsize>,
    open: Arc<Semaphore>,
}

impl Gate {
    fn new() -> Self {
        Self {
            entered: Arc::new(AtomicUsize::new(0)),
            open: Arc::new(Semaphore::new(0)),
        }
    }

    async fn pass(&self) {
        self.entered.fetch_add(1, Relaxed);
        self.open.acquire().await.unwrap().forget();
    }
}

struct Quiet;

impl Handler for Quiet {}

/// Two apps whose upgrades wait at `gate` before the hub admits them: a handler's own
/// check before `register`, and a channels `connect` callback.
fn gated_apps(hub: &Hub, gate: &Gate) -> [Router; 2] {
    let (handler_hub, handler_gate) = (hub.clone(), gate.clone());
    let handler = Router::new().route(
        "/ws",
        get(move |upgrade: HubUpgrade| async move {
            handler_gate.pass().await;
            upgrade.register(&handler_hub, Quiet).await.into_response()
        }),
    );
    let connect_gate = gate.clone();
    let channels = Channels::new(hub.clone()).connect(move |_| {
        let gate = connect_gate.clone();
        async move {
            gate.pass().await;
            Ok(())
        }
    });
    let channels = Router::new().route("/ws", channels.route());
    [handler, channels]
}

/// An upgrade whose head has arrived but that the hub has not admitted yet (the
/// application's work before `register`, a channels `connect`) holds its pending
/// handshake's slot: past `max_pending_handshakes`, the next connection waits.
#[tokio::test]
async fn upgrades_not_yet_admitted_are_bounded_by_the_pending_handshakes() {
    for app in 0..2 {
        let hub = Hub::new(HubConfig::default().max_pending_handshakes(1));
        let gate = Gate::new();
        let router = gated_apps(&hub, &gate)[app].clone();
        let server = serve(hub, router, ()).await;
        let addr = server.addr;
        let first = tokio::spawn(async move { try_connect(addr, "/ws", &[]).await });
        within("the first upgrade at the gate", async {
            while gate.entered.load(Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let second = tokio::spawn(async move { try_connect(addr, "/ws", &[]).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            gate.entered.load(Relaxed),
            1,
            "app {app}: a second handshake ran"
        );
        assert!(!second.is_finished());

        // Let the first through: it is admitted, and its slot goes to the next.
        gate.open.add_permits(2);
        within("the first", first).await.unwrap().unwrap();
        within("the second", second).await.unwrap().unwrap();
        assert_eq!(gate.entered.load(Relaxed), 2);
    }
}

#[tokio::test]
async fn a_client_driven_join_stops_at_the_room_limit() {
    let (mut server, _) = limited(HubConfig::default().max_rooms_per_connection(100)).await;
    let mut client = connect(server.addr, "/ws").await;
    let conn = opened(&mut server).await;
    for i in 0..100 {
        client
            .send(TMessage::text(format!("join:r{i}")))
            .await
            .unwrap();
        assert_eq!(next_text(&mut client).await, "joined", "room {i}");
    }
    client.send(TMessage::text("join:r100")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "too many rooms");
    assert_eq!(conn.rooms().len(), 100);
    assert!(!conn.in_room("r100"));
    assert_eq!(conn.refused_joins(), 1);
    assert_eq!(server.hub.metrics().refused_joins, 1);
    assert_eq!(server.hub.metrics().rooms, 100);
    // A room it is in already is no new membership; a left room makes space.
    client.send(TMessage::text("join:r7")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "joined");
    assert!(conn.leave("r7"));
    client.send(TMessage::text("join:r100")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "joined");
    assert!(!conn.join("r101"), "Connection::join refuses as well");
    assert_eq!(conn.refused_joins(), 2);
}

struct Open;

impl Channel for Open {
    async fn join(&self, _topic: &str, _payload: Value, _socket: &Socket) -> Result<Value, Value> {
        Ok(json!({}))
    }
}

async fn phx_join(client: &mut Client, topic: &str, reference: usize) -> Value {
    let join = json!([
        reference.to_string(),
        reference.to_string(),
        topic,
        "phx_join",
        {}
    ]);
    client.send(TMessage::text(join.to_string())).await.unwrap();
    let reply: Value = serde_json::from_str(&next_text(client).await).unwrap();
    assert_eq!(reply[3], "phx_reply", "{reply}");
    reply[4].clone()
}

/// A channels socket is a hub connection: its topics are rooms, and a hub that allows
/// fewer rooms than the channels' `max_channels` refuses the join that would pass it.
#[tokio::test]
async fn a_channels_socket_meets_the_hubs_room_limit() {
    let hub = Hub::new(HubConfig::default().max_rooms_per_connection(3));
    let app = Channels::new(hub.clone())
        .channel("room:*", Open)
        .config(ChannelsConfig::default().max_channels(10))
        .into_router();
    let server = serve(hub.clone(), app, ()).await;
    let mut client = connect(server.addr, "/socket/websocket?vsn=2.0.0").await;
    for i in 0..3 {
        let reply = phx_join(&mut client, &format!("room:{i}"), i).await;
        assert_eq!(reply["status"], "ok", "{reply}");
    }
    let reply = phx_join(&mut client, "room:3", 3).await;
    assert_eq!(
        reply,
        json!({"status": "error", "response": {"reason": "too many rooms"}})
    );
    assert_eq!(hub.metrics().refused_joins, 1);
    assert_eq!(hub.metrics().rooms, 3);
}

#[tokio::test]
async fn messages_over_the_rate_are_dropped_and_counted() {
    let config = HubConfig::default().max_message_rate(MessageRate::new(10, 20));
    let (mut server, handled) = limited(config).await;
    let mut client = connect(server.addr, "/ws").await;
    let conn = opened(&mut server).await;
    const FLOOD: usize = 300;
    for i in 0..FLOOD {
        client.feed(TMessage::text(i.to_string())).await.unwrap();
    }
    client.flush().await.unwrap();
    within("the flood read", async {
        while handled.load(Relaxed) + (conn.rate_limited_messages() as usize) < FLOOD {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let passed = handled.load(Relaxed);
    // The burst, and what the rate refilled while the flood was read.
    assert!((20..=25).contains(&passed), "{passed} passed");
    let dropped = (FLOOD - passed) as u64;
    assert_eq!(conn.rate_limited_messages(), dropped);
    assert_eq!(server.hub.metrics().rate_limited_messages, dropped);
    for i in 0..passed {
        assert!(next_text(&mut client).await.parse::<usize>().unwrap() >= i);
    }
    // The connection stays; a message at the rate gets through.
    tokio::time::sleep(Duration::from_millis(150)).await;
    client.send(TMessage::text("later")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "later");
}

#[tokio::test]
async fn the_close_policy_closes_a_flooding_client_with_1008() {
    let config = HubConfig::default()
        .max_message_rate(MessageRate::new(10, 5))
        .rate_policy(RatePolicy::Close);
    let (mut server, handled) = limited(config).await;
    let mut client = connect(server.addr, "/ws").await;
    let conn = opened(&mut server).await;
    for i in 0..50 {
        client.feed(TMessage::text(i.to_string())).await.unwrap();
    }
    client.flush().await.unwrap();
    let close = within("the close frame", async {
        loop {
            match client.next().await {
                Some(Ok(TMessage::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "message rate exceeded");
    let (code, reason) = closed(&mut server).await;
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::POLICY_VIOLATION, "message rate exceeded")
    );
    let passed = handled.load(Relaxed);
    assert!(
        (5..=6).contains(&passed),
        "{passed} passed: the burst, and a refill at most"
    );
    assert!(conn.rate_limited_messages() >= 1);
}
