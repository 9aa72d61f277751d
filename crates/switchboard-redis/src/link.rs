//! The task that owns the connections to Redis: it publishes what the hub sends and
//! follows the hub's rooms with subscriptions, while a reader task per connection
//! reads what arrives, counts the gaps in it, and hands it to a delivery task that
//! feeds the hub's inbox. It reconnects, with jittered backoff, when Redis goes away.
//!
//! Memory stays bounded on both ways: publishes wait in a queue of
//! `max_pending_publishes`, arrivals in one of `max_pending_deliveries`; when the
//! latter is full the reader stops reading, and Redis holds (and past its
//! `client-output-buffer-limit pubsub`, drops) what the hub cannot take.

use crate::{BrokerStats, Publish, RedisConfig, RoomChanges, codec, connect, pubsub, stream};
use bytes::Bytes;
use redis::{RedisError, RedisResult, Value, aio::MultiplexedConnection};
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard_broker::{
    Backoff, DEFAULT_MAX_CHANNELS, Envelope, GapDetector, Inbox, NodeId, StreamError,
};
use tokio::{
    sync::{
        Notify,
        mpsc::{self, Receiver, Sender},
    },
    task::JoinHandle,
};

/// Publishes that wait are sent together, up to this many in one pipeline.
const MAX_BATCH: u64 = 256;

/// The shortest wait before reconnecting; waits grow with jitter up to
/// `RedisConfig::max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// How long one attempt to open the link may take (the Sentinels' answer included):
/// an unreachable host can hold a TCP connect for minutes, `RedisBroker::connect`
/// must fail rather than hang, and the publishes waiting meanwhile (to count as lost)
/// are taken only between attempts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a receiver remembers a publisher's counter on a channel without hearing
/// from it: longer than publishers keep theirs (`crate::PUBLISHER_IDLE`), so that a
/// forgotten counter shows up as a reset rather than hides a gap.
const RECEIVER_IDLE: Duration = Duration::from_secs(600);

/// How long gaps are summed before they are logged: the gaps of one outage show up
/// as publishers resume, within moments of each other, and make one line.
const MISSED_LOG_WINDOW: Duration = Duration::from_secs(1);

/// How often a link that follows failovers (Sentinel) asks its node whether it is
/// still the master: a Sentinel's failover closes the old master's clients, but a
/// master demoted behind the Sentinels' back (`REPLICAOF` by an operator, a split)
/// keeps them, and a hub on it would publish where no other hub listens. A second
/// bounds that stretch.
const ROLE_CHECK: Duration = Duration::from_secs(1);

/// How long the node may take to say its role before the link takes it as lost:
/// longer than a publish's answer may take (redis-rs's 500 ms), since a busy node is
/// no reason to reconnect; as long as a connection may take to open.
const ROLE_TIMEOUT: Duration = CONNECT_TIMEOUT;

/// A connection for publishing and one for subscriptions (Redis allows nothing but
/// subscription commands on a subscribed connection), to one node.
pub(crate) struct Link {
    node: connect::Node,
    publisher: MultiplexedConnection,
    /// The publish script's SHA1, loaded on this link's Redis.
    publish_sha: String,
    commands: pubsub::Commands,
    replies: pubsub::Replies,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

impl Link {
    /// Opens both connections to the node that takes publishes now, within
    /// [`CONNECT_TIMEOUT`].
    pub(crate) async fn open(connector: &connect::Connector) -> RedisResult<Self> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::open_now(connector))
            .await
            .unwrap_or_else(|_| {
                let within = format!("within {CONNECT_TIMEOUT:?}");
                let why = "Redis did not answer a connect";
                Err(RedisError::from((redis::ErrorKind::Io, why, within)))
            })
    }

    async fn open_now(connector: &connect::Connector) -> RedisResult<Self> {
        let connect::Primary {
            node,
            mut publisher,
        } = connector.primary().await?;
        // Loaded on every new link: the Redis there may be another one, or restarted.
        let publish_sha = stream::load(&mut publisher, stream::PUBLISH_SCRIPT).await?;
        let (commands, replies) = node.subscriber().await?;
        Ok(Self {
            node,
            publisher,
            publish_sha,
            commands,
            replies,
        })
    }
}

