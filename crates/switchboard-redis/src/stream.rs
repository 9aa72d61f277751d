//! Rooms with history on Redis: each publish runs one Lua script that numbers the
//! message, keeps it in a Redis stream and publishes it with its position, all in one
//! atomic step; reads run another on a connection of their own.
//!
//! A room's stream is two keys with one hash tag, `{prefix:room:NAME}:s` (the
//! messages) and `{prefix:room:NAME}:m` (epoch and newest offset), so that a Redis
//! Cluster keeps them on one shard, the one the scripts run on.

use crate::{
    RedisConfig,
    cluster::{self, Servers},
    codec, connect,
    shard::Master,
};
use redis::{Cmd, RedisResult, Value, aio::MultiplexedConnection};
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard_broker::{
    Envelope, Epoch, History, Position, StreamEntry, StreamError, StreamRead, Target,
    link::{AwaitsPosition, Counter, Counters},
    lock,
};
use tokio::sync::{Mutex, oneshot};

/// Numbers, keeps, trims and publishes a stream's message (see `lua/publish.lua`).
pub(crate) const PUBLISH_SCRIPT: &str = concat!(
    include_str!("lua/common.lua"),
    include_str!("lua/publish.lua")
);

/// Reads a stream after an offset, with its epoch and newest offset (see `lua/read.lua`).
const READ_SCRIPT: &str = concat!(include_str!("lua/common.lua"), include_str!("lua/read.lua"));

/// How long a stream is kept after its last message when its history has no
/// `max_age`: a day, so that the streams of rooms that died do not stay in Redis
/// forever; a client back after a day of silence is told it did not recover.
const IDLE_STREAM_TTL: Duration = Duration::from_secs(24 * 3600);

/// How much longer than its messages a stream's epoch and newest offset are kept: a
/// client that had seen everything of a room that then went quiet still recovers
/// (nothing missed) when it comes back after the messages expired, rather than be
/// told to reload for a new epoch. A day: a few dozen bytes per dead room, for a day.
const META_LINGER: Duration = Duration::from_secs(24 * 3600);

/// How long a read waits for Redis: a hub's recovery of its clients waits on it, and
/// gives up (they join live, not recovered) rather than hang.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long opening the reads' connection may take, of [`READ_TIMEOUT`]: half, so
/// that a read that opened one still has time for its script; and how long reads fail
/// at once after a failure to open one.
const READ_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How many times a read is sent before its error is the answer: a redirection, then
/// perhaps a pause for `TRYAGAIN` or a new connection.
const READ_ATTEMPTS: u32 = 4;

/// Offsets read after are capped here: the largest of 15 digits (what the scripts
/// take: below 2^53, exact in Lua's numbers), which no stream gets anywhere near (a
/// million messages a second for 31 years).
const MAX_OFFSET: u64 = 999_999_999_999_999;

/// The longest history kept in Redis: a larger `max_len` (`usize::MAX` for "no limit")
/// is taken as this. 2^32 messages is more than any Redis holds, and a cap keeps the
/// numbers the scripts get exact integers (Lua would send 1e17 to Redis as `1e+17`,
/// which `XADD` refuses after the offset was taken).
pub(crate) const MAX_LEN: u64 = 1 << 32;

/// The longest expiry and `max_age` set in Redis: longer ones are taken as this. Ten
/// years: no stream needs more, and `PEXPIRE` refuses an expiry that overflows Redis's
/// clock (after the message was kept, were it not capped).
pub(crate) const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl RedisConfig {
    /// The keys of `room`'s stream: its messages and its meta, under one hash tag.
    pub(crate) fn stream_keys(&self, room: &str) -> [String; 2] {
        let tag = self.room_tag(room);
        [format!("{tag}:s"), format!("{tag}:m")]
    }
}

/// A stream's message waiting for the link task, with where its position goes.
#[derive(Debug)]
pub(crate) struct StreamPublish {
    keys: [String; 2],
    channel: String,
    /// `PUBLISH`, or `SPUBLISH` on a Redis Cluster.
    verb: &'static str,
    parts: codec::StreamParts,
    history: History,
    /// The epoch the stream gets if it has none.
    candidate: Epoch,
    reply: oneshot::Sender<Result<Position, StreamError>>,
}

