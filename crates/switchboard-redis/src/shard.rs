//! One master's connections (a publisher, a subscriber and its reader) and the
//! publishing to it: a shard of a Redis Cluster, or the one node of a single Redis or
//! a Sentinel's master. Each shard fails and reconnects alone; `link` coordinates them.

use crate::{
    Publish,
    cluster::{self, Redirect, Servers},
    connect::{self, Connector},
    pubsub, stream,
};
use redis::{RedisError, RedisResult, Value, aio::MultiplexedConnection};
use std::{collections::HashMap, fmt, time::Duration};
use switchboard_broker::{
    StreamError,
    link::{AwaitsPosition, Counter, Counters},
};

/// How long Redis may take to answer a pipeline of publishes (or a redirection's)
/// before the shard is taken as lost: a frozen or blackholed master must fail its
/// shard within seconds, and its publishes be counted, rather than hold them forever.
/// Longer than redis-rs's default 500 ms: a pipeline of 256 stream scripts on a busy
/// node is no reason to reconnect.
pub(crate) const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long opening a connection to a node a publish was redirected to may take.
const REDIRECT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one publish job may take, redirections and retries included: past it,
/// what it has not answered is counted (see [`Answering`]) and the shard's next
/// pipeline goes. Room for the shard's pipeline and a round of redirections (a
/// connect and a pipeline), with the pauses between attempts.
const JOB_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a publish is sent before Redis's error is its answer: the first
/// time, then after a redirection, a `NOSCRIPT`, or a pause for `TRYAGAIN` or
/// `CLUSTERDOWN` (see [`cluster::transient_pause`]: 350 ms of pauses in all).
const MAX_ATTEMPTS: u32 = 4;

/// Which master a shard is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Master {
    /// The node the connector names: the URL's, or the Sentinels' master (off a
    /// Redis Cluster, the only shard).
    Primary,
    /// A master of a Redis Cluster.
    At(String, u16),
}

