//! A bounded load run of one engine: cross-hub delivery (throughput, then latency at a
//! given rate), and the time hubs take to deliver across again after the broker
//! restarts. It stops by itself.
//!
//! ```sh
//! cargo run --release -p switchboard-suite --example engine_load -- --memory --find-rate
//! cargo run --release -p switchboard-suite --example engine_load -- --memory --rate 4000
//! cargo run --release -p switchboard-suite --example engine_load -- --redis redis://127.0.0.1:6379/ --rate 4000
//! cargo run --release -p switchboard-suite --example engine_load -- --redis redis://127.0.0.1:6379/ --rooms 10000 --part delivery
//! cargo run --release -p switchboard-suite --example engine_load -- --cluster redis://127.0.0.1:7000/ --rooms 10000 --part delivery
//! cargo run --release -p switchboard-suite --example engine_load -- --nats nats://127.0.0.1:4222 --rate 4000
//! # engine: --memory (default) | --redis URL | --cluster URL[,URL…] (any nodes of one cluster)
//! #         | --nats URL (a nats-server with JetStream)
//! # options: --part delivery|recovery|all --receivers 100 --rooms 1 --messages 20000
//! #          --rate 2000 --secs 3 --find-rate --members 10 --down 1
//! ```
//!
//! 1. **Delivery**: two hubs on the engine; `--receivers` WebSocket clients on one,
//!    spread evenly over `--rooms` rooms (at least one each), the other hub publishing
//!    to the rooms in turn. A burst of `--messages` gives the throughput (messages per
//!    second until the slowest receiver has them all, at most 512 on their way), then
//!    `--rate` messages per second for `--secs` give the latency from publish to
//!    receipt (p50, p99, max, every receiver). `--find-rate` instead doubles the rate
//!    from `--rate` until the p99 reaches 10 ms (or a delivery is missing), narrows
//!    the step down, and prints the highest rate under 10 ms: run it with `--memory`,
//!    then the other engines at that `--rate`. With `--rooms 10000` the burst crosses
//!    10,000 rooms, one subscription each; give `--cluster` a cluster of one master,
//!    then one of three, to see whether delivery grows with the shards.
//! 2. **Recovery** (Redis: a `redis-server` of its own on a free port; NATS: a
//!    `nats-server -js` of its own on a free port, storing in a directory of its own;
//!    both from the `PATH`): three hubs, `--members` clients on each in one room, each hub
//!    broadcasting to the room every 10 ms. The server is stopped, stays down
//!    `--down` seconds, and starts again on the same port (NATS with the storage it
//!    had, as a JetStream server on its disk comes back); the run prints the time
//!    from the server's return until every hub is ready again and until every member
//!    has heard every hub, and the losses the hubs counted. Memory has no server to
//!    restart.
//!
//! The clients talk WebSocket over in-process pipes (`tokio::io::duplex`): 10,000 of
//! them need no file descriptor.

use futures_util::StreamExt;
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard::hub::{Hub, MemoryNetwork};
use switchboard_broker::Broker;
use switchboard_nats::{NatsBroker, NatsConfig};
use switchboard_redis::{RedisBroker, RedisConfig};
use switchboard_suite::{
    load::{Delivery, JoinRoom, LoadError, PipeClient, hub_config, pipe_client},
    servers::{nats::NatsServer, redis::RedisServer, redis_cluster::RedisCluster},
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The p99 the found rate stays under: a hub in memory at that load is the yardstick
/// the engines are run at.
const TARGET_P99_MICROS: u64 = 10_000;

#[derive(Debug, Clone)]
enum EngineFlag {
    Memory,
    Redis(String),
    Cluster(Vec<String>),
    Nats(String),
}

impl EngineFlag {
    fn name(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis(_) => "redis",
            Self::Cluster(_) => "cluster",
            Self::Nats(_) => "nats",
        }
    }

    /// The brokers of one run's hubs, on channels of their own (`run`).
    fn backplane(&self, run: &str) -> Backplane {
        let prefix = format!("engine-load-{}-{run}", std::process::id());
        match self {
            Self::Memory => memory(),
            Self::Redis(url) => redis(RedisConfig::default().url(url).prefix(prefix)),
            Self::Cluster(nodes) => redis(RedisConfig::default().cluster(nodes).prefix(prefix)),
            Self::Nats(url) => nats(NatsConfig::default().url(url).prefix(prefix)),
        }
    }
}

