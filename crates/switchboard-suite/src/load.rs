//! The machinery of the load examples (`engine_load`, `stream_load`): WebSocket
//! clients over in-process pipes, messages stamped with their send time, bursts held
//! within a window, paced publishing, and the latency's percentiles.
//!
//! A run puts receivers on one hub, in rooms, and publishes from another: what it
//! measures crosses the engine between them.

use futures_util::StreamExt;
use std::{
    error::Error,
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard::{
    hub::{Connection, Handler, Hub, HubConfig},
    upgrade::{AcceptConfig, StreamUpgrade},
};
use tokio::{io::DuplexStream, task::JoinHandle};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message as WsMessage};

/// What a load run's functions fail with: a run is a program, not a library.
pub type LoadError = Box<dyn Error + Send + Sync>;

/// A WebSocket client over an in-process pipe ([`pipe_client`]).
pub type PipeClient = WebSocketStream<DuplexStream>;

/// The most messages a burst keeps between the publisher and its receivers, so that
/// no bounded queue on the way sheds: the burst's throughput is what gets through, not
/// what is sent. Half of the Redis broker's default queues (1,024 envelopes each way).
pub const WINDOW: usize = 512;

/// A hub that takes as many clients as a load run opens (they all come from one
/// address, or none: the pipes have no peer).
pub fn hub_config() -> HubConfig {
    HubConfig::default()
        .max_connections(100_000)
        .max_connections_per_ip(100_000)
}

/// Joins the room its `room` query parameter names.
#[derive(Debug, Clone, Copy)]
pub struct JoinRoom;

impl Handler for JoinRoom {
    async fn on_open(&self, conn: &Connection) {
        if let Some(room) = conn.query("room").map(str::to_owned) {
            conn.join(&room);
        }
    }
}

/// A client of `hub` on `path` (with its query) over an in-process pipe
/// (`tokio::io::duplex`), so that tens of thousands of them need no file descriptor;
/// the hub runs `handler` for it as for a client over TCP.
pub async fn pipe_client<H: Handler>(
    hub: &Hub,
    path: &str,
    handler: Arc<H>,
) -> Result<PipeClient, LoadError> {
    let (client, server) = tokio::io::duplex(16 * 1024);
    let hub = hub.clone();
    tokio::spawn(async move {
        if let Ok(upgrade) = StreamUpgrade::read(server, &AcceptConfig::default()).await {
            let _ = upgrade.register_shared(&hub, handler).await;
        }
    });
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://localhost{path}"), client).await?;
    Ok(ws)
}

/// The time base a run stamps its messages against.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock that starts now.
    pub fn start() -> Self {
        Self(Instant::now())
    }

    /// Microseconds since the clock started.
    pub fn micros(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// `tag` stamped with the time now: `<tag> <µs>`.
    pub fn stamp(&self, tag: &str) -> String {
        format!("{tag} {}", self.micros())
    }

    /// How long ago `text` was stamped (its last word, so that a hub may put its own
    /// words before it, a stream's position say); `None` if it carries no stamp.
    pub fn since(&self, text: &str) -> Option<u64> {
        let sent: u64 = text.rsplit(' ').next()?.parse().ok()?;
        Some(self.micros().saturating_sub(sent))
    }
}

/// Latencies in microseconds, sorted.
#[derive(Debug, Clone, Default)]
pub struct Latencies(Vec<u64>);

impl Latencies {
    /// The latencies, sorted.
    pub fn new(mut micros: Vec<u64>) -> Self {
        micros.sort_unstable();
        Self(micros)
    }

    /// The `p` quantile (0.5 the median), nearest rank; 0 for none.
    pub fn quantile(&self, p: f64) -> u64 {
        let Some(last) = self.0.len().checked_sub(1) else {
            return 0;
        };
        let at = (last as f64 * p).round() as usize;
        self.0[at.min(last)]
    }

    /// The largest; 0 for none.
    pub fn max(&self) -> u64 {
        self.0.last().copied().unwrap_or(0)
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Latencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |micros: u64| micros as f64 / 1000.0;
        write!(
            f,
            "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.max())
        )
    }
}

/// What the receivers of a run got: stamped messages counted per receiver with their
/// latencies, and whether each has seen a probe (an unstamped message).
#[derive(Debug)]
struct Receipts {
    clock: Clock,
    counts: Vec<AtomicUsize>,
    probed: Vec<AtomicBool>,
    latencies: Mutex<Vec<u64>>,
}

