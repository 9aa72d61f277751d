//! Cluster-wide queries and remote control on three hubs, each serving its own
//! listener: answers sum every hub and name the hubs that replied; a stopped hub is
//! named missing within the timeout; joins, leaves and disconnections of
//! connections on other hubs reach real WebSocket clients.

use futures_util::StreamExt;
use serde_json::json;
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
    hub::{
        Broker, ClusterAnswer, Connection, ConnectionId, Connections, Envelope, Handler, HubConfig,
        Inbox, NodeId,
    },
};
use switchboard_suite::{
    Engine,
    engines::broker_from_args,
    support::{
        ChildHub, Client, Node, child_args, connect, hub_on, serve, serve_child, sorted, until,
        within,
    },
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_tungstenite::tungstenite::{
    Message as TMessage, protocol::frame::coding::CloseCode as TCode,
};

/// Joins the route's `{room}` on open, takes the query's `name` as metadata, and hands
/// the connection to the test.
pub(crate) struct Opener(UnboundedSender<Connection>);

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

pub(crate) type QueryNode = Node<UnboundedReceiver<Connection>>;

/// Heartbeats every 20 ms; a silent hub is dead after 10 s, well after the stopped
/// hub's queries (a hub taken for dead is no longer waited for).
fn config() -> HubConfig {
    HubConfig::default()
        .node_heartbeat(Duration::from_millis(20))
        .node_timeout(Duration::from_secs(10))
}

async fn node(broker: impl Broker) -> QueryNode {
    node_with(broker, config()).await
}

/// A hub on `broker` with `config`, serving `/chat/{room}` and `/ws` with [`Opener`].
pub(crate) async fn node_with(broker: impl Broker, config: HubConfig) -> QueryNode {
    let hub = hub_on(broker, config).await;
    let (tx, opened) = unbounded_channel();
    let app = axum::Router::new()
        .route(
            "/chat/{room}",
            switchboard::ws(hub.clone(), Opener(tx.clone())),
        )
        .route("/ws", switchboard::ws(hub.clone(), Opener(tx)));
    serve(hub, app, opened).await
}

/// Returns once every hub of `nodes` knows exactly the hubs `all`, and they are
/// older than their first heartbeat period and a quarter: before, their queries of
/// every hub wait the whole timeout (see `ClusterQuery`).
async fn until_they_know(nodes: &[&QueryNode], all: &[NodeId]) {
    let all = sorted(all.to_vec());
    until("every hub knows every hub", || {
        nodes.iter().all(|n| n.hub.nodes() == all)
    })
    .await;
    tokio::time::sleep(config().node_heartbeat * 2).await;
}

/// Three hubs on `engine` that know each other.
async fn three_nodes<E: Engine>(engine: &E) -> [QueryNode; 3] {
    let nodes = [
        node(engine.broker()).await,
        node(engine.broker()).await,
        node(engine.broker()).await,
    ];
    let [a, b, c] = &nodes;
    until_they_know(&[a, b, c], &ids([a, b, c])).await;
    nodes
}

/// A client on `path` of `node`, with the server's handle of its connection.
pub(crate) async fn client(node: &mut QueryNode, path: &str) -> (Connection, Client) {
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

fn ids<'a>(nodes: impl IntoIterator<Item = &'a QueryNode>) -> Vec<NodeId> {
    sorted(nodes.into_iter().map(|n| n.hub.node()).collect())
}

/// `answer` came back complete from every one of `nodes`.
fn assert_complete<T>(answer: &ClusterAnswer<T>, nodes: &[&QueryNode]) {
    assert_eq!(answer.replied, ids(nodes.iter().copied()));
    assert!(answer.missing.is_empty(), "missing {:?}", answer.missing);
    assert!(answer.is_complete());
}

async fn queries_sum_every_hub_and_name_who_replied<E: Engine>() {
    let engine = E::start().await;
    let [mut a, mut b, mut c] = three_nodes(&engine).await;
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

/// A broker that can be stalled, as a stopped process is: while `stalled`, it neither
/// publishes nor delivers (heartbeats included), so the other hubs hear nothing.
struct Stallable<B> {
    inner: B,
    stalled: Arc<AtomicBool>,
}

impl<B: Broker> Broker for Stallable<B> {
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

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }
}

/// The hub that a test stops: a process of its own stopped with SIGSTOP where the
/// engine crosses processes, else a hub of this one whose broker stalls.
enum Stoppable {
    Child(ChildHub),
    Local(QueryNode, Arc<AtomicBool>),
}

impl Stoppable {
    async fn start<E: Engine>(engine: &E) -> Self {
        if E::CROSSES_PROCESSES {
            return Self::Child(ChildHub::start(engine).await);
        }
        let stalled = Arc::new(AtomicBool::new(false));
        let broker = Stallable {
            inner: engine.broker(),
            stalled: stalled.clone(),
        };
        Self::Local(node(broker).await, stalled)
    }

    fn node(&self) -> NodeId {
        match self {
            Self::Child(child) => child.node,
            Self::Local(node, _) => node.hub.node(),
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Self::Child(child) => child.addr,
            Self::Local(node, _) => node.addr,
        }
    }

    async fn stop(&self) {
        match self {
            Self::Child(child) => child.stop().await,
            Self::Local(_, stalled) => stalled.store(true, Relaxed),
        }
    }

    fn resume(&self) {
        match self {
            Self::Child(child) => child.resume(),
            Self::Local(_, stalled) => stalled.store(false, Relaxed),
        }
    }
}

/// `answer` arrived within `bound` of `asked`, with `replied` and `missing` as said.
fn assert_partial<T>(
    answer: &ClusterAnswer<T>,
    asked: Instant,
    bound: &std::ops::Range<Duration>,
    replied: &[NodeId],
    missing: NodeId,
) {
    let took = asked.elapsed();
    assert!(bound.contains(&took), "took {took:?}, not in {bound:?}");
    assert_eq!(answer.replied, sorted(replied.to_vec()));
    assert_eq!(answer.missing, [missing]);
    assert!(!answer.is_complete());
}

async fn a_stopped_hub_is_named_missing_within_the_timeout<E: Engine>() {
    if let Some(args) = child_args() {
        return serve_child(node(broker_from_args(&args)).await).await;
    }
    // The asking hubs wait 300 ms unless a query says otherwise.
    let timeout = Duration::from_millis(300);
    let engine = E::start().await;
    let mut a = node_with(engine.broker(), config().cluster_timeout(timeout)).await;
    let mut b = node_with(engine.broker(), config().cluster_timeout(timeout)).await;
    let c = Stoppable::start(&engine).await;
    let all = [a.hub.node(), b.hub.node(), c.node()];
    until_they_know(&[&a, &b], &all).await;
    let _clients = [
        client(&mut a, "/chat/lobby").await,
        client(&mut b, "/chat/lobby").await,
    ];
    let _remote = connect(c.addr(), "/chat/lobby").await;
    within("three in the lobby", async {
        while a.hub.cluster().room_size("lobby").await.value != 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let whole = b.hub.cluster().connection_count().await;
    assert_eq!(
        (whole.value, whole.replied.clone()),
        (3, sorted(all.to_vec()))
    );
    let members = a.hub.cluster().room_members("lobby").await.value;
    let on_c = members.iter().find(|m| m.node == c.node()).unwrap().id;

    c.stop().await;
    // Within the timeout, and not much past it, on a loaded machine: the hubs'
    // `cluster_timeout` (their default 1 s would miss it), or the query's own.
    let bound = timeout..timeout + Duration::from_millis(500);
    let live = [a.hub.node(), b.hub.node()];
    let asked = Instant::now();
    let size = a.hub.cluster().room_size("lobby").await;
    assert_partial(&size, asked, &bound, &live, c.node());
    assert_eq!(size.value, 2, "what the live hubs hold");
    let asked = Instant::now();
    let members = b.hub.cluster().timeout(timeout).room_members("lobby").await;
    assert_partial(&members, asked, &bound, &live, c.node());
    assert_eq!(members.value.len(), 2);
    assert!(members.value.iter().all(|m| m.node != c.node()));
    let asked = Instant::now();
    let rooms = a.hub.cluster().timeout(timeout).rooms().await;
    assert_partial(&rooms, asked, &bound, &live, c.node());
    let asked = Instant::now();
    let count = a.hub.cluster().connection_count().await;
    assert_partial(&count, asked, &bound, &live, c.node());
    assert_eq!(count.value, 2);
    let error = count.complete().unwrap_err();
    assert!(error.to_string().contains(&c.node().to_string()), "{error}");
    // Orders too: the stopped hub's connection may or may not have been moved.
    let moved = b.hub.cluster().timeout(timeout).join(on_c, "hall").await;
    assert_eq!((moved.value, moved.missing), (0, vec![c.node()]));

    // Resumed before node_timeout: it answers again, and has kept its member. A
    // hub of this process answers the first query; a process resumed by SIGCONT
    // may take a while to be scheduled and catch up, so the test asks until.
    c.resume();
    let size = within("the resumed hub to answer", async {
        loop {
            let size = a.hub.cluster().room_size("lobby").await;
            if size.is_complete() || !E::CROSSES_PROCESSES {
                return size;
            }
        }
    })
    .await;
    assert!(size.is_complete(), "missing {:?}", size.missing);
    assert_eq!(size.value, 3);
    assert_eq!(size.replied, sorted(all.to_vec()));
}

async fn a_hub_that_is_gone_is_named_missing_at_once<E: Engine>() {
    let engine = E::start().await;
    let [a, b, c] = three_nodes(&engine).await;
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

async fn remote_join_leave_and_disconnect_reach_a_client_on_another_hub<E: Engine>() {
    let engine = E::start().await;
    let [a, b, mut c] = three_nodes(&engine).await;
    let (conn, mut ws) = client(&mut c, "/ws").await;

    let joined = a.hub.cluster().join(conn.id(), "vip").await;
    assert_complete(&joined, &[&c]);
    assert_eq!(joined.value, 1);
    assert!(conn.in_room("vip"));
    assert_eq!(b.hub.cluster().room_size("vip").await.value, 1);
    // A member now; hub c's broker subscribes to the room in the background (as for
    // any join), and then broadcasts from the other hubs reach it.
    engine.subscribed("vip", 1).await;
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

async fn orders_by_room_reach_the_members_on_every_hub<E: Engine>() {
    let engine = E::start().await;
    let [mut a, mut b, mut c] = three_nodes(&engine).await;
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
        match next(ws).await {
            TMessage::Close(Some(frame)) => {
                assert_eq!(frame.code, TCode::from(4001));
                assert_eq!(frame.reason.as_str(), "room closed");
            }
            other => panic!("expected the close, got {other:?}"),
        }
        finish(ws).await;
    }
    until("the hall is empty", || {
        all.iter().all(|n| n.hub.room_size("hall") == 0)
    })
    .await;
    assert_eq!(a.hub.cluster().connection_count().await.value, 1);
}

switchboard_suite::every_engine!(all;
    queries_sum_every_hub_and_name_who_replied,
    a_stopped_hub_is_named_missing_within_the_timeout,
    a_hub_that_is_gone_is_named_missing_at_once,
    remote_join_leave_and_disconnect_reach_a_client_on_another_hub,
    orders_by_room_reach_the_members_on_every_hub,
);
