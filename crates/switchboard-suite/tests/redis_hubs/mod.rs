//! What the TLS and Sentinel tests share, beside the suite's support: hubs on a
//! `RedisBroker` of their own configuration, clients that join a room and keep what
//! they receive, and a server's count of subscribers.

#![allow(dead_code, unreachable_pub)]

use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use switchboard::hub::{Connection, Handler, Hub, HubConfig};
use switchboard_redis::{BrokerStats, RedisBroker};
use switchboard_suite::support::{self, Node, within};
use tokio_tungstenite::tungstenite::Message as TMessage;

/// Joins the route's `{room}` on open.
struct Joiner;

impl Handler for Joiner {
    async fn on_open(&self, conn: &Connection) {
        if let Some(room) = conn.param("room") {
            conn.join(room);
        }
    }
}

/// A hub of `config` on `broker`, serving `/chat/{room}`, without waiting for Redis
/// (it may never be reached); with the broker's counters.
pub async fn serve(broker: RedisBroker, config: HubConfig) -> (Node, BrokerStats) {
    let stats = broker.stats();
    let hub = Hub::with_broker(config, broker);
    let app = axum::Router::new().route("/chat/{room}", switchboard::ws(hub.clone(), Joiner));
    (support::serve(hub, app, ()).await, stats)
}

/// The texts a client of `room` on `node` receives, as they come, until its
/// connection ends (open means joined: the room is the hub's when this returns).
pub async fn member(node: &Node, room: &str) -> Arc<Mutex<Vec<String>>> {
    let mut ws = support::connect(node.addr, &format!("/chat/{room}")).await;
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

/// Waits until the server of `conn` counts `expected` subscribers on `channel`.
pub async fn until_subscribers(
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    expected: usize,
) {
    within(&format!("{expected} subscribers on {channel}"), async {
        loop {
            let counts: Vec<(String, usize)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query_async(conn)
                .await
                .expect("PUBSUB NUMSUB");
            if counts.first().map_or(0, |(_, count)| *count) == expected {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}