impl fmt::Display for Master {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Primary => f.write_str("the primary"),
            Self::At(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// A publisher connection with the publish script's SHA1 (loaded on its node).
#[derive(Clone)]
pub(crate) struct Publisher {
    pub(crate) conn: MultiplexedConnection,
    pub(crate) sha: String,
}

/// A shard's connections just opened: the reader is not running yet.
pub(crate) struct Opened {
    pub(crate) node: connect::Node,
    pub(crate) publisher: Publisher,
    pub(crate) commands: pubsub::Commands,
    pub(crate) replies: pubsub::Replies,
}

impl Master {
    /// Opens this master's connections (Sentinel: asks them which node it is).
    pub(crate) async fn open(self, servers: Servers) -> RedisResult<Opened> {
        let connect::Primary {
            node,
            publisher: mut conn,
        } = match &self {
            Self::Primary => servers.connector().primary().await?,
            Self::At(host, port) => {
                let node = servers.connector().node(host, *port);
                let publisher = node.publisher().await?;
                connect::Primary { node, publisher }
            }
        };
        conn.set_response_timeout(PUBLISH_TIMEOUT);
        // Loaded on every new connection: the Redis there may be another one, or restarted.
        let sha = stream::load(&mut conn, stream::PUBLISH_SCRIPT).await?;
        let (commands, replies) = node.subscriber().await?;
        Ok(Opened {
            node,
            publisher: Publisher { conn, sha },
            commands,
            replies,
        })
    }
}

/// What publishing needs besides the connections, the same for every batch.
pub(crate) struct Publishing {
    pub(crate) stats: Counters,
    pub(crate) connector: Connector,
    /// `PUBLISH`, or `SPUBLISH` on a Redis Cluster.
    pub(crate) verb: &'static str,
}

/// What a batch's publishing says about its shard.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// The shard's connection did not answer (failed, or not in time): the shard
    /// must reconnect.
    pub(crate) failed: Option<String>,
    /// Redis said the map is stale (`MOVED`, `CLUSTERDOWN`).
    pub(crate) stale_map: bool,
    /// A stream's script met `READONLY`: the node is a replica now.
    pub(crate) demoted: bool,
}

/// Where one publish goes in a round.
#[derive(Clone, PartialEq, Eq)]
enum Route {
    Own,
    /// Sent on to `redirect`'s node, as `from` said (`None`: the shard's own node);
    /// a moving slot's subscribers are still on `from`.
    Redirected {
        redirect: Redirect,
        from: Option<String>,
    },
}

impl Route {
    /// Where a publish sent on this route is sent next when Redis answers `redirect`.
    fn redirected(&self, redirect: Redirect) -> Self {
        let from = match self {
            Self::Own => None,
            Self::Redirected { redirect, .. } => Some(redirect.address()),
        };
        Self::Redirected { redirect, from }
    }
}

/// Publishes `batch` on `own` in one pipeline, in its order, and counts and answers
/// each publish; sends again those Redis redirected (on the shard's connection to that
/// node when `others` has one, on a new one otherwise), those that met `NOSCRIPT`
/// (with the script loaded first) and, after a short pause, those that met `TRYAGAIN`
/// or `CLUSTERDOWN`: up to [`MAX_ATTEMPTS`] times, then Redis's error is the answer.
/// Within [`JOB_TIMEOUT`]: what is not answered by then is counted (see [`Answering`]).
pub(crate) async fn publish(
    publishing: &Publishing,
    own: Publisher,
    others: &HashMap<String, Publisher>,
    batch: Vec<Publish>,
) -> Outcome {
    let mut answering = Answering::new(&publishing.stats, &batch);
    let mut outcome = Outcome::default();
    let rounds = Rounds {
        publishing,
        own,
        others,
        opened: HashMap::new(),
    };
    let sending = rounds.send(batch, &mut answering, &mut outcome);
    if tokio::time::timeout(JOB_TIMEOUT, sending).await.is_err() {
        tracing::warn!(
            unanswered = answering.held(),
            "publishes redirected across the cluster were not answered in time"
        );
    }
    outcome
}

/// The connections a publish job sends on.
struct Rounds<'p> {
    publishing: &'p Publishing,
    own: Publisher,
    /// The shard's connections to the other masters, by `host:port`.
    others: &'p HashMap<String, Publisher>,
    /// Connections this job opened to nodes it was redirected to.
    opened: HashMap<String, Publisher>,
}