impl StreamPublish {
    /// The publish of `envelope` (for a room) to its stream, and where its answer comes.
    pub(crate) fn new(
        config: &RedisConfig,
        envelope: &Envelope,
        history: History,
    ) -> Result<(Self, oneshot::Receiver<Result<Position, StreamError>>), StreamError> {
        let Target::Room(room) = &envelope.target else {
            return Err(StreamError::NoHistory);
        };
        // Only text and binary messages cross between hubs.
        let parts = codec::encode_stream(envelope).map_err(|_| StreamError::NotData)?;
        let (reply, answer) = oneshot::channel();
        let publish = Self {
            keys: config.stream_keys(room),
            channel: config.channel_room(room),
            verb: config.publish_verb(),
            parts,
            history,
            candidate: Epoch::random(),
            reply,
        };
        Ok((publish, answer))
    }

    /// The script's invocation; made again for a retry after `NOSCRIPT`.
    pub(crate) fn invocation(&self, sha: &str) -> Cmd {
        let (stream_ttl, meta_ttl) = ttls(self.history);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(sha)
            .arg(2)
            .arg(&self.keys)
            .arg(self.candidate.to_string())
            .arg(max_len(self.history))
            .arg(max_age_ms(self.history))
            .arg(stream_ttl)
            .arg(meta_ttl)
            .arg(&self.channel)
            .arg(self.parts.head.as_ref())
            .arg(self.parts.route.as_ref())
            .arg(codec::field(&self.parts))
            .arg(self.parts.payload.as_ref())
            .arg(self.verb);
        cmd
    }

    /// The envelope the script publishes for this message at `position`, for a hub
    /// that must send it on another node.
    pub(crate) fn envelope_at(&self, position: Position) -> bytes::Bytes {
        self.parts.at(position)
    }
}

impl AwaitsPosition for StreamPublish {
    fn channel(&self) -> &str {
        &self.channel
    }

    fn answer(self, answer: Result<Position, StreamError>) {
        // Nobody awaits it if the future was dropped.
        let _ = self.reply.send(answer);
    }
}

/// The position in the publish script's reply, `{offset, epoch}`.
pub(crate) fn position_of(reply: Value) -> Result<Position, StreamError> {
    let Value::Array(items) = reply else {
        return Err(malformed("the publish reply is not an array"));
    };
    match items.as_slice() {
        [Value::Int(offset), Value::BulkString(epoch)] => {
            let offset = u64::try_from(*offset).map_err(|_| malformed("a negative offset"))?;
            Ok(Position::new(offset, epoch_of(epoch)?))
        }
        _ => Err(malformed("the publish reply is not {offset, epoch}")),
    }
}

/// The read script's reply, `{epoch, top, {offset, field, payload, ...}}`, and how
/// many entries were skipped for not being a message (text that is not UTF-8, an
/// unknown kind: written by something else): a hole, which
/// [`StreamRead::covers`] sees, rather than a stream no read gets past.
fn read_of(reply: Value) -> Result<(StreamRead, u64), StreamError> {
    let Value::Array(items) = reply else {
        return Err(malformed("the read reply is not an array"));
    };
    let mut items = items.into_iter();
    let (Some(Value::BulkString(epoch)), Some(Value::Int(top)), Some(Value::Array(flat))) =
        (items.next(), items.next(), items.next())
    else {
        return Err(malformed("the read reply is not {epoch, top, entries}"));
    };
    let top = u64::try_from(top).map_err(|_| malformed("a negative top"))?;
    let mut entries = Vec::with_capacity(flat.len() / 3);
    let mut skipped = 0;
    let mut flat = flat.into_iter();
    while let Some(offset) = flat.next() {
        let (Value::Int(offset), Some(Value::BulkString(field)), Some(Value::BulkString(data))) =
            (offset, flat.next(), flat.next())
        else {
            return Err(malformed("an entry is not {offset, field, payload}"));
        };
        let offset = u64::try_from(offset).map_err(|_| malformed("a negative offset"))?;
        match codec::stream_message(&field, data) {
            // The script stores the message only: a gap filled from Redis reaches the
            // connection its send left out too.
            Ok(message) => entries.push(StreamEntry {
                offset,
                message,
                except: None,
            }),
            Err(error) => {
                skipped += 1;
                tracing::warn!(offset, %error, "skipped a stream entry that is not a message");
            }
        }
    }
    let read = StreamRead {
        epoch: epoch_of(&epoch)?,
        top,
        entries,
    };
    Ok((read, skipped))
}