/// Makes the brokers of one run's hubs, each reaching the others.
type Backplane = Box<dyn Fn() -> Result<Box<dyn Broker>, LoadError>>;

fn memory() -> Backplane {
    let network = MemoryNetwork::new();
    Box::new(move || Ok(Box::new(network.broker()) as Box<dyn Broker>))
}

fn redis(config: RedisConfig) -> Backplane {
    Box::new(move || Ok(Box::new(RedisBroker::new(config.clone())?) as Box<dyn Broker>))
}

fn nats(config: NatsConfig) -> Backplane {
    Box::new(move || Ok(Box::new(NatsBroker::new(config.clone())?) as Box<dyn Broker>))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Delivery,
    Recovery,
    All,
}

#[derive(Debug, Clone)]
struct Options {
    engine: EngineFlag,
    part: Part,
    receivers: usize,
    rooms: usize,
    messages: usize,
    rate: u64,
    secs: f64,
    find_rate: bool,
    members: usize,
    down: Duration,
}

fn options() -> Result<Options, LoadError> {
    let mut options = Options {
        engine: EngineFlag::Memory,
        part: Part::All,
        receivers: 100,
        rooms: 1,
        messages: 20_000,
        rate: 2000,
        secs: 3.0,
        find_rate: false,
        members: 10,
        down: Duration::from_secs(1),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--memory" => options.engine = EngineFlag::Memory,
            "--find-rate" => options.find_rate = true,
            _ => {
                let value = args.next().ok_or(format!("{arg} needs a value"))?;
                set(&mut options, &arg, value)?;
            }
        }
    }
    Ok(options)
}

fn set(options: &mut Options, arg: &str, value: String) -> Result<(), LoadError> {
    match arg {
        "--redis" => options.engine = EngineFlag::Redis(value),
        "--nats" => options.engine = EngineFlag::Nats(value),
        "--cluster" => {
            options.engine = EngineFlag::Cluster(value.split(',').map(str::to_owned).collect());
        }
        "--part" => {
            options.part = match value.as_str() {
                "delivery" => Part::Delivery,
                "recovery" => Part::Recovery,
                "all" => Part::All,
                _ => return Err(format!("--part {value}: delivery, recovery or all").into()),
            };
        }
        "--receivers" => options.receivers = value.parse()?,
        "--rooms" => options.rooms = value.parse::<usize>()?.max(1),
        "--messages" => options.messages = value.parse()?,
        "--rate" => options.rate = value.parse::<u64>()?.max(1),
        "--secs" => options.secs = value.parse()?,
        "--members" => options.members = value.parse::<usize>()?.max(1),
        "--down" => options.down = Duration::from_secs_f64(value.parse()?),
        _ => return Err(format!("unknown option {arg}").into()),
    }
    Ok(())
}