/// What the link task works with, for its whole life.
pub(crate) struct Task {
    pub(crate) connector: connect::Connector,
    /// Moved to the link's node whenever the link reconnects.
    pub(crate) reads: Arc<stream::Reads>,
    pub(crate) config: RedisConfig,
    pub(crate) inbox: Inbox,
    pub(crate) changes: Arc<RoomChanges>,
    pub(crate) stats: BrokerStats,
    pub(crate) ready: Arc<AtomicBool>,
}

/// A task aborted when its handle is dropped: a link's reader goes with its link.
struct Aborting<T>(JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why serving stopped.
enum Ended {
    /// The broker was dropped or its hub is gone: nothing more to do.
    Done,
    /// The link failed; reconnect.
    Failed(String),
}

/// Serves one hub until the broker is dropped or the hub is gone, from `first` (a
/// link opened by `RedisBroker::connect`) or from a link it opens itself.
pub(crate) async fn run(task: Task, mut first: Option<Link>, mut publishes: Receiver<Publish>) {
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
    let mut backoff = Backoff::new(FIRST_BACKOFF, task.config.max_backoff);
    let mut rooms = HashSet::new();
    let mut outage: Option<Instant> = None;
    loop {
        let link = match first.take() {
            Some(link) => link,
            None => match reconnect(&task, &mut publishes, &mut backoff, outage.is_some()).await {
                Some(link) => link,
                None => return,
            },
        };
        if let Some(down) = outage.take() {
            let lost = task.stats.lost();
            tracing::info!(outage = ?down.elapsed(), lost, "link to Redis restored");
            task.stats.count(&task.stats.0.reconnects);
            task.reads.reconnect();
        }
        backoff.reset();
        let reader = Reader {
            own: task.inbox.node(),
            deliveries: deliveries.clone(),
            detector: detector.clone(),
            acks: Arc::default(),
            stats: task.stats.clone(),
            missed_window: Arc::default(),
        };
        let ended = serve(&task, link, reader, &mut rooms, &mut publishes).await;
        // Until the new link has subscribed to everything again, this hub would miss
        // what other hubs publish for its connections.
        task.ready.store(false, Relaxed);
        match ended {
            Ended::Done => return,
            Ended::Failed(failure) => {
                // Once per outage: the retries that follow are logged at `debug`.
                tracing::warn!(%failure, "lost the link to Redis; reconnecting");
                outage = Some(Instant::now());
            }
        }
    }
}

/// One connected stretch: subscribes to everything the hub has, then serves.
async fn serve(
    task: &Task,
    link: Link,
    reader: Reader,
    rooms: &mut HashSet<String>,
    publishes: &mut Receiver<Publish>,
) -> Ended {
    let (acks, detector) = (reader.acks.clone(), reader.detector.clone());
    let role_check = task.connector.follows_failover().then(|| {
        let start = tokio::time::Instant::now() + ROLE_CHECK;
        let mut interval = tokio::time::interval_at(start, ROLE_CHECK);
        // After a slow answer, a second until the next question, not a burst.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let mut session = Session {
        task,
        node: link.node,
        role_check,
        publisher: link.publisher,
        publish_sha: link.publish_sha,
        commands: link.commands,
        reader: Aborting(tokio::spawn(reader.run(link.replies))),
        acks,
        detector,
        sent: 0,
        ready_at: None,
        rooms,
    };
    match session.subscribe_all().await {
        Ok(()) => session.serve(publishes).await,
        Err(error) => Ended::Failed(error.to_string()),
    }
}

/// The state one connected stretch works on.
struct Session<'a> {
    task: &'a Task,
    /// The node both connections are on.
    node: connect::Node,
    /// When to ask the node whether it is still the master (Sentinel only).
    role_check: Option<tokio::time::Interval>,
    publisher: MultiplexedConnection,
    publish_sha: String,
    commands: pubsub::Commands,
    reader: Aborting<Result<(), String>>,
    acks: Arc<Acks>,
    detector: Arc<Mutex<GapDetector>>,
    /// Channels named in the (un)subscriptions sent on this connection: Redis confirms
    /// each once, in order.
    sent: u64,
    /// The confirmations that make the hub ready, and when they were asked for.
    ready_at: Option<(u64, Instant)>,
    /// The rooms this hub has members in: subscribed now, and again after a reconnect.
    rooms: &'a mut HashSet<String>,
}

impl Session<'_> {
    /// Subscribes to the hub's own channels and every room it has, in batches; the
    /// hub is ready once Redis has confirmed them all.
    async fn subscribe_all(&mut self) -> std::io::Result<()> {
        // The room changes asked for before this link: subscribed here, with the others.
        for (room, wanted) in self.task.changes.take() {
            note(self.rooms, room, wanted);
        }
        let config = &self.task.config;
        let mut channels = vec![
            config.channel_all(),
            config.channel_node(self.task.inbox.node()),
        ];
        channels.extend(self.rooms.iter().map(|room| config.channel_room(room)));
        let subscribed: HashSet<&str> = channels.iter().map(String::as_str).collect();
        lock(&self.detector).retain_channels(|channel| subscribed.contains(channel));
        let name = format!("switchboard-sub-{}", self.task.inbox.node());
        self.commands.set_name(&name).await?;
        self.send("SUBSCRIBE", &channels).await?;
        self.ready_at = Some((self.sent, Instant::now()));
        Ok(())
    }

    async fn serve(&mut self, publishes: &mut Receiver<Publish>) -> Ended {
        loop {
            tokio::select! {
                publish = publishes.recv() => {
                    let Some(publish) = publish else {
                        return Ended::Done;
                    };
                    if let Err((error, lost)) = self.publish_batch(publish, publishes).await {
                        return Ended::Failed(format!("{error} ({lost} envelopes lost)"));
                    }
                }
                () = self.task.changes.changed.notified() => {
                    if let Err(error) = self.apply_room_changes().await {
                        return Ended::Failed(error.to_string());
                    }
                }
                () = self.acks.changed.notified(), if self.ready_at.is_some() => self.check_ready(),
                _ = tick(&mut self.role_check) => {
                    if let Err(failure) = self.check_role().await {
                        return Ended::Failed(failure);
                    }
                }
                ended = &mut self.reader.0 => {
                    return match ended {
                        // The hub is gone: its delivery task ended.
                        Ok(Ok(())) => Ended::Done,
                        Ok(Err(failure)) => Ended::Failed(failure),
                        Err(error) => Ended::Failed(error.to_string()),
                    };
                }
            }
        }
    }

    /// Fails the link if its node is no longer the master (a failover demoted it), so
    /// that the hub reconnects to the one the Sentinels name now.
    async fn check_role(&mut self) -> Result<(), String> {
        // The same connection, with a timeout of its own for this question.
        let mut publisher = self.publisher.clone();
        publisher.set_response_timeout(ROLE_TIMEOUT);
        match connect::is_master(&mut publisher).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{} is no longer the master", self.node)),
            Err(error) => Err(format!("{} did not say its role: {error}", self.node)),
        }
    }

    fn check_ready(&mut self) {
        let Some((needed, asked)) = self.ready_at else {
            return;
        };
        if self.acks.count.load(Relaxed) >= needed {
            // Redis confirmed every subscription the hub has: envelopes for any of
            // its connections reach it again.
            self.task.ready.store(true, Relaxed);
            self.ready_at = None;
            let (rooms, node) = (self.rooms.len(), &self.node);
            tracing::info!(rooms, %node, took = ?asked.elapsed(), "subscribed to Redis");
        }
    }

    async fn send(&mut self, verb: &str, channels: &[String]) -> std::io::Result<()> {
        self.commands.send(verb, channels).await?;
        self.sent += channels.len() as u64;
        Ok(())
    }

    /// Subscribes to the rooms the hub came to have and unsubscribes from those it
    /// left, one batch each. `rooms` takes every change even when Redis fails midway,
    /// so that the resubscription after the reconnect has them all.
    async fn apply_room_changes(&mut self) -> std::io::Result<()> {
        let (mut join, mut leave) = (Vec::new(), Vec::new());
        for (room, wanted) in self.task.changes.take() {
            let channel = self.task.config.channel_room(&room);
            if note(self.rooms, room, wanted) {
                if wanted { &mut join } else { &mut leave }.push(channel);
            }
        }
        self.send("UNSUBSCRIBE", &leave).await?;
        self.send("SUBSCRIBE", &join).await
    }

    /// Publishes this envelope and those queued behind it in one pipeline (one round
    /// trip for a burst), stream messages through the publish script, in the order the
    /// hub queued them; on failure of the link, with how many were lost.
    async fn publish_batch(
        &mut self,
        first: Publish,
        publishes: &mut Receiver<Publish>,
    ) -> Result<(), (RedisError, u64)> {
        let stats = &self.task.stats;
        let mut batch = vec![first];
        while (batch.len() as u64) < MAX_BATCH {
            match publishes.try_recv() {
                Ok(publish) => batch.push(publish),
                Err(_) => break,
            }
        }
        let count = batch.len() as u64;
        stats.0.pending.fetch_sub(count, Relaxed);
        let mut pipe = redis::pipe();
        // Each command's reply, errors included: a stream's publish may meet NOSCRIPT
        // while the others go through.
        pipe.ignore_errors();
        // A stream publish that meets NOSCRIPT is run again after the batch: behind
        // envelopes queued after it, were the script not loaded first. One `SCRIPT
        // LOAD` (a no-op when Redis has it) keeps the order; only a `SCRIPT FLUSH` that
        // lands within the pipeline can still put a stream publish after them.
        let load = loads_first(&batch);
        if load {
            pipe.cmd("SCRIPT")
                .arg("LOAD")
                .arg(stream::PUBLISH_SCRIPT)
                .ignore();
        }
        for publish in &batch {
            match publish {
                Publish::Envelope { channel, payload } => {
                    pipe.publish(channel, payload.as_ref());
                }
                Publish::Stream(publish) => {
                    pipe.add_command(publish.invocation(&self.publish_sha));
                }
            }
        }
        let replies = match pipe
            .query_async::<Vec<RedisResult<Value>>>(&mut self.publisher)
            .await
        {
            Ok(replies) => replies,
            // Reported with the outage it starts.
            Err(error) => return Err(self.unanswered(error, batch)),
        };
        let mut retry = Vec::new();
        let mut demoted = false;
        for (publish, reply) in batch.into_iter().zip(replies) {
            demoted |= matches!(&reply, Err(error) if error.code() == Some("READONLY"));
            match publish {
                Publish::Envelope { channel, .. } => self.published(&channel, reply),
                Publish::Stream(publish) => match reply {
                    Err(error) if stream::is_noscript(&error) => retry.push(*publish),
                    reply => self.answer(*publish, reply),
                },
            }
        }
        let retried = if retry.is_empty() {
            Ok(())
        } else {
            self.retry(retry).await
        };
        if demoted && retried.is_ok() {
            // A stream's script refused by a replica: the node was demoted; the hub
            // reconnects to the master now rather than at the next role check.
            let why = "READONLY: the node is a replica now";
            return Err((RedisError::from((redis::ErrorKind::Io, why)), 0));
        }
        retried
    }

    /// Counts a `PUBLISH` Redis answered.
    fn published(&self, channel: &str, reply: RedisResult<Value>) {
        let stats = &self.task.stats;
        match reply {
            Ok(_) => stats.count(&stats.0.published),
            Err(error) => {
                stats.count(&stats.0.lost);
                tracing::warn!(%channel, %error, "Redis refused a publish");
            }
        }
    }

    /// Counts a stream's publish Redis answered and hands its position over.
    fn answer(&self, publish: stream::StreamPublish, reply: RedisResult<Value>) {
        let stats = &self.task.stats;
        match reply {
            Ok(value) => {
                // The script ran, so the message went out, even if its reply is odd.
                stats.count(&stats.0.published);
                publish.answer(stream::position_of(value));
            }
            Err(error) => {
                stats.count(&stats.0.lost);
                tracing::warn!(channel = %publish.channel(), %error, "Redis refused a stream's publish");
                publish.answer(Err(StreamError::Unavailable(error.to_string())));
            }
        }
    }

    /// Answers the publishes of a pipeline whose replies never came (the link failed):
    /// envelopes count as lost (receivers count the gap), stream publishes as
    /// unconfirmed, since the script may have run; with the error and how many.
    fn unanswered(&self, error: RedisError, batch: Vec<Publish>) -> (RedisError, u64) {
        let stats = &self.task.stats;
        let count = batch.len() as u64;
        for publish in batch {
            match publish {
                Publish::Envelope { .. } => stats.count(&stats.0.lost),
                Publish::Stream(publish) => {
                    stats.count(&stats.0.unconfirmed);
                    publish.answer(Err(StreamError::Unconfirmed(format!(
                        "the link to Redis failed before Redis answered: {error}"
                    ))));
                }
            }
        }
        (error, count)
    }

    /// Loads the publish script again (Redis lost it: restarted, `SCRIPT FLUSH`, a
    /// failover) and runs the publishes that met `NOSCRIPT`, in their order.
    async fn retry(&mut self, retry: Vec<stream::StreamPublish>) -> Result<(), (RedisError, u64)> {
        let count = retry.len() as u64;
        match stream::load(&mut self.publisher, stream::PUBLISH_SCRIPT).await {
            Ok(sha) => self.publish_sha = sha,
            Err(error) => {
                // Not sent: not published.
                let stats = &self.task.stats;
                stats.add(&stats.0.lost, count);
                for publish in retry {
                    publish.answer(Err(StreamError::Unavailable(format!(
                        "the publish script could not be loaded: {error}"
                    ))));
                }
                return Err((error, count));
            }
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for publish in &retry {
            pipe.add_command(publish.invocation(&self.publish_sha));
        }
        match pipe
            .query_async::<Vec<RedisResult<Value>>>(&mut self.publisher)
            .await
        {
            Ok(replies) => {
                for (publish, reply) in retry.into_iter().zip(replies) {
                    self.answer(publish, reply);
                }
                Ok(())
            }
            Err(error) => {
                let retry = retry.into_iter().map(|p| Publish::Stream(Box::new(p)));
                Err(self.unanswered(error, retry.collect()))
            }
        }
    }
}

