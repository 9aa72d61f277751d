//! The task that owns the connections to Redis: it publishes what the hub sends and
//! follows the hub's rooms with subscriptions, on one shard per master (the only node
//! of a single Redis or a Sentinel's master, or each master of a Redis Cluster), while
//! a reader task per subscriber connection reads what arrives, counts the gaps in it,
//! and hands it to a delivery task that feeds the hub's inbox.
//!
//! Each shard fails and reconnects alone, with jittered backoff: when one master
//! dies, freezes or is cut off, the others keep their connections and keep
//! delivering. A shard fails when Redis closes or breaks a connection, when a pipeline
//! of publishes or a subscription is not answered in time, when its subscriber is
//! silent past [`KEEPALIVE_TIMEOUT`] (it is pinged every [`KEEPALIVE`]), and (Sentinel)
//! when its node is no longer the master. Publishes for a shard that is down are
//! counted lost at once. On a Redis Cluster, a failed shard or a moved slot makes the
//! link ask for the map again (with backoff, until every slot has a live master), and
//! only the channels whose slot changed master are subscribed again, on the new one.
//!
//! Memory stays bounded on both ways: at most `max_pending_publishes` publishes are
//! pending, in the hub's queue, in the shards' queues and in the pipelines on their
//! way together (each counted until answered or counted lost), arrivals in a queue
//! of `max_pending_deliveries`; when the latter is full the readers stop reading, and
//! Redis holds (and past its `client-output-buffer-limit pubsub`, drops) what the hub
//! cannot take.

use crate::{
    Publish, RedisConfig, RoomChanges,
    cluster::{self, Servers, SlotMap},
    connect, pubsub,
    reader::{Heard, Reader},
    shard::{self, Master, Opened, Outcome, Publisher, Publishing},
    stream,
};
use futures_util::{
    StreamExt,
    future::{BoxFuture, join_all},
    stream::FuturesUnordered,
};
use redis::RedisResult;
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard_broker::{
    Backoff, DEFAULT_MAX_CHANNELS, GapDetector, Inbox, RECEIVER_IDLE,
    link::{Aborting, Counter, Counters, deliver},
};
use tokio::{
    sync::mpsc::{self, Receiver, error::TrySendError},
    time::{Instant as Deadline, MissedTickBehavior},
};

/// Publishes that wait are sent together, up to this many in one pipeline.
const MAX_BATCH: usize = 256;

/// The shortest wait before reconnecting a shard or asking for the map again; waits
/// grow with jitter up to `RedisConfig::max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// How long one attempt to open a shard's connections may take (the Sentinels'
/// answer included): an unreachable host can hold a TCP connect for minutes, and
/// `RedisBroker::connect` must fail rather than hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often each subscriber connection is sent a `PING`: a quiet connection to a
/// frozen (SIGSTOPped, swapping) or blackholed master reads nothing and writes into
/// the kernel's buffers without error, so silence is the only sign, and a PING makes
/// a live Redis speak.
const KEEPALIVE: Duration = Duration::from_secs(1);

/// How long a subscriber connection may read nothing (its reader not waiting for the
/// hub) before its shard is taken as lost: three PINGs unanswered. Long enough for a
/// busy Redis; short enough that a frozen master's rooms are known lost (readiness,
/// counted publishes) within seconds rather than never.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a shard must stay up, its subscriptions confirmed, before its backoff
/// starts again from the shortest wait and its next failure is warned of: a shard
/// that opens and fails at once (an ACL user refused `CLIENT SETNAME`) must keep
/// backing off, and be warned of once per outage, not reconnect in a loop.
const PROVEN_AFTER: Duration = KEEPALIVE;

/// How long a subscription (or a PING) may take to be written: a connection whose
/// peer stopped reading fills the kernel's buffers, and its writer must not wait on
/// it forever.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Commands waiting for a subscriber's writer: a subscription per batch of room
/// changes, a PING a second. Full, the writer is stuck on a peer that stopped reading
/// (it fails within [`SEND_TIMEOUT`]), and the shard fails at once.
const MAX_QUEUED_WRITES: usize = 64;

/// How often a shard that follows failovers (Sentinel) asks its node whether it is
/// still the master: a Sentinel's failover closes the old master's clients, but a
/// master demoted behind the Sentinels' back (`REPLICAOF` by an operator, a split)
/// keeps them, and a hub on it would publish where no other hub listens. A second
/// bounds that stretch.
const ROLE_CHECK: Duration = Duration::from_secs(1);

/// How long the node may take to say its role before its shard is taken as lost:
/// longer than a pipeline of publishes may take, since the question waits behind
/// those on the same connection and a busy node is no reason to reconnect.
const ROLE_TIMEOUT: Duration = Duration::from_secs(4);

