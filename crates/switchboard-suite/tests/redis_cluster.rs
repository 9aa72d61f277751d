//! Hubs on a Redis Cluster of three masters (and a replica of each) that each test
//! starts: rooms on every shard reach WebSocket clients across hubs; a master killed
//! while a hub publishes fails over to its replica and delivery resumes, what was lost
//! counted and a room with history gapless; a room whose slot moves to another master
//! follows it.

use futures_util::StreamExt;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};
use switchboard::{
    Message,
    hub::{Connection, Handler, History, Hub, HubConfig},
};
use switchboard_redis::{BrokerStats, RedisBroker, RedisConfig};
use switchboard_suite::{
    engines::redis_cluster::config,
    servers::redis_cluster::{RedisCluster, query},
    support::{until, within},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message as WsMessage};

type Client = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Rooms named `h…` keep history: their members get `<offset> <text>`.
fn hub_config() -> HubConfig {
    HubConfig::default()
        .node_heartbeat(Duration::from_secs(3600))
        .history_framed(
            "h*",
            History::default().max_len(10_000),
            |message, position| {
                let text = match message {
                    Message::Text(text) => text.as_str().to_owned(),
                    _ => String::new(),
                };
                Message::text(format!("{} {text}", position.offset))
            },
        )
}

/// Joins the route's `{room}`.
struct Joiner;

impl Handler for Joiner {
    async fn on_open(&self, conn: &Connection) {
        if let Some(room) = conn.param("room") {
            conn.join(room);
        }
    }
}

/// A hub on its own listener, on the cluster.
struct TestHub {
    hub: Hub,
    addr: SocketAddr,
    stats: BrokerStats,
    served: JoinHandle<std::io::Result<()>>,
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.served.abort();
    }
}

async fn hub_on(cluster: &RedisCluster) -> TestHub {
    // `RUST_LOG=switchboard_redis=debug` shows how the hubs follow the cluster.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    // The default prefix: the cluster is this test's own.
    let prefix = RedisConfig::default().prefix;
    let broker = RedisBroker::new(config(&cluster.urls(), &prefix)).unwrap();
    let stats = broker.stats();
    let hub = Hub::with_broker(hub_config(), broker);
    let app = axum::Router::new().route("/chat/{room}", switchboard::ws(hub.clone(), Joiner));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn({
        let hub = hub.clone();
        async move { switchboard::serve(listener, app, &hub).await }
    });
    until("the hub to be ready", || hub.is_ready()).await;
    TestHub {
        hub,
        addr,
        stats,
        served,
    }
}

