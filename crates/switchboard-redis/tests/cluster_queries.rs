//! Cluster-wide queries and remote control on three hubs attached to the real Redis
//! at 127.0.0.1:6379 (a prefix of their own), through their own brokers: answers sum
//! every hub; a hub in a process stopped with SIGSTOP is named missing and the query
//! returns within its timeout; joins, leaves and disconnections of a connection on
//! another hub reach its WebSocket client.
//!
//! The stopped hub is this test binary run again as a child (`current_exe`, `--exact`
//! the test, with [`CHILD_PREFIX`] set): a process of its own, that a signal can stop
//! without stopping the test. A guard resumes and kills it whatever happens, and the
//! child exits by itself when its stdin (held by the test) closes.

mod common;

use common::{REDIS, subscribers_at, unique_prefix, within};
use futures_util::StreamExt;
use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use switchboard::{
    CloseCode,
    hub::{ClusterAnswer, Connection, Connections, Handler, Hub, HubConfig, NodeId},
};
use switchboard_redis::{RedisBroker, RedisConfig};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
    task::JoinHandle,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message as TMessage, protocol::frame::coding::CloseCode as TCode},
};

/// Set in the child's environment to the Redis prefix it joins: the test then runs as
/// the child hub.
const CHILD_PREFIX: &str = "SWITCHBOARD_TEST_QUERIES_CHILD_PREFIX";

/// Heartbeats every 100 ms; queries wait 500 ms; a silent hub is dead after 10 s, well
/// after the stopped hub's four queries (a hub taken for dead is no longer waited for).
fn config() -> HubConfig {
    HubConfig::default()
        .node_heartbeat(Duration::from_millis(100))
        .node_timeout(Duration::from_secs(10))
        .cluster_timeout(Duration::from_millis(500))
}

/// Joins the route's `{room}` on open and hands the connection to the test.
struct Opener(UnboundedSender<Connection>);

impl Handler for Opener {
    async fn on_open(&self, conn: &Connection) {
        if let Some(room) = conn.param("room") {
            conn.join(room);
        }
        let _ = self.0.send(conn.clone());
    }
}

/// A hub on its own listener, attached to Redis under `prefix`.
struct Node {
    hub: Hub,
    addr: SocketAddr,
    opened: UnboundedReceiver<Connection>,
    served: JoinHandle<std::io::Result<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.served.abort();
    }
}