/// Whether a batch needs the publish script loaded at its head: when an envelope
/// follows a stream publish (a batch of stream publishes alone, or with envelopes
/// only before them, keeps its order through a NOSCRIPT retry).
fn loads_first(batch: &[Publish]) -> bool {
    let first_stream = batch
        .iter()
        .position(|publish| matches!(publish, Publish::Stream(_)));
    first_stream.is_some_and(|first| {
        batch[first..]
            .iter()
            .any(|publish| matches!(publish, Publish::Envelope { .. }))
    })
}

/// The next tick of `interval`; never without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) -> tokio::time::Instant {
    match interval {
        Some(interval) => interval.tick().await,
        None => std::future::pending().await,
    }
}

/// Confirmations of (un)subscriptions on one connection.
#[derive(Debug, Default)]
struct Acks {
    count: AtomicU64,
    changed: Notify,
}

/// Reads one connection's replies: counts the gaps in what arrives and queues it for
/// the delivery task.
struct Reader {
    own: NodeId,
    deliveries: Sender<Envelope>,
    /// Shared by the readers of successive connections: a gap spans the outage
    /// between them.
    detector: Arc<Mutex<GapDetector>>,
    acks: Arc<Acks>,
    stats: BrokerStats,
    /// Envelopes missed since the current log window opened (0: none open).
    missed_window: Arc<AtomicU64>,
}