/// What `RedisBroker::connect` opened: the cluster's map, and each master's
/// connections (or why not).
pub(crate) struct Link {
    map: Option<Arc<SlotMap>>,
    shards: Vec<(Master, RedisResult<Opened>)>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

impl Link {
    /// Opens the connections, within [`CONNECT_TIMEOUT`]: to the node that takes
    /// publishes now, or to every master of the cluster's current map; an error if
    /// none could be opened (a master that could not is retried by the link task).
    pub(crate) async fn open(servers: &Servers) -> RedisResult<Self> {
        let map = tokio::time::timeout(CONNECT_TIMEOUT, servers.fetch_map())
            .await
            .unwrap_or_else(|_| Err(connect::failed("no cluster node answered in time")))?;
        let masters = masters(map.as_deref());
        let opened = join_all(
            masters
                .iter()
                .map(|master| open(master.clone(), servers.clone())),
        )
        .await;
        let shards: Vec<_> = masters.into_iter().zip(opened).collect();
        match shards.iter().find_map(|(_, opened)| opened.as_ref().err()) {
            Some(error) if shards.iter().all(|(_, opened)| opened.is_err()) => Err(error.clone()),
            _ => Ok(Self { map, shards }),
        }
    }
}

/// Opens `master`'s connections within [`CONNECT_TIMEOUT`].
async fn open(master: Master, servers: Servers) -> RedisResult<Opened> {
    tokio::time::timeout(CONNECT_TIMEOUT, master.open(servers))
        .await
        .unwrap_or_else(|_| Err(connect::failed("Redis did not answer a connect in time")))
}

/// The masters of `map`, or the connector's primary off a cluster.
fn masters(map: Option<&SlotMap>) -> Vec<Master> {
    match map {
        None => vec![Master::Primary],
        Some(map) => map
            .masters()
            .iter()
            .map(|(host, port)| Master::At(host.clone(), *port))
            .collect(),
    }
}

/// What the link task works with, for its whole life.
pub(crate) struct Task {
    pub(crate) servers: Servers,
    /// Told to drop its connections whenever a shard reconnects.
    pub(crate) reads: Arc<stream::Reads>,
    pub(crate) config: RedisConfig,
    pub(crate) inbox: Inbox,
    pub(crate) changes: Arc<RoomChanges>,
    pub(crate) stats: Counters,
    pub(crate) ready: Arc<AtomicBool>,
}

/// Serves one hub until the broker is dropped or the hub is gone, from `first` (what
/// `RedisBroker::connect` opened) or from connections it opens itself.
pub(crate) async fn run(task: Task, first: Option<Link>, mut publishes: Receiver<Publish>) {
    let capacity = task.config.max_pending_deliveries.max(1);
    let (deliveries, arrived) = mpsc::channel(capacity);
    let _delivery = Aborting(tokio::spawn(deliver(
        arrived,
        task.inbox.clone(),
        task.stats.clone(),
    )));
    let detector = Arc::new(Mutex::new(GapDetector::new(
        DEFAULT_MAX_CHANNELS,
        RECEIVER_IDLE,
    )));
    let reader = Reader::new(task.inbox.node(), deliveries, detector, task.stats.clone());
    let mut session = Session::new(&task, reader);
    match first {
        Some(link) => session.adopt(link),
        None => {
            session.set_map(None);
            session.want_map();
        }
    }
    session.serve(&mut publishes).await;
    drop(session);
    // The hub is gone: what it queued that the link never took is lost, counted.
    publishes.close();
    while let Ok(publish) = publishes.try_recv() {
        lose(&task.stats, publish, "the hub is gone");
    }
}

/// Counts `publish` lost and drops it, telling whoever awaits a stream's position why.
fn lose(stats: &Counters, publish: Publish, why: &str) {
    stats.count(Counter::Lost);
    stats.dequeued(1);
    tracing::trace!(channel = %publish.channel(), "envelope lost: {why}");
    publish.lose(why);
}

/// What happened off the link task: a job it started ended.
enum Event {
    /// An attempt to open `master`'s connections (`generation`: the shard's then).
    /// Boxed: the connections are ten times the size of the other events.
    Opened(Master, u64, Box<RedisResult<Opened>>),
    /// A batch of publishes on `master`'s connection `generation` was answered.
    Published(Master, u64, Outcome),
    /// The reader of `master`'s connection `generation` ended: the hub is gone
    /// (`Ok`), or the connection failed.
    ReaderEnded(Master, u64, Result<(), String>),
    /// The writer of `master`'s subscriber `generation` ended: its connection was
    /// dropped (`Ok`), or a write failed.
    WriterEnded(Master, u64, Result<(), String>),
    /// The primary's node (its connection `generation`) said whether it is the master.
    Role(u64, String, RedisResult<bool>),
    /// The cluster's map was fetched.
    Mapped(RedisResult<Option<Arc<SlotMap>>>),
}

/// One master's connections and what waits for them.
struct Shard {
    /// `None` while down (or being opened).
    conn: Option<Conn>,
    /// Which connections these are (or will be), from the session's counter, so that
    /// what a job says of older ones is ignored: of this shard's, and of a shard of
    /// the same master that the map dropped and named again.
    generation: u64,
    opening: bool,
    backoff: Backoff,
    /// When to try opening the connections again, while down.
    retry_at: Deadline,
    /// Since when the shard is down after having been up (for the log and the count
    /// of reconnections).
    down_since: Option<Instant>,
    /// Whether this outage's first failure to reconnect was logged.
    warned: bool,
    /// Whether opening it was tried at least once.
    tried: bool,
    /// The channels subscribed (asked for) on `conn`.
    channels: HashSet<String>,
    /// Publishes taken from the hub's queue, for the next pipeline.
    queue: VecDeque<Publish>,
    /// The generation of the pipeline on its way, if one is: one at a time, even
    /// across a reconnection (the old connection's job may still be retrying
    /// redirected publishes), so that publishes keep their order on each channel.
    publishing: Option<u64>,
}

/// The session's counter of shard generations: never reset, so that a shard the map
/// drops and names again starts past every generation its old jobs carry.
#[derive(Debug, Default)]
struct Generations(u64);

impl Generations {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// A shard's live connections.
struct Conn {
    node: connect::Node,
    publisher: Publisher,
    /// To the subscriber's writer task.
    writes: mpsc::Sender<Write>,
    heard: Arc<Heard>,
    _reader: Aborting<()>,
    _writer: Aborting<()>,
    /// Channels named in the (un)subscriptions sent: Redis confirms each once, in order.
    sent: u64,
    /// The confirmations that make the hub ready.
    needed: u64,
    opened: Instant,
    /// Whether it stayed up for [`PROVEN_AFTER`] with its subscriptions confirmed.
    proven: bool,
}

/// What is written on a subscriber connection.
enum Write {
    /// `CLIENT SETNAME`.
    Name(String),
    Ping,
    /// A verb and its channels.
    Channels(&'static str, Vec<String>),
}

/// The cluster's map, asked for again when a shard fails or a slot moves.
struct MapRefresh {
    wanted: bool,
    /// Numbers the requests for the map (a failed shard, a moved slot or channel):
    /// the number of the last one.
    asked: u64,
    /// The last request made before the fetch under way (or the last one) started:
    /// the requests it answers. A later one needs a later fetch.
    fetched_for: u64,
    /// Whether it was asked for at least once.
    tried: bool,
    fetching: bool,
    backoff: Backoff,
    retry_at: Deadline,
}

/// The state of the link, for its whole life.
struct Session<'a> {
    task: &'a Task,
    /// The template of each connection's reader.
    reader: Reader,
    publishing: Arc<Publishing>,
    /// `None` off a cluster (one shard, [`Master::Primary`]), and until a cluster's
    /// map is known.
    map: Option<Arc<SlotMap>>,
    refresh: MapRefresh,
    shards: HashMap<Master, Shard>,
    generations: Generations,
    /// See [`Session::others`]; `None` when a shard opened or failed since.
    others: Option<Arc<HashMap<String, Publisher>>>,
    jobs: FuturesUnordered<BoxFuture<'static, Event>>,
    /// The rooms this hub has members in: subscribed now, and again after a reconnect.
    rooms: HashSet<String>,
    /// Channels Redis unsubscribed from a master by itself (their slot moved away),
    /// or refused there with `MOVED`, with that master and the map request that
    /// followed: subscribed again once a map fetched after it says where they went.
    evicted: HashMap<String, (Master, u64)>,
    /// When the subscriptions that make the hub ready were asked for, until confirmed.
    ready_at: Option<Instant>,
    /// Whether the primary's node was asked its role and has not answered yet.
    asking_role: bool,
    /// Whether the first attempt to open the link is over (the map asked for, each
    /// master tried once): until then the hub's publishes wait in its queue, as they
    /// would for a connect, rather than be lost for a link not yet tried.
    started: bool,
}

impl<'a> Session<'a> {
    fn new(task: &'a Task, reader: Reader) -> Self {
        let backoff = Backoff::new(FIRST_BACKOFF, task.config.max_backoff);
        Self {
            task,
            reader,
            publishing: Arc::new(Publishing {
                stats: task.stats.clone(),
                connector: task.servers.connector().clone(),
                verb: task.config.publish_verb(),
            }),
            map: None,
            refresh: MapRefresh {
                wanted: false,
                asked: 0,
                fetched_for: 0,
                tried: false,
                fetching: false,
                backoff,
                retry_at: Deadline::now(),
            },
            shards: HashMap::new(),
            generations: Generations::default(),
            others: None,
            jobs: FuturesUnordered::new(),
            rooms: HashSet::new(),
            evicted: HashMap::new(),
            ready_at: None,
            asking_role: false,
            started: false,
        }
    }