impl Rounds<'_> {
    async fn send(mut self, batch: Vec<Publish>, answering: &mut Answering, outcome: &mut Outcome) {
        let publishing = self.publishing;
        // A stream publish that meets NOSCRIPT is sent again after the batch: behind
        // envelopes queued after it, were the script not loaded first. One `SCRIPT LOAD`
        // (a no-op when Redis has it) keeps the order; only a `SCRIPT FLUSH` that lands
        // within the pipeline can still put a stream publish after them.
        let mut load_first = loads_first(&batch);
        let mut round: Vec<(Publish, Route)> = batch.into_iter().map(|p| (p, Route::Own)).collect();
        for attempt in 1..=MAX_ATTEMPTS {
            let last = attempt == MAX_ATTEMPTS;
            let mut again = Vec::new();
            let mut pause = false;
            let mut republish: HashMap<Option<String>, redis::Pipeline> = HashMap::new();
            for (route, publishes) in by_route(round) {
                let replies = match self.pipeline(&route, &publishes, load_first).await {
                    Ok(replies) => replies,
                    Err(error) => {
                        match &route {
                            Route::Own => outcome.failed = Some(error.to_string()),
                            Route::Redirected { redirect, .. } => {
                                let to = redirect.address();
                                tracing::warn!(%to, %error, "the node Redis redirected publishes to did not answer them");
                            }
                        }
                        answering.unanswered(&error, publishes);
                        continue;
                    }
                };
                for (publish, reply) in publishes.into_iter().zip(replies) {
                    let error = match reply {
                        Ok(value) => {
                            let verb = publishing.verb;
                            if let Some((from, envelope)) =
                                answering.answer(verb, &route, publish, Ok(value))
                            {
                                republish.entry(from).or_default().add_command(envelope);
                            }
                            continue;
                        }
                        Err(error) => error,
                    };
                    outcome.demoted |= error.code() == Some("READONLY");
                    outcome.stale_map |= matches!(error.code(), Some("MOVED" | "CLUSTERDOWN"));
                    let next = if let Some(redirect) = Redirect::of(&error) {
                        Some(route.redirected(redirect))
                    } else if cluster::is_transient(&error) {
                        pause = true;
                        Some(route.clone())
                    } else if stream::is_noscript(&error) {
                        Some(route.clone())
                    } else {
                        None
                    };
                    match next {
                        Some(next) if !last => again.push((publish, next)),
                        _ => {
                            answering.answer(publishing.verb, &route, publish, Err(error));
                        }
                    }
                }
            }
            self.republish(republish).await;
            if again.is_empty() {
                break;
            }
            if pause {
                tokio::time::sleep(cluster::transient_pause(attempt)).await;
            }
            // What is sent again may have met NOSCRIPT: the script goes first.
            load_first = true;
            round = again;
        }
    }

    /// Sends `publishes` on `route` in one pipeline: one reply per publish.
    async fn pipeline(
        &mut self,
        route: &Route,
        publishes: &[Publish],
        load_first: bool,
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        let (mut publisher, asking) = match route {
            Route::Own => (self.own.clone(), false),
            Route::Redirected { redirect, .. } => {
                (self.redirected_to(redirect).await?, redirect.asking)
            }
        };
        let verb = self.publishing.verb;
        let pipe = pipeline(publishes, &publisher.sha, verb, load_first, asking);
        let replies: Vec<RedisResult<Value>> = pipe.query_async(&mut publisher.conn).await?;
        // One reply per publish, or none is trusted: a publish without its reply would
        // leave uncounted.
        if replies.len() != publishes.len() {
            return Err(connect::failed(
                "Redis answered a pipeline with too few or too many replies",
            ));
        }
        Ok(replies)
    }

    /// Sends the envelopes of the stream publishes an `ASK` sent on, on the node each
    /// was redirected from (see [`Answering::answer`]): one pipeline per node.
    async fn republish(&mut self, republish: HashMap<Option<String>, redis::Pipeline>) {
        for (from, pipe) in republish {
            let publisher = match &from {
                None => Some(self.own.clone()),
                Some(address) => self
                    .others
                    .get(address)
                    .or_else(|| self.opened.get(address))
                    .cloned(),
            };
            let sent = match publisher {
                Some(mut publisher) => pipe
                    .query_async::<Vec<Value>>(&mut publisher.conn)
                    .await
                    .err(),
                None => Some(connect::failed("no connection to the node")),
            };
            if let Some(error) = sent {
                // Kept in the stream all the same: the hubs read it from there when
                // they next hear of the room, or when they resubscribe to it.
                tracing::warn!(?from, %error, "stream messages published on a moving slot reached their subscribers only through the stream");
            }
        }
    }

    /// The connection to the node of `redirect`: the shard's own to it, or one opened
    /// for this job (an unknown node: the map is stale).
    async fn redirected_to(&mut self, redirect: &Redirect) -> RedisResult<Publisher> {
        let address = redirect.address();
        if let Some(known) = self
            .others
            .get(&address)
            .or_else(|| self.opened.get(&address))
        {
            return Ok(known.clone());
        }
        let node = redirect.node(&self.publishing.connector);
        let conn = tokio::time::timeout(REDIRECT_CONNECT_TIMEOUT, node.publisher())
            .await
            .unwrap_or_else(|_| {
                Err(connect::failed(
                    "a node a publish was redirected to did not answer in time",
                ))
            })?;
        // The script's SHA1 is the same on every node (its content's); the pipeline
        // loads it first.
        let mut publisher = Publisher {
            conn,
            sha: self.own.sha.clone(),
        };
        publisher.conn.set_response_timeout(PUBLISH_TIMEOUT);
        self.opened.insert(address, publisher.clone());
        Ok(publisher)
    }
}