impl Receipts {
    fn note(&self, receiver: usize, text: &str) {
        match self.clock.since(text) {
            Some(latency) => {
                self.counts[receiver].fetch_add(1, Relaxed);
                lock(&self.latencies).push(latency);
            }
            None => self.probed[receiver].store(true, Relaxed),
        }
    }

    fn delivered(&self) -> usize {
        self.counts.iter().map(|count| count.load(Relaxed)).sum()
    }

    fn take_latencies(&self) -> Latencies {
        Latencies::new(std::mem::take(&mut *lock(&self.latencies)))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A burst's outcome: how many messages, how long until the last receiver had them.
#[derive(Debug, Clone, Copy)]
pub struct Burst {
    /// Messages published.
    pub messages: usize,
    /// Deliveries expected (`messages` × receivers per room).
    pub expected: usize,
    /// Deliveries seen.
    pub delivered: usize,
    /// From the first publish to the last delivery (or the time limit).
    pub took: Duration,
}

impl fmt::Display for Burst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.took.as_secs_f64();
        write!(
            f,
            "burst of {} msgs: {:.0} msgs/s ({:.0} deliveries/s)",
            self.messages,
            self.messages as f64 * self.delivered as f64 / self.expected.max(1) as f64 / secs,
            self.delivered as f64 / secs,
        )?;
        if self.delivered < self.expected {
            write!(
                f,
                " (incomplete: {} deliveries missing)",
                self.expected - self.delivered
            )?;
        }
        Ok(())
    }
}

/// A paced run's outcome: the latency of every delivery.
#[derive(Debug, Clone)]
pub struct Paced {
    /// Messages per second asked for.
    pub rate: u64,
    /// Messages published.
    pub messages: usize,
    /// Deliveries expected.
    pub expected: usize,
    /// Publish to receipt, every receiver.
    pub latencies: Latencies,
}

impl fmt::Display for Paced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} msgs/s paced: {}", self.rate, self.latencies)?;
        if self.latencies.len() < self.expected {
            let missing = self.expected - self.latencies.len();
            write!(f, " ({missing} of {} deliveries missing)", self.expected)?;
        }
        Ok(())
    }
}

/// Receivers on one hub, spread over rooms (receiver `i` in room `i % rooms`, the
/// same number in each), and a hub that publishes to those rooms in turn.
#[derive(Debug)]
pub struct Delivery {
    publisher: Hub,
    rooms: Vec<String>,
    per_room: usize,
    receipts: Arc<Receipts>,
    tasks: Vec<JoinHandle<()>>,
}

impl Delivery {
    /// Opens `per_room` receivers in each of `rooms` rooms on `receiving` and waits
    /// until each has heard `publisher` (at most `limit`): the engine carries every
    /// room's subscription from then on.
    pub async fn open(
        publisher: Hub,
        receiving: &Hub,
        rooms: usize,
        per_room: usize,
        limit: Duration,
    ) -> Result<Self, LoadError> {
        let rooms: Vec<String> = (0..rooms.max(1)).map(|i| format!("room{i}")).collect();
        let per_room = per_room.max(1);
        let receivers = rooms.len() * per_room;
        let receipts = Arc::new(Receipts {
            clock: Clock::start(),
            counts: (0..receivers).map(|_| AtomicUsize::new(0)).collect(),
            probed: (0..receivers).map(|_| AtomicBool::new(false)).collect(),
            latencies: Mutex::default(),
        });
        let handler = Arc::new(JoinRoom);
        let mut tasks = Vec::with_capacity(receivers);
        for i in 0..receivers {
            let path = format!("/?room={}", rooms[i % rooms.len()]);
            let ws = pipe_client(receiving, &path, handler.clone()).await?;
            tasks.push(tokio::spawn(receive(ws, i, receipts.clone())));
        }
        let delivery = Self {
            publisher,
            rooms,
            per_room,
            receipts,
            tasks,
        };
        delivery.probe(limit).await?;
        Ok(delivery)
    }

    /// Every receiver, as many as there are.
    pub fn receivers(&self) -> usize {
        self.rooms.len() * self.per_room
    }