/// Waits until every hub is ready (its engine link up with its subscriptions), at
/// most `limit`; how long that took.
async fn ready(hubs: &[Hub], limit: Duration) -> Result<Duration, LoadError> {
    let began = Instant::now();
    while !hubs.iter().all(Hub::is_ready) {
        if began.elapsed() > limit {
            return Err("a hub did not become ready".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(began.elapsed())
}

async fn hubs(
    backplane: &dyn Fn() -> Result<Box<dyn Broker>, LoadError>,
    count: usize,
) -> Result<Vec<Hub>, LoadError> {
    let mut hubs = Vec::with_capacity(count);
    for _ in 0..count {
        hubs.push(Hub::with_broker(hub_config(), backplane()?));
    }
    ready(&hubs, Duration::from_secs(10)).await?;
    Ok(hubs)
}

async fn shutdown(hubs: &[Hub]) {
    for hub in hubs {
        hub.shutdown(Duration::from_millis(200)).await;
    }
}

/// Losses the hubs' brokers counted: published but not sent, and missed on receipt.
fn losses(hubs: &[Hub]) -> String {
    let (lost, missed) = hubs
        .iter()
        .filter_map(Hub::broker_metrics)
        .fold((0, 0), |(lost, missed), m| {
            (lost + m.lost, missed + m.missed)
        });
    format!("lost {lost}, missed {missed}")
}

async fn delivery(options: &Options) -> Result<(), LoadError> {
    let engine = options.engine.name();
    let hubs = hubs(&options.engine.backplane("delivery"), 2).await?;
    let per_room = (options.receivers / options.rooms).max(1);
    let run = Delivery::open(
        hubs[0].clone(),
        &hubs[1],
        options.rooms,
        per_room,
        Duration::from_secs(60),
    )
    .await?;
    println!(
        "# {engine}: delivery across two hubs, {} receivers in {} room(s)",
        run.receivers(),
        options.rooms
    );
    let burst = run.burst(options.messages, Duration::from_secs(60)).await;
    println!("{engine:<8} {burst}");
    if options.find_rate {
        find_rate(&run, options).await;
    } else {
        let paced = run
            .paced(options.rate, options.secs, Duration::from_secs(5))
            .await;
        println!("{engine:<8} {paced}");
    }
    println!("{engine:<8} {}", losses(&hubs));
    drop(run);
    shutdown(&hubs).await;
    Ok(())
}

/// Doubles the rate until the p99 reaches the target or a delivery goes missing, then
/// bisects between the last rate under and the first over until they are within an
/// eighth of each other.
async fn find_rate(run: &Delivery, options: &Options) {
    let engine = options.engine.name();
    let mut under = None;
    let mut over = None;
    let mut rate = options.rate;
    for _ in 0..20 {
        let paced = run.paced(rate, options.secs, Duration::from_secs(5)).await;
        let holds = paced.latencies.quantile(0.99) < TARGET_P99_MICROS
            && paced.latencies.len() == paced.expected;
        println!(
            "{engine:<8} {paced}{}",
            if holds { "" } else { "  <- over" }
        );
        if holds {
            under = Some(rate);
        } else {
            over = Some(rate);
        }
        rate = match (under, over) {
            (_, None) => rate * 2,
            (Some(under), Some(over)) if over - under > over / 8 => (under + over) / 2,
            _ => break,
        };
        // Whatever the last stage left queued drains before the next.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    match under {
        Some(rate) => println!("{engine:<8} highest rate with p99 under 10 ms: {rate} msgs/s"),
        None => println!(
            "{engine:<8} no rate from {} on stays under 10 ms",
            options.rate
        ),
    }
}

/// What the members of a recovery run heard: per member, the hubs (one bit each)
/// heard from in the current generation of broadcasts.
#[derive(Debug, Default)]
struct Heard {
    generation: AtomicUsize,
    members: Vec<AtomicU8>,
}

impl Heard {
    fn everyone_heard(&self, hubs: usize) -> bool {
        let all = (1u8 << hubs) - 1;
        self.members.iter().all(|heard| heard.load(Relaxed) == all)
    }

    /// Starts a new generation: what was broadcast before it no longer counts.
    fn forget(&self) {
        self.generation.fetch_add(1, Relaxed);
        for heard in &self.members {
            heard.store(0, Relaxed);
        }
    }
}

const RECOVERY_HUBS: usize = 3;

/// A server of the run's own, that it stops (as a crash would) and starts again on
/// the same address.
trait Restart {
    fn stop(&mut self);

    /// Returns once the server serves again.
    fn start(&mut self) -> impl Future<Output = ()>;
}

impl Restart for RedisServer {
    fn stop(&mut self) {
        self.kill();
    }

    async fn start(&mut self) {
        self.restart().await;
    }
}

/// Every node of the cluster, masters and replicas, SIGKILLed and started again with
/// its cluster configuration (empty, as a Redis without persistence). It is back once
/// its nodes serve: the time the cluster then takes to agree that it is ok (its nodes
/// meet again, masters and replicas sync) is part of the hubs' recovery.
impl Restart for RedisCluster {
    fn stop(&mut self) {
        RedisCluster::stop(self);
    }

    async fn start(&mut self) {
        self.restart_nodes().await;
    }
}

/// NATS comes back with the JetStream storage it had, as a server on its disk does.
impl Restart for NatsServer {
    fn stop(&mut self) {
        self.kill();
    }

    async fn start(&mut self) {
        self.restart().await;
    }
}

/// Three hubs on `engine` (whose servers are `server`), members on each, the server
/// restarted under them.
async fn recovery(
    options: &Options,
    engine: &EngineFlag,
    server: &mut impl Restart,
) -> Result<(), LoadError> {
    let name = engine.name();
    println!(
        "# {name}: recovery of {RECOVERY_HUBS} hubs, {} members each, after the server restarts ({:?} down)",
        options.members, options.down
    );
    let hubs = hubs(&engine.backplane("recovery"), RECOVERY_HUBS).await?;
    let heard = Arc::new(Heard {
        generation: AtomicUsize::new(0),
        members: (0..RECOVERY_HUBS * options.members)
            .map(|_| AtomicU8::new(0))
            .collect(),
    });
    let mut tasks = Vec::new();
    for member in 0..heard.members.len() {
        let hub = &hubs[member % RECOVERY_HUBS];
        let ws = pipe_client(hub, "/?room=recovery", Arc::new(JoinRoom)).await?;
        tasks.push(tokio::spawn(listen(ws, member, heard.clone())));
    }
    for (index, hub) in hubs.iter().enumerate() {
        tasks.push(tokio::spawn(broadcast(hub.clone(), index, heard.clone())));
    }
    let before = until_everyone_heard(&heard, Duration::from_secs(10)).await?;
    println!(
        "{:<8} before: every member heard every hub within {before:.2?}",
        name
    );

    server.stop();
    tokio::time::sleep(options.down).await;
    server.start().await;
    heard.forget();
    let (ready, heard_all) = tokio::join!(
        ready(&hubs, Duration::from_secs(60)),
        until_everyone_heard(&heard, Duration::from_secs(60)),
    );
    println!(
        "{:<8} server back: every hub ready after {:.2?}, every member heard every hub after {:.2?} ({})",
        name,
        ready?,
        heard_all?,
        losses(&hubs)
    );
    for task in tasks {
        task.abort();
    }
    shutdown(&hubs).await;
    Ok(())
}

/// Broadcasts `<generation> <hub>` to the room every 10 ms.
async fn broadcast(hub: Hub, index: usize, heard: Arc<Heard>) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        let generation = heard.generation.load(Relaxed);
        hub.to("recovery")
            .send_text(format!("{generation} {index}"));
    }
}

/// Notes which hubs `member` hears from in the current generation.
async fn listen(mut ws: PipeClient, member: usize, heard: Arc<Heard>) {
    while let Some(Ok(WsMessage::Text(text))) = ws.next().await {
        let mut words = text.split(' ').map(str::parse::<usize>);
        let (Some(Ok(generation)), Some(Ok(hub))) = (words.next(), words.next()) else {
            continue;
        };
        if generation == heard.generation.load(Relaxed) && hub < 8 {
            heard.members[member].fetch_or(1 << hub, Relaxed);
        }
    }
}

async fn until_everyone_heard(heard: &Heard, limit: Duration) -> Result<Duration, LoadError> {
    let began = Instant::now();
    while !heard.everyone_heard(RECOVERY_HUBS) {
        if began.elapsed() > limit {
            return Err(format!("not every member heard every hub within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(began.elapsed())
}

async fn recovery_of(options: &Options) -> Result<(), LoadError> {
    match options.engine {
        EngineFlag::Memory => println!("# memory: no server to restart, no recovery to measure"),
        EngineFlag::Redis(_) => {
            let mut server = RedisServer::start().await;
            let engine = EngineFlag::Redis(server.url());
            recovery(options, &engine, &mut server).await?;
        }
        EngineFlag::Cluster(_) => {
            println!("# cluster: three masters and three replicas of its own, all restarted");
            let mut cluster = RedisCluster::start().await;
            let engine = EngineFlag::Cluster(cluster.urls());
            recovery(options, &engine, &mut cluster).await?;
        }
        EngineFlag::Nats(_) => {
            println!("# nats: the server restarts with the JetStream storage it had");
            let mut server = NatsServer::start().await;
            let engine = EngineFlag::Nats(server.url());
            recovery(options, &engine, &mut server).await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), LoadError> {
    let options = options()?;
    println!("load: {}", load_average());
    if options.part != Part::Recovery {
        delivery(&options).await?;
    }
    if options.part != Part::Delivery {
        recovery_of(&options).await?;
    }
    Ok(())
}

/// The machine's load average, which the numbers depend on.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|line| line.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}
