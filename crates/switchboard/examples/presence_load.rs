//! A bounded load run of presence on a large topic: `--members` sockets (default
//! 10,000) join one topic at `--rate` joins/s (default 500), spread over `--hubs` hubs
//! (default 3) on a `MemoryNetwork`, with `--batch` ms of presence batching (default
//! 50). It stops by itself once every member has been seen by a watcher on every hub
//! (or after `--limit` seconds, default 120), and prints the presence traffic: diffs and
//! bytes per client, casts and bytes between hubs, per join.
//!
//! ```text
//! cargo run --release --example presence_load
//! cargo run --release --example presence_load -- --members 2000 --rate 500 --batch 50
//! ```
//!
//! The clients run in a child process (this binary again, with `--clients`), so that
//! each process holds one end of each socket: 10,000 members are 20,000 descriptors.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::{
    error::Error,
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use switchboard::{
    Message,
    channels::{Channel, Channels, ChannelsConfig, Socket},
    hub::{Broker, BrokerMetrics, Envelope, Hub, HubConfig, Inbox, MemoryNetwork, Target},
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const TOPIC: &str = "lobby:large";

#[derive(Clone, Debug)]
struct Args {
    members: usize,
    rate: f64,
    batch: Duration,
    hubs: usize,
    limit: Duration,
}

/// The run's settings, and the hubs' addresses when this process runs the clients.
type Parsed = (Args, Option<Vec<SocketAddr>>);

fn parse() -> Result<Parsed, Box<dyn Error>> {
    let mut args = Args {
        members: 10_000,
        rate: 500.0,
        batch: Duration::from_millis(50),
        hubs: 3,
        limit: Duration::from_secs(120),
    };
    let mut clients = None;
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let value = argv.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--members" => args.members = value.parse()?,
            "--rate" => args.rate = value.parse()?,
            "--batch" => args.batch = Duration::from_millis(value.parse()?),
            "--hubs" => args.hubs = value.parse()?,
            "--limit" => args.limit = Duration::from_secs(value.parse()?),
            "--clients" => {
                let addrs: Result<Vec<SocketAddr>, _> = value.split(',').map(str::parse).collect();
                clients = Some(addrs?);
            }
            _ => return Err(format!("unknown argument {arg}").into()),
        }
    }
    Ok((args, clients))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let (args, clients) = parse()?;
    match clients {
        Some(addrs) => run_clients(args, addrs).await,
        None => run_hubs(args).await,
    }
}

/// Tracks the user with a timestamp, as the chat example does, and pushes the state.
struct Lobby;

impl Channel for Lobby {
    async fn join(&self, topic: &str, payload: Value, socket: &Socket) -> Result<Value, Value> {
        let user = payload["user"].as_str().unwrap_or("anonymous").to_owned();
        let presence = socket.presence();
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        presence
            .track(socket, user, json!({ "online_at": at.to_string() }))
            .map_err(|e| json!({ "reason": e.to_string() }))?;
        socket.push("presence_state", presence.list(topic));
        Ok(json!({}))
    }
}