async fn node(prefix: &str) -> Node {
    let redis = RedisConfig::default().url(REDIS).prefix(prefix);
    let broker = RedisBroker::connect(redis)
        .await
        .expect("Redis at 127.0.0.1:6379");
    let hub = Hub::with_broker(config(), broker);
    // Requests to this hub reach it once its own channel is subscribed.
    subscribers_at(REDIS, &format!("{prefix}:node:{}", hub.node()), 1).await;
    let (tx, opened) = unbounded_channel();
    let app = axum::Router::new().route("/chat/{room}", switchboard::ws(hub.clone(), Opener(tx)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn({
        let hub = hub.clone();
        async move { switchboard::serve(listener, app, &hub).await }
    });
    Node {
        hub,
        addr,
        opened,
        served,
    }
}

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(addr: SocketAddr, path: &str) -> Client {
    let url = format!("ws://{addr}{path}");
    within("connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .0
}

/// A client on `path` of `node`, with the server's handle of its connection.
async fn client(node: &mut Node, path: &str) -> (Connection, Client) {
    let ws = connect(node.addr, path).await;
    let conn = within("on_open", node.opened.recv()).await.unwrap();
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

/// Waits until `hub` knows exactly `nodes` to be alive.
async fn knows(hub: &Hub, nodes: &[NodeId]) {
    let mut nodes = nodes.to_vec();
    nodes.sort_unstable();
    within("the hubs to know each other", async {
        while hub.nodes() != nodes {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn sorted(mut nodes: Vec<NodeId>) -> Vec<NodeId> {
    nodes.sort_unstable();
    nodes
}

/// The child: a hub on `prefix` that prints its node id and address, then serves until
/// the test closes its stdin (or kills it).
async fn run_child(prefix: &str) {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let node = node(prefix).await;
    println!("NODE {} {}", node.hub.node(), node.addr);
    std::future::pending::<()>().await;
}

/// The child process; resumed and killed when dropped.
struct ChildHub {
    process: Child,
    node: NodeId,
    addr: SocketAddr,
}

impl ChildHub {
    /// Runs this binary's test `test` as a child hub on `prefix`.
    async fn start(test: &str, prefix: &str) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut process = Command::new(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD_PREFIX, prefix)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = process.stdout.take().unwrap();
        // Killed by the guard if it never says who it is.
        let mut guard = Self {
            process,
            node: NodeId::from_bits(0),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                // After libtest's "test <name> ... ", on the same line.
                .find_map(|line| line.split_once("NODE ").map(|(_, rest)| rest.to_owned()))
        });
        let line = within("the child hub", line).await.unwrap();
        let line = line.expect("the child hub's NODE line");
        let mut words = line.split(' ');
        guard.node = words.next().unwrap().parse().unwrap();
        guard.addr = words.next().unwrap().parse().unwrap();
        guard
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.process.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }

    /// Stops the child, and waits until every thread of it is stopped: `kill` returns
    /// once the signal is sent, and a thread still running could answer one more
    /// query.
    async fn stop(&self) {
        self.signal("-STOP");
        let tasks = format!("/proc/{}/task", self.process.id());
        within("the child to stop", async {
            while !all_stopped(&tasks) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    }
}

/// Whether every thread under `/proc/<pid>/task` is stopped (state `T`).
fn all_stopped(tasks: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(tasks) else {
        return false;
    };
    entries.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // "pid (comm) S ...": the state follows the command's closing parenthesis.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        state == Some('T')
    })
}

impl Drop for ChildHub {
    fn drop(&mut self) {
        // A stopped process dies of SIGKILL too, but resuming first is harmless.
        let _ = Command::new("kill")
            .args(["-CONT", &self.process.id().to_string()])
            .status();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// `answer` arrived within `bound` of `asked`, with `replied` and `missing` as said.
fn assert_partial<T>(
    answer: &ClusterAnswer<T>,
    asked: Instant,
    bound: std::ops::Range<Duration>,
    replied: &[NodeId],
    missing: NodeId,
) {
    let took = asked.elapsed();
    assert!(bound.contains(&took), "took {took:?}, not in {bound:?}");
    assert_eq!(answer.replied, sorted(replied.to_vec()));
    assert_eq!(answer.missing, [missing]);
    assert!(!answer.is_complete());
}

#[tokio::test]
async fn queries_with_a_stopped_node_return_within_the_timeout_and_name_it() {
    if let Ok(prefix) = std::env::var(CHILD_PREFIX) {
        return run_child(&prefix).await;
    }
    let prefix = unique_prefix("queries-stopped");
    let mut a = node(&prefix).await;
    let mut b = node(&prefix).await;
    let child = ChildHub::start(
        "queries_with_a_stopped_node_return_within_the_timeout_and_name_it",
        &prefix,
    )
    .await;
    let all = [a.hub.node(), b.hub.node(), child.node];
    knows(&a.hub, &all).await;
    knows(&b.hub, &all).await;
    let _clients = [
        client(&mut a, "/chat/lobby").await,
        client(&mut b, "/chat/lobby").await,
    ];
    let _remote = connect(child.addr, "/chat/lobby").await;
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

    child.stop().await;
    let timeout = Duration::from_millis(500);
    // Within the timeout, and not much past it: a second at most, on a loaded machine.
    let bound = timeout..timeout + Duration::from_secs(1);
    let live = [a.hub.node(), b.hub.node()];
    let asked = Instant::now();
    let size = a.hub.cluster().room_size("lobby").await;
    assert_partial(&size, asked, bound.clone(), &live, child.node);
    assert_eq!(size.value, 2, "what the live hubs hold");
    let asked = Instant::now();
    let members = b.hub.cluster().room_members("lobby").await;
    assert_partial(&members, asked, bound.clone(), &live, child.node);
    assert_eq!(members.value.len(), 2);
    assert!(members.value.iter().all(|m| m.node != child.node));
    let asked = Instant::now();
    let rooms = a.hub.cluster().rooms().await;
    assert_partial(&rooms, asked, bound.clone(), &live, child.node);
    let asked = Instant::now();
    let count = a.hub.cluster().connection_count().await;
    assert_partial(&count, asked, bound, &live, child.node);
    assert_eq!(count.value, 2);

    // Resumed before node_timeout: it answers again, and has kept its member.
    child.signal("-CONT");
    within("the resumed hub to answer", async {
        loop {
            let size = a.hub.cluster().room_size("lobby").await;
            if size.is_complete() {
                assert_eq!(size.value, 3);
                assert_eq!(size.replied, sorted(all.to_vec()));
                return;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn remote_orders_across_three_hubs_reach_the_clients() {
    let prefix = unique_prefix("queries-orders");
    let mut a = node(&prefix).await;
    let mut b = node(&prefix).await;
    let mut c = node(&prefix).await;
    let all = [a.hub.node(), b.hub.node(), c.hub.node()];
    for node in [&a, &b, &c] {
        knows(&node.hub, &all).await;
    }
    let (on_a, _a_ws) = client(&mut a, "/chat/lobby").await;
    let (on_b, mut b_ws) = client(&mut b, "/chat/lobby").await;
    let (on_c, mut c_ws) = client(&mut c, "/chat/games").await;

    let count = a.hub.cluster().connection_count().await;
    assert_eq!((count.value, count.is_complete()), (3, true));
    let rooms = b.hub.cluster().rooms().await;
    let expected = [("games".to_owned(), 1), ("lobby".to_owned(), 2)];
    assert_eq!(rooms.value.into_iter().collect::<Vec<_>>(), expected);
    let members = c.hub.cluster().room_members("lobby").await;
    let mut ids = vec![on_a.id(), on_b.id()];
    ids.sort_unstable();
    assert_eq!(members.value.iter().map(|m| m.id).collect::<Vec<_>>(), ids);

    // One connection, by id, from a hub that does not hold it.
    let joined = a.hub.cluster().join(on_c.id(), "vip").await;
    assert_eq!(
        (joined.value, joined.replied.clone()),
        (1, vec![c.hub.node()])
    );
    // A member now; hub c's broker subscribes to the room a round trip later (as for
    // any join), and then broadcasts from the other hubs reach it.
    assert!(on_c.in_room("vip"));
    subscribers_at(REDIS, &format!("{prefix}:room:vip"), 1).await;
    b.hub.to("vip").send_text("for vip");
    assert_eq!(next(&mut c_ws).await, TMessage::text("for vip"));
    let left = b.hub.cluster().leave(on_c.id(), "vip").await;
    assert_eq!((left.value, left.is_complete()), (1, true));
    b.hub.to("vip").send_text("for vip, after the leave");
    b.hub.send_to(on_c.id(), "end");
    assert_eq!(next(&mut c_ws).await, TMessage::text("end"));

    // By room, on every hub: the lobby joins the hall, then the hall is closed.
    let moved = c
        .hub
        .cluster()
        .join(Connections::in_room("lobby"), "hall")
        .await;
    assert_eq!((moved.value, moved.is_complete()), (2, true));
    assert!(on_a.in_room("hall") && on_b.in_room("hall"));
    let code = CloseCode::from(4002);
    let closed = c
        .hub
        .cluster()
        .disconnect(Connections::in_room("hall"), code, "hall closed")
        .await;
    assert_eq!((closed.value, closed.replied.len()), (2, 3));
    match next(&mut b_ws).await {
        TMessage::Close(Some(frame)) => {
            assert_eq!(frame.code, TCode::from(4002));
            assert_eq!(frame.reason.as_str(), "hall closed");
        }
        other => panic!("expected the close, got {other:?}"),
    }
    // And one, by id, on another hub.
    let kicked = a
        .hub
        .cluster()
        .disconnect(on_c.id(), CloseCode::from(4003), "kicked")
        .await;
    assert_eq!(kicked.value, 1);
    assert!(
        matches!(next(&mut c_ws).await, TMessage::Close(Some(f)) if f.code == TCode::from(4003))
    );
}
