//! What the TLS, Sentinel and Cluster tests share, beside the suite's support: hubs
//! on a `RedisBroker` of their own configuration, clients that join a room and keep
//! what they receive, and traffic through a failover.

#![allow(dead_code, unreachable_pub)]

use futures_util::StreamExt;
use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};
use switchboard::{
    Message,
    hub::{Connection, Handler, History, Hub, HubConfig, Position, StreamFuture},
};
use switchboard_redis::{BrokerStats, RedisBroker, RedisConfig};
use switchboard_suite::support::{self, Node, until, within};
use switchboard_suite::{engines::redis_cluster::config, servers::redis_cluster::RedisCluster};
use tokio::task::JoinHandle;
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

/// A hub on `cluster` (the default prefix: the cluster is the test's own), its rooms
/// named `h…` with history (members get `<offset> <text>`), once ready.
pub async fn cluster_hub(cluster: &RedisCluster) -> (Node, BrokerStats) {
    // `RUST_LOG=switchboard_redis=debug` shows how the hubs follow the cluster.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let prefix = RedisConfig::default().prefix;
    let broker = RedisBroker::new(config(&cluster.urls(), &prefix)).unwrap();
    let hub_config = framed_history("h*").node_heartbeat(Duration::from_secs(3600));
    let (node, stats) = serve(broker, hub_config).await;
    until("the hub to be ready", || node.hub.is_ready()).await;
    (node, stats)
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

/// A hub config whose rooms matching `pattern` keep history, their members getting
/// `<offset> <text>`.
pub fn framed_history(pattern: &str) -> HubConfig {
    HubConfig::default().history_framed(
        pattern,
        History::default().max_len(100_000),
        |message, position| {
            let text = match message {
                Message::Text(text) => text.as_str().to_owned(),
                _ => String::new(),
            };
            Message::text(format!("{} {text}", position.offset))
        },
    )
}

/// Traffic through a failover: hub `a` publishes numbers to a live room, to a client
/// on hub `b`, and `b` to a room with history, to a client on `a`, so that a's losses
/// and b's gaps are the live room's alone.
pub struct Traffic {
    a: Hub,
    b: Hub,
    rooms: [String; 2],
    /// What the live room's client got.
    live: Arc<Mutex<Vec<String>>>,
    /// What the history room's client got, `<offset> <n>`.
    history: Arc<Mutex<Vec<String>>>,
    publishing: Arc<AtomicBool>,
}

/// What [`Traffic::start`] published: how many of each, and the history room's
/// publishes, with their numbers.
type Published = (u64, Vec<(u64, StreamFuture<Position>)>);

impl Traffic {
    /// The clients of the `live` room on `b` and of the `history` room on `a`.
    pub async fn new(a: &Node, b: &Node, live: &str, history: &str) -> Self {
        Self {
            a: a.hub.clone(),
            b: b.hub.clone(),
            rooms: [live.to_owned(), history.to_owned()],
            live: member(b, live).await,
            history: member(a, history).await,
            publishing: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Publishes to both rooms through `failover` (a future that kills the master
    /// and returns once another one serves), and checks what arrived (see
    /// [`Traffic::check`]) once both hubs are ready again and 50 more of the live
    /// room arrived.
    pub async fn through(
        self,
        failover: impl Future<Output = ()>,
        a_stats: &BrokerStats,
        b_stats: &BrokerStats,
    ) {
        let publisher = self.start();
        until("deliveries before the failover", || count(&self.live) >= 50).await;
        failover.await;
        until("both hubs ready again", || {
            self.a.is_ready() && self.b.is_ready()
        })
        .await;
        let resumed = count(&self.live);
        until("deliveries after the failover", || {
            count(&self.live) >= resumed + 50
        })
        .await;
        self.check(publisher, a_stats, b_stats).await;
    }

    /// Publishes one number to each room every 5 ms until [`Traffic::check`].
    fn start(&self) -> JoinHandle<Published> {
        let (a, b, publishing) = (self.a.clone(), self.b.clone(), self.publishing.clone());
        let [live, history] = self.rooms.clone();
        tokio::spawn(async move {
            let (mut sent, mut stream) = (0, Vec::new());
            while publishing.load(Relaxed) {
                a.to(&live).send_text(sent.to_string());
                stream.push((sent, b.to(&history).publish(sent.to_string())));
                sent += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (sent, stream)
        })
    }

    /// Stops `publisher` and checks, once the last of each room arrived: the live
    /// room's numbers in order, and every one missing counted, as lost by a, missed
    /// by b, or unconfirmed by a (a publish whose answer never came may or may not
    /// have gone out); the history room's offsets 1, 2, … without a gap, and every
    /// confirmed publish delivered.
    async fn check(self, publisher: JoinHandle<Published>, a: &BrokerStats, b: &BrokerStats) {
        self.publishing.store(false, Relaxed);
        let (last, stream) = within("the publisher", publisher).await.unwrap();
        let sent = last + 1;
        self.a.to(&self.rooms[0]).send_text(last.to_string());
        let end = self.b.to(&self.rooms[1]).publish(last.to_string());
        let end = within("the last publish", end)
            .await
            .expect("published after the failover");
        until("the last of the live room", || {
            numbers(&self.live, false).last() == Some(&(0, last))
        })
        .await;
        until("the last of the history room", || {
            numbers(&self.history, true).last() == Some(&(end.offset, last))
        })
        .await;

        let got: Vec<u64> = numbers(&self.live, false).iter().map(|(_, n)| *n).collect();
        assert!(
            got.windows(2).all(|pair| pair[0] < pair[1]),
            "in order: {got:?}"
        );
        let missing = sent - got.len() as u64;
        let counted = a.lost() + b.missed() + a.unconfirmed();
        assert!(missing > 0, "the outage lost some of {sent}");
        assert!(missing <= counted, "{missing} missing, {counted} counted");
        assert!(a.reconnects() >= 1 && b.reconnects() >= 1);

        let got = numbers(&self.history, true);
        let offsets: Vec<u64> = got.iter().map(|(offset, _)| *offset).collect();
        assert_eq!(offsets, (1..=end.offset).collect::<Vec<_>>(), "gapless");
        let delivered: Vec<u64> = got.iter().map(|(_, n)| *n).collect();
        let mut undelivered = Vec::new();
        for (n, published) in stream {
            if published.await.is_ok() && !delivered.contains(&n) {
                undelivered.push(n);
            }
        }
        assert!(
            undelivered.is_empty(),
            "confirmed, not delivered: {undelivered:?}"
        );
    }
}

/// The numbers in `texts` (`<n>`, or `<offset> <n>` when `framed`).
fn numbers(texts: &Mutex<Vec<String>>, framed: bool) -> Vec<(u64, u64)> {
    let texts = texts.lock().unwrap();
    let parse = |text: &str| -> (u64, u64) {
        match text.split_once(' ') {
            Some((offset, n)) if framed => (offset.parse().unwrap(), n.parse().unwrap()),
            _ => (0, text.parse().unwrap()),
        }
    };
    texts.iter().map(|text| parse(text)).collect()
}
