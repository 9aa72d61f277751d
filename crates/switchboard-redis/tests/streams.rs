//! Streams with history on Redis, hub to hub, with tokio-tungstenite clients: a client
//! that comes back on another hub gets exactly what it missed, then live messages; the
//! clients of a hub killed with SIGKILL while others publish come back elsewhere with
//! no gap and no duplicate; a hub whose pub/sub link is killed (`CLIENT KILL`) fills
//! the gap before its members see it; a Redis restarted without its data makes a
//! returning client "not recovered", in a new epoch.
//!
//! Members get each message as `<offset> <epoch> <text>` (the hub's framing), and a
//! client that joins from a position is then told `recovery <recovered> <offset>
//! <epoch> <missed>`. The killed hub is this test binary run again as a child (see
//! `cluster_queries.rs`).

mod common;

use common::{OwnRedis, REDIS, subscriber_of, subscribers_at, unique_prefix, within};
use futures_util::{StreamExt, future::join_all};
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};
use switchboard::{
    Message,
    hub::{Connection, Handler, History, Hub, HubConfig, Position},
};
use switchboard_redis::{BrokerStats, RedisBroker};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_tungstenite::tungstenite::Message as TMessage;

const ROOM: &str = "r";

/// Set in the child's environment to the Redis prefix it joins: the test then runs as
/// the child hub.
const CHILD_PREFIX: &str = "SWITCHBOARD_TEST_STREAMS_CHILD_PREFIX";

/// Room `r` keeps enough history for every test here; members see positions.
fn hub_config() -> HubConfig {
    HubConfig::default()
        .node_heartbeat(Duration::from_secs(3600))
        .history_framed(
            ROOM,
            History::default().max_len(5000),
            |message, position| {
                let text = match message {
                    Message::Text(text) => text.as_str().to_owned(),
                    _ => String::new(),
                };
                Message::text(format!("{} {} {text}", position.offset, position.epoch))
            },
        )
}

/// Joins `r`, from `?offset=N&epoch=E` when given, and then says how it went.
struct Joiner;

impl Handler for Joiner {
    async fn on_open(&self, conn: &Connection) {
        let since = conn
            .query("offset")
            .and_then(|offset| offset.parse().ok())
            .zip(conn.query("epoch").and_then(|epoch| epoch.parse().ok()));
        let Some((offset, epoch)) = since else {
            conn.join(ROOM);
            return;
        };
        let recovery = conn
            .join_from(ROOM, Position::new(offset, epoch))
            .await
            .unwrap();
        let position = recovery
            .position
            .expect("Redis answered: the position is known");
        conn.send_text(format!(
            "recovery {} {} {} {}",
            recovery.recovered, position.offset, position.epoch, recovery.missed
        ));
    }
}

/// A hub on its own listener, attached to the Redis at `url` under `prefix`.
struct StreamHub {
    hub: Hub,
    addr: SocketAddr,
    stats: BrokerStats,
    served: JoinHandle<std::io::Result<()>>,
}

impl Drop for StreamHub {
    fn drop(&mut self) {
        self.served.abort();
    }
}

async fn stream_hub(url: &str, prefix: &str) -> StreamHub {
    let config = common::config(prefix).url(url);
    let broker = RedisBroker::connect(config).await.unwrap();
    let stats = broker.stats();
    let hub = Hub::with_broker(hub_config(), broker);
    let app = axum::Router::new().route("/s", switchboard::ws(hub.clone(), Joiner));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn({
        let hub = hub.clone();
        async move { switchboard::serve(listener, app, &hub).await }
    });
    common::until_ready("the hub", true, || hub.is_ready()).await;
    StreamHub {
        hub,
        addr,
        stats,
        served,
    }
}

type Client = common::Client;

/// A client of `addr`, from `since` when given.
async fn connect(addr: SocketAddr, since: Option<Position>) -> Client {
    let query = since.map_or(String::new(), |at| {
        format!("?offset={}&epoch={}", at.offset, at.epoch)
    });
    let url = format!("ws://{addr}/s{query}");
    let (ws, _) = within("connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    ws
}

/// What a client got: a message at its position, or how its join from a position went.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Message(Position, String),
    Recovery {
        recovered: bool,
        position: Position,
        missed: usize,
    },
}

fn parse(text: &str) -> Got {
    let words: Vec<&str> = text.splitn(5, ' ').collect();
    if words[0] == "recovery" {
        return Got::Recovery {
            recovered: words[1] == "true",
            position: Position::new(words[2].parse().unwrap(), words[3].parse().unwrap()),
            missed: words[4].parse().unwrap(),
        };
    }
    let (offset, rest) = text.split_once(' ').unwrap();
    let (epoch, text) = rest.split_once(' ').unwrap();
    let position = Position::new(offset.parse().unwrap(), epoch.parse().unwrap());
    Got::Message(position, text.to_owned())
}