fn epoch_of(hex: &[u8]) -> Result<Epoch, StreamError> {
    std::str::from_utf8(hex)
        .ok()
        .and_then(|hex| hex.parse().ok())
        .ok_or_else(|| malformed("an epoch that is not hex"))
}

fn malformed(what: &str) -> StreamError {
    StreamError::Malformed(what.to_owned())
}

/// The stream's expiry (its `max_age`: a stream idle that long holds nothing young
/// enough to read) and the meta's (that and [`META_LINGER`]), in ms, each at most
/// [`MAX_TTL`].
fn ttls(history: History) -> (u64, u64) {
    let stream = history.max_age.unwrap_or(IDLE_STREAM_TTL);
    (ms(stream), ms(stream.saturating_add(META_LINGER)))
}

/// `max_age` in ms, 0 for none (a `max_age` under a millisecond is taken as 1 ms, one
/// over [`MAX_TTL`] as that).
fn max_age_ms(history: History) -> u64 {
    history.max_age.map_or(0, ms)
}

/// A duration in ms for the scripts: at least 1, at most [`MAX_TTL`].
fn ms(duration: Duration) -> u64 {
    let ms = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    ms(duration).clamp(1, ms(MAX_TTL))
}

/// `max_len` for the scripts: at least 1, at most [`MAX_LEN`].
fn max_len(history: History) -> u64 {
    u64::try_from(history.max_len)
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_LEN)
}

/// Loads `script` into the Redis of `conn`; its SHA1, for `EVALSHA`.
pub(crate) async fn load(conn: &mut MultiplexedConnection, script: &str) -> RedisResult<String> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query_async(conn)
        .await
}

/// Whether Redis answered that it does not have the script (restarted, `SCRIPT FLUSH`,
/// a failover to a replica that never loaded it).
pub(crate) fn is_noscript(error: &redis::RedisError) -> bool {
    error.code() == Some("NOSCRIPT")
}

/// The connection reads go on: neither the subscriber (which allows no other command)
/// nor the publisher (a burst of reads, when many clients recover at once, would hold
/// up the publishes behind it). Opened at the first read, again after it fails; on a
/// Redis Cluster, one per master, each read on its stream's.
#[derive(Debug)]
pub(crate) struct Reads {
    servers: Servers,
    config: RedisConfig,
    /// Counts the entries skipped as malformed.
    stats: Counters,
    /// Per node: the connection open (if any), and when opening one last failed.
    /// Bounded by the masters of the cluster's current map (see [`Reads::prune`]).
    nodes: std::sync::Mutex<HashMap<Master, Slot>>,
    /// Numbers the connections, so that a read drops only the one it found failed;
    /// one count for all nodes, so that a node forgotten and met again does not
    /// reuse a number a read still holds.
    opened: AtomicU64,
}

#[derive(Debug, Default)]
struct Slot {
    open: Option<Open>,
    failed: Option<Instant>,
    /// Held while this node's connection is opened: the reads that need it wait for
    /// that one rather than open their own, and the reads of other nodes wait for
    /// nothing (a node that takes its [`READ_CONNECT_TIMEOUT`] to fail holds up only
    /// its own streams' reads).
    opening: Arc<Mutex<()>>,
}

/// A connection with the read script's SHA1 on it.
#[derive(Debug, Clone)]
struct Open {
    conn: MultiplexedConnection,
    sha: String,
    generation: u64,
}

impl Reads {
    pub(crate) fn new(servers: Servers, config: RedisConfig, stats: Counters) -> Self {
        Self {
            servers,
            config,
            stats,
            nodes: std::sync::Mutex::default(),
            opened: AtomicU64::new(0),
        }
    }