    /// Takes what `RedisBroker::connect` opened.
    fn adopt(&mut self, link: Link) {
        self.set_map(link.map);
        for (master, opened) in link.shards {
            let Some(shard) = self.shards.get_mut(&master) else {
                continue;
            };
            shard.opening = true;
            let generation = shard.generation;
            self.opened(master, generation, opened);
        }
    }

    async fn serve(&mut self, publishes: &mut Receiver<Publish>) {
        let notify = self.reader.notify().clone();
        let mut keepalive = interval(KEEPALIVE);
        let mut role_check = self
            .task
            .servers
            .connector()
            .follows_failover()
            .then(|| interval(ROLE_CHECK));
        loop {
            let wake = self.next_wake();
            tokio::select! {
                publish = publishes.recv(), if self.started => {
                    let Some(publish) = publish else {
                        return self.finish().await;
                    };
                    self.take_publishes(publish, publishes);
                }
                Some(event) = self.jobs.next(), if !self.jobs.is_empty() => {
                    if !self.handle(event) {
                        return;
                    }
                }
                () = self.task.changes.changed() => self.apply_room_changes(),
                () = notify.notified() => self.take_evictions(),
                _ = keepalive.tick() => self.keep_alive(),
                _ = tick(&mut role_check) => self.check_role(),
                () = sleep_until(wake) => self.wake(),
            }
            self.note_restored();
            self.update_ready();
            self.started = self.started
                || (self.map.is_some() || !self.task.servers.is_cluster() || self.refresh.tried)
                    && self.shards.values().all(|shard| shard.tried);
        }
    }

    /// The broker is dropped (its hub shut down): what the hub published before,
    /// its members' leaves and its goodbye among them, still goes out, within
    /// [`shard::PUBLISH_TIMEOUT`]; what is queued or unanswered past that is counted
    /// as the session drops.
    async fn finish(&mut self) {
        let deadline = Deadline::now() + shard::PUBLISH_TIMEOUT;
        while self.shards.values().any(|shard| shard.publishing.is_some()) {
            let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.jobs.next()).await else {
                break;
            };
            if !self.handle(event) {
                break;
            }
        }
    }