/// The publishes of a round grouped by where they go, in their order.
fn by_route(round: Vec<(Publish, Route)>) -> Vec<(Route, Vec<Publish>)> {
    let mut groups: Vec<(Route, Vec<Publish>)> = Vec::new();
    for (publish, route) in round {
        match groups.iter_mut().find(|(known, _)| *known == route) {
            Some((_, publishes)) => publishes.push(publish),
            None => groups.push((route, vec![publish])),
        }
    }
    groups
}

/// Publishes in one pipeline, in their order, each with its reply (errors included: a
/// stream's publish may meet `NOSCRIPT` while the others go through); the script
/// loaded first when `load_first`, each publish after `ASKING` when `asking`.
fn pipeline(
    publishes: &[Publish],
    sha: &str,
    verb: &str,
    load_first: bool,
    asking: bool,
) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    if load_first && publishes.iter().any(|p| matches!(p, Publish::Stream(_))) {
        pipe.cmd("SCRIPT")
            .arg("LOAD")
            .arg(stream::PUBLISH_SCRIPT)
            .ignore();
    }
    for publish in publishes {
        if asking {
            pipe.cmd("ASKING").ignore();
        }
        pipe.add_command(command(publish, sha, verb));
    }
    pipe
}

/// The command of one publish: `verb` (`PUBLISH`, `SPUBLISH`) for an envelope, the
/// publish script for a stream's message.
fn command(publish: &Publish, sha: &str, verb: &str) -> redis::Cmd {
    match publish {
        Publish::Envelope { channel, payload } => {
            let mut cmd = redis::cmd(verb);
            cmd.arg(channel).arg(payload.as_ref());
            cmd
        }
        Publish::Stream(publish) => publish.invocation(sha),
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

/// Answers a job's publishes and counts them (and takes them off those pending, see
/// `RedisConfig::max_pending_publishes`), and counts those it still holds when it
/// is dropped with them (past [`JOB_TIMEOUT`], or with the link: the broker dropped
/// past its deadline, the hub gone): envelopes as lost, stream publishes as
/// unconfirmed, since they may have been sent (their futures say so as they drop).
/// No publish leaves a job uncounted.
pub(crate) struct Answering {
    stats: Counters,
    envelopes: u64,
    streams: u64,
}

impl Answering {
    pub(crate) fn new(stats: &Counters, batch: &[Publish]) -> Self {
        let streams = batch
            .iter()
            .filter(|p| matches!(p, Publish::Stream(_)))
            .count() as u64;
        Self {
            stats: stats.clone(),
            envelopes: batch.len() as u64 - streams,
            streams,
        }
    }

    /// How many publishes are not answered yet.
    fn held(&self) -> u64 {
        self.envelopes + self.streams
    }

    /// Takes `publish` off the publishes held, and off those pending.
    fn settle(&mut self, publish: &Publish) {
        match publish {
            Publish::Envelope { .. } => self.envelopes -= 1,
            Publish::Stream(_) => self.streams -= 1,
        }
        self.stats.dequeued(1);
    }

    /// Counts a publish Redis answered, and hands a stream's position over; returns
    /// the envelope to send again, and where, for a stream publish an `ASK` sent on.
    ///
    /// A stream publish that an `ASK` sent to the slot's next master ran there, and its
    /// script's `SPUBLISH` too: where nobody listens, since Redis keeps a migrating
    /// slot's subscribers on its current master until the move ends (`getNodeByQuery`
    /// in Redis 7's cluster.c serves sharded pub/sub from there and leaves channels out
    /// of the keys that make it redirect). The envelope is therefore sent again on the
    /// node that sent the `ASK` (the slot's current master, where the room's
    /// subscribers are); a hub that hears it twice drops the second by its offset. The
    /// publish is answered first: its caller does not wait for that.
    fn answer(
        &mut self,
        verb: &str,
        route: &Route,
        publish: Publish,
        reply: RedisResult<Value>,
    ) -> Option<(Option<String>, redis::Cmd)> {
        self.settle(&publish);
        let stats = &self.stats;
        let publish = match publish {
            Publish::Envelope { channel, .. } => {
                match reply {
                    Ok(_) => stats.count(Counter::Published),
                    Err(error) => {
                        stats.count(Counter::Lost);
                        tracing::warn!(%channel, %error, "Redis refused a publish");
                    }
                }
                return None;
            }
            Publish::Stream(publish) => publish,
        };
        let value = match reply {
            Ok(value) => value,
            Err(error) => {
                stats.count(Counter::Lost);
                tracing::warn!(channel = %publish.channel(), %error, "Redis refused a stream's publish");
                publish.answer(Err(StreamError::Unavailable(error.to_string())));
                return None;
            }
        };
        // The script ran, so the message is kept and went out, even if its reply is odd.
        stats.count(Counter::Published);
        let position = stream::position_of(value);
        let republish = match (route, &position) {
            (Route::Redirected { redirect, from }, Ok(position)) if redirect.asking => {
                let mut spublish = redis::cmd(verb);
                spublish
                    .arg(publish.channel())
                    .arg(publish.envelope_at(*position).as_ref());
                Some((from.clone(), spublish))
            }
            _ => None,
        };
        publish.answer(position);
        republish
    }

    /// Answers publishes whose replies never came (the connection failed): envelopes
    /// count as lost (receivers count the gap), stream publishes as unconfirmed, since
    /// the script may have run.
    fn unanswered(&mut self, error: &RedisError, publishes: Vec<Publish>) {
        for publish in publishes {
            self.settle(&publish);
            match publish {
                Publish::Envelope { .. } => self.stats.count(Counter::Lost),
                Publish::Stream(publish) => {
                    self.stats.count(Counter::Unconfirmed);
                    publish.answer(Err(StreamError::Unconfirmed(format!(
                        "the link to Redis failed before Redis answered: {error}"
                    ))));
                }
            }
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.stats.add(Counter::Lost, self.envelopes);
        self.stats.add(Counter::Unconfirmed, self.streams);
        self.stats.dequeued(self.held());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisConfig;
    use bytes::Bytes;
    use switchboard_broker::{Envelope, History, NodeId, Target};
    use switchboard_proto::Message;

    fn envelope() -> Publish {
        Publish::Envelope {
            channel: "room".to_owned(),
            payload: Bytes::from_static(b"envelope"),
        }
    }

    #[tokio::test]
    async fn a_job_dropped_counts_what_it_still_holds() {
        let message = Envelope {
            origin: NodeId::from_bits(1),
            target: Target::Room("room".into()),
            except: None,
            message: Message::text("kept"),
            position: None,
        };
        let config = RedisConfig::default();
        let (stream, answer) =
            stream::StreamPublish::new(&config, &message, History::default()).unwrap();
        let batch = vec![envelope(), envelope(), Publish::Stream(Box::new(stream))];
        let stats = Counters::default();
        let mut answering = Answering::new(&stats, &batch);
        let mut batch = batch.into_iter();
        let first = batch.next().unwrap();
        answering.answer("PUBLISH", &Route::Own, first, Ok(Value::Int(1)));
        // The job is dropped (its deadline, the link's end) with the rest.
        drop(batch);
        drop(answering);
        let counted = |counter| stats.get(counter);
        assert_eq!(counted(Counter::Published), 1);
        assert_eq!(counted(Counter::Lost), 1);
        assert_eq!(counted(Counter::Unconfirmed), 1);
        assert!(answer.await.is_err(), "the stream publish was answered");
    }
}
