//! Cluster-wide queries and remote control on three hubs in one process, each serving
//! its own listener, wired through `MemoryNetwork`: answers sum every hub and name the
//! hubs that replied; a stalled hub is named missing within the timeout; joins, leaves
//! and disconnections of connections on other hubs reach real WebSocket clients.

mod common;

use axum::Router;
use common::{
    hub::{Client, HubServer, connect, serve},
    within,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard::{
    CloseCode,
    channels::{Channel, Channels, Endpoint, Socket},
    hub::{
        Broker, ClusterAnswer, Connection, ConnectionId, Connections, Envelope, Handler, Hub,
        HubConfig, Inbox, MemoryBroker, MemoryNetwork, NodeId,
    },
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_tungstenite::tungstenite::{
    Message as TMessage, protocol::frame::coding::CloseCode as TCode,
};

/// Joins the route's `{room}` on open, takes the query's `name` as metadata, and hands
/// the connection to the test.
struct Opener(UnboundedSender<Connection>);

impl Handler for Opener {
    async fn on_open(&self, conn: &Connection) {
        if let Some(room) = conn.param("room") {
            conn.join(room);
        }
        if let Some(name) = conn.query("name") {
            conn.set_metadata("name", name);
        }
        let _ = self.0.send(conn.clone());
    }
}

/// A broker that can be stalled, as a stopped process is: while `stalled`, it neither
/// publishes nor delivers (heartbeats included), so the other hubs hear nothing.
struct Stallable {
    inner: MemoryBroker,
    stalled: Arc<AtomicBool>,
}

impl Broker for Stallable {
    fn start(&self, inbox: Inbox) {
        let stalled = self.stalled.clone();
        let node = inbox.node();
        self.inner.start(Inbox::new(node, move |envelope| {
            stalled.load(Relaxed) || inbox.deliver(envelope)
        }));
    }

    fn publish(&self, envelope: Envelope) {
        if !self.stalled.load(Relaxed) {
            self.inner.publish(envelope);
        }
    }

    fn subscribe(&self, room: &str) {
        self.inner.subscribe(room);
    }

    fn unsubscribe(&self, room: &str) {
        self.inner.unsubscribe(room);
    }
}

type Node = HubServer<UnboundedReceiver<Connection>>;

/// Heartbeats every 20 ms; a silent hub is dead after 2 s, well after the queries'
/// timeouts of these tests.
fn config() -> HubConfig {
    HubConfig::default()
        .node_heartbeat(Duration::from_millis(20))
        .node_timeout(Duration::from_secs(2))
}

async fn node(broker: impl Broker) -> Node {
    let hub = Hub::with_broker(config(), broker);
    let (tx, opened) = unbounded_channel();
    let app = Router::new()
        .route(
            "/chat/{room}",
            switchboard::ws(hub.clone(), Opener(tx.clone())),
        )
        .route("/ws", switchboard::ws(hub.clone(), Opener(tx)));
    serve(hub, app, opened).await
}

/// Three hubs that know each other; the last one's broker can be stalled.
async fn three_nodes() -> ([Node; 3], Arc<AtomicBool>) {
    let network = MemoryNetwork::new();
    let stalled = Arc::new(AtomicBool::new(false));
    let c = Stallable {
        inner: network.broker(),
        stalled: stalled.clone(),
    };
    let nodes = [
        node(network.broker()).await,
        node(network.broker()).await,
        node(c).await,
    ];
    let mut all: Vec<NodeId> = nodes.iter().map(|n| n.hub.node()).collect();
    all.sort_unstable();
    until("every hub knows every hub", || {
        nodes.iter().all(|n| n.hub.nodes() == all)
    })
    .await;
    past_first_heartbeat().await;
    (nodes, stalled)
}

/// Until the hubs are older than their first heartbeat period and a quarter: before,
/// their queries of every hub wait the whole timeout (see `ClusterQuery`).
async fn past_first_heartbeat() {
    tokio::time::sleep(config().node_heartbeat * 2).await;
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A client on `path` of `node`, with the server's handle of its connection.
async fn client(node: &mut Node, path: &str) -> (Connection, Client) {
    let ws = connect(node.addr, path).await;
    let conn = within("on_open", node.events.recv()).await.unwrap();
    (conn, ws)
}

/// The next text or close of `ws`, skipping pings.
async fn next(ws: &mut Client) -> TMessage {
    loop {
        match within("a message", ws.next()).await {
            Some(Ok(TMessage::Ping(_) | TMessage::Pong(_))) => {}
            Some(Ok(message)) => return message,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Reads `ws` to its end, which sends the close handshake's reply.
async fn finish(ws: &mut Client) {
    while within("the end of the connection", ws.next())
        .await
        .is_some()
    {}
}

fn sorted(mut nodes: Vec<NodeId>) -> Vec<NodeId> {
    nodes.sort_unstable();
    nodes
}

fn ids<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<NodeId> {
    sorted(nodes.into_iter().map(|n| n.hub.node()).collect())
}

/// `answer` came back complete from every one of `nodes`.
fn assert_complete<T>(answer: &ClusterAnswer<T>, nodes: &[&Node]) {
    assert_eq!(answer.replied, ids(nodes.iter().copied()));
    assert!(answer.missing.is_empty(), "missing {:?}", answer.missing);
    assert!(answer.is_complete());
}

#[tokio::test]
async fn queries_sum_every_hub_and_name_who_replied() {
    let ([mut a, mut b, mut c], _) = three_nodes().await;
    let (a1, _a1_ws) = client(&mut a, "/chat/lobby?name=ann").await;
    let (a2, _a2_ws) = client(&mut a, "/chat/lobby?name=al").await;
    let (b1, _b1_ws) = client(&mut b, "/chat/lobby?name=bo").await;
    let (_b2, _b2_ws) = client(&mut b, "/chat/games").await;
    let (c1, _c1_ws) = client(&mut c, "/ws?name=cy").await;
    assert!(c1.join("games"));
    let all = [&a, &b, &c];

    // Asked from any hub, the same whole answer.
    for asker in all {
        let count = asker.hub.cluster().connection_count().await;
        assert_complete(&count, &all);
        assert_eq!(count.value, 5);
        let lobby = asker.hub.cluster().room_size("lobby").await;
        assert_complete(&lobby, &all);
        assert_eq!(lobby.value, 3);
        let rooms = asker.hub.cluster().rooms().await;
        assert_complete(&rooms, &all);
        let expected = BTreeMap::from([("games".to_owned(), 2), ("lobby".to_owned(), 3)]);
        assert_eq!(rooms.value, expected);
        assert_eq!(asker.hub.cluster().room_size("nowhere").await.value, 0);
    }
    // The local functions stay local.
    assert_eq!(a.hub.room_size("lobby"), 2);
    assert_eq!(a.hub.connection_count(), 2);

    let members = c.hub.cluster().room_members("lobby").await;
    assert_complete(&members, &all);
    let mut expected = [&a1, &a2, &b1];
    expected.sort_by_key(|conn| conn.id());
    assert_eq!(
        members.value.iter().map(|m| m.id).collect::<Vec<_>>(),
        expected.map(Connection::id)
    );
    for (member, conn) in members.value.iter().zip(expected) {
        assert_eq!(member.node, conn.id().node());
        assert_eq!(member.metadata, conn.metadata_entries());
        assert_eq!(member.metadata("name"), conn.metadata("name").as_deref());
        assert_eq!(member.metadata("none"), None);
        assert_eq!(member.remote_addr, conn.remote_addr());
        assert_eq!(member.rooms, ["lobby"]);
    }
    // Serializable as it is, for a response.
    let json = serde_json::to_value(&members.value[0]).unwrap();
    assert_eq!(json["id"], json!(expected[0].id().to_string()));

    let found = a.hub.cluster().connection(c1.id()).await;
    assert_complete(&found, &[&c]);
    let found = found.value.expect("c1 is connected");
    assert_eq!(found.rooms, ["games"]);
    assert_eq!(found.metadata, [("name".to_owned(), "cy".to_owned())]);
}

#[tokio::test]
async fn a_stalled_hub_is_named_missing_within_the_timeout() {
    let ([mut a, mut b, mut c], stalled) = three_nodes().await;
    let _clients = [
        client(&mut a, "/chat/lobby").await,
        client(&mut b, "/chat/lobby").await,
        client(&mut c, "/chat/lobby").await,
    ];
    assert_eq!(a.hub.cluster().room_size("lobby").await.value, 3);

    stalled.store(true, Relaxed);
    let timeout = Duration::from_millis(200);
    let asked = Instant::now();
    let lobby = a.hub.cluster().timeout(timeout).room_size("lobby").await;
    let took = asked.elapsed();
    assert!(took >= timeout && took < timeout * 3, "took {took:?}");
    assert_eq!(lobby.value, 2, "what the hubs that replied hold");
    assert_eq!(lobby.replied, ids([&a, &b]));
    assert_eq!(lobby.missing, [c.hub.node()]);
    let error = lobby.complete().unwrap_err();
    assert!(error.to_string().contains(&c.hub.node().to_string()));
    // Orders too: the stalled hub's connection may or may not have been moved.
    let c_conn = _clients[2].0.id();
    let moved = b.hub.cluster().timeout(timeout).join(c_conn, "hall").await;
    assert_eq!((moved.value, moved.missing), (0, vec![c.hub.node()]));

    // Back: whole again.
    stalled.store(false, Relaxed);
    let lobby = a.hub.cluster().timeout(timeout).room_size("lobby").await;
    assert_complete(&lobby, &[&a, &b, &c]);
    assert_eq!(lobby.value, 3);
}

#[tokio::test]
async fn a_hub_that_is_gone_is_named_missing_at_once() {
    let ([a, b, c], _) = three_nodes().await;
    c.hub.shutdown(Duration::from_millis(10)).await;
    until("the goodbye arrives", || a.hub.nodes().len() == 2).await;
    let gone = c.hub.node();
    let asked = Instant::now();
    // An order for a connection of a hub not known alive: nothing to wait for.
    let order = a
        .hub
        .cluster()
        .disconnect(ConnectionId::new(gone, 1), CloseCode::NORMAL, "bye")
        .await;
    assert_eq!((order.value, order.missing), (0, vec![gone]));
    assert!(order.replied.is_empty());
    let info = a.hub.cluster().connection(ConnectionId::new(gone, 1)).await;
    assert_eq!((info.value, info.missing), (None, vec![gone]));
    assert!(asked.elapsed() < Duration::from_millis(100));
    // A query of every hub asks only the live ones.
    let count = a.hub.cluster().connection_count().await;
    assert_complete(&count, &[&a, &b]);
}

#[tokio::test]
async fn remote_join_leave_and_disconnect_reach_a_client_on_another_hub() {
    let ([a, b, mut c], _) = three_nodes().await;
    let (conn, mut ws) = client(&mut c, "/ws").await;

    let joined = a.hub.cluster().join(conn.id(), "vip").await;
    assert_complete(&joined, &[&c]);
    assert_eq!(joined.value, 1);
    assert!(conn.in_room("vip"));
    assert_eq!(b.hub.cluster().room_size("vip").await.value, 1);
    a.hub.to("vip").send_text("for vip");
    assert_eq!(next(&mut ws).await, TMessage::text("for vip"));

    let left = b.hub.cluster().leave(conn.id(), "vip").await;
    assert_eq!((left.value, left.is_complete()), (1, true));
    let again = b.hub.cluster().leave(conn.id(), "vip").await;
    assert_eq!(again.value, 0, "not a member any more");
    a.hub.to("vip").send_text("for vip, after the leave");
    a.hub.send_to(conn.id(), "end");
    assert_eq!(next(&mut ws).await, TMessage::text("end"));

    // A code no close frame may carry closes nothing (RFC 6455 §7.4).
    let refused = a
        .hub
        .cluster()
        .disconnect(conn.id(), CloseCode::from(1005), "no")
        .await;
    assert_eq!((refused.value, refused.is_complete()), (0, true));
    let code = CloseCode::from(4000);
    let closed = a.hub.cluster().disconnect(conn.id(), code, "kicked").await;
    assert_eq!((closed.value, closed.is_complete()), (1, true));
    match next(&mut ws).await {
        TMessage::Close(Some(frame)) => {
            assert_eq!(frame.code, TCode::from(4000));
            assert_eq!(frame.reason.as_str(), "kicked");
        }
        other => panic!("expected the close, got {other:?}"),
    }
    finish(&mut ws).await;
    until("the connection is gone", || c.hub.connection_count() == 0).await;
    let gone = a.hub.cluster().connection(conn.id()).await;
    assert!(gone.is_complete());
    assert_eq!(gone.value, None);
    let again = a.hub.cluster().disconnect(conn.id(), code, "kicked").await;
    assert_eq!(again.value, 0);
}

#[tokio::test]
async fn orders_by_room_reach_the_members_on_every_hub() {
    let ([mut a, mut b, mut c], _) = three_nodes().await;
    let mut clients = [
        client(&mut a, "/chat/lobby").await,
        client(&mut b, "/chat/lobby").await,
        client(&mut c, "/chat/lobby").await,
        client(&mut c, "/chat/games").await,
    ];
    let all = [&a, &b, &c];
    let moved = b
        .hub
        .cluster()
        .join(Connections::in_room("lobby"), "hall")
        .await;
    assert_complete(&moved, &all);
    assert_eq!(moved.value, 3);
    assert_eq!(a.hub.cluster().room_size("hall").await.value, 3);
    let everyone = a.hub.cluster().join(Connections::all(), "everyone").await;
    assert_eq!(everyone.value, 4);
    let out = c
        .hub
        .cluster()
        .leave(Connections::in_room("hall"), "lobby")
        .await;
    assert_eq!(out.value, 3);
    assert_eq!(a.hub.cluster().room_size("lobby").await.value, 0);

    let closed = a
        .hub
        .cluster()
        .disconnect(
            Connections::in_room("hall"),
            CloseCode::from(4001),
            "room closed",
        )
        .await;
    assert_complete(&closed, &all);
    assert_eq!(closed.value, 3);
    for (_, ws) in &mut clients[..3] {
        assert!(matches!(next(ws).await, TMessage::Close(Some(f)) if f.code == TCode::from(4001)));
        finish(ws).await;
    }
    until("the hall is empty", || {
        all.iter().all(|n| n.hub.room_size("hall") == 0)
    })
    .await;
    assert_eq!(a.hub.cluster().connection_count().await.value, 1);
}

#[tokio::test]
async fn a_hub_that_just_started_hears_from_hubs_it_does_not_know_yet() {
    let network = MemoryNetwork::new();
    // One heartbeat each, at start: the second hub never hears the first's.
    let config = config().node_heartbeat(Duration::from_secs(3600));
    let first = Hub::with_broker(config.clone(), network.broker());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = Hub::with_broker(config, network.broker());
    until("the first hears the second", || first.nodes().len() == 2).await;
    assert_eq!(second.nodes(), [second.node()]);

    let timeout = Duration::from_millis(200);
    let asked = Instant::now();
    let count = second.cluster().timeout(timeout).connection_count().await;
    assert!(
        asked.elapsed() >= timeout,
        "waited for hubs it may not know"
    );
    assert_eq!(count.replied, sorted(vec![first.node(), second.node()]));
    assert!(count.is_complete());
}

#[tokio::test]
async fn with_one_hub_the_answers_are_its_own_at_once() {
    let hub = Hub::new(HubConfig::default());
    let asked = Instant::now();
    let answer = hub.cluster().rooms().await;
    assert_eq!(answer.replied, [hub.node()]);
    assert!(answer.is_complete() && answer.value.is_empty());
    assert!(asked.elapsed() < Duration::from_millis(100));
}

/// The queries' futures can be spawned and awaited in axum handlers.
#[test]
fn cluster_queries_are_send() {
    fn send<T: Send>(_: T) {}
    let hub = Hub::new(HubConfig::default());
    send(hub.cluster().room_size("r"));
    send(hub.cluster().room_members("r"));
    send(
        hub.cluster()
            .disconnect(Connections::all(), CloseCode::NORMAL, ""),
    );
}

/// Joins anyone.
struct Room;

impl Channel for Room {
    async fn join(&self, _topic: &str, _payload: Value, _socket: &Socket) -> Result<Value, Value> {
        Ok(json!({}))
    }
}

/// A hub on `network` serving channels at `/socket/websocket`; its endpoint and server.
async fn channels_node(network: &MemoryNetwork) -> (Endpoint, HubServer<()>) {
    let hub = Hub::with_broker(config(), network.broker());
    let channels = Channels::new(hub.clone()).channel("room:*", Room);
    let endpoint = channels.endpoint();
    (endpoint, serve(hub, channels.into_router(), ()).await)
}

/// A Phoenix V2 client joined to `topic`.
async fn joined(server: &HubServer<()>, topic: &str) -> Client {
    let mut ws = connect(server.addr, "/socket/websocket?vsn=2.0.0").await;
    let join = json!(["1", "1", topic, "phx_join", {}]);
    ws.send(TMessage::text(join.to_string())).await.unwrap();
    let TMessage::Text(reply) = next(&mut ws).await else {
        panic!("expected the join's reply");
    };
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    ws
}

#[tokio::test]
async fn an_endpoint_counts_a_topics_subscribers_on_every_hub() {
    let network = MemoryNetwork::new();
    let (a, a_server) = channels_node(&network).await;
    let (b, b_server) = channels_node(&network).await;
    until("the hubs know each other", || {
        a_server.hub.nodes().len() == 2
    })
    .await;
    past_first_heartbeat().await;
    let _clients = [
        joined(&a_server, "room:lobby").await,
        joined(&b_server, "room:lobby").await,
        joined(&b_server, "room:lobby").await,
    ];
    assert_eq!(
        (a.subscribers("room:lobby"), b.subscribers("room:lobby")),
        (1, 2)
    );
    for endpoint in [&a, &b] {
        let everywhere = endpoint.cluster_subscribers("room:lobby").await;
        assert_eq!(everywhere.value, 3);
        assert_eq!(everywhere.replied, ids_of(&[&a_server, &b_server]));
        assert!(everywhere.is_complete());
    }
}

fn ids_of(servers: &[&HubServer<()>]) -> Vec<NodeId> {
    sorted(servers.iter().map(|s| s.hub.node()).collect())
}
