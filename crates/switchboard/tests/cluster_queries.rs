//! Cluster-wide queries of hubs in one process, wired through `MemoryNetwork`: a hub
//! that just started, a hub alone, queries as `Send` futures, a channels endpoint's
//! count of a topic's subscribers. The cluster's queries and orders across hubs, a
//! stopped hub among them, are in the one suite every engine runs
//! (`crates/switchboard-suite/tests/cluster/queries.rs`).

mod common;

use common::{
    hub::{Client, HubServer, connect, serve},
    within,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use switchboard::{
    CloseCode,
    channels::{Channel, Channels, Endpoint, Socket},
    hub::{Connections, Hub, HubConfig, MemoryNetwork, NodeId},
};
use tokio_tungstenite::tungstenite::Message as TMessage;

/// Heartbeats every 20 ms; a silent hub is dead after 2 s, well after the queries'
/// timeouts of these tests.
fn config() -> HubConfig {
    HubConfig::default()
        .node_heartbeat(Duration::from_millis(20))
        .node_timeout(Duration::from_secs(2))
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

fn sorted(mut nodes: Vec<NodeId>) -> Vec<NodeId> {
    nodes.sort_unstable();
    nodes
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
