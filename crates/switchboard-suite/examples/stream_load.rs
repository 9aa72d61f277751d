//! A bounded load run of streams with history: what history costs, and how fast a
//! crowd recovers. It stops by itself.
//!
//! ```sh
//! cargo run --release -p switchboard-suite --example stream_load
//! # options: --redis URL --messages 20000 --rate 1000 --secs 2 --receivers 100
//! #          --clients 10000 --rooms 100
//! ```
//!
//! 1. **History on vs off**, on the memory engine (two hubs on a `MemoryNetwork`) and on
//!    Redis (two hubs, each with its broker): `--receivers` WebSocket clients on one
//!    hub join a room, the other hub publishes to it. A burst of `--messages` gives the
//!    throughput (messages delivered to the slowest receiver per second, at most 512
//!    on their way); then `--rate` messages/s for `--secs` give the broadcast latency
//!    (publish to receipt, every receiver). The clients talk WebSocket over in-process
//!    pipes (`tokio::io::duplex`), as in part 2; `engine_load` measures the same on any
//!    engine.
//! 2. **Recovery of `--clients` after a restart** (Redis): the clients, spread over
//!    `--rooms` rooms, follow one hub; it goes away, 20 messages per room are
//!    published meanwhile, and every client comes back at once on a new hub (a
//!    restarted process) from its position. The run prints the time until every
//!    client has its missed messages and its recovery, the hub's engine reads
//!    (`switchboard_stream_reads_total`), and the `EVALSHA` calls Redis counted in that
//!    time. The clients talk WebSocket over in-process pipes (`tokio::io::duplex`),
//!    so that 10,000 of them need no file descriptors.

use futures_util::{StreamExt, future::join_all};
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard::{
    Message,
    hub::{Connection, Handler, History, Hub, HubConfig, MemoryNetwork, Position},
};
use switchboard_redis::{RedisBroker, RedisConfig};
use switchboard_suite::load::{Delivery, LoadError, PipeClient, hub_config, pipe_client};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Debug, Clone)]
struct Options {
    redis: String,
    messages: usize,
    rate: u64,
    secs: u64,
    receivers: usize,
    clients: usize,
    rooms: usize,
}

fn options() -> Result<Options, LoadError> {
    let mut options = Options {
        redis: "redis://127.0.0.1:6379/".to_owned(),
        messages: 20_000,
        rate: 1000,
        secs: 2,
        receivers: 100,
        clients: 10_000,
        rooms: 100,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--redis" => options.redis = value,
            "--messages" => options.messages = value.parse()?,
            "--rate" => options.rate = value.parse::<u64>()?.max(1),
            "--secs" => options.secs = value.parse()?,
            "--receivers" => options.receivers = value.parse::<usize>()?.max(1),
            "--clients" => options.clients = value.parse()?,
            "--rooms" => options.rooms = value.parse::<usize>()?.max(1),
            _ => return Err(format!("unknown option {arg}").into()),
        }
    }
    Ok(options)
}

/// Joins the `room` query parameter, from `offset` and `epoch` when given, and then
/// says how the recovery went.
struct Join;

impl Handler for Join {
    async fn on_open(&self, conn: &Connection) {
        let Some(room) = conn.query("room").map(str::to_owned) else {
            return;
        };
        let since = conn
            .query("offset")
            .and_then(|offset| offset.parse().ok())
            .zip(conn.query("epoch").and_then(|epoch| epoch.parse().ok()));
        match since {
            None => {
                conn.join(&room);
            }
            Some((offset, epoch)) => {
                if let Ok(recovery) = conn.join_from(&room, Position::new(offset, epoch)).await {
                    conn.send_text(format!("recovery {}", recovery.recovered));
                }
            }
        }
    }
}

/// The history of the rooms that keep one in this run; members see `<offset> <epoch>
/// <text>`.
fn config(history: bool) -> HubConfig {
    let config = hub_config();
    if !history {
        return config;
    }
    config.history_framed(
        "*",
        History::default().max_len(1000),
        |message, position| {
            let text = match message {
                Message::Text(text) => text.as_str(),
                _ => "",
            };
            Message::text(format!("{} {} {text}", position.offset, position.epoch))
        },
    )
}

async fn redis_hub(url: &str, prefix: &str, history: bool) -> Result<Hub, LoadError> {
    let redis = RedisConfig::default()
        .url(url)
        .prefix(prefix)
        .max_pending_publishes(4096);
    let hub = Hub::with_broker(config(history), RedisBroker::connect(redis).await?);
    while !hub.is_ready() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(hub)
}

fn prefix(what: &str) -> String {
    format!("stream-load:{what}:{}", std::process::id())
}

/// One row of part 1: the burst's throughput, then the paced run's latency.
async fn history_row(
    options: &Options,
    engine: &str,
    history: bool,
    publisher: Hub,
    receiving: Hub,
) -> Result<(), LoadError> {
    let run = Delivery::open(
        publisher.clone(),
        &receiving,
        1,
        options.receivers,
        Duration::from_secs(30),
    )
    .await?;
    let burst = run.burst(options.messages, Duration::from_secs(30)).await;
    let paced = run
        .paced(options.rate, options.secs as f64, Duration::from_secs(10))
        .await;
    println!(
        "{engine:<7} history {:<3} {} receivers: {burst} | {paced}",
        if history { "on" } else { "off" },
        options.receivers,
    );
    drop(run);
    receiving.shutdown(Duration::from_millis(200)).await;
    publisher.shutdown(Duration::from_millis(200)).await;
    Ok(())
}