impl Reader {
    /// Reads until the connection fails (`Err`, with why) or the hub is gone (`Ok`).
    async fn run(self, mut replies: pubsub::Replies) -> Result<(), String> {
        loop {
            match replies.next().await.map_err(|error| error.to_string())? {
                pubsub::Reply::Message { channel, payload } => {
                    let Some(envelope) = self.accept(&channel, payload) else {
                        continue;
                    };
                    // Waits while the hub is behind: the socket is not read meanwhile.
                    // Counted as missed if the link is dropped while it waits: its
                    // number is already seen, so no gap would count it. Not a stream's:
                    // the hub finds that offset missing and fills it from the stream.
                    let waiting = envelope
                        .position
                        .is_none()
                        .then(|| Undelivered(&self.stats));
                    let sent = self.deliveries.send(envelope).await;
                    std::mem::forget(waiting);
                    if sent.is_err() {
                        return Ok(());
                    }
                }
                pubsub::Reply::Subscription {
                    channel,
                    subscribed,
                } => {
                    if !subscribed {
                        self.detector().forget(&channel);
                    }
                    self.acks.count.fetch_add(1, Relaxed);
                    self.acks.changed.notify_one();
                }
                pubsub::Reply::Other => {}
            }
        }
    }

    /// The envelope to hand to the hub, after counting what was missed before it;
    /// `None` for our own (echoed on rooms we share) and for what is not an envelope.
    /// A stream's message is handed over even when it is our own (the hub delivers a
    /// stream's messages only as Redis numbered them), and its gaps are the hub's to
    /// find and fill, by offset.
    fn accept(&self, channel: &str, payload: Vec<u8>) -> Option<Envelope> {
        let (envelope, stamp) = match codec::decode(Bytes::from(payload)) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.stats.count(&self.stats.0.malformed);
                tracing::warn!(%error, "dropped a message that is not an envelope");
                return None;
            }
        };
        let Some(stamp) = stamp else {
            return Some(envelope);
        };
        if envelope.origin == self.own {
            return None;
        }
        let missed = self
            .detector()
            .observe(channel, envelope.origin, stamp, Instant::now());
        if missed > 0 {
            self.count_missed(missed);
        }
        Some(envelope)
    }

    /// Counts `missed` and logs them with the others of the same outage: the first gap
    /// opens a window, and one line at its end gives the sum.
    fn count_missed(&self, missed: u64) {
        self.stats.add(&self.stats.0.missed, missed);
        if self.missed_window.fetch_add(missed, Relaxed) > 0 {
            return;
        }
        let window = self.missed_window.clone();
        let total = self.stats.clone();
        tokio::spawn(async move {
            tokio::time::sleep(MISSED_LOG_WINDOW).await;
            let missed = window.swap(0, Relaxed);
            let missed_total = total.missed();
            tracing::warn!(
                missed,
                missed_total,
                "envelopes from other hubs never arrived (link outage or slow reader)"
            );
        });
    }

    fn detector(&self) -> MutexGuard<'_, GapDetector> {
        lock(&self.detector)
    }
}