    /// `room`'s stream after `after`, waiting at most [`READ_TIMEOUT`]; the connection
    /// it waited on is dropped (the next read opens another) if Redis did not answer.
    pub(crate) async fn read(
        &self,
        room: &str,
        after: u64,
        history: History,
    ) -> Result<StreamRead, StreamError> {
        let mut used = None;
        let read = self.read_now(room, after, history, &mut used);
        match tokio::time::timeout(READ_TIMEOUT, read).await {
            Ok(read) => read,
            Err(_) => {
                if let Some((master, generation)) = used {
                    self.drop_connection(&master, generation);
                }
                Err(StreamError::Unavailable(format!(
                    "Redis did not answer a read within {READ_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Reads, following a Redis Cluster's redirections (`MOVED`: the slot moved and
    /// the map the link shares is not updated yet; `ASK`: the slot is moving and the
    /// stream is on its new master already), waiting out `TRYAGAIN` and `CLUSTERDOWN`
    /// (a slot mid-move, a failover) with a short pause, and trying a connection found
    /// failed (after Redis restarted, say) once more on a new one; at most
    /// [`READ_ATTEMPTS`] times in all, within the read's timeout.
    async fn read_now(
        &self,
        room: &str,
        after: u64,
        history: History,
        used: &mut Option<(Master, u64)>,
    ) -> Result<StreamRead, StreamError> {
        let mut to = None;
        let mut read = self
            .read_on_connection(room, after, history, None, used)
            .await;
        for attempt in 1..READ_ATTEMPTS {
            let Err(error) = &read else {
                break;
            };
            if let Some(redirect) = cluster::Redirect::of(error) {
                to = Some(redirect);
            } else if error.code().is_none() {
                // No Redis error code: the connection's failure, not the command's.
                if let Some((master, generation)) = used.clone() {
                    self.drop_connection(&master, generation);
                }
            } else if cluster::is_transient(error) {
                tokio::time::sleep(cluster::transient_pause(attempt)).await;
            } else {
                break;
            }
            read = self
                .read_on_connection(room, after, history, to.as_ref(), used)
                .await;
        }
        read.map_err(|error| StreamError::Unavailable(error.to_string()))
            .and_then(read_of)
            .map(|(read, skipped)| {
                self.stats.add(Counter::Malformed, skipped);
                read
            })
    }

    /// Runs the read script on the node of `room`'s stream, or the one Redis
    /// redirected the read `to`.
    async fn read_on_connection(
        &self,
        room: &str,
        after: u64,
        history: History,
        to: Option<&cluster::Redirect>,
        used: &mut Option<(Master, u64)>,
    ) -> RedisResult<Value> {
        let keys = self.config.stream_keys(room);
        let master = match to {
            Some(redirect) => Master::At(redirect.host.clone(), redirect.port),
            None => match self.servers.owner_of(&keys[0])? {
                Some((host, port)) => Master::At(host, port),
                None => Master::Primary,
            },
        };
        let asking = to.is_some_and(|redirect| redirect.asking);
        let mut open = self.connection(&master).await?;
        *used = Some((master.clone(), open.generation));
        let (_, meta_ttl) = ttls(history);
        let invocation = |sha: &str| {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha)
                .arg(2)
                .arg(&keys)
                .arg(Epoch::random().to_string())
                .arg(after.min(MAX_OFFSET))
                .arg(max_len(history))
                .arg(max_age_ms(history))
                .arg(meta_ttl);
            cmd
        };
        match cluster::query_asking(&mut open.conn, invocation(&open.sha), asking).await {
            Err(error) if is_noscript(&error) => {
                let sha = load(&mut open.conn, READ_SCRIPT).await?;
                self.slot(&master, |slot| {
                    let kept = slot.open.as_mut();
                    if let Some(kept) = kept.filter(|kept| kept.generation == open.generation) {
                        kept.sha.clone_from(&sha);
                    }
                });
                cluster::query_asking(&mut open.conn, invocation(&sha), asking).await
            }
            reply => reply,
        }
    }

    /// The open connection, or a new one with the read script loaded, opened within
    /// [`READ_CONNECT_TIMEOUT`]. After a failure to open one, reads fail at once for
    /// that long: a recovery of many clients while Redis is unreachable fails fast
    /// rather than queue behind one connect after another.
    async fn connection(&self, master: &Master) -> RedisResult<Open> {
        let (open, opening) = self.slot(master, |slot| (slot.open.clone(), slot.opening.clone()));
        if let Some(open) = open {
            return Ok(open);
        }
        let _opening = opening.lock().await;
        let (open, failed) = self.slot(master, |slot| (slot.open.clone(), slot.failed));
        if let Some(open) = open {
            return Ok(open);
        }
        if failed.is_some_and(|failed| failed.elapsed() < READ_CONNECT_TIMEOUT) {
            return Err(connect::failed("Redis was unreachable a moment ago"));
        }
        let opened = tokio::time::timeout(READ_CONNECT_TIMEOUT, async {
            let mut conn = match master {
                Master::At(host, port) => {
                    self.servers
                        .connector()
                        .node(host, *port)
                        .publisher()
                        .await?
                }
                Master::Primary => self.servers.connector().primary().await?.publisher,
            };
            let sha = load(&mut conn, READ_SCRIPT).await?;
            RedisResult::Ok((conn, sha))
        })
        .await
        .unwrap_or_else(|_| Err(connect::failed("Redis did not answer a connect in time")));
        if opened.is_ok() {
            self.prune(master);
        }
        let generation = self.opened.fetch_add(1, Relaxed);
        self.slot(master, |slot| match opened {
            Ok((conn, sha)) => {
                let open = Open {
                    conn,
                    sha,
                    generation,
                };
                slot.open = Some(open.clone());
                slot.failed = None;
                Ok(open)
            }
            Err(error) => {
                slot.failed = Some(Instant::now());
                Err(error)
            }
        })
    }

    /// Drops `master`'s open connection, if any: its shard has reconnected (a
    /// failover moved it, or Redis restarted), and the next reads there follow it.
    /// The other nodes' connections stay: their reads have no reason to pay a connect.
    pub(crate) fn reconnect(&self, master: &Master) {
        if let Some(slot) = lock(&self.nodes).get_mut(master) {
            slot.open = None;
        }
    }

    /// Forgets the nodes the cluster's current map no longer names as masters (a
    /// failover's old master, a node removed, a redirection's target that served no
    /// slot), but `opening`, so that the nodes kept stay as few as the cluster's
    /// masters however often their addresses change. Off a cluster there is one
    /// node, never pruned. A read redirected to a node forgotten opens a connection
    /// to it again.
    fn prune(&self, opening: &Master) {
        let Some(masters) = self.servers.masters() else {
            return;
        };
        lock(&self.nodes).retain(|master, _| {
            master == opening
                || match master {
                    Master::At(host, port) => masters.iter().any(|(h, p)| h == host && p == port),
                    Master::Primary => true,
                }
        });
    }

    /// Drops connection `generation` if it is still the open one (not one another
    /// read opened since).
    fn drop_connection(&self, master: &Master, generation: u64) {
        self.slot(master, |slot| {
            if slot
                .open
                .as_ref()
                .is_some_and(|open| open.generation == generation)
            {
                slot.open = None;
            }
        });
    }

    /// Runs `work` on what is kept for `master`.
    fn slot<T>(&self, master: &Master, work: impl FnOnce(&mut Slot) -> T) -> T {
        work(lock(&self.nodes).entry(master.clone()).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reads_forget_nodes_that_are_no_longer_masters() {
        let config = RedisConfig::default().cluster(["redis://127.0.0.1:7000/"]);
        let servers = Servers::new(&config).unwrap();
        let reads = Reads::new(servers.clone(), config, Counters::default());
        let at = |port| Master::At("127.0.0.1".to_owned(), port);
        for port in [7000, 7001, 7002] {
            reads.slot(&at(port), |_| ());
        }
        // A failover replaced 7001 with 7003; a redirection led a read to 7009.
        servers.keep_masters(&[
            ("127.0.0.1", 7000),
            ("127.0.0.1", 7002),
            ("127.0.0.1", 7003),
        ]);
        reads.prune(&at(7009));
        let mut kept: Vec<Master> = lock(&reads.nodes).keys().cloned().collect();
        kept.sort_by_key(ToString::to_string);
        assert_eq!(kept, [at(7000), at(7002)]);
    }

    #[test]
    fn a_rooms_keys_share_one_hash_tag() {
        let config = RedisConfig::default().prefix("chat");
        let [stream, meta] = config.stream_keys("lobby");
        assert_eq!(stream, "{chat:room:lobby}:s");
        assert_eq!(meta, "{chat:room:lobby}:m");
        // A `}` in the name ends the tag early, at the same place in both keys.
        let [stream, meta] = config.stream_keys("a}b");
        assert_eq!(stream.split('}').next(), meta.split('}').next());
    }

    #[test]
    fn the_meta_outlives_the_messages() {
        let minute = History::default().max_age(Duration::from_secs(60));
        assert_eq!(ttls(minute), (60_000, 60_000 + 86_400_000));
        assert_eq!(ttls(History::default().no_max_age()).0, 86_400_000);
        assert_eq!(max_age_ms(History::default().no_max_age()), 0);
        let tiny = History::default().max_age(Duration::from_micros(10));
        assert_eq!(max_age_ms(tiny), 1);
    }

    #[test]
    fn lengths_and_ages_are_capped_to_what_the_scripts_take() {
        let ms_cap = MAX_TTL.as_millis() as u64;
        let forever = History::default()
            .max_len(usize::MAX)
            .max_age(Duration::MAX);
        assert_eq!(max_len(forever), MAX_LEN);
        assert_eq!(max_age_ms(forever), ms_cap);
        assert_eq!(ttls(forever), (ms_cap, ms_cap));
        assert_eq!(max_len(History::default().max_len(0)), 1);
        // 15 digits at most, as the scripts check.
        assert!(ms_cap.to_string().len() <= 15 && MAX_LEN.to_string().len() <= 15);
    }

    #[test]
    fn replies_that_are_not_positions_or_reads_are_errors_not_panics() {
        let epoch = || Value::BulkString(b"00000000000000ab".to_vec());
        assert_eq!(
            position_of(Value::Array(vec![Value::Int(3), epoch()])),
            Ok(Position::new(3, Epoch::from_u64(0xab)))
        );
        for bad in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(-1), epoch()]),
            Value::Array(vec![Value::Int(1), Value::BulkString(b"xyz".to_vec())]),
        ] {
            assert!(
                matches!(position_of(bad.clone()), Err(StreamError::Malformed(_))),
                "{bad:?}"
            );
        }
        let entry = |offset, field: &[u8], data: &[u8]| {
            vec![
                Value::Int(offset),
                Value::BulkString(field.to_vec()),
                Value::BulkString(data.to_vec()),
            ]
        };
        let read =
            |flat: Vec<Value>| Value::Array(vec![epoch(), Value::Int(9), Value::Array(flat)]);
        let good = read([entry(8, b"t", b"hi"), entry(9, b"b", b"\xff")].concat());
        assert_eq!(
            read_of(good).map(|(read, _)| read),
            Ok(StreamRead {
                epoch: Epoch::from_u64(0xab),
                top: 9,
                entries: vec![
                    StreamEntry {
                        offset: 8,
                        message: switchboard_proto::Message::text("hi"),
                        except: None,
                    },
                    StreamEntry {
                        offset: 9,
                        message: switchboard_proto::Message::binary(vec![0xffu8]),
                        except: None,
                    },
                ],
            })
        );
        // An entry that is not a message is skipped, and counted: a hole.
        let skips = read(
            [
                entry(7, b"t", b"\xff"),
                entry(8, b"?", b""),
                entry(9, b"t", b"ok"),
            ]
            .concat(),
        );
        let (skipping, skipped) = read_of(skips).unwrap();
        assert_eq!(skipped, 2);
        assert_eq!(skipping.entries.len(), 1);
        assert!(!skipping.covers(Position::new(6, skipping.epoch)));
        assert!(skipping.covers(Position::new(8, skipping.epoch)));
        let mut cut = entry(8, b"t", b"hi");
        cut.pop();
        for bad in [
            Value::Nil,
            read(cut),
            read(entry(-8, b"t", b"")),
            Value::Array(vec![epoch(), Value::Int(-1), Value::Array(vec![])]),
        ] {
            assert!(
                matches!(read_of(bad.clone()), Err(StreamError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