async fn part_one(options: &Options) -> Result<(), LoadError> {
    println!("# publish throughput and broadcast latency, history off vs on");
    for history in [false, true] {
        let network = MemoryNetwork::new();
        let publisher = Hub::with_broker(config(history), network.broker());
        let receiving = Hub::with_broker(config(history), network.broker());
        history_row(options, "memory", history, publisher, receiving).await?;
    }
    for history in [false, true] {
        let prefix = prefix(if history { "on" } else { "off" });
        let publisher = redis_hub(&options.redis, &prefix, history).await?;
        let receiving = redis_hub(&options.redis, &prefix, history).await?;
        history_row(options, "redis", history, publisher, receiving).await?;
    }
    Ok(())
}

/// A recovering client's state: where it is, and whether it is back.
#[derive(Default)]
struct Follower {
    last: Mutex<Option<Position>>,
    recovered: AtomicUsize,
    received: AtomicUsize,
}

/// Reads `ws` until it ends, noting positions and recoveries.
fn follow(mut ws: PipeClient, follower: Arc<Follower>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(WsMessage::Text(text))) = ws.next().await {
            let text = text.as_str();
            if let Some(recovered) = text.strip_prefix("recovery ") {
                if recovered == "true" {
                    follower.recovered.fetch_add(1, Relaxed);
                }
                continue;
            }
            let mut words = text.split(' ');
            let offset = words.next().and_then(|offset| offset.parse().ok());
            let epoch = words.next().and_then(|epoch| epoch.parse().ok());
            if let (Some(offset), Some(epoch)) = (offset, epoch) {
                *follower.last.lock().unwrap() = Some(Position::new(offset, epoch));
                follower.received.fetch_add(1, Relaxed);
            }
        }
    })
}

async fn evalsha_calls(url: &str) -> Result<u64, LoadError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let calls = info
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0);
    Ok(calls)
}

async fn part_two(options: &Options) -> Result<(), LoadError> {
    const BEFORE: usize = 5;
    const MISSED: usize = 20;
    println!(
        "# recovery of {} clients in {} rooms after a restart (Redis)",
        options.clients, options.rooms
    );
    let prefix = prefix("recovery");
    let publisher = redis_hub(&options.redis, &prefix, true).await?;
    let first = redis_hub(&options.redis, &prefix, true).await?;
    let rooms: Vec<String> = (0..options.rooms).map(|i| format!("room{i}")).collect();
    let followers: Vec<Arc<Follower>> = (0..options.clients).map(|_| Arc::default()).collect();
    let join = Arc::new(Join);
    let mut tasks = Vec::new();
    for (i, follower) in followers.iter().enumerate() {
        let path = format!("/s?room={}", rooms[i % rooms.len()]);
        let ws = pipe_client(&first, &path, join.clone()).await?;
        tasks.push(follow(ws, follower.clone()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..BEFORE {
        let sent = rooms.iter().map(|room| {
            publisher
                .to(room)
                .publish(Message::text(format!("before {i}")))
        });
        for sent in join_all(sent).await {
            sent?;
        }
    }
    let began = Instant::now();
    while followers.iter().any(|f| f.received.load(Relaxed) < BEFORE) {
        if began.elapsed() > Duration::from_secs(30) {
            return Err("the clients did not get the first messages".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The restart: the hub goes away with its connections...
    first.shutdown(Duration::from_millis(500)).await;
    for task in tasks.drain(..) {
        task.abort();
    }
    // ...the room goes on meanwhile...
    for i in 0..MISSED {
        let sent = rooms.iter().map(|room| {
            publisher
                .to(room)
                .publish(Message::text(format!("missed {i}")))
        });
        for sent in join_all(sent).await {
            sent?;
        }
    }
    // ...and every client comes back at once on the new hub.
    let second = redis_hub(&options.redis, &prefix, true).await?;
    let reads_before = second.metrics().stream_reads;
    let evalsha_before = evalsha_calls(&options.redis).await?;
    let began = Instant::now();
    let mut connecting = Vec::new();
    for (i, follower) in followers.iter().enumerate() {
        let Some(last) = *follower.last.lock().unwrap() else {
            return Err("a client saw nothing".into());
        };
        let path = format!(
            "/s?room={}&offset={}&epoch={}",
            rooms[i % rooms.len()],
            last.offset,
            last.epoch
        );
        let (second, follower, join) = (second.clone(), follower.clone(), join.clone());
        connecting.push(tokio::spawn(async move {
            let ws = pipe_client(&second, &path, join).await?;
            Ok::<_, LoadError>(follow(ws, follower))
        }));
    }
    for connected in join_all(connecting).await {
        tasks.push(connected??);
    }
    while followers
        .iter()
        .any(|f| f.recovered.load(Relaxed) < 1 || f.received.load(Relaxed) < BEFORE + MISSED)
    {
        if began.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = began.elapsed();
    let recovered = followers
        .iter()
        .filter(|f| f.recovered.load(Relaxed) == 1)
        .count();
    let complete = followers
        .iter()
        .filter(|f| f.received.load(Relaxed) == BEFORE + MISSED)
        .count();
    let reads = second.metrics().stream_reads - reads_before;
    let evalsha = evalsha_calls(&options.redis).await? - evalsha_before;
    println!(
        "{recovered} of {} clients recovered ({complete} with all {MISSED} missed) in {took:.2?}; \
         the hub read the engine {reads} times ({} rooms), Redis ran {evalsha} scripts meanwhile",
        options.clients, options.rooms
    );
    for task in tasks {
        task.abort();
    }
    second.shutdown(Duration::from_millis(200)).await;
    publisher.shutdown(Duration::from_millis(200)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), LoadError> {
    let options = options()?;
    part_one(&options).await?;
    part_two(&options).await?;
    Ok(())
}