/// An envelope on its way to the delivery queue: dropped with it (the link task drops
/// the reader when the link fails), it counts as missed.
struct Undelivered<'a>(&'a BrokerStats);

impl Drop for Undelivered<'_> {
    fn drop(&mut self) {
        self.0.count(&self.0.0.missed);
    }
}

/// Hands arrived envelopes to the hub, off the task that talks to Redis, until the
/// hub is gone.
async fn deliver(mut arrived: Receiver<Envelope>, inbox: Inbox, stats: BrokerStats) {
    while let Some(envelope) = arrived.recv().await {
        stats.count(&stats.0.received);
        if !inbox.deliver(&envelope) {
            return;
        }
    }
}

/// Opens the link, at once when `after_failure` is false and after a jittered wait
/// otherwise, then again after each failure; `None` once the broker is dropped.
/// Publishes that arrive meanwhile cannot happen: each is counted as lost.
async fn reconnect(
    task: &Task,
    publishes: &mut Receiver<Publish>,
    backoff: &mut Backoff,
    after_failure: bool,
) -> Option<Link> {
    let mut wait = if after_failure {
        backoff.next_wait()
    } else {
        Duration::ZERO
    };
    let mut warned = after_failure;
    loop {
        lose_publishes_for(wait, publishes, &task.stats).await?;
        match Link::open(&task.connector).await {
            Ok(link) => return Some(link),
            Err(error) if !warned => {
                tracing::warn!(%error, "Redis unreachable; the hub serves its own members and connects when it can");
            }
            Err(error) => tracing::debug!(%error, ?wait, "Redis still unreachable"),
        }
        warned = true;
        wait = backoff.next_wait();
    }
}

/// Waits `wait`, counting the publishes that arrive meanwhile as lost; `None` once
/// the broker is dropped.
async fn lose_publishes_for(
    wait: Duration,
    publishes: &mut Receiver<Publish>,
    stats: &BrokerStats,
) -> Option<()> {
    let sleep = tokio::time::sleep(wait);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            () = &mut sleep => return Some(()),
            publish = publishes.recv() => {
                let publish = publish?;
                stats.0.pending.fetch_sub(1, Relaxed);
                stats.count(&stats.0.lost);
                tracing::trace!(channel = %publish.channel(), "envelope lost: no link to Redis");
                publish.lose("no link to Redis");
            }
        }
    }
}

/// The lock, even if a panic poisoned it: the detector's maps stay consistent.
fn lock(detector: &Mutex<GapDetector>) -> MutexGuard<'_, GapDetector> {
    detector.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records that the hub wants (or no longer wants) `room`; whether that changed anything.
fn note(rooms: &mut HashSet<String>, room: String, wanted: bool) -> bool {
    if wanted {
        rooms.insert(room)
    } else {
        rooms.remove(&room)
    }
}
