//! A hub connection's life from registration to release, over real TCP: a panicking
//! callback is isolated (1011, `on_close`, slot and memberships released, whatever way
//! the connection's task ends), `on_open` has run when the client sees its 101, and a
//! connection that has left cannot join a room again.

mod common;

use axum::Router;
use common::{
    STEP, handshake_request,
    hub::{Client, HubServer, connect, serve, try_connect},
    within,
};
use futures_util::{SinkExt, StreamExt};
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use switchboard::{
    CloseCode, Message,
    hub::{Broker, Connection, ConnectionId, Handler, Hub, HubConfig, Inbox, MemoryNetwork},
};
use tokio::{
    io::AsyncWriteExt,
    net::TcpStream,
    sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
};
use tokio_tungstenite::tungstenite::{
    self, Message as TMessage,
    protocol::{CloseFrame, frame::coding::CloseCode as TCloseCode},
};

/// What the handler saw.
#[derive(Debug)]
enum Seen {
    Open(Connection),
    Message,
    Close(ConnectionId, CloseCode),
}

/// Joins the route's `{room}` on open (after `open_delay`, as a lookup would take), and
/// broadcasts every text to its rooms. The query `panic=open|message|close` makes that
/// callback panic (on_message when the text is `panic`).
struct Life {
    seen: UnboundedSender<Seen>,
    open_delay: Duration,
}

impl Life {
    fn panics_in(conn: &Connection, callback: &str) -> bool {
        conn.query("panic") == Some(callback)
    }
}

impl Handler for Life {
    async fn on_open(&self, conn: &Connection) {
        tokio::time::sleep(self.open_delay).await;
        if let Some(room) = conn.param("room") {
            conn.join(room);
        }
        let _ = self.seen.send(Seen::Open(conn.clone()));
        if Self::panics_in(conn, "open") {
            panic!("on_open panics (test)");
        }
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        let Message::Text(text) = message else { return };
        if text == "panic" && Self::panics_in(conn, "message") {
            panic!("on_message panics (test)");
        }
        for room in conn.rooms() {
            conn.hub().to(&room).send_text(text.clone());
        }
        let _ = self.seen.send(Seen::Message);
    }

    async fn on_close(&self, conn: &Connection, code: CloseCode, _reason: &str) {
        let _ = self.seen.send(Seen::Close(conn.id(), code));
        if Self::panics_in(conn, "close") {
            panic!("on_close panics (test)");
        }
    }
}

type Server = HubServer<UnboundedReceiver<Seen>>;

fn config(max_connections: usize) -> HubConfig {
    HubConfig::default()
        .max_connections(max_connections)
        .close_timeout(Duration::from_secs(2))
}

async fn start(hub: Hub, open_delay: Duration) -> Server {
    let (seen, events) = unbounded_channel();
    let app = app(&hub, seen, open_delay);
    serve(hub, app, events).await
}

fn app(hub: &Hub, seen: UnboundedSender<Seen>, open_delay: Duration) -> Router {
    let handler = Life { seen, open_delay };
    Router::new().route("/chat/{room}", switchboard::ws(hub.clone(), handler))
}

async fn opened(server: &mut Server) -> Connection {
    match within("on_open", server.events.recv()).await.unwrap() {
        Seen::Open(conn) => conn,
        other => panic!("expected on_open, got {other:?}"),
    }
}

async fn closed(server: &mut Server) -> (ConnectionId, CloseCode) {
    loop {
        match within("on_close", server.events.recv()).await.unwrap() {
            Seen::Close(id, code) => return (id, code),
            Seen::Message => {}
            other => panic!("expected on_close, got {other:?}"),
        }
    }
}

/// Reads to the end of the connection; returns the code of the close frame received.
async fn close_code_received(mut client: Client) -> Option<u16> {
    let mut code = None;
    while let Some(message) = within("client end", client.next()).await {
        match message {
            Ok(TMessage::Close(frame)) => code = frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            // A transport that ends without a close frame.
            Err(_) => break,
        }
    }
    code
}

fn normal_close() -> CloseFrame {
    CloseFrame {
        code: TCloseCode::Normal,
        reason: "".into(),
    }
}

/// Polls `cond` until it holds, failing after `STEP`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------------------------------
// A panicking callback
// ---------------------------------------------------------------------------------------