    /// Publishes a probe to each room whose receivers have not all heard one, every
    /// 100 ms, until they have: a join reaches the engine a round trip or more after
    /// the receiver's handshake, and a message before that would not arrive. At most
    /// [`WINDOW`] probes go out every 10 ms, so that probing 10,000 rooms sheds none.
    async fn probe(&self, limit: Duration) -> Result<(), LoadError> {
        let began = Instant::now();
        loop {
            let deaf: Vec<&String> = self
                .rooms
                .iter()
                .enumerate()
                .filter(|(room, _)| !self.heard_probe(*room))
                .map(|(_, name)| name)
                .collect();
            if deaf.is_empty() {
                return Ok(());
            }
            if began.elapsed() > limit {
                return Err(format!("{} rooms never heard the publisher", deaf.len()).into());
            }
            for rooms in deaf.chunks(WINDOW) {
                for room in rooms {
                    self.publisher.to(room).send_text("probe");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn heard_probe(&self, room: usize) -> bool {
        (room..self.receivers())
            .step_by(self.rooms.len())
            .all(|receiver| self.receipts.probed[receiver].load(Relaxed))
    }

    fn publish(&self, sent: usize) {
        let room = &self.rooms[sent % self.rooms.len()];
        self.publisher
            .to(room)
            .send_text(self.receipts.clock.stamp("m"));
    }

    /// Publishes `messages` as fast as the receivers take them (at most [`WINDOW`] on
    /// their way), and waits at most `limit` for the last one to arrive everywhere.
    pub async fn burst(&self, messages: usize, limit: Duration) -> Burst {
        let before = self.receipts.delivered();
        let delivered = || (self.receipts.delivered() - before) / self.per_room;
        let began = Instant::now();
        for sent in 0..messages {
            while sent >= delivered() + WINDOW && began.elapsed() < limit {
                tokio::task::yield_now().await;
            }
            self.publish(sent);
        }
        let expected = messages * self.per_room;
        self.wait_for(before + expected, began, limit).await;
        self.receipts.take_latencies();
        Burst {
            messages,
            expected,
            delivered: self.receipts.delivered() - before,
            took: began.elapsed(),
        }
    }

    /// Publishes `rate` messages per second (in 1 ms ticks) for `secs` seconds, waits
    /// at most `drain` for the last to arrive, and gives every delivery's latency.
    pub async fn paced(&self, rate: u64, secs: f64, drain: Duration) -> Paced {
        let before = self.receipts.delivered();
        self.receipts.take_latencies();
        let length = Duration::from_secs_f64(secs);
        let began = Instant::now();
        let mut messages = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while began.elapsed() < length {
            tick.tick().await;
            let due = (rate as f64 * began.elapsed().as_secs_f64()) as usize;
            while messages < due {
                self.publish(messages);
                messages += 1;
            }
        }
        let expected = messages * self.per_room;
        self.wait_for(before + expected, Instant::now(), drain)
            .await;
        Paced {
            rate,
            messages,
            expected,
            latencies: self.receipts.take_latencies(),
        }
    }

    async fn wait_for(&self, delivered: usize, began: Instant, limit: Duration) {
        while self.receipts.delivered() < delivered && began.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn receive(mut ws: PipeClient, receiver: usize, receipts: Arc<Receipts>) {
    while let Some(Ok(message)) = ws.next().await {
        if let WsMessage::Text(text) = message {
            receipts.note(receiver, text.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_ranks() {
        let latencies = Latencies::new((1..=100).rev().collect());
        assert_eq!(latencies.quantile(0.5), 51);
        assert_eq!(latencies.quantile(0.99), 99);
        assert_eq!(latencies.max(), 100);
        assert_eq!(Latencies::default().quantile(0.99), 0);
    }

    #[tokio::test]
    async fn a_run_counts_every_delivery_across_hubs() {
        let network = switchboard::hub::MemoryNetwork::new();
        let publisher = Hub::with_broker(hub_config(), network.broker());
        let receiving = Hub::with_broker(hub_config(), network.broker());
        let limit = Duration::from_secs(10);
        let run = Delivery::open(publisher, &receiving, 3, 2, limit)
            .await
            .unwrap();
        assert_eq!(run.receivers(), 6);

        let burst = run.burst(1000, limit).await;
        assert_eq!((burst.expected, burst.delivered), (2000, 2000));
        let paced = run.paced(200, 0.25, limit).await;
        assert_eq!(paced.expected, paced.messages * 2);
        assert_eq!(paced.latencies.len(), paced.expected);
    }

    #[test]
    fn a_stamp_is_the_last_word() {
        let clock = Clock::start();
        let stamped = format!("7 1234 {}", clock.stamp("m"));
        assert!(clock.since(&stamped).is_some());
        assert_eq!(clock.since("probe"), None);
    }
}
