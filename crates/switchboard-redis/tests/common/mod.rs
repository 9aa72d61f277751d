//! Hubs on real TCP listeners, each attached to the Redis at 127.0.0.1:6379 (or one a
//! test starts, [`OwnRedis`]) through its own `RedisBroker`, and tokio-tungstenite
//! clients of them.

#![allow(dead_code, unreachable_pub)]

use futures_util::StreamExt;
use std::{future::Future, net::SocketAddr, time::Duration};
use switchboard::{
    Message,
    hub::{Connection, Handler, Hub, HubConfig},
};
use switchboard_redis::{BrokerStats, RedisBroker, RedisConfig};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
    task::JoinHandle,
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message as TMessage};

pub const REDIS: &str = "redis://127.0.0.1:6379/";

/// Fails the test rather than hang when `what` does not happen in time.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A prefix no other test or run shares.
pub fn unique_prefix(test: &str) -> String {
    format!("switchboard-test:{test}:{}", rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ u64::from(std::process::id()) << 32
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

/// A hub on its own listener, attached to Redis under `prefix`, subscribed to its own
/// channels.
pub struct Node {
    pub hub: Hub,
    pub addr: SocketAddr,
    pub stats: BrokerStats,
    opened: UnboundedReceiver<Connection>,
    served: JoinHandle<std::io::Result<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.served.abort();
    }
}

/// Two hubs on one new prefix, for the test `test`; with the prefix.
pub async fn two_nodes(test: &str) -> (String, Node, Node) {
    let prefix = unique_prefix(test);
    let (a, b) = (node(&prefix).await, node(&prefix).await);
    (prefix, a, b)
}

/// Broadcasts `end` from both hubs, then collects what each reader got before its
/// second `end` (see [`read_until_ends`]).
pub async fn end_and_collect<const N: usize>(
    a: &Node,
    b: &Node,
    readers: [JoinHandle<Vec<String>>; N],
) -> Vec<Vec<String>> {
    a.hub.broadcast(Message::text("end"));
    b.hub.broadcast(Message::text("end"));
    let mut got = Vec::new();
    for reader in readers {
        got.push(within("a client", reader).await.unwrap());
    }
    got
}

pub async fn node(prefix: &str) -> Node {
    node_with(prefix, config(prefix)).await
}

/// The configuration [`node`] uses: `prefix`, and reconnections within 200 ms.
pub fn config(prefix: &str) -> RedisConfig {
    RedisConfig::default()
        .url(REDIS)
        .prefix(prefix)
        .max_backoff(Duration::from_millis(200))
}

/// A hub attached to Redis with `config`, whose prefix is `prefix`, like [`node`].
pub async fn node_with(prefix: &str, config: RedisConfig) -> Node {
    let config_url = config.url.clone();
    let broker = RedisBroker::connect(config)
        .await
        .expect("Redis at 127.0.0.1:6379");
    let node = serve_hub(broker).await;
    // The hub subscribes to `all`, then to its node's channel: once that one counts,
    // sends to this hub's connections reach it.
    let node_channel = format!("{prefix}:node:{}", node.hub.node());
    subscribers_at(&config_url, &node_channel, 1).await;
    node
}

/// A hub on `broker`, on its own listener, without waiting for Redis: the broker may
/// not have reached it yet.
pub async fn serve_hub(broker: RedisBroker) -> Node {
    let stats = broker.stats();
    // One heartbeat, at start: the counts of the tests are not blurred by more.
    let config = HubConfig::default().node_heartbeat(Duration::from_secs(3600));
    let hub = Hub::with_broker(config, broker);
    let (tx, opened) = unbounded_channel();
    let app = axum::Router::new()
        .route(
            "/chat/{room}",
            switchboard::ws(hub.clone(), Opener(tx.clone())),
        )
        .route("/ws", switchboard::ws(hub.clone(), Opener(tx)))
        .route("/health", switchboard::health())
        .route("/ready", switchboard::ready(hub.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn({
        let hub = hub.clone();
        async move { switchboard::serve(listener, app, &hub).await }
    });
    Node {
        hub,
        addr,
        stats,
        opened,
        served,
    }
}

/// Waits until `ready()` says `expected`.
pub async fn until_ready(what: &str, expected: bool, ready: impl Fn() -> bool) {
    within(&format!("{what} ready: {expected}"), async {
        while ready() != expected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A client on `path` of `node`, with the server's handle of its connection.
pub async fn client(node: &mut Node, path: &str) -> (Connection, Client) {
    let url = format!("ws://{}{path}", node.addr);
    let (ws, _) = within("connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    let conn = within("on_open", node.opened.recv()).await.unwrap();
    (conn, ws)
}

/// Reads texts until `ends` texts `end` have arrived.
pub fn read_until_ends(mut ws: Client, ends: usize) -> JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut texts = Vec::new();
        let mut seen = 0;
        while seen < ends {
            match within("a message", ws.next()).await {
                Some(Ok(TMessage::Text(text))) if text.as_str() == "end" => seen += 1,
                Some(Ok(TMessage::Text(text))) => texts.push(text.to_string()),
                other => panic!("expected text, got {other:?}"),
            }
        }
        texts
    })
}

/// Waits until Redis counts `expected` subscribers on `channel`.
pub async fn subscribers(channel: &str, expected: i64) {
    subscribers_at(REDIS, channel, expected).await;
}

/// Waits until the Redis at `url` counts `expected` subscribers on `channel`.
pub async fn subscribers_at(url: &str, channel: &str, expected: i64) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    within(&format!("{expected} subscribers on {channel}"), async {
        loop {
            let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query_async(&mut conn)
                .await
                .unwrap();
            if counts.first().map(|(_, n)| *n) == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// The status code and body of `GET path` on `addr`.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    within(path, tcp.read_to_string(&mut response))
        .await
        .unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, body.to_owned())
}

/// A Redis server of one test, on a port of its own (never the shared 6379), that the
/// test can stop, pause and start again on the same port; resumed and killed when
/// dropped, so that a failing test leaves no stopped or stray server behind.
pub struct OwnRedis {
    pub port: u16,
    process: Option<std::process::Child>,
}

impl OwnRedis {
    /// Starts `redis-server` on a free port, without persistence, and waits until it
    /// answers.
    pub async fn start() -> Self {
        let mut redis = Self::reserve();
        redis.restart().await;
        redis
    }

    /// A free port for a server not started yet (see [`OwnRedis::restart`]): Redis
    /// down when the hub starts.
    pub fn reserve() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        Self {
            port,
            process: None,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL: its clients see their connections reset, as on a
    /// crash) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            self.signal("CONT");
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Stops the server without closing anything (SIGSTOP): a stalled link.
    pub fn pause(&self) {
        assert!(self.signal("STOP"), "SIGSTOP redis-server");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        assert!(self.signal("CONT"), "SIGCONT redis-server");
    }

    fn signal(&self, name: &str) -> bool {
        let Some(process) = &self.process else {
            return false;
        };
        std::process::Command::new("kill")
            .args([&format!("-{name}"), &process.id().to_string()])
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Runs a command on the server, for the test's own checks and settings.
    pub async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        command.query_async(&mut conn).await.unwrap()
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        let process = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        self.process = Some(process);
        let url = self.url();
        within("redis-server to answer", async {
            loop {
                let client = redis::Client::open(url.as_str()).unwrap();
                if client.get_multiplexed_async_connection().await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

/// The id of the subscriber connection of the hub `node`, as `CLIENT LIST` shows it
/// (the broker names it `switchboard-sub-<node id>`), for `CLIENT KILL ID`.
pub async fn subscriber_of(redis: &OwnRedis, node: switchboard::hub::NodeId) -> String {
    let list: String = redis.query(redis::cmd("CLIENT").arg("LIST")).await;
    let name = format!("name=switchboard-sub-{node} ");
    let line = list
        .lines()
        .find(|line| line.contains(&name))
        .unwrap_or_else(|| panic!("no {name} in {list}"));
    let id = line.split(' ').find_map(|field| field.strip_prefix("id="));
    id.unwrap().to_owned()
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
