//! Hubs on their own listeners over a `RedisBroker`, and tokio-tungstenite clients
//! that join a room: what the TLS and Sentinel tests share.

#![allow(dead_code, unreachable_pub)]

use futures_util::StreamExt;
use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use switchboard::hub::{Connection, Handler, Hub, HubConfig};
use switchboard_redis::{BrokerStats, RedisBroker};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_tungstenite::tungstenite::Message as TMessage;

/// Fails the test rather than hang when `what` does not happen within `limit`.
pub async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Waits (at most `limit`) until `condition` holds.
pub async fn until(what: &str, limit: Duration, condition: impl Fn() -> bool) {
    within(what, limit, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A prefix no other test or run shares.
pub fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    format!("switchboard-test:{test}:{}:{nanos}", std::process::id())
}

/// Joins the route's `{room}` on open.
struct Joiner;

impl Handler for Joiner {
    async fn on_open(&self, conn: &Connection) {
        if let Some(room) = conn.param("room") {
            conn.join(room);
        }
    }
}

/// A hub on its own listener; its server task ends with it.
pub struct Node {
    pub hub: Hub,
    pub addr: SocketAddr,
    pub stats: BrokerStats,
    served: JoinHandle<std::io::Result<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.served.abort();
    }
}

/// A hub of `config` (one heartbeat only) on `broker`, serving `/chat/{room}`.
pub async fn serve(broker: RedisBroker, config: HubConfig) -> Node {
    let stats = broker.stats();
    let hub = Hub::with_broker(config.node_heartbeat(Duration::from_secs(3600)), broker);
    let app = axum::Router::new().route("/chat/{room}", switchboard::ws(hub.clone(), Joiner));
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
        served,
    }
}

/// The texts a client of `room` on `node` receives, as they come, until its
/// connection ends (open means joined: the room is the hub's when this returns).
pub async fn member(node: &Node, room: &str) -> Arc<Mutex<Vec<String>>> {
    let url = format!("ws://{}/chat/{room}", node.addr);
    let connect = tokio_tungstenite::connect_async(url);
    let (mut ws, _) = within("a client", Duration::from_secs(10), connect)
        .await
        .unwrap();
    let texts = Arc::new(Mutex::new(Vec::new()));
    let received = texts.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let TMessage::Text(text) = message {
                received.lock().unwrap().push(text.to_string());
            }
        }
    });
    texts
}

/// How many texts `texts` holds now.
pub fn count(texts: &Mutex<Vec<String>>) -> usize {
    texts.lock().unwrap().len()
}

/// How many subscribers the server of `conn` counts on `channel` (`PUBSUB NUMSUB`).
pub async fn subscribers(conn: &mut redis::aio::MultiplexedConnection, channel: &str) -> usize {
    let counts: Vec<(String, usize)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .expect("PUBSUB NUMSUB");
    counts.first().map_or(0, |(_, count)| *count)
}

/// Waits until the server of `conn` counts `expected` subscribers on `channel`.
pub async fn until_subscribers(
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    expected: usize,
) {
    let what = format!("{expected} subscribers on {channel}");
    within(&what, Duration::from_secs(15), async {
        while subscribers(conn, channel).await != expected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