async fn client(hub: &TestHub, room: &str) -> Client {
    let url = format!("ws://{}/chat/{room}", hub.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws
}

/// The next text a client gets.
async fn next_text(ws: &mut Client) -> String {
    loop {
        match within("a message", ws.next()).await {
            Some(Ok(WsMessage::Text(text))) => return text.as_str().to_owned(),
            Some(Ok(_)) => {}
            other => panic!("the client's connection ended: {other:?}"),
        }
    }
}

/// The texts a client gets up to `last` (included).
async fn texts_until(ws: &mut Client, last: &str) -> Vec<String> {
    let mut texts = Vec::new();
    loop {
        let text = next_text(ws).await;
        let done = text.ends_with(last);
        texts.push(text);
        if done {
            return texts;
        }
    }
}

/// A room's channel on a Redis Cluster (the default prefix).
fn channel(room: &str) -> String {
    RedisConfig::default().cluster([""; 0]).channel_room(room)
}

/// Room names `<stem><n>`, each served by another master, one per master.
async fn rooms_on_each_master(cluster: &RedisCluster, stem: &str) -> Vec<(String, u16)> {
    let masters = cluster.masters().await;
    let mut rooms: Vec<(String, u16)> = Vec::new();
    for n in 0.. {
        let room = format!("{stem}{n}");
        let master = cluster
            .master_of(cluster.keyslot(&channel(&room)).await)
            .await;
        if rooms.iter().all(|(_, taken)| *taken != master) {
            rooms.push((room, master));
        }
        if rooms.len() == masters.len() {
            return rooms;
        }
    }
    unreachable!()
}

/// Returns once `hubs` hubs are subscribed to `room` on the master on `port`.
async fn until_subscribed(port: u16, room: &str, hubs: usize) {
    let channel = channel(room);
    let numsub = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg(&channel)
        .clone();
    within(&format!("{hubs} subscribers on {channel}"), async {
        loop {
            let counts: Vec<(String, usize)> = query(port, &numsub).await.unwrap_or_default();
            if counts.first().is_some_and(|(_, count)| *count == hubs) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_every_shard_reach_clients_across_hubs() {
    let cluster = RedisCluster::start().await;
    // A room's channel hashes where its stream's keys do, braces in its name or not.
    for room in ["lobby", "{x}", "a}b", "}", "{", "{}", "a{b}c"] {
        let slot = cluster.keyslot(&channel(room)).await;
        for key in [":s", ":m"] {
            let key = format!("{}{key}", channel(room));
            assert_eq!(cluster.keyslot(&key).await, slot, "{key}");
        }
    }
    let (a, b) = (hub_on(&cluster).await, hub_on(&cluster).await);
    let rooms = rooms_on_each_master(&cluster, "room").await;
    assert_eq!(rooms.len(), 3);
    let mut clients = Vec::new();
    for (room, master) in &rooms {
        clients.push(client(&b, room).await);
        until_subscribed(*master, room, 1).await;
    }
    for n in 0..10 {
        for (room, _) in &rooms {
            a.hub.to(room).send_text(format!("{room} {n}"));
        }
    }
    for ((room, _), ws) in rooms.iter().zip(&mut clients) {
        let expected: Vec<String> = (0..10).map(|n| format!("{room} {n}")).collect();
        assert_eq!(texts_until(ws, &format!("{room} 9")).await, expected);
    }
    assert!(a.stats.published() >= 30);
    assert_eq!(a.stats.lost() + b.stats.missed() + b.stats.malformed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_delivery_resumes() {
    let mut cluster = RedisCluster::start().await;
    let (a, b) = (hub_on(&cluster).await, hub_on(&cluster).await);
    // A room with history and one without, on the master about to die.
    let history = rooms_on_each_master(&cluster, "h").await.remove(0);
    let plain = rooms_on_each_master(&cluster, "p").await;
    let plain = plain
        .into_iter()
        .find(|(_, master)| *master == history.1)
        .unwrap();
    let mut history_ws = client(&b, &history.0).await;
    let mut plain_ws = client(&b, &plain.0).await;
    until_subscribed(history.1, &history.0, 1).await;
    until_subscribed(plain.1, &plain.0, 1).await;

    // `a` publishes to both rooms every 5 ms until told to stop.
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let publisher = tokio::spawn({
        let (hub, stop, sent) = (a.hub.clone(), stop.clone(), sent.clone());
        let rooms = (history.0.clone(), plain.0.clone());
        async move {
            while !stop.load(Relaxed) {
                let n = sent.load(Relaxed);
                hub.to(&rooms.0).send_text(format!("m{n}"));
                hub.to(&rooms.1).send_text(format!("m{n}"));
                sent.store(n + 1, Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    until("publishing to start", || sent.load(Relaxed) > 50).await;
    cluster.kill(history.1);
    cluster.until_ok().await;
    let resumed = sent.load(Relaxed) + 50;
    until("publishing after the failover", || {
        sent.load(Relaxed) > resumed
    })
    .await;
    until("hub b to be ready again", || b.hub.is_ready()).await;
    stop.store(true, Relaxed);
    publisher.await.unwrap();
    let last = format!("m{}", sent.load(Relaxed));
    a.hub.to(&history.0).send_text(last.clone());
    a.hub.to(&plain.0).send_text(last.clone());

    // Without history: in order, and what did not arrive is counted.
    let got = texts_until(&mut plain_ws, &last).await;
    let numbers: Vec<u64> = got.iter().map(|text| text[1..].parse().unwrap()).collect();
    assert!(
        numbers.windows(2).all(|pair| pair[0] < pair[1]),
        "{numbers:?}"
    );
    let sent = sent.load(Relaxed) + 1;
    let received = numbers.len() as u64;
    assert!(received < sent, "a failover loses something");
    assert!(
        received + b.stats.missed() + a.stats.unconfirmed() >= sent,
        "received {received}, missed {}, of {sent}",
        b.stats.missed()
    );
    assert!(a.stats.lost() > 0 || b.stats.missed() > 0);
    assert!(a.stats.reconnects() >= 1 && b.stats.reconnects() >= 1);

    // With history: every offset once, in order, for a client that stayed connected.
    let got = texts_until(&mut history_ws, &last).await;
    let offsets: Vec<u64> = got
        .iter()
        .map(|text| text.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        offsets.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{offsets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_follows_its_slot_to_another_master() {
    let cluster = RedisCluster::start().await;
    let (a, b) = (hub_on(&cluster).await, hub_on(&cluster).await);
    let (room, from) = rooms_on_each_master(&cluster, "m").await.remove(0);
    let mut ws = client(&b, &room).await;
    until_subscribed(from, &room, 1).await;
    a.hub.to(&room).send_text("before");
    assert_eq!(next_text(&mut ws).await, "before");

    let slot = cluster.keyslot(&channel(&room)).await;
    let masters = cluster.masters().await;
    let to = *masters.iter().find(|&&master| master != from).unwrap();
    cluster.move_slot(slot, to).await;
    assert_eq!(cluster.master_of(slot).await, to);
    until_subscribed(to, &room, 1).await;
    until("hub b to be ready again", || b.hub.is_ready()).await;
    // `a` publishes to the old master, which answers MOVED: the publish goes to the
    // new one, and `a` reconnects on the new map.
    a.hub.to(&room).send_text("after");
    assert_eq!(next_text(&mut ws).await, "after");
    assert_eq!(a.stats.lost() + b.stats.malformed(), 0);
    assert!(
        b.stats.reconnects() >= 1,
        "b followed the slot by reconnecting"
    );
}