/// The next thing the client got; `None` when its connection ended.
async fn next(ws: &mut Client) -> Option<Got> {
    loop {
        match within("a message", ws.next()).await {
            Some(Ok(TMessage::Text(text))) => return Some(parse(text.as_str())),
            Some(Ok(TMessage::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// The next `n` messages.
async fn messages(ws: &mut Client, n: usize) -> Vec<(Position, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        match next(ws).await {
            Some(Got::Message(position, text)) => got.push((position, text)),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    got
}

async fn publish(hub: &Hub, text: String) -> Position {
    within("a publish", hub.to(ROOM).publish(Message::text(text)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_on_another_hub_gets_the_500_it_missed_in_order_then_live_ones() {
    let prefix = unique_prefix("streams-500");
    let (a, b) = (
        stream_hub(REDIS, &prefix).await,
        stream_hub(REDIS, &prefix).await,
    );
    let mut ws = connect(a.addr, None).await;
    subscribers_at(REDIS, &format!("{prefix}:room:{ROOM}"), 1).await;
    for i in 0..10 {
        publish(&b.hub, format!("before {i}")).await;
    }
    let before = messages(&mut ws, 10).await;
    let last = before[9].0;
    assert_eq!(last.offset, 10);
    ws.close(None).await.unwrap();

    let mut published = Vec::new();
    for i in 0..500 {
        published.push((
            publish(&b.hub, format!("missed {i}")).await,
            format!("missed {i}"),
        ));
    }
    let mut back = connect(b.addr, Some(last)).await;
    assert_eq!(messages(&mut back, 500).await, published);
    let told = next(&mut back).await.unwrap();
    let top = Position::new(510, last.epoch);
    assert_eq!(
        told,
        Got::Recovery {
            recovered: true,
            position: top,
            missed: 500
        }
    );
    for i in 0..5 {
        publish(&a.hub, format!("live {i}")).await;
    }
    let live: Vec<u64> = messages(&mut back, 5)
        .await
        .iter()
        .map(|(position, _)| position.offset)
        .collect();
    assert_eq!(live, [511, 512, 513, 514, 515]);
}

/// The child hub: serves until the test (its stdin) goes away, or a SIGKILL.
async fn run_child(prefix: &str) {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let hub = stream_hub(REDIS, prefix).await;
    println!("NODE {}", hub.addr);
    std::future::pending::<()>().await;
}

/// The child process, killed when dropped.
struct ChildHub {
    process: Child,
    addr: SocketAddr,
}

impl ChildHub {
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
        let mut guard = Self {
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .find_map(|line| line.split_once("NODE ").map(|(_, rest)| rest.to_owned()))
        });
        let line = within("the child hub", line).await.unwrap();
        guard.addr = line.expect("the child's NODE line").parse().unwrap();
        guard
    }

    fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for ChildHub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a client got, in order, and the recoveries it was told.
type Followed = (Vec<(Position, String)>, Vec<Got>);

/// Reads until `end`, coming back on `elsewhere` from its last position when its
/// connection ends.
fn follow(mut ws: Client, elsewhere: SocketAddr, seen: Arc<AtomicUsize>) -> JoinHandle<Followed> {
    tokio::spawn(async move {
        let (mut got, mut recoveries) = (Vec::new(), Vec::new());
        loop {
            match next(&mut ws).await {
                Some(Got::Message(position, text)) => {
                    let end = text == "end";
                    got.push((position, text));
                    seen.fetch_add(1, Relaxed);
                    if end {
                        return (got, recoveries);
                    }
                }
                Some(recovery) => recoveries.push(recovery),
                None => {
                    let last: Option<&(Position, String)> = got.last();
                    let last = last.expect("a message before the kill").0;
                    ws = connect(elsewhere, Some(last)).await;
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_of_a_killed_hub_come_back_elsewhere_without_gap_or_duplicate() {
    const TEST: &str = "the_clients_of_a_killed_hub_come_back_elsewhere_without_gap_or_duplicate";
    if let Ok(prefix) = std::env::var(CHILD_PREFIX) {
        return run_child(&prefix).await;
    }
    const CLIENTS: usize = 4;
    const EACH: usize = 400;
    let prefix = unique_prefix("streams-sigkill");
    let (a, b) = (
        stream_hub(REDIS, &prefix).await,
        stream_hub(REDIS, &prefix).await,
    );
    let mut child = ChildHub::start(TEST, &prefix).await;
    let seen: Vec<Arc<AtomicUsize>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let mut followers = Vec::new();
    for (i, seen) in seen.iter().enumerate() {
        let elsewhere = if i % 2 == 0 { a.addr } else { b.addr };
        let ws = connect(child.addr, None).await;
        followers.push(follow(ws, elsewhere, seen.clone()));
    }
    subscribers_at(REDIS, &format!("{prefix}:room:{ROOM}"), 1).await;

    // Both hubs publish at once, a message every 2 ms each, not waiting for Redis.
    let publishing = [&a.hub, &b.hub].map(|hub| {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut positions = Vec::new();
            for i in 0..EACH {
                let text = format!("{} {i}", hub.node());
                let position = hub.to(ROOM).publish(Message::text(text.clone()));
                positions.push(async move { (position.await.unwrap(), text) });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            join_all(positions).await
        })
    });
    within("every client to get 20 messages", async {
        while seen.iter().any(|seen| seen.load(Relaxed) < 20) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    child.kill();
    let mut published: HashMap<u64, String> = HashMap::new();
    for publisher in publishing {
        let positions = within("the publishers", publisher).await.unwrap();
        assert!(
            positions.len() == EACH,
            "a publisher lost some: {}",
            positions.len()
        );
        published.extend(positions.into_iter().map(|(at, text)| (at.offset, text)));
    }
    let end = publish(&a.hub, "end".to_owned()).await;
    published.insert(end.offset, "end".to_owned());
    assert_eq!(published.len() as u64, end.offset, "offsets are contiguous");

    for follower in followers {
        let (got, recoveries) = within("a client", follower).await.unwrap();
        let offsets: Vec<u64> = got.iter().map(|(at, _)| at.offset).collect();
        assert_eq!(offsets, (1..=end.offset).collect::<Vec<_>>());
        for (at, text) in &got {
            assert_eq!((at.epoch, text), (end.epoch, &published[&at.offset]));
        }
        // The kill did cut it off, and it recovered.
        assert_eq!(recoveries.len(), 1, "{recoveries:?}");
        assert!(matches!(
            recoveries[0],
            Got::Recovery {
                recovered: true,
                ..
            }
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pubsub_link_leaves_no_gap_for_the_members() {
    let redis = OwnRedis::start().await;
    let prefix = unique_prefix("streams-client-kill");
    let a = stream_hub(&redis.url(), &prefix).await;
    let b = stream_hub(&redis.url(), &prefix).await;
    let ws = connect(b.addr, None).await;
    subscribers_at(&redis.url(), &format!("{prefix}:room:{ROOM}"), 1).await;
    let follower = follow(ws, b.addr, Arc::default());
    let killed = subscriber_of(&redis, b.hub.node()).await;
    let mut positions = Vec::new();
    for i in 0..600 {
        positions.push(a.hub.to(ROOM).publish(Message::text(format!("m {i}"))));
        if i == 100 {
            let _: u64 = redis
                .query(redis::cmd("CLIENT").arg("KILL").arg("ID").arg(&killed))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for position in within("the publishes", join_all(positions)).await {
        position.unwrap();
    }
    let end = publish(&a.hub, "end".to_owned()).await;
    let (got, recoveries) = within("the member", follower).await.unwrap();
    let offsets: Vec<u64> = got.iter().map(|(at, _)| at.offset).collect();
    assert_eq!(offsets, (1..=end.offset).collect::<Vec<_>>());
    assert!(recoveries.is_empty(), "the member stayed connected");
    assert!(b.stats.reconnects() >= 1, "the kill did not cut the link");
    let filled = b.hub.metrics().stream_filled;
    assert!(filled > 0, "nothing was missed: the test shows nothing");
    eprintln!(
        "CLIENT KILL: {filled} filled from Redis, {} reads",
        b.hub.metrics().stream_reads
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_without_its_data_makes_a_returning_client_not_recovered() {
    let mut redis = OwnRedis::start().await;
    let prefix = unique_prefix("streams-restart");
    let a = stream_hub(&redis.url(), &prefix).await;
    let mut ws = connect(a.addr, None).await;
    subscribers_at(&redis.url(), &format!("{prefix}:room:{ROOM}"), 1).await;
    for i in 0..5 {
        publish(&a.hub, format!("m {i}")).await;
    }
    let last = messages(&mut ws, 5).await[4].0;
    ws.close(None).await.unwrap();

    redis.restart().await;
    within("the hub to reconnect", async {
        while a.stats.reconnects() == 0 || !a.hub.is_ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut back = connect(a.addr, Some(last)).await;
    let Some(Got::Recovery {
        recovered,
        position,
        missed,
    }) = next(&mut back).await
    else {
        panic!("expected the recovery");
    };
    assert!(!recovered);
    assert_ne!(position.epoch, last.epoch);
    assert_eq!((position.offset, missed), (0, 0));
    // Live from there, in the new epoch.
    let after = publish(&a.hub, "after".to_owned()).await;
    assert_eq!(after, Position::new(1, position.epoch));
    assert_eq!(messages(&mut back, 1).await, [(after, "after".to_owned())]);
}