    /// Handles what a job said; `false` once the hub is gone.
    fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Opened(master, generation, opened) => {
                self.opened(master, generation, *opened);
            }
            Event::Published(master, generation, outcome) => {
                self.published(master, generation, outcome)
            }
            Event::ReaderEnded(_, _, Ok(())) => return false,
            Event::ReaderEnded(master, generation, Err(failure))
            | Event::WriterEnded(master, generation, Err(failure)) => {
                if self.is_current(&master, generation) {
                    self.fail(&master, &failure);
                }
            }
            Event::WriterEnded(_, _, Ok(())) => {}
            Event::Role(generation, node, role) => self.role_said(generation, &node, role),
            Event::Mapped(map) => self.mapped(map),
        }
        true
    }

    fn is_current(&self, master: &Master, generation: u64) -> bool {
        self.shards
            .get(master)
            .is_some_and(|shard| shard.conn.is_some() && shard.generation == generation)
    }

    /// A shard for `master`, down: opened at the next wake. One that `replaces` a
    /// master that failed (a failover) counts as a reconnection when it opens.
    fn add_shard(&mut self, master: Master, replaces: bool) {
        let backoff = Backoff::new(FIRST_BACKOFF, self.task.config.max_backoff);
        let generations = &mut self.generations;
        self.shards.entry(master).or_insert_with(|| Shard {
            conn: None,
            generation: generations.next(),
            opening: false,
            backoff,
            retry_at: Deadline::now(),
            down_since: replaces.then(Instant::now),
            warned: false,
            tried: false,
            channels: HashSet::new(),
            queue: VecDeque::new(),
            publishing: None,
        });
    }

    /// The earliest moment something is due: a shard to reopen, the map to ask for.
    fn next_wake(&self) -> Deadline {
        let shards = self.shards.values();
        let reopen = shards.filter(|shard| shard.conn.is_none() && !shard.opening);
        let map = (self.refresh.wanted && !self.refresh.fetching).then_some(self.refresh.retry_at);
        reopen
            .map(|shard| shard.retry_at)
            .chain(map)
            .min()
            .unwrap_or_else(|| Deadline::now() + Duration::from_secs(3600))
    }

    /// Starts what is due: opening the shards that are down, asking for the map.
    fn wake(&mut self) {
        let now = Deadline::now();
        if self.refresh.wanted && !self.refresh.fetching && self.refresh.retry_at <= now {
            self.refresh.fetching = true;
            self.refresh.fetched_for = self.refresh.asked;
            let servers = self.task.servers.clone();
            self.jobs.push(Box::pin(
                async move { Event::Mapped(servers.fetch_map().await) },
            ));
        }
        for (master, shard) in &mut self.shards {
            if shard.conn.is_none() && !shard.opening && shard.retry_at <= now {
                shard.opening = true;
                let (master, generation) = (master.clone(), shard.generation);
                let servers = self.task.servers.clone();
                self.jobs.push(Box::pin(async move {
                    let opened = open(master.clone(), servers).await;
                    Event::Opened(master, generation, Box::new(opened))
                }));
            }
        }
    }

    /// A shard's connections opened (or not): subscribes to its channels.
    fn opened(&mut self, master: Master, generation: u64, opened: RedisResult<Opened>) {
        let Some(shard) = self.shards.get_mut(&master) else {
            // The map no longer names this master.
            return;
        };
        if shard.generation != generation || !shard.opening {
            return;
        }
        shard.opening = false;
        shard.tried = true;
        let opened = match opened {
            Ok(opened) => opened,
            Err(error) => {
                let wait = shard.backoff.next_wait();
                shard.retry_at = Deadline::now() + wait;
                if shard.warned {
                    tracing::debug!(%master, %error, ?wait, "Redis still unreachable");
                } else {
                    shard.warned = true;
                    tracing::warn!(%master, %error, "Redis unreachable; the hub serves its own members and connects when it can");
                }
                if self.map.is_some() {
                    // Perhaps no longer a master at all.
                    self.want_map();
                }
                return;
            }
        };
        let reader = self.reader.for_connection();
        let heard = reader.heard().clone();
        let generation = shard.generation;
        let (writes, to_write) = mpsc::channel(MAX_QUEUED_WRITES);
        let ended = master.clone();
        let reading = spawn_reporting(&self.jobs, reader.run(opened.replies), move |ended_with| {
            Event::ReaderEnded(ended, generation, ended_with)
        });
        let ended = master.clone();
        let writing = spawn_reporting(
            &self.jobs,
            write_all(opened.commands, to_write),
            move |ended_with| Event::WriterEnded(ended, generation, ended_with),
        );
        shard.conn = Some(Conn {
            node: opened.node,
            publisher: opened.publisher,
            writes,
            heard,
            _reader: reading,
            _writer: writing,
            sent: 0,
            needed: 0,
            opened: Instant::now(),
            proven: false,
        });
        self.others = None;
        // The channels left while a leave was on its way on a connection that failed
        // were never confirmed: their numbers go (see `apply_room_changes`).
        let wanted: HashSet<String> = self.wanted().into_iter().collect();
        self.reader
            .detector()
            .retain_channels(|channel| wanted.contains(channel));
        let name = format!("switchboard-sub-{}", self.task.inbox.node());
        if self.write(&master, Write::Name(name)) {
            let channels: Vec<String> = self
                .wanted()
                .into_iter()
                .filter(|channel| self.serves(&master, channel))
                .collect();
            self.subscribe_for_ready(&master, channels);
        }
        self.start_publishing(&master);
    }

    /// Sends `channels`' subscriptions on `master`, as ones the hub is not ready without.
    fn subscribe_for_ready(&mut self, master: &Master, channels: Vec<String>) {
        if channels.is_empty() {
            return;
        }
        if self.send(master, true, channels) {
            if let Some(conn) = self.conn(master) {
                conn.needed = conn.sent;
            }
            self.ready_at.get_or_insert_with(Instant::now);
        }
    }

    /// The channels the hub subscribes to: its own and its rooms'.
    fn wanted(&self) -> Vec<String> {
        let config = &self.task.config;
        let mut channels = vec![
            config.channel_all(),
            config.channel_node(self.task.inbox.node()),
        ];
        channels.extend(self.rooms.iter().map(|room| config.channel_room(room)));
        channels
    }

    /// The master `channel` is on, by the map; `None` while a cluster's is not known.
    fn master_of(&self, channel: &str) -> Option<Master> {
        match &self.map {
            None if self.task.servers.is_cluster() => None,
            None => Some(Master::Primary),
            Some(map) => {
                let (host, port) = map.owner_of(channel);
                Some(Master::At(host.clone(), *port))
            }
        }
    }

    /// Whether `channel` is subscribed on `master` now: its master by the map, and not
    /// one Redis there unsubscribed by itself.
    fn serves(&self, master: &Master, channel: &str) -> bool {
        self.master_of(channel).as_ref() == Some(master)
            && self
                .evicted
                .get(channel)
                .is_none_or(|(from, _)| from != master)
    }

    fn conn(&mut self, master: &Master) -> Option<&mut Conn> {
        self.shards.get_mut(master)?.conn.as_mut()
    }

    /// Hands `write` to `master`'s subscriber's writer; whether it took it (if not,
    /// the shard failed: its writer is stuck or gone).
    fn write(&mut self, master: &Master, write: Write) -> bool {
        let Some(conn) = self.conn(master) else {
            return false;
        };
        let failure = match conn.writes.try_send(write) {
            Ok(()) => return true,
            Err(TrySendError::Full(_)) => "Redis is not taking the subscriber's commands",
            Err(TrySendError::Closed(_)) => "the subscriber's writer stopped",
        };
        self.fail(master, failure);
        false
    }

    /// (Un)subscribes `channels` on `master` (sharded pub/sub on a Redis Cluster);
    /// whether it was sent. Unsubscriptions are noted first, so that its reader tells
    /// them from those a Redis Cluster sends when a slot moves away.
    fn send(&mut self, master: &Master, subscribe: bool, channels: Vec<String>) -> bool {
        let verb = match (subscribe, self.task.servers.is_cluster()) {
            (true, false) => "SUBSCRIBE",
            (false, false) => "UNSUBSCRIBE",
            (true, true) => "SSUBSCRIBE",
            (false, true) => "SUNSUBSCRIBE",
        };
        let Some(conn) = self.conn(master) else {
            return false;
        };
        if !subscribe {
            conn.heard.leaving(&channels);
        }
        if !self.write(master, Write::Channels(verb, channels.clone())) {
            return false;
        }
        let Some(shard) = self.shards.get_mut(master) else {
            return false;
        };
        if let Some(conn) = shard.conn.as_mut() {
            conn.sent += channels.len() as u64;
        }
        for channel in channels {
            if subscribe {
                shard.channels.insert(channel);
            } else {
                shard.channels.remove(&channel);
            }
        }
        true
    }

    /// Subscribes to the rooms the hub came to have and unsubscribes from those it
    /// left, each on its master. `rooms` takes every change even when a shard is down
    /// or fails midway: it subscribes to them all when it is back.
    fn apply_room_changes(&mut self) {
        let mut per_master: HashMap<Master, (Vec<String>, Vec<String>)> = HashMap::new();
        let mut unsent = Vec::new();
        for (room, wanted) in self.task.changes.take() {
            let channel = self.task.config.channel_room(&room);
            let changed = if wanted {
                self.rooms.insert(room)
            } else {
                self.rooms.remove(&room)
            };
            if !changed {
                continue;
            }
            let master = self.master_of(&channel);
            match master.filter(|master| self.serves(master, &channel)) {
                Some(master) => {
                    let (join, leave) = per_master.entry(master).or_default();
                    if wanted { join } else { leave }.push(channel);
                }
                None if !wanted => unsent.push(channel),
                None => {}
            }
        }
        for (master, (join, leave)) in per_master {
            if !leave.is_empty() && !self.send(&master, false, leave.clone()) {
                unsent.extend(leave);
            }
            if !join.is_empty() {
                self.send(&master, true, join);
            }
        }
        // No confirmation will make the reader forget these channels' numbers: were
        // the hub to come back to one, what was published meanwhile would count as
        // missed.
        let mut detector = self.reader.detector();
        unsent.iter().for_each(|channel| detector.forget(channel));
    }

    /// Takes this publish and those queued behind it (up to a pipeline's worth) to
    /// their shards, and starts the shards' pipelines. A publish for a shard that is
    /// down is counted lost at once: its master may be gone for as long as a failover
    /// takes, and the publishes of the healthy shards must not wait behind it.
    fn take_publishes(&mut self, first: Publish, publishes: &mut Receiver<Publish>) {
        let stats = &self.task.stats;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match publishes.try_recv() {
                Ok(publish) => batch.push(publish),
                Err(_) => break,
            }
        }
        let mut started = HashSet::new();
        for publish in batch {
            let master = self.master_of(publish.channel());
            let shard = master
                .as_ref()
                .and_then(|master| self.shards.get_mut(master));
            match shard {
                // Bounded with the hub's queue: see `RedisConfig::max_pending_publishes`.
                Some(shard) if shard.conn.is_some() => {
                    shard.queue.push_back(publish);
                    started.extend(master);
                }
                _ => lose(stats, publish, "no link to the Redis master of its channel"),
            }
        }
        for master in started {
            self.start_publishing(&master);
        }
    }

    /// Sends the next pipeline of `master`'s queue, unless one is on its way.
    fn start_publishing(&mut self, master: &Master) {
        let ready = self.shards.get(master).is_some_and(|shard| {
            shard.conn.is_some() && shard.publishing.is_none() && !shard.queue.is_empty()
        });
        if !ready {
            return;
        }
        let others = self.others();
        let Some(shard) = self.shards.get_mut(master) else {
            return;
        };
        let Some(conn) = &shard.conn else {
            return;
        };
        shard.publishing = Some(shard.generation);
        let take = shard.queue.len().min(MAX_BATCH);
        let batch: Vec<Publish> = shard.queue.drain(..take).collect();
        let (own, publishing) = (conn.publisher.clone(), self.publishing.clone());
        let (master, generation) = (master.clone(), shard.generation);
        self.jobs.push(Box::pin(async move {
            let outcome = shard::publish(&publishing, own, &others, batch).await;
            Event::Published(master, generation, outcome)
        }));
    }

    /// The connections to the masters that are up, by `host:port`, for the publishes
    /// Redis redirects; made again only when a shard opens or fails.
    fn others(&mut self) -> Arc<HashMap<String, Publisher>> {
        let shards = &self.shards;
        let others = self.others.get_or_insert_with(|| {
            let up = shards
                .iter()
                .filter_map(|(other, shard)| match (other, &shard.conn) {
                    (Master::At(host, port), Some(conn)) => {
                        Some((format!("{host}:{port}"), conn.publisher.clone()))
                    }
                    _ => None,
                });
            Arc::new(up.collect())
        });
        others.clone()
    }

    /// A pipeline of `master`'s was answered: the next one goes, or the shard fails.
    fn published(&mut self, master: Master, generation: u64, outcome: Outcome) {
        if outcome.stale_map {
            self.want_map();
        }
        let shard = self.shards.get_mut(&master);
        if let Some(shard) = shard.filter(|shard| shard.publishing == Some(generation)) {
            shard.publishing = None;
        }
        if !self.is_current(&master, generation) {
            // The shard reconnected meanwhile: its next pipeline waited for this one.
            self.start_publishing(&master);
            return;
        }
        if let Some(failure) = outcome.failed {
            self.fail(&master, &format!("a publish was not answered: {failure}"));
        } else if outcome.demoted {
            // A stream's script refused by a replica: the node was demoted; the shard
            // reconnects to the master now rather than at the next role check.
            self.fail(&master, "READONLY: the node is a replica now");
        } else {
            self.start_publishing(&master);
        }
    }

    /// Takes `master` as lost: drops its connections (and its reader), counts what
    /// waited for it as lost, and reopens it after a wait; on a cluster, asks for the
    /// map again (its replica may be taking over).
    fn fail(&mut self, master: &Master, failure: &str) {
        let stats = &self.task.stats;
        let Some(shard) = self.shards.get_mut(master) else {
            return;
        };
        if shard.conn.take().is_none() {
            return;
        }
        shard.generation = self.generations.next();
        self.others = None;
        shard.channels.clear();
        let wait = shard.backoff.next_wait();
        shard.retry_at = Deadline::now() + wait;
        shard.down_since.get_or_insert_with(Instant::now);
        let queued = shard.queue.len() as u64;
        for publish in shard.queue.drain(..) {
            lose(stats, publish, "the link to its Redis master failed");
        }
        // One warning per outage: the failures to reconnect (to open, or to stay up
        // once open) are logged at `debug`.
        if shard.warned {
            tracing::debug!(%master, %failure, lost = queued, "the link to Redis failed again");
        } else {
            tracing::warn!(%master, %failure, lost = queued, "lost the link to Redis; reconnecting");
        }
        shard.warned = true;
        if self.map.is_some() {
            self.want_map();
        }
    }

    /// Asks for the cluster's map at the next wake (now, unless a refresh failed);
    /// the request's number.
    fn want_map(&mut self) -> u64 {
        if self.task.servers.is_cluster() {
            self.refresh.wanted = true;
            self.refresh.asked += 1;
        }
        self.refresh.asked
    }

    /// A map was fetched (or not): follows it, or asks again after a wait.
    fn mapped(&mut self, map: RedisResult<Option<Arc<SlotMap>>>) {
        self.refresh.fetching = false;
        self.refresh.tried = true;
        match map {
            Ok(map) => self.follow_map(map),
            Err(error) => {
                tracing::debug!(%error, "the cluster's map could not be fetched");
                self.refresh.retry_at = Deadline::now() + self.refresh.backoff.next_wait();
            }
        }
    }

    /// Follows a new map: opens the masters it names anew, drops those it no longer
    /// names, and subscribes the channels whose master changed (or that Redis moved
    /// away) on their master. Asks again, after a wait, while a master it names is
    /// down.
    fn follow_map(&mut self, map: Option<Arc<SlotMap>>) {
        self.set_map(map);
        // A map asked for after Redis moved channels away says where they are now.
        // Even when it names the same master: Redis 7.0 also unsubscribes a slot's
        // channels when a master is told the slot is its own again (`SETSLOT NODE`
        // to itself), and a map stale after all makes Redis refuse the subscription
        // with `MOVED`, which evicts the channels again. A map whose fetch started
        // before a channel moved may not know of the move: that channel waits for
        // the next.
        let answered = self.refresh.fetched_for;
        self.evicted.retain(|_, (_, asked)| *asked > answered);
        let mut moved: HashMap<Master, Vec<String>> = HashMap::new();
        for channel in self.wanted() {
            let Some(master) = self.master_of(&channel) else {
                continue;
            };
            let subscribed = self
                .shards
                .get(&master)
                .is_some_and(|shard| shard.channels.contains(&channel));
            let up = self
                .shards
                .get(&master)
                .is_some_and(|shard| shard.conn.is_some());
            if up && !subscribed && self.serves(&master, &channel) {
                moved.entry(master).or_default().push(channel);
            }
        }
        let resubscribed = !moved.is_empty();
        for (master, channels) in moved {
            self.subscribe_for_ready(&master, channels);
        }
        if resubscribed {
            // The hub reads its streams again, as after a reconnect: what was published
            // on the old master after it unsubscribed this hub is in them.
            self.task.stats.count(Counter::Reconnects);
        }
        let settled = self.refresh.asked == answered
            && self.evicted.is_empty()
            && self.shards.values().all(|shard| shard.conn.is_some());
        if settled {
            self.refresh.wanted = false;
            self.refresh.backoff.reset();
        } else {
            self.refresh.retry_at = Deadline::now() + self.refresh.backoff.next_wait();
        }
    }

    /// Keeps `map`, with a shard for each master it names (and none for the others).
    fn set_map(&mut self, map: Option<Arc<SlotMap>>) {
        self.map = map;
        let masters = masters(self.map.as_deref());
        if self.task.servers.is_cluster() && self.map.is_none() {
            return;
        }
        let gone: Vec<Master> = self
            .shards
            .keys()
            .filter(|master| !masters.contains(master))
            .cloned()
            .collect();
        let mut replaced = false;
        for master in gone {
            self.fail(&master, "no longer a master of the cluster");
            let shard = self.shards.remove(&master);
            replaced |= shard.is_some_and(|shard| shard.down_since.is_some());
        }
        for master in masters {
            self.add_shard(master, replaced);
        }
    }

    /// Takes what the readers heard: channels Redis unsubscribed by itself, and
    /// subscriptions it refused with `MOVED` (the map was stale after all).
    fn take_evictions(&mut self) {
        let mut evicted = Vec::new();
        for (master, shard) in &mut self.shards {
            let Some(conn) = &mut shard.conn else {
                continue;
            };
            for channel in conn.heard.take_evicted() {
                shard.channels.remove(&channel);
                evicted.push((channel, master.clone()));
            }
            for slot in conn.heard.take_moved() {
                // A sharded subscription is one command per slot: Redis refused all
                // its channels at once, and confirms none of them.
                let refused: Vec<String> = shard
                    .channels
                    .iter()
                    .filter(|channel| cluster::slot(channel) == slot)
                    .cloned()
                    .collect();
                let unconfirmed = refused.len() as u64;
                conn.sent = conn.sent.saturating_sub(unconfirmed);
                conn.needed = conn.needed.saturating_sub(unconfirmed);
                for channel in refused {
                    shard.channels.remove(&channel);
                    evicted.push((channel, master.clone()));
                }
            }
        }
        if evicted.is_empty() {
            return;
        }
        let asked = self.want_map();
        let wanted: HashSet<String> = self.wanted().into_iter().collect();
        for (channel, master) in evicted {
            if wanted.contains(&channel) {
                tracing::debug!(%channel, %master, "Redis moved a channel away (its slot moved)");
                self.evicted.insert(channel, (master, asked));
            }
        }
    }

    /// Pings every subscriber, and fails the shards whose subscriber stayed silent
    /// past [`KEEPALIVE_TIMEOUT`].
    fn keep_alive(&mut self) {
        let masters: Vec<Master> = self.shards.keys().cloned().collect();
        for master in masters {
            let Some(conn) = self.conn(&master) else {
                continue;
            };
            if let Some(silent) = conn
                .heard
                .silent_for()
                .filter(|silent| *silent > KEEPALIVE_TIMEOUT)
            {
                self.fail(
                    &master,
                    &format!("Redis answered nothing for {silent:?} (frozen or cut off)"),
                );
                continue;
            }
            self.write(&master, Write::Ping);
        }
    }

    /// Ends the outage of each shard whose subscriptions Redis confirmed: the
    /// reconnection is counted (the hub reads its streams again); and once it stayed
    /// up for [`PROVEN_AFTER`], its backoff starts again from the shortest wait and
    /// its next failure is warned of. Not when it opens: one refused at once (an ACL
    /// user refused `CLIENT SETNAME`) is never confirmed.
    fn note_restored(&mut self) {
        for (master, shard) in &mut self.shards {
            let Some(conn) = shard.conn.as_mut() else {
                continue;
            };
            if conn.heard.confirmed.load(Relaxed) < conn.needed {
                continue;
            }
            if let Some(down) = shard.down_since.take() {
                let lost = self.task.stats.get(Counter::Lost);
                tracing::info!(%master, outage = ?down.elapsed(), lost, "link to Redis restored");
                self.task.stats.count(Counter::Reconnects);
                self.task.reads.reconnect(master);
            }
            if !conn.proven && conn.opened.elapsed() >= PROVEN_AFTER {
                conn.proven = true;
                shard.backoff.reset();
                shard.warned = false;
            }
        }
    }

    /// Asks the primary's node whether it is still the master (a failover may have
    /// demoted it), unless it was asked and has not answered yet.
    fn check_role(&mut self) {
        if self.asking_role {
            return;
        }
        let Some(shard) = self.shards.get(&Master::Primary) else {
            return;
        };
        let Some(conn) = &shard.conn else {
            return;
        };
        // The same connection, with a timeout of its own for this question.
        let mut publisher = conn.publisher.conn.clone();
        publisher.set_response_timeout(ROLE_TIMEOUT);
        let (generation, node) = (shard.generation, conn.node.to_string());
        self.asking_role = true;
        self.jobs.push(Box::pin(async move {
            let role = connect::is_master(&mut publisher).await;
            Event::Role(generation, node, role)
        }));
    }

    /// Fails the primary's shard (connection `generation`) if its node is no longer
    /// the master, so that it reconnects to the one the Sentinels name now.
    fn role_said(&mut self, generation: u64, node: &str, role: RedisResult<bool>) {
        self.asking_role = false;
        if !self.is_current(&Master::Primary, generation) {
            return;
        }
        match role {
            Ok(true) => {}
            Ok(false) => self.fail(&Master::Primary, &format!("{node} is no longer the master")),
            Err(error) => self.fail(
                &Master::Primary,
                &format!("{node} did not say its role: {error}"),
            ),
        }
    }

    /// Says whether the hub is ready: every master the map names is up, every channel
    /// the hub has is subscribed on its master, and Redis confirmed the subscriptions
    /// sent when a master (re)connected or a channel moved. Until then the hub would
    /// miss what other hubs publish for the rooms of a master that is down.
    fn update_ready(&mut self) {
        let confirmed = |conn: &Conn| conn.heard.confirmed.load(Relaxed) >= conn.needed;
        let ready = (self.map.is_some() || !self.task.servers.is_cluster())
            && self.evicted.is_empty()
            && self
                .shards
                .values()
                .all(|shard| shard.conn.as_ref().is_some_and(confirmed));
        let was = self.task.ready.swap(ready, Relaxed);
        if ready && !was {
            let took = self.ready_at.take().map(|asked| asked.elapsed());
            let nodes: Vec<String> = self
                .shards
                .values()
                .filter_map(|shard| shard.conn.as_ref().map(|conn| conn.node.to_string()))
                .collect();
            let (rooms, nodes) = (self.rooms.len(), nodes.join(", "));
            tracing::info!(rooms, %nodes, ?took, "subscribed to Redis");
        }
    }
}

