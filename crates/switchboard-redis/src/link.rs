//! The task that owns the connections to Redis: it publishes what the hub sends and
//! follows the hub's rooms with subscriptions, while a reader task per connection
//! reads what arrives, counts the gaps in it, and hands it to a delivery task that
//! feeds the hub's inbox. It reconnects, with jittered backoff, when Redis goes away.
//!
//! Memory stays bounded on both ways: publishes wait in a queue of
//! `max_pending_publishes`, arrivals in one of `max_pending_deliveries`; when the
//! latter is full the reader stops reading, and Redis holds (and past its
//! `client-output-buffer-limit pubsub`, drops) what the hub cannot take.

use crate::{
    Publish, RedisConfig,
    cluster::{Servers, SlotMap},
    codec, connect, pubsub, stream,
};
use bytes::Bytes;
use futures_util::future::{join_all, select_all, try_join_all};
use redis::{RedisError, RedisResult, Value, aio::MultiplexedConnection};
use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard_broker::{
    Backoff, DEFAULT_MAX_CHANNELS, Envelope, GapDetector, Inbox, NodeId, RECEIVER_IDLE,
    StreamError,
    link::{Aborting, AwaitsPosition, Counter, Counters, RoomChanges, Undelivered, deliver},
    lock,
};
use tokio::sync::{
    Notify,
    mpsc::{self, Receiver, Sender},
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

/// The connections to Redis: to the node the connector names, or to every master of a
/// cluster, with the map of the cluster's slots they were opened from.
pub(crate) struct Link {
    /// `None` off a cluster: every channel is on `nodes[0]`.
    map: Option<Arc<SlotMap>>,
    nodes: Vec<NodeLink>,
}

/// A connection for publishing and one for subscriptions (Redis allows nothing but
/// subscription commands on a subscribed connection), to one node.
struct NodeLink {
    node: connect::Node,
    publisher: MultiplexedConnection,
    /// The publish script's SHA1, loaded on this Redis.
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
    /// Opens the connections, within [`CONNECT_TIMEOUT`]: to the node that takes
    /// publishes now, or to every master of the cluster's current map (fetched again
    /// from any node that answers) on a Redis Cluster.
    pub(crate) async fn open(servers: &Servers) -> RedisResult<Self> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::open_now(servers))
            .await
            .unwrap_or_else(|_| {
                let within = format!("within {CONNECT_TIMEOUT:?}");
                let why = "Redis did not answer a connect";
                Err(RedisError::from((redis::ErrorKind::Io, why, within)))
            })
    }

    async fn open_now(servers: &Servers) -> RedisResult<Self> {
        let map = servers.fetch_map().await?;
        let primaries = match &map {
            None => vec![servers.connector().primary().await?],
            Some(map) => {
                try_join_all(map.masters().iter().map(|(host, port)| async move {
                    let node = servers.connector().node(host, *port);
                    let publisher = node.publisher().await?;
                    RedisResult::Ok(connect::Primary { node, publisher })
                }))
                .await?
            }
        };
        let nodes = try_join_all(primaries.into_iter().map(NodeLink::open)).await?;
        Ok(Self { map, nodes })
    }
}

