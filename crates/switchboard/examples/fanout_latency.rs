//! How long `Hub::join` and `Hub::leave` take while a room of 10,000 connections with
//! their own compression contexts (`Compression::Dedicated`, context takeover) receives
//! broadcasts: a measurement, not a test.
//!
//! ```text
//! cargo run --release --example fanout_latency                # 10,000 members, 20 broadcasts
//! cargo run --release --example fanout_latency -- 2000 50     # members, broadcasts
//! ```
//!
//! The connections are real hub connections (hyper's HTTP/1 upgrade, the hub's route,
//! one task each) over in-process `tokio::io::duplex` pipes instead of loopback sockets,
//! so that 10,000 of them fit in the open-files limit; each client offers
//! permessage-deflate, checks that the server agreed with context takeover, and reads
//! and discards what it receives. One thread broadcasts 1 KiB compressible messages to
//! the room, one after the other; another thread meanwhile joins and leaves the room
//! with one more connection, every 200 µs, timing each call. The figures include the
//! scheduling noise of the host (the hub runs on two worker threads). Last, every
//! member joins a second room and leaves it, one after the other: the cost of a join
//! storm.

use axum::Router;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use std::{
    error::Error,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};
use switchboard::{
    Compression,
    hub::{Connection, Handler, Hub, HubConfig},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
    task::JoinSet,
};

type BoxError = Box<dyn Error + Send + Sync>;

const ROOM: &str = "room";
const REQUEST: &str = "GET /?member HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n";

/// Members join the room; the prober (no `member` in its query) stays out of it.
struct Members;

impl Handler for Members {
    async fn on_open(&self, conn: &Connection) {
        if conn.query("member").is_some() {
            conn.join(ROOM);
        }
    }
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let members = args.next().transpose()?.unwrap_or(10_000);
    let broadcasts = args.next().transpose()?.unwrap_or(20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let config = HubConfig::default()
        .compression(Compression::dedicated())
        .max_connections(members + 1);
    let hub = Hub::new(config);
    let app = Router::new().route("/", switchboard::ws(hub.clone(), Members));
    runtime.block_on(connect_all(&app, members))?;
    // `on_open` may still be running when a client sees its 101.
    while hub.room_size(ROOM) < members {
        thread::sleep(Duration::from_millis(1));
    }
    let (room, prober): (Vec<_>, Vec<_>) = hub
        .connections()
        .into_iter()
        .partition(|conn| conn.in_room(ROOM));
    let prober = prober.into_iter().next().ok_or("no prober connection")?;
    println!(
        "{} members in {ROOM:?}, Compression::dedicated(), {broadcasts} broadcasts of 1 KiB",
        hub.room_size(ROOM)
    );

    let done = Arc::new(AtomicBool::new(false));
    let probing = thread::spawn({
        let done = done.clone();
        move || probe(&prober, &done)
    });
    let started = Instant::now();
    let mut sends = Vec::with_capacity(broadcasts);
    for seq in 0..broadcasts {
        let send = Instant::now();
        let report = hub.to(ROOM).send_text(message(seq));
        sends.push(send.elapsed());
        // The prober may be in the room too.
        assert!(report.queued >= members, "{report:?}");
    }
    let sent = started.elapsed();
    // Checked without the hub's help, not to disturb what is measured.
    let mut unwritten = room.clone();
    while !unwritten.is_empty() {
        unwritten.retain(|conn| conn.buffered_amount() > 0);
        thread::sleep(Duration::from_millis(1));
    }
    let delivered = started.elapsed();
    done.store(true, Relaxed);
    let (joins, leaves) = probing.join().map_err(|_| "prober panicked")?;
    println!(
        "broadcast calls: total {:.1} ms, slowest {:.1} ms; all written to the pipes after {:.1} ms",
        ms(sent),
        ms(sends.iter().max().copied().unwrap_or_default()),
        ms(delivered)
    );
    report("join", joins);
    report("leave", leaves);
    storm(&room);
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// Upgrades `n` members and one prober over in-process pipes, served by `app`.
async fn connect_all(app: &Router, n: usize) -> Result<(), BoxError> {
    let mut handshakes = JoinSet::new();
    for i in 0..=n {
        let (client, server) = tokio::io::duplex(64 << 10);
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service)
                .with_upgrades(),
        );
        let request = if i < n {
            REQUEST.to_owned()
        } else {
            REQUEST.replace("?member", "")
        };
        handshakes.spawn(client_side(client, request));
    }
    while let Some(result) = handshakes.join_next().await {
        result??;
    }
    Ok(())
}

/// Sends the upgrade request, checks the agreement, then reads and discards.
async fn client_side(mut io: DuplexStream, request: String) -> Result<(), BoxError> {
    io.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut buf = vec![0; 16 << 10];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if !head.starts_with("http/1.1 101")
        || !head.contains("permessage-deflate")
        || head.contains("server_no_context_takeover")
    {
        return Err(format!("no context-takeover agreement: {head}").into());
    }
    tokio::spawn(async move { while matches!(io.read(&mut buf).await, Ok(1..)) {} });
    Ok(())
}

/// A compressible 1 KiB text, different each time.
fn message(seq: usize) -> String {
    let mut text = format!("{{\"seq\":{seq},\"room\":\"{ROOM}\",\"text\":\"");
    while text.len() < 1022 {
        text.push_str("status update ");
    }
    text.truncate(1022);
    text.push_str("\"}");
    text
}

/// Every member joins another room, then leaves it: what copy-on-write membership must
/// not make quadratic.
fn storm(members: &[Connection]) {
    let start = Instant::now();
    for conn in members {
        conn.join("storm");
    }
    let joined = start.elapsed();
    let start = Instant::now();
    for conn in members {
        conn.leave("storm");
    }
    println!(
        "join storm: {} joins of one room in {:.1} ms, then {} leaves in {:.1} ms",
        members.len(),
        ms(joined),
        members.len(),
        ms(start.elapsed())
    );
}

/// Joins and leaves the room until `done`, timing each call.
fn probe(conn: &Connection, done: &AtomicBool) -> (Vec<Duration>, Vec<Duration>) {
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    while !done.load(Relaxed) {
        let start = Instant::now();
        conn.join(ROOM);
        joins.push(start.elapsed());
        let start = Instant::now();
        conn.leave(ROOM);
        leaves.push(start.elapsed());
        thread::sleep(Duration::from_micros(200));
    }
    (joins, leaves)
}

fn report(what: &str, mut samples: Vec<Duration>) {
    if samples.is_empty() {
        println!("{what}: no calls");
        return;
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{what}: {} calls, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        samples.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(at(1.0))
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