impl Drop for Session<'_> {
    /// The link ends (the broker dropped, the hub gone): what waits for a pipeline is
    /// lost, counted; the jobs dropped with the session count what they hold.
    fn drop(&mut self) {
        for shard in self.shards.values_mut() {
            for publish in shard.queue.drain(..) {
                lose(
                    &self.task.stats,
                    publish,
                    "the link to Redis ended before Redis answered",
                );
            }
        }
    }
}

/// Runs `task` on its own, aborted with the handle returned, and has a job of the
/// link's say how it ended (`report`); a task aborted says it was stopped.
fn spawn_reporting(
    jobs: &FuturesUnordered<BoxFuture<'static, Event>>,
    task: impl Future<Output = Result<(), String>> + Send + 'static,
    report: impl FnOnce(Result<(), String>) -> Event + Send + 'static,
) -> Aborting<()> {
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    let handle = Aborting(tokio::spawn(async move {
        let _ = ended_tx.send(task.await);
    }));
    jobs.push(Box::pin(async move {
        let ended_with = ended_rx.await.unwrap_or_else(|_| Err("stopped".to_owned()));
        report(ended_with)
    }));
    handle
}

/// Writes what the link task hands it on a subscriber connection, each within
/// [`SEND_TIMEOUT`], until the link drops its end (`Ok`) or a write fails: so that a
/// peer that stopped reading stalls this shard's writer, not the link task.
async fn write_all(
    mut commands: pubsub::Commands,
    mut writes: Receiver<Write>,
) -> Result<(), String> {
    while let Some(write) = writes.recv().await {
        let writing = async {
            match &write {
                Write::Name(name) => commands.set_name(name).await,
                Write::Ping => commands.ping().await,
                Write::Channels(verb, channels) => commands.send(verb, channels).await,
            }
        };
        match tokio::time::timeout(SEND_TIMEOUT, writing).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => {
                return Err(format!(
                    "Redis took more than {SEND_TIMEOUT:?} to take a command"
                ));
            }
        }
    }
    Ok(())
}

