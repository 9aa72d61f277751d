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
#[derive(Clone)]
enum Route {
    Own,
    Redirected(Redirect),
}

/// Publishes `batch` on `own` in one pipeline, in its order, and counts and answers
/// each publish; sends again those Redis redirected (on the shard's connection to that
/// node when `others` has one, on a new one otherwise), those that met `NOSCRIPT`
/// (with the script loaded first) and, after a short pause, those that met `TRYAGAIN`
/// or `CLUSTERDOWN`: up to [`MAX_ATTEMPTS`] times, then Redis's error is the answer.
pub(crate) async fn publish(
    publishing: &Publishing,
    mut own: Publisher,
    others: HashMap<String, Publisher>,
    batch: Vec<Publish>,
) -> Outcome {
    let mut outcome = Outcome::default();
    // A stream publish that meets NOSCRIPT is sent again after the batch: behind
    // envelopes queued after it, were the script not loaded first. One `SCRIPT LOAD`
    // (a no-op when Redis has it) keeps the order; only a `SCRIPT FLUSH` that lands
    // within the pipeline can still put a stream publish after them.
    let mut load_first = loads_first(&batch);
    let mut round: Vec<(Publish, Route)> = batch.into_iter().map(|p| (p, Route::Own)).collect();
    let mut opened: HashMap<String, Publisher> = HashMap::new();
    for attempt in 1..=MAX_ATTEMPTS {
        let last = attempt == MAX_ATTEMPTS;
        let mut again = Vec::new();
        let mut pause = false;
        for (route, publishes) in by_route(round) {
            let publisher = match &route {
                Route::Own => Ok(own.clone()),
                Route::Redirected(redirect) => {
                    let sha = &own.sha;
                    redirected_to(publishing, redirect, sha, &others, &mut opened).await
                }
            };
            let asking = matches!(&route, Route::Redirected(redirect) if redirect.asking);
            let replies = match publisher {
                Ok(mut publisher) => {
                    let pipe = pipeline(
                        &publishes,
                        &publisher.sha,
                        publishing.verb,
                        load_first,
                        asking,
                    );
                    pipe.query_async::<Vec<RedisResult<Value>>>(&mut publisher.conn)
                        .await
                }
                Err(error) => Err(error),
            };
            let replies = match replies {
                Ok(replies) => replies,
                Err(error) => {
                    match &route {
                        Route::Own => outcome.failed = Some(error.to_string()),
                        Route::Redirected(redirect) => {
                            let to = redirect.address();
                            tracing::warn!(%to, %error, "the node Redis redirected publishes to did not answer them");
                        }
                    }
                    unanswered(&publishing.stats, &error, publishes);
                    continue;
                }
            };
            for (publish, reply) in publishes.into_iter().zip(replies) {
                let error = match reply {
                    Ok(value) => {
                        answer(publishing, &mut own, &route, publish, Ok(value)).await;
                        continue;
                    }
                    Err(error) => error,
                };
                outcome.demoted |= error.code() == Some("READONLY");
                outcome.stale_map |= matches!(error.code(), Some("MOVED" | "CLUSTERDOWN"));
                let next = if let Some(redirect) = Redirect::of(&error) {
                    Some(Route::Redirected(redirect))
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
                    _ => answer(publishing, &mut own, &route, publish, Err(error)).await,
                }
            }
        }
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
    outcome
}

/// The publishes of a round grouped by where they go, in their order.
fn by_route(round: Vec<(Publish, Route)>) -> Vec<(Route, Vec<Publish>)> {
    let mut groups: Vec<(Option<String>, Route, Vec<Publish>)> = Vec::new();
    for (publish, route) in round {
        let key = match &route {
            Route::Own => None,
            Route::Redirected(redirect) => {
                Some(format!("{}{}", redirect.address(), redirect.asking))
            }
        };
        match groups.iter_mut().find(|(known, _, _)| *known == key) {
            Some((_, _, publishes)) => publishes.push(publish),
            None => groups.push((key, route, vec![publish])),
        }
    }
    groups
        .into_iter()
        .map(|(_, route, publishes)| (route, publishes))
        .collect()
}

/// The connection to the node of `redirect`: the shard's own to it, or one opened for
/// this batch (an unknown node: the map is stale).
async fn redirected_to(
    publishing: &Publishing,
    redirect: &Redirect,
    sha: &str,
    others: &HashMap<String, Publisher>,
    opened: &mut HashMap<String, Publisher>,
) -> RedisResult<Publisher> {
    let address = redirect.address();
    if let Some(known) = others.get(&address).or_else(|| opened.get(&address)) {
        return Ok(known.clone());
    }
    let node = redirect.node(&publishing.connector);
    let conn = tokio::time::timeout(REDIRECT_CONNECT_TIMEOUT, node.publisher())
        .await
        .unwrap_or_else(|_| {
            Err(connect::failed(
                "a node a publish was redirected to did not answer in time",
            ))
        })?;
    // The script's SHA1 is the same on every node (its content's); the pipeline loads
    // it first.
    let mut publisher = Publisher {
        conn,
        sha: sha.to_owned(),
    };
    publisher.conn.set_response_timeout(PUBLISH_TIMEOUT);
    opened.insert(address, publisher.clone());
    Ok(publisher)
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

/// Counts a publish Redis answered, and hands a stream's position over.
///
/// A stream publish that an `ASK` sent to the slot's next master ran there, and its
/// script's `SPUBLISH` too: where nobody listens, since Redis keeps a migrating slot's
/// subscribers on its current master until the move ends (`getNodeByQuery` in Redis
/// 7's cluster.c serves sharded pub/sub from there and leaves channels out of the keys
/// that make it redirect). The envelope is therefore sent again on `own`, the master
/// the room's subscribers are on; a hub that hears it twice drops the second by its
/// offset.
async fn answer(
    publishing: &Publishing,
    own: &mut Publisher,
    route: &Route,
    publish: Publish,
    reply: RedisResult<Value>,
) {
    let stats = &publishing.stats;
    let publish = match publish {
        Publish::Envelope { channel, .. } => {
            match reply {
                Ok(_) => stats.count(Counter::Published),
                Err(error) => {
                    stats.count(Counter::Lost);
                    tracing::warn!(%channel, %error, "Redis refused a publish");
                }
            }
            return;
        }
        Publish::Stream(publish) => publish,
    };
    let value = match reply {
        Ok(value) => value,
        Err(error) => {
            stats.count(Counter::Lost);
            tracing::warn!(channel = %publish.channel(), %error, "Redis refused a stream's publish");
            publish.answer(Err(StreamError::Unavailable(error.to_string())));
            return;
        }
    };
    // The script ran, so the message is kept and went out, even if its reply is odd.
    stats.count(Counter::Published);
    let position = stream::position_of(value);
    if let (Route::Redirected(redirect), Ok(position)) = (route, &position) {
        if redirect.asking {
            let envelope = publish.envelope_at(*position);
            let mut spublish = redis::cmd(publishing.verb);
            spublish.arg(publish.channel()).arg(envelope);
            if let Err(error) = spublish.query_async::<Value>(&mut own.conn).await {
                // Kept in the stream all the same: the hubs read it from there when
                // they next hear of the room, or when they resubscribe to it.
                tracing::warn!(channel = %publish.channel(), %error, "a stream message published on a moving slot reached its subscribers only through the stream");
            }
        }
    }
    publish.answer(position);
}

/// Answers publishes whose replies never came (the connection failed): envelopes
/// count as lost (receivers count the gap), stream publishes as unconfirmed, since the
/// script may have run.
pub(crate) fn unanswered(stats: &Counters, error: &RedisError, publishes: Vec<Publish>) {
    for publish in publishes {
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
}