/// More rounds than `max_connections`: a slot leaked by each panic would refuse the last
/// rounds with 503.
async fn panics_are_isolated(callback: &str) {
    let mut server = start(Hub::new(config(3)), Duration::ZERO).await;
    for round in 0..5 {
        let path = format!("/chat/r?panic={callback}");
        let (mut client, _) = try_connect(server.addr, &path, &[])
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let conn = opened(&mut server).await;
        let (expected, code) = match callback {
            "message" => {
                client.send(TMessage::text("panic")).await.unwrap();
                (1011, CloseCode::INTERNAL_ERROR)
            }
            "close" => {
                client.close(Some(normal_close())).await.unwrap();
                (1000, CloseCode::NORMAL)
            }
            _ => (1011, CloseCode::INTERNAL_ERROR),
        };
        assert_eq!(
            close_code_received(client).await,
            Some(expected),
            "round {round}: the close frame the client received"
        );
        assert_eq!(
            closed(&mut server).await,
            (conn.id(), code),
            "round {round}"
        );
        let hub = &server.hub;
        eventually("unregistered", || hub.connection_count() == 0).await;
        assert_eq!(hub.room_size("r"), 0, "round {round}: membership released");
        assert!(hub.rooms().is_empty());
    }
}

#[tokio::test]
async fn a_panic_in_on_open_closes_with_1011_and_frees_the_slot() {
    panics_are_isolated("open").await;
}

#[tokio::test]
async fn a_panic_in_on_message_closes_with_1011_and_frees_the_slot() {
    panics_are_isolated("message").await;
}

#[tokio::test]
async fn a_panic_in_on_close_still_frees_the_slot() {
    panics_are_isolated("close").await;
}

/// A runtime shut down under open connections drops their tasks: no path out of a
/// connection's task may keep its registry entry or its slot.
#[test]
fn a_dropped_connection_task_frees_its_entry_and_slot() {
    let hub = Hub::new(config(1));
    let first = tokio::runtime::Runtime::new().unwrap();
    let client = first.block_on(async {
        let mut server = start(hub.clone(), Duration::ZERO).await;
        let client = connect(server.addr, "/chat/r").await;
        opened(&mut server).await;
        assert_eq!(server.hub.connection_count(), 1);
        // The server's tasks go with the runtime; keep the client.
        std::mem::forget(server);
        client
    });
    drop(first);
    drop(client);
    assert_eq!(hub.connection_count(), 0, "registry entry kept");
    assert_eq!(hub.room_size("r"), 0, "membership kept");
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let mut server = start(hub.clone(), Duration::ZERO).await;
        if let Err(error) = try_connect(server.addr, "/chat/r", &[]).await {
            panic!("the slot of the dropped connection was not released: {error}");
        }
        opened(&mut server).await;
    });
}

// ---------------------------------------------------------------------------------------
// Open means ready
// ---------------------------------------------------------------------------------------

/// How long `on_open` takes before it joins: long enough that a 101 sent before it ran
/// would reach the client first.
const OPEN_DELAY: Duration = Duration::from_millis(30);

#[tokio::test]
async fn a_broadcast_right_after_the_101_reaches_the_rooms_on_open_joined() {
    let mut server = start(Hub::new(config(100)), OPEN_DELAY).await;
    let mut client = connect(server.addr, "/chat/r").await;
    let report = server.hub.to("r").send_text("welcome");
    assert_eq!(report.queued, 1, "the client is not in its room yet");
    opened(&mut server).await;
    match within("welcome", client.next()).await {
        Some(Ok(TMessage::Text(text))) => assert_eq!(text.as_str(), "welcome"),
        other => panic!("expected the broadcast, got {other:?}"),
    }
}

/// The issue's round: clients connect, and as soon as every 101 has arrived each sends
/// one message, which the server broadcasts to the room; every client must receive
/// every message of the round.
#[tokio::test]
async fn every_client_receives_every_message_sent_once_all_101s_arrived() {
    const CLIENTS: usize = 20;
    let mut server = start(Hub::new(config(100)), OPEN_DELAY).await;
    let handshakes = (0..CLIENTS).map(|_| connect(server.addr, "/chat/round"));
    let mut clients = futures_util::future::join_all(handshakes).await;
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .send(TMessage::text(format!("from {i}")))
            .await
            .unwrap();
    }
    let mut handled = 0;
    while handled < CLIENTS {
        if let Seen::Message = within("on_message", server.events.recv()).await.unwrap() {
            handled += 1;
        }
    }
    // Queued after every message of the round, so it arrives after them.
    server.hub.to("round").send_text("end");
    for (i, client) in clients.iter_mut().enumerate() {
        let mut received = HashSet::new();
        loop {
            match within("round", client.next()).await {
                Some(Ok(TMessage::Text(text))) if text.as_str() == "end" => break,
                Some(Ok(TMessage::Text(text))) => {
                    received.insert(text.to_string());
                }
                other => panic!("client {i}: expected text, got {other:?}"),
            }
        }
        assert_eq!(received.len(), CLIENTS, "client {i} missed messages");
    }
}