fn interval(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval_at(Deadline::now() + period, period);
    // After a slow round, a period until the next, not a burst.
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// The next tick of `interval`; never without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) -> Deadline {
    match interval {
        Some(interval) => interval.tick().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Deadline) {
    tokio::time::sleep_until(deadline).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Deployment;
    use switchboard_broker::NodeId;

    fn task(deployment: Deployment) -> Task {
        let config = RedisConfig {
            deployment,
            ..RedisConfig::default()
        };
        let servers = Servers::new(&config).unwrap();
        let stats = Counters::default();
        Task {
            reads: Arc::new(stream::Reads::new(
                servers.clone(),
                config.clone(),
                stats.clone(),
            )),
            servers,
            config,
            inbox: Inbox::new(NodeId::from_bits(1), |_| true),
            changes: Arc::default(),
            stats,
            ready: Arc::default(),
        }
    }

    fn cluster() -> Task {
        task(Deployment::Cluster {
            nodes: vec!["redis://127.0.0.1:7000/".to_owned()],
        })
    }

    fn session(task: &Task) -> Session<'_> {
        let (deliveries, _) = mpsc::channel(1);
        let detector = Arc::new(Mutex::new(GapDetector::new(
            DEFAULT_MAX_CHANNELS,
            RECEIVER_IDLE,
        )));
        let reader = Reader::new(task.inbox.node(), deliveries, detector, task.stats.clone());
        Session::new(task, reader)
    }

    #[tokio::test]
    async fn a_master_named_again_starts_past_its_old_generations() {
        let task = cluster();
        let mut session = session(&task);
        let master = Master::At("10.0.0.1".to_owned(), 7000);
        session.add_shard(master.clone(), false);
        let old = session.shards[&master].generation;
        // The map dropped the master, then named it again: the old shard's jobs may
        // still answer with `old`.
        session.shards.remove(&master);
        session.add_shard(master.clone(), false);
        assert!(session.shards[&master].generation > old);
    }

    #[tokio::test]
    async fn what_waits_for_a_pipeline_is_counted_when_the_link_ends() {
        let task = task(Deployment::Single);
        let mut session = session(&task);
        session.set_map(None);
        let shard = session.shards.get_mut(&Master::Primary).unwrap();
        shard.queue.push_back(Publish::Envelope {
            channel: "room".to_owned(),
            payload: bytes::Bytes::from_static(b"envelope"),
        });
        drop(session);
        assert_eq!(task.stats.get(Counter::Lost), 1);
    }

    #[tokio::test]
    async fn a_room_left_while_its_master_is_down_is_not_counted_missed_on_return() {
        let task = task(Deployment::Single);
        let mut session = session(&task);
        session.set_map(None);
        let channel = task.config.channel_room("lobby");
        let origin = NodeId::from_bits(2);
        let observe = |session: &Session<'_>, sequence| {
            let stamp = switchboard_broker::Stamp { epoch: 1, sequence };
            let now = Instant::now();
            session
                .reader
                .detector()
                .observe(&channel, origin, stamp, now)
        };
        task.changes.want("lobby", true);
        session.apply_room_changes();
        observe(&session, 1);
        // Left while the shard is down: no unsubscription goes, none is confirmed.
        task.changes.want("lobby", false);
        session.apply_room_changes();
        task.changes.want("lobby", true);
        session.apply_room_changes();
        assert_eq!(
            observe(&session, 5),
            0,
            "what the hub did not follow counted missed"
        );
    }

    #[tokio::test]
    async fn a_map_fetched_before_a_channel_moved_does_not_settle_it() {
        let task = cluster();
        let mut session = session(&task);
        session.want_map();
        session.wake();
        assert!(session.refresh.fetching);
        // Redis moves a channel away while the fetch is under way.
        let channel = task.config.channel_all();
        let master = Master::At("10.0.0.1".to_owned(), 7000);
        let asked = session.want_map();
        session.evicted.insert(channel.clone(), (master, asked));
        // The fetch answers with the map it got before the move.
        session.mapped(Ok(None));
        assert!(
            session.evicted.contains_key(&channel),
            "the move was forgotten"
        );
        assert!(session.refresh.wanted, "no map is asked for after the move");
    }
}
