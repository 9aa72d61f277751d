//! A bounded load run: cross-node delivery throughput and latency on Redis, against
//! one hub in memory. It stops by itself.
//!
//! ```sh
//! cargo run --release -p switchboard-redis --example cluster_load -- --mode redis
//! cargo run --release -p switchboard-redis --example cluster_load -- --mode memory
//! # options: --redis URL --rates 2000,4000,6000,8000 --secs 3 --receivers 300 --rooms 30
//! ```
//!
//! `--receivers` WebSocket clients, spread round robin over three hubs (one with
//! `--mode memory`), join `--rooms` rooms (client `i` joins room `i % rooms`). The
//! first hub publishes to the rooms in turn at each rate for `--secs` seconds, so every
//! publish reaches `receivers / rooms` clients, two thirds of them on other hubs. Each
//! message carries its send time; per rate the run prints the publishes made, the
//! deliveries seen (within the stage and one second of drain), and the latency's p50,
//! p99 and max. `--rooms 1` puts every receiver in one room: 300 deliveries per
//! publish, the shape where latency blows up first.

use futures_util::StreamExt;
use std::{
    error::Error,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use switchboard::hub::{Connection, Handler, Hub, HubConfig};
use switchboard_redis::{RedisBroker, RedisConfig};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;

struct Join;

impl Handler for Join {
    async fn on_open(&self, conn: &Connection) {
        if let Some(room) = conn.param("room") {
            conn.join(room);
        }
    }
}

struct Options {
    redis: Option<String>,
    rates: Vec<u64>,
    secs: u64,
    receivers: usize,
    rooms: usize,
}

fn options() -> Result<Options, Box<dyn Error>> {
    let mut options = Options {
        redis: Some("redis://127.0.0.1:6379/".to_owned()),
        rates: vec![2000, 4000, 6000, 8000],
        secs: 3,
        receivers: 300,
        rooms: 30,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--mode" if value == "memory" => options.redis = None,
            "--mode" if value == "redis" => {}
            "--redis" => options.redis = Some(value),
            "--rates" => {
                let rates: Result<Vec<u64>, _> = value.split(',').map(str::parse).collect();
                options.rates = rates?;
            }
            "--secs" => options.secs = value.parse()?,
            "--receivers" => options.receivers = value.parse()?,
            "--rooms" => options.rooms = value.parse::<usize>()?.max(1),
            _ => return Err(format!("unknown option {arg}").into()),
        }
    }
    Ok(options)
}

async fn hub(redis: Option<&str>, prefix: &str) -> Result<(Hub, String), Box<dyn Error>> {
    let hub = match redis {
        Some(url) => {
            let config = RedisConfig::default().url(url).prefix(prefix);
            Hub::with_broker(HubConfig::default(), RedisBroker::connect(config).await?)
        }
        None => Hub::new(HubConfig::default()),
    };
    let app = axum::Router::new().route("/r/{room}", switchboard::ws(hub.clone(), Join));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn({
        let hub = hub.clone();
        async move { switchboard::serve(listener, app, &hub).await }
    });
    Ok((hub, format!("ws://{addr}")))
}

/// Latencies in microseconds, per stage.
type Seen = Arc<Mutex<Vec<Vec<u64>>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let options = options()?;
    let prefix = format!("cluster_load:{}", std::process::id());
    let count = if options.redis.is_some() { 3 } else { 1 };
    let mut hubs = Vec::new();
    for _ in 0..count {
        hubs.push(hub(options.redis.as_deref(), &prefix).await?);
    }
    let start = Instant::now();
    let seen: Seen = Arc::new(Mutex::new(vec![Vec::new(); options.rates.len()]));
    for i in 0..options.receivers {
        let url = format!("{}/r/room{}", hubs[i % count].1, i % options.rooms);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(WsMessage::Text(text))) = ws.next().await {
                let mut parts = text.split(':');
                let stage: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let sent: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let now = start.elapsed().as_micros() as u64;
                if let Some(stage) = seen.lock().unwrap().get_mut(stage) {
                    stage.push(now.saturating_sub(sent));
                }
            }
        });
    }
    // Every client's join has reached every hub's subscriptions.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let publisher = &hubs[0].0;
    println!(
        "mode {} hubs {count} receivers {} rooms {} secs {}",
        if options.redis.is_some() {
            "redis"
        } else {
            "memory"
        },
        options.receivers,
        options.rooms,
        options.secs
    );
    for (stage, rate) in options.rates.iter().enumerate() {
        let published = publish(publisher, stage, *rate, options.secs, options.rooms, start).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut latencies = std::mem::take(&mut seen.lock().unwrap()[stage]);
        latencies.sort_unstable();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * q) as usize)
                .copied()
        };
        let expected = published * (options.receivers / options.rooms) as u64;
        println!(
            "rate {rate}/s published {published} delivered {}/{expected} ({:.0}/s) p50 {:?} ms p99 {:?} ms max {:?} ms",
            latencies.len(),
            latencies.len() as f64 / options.secs as f64,
            at(0.5).map(|us| us as f64 / 1000.0),
            at(0.99).map(|us| us as f64 / 1000.0),
            latencies.last().map(|us| *us as f64 / 1000.0),
        );
    }
    Ok(())
}

/// Publishes at `rate` per second for `secs` seconds, in 1 ms ticks; how many.
async fn publish(
    hub: &Hub,
    stage: usize,
    rate: u64,
    secs: u64,
    rooms: usize,
    start: Instant,
) -> u64 {
    let began = Instant::now();
    let mut published = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while began.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let due = rate * began.elapsed().as_micros() as u64 / 1_000_000;
        while published < due {
            let sent = start.elapsed().as_micros();
            let room = format!("room{}", published as usize % rooms);
            hub.to(&room).send_text(format!("{stage}:{sent}"));
            published += 1;
        }
    }
    published
}