impl NodeLink {
    async fn open(primary: connect::Primary) -> RedisResult<Self> {
        let connect::Primary {
            node,
            mut publisher,
        } = primary;
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
    pub(crate) servers: Servers,
    /// Moved to the link's nodes whenever the link reconnects.
    pub(crate) reads: Arc<stream::Reads>,
    pub(crate) config: RedisConfig,
    pub(crate) inbox: Inbox,
    pub(crate) changes: Arc<RoomChanges>,
    pub(crate) stats: Counters,
    pub(crate) ready: Arc<AtomicBool>,
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
            let lost = task.stats.get(Counter::Lost);
            tracing::info!(outage = ?down.elapsed(), lost, "link to Redis restored");
            task.stats.count(Counter::Reconnects);
            task.reads.reconnect();
        }
        backoff.reset();
        let reader = Reader {
            own: task.inbox.node(),
            deliveries: deliveries.clone(),
            detector: detector.clone(),
            acks: Arc::default(),
            acked: Arc::default(),
            stats: task.stats.clone(),
        };
        let ended = serve(&task, link, &reader, &mut rooms, &mut publishes).await;
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
/// `reader` is the template of each connection's reader.
async fn serve(
    task: &Task,
    link: Link,
    reader: &Reader,
    rooms: &mut HashSet<String>,
    publishes: &mut Receiver<Publish>,
) -> Ended {
    let mut readers = Vec::with_capacity(link.nodes.len());
    let nodes = link.nodes.into_iter().map(|node| {
        let reader = reader.for_connection();
        let acks = reader.acks.clone();
        readers.push(Aborting(tokio::spawn(reader.run(node.replies))));
        Node {
            node: node.node,
            publisher: node.publisher,
            publish_sha: node.publish_sha,
            commands: node.commands,
            acks,
            sent: 0,
            needed: 0,
        }
    });
    let role_check = task.servers.connector().follows_failover().then(|| {
        let start = tokio::time::Instant::now() + ROLE_CHECK;
        let mut interval = tokio::time::interval_at(start, ROLE_CHECK);
        // After a slow answer, a second until the next question, not a burst.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let mut session = Session {
        task,
        map: link.map,
        nodes: nodes.collect(),
        role_check,
        readers,
        acked: reader.acked.clone(),
        detector: reader.detector.clone(),
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
    /// `None` on a single Redis (see [`Link`]).
    map: Option<Arc<SlotMap>>,
    /// One per master, indexed as the map's masters.
    nodes: Vec<Node>,
    /// When to ask the node whether it is still the master (Sentinel only: one node).
    role_check: Option<tokio::time::Interval>,
    /// The nodes' readers, in the same order.
    readers: Vec<Aborting<Result<(), String>>>,
    /// Notified by every reader when a confirmation arrives.
    acked: Arc<Notify>,
    detector: Arc<Mutex<GapDetector>>,
    /// When the subscriptions that make the hub ready were asked for, until they are
    /// all confirmed (each node's `needed`).
    ready_at: Option<Instant>,
    /// The rooms this hub has members in: subscribed now, and again after a reconnect.
    rooms: &'a mut HashSet<String>,
}

/// A connected stretch's connections to one Redis.
struct Node {
    /// The node both connections are on.
    node: connect::Node,
    publisher: MultiplexedConnection,
    publish_sha: String,
    commands: pubsub::Commands,
    acks: Arc<Acks>,
    /// Channels named in the (un)subscriptions sent on this connection: Redis confirms
    /// each once, in order.
    sent: u64,
    /// The confirmations that make the hub ready.
    needed: u64,
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
        for node in &mut self.nodes {
            node.commands.set_name(&name).await?;
        }
        self.send(true, channels).await?;
        for node in &mut self.nodes {
            node.needed = node.sent;
        }
        self.ready_at = Some(Instant::now());
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
                () = self.task.changes.changed() => {
                    if let Err(error) = self.apply_room_changes().await {
                        return Ended::Failed(error.to_string());
                    }
                }
                () = self.acked.notified(), if self.ready_at.is_some() => self.check_ready(),
                _ = tick(&mut self.role_check) => {
                    if let Err(failure) = self.check_role().await {
                        return Ended::Failed(failure);
                    }
                }
                (ended, _, _) = select_all(self.readers.iter_mut().map(|reader| &mut reader.0)) => {
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
    /// that the hub reconnects to the one the Sentinels name now (a Sentinel's link
    /// has one node).
    async fn check_role(&mut self) -> Result<(), String> {
        // The same connections, each with a timeout of its own for this question.
        let publishers: Vec<_> = self
            .nodes
            .iter()
            .map(|node| (node.node.to_string(), node.publisher.clone()))
            .collect();
        for (node, mut publisher) in publishers {
            publisher.set_response_timeout(ROLE_TIMEOUT);
            match connect::is_master(&mut publisher).await {
                Ok(true) => {}
                Ok(false) => return Err(format!("{node} is no longer the master")),
                Err(error) => return Err(format!("{node} did not say its role: {error}")),
            }
        }
        Ok(())
    }

    fn check_ready(&mut self) {
        let Some(asked) = self.ready_at else {
            return;
        };
        let confirmed = |node: &Node| node.acks.count.load(Relaxed) >= node.needed;
        if self.nodes.iter().all(confirmed) {
            // Redis confirmed every subscription the hub has: envelopes for any of
            // its connections reach it again.
            self.task.ready.store(true, Relaxed);
            self.ready_at = None;
            let rooms = self.rooms.len();
            let nodes: Vec<String> = self
                .nodes
                .iter()
                .map(|node| node.node.to_string())
                .collect();
            let nodes = nodes.join(", ");
            tracing::info!(rooms, %nodes, took = ?asked.elapsed(), "subscribed to Redis");
        }
    }

    /// (Un)subscribes `channels`, each on the connection of its node (sharded pub/sub
    /// on a Redis Cluster). Unsubscriptions are noted first, so that a reader tells
    /// them from those a Redis Cluster sends when a slot moves away.
    async fn send(&mut self, subscribe: bool, channels: Vec<String>) -> std::io::Result<()> {
        let verb = match (subscribe, self.map.is_some()) {
            (true, false) => "SUBSCRIBE",
            (false, false) => "UNSUBSCRIBE",
            (true, true) => "SSUBSCRIBE",
            (false, true) => "SUNSUBSCRIBE",
        };
        let mut per_node: Vec<Vec<String>> = vec![Vec::new(); self.nodes.len()];
        for channel in channels {
            per_node[self.node_of(&channel)].push(channel);
        }
        for (node, channels) in self.nodes.iter_mut().zip(per_node) {
            if channels.is_empty() {
                continue;
            }
            if !subscribe {
                node.acks.leaving(&channels);
            }
            node.commands.send(verb, &channels).await?;
            node.sent += channels.len() as u64;
        }
        Ok(())
    }

    /// The index of the node that serves `channel`.
    fn node_of(&self, channel: &str) -> usize {
        self.map.as_ref().map_or(0, |map| map.master_of(channel))
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
        self.send(false, leave).await?;
        self.send(true, join).await
    }

    /// Publishes this envelope and those queued behind it in one pipeline per node
    /// (one round trip for a burst, the nodes' at once), stream messages through the
    /// publish script, in the order the hub queued them (on a node, and so on each
    /// channel); on failure of a link, with how many were lost.
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
        stats.dequeued(batch.len() as u64);
        let mut per_node: Vec<Vec<Publish>> = (0..self.nodes.len()).map(|_| Vec::new()).collect();
        for publish in batch {
            per_node[self.node_of(publish.channel())].push(publish);
        }
        let verb = self.task.config.publish_verb();
        let sent = per_node
            .into_iter()
            .enumerate()
            .filter(|(_, batch)| !batch.is_empty())
            .map(|(index, batch)| {
                let node = &self.nodes[index];
                let pipe = pipeline(&batch, &node.publish_sha, verb);
                let mut publisher = node.publisher.clone();
                async move {
                    let replies = pipe
                        .query_async::<Vec<RedisResult<Value>>>(&mut publisher)
                        .await;
                    (index, batch, replies)
                }
            });
        let mut failed: Option<(RedisError, u64)> = None;
        for (index, batch, replies) in join_all(sent).await {
            let ended = match replies {
                Ok(replies) => self.answer_batch(index, batch, replies).await,
                // Reported with the outage it starts.
                Err(error) => Err(self.unanswered(error, batch)),
            };
            if let Err((error, lost)) = ended {
                let lost = lost + failed.as_ref().map_or(0, |(_, before)| *before);
                failed = Some((error, lost));
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Counts and answers the publishes of node `index` by their replies; runs the
    /// stream publishes that met `NOSCRIPT` again. Those a Redis Cluster redirects
    /// (`MOVED`, `ASK`: their slot moved, or is moving) are published where it says, in
    /// their order; after a `MOVED`, the link ends once they are: the next one is
    /// opened on the cluster's new map.
    async fn answer_batch(
        &mut self,
        index: usize,
        batch: Vec<Publish>,
        replies: Vec<RedisResult<Value>>,
    ) -> Result<(), (RedisError, u64)> {
        let mut retry = Vec::new();
        let mut demoted = false;
        let mut redirected = Vec::new();
        for (publish, reply) in batch.into_iter().zip(replies) {
            demoted |= matches!(&reply, Err(error) if error.code() == Some("READONLY"));
            let reply = match reply {
                Err(error) if error.redirect_node().is_some() => {
                    redirected.push((publish, error));
                    continue;
                }
                reply => reply,
            };
            match publish {
                Publish::Envelope { channel, .. } => self.published(&channel, reply),
                Publish::Stream(publish) => match reply {
                    Err(error) if stream::is_noscript(&error) => retry.push(*publish),
                    reply => self.answer(*publish, reply),
                },
            }
        }
        if !retry.is_empty() {
            self.retry(index, retry).await?;
        }
        let moved = redirected
            .iter()
            .find(|(_, error)| error.code() == Some("MOVED"))
            .map(|(_, error)| error.clone());
        for (publish, error) in redirected {
            self.follow(publish, &error).await;
        }
        if demoted {
            // A stream's script refused by a replica: the node was demoted; the hub
            // reconnects to the master now rather than at the next role check.
            let why = "READONLY: the node is a replica now";
            return Err((RedisError::from((redis::ErrorKind::Io, why)), 0));
        }
        moved.map_or(Ok(()), |error| Err((error, 0)))
    }

    /// Publishes `publish` on the node a Redis Cluster redirected it to (`ASKING`
    /// first for an `ASK`: the slot is being moved there), on a connection of its own;
    /// counted as lost if that fails too.
    async fn follow(&mut self, publish: Publish, redirect: &RedisError) {
        // `<slot> <host>:<port>`, the host an IPv6 address perhaps (colons, no brackets).
        let node = redirect.redirect_node().and_then(|(addr, _slot)| {
            let (host, port) = addr.rsplit_once(':')?;
            Some((host, port.parse().ok()?))
        });
        let node = node.map(|(host, port)| self.task.servers.connector().node(host, port));
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("SCRIPT")
            .arg("LOAD")
            .arg(stream::PUBLISH_SCRIPT)
            .ignore();
        if redirect.code() == Some("ASK") {
            pipe.cmd("ASKING").ignore();
        }
        // The script's SHA1 is the same on every node: it is its content's.
        let sha = &self.nodes[0].publish_sha;
        pipe.add_command(command(&publish, sha, self.task.config.publish_verb()));
        let reply = async {
            let node = node.ok_or_else(|| redirect.clone())?;
            let mut conn = node.publisher().await?;
            pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn).await
        };
        let reply = match tokio::time::timeout(CONNECT_TIMEOUT, reply).await {
            Ok(Ok(mut replies)) => replies.pop().unwrap_or_else(|| Err(redirect.clone())),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(RedisError::from((
                redis::ErrorKind::Io,
                "the node a publish was redirected to did not answer in time",
            ))),
        };
        match publish {
            Publish::Envelope { channel, .. } => self.published(&channel, reply),
            Publish::Stream(publish) => self.answer(*publish, reply),
        }
    }

    /// Counts a `PUBLISH` Redis answered.
    fn published(&self, channel: &str, reply: RedisResult<Value>) {
        let stats = &self.task.stats;
        match reply {
            Ok(_) => stats.count(Counter::Published),
            Err(error) => {
                stats.count(Counter::Lost);
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
                stats.count(Counter::Published);
                publish.answer(stream::position_of(value));
            }
            Err(error) => {
                stats.count(Counter::Lost);
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
                Publish::Envelope { .. } => stats.count(Counter::Lost),
                Publish::Stream(publish) => {
                    stats.count(Counter::Unconfirmed);
                    publish.answer(Err(StreamError::Unconfirmed(format!(
                        "the link to Redis failed before Redis answered: {error}"
                    ))));
                }
            }
        }
        (error, count)
    }

    /// Loads the publish script again on node `index` (its Redis lost it: restarted,
    /// `SCRIPT FLUSH`, a failover) and runs the publishes that met `NOSCRIPT`, in their
    /// order.
    async fn retry(
        &mut self,
        index: usize,
        retry: Vec<stream::StreamPublish>,
    ) -> Result<(), (RedisError, u64)> {
        let count = retry.len() as u64;
        let node = &mut self.nodes[index];
        match stream::load(&mut node.publisher, stream::PUBLISH_SCRIPT).await {
            Ok(sha) => node.publish_sha = sha,
            Err(error) => {
                // Not sent: not published.
                let stats = &self.task.stats;
                stats.add(Counter::Lost, count);
                for publish in retry {
                    publish.answer(Err(StreamError::Unavailable(format!(
                        "the publish script could not be loaded: {error}"
                    ))));
                }
                return Err((error, count));
            }
        }
        let node = &mut self.nodes[index];
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for publish in &retry {
            pipe.add_command(publish.invocation(&node.publish_sha));
        }
        match pipe
            .query_async::<Vec<RedisResult<Value>>>(&mut node.publisher)
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

/// One node's publishes in one pipeline, in their order, each with its reply (errors
/// included: a stream's publish may meet `NOSCRIPT` while the others go through).
fn pipeline(batch: &[Publish], publish_sha: &str, verb: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    // A stream publish that meets NOSCRIPT is run again after the batch: behind
    // envelopes queued after it, were the script not loaded first. One `SCRIPT LOAD` (a
    // no-op when Redis has it) keeps the order; only a `SCRIPT FLUSH` that lands within
    // the pipeline can still put a stream publish after them.
    if loads_first(batch) {
        pipe.cmd("SCRIPT")
            .arg("LOAD")
            .arg(stream::PUBLISH_SCRIPT)
            .ignore();
    }
    for publish in batch {
        pipe.add_command(command(publish, publish_sha, verb));
    }
    pipe
}

/// The command of one publish: `verb` (`PUBLISH`, `SPUBLISH`) for an envelope, the
/// publish script for a stream's message.
fn command(publish: &Publish, publish_sha: &str, verb: &str) -> redis::Cmd {
    match publish {
        Publish::Envelope { channel, payload } => {
            let mut cmd = redis::cmd(verb);
            cmd.arg(channel).arg(payload.as_ref());
            cmd
        }
        Publish::Stream(publish) => publish.invocation(publish_sha),
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
    /// The unsubscriptions sent and not confirmed yet, per channel: an unsubscription
    /// not among them is one Redis sent by itself.
    leaving: std::sync::Mutex<HashMap<String, u32>>,
}

impl Acks {
    fn leaving(&self, channels: &[String]) {
        let mut leaving = lock(&self.leaving);
        for channel in channels {
            *leaving.entry(channel.clone()).or_default() += 1;
        }
    }

    /// Whether the unsubscription of `channel` was asked for (and is now confirmed).
    fn left(&self, channel: &str) -> bool {
        let mut leaving = lock(&self.leaving);
        let Some(count) = leaving.get_mut(channel) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            leaving.remove(channel);
        }
        true
    }
}

/// Reads one connection's replies: counts the gaps in what arrives and queues it for
/// the delivery task.
struct Reader {
    own: NodeId,
    deliveries: Sender<Envelope>,
    /// Shared by the readers of successive connections: a gap spans the outage
    /// between them.
    detector: Arc<Mutex<GapDetector>>,
    /// This connection's confirmations.
    acks: Arc<Acks>,
    /// Notified at each confirmation, shared by the readers of a link.
    acked: Arc<Notify>,
    stats: Counters,
}

impl Reader {
    /// A reader like this one for one more connection of the link: its own
    /// confirmations, everything else shared.
    fn for_connection(&self) -> Self {
        Self {
            own: self.own,
            deliveries: self.deliveries.clone(),
            detector: self.detector.clone(),
            acks: Arc::default(),
            acked: self.acked.clone(),
            stats: self.stats.clone(),
        }
    }

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
                        .then(|| Undelivered::new(&self.stats));
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
                        if !self.acks.left(&channel) {
                            // A Redis Cluster moved the channel's slot to another
                            // shard: the link reopens on the new map.
                            return Err(format!(
                                "Redis unsubscribed {channel} by itself (its slot moved)"
                            ));
                        }
                        self.detector().forget(&channel);
                    }
                    self.acks.count.fetch_add(1, Relaxed);
                    self.acked.notify_one();
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
                self.stats.count(Counter::Malformed);
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
            self.stats.miss(missed);
        }
        Some(envelope)
    }

    fn detector(&self) -> MutexGuard<'_, GapDetector> {
        lock(&self.detector)
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
        match Link::open(&task.servers).await {
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
    stats: &Counters,
) -> Option<()> {
    let sleep = tokio::time::sleep(wait);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            () = &mut sleep => return Some(()),
            publish = publishes.recv() => {
                let publish = publish?;
                stats.dequeued(1);
                stats.count(Counter::Lost);
                tracing::trace!(channel = %publish.channel(), "envelope lost: no link to Redis");
                publish.lose("no link to Redis");
            }
        }
    }
}

/// Records that the hub wants (or no longer wants) `room`; whether that changed anything.
fn note(rooms: &mut HashSet<String>, room: String, wanted: bool) -> bool {
    if wanted {
        rooms.insert(room)
    } else {
        rooms.remove(&room)
    }
}