/// A shutdown that starts while `on_open` runs still lets its 101 out as a plain
/// upgrade, then closes with 1001 as every socket is: a 101 that also says
/// `Connection: close` (what hyper writes once its connection is shut down gracefully)
/// fails the handshake in tungstenite-based clients.
#[tokio::test]
async fn a_shutdown_during_on_open_sends_a_clean_101_then_1001() {
    let mut server = start(Hub::new(config(10)), Duration::from_millis(300)).await;
    let addr = server.addr;
    let client = tokio::spawn(async move { try_connect(addr, "/chat/r", &[]).await });
    let hub = server.hub.clone();
    eventually("registered", || hub.connection_count() == 1).await;
    drop(server.stop.take());
    let (client, _) = within("the handshake", client)
        .await
        .unwrap()
        .expect("a 101 the client accepts");
    assert_eq!(close_code_received(client).await, Some(1001));
    let conn = opened(&mut server).await;
    assert_eq!(
        closed(&mut server).await,
        (conn.id(), CloseCode::GOING_AWAY)
    );
    within("serve's end", &mut server.served)
        .await
        .unwrap()
        .unwrap();
}

/// A client that leaves while `on_open` runs never gets its 101: the connection ends as
/// one whose transport died, and its slot is free again.
#[tokio::test]
async fn a_client_gone_before_its_101_is_closed_with_1006_and_frees_its_slot() {
    let mut server = start(Hub::new(config(1)), OPEN_DELAY).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(handshake_request("/chat/r", "").as_bytes())
        .await
        .unwrap();
    let conn = opened(&mut server).await;
    drop(tcp);
    assert_eq!(closed(&mut server).await, (conn.id(), CloseCode::ABNORMAL));
    let hub = &server.hub;
    eventually("unregistered", || hub.connection_count() == 0).await;
    assert_eq!(hub.room_size("r"), 0);
    let _client = connect(server.addr, "/chat/r").await;
}

// ---------------------------------------------------------------------------------------
// A join after the end
// ---------------------------------------------------------------------------------------

/// A `MemoryBroker` that records which rooms the hub is subscribed to.
struct Recording {
    inner: switchboard::hub::MemoryBroker,
    subscribed: Arc<Mutex<HashSet<String>>>,
}

impl Broker for Recording {
    fn start(&self, inbox: Inbox) {
        self.inner.start(inbox);
    }

    fn publish(&self, envelope: switchboard::hub::Envelope) {
        self.inner.publish(envelope);
    }

    fn subscribe(&self, room: &str) {
        self.subscribed.lock().unwrap().insert(room.to_owned());
        self.inner.subscribe(room);
    }

    fn unsubscribe(&self, room: &str) {
        self.subscribed.lock().unwrap().remove(room);
        self.inner.unsubscribe(room);
    }
}

#[tokio::test]
async fn a_join_after_the_connection_left_is_refused() {
    let network = MemoryNetwork::new();
    let subscribed = Arc::new(Mutex::new(HashSet::new()));
    let broker = Recording {
        inner: network.broker(),
        subscribed: subscribed.clone(),
    };
    let mut server = start(Hub::with_broker(config(10), broker), Duration::ZERO).await;
    let mut client = connect(server.addr, "/chat/r").await;
    let conn = opened(&mut server).await;
    assert!(subscribed.lock().unwrap().contains("r"));
    client.close(None).await.unwrap();
    closed(&mut server).await;
    let hub = server.hub.clone();
    eventually("unregistered", || hub.connection_count() == 0).await;

    assert!(!conn.join("late"), "a join after the end is refused");
    assert!(!hub.join(&conn, "later"));
    assert_eq!(hub.room_size("late"), 0);
    assert_eq!(hub.room_size("later"), 0);
    assert!(hub.rooms().is_empty(), "rooms kept: {:?}", hub.rooms());
    assert!(conn.rooms().is_empty());
    assert!(
        subscribed.lock().unwrap().is_empty(),
        "broker subscriptions kept: {:?}",
        subscribed.lock().unwrap()
    );
}