/// A broker that counts the presence casts its hub sends to the other hubs.
struct Counting {
    inner: switchboard::hub::MemoryBroker,
    casts: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl Broker for Counting {
    fn start(&self, inbox: Inbox) {
        self.inner.start(inbox);
    }

    fn publish(&self, envelope: Envelope) {
        if let (Target::Nodes, Message::Text(text)) = (&envelope.target, &envelope.message) {
            if text.as_str().contains(r#""service":"presence""#) {
                self.casts.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(text.len(), Ordering::Relaxed);
            }
        }
        self.inner.publish(envelope);
    }

    fn subscribe(&self, room: &str) {
        self.inner.subscribe(room);
    }

    fn unsubscribe(&self, room: &str) {
        self.inner.unsubscribe(room);
    }

    fn metrics(&self) -> Option<BrokerMetrics> {
        None
    }
}

async fn run_hubs(args: Args) -> Result<(), Box<dyn Error>> {
    let network = MemoryNetwork::new();
    let mut addrs = Vec::new();
    let mut counters = Vec::new();
    let mut hubs = Vec::new();
    for _ in 0..args.hubs {
        let (casts, bytes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let broker = Counting {
            inner: network.broker(),
            casts: casts.clone(),
            bytes: bytes.clone(),
        };
        let config = HubConfig::default()
            .max_connections(args.members + 10)
            .max_connections_per_ip(args.members + 10)
            .max_pending_handshakes(args.members + 10)
            .max_http_connections(args.members + 10)
            // A member's socket may fall behind while the run is at its busiest.
            .max_buffered_bytes(16 << 20);
        let hub = Hub::with_broker(config, broker);
        let app: axum::Router = Channels::new(hub.clone())
            .config(
                ChannelsConfig::default()
                    .presence_batch(args.batch)
                    // The members send no heartbeats: none may be closed for that
                    // before the run ends (a large run lasts past the default 60 s).
                    .heartbeat_timeout(args.limit + Duration::from_secs(60)),
            )
            .channel("lobby:*", Lobby)
            .into_router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        let serving = hub.clone();
        tokio::spawn(async move {
            let _ =
                switchboard::serve_with_shutdown(listener, app, &serving, std::future::pending())
                    .await;
        });
        counters.push((casts, bytes));
        hubs.push(hub);
    }
    while hubs.iter().any(|hub| hub.nodes().len() < args.hubs) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let child = Command::new(std::env::current_exe()?)
        .args(["--members", &args.members.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--batch", &args.batch.as_millis().to_string()])
        .args(["--hubs", &args.hubs.to_string()])
        .args(["--limit", &args.limit.as_secs().to_string()])
        .args(["--clients", &list.join(",")])
        .stdout(Stdio::piped())
        .spawn()?;
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let report: Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("the clients' report: {e}"))?;
    let members = args.members as f64;
    println!(
        "{} members joined {TOPIC} at {}/s over {} hubs, presence_batch {:?}",
        args.members, args.rate, args.hubs, args.batch
    );
    println!("clients: {report}");
    for (i, (casts, bytes)) in counters.iter().enumerate() {
        let (casts, bytes) = (casts.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
        println!(
            "hub {i}: {casts} presence casts, {bytes} bytes: {:.3} casts and {:.1} bytes per join of the cluster",
            casts as f64 / members,
            bytes as f64 / members
        );
    }
    Ok(())
}

/// What the clients saw, summed over the members.
#[derive(Default)]
struct Seen {
    diffs: AtomicU64,
    bytes: AtomicU64,
    /// The most diffs one member got in one second of the run.
    peak_per_second: AtomicU64,
}

async fn run_clients(args: Args, addrs: Vec<SocketAddr>) -> Result<(), Box<dyn Error>> {
    let seen = Arc::new(Seen::default());
    let started = Instant::now();
    // Watchers (one per hub, joined first) apply every diff, to know when all is seen.
    let mut watchers = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        watchers.push(member(*addr, format!("watcher{i}"), seen.clone(), true).await?);
    }
    let mut members = Vec::new();
    let joins_started = Instant::now();
    for i in 0..args.members {
        let due = joins_started + Duration::from_secs_f64(i as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        let addr = addrs[i % addrs.len()];
        members.push(member(addr, format!("m{i}"), seen.clone(), false).await?);
    }
    let joining = joins_started.elapsed();
    let expected = args.members + addrs.len();
    let deadline = started + args.limit;
    while watchers
        .iter()
        .any(|w| w.load(Ordering::Relaxed) < expected as u64)
    {
        if Instant::now() > deadline {
            return Err("the watchers did not see every member in time".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let converged = joins_started.elapsed();
    // The last diffs to the members themselves.
    tokio::time::sleep(args.batch * 4).await;
    let diffs = seen.diffs.load(Ordering::Relaxed);
    let bytes = seen.bytes.load(Ordering::Relaxed);
    // Every member gets the joins after its own, its own included.
    let n = args.members as f64;
    let deliveries = n * (n + 1.0) / 2.0 + n * addrs.len() as f64;
    let report = json!({
        "joining_seconds": joining.as_secs_f64(),
        "converged_seconds": converged.as_secs_f64(),
        "diffs_to_clients": diffs,
        "bytes_to_clients": bytes,
        "diffs_per_client": diffs as f64 / expected as f64,
        "bytes_per_client": bytes as f64 / expected as f64,
        "bytes_per_join_per_client": bytes as f64 / deliveries,
        "diffs_per_join_per_client": diffs as f64 / deliveries,
        "peak_diffs_per_client_per_second": seen.peak_per_second.load(Ordering::Relaxed),
    });
    println!("{report}");
    Ok(())
}

/// Joins `user`; a task counts the diffs. A watcher also counts the keys it lists
/// (in the returned counter).
async fn member(
    addr: SocketAddr,
    user: String,
    seen: Arc<Seen>,
    watch: bool,
) -> Result<Arc<AtomicU64>, Box<dyn Error>> {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut writer, mut reader) = ws.split();
    let join = json!(["1", "1", TOPIC, "phx_join", { "user": user }]);
    writer.send(WsMessage::text(join.to_string())).await?;
    let listed = Arc::new(AtomicU64::new(0));
    let count = listed.clone();
    tokio::spawn(async move {
        let _writer = writer; // Keeps the socket open.
        let mut keys = std::collections::HashSet::new();
        let (mut second, mut in_second) = (Instant::now(), 0u64);
        while let Some(Ok(message)) = reader.next().await {
            let WsMessage::Text(text) = message else {
                continue;
            };
            let text = text.as_str();
            let is_diff = text.contains(r#""presence_diff""#);
            if is_diff {
                seen.diffs.fetch_add(1, Ordering::Relaxed);
                seen.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
                if second.elapsed() >= Duration::from_secs(1) {
                    (second, in_second) = (Instant::now(), 0);
                }
                in_second += 1;
                seen.peak_per_second.fetch_max(in_second, Ordering::Relaxed);
            }
            if watch && (is_diff || text.contains(r#""presence_state""#)) {
                let Ok(value) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                let payload = &value[4];
                let joined = if is_diff { &payload["joins"] } else { payload };
                for key in joined.as_object().into_iter().flatten().map(|(k, _)| k) {
                    keys.insert(key.clone());
                }
                count.store(keys.len() as u64, Ordering::Relaxed);
            }
        }
    });
    Ok(listed)
}
