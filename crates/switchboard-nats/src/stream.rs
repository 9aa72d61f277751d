//! Streams with history on JetStream: one stream per room, its sequence the room's
//! offsets, republished onto the room's subject as it stores (see the crate's docs).

use crate::{NatsConfig, link::State, lock, names};
use async_nats::{
    header::{NATS_SEQUENCE, NATS_STREAM},
    jetstream::{
        Context,
        context::{PublishError, PublishErrorKind},
        publish::PublishAck,
        stream::{Config, DiscardPolicy, Info, Republish, StorageType, Stream},
    },
};
use bytes::Bytes;
use futures_util::StreamExt;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use switchboard_broker::{
    DEFAULT_MAX_CHANNELS, Envelope, Epoch, History, Position, StreamEntry, StreamError, StreamRead,
    Target, wire,
};
use tokio::sync::oneshot;

/// How long a read may take, its stream's info and its messages together.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the first publish to a stream on a link tries while JetStream says the
/// stream it has just made is not there yet.
const FIRST_PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// Messages a read asks for at once.
const READ_CONCURRENCY: usize = 16;

/// A stream's epoch: from its creation time, which a stream made again (NATS restarted
/// without storage, `nats stream rm`) does not share with the one before it.
fn epoch_of(info: &Info) -> Epoch {
    // Nanoseconds since 1970 fit in 64 bits until 2554.
    Epoch::from_u64(info.created.unix_timestamp_nanos() as u64)
}

/// The stream and sequence of a message JetStream republished (its `Nats-Stream` and
/// `Nats-Sequence` headers), if it is one. The client parses those names as its
/// standard ones: looked up by text, they would not be found.
pub(crate) fn stored_at(message: &async_nats::Message) -> Option<(String, u64)> {
    let headers = message.headers.as_ref()?;
    let stream = headers.get(NATS_STREAM)?.as_str().to_owned();
    let sequence = headers.get(NATS_SEQUENCE)?.as_str().parse().ok()?;
    Some((stream, sequence))
}

/// The configuration of `room`'s stream for `history`.
fn config_of(config: &NatsConfig, room: &str, history: History) -> Config {
    let stored = config.subject_stored(room);
    Config {
        name: names::stream_name(&config.prefix, room),
        subjects: vec![stored.clone()],
        max_messages: i64::try_from(history.max_len.max(1)).unwrap_or(i64::MAX),
        // Zero: no age limit.
        max_age: history.max_age.unwrap_or_default(),
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        num_replicas: 1,
        allow_direct: true,
        republish: Some(Republish {
            source: stored,
            destination: config.room_subject(room),
            headers_only: false,
        }),
        ..Config::default()
    }
}

/// The epochs of the streams a hub has seen, and the streams that took a message from
/// this link (with the limits asked for). Bounded: forgotten whole when full, and at each
/// reconnection.
#[derive(Debug, Default)]
pub(crate) struct Known {
    /// Per stream: its epoch and the newest sequence seen in it.
    epochs: Mutex<HashMap<String, (Epoch, u64)>>,
    /// Per stream: the history it was made sure of, once it took a message.
    ensured: Mutex<HashMap<String, History>>,
}

impl Known {
    pub(crate) fn clear(&self) {
        lock(&self.epochs).clear();
        lock(&self.ensured).clear();
    }

    pub(crate) fn forget(&self, stream: &str) {
        lock(&self.epochs).remove(stream);
    }

    /// The epoch of `stream` for its message at `sequence`: known, unless the sequence
    /// went back or starts again (the stream was made again), else asked of JetStream.
    pub(crate) async fn epoch(
        &self,
        jetstream: &Context,
        stream: &str,
        sequence: u64,
    ) -> Result<Epoch, String> {
        if let Some(epoch) = self.known(stream, sequence) {
            return Ok(epoch);
        }
        let found = jetstream.get_stream(stream).await;
        let epoch = epoch_of(found.map_err(|error| error.to_string())?.cached_info());
        self.note(stream, epoch, sequence);
        Ok(epoch)
    }

    fn known(&self, stream: &str, sequence: u64) -> Option<Epoch> {
        let mut epochs = lock(&self.epochs);
        let (epoch, newest) = epochs.get_mut(stream)?;
        if sequence == 1 || sequence < *newest {
            return None;
        }
        *newest = sequence;
        Some(*epoch)
    }

    fn note(&self, stream: &str, epoch: Epoch, sequence: u64) {
        let mut epochs = lock(&self.epochs);
        if epochs.len() >= DEFAULT_MAX_CHANNELS {
            epochs.clear();
        }
        epochs.insert(stream.to_owned(), (epoch, sequence));
    }

    fn is_ensured(&self, stream: &str, history: History) -> bool {
        lock(&self.ensured).get(stream) == Some(&history)
    }

    fn ensured(&self, stream: &str, history: History) {
        let mut ensured = lock(&self.ensured);
        if ensured.len() >= DEFAULT_MAX_CHANNELS {
            ensured.clear();
        }
        ensured.insert(stream.to_owned(), history);
    }

    fn unsure(&self, stream: &str) {
        lock(&self.ensured).remove(stream);
    }
}

/// Makes sure `room`'s stream exists with `history`'s limits (creates it, or updates
/// limits that differ), and returns it with its info now.
async fn ensure(
    jetstream: &Context,
    config: &NatsConfig,
    room: &str,
    history: History,
    known: &Known,
) -> Result<(Stream, Info), String> {
    let wanted = config_of(config, room, history);
    let name = wanted.name.clone();
    let stream = jetstream
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|error| error.to_string())?;
    let mut info = stream.cached_info().clone();
    if info.config.max_messages != wanted.max_messages || info.config.max_age != wanted.max_age {
        info = jetstream
            .update_stream(wanted)
            .await
            .map_err(|error| error.to_string())?;
    }
    known.note(&name, epoch_of(&info), info.state.last_sequence);
    Ok((stream, info))
}

/// A stream's message waiting for the publishing task, with where its position goes.
#[derive(Debug)]
pub(crate) struct StreamPublish {
    /// Where the stream stores it.
    pub(crate) subject: String,
    room: String,
    stream: String,
    stored: Bytes,
    history: History,
    reply: oneshot::Sender<Result<Position, StreamError>>,
}

impl StreamPublish {
    /// The publish of `envelope` (for a room) to its stream, and where its answer comes.
    pub(crate) fn new(
        config: &NatsConfig,
        envelope: &Envelope,
        history: History,
    ) -> Result<(Self, oneshot::Receiver<Result<Position, StreamError>>), StreamError> {
        let Target::Room(room) = &envelope.target else {
            return Err(StreamError::NoHistory);
        };
        // Only text and binary messages cross between hubs.
        let stored = wire::encode_stored(envelope).map_err(|_| StreamError::NotData)?;
        let (reply, answer) = oneshot::channel();
        let publish = Self {
            subject: config.subject_stored(room),
            stream: names::stream_name(&config.prefix, room),
            room: room.clone(),
            stored,
            history,
            reply,
        };
        Ok((publish, answer))
    }

    pub(crate) fn answer(self, result: Result<Position, StreamError>) {
        // Nobody waits for it any more: the position is not needed.
        let _ = self.reply.send(result);
    }
}

/// Sends a stream's message in the publishing task's order. Its acknowledgement is
/// awaited apart, so that the next publishes do not wait for it, once the stream took
/// a message from this link; the first publish to a stream on a link makes sure of
/// the stream and waits for its acknowledgement (see [`first_publish`]).
pub(crate) async fn publish(
    jetstream: &Context,
    config: &NatsConfig,
    state: &Arc<State>,
    publish: StreamPublish,
) {
    if !state.streams.is_ensured(&publish.stream, publish.history) {
        return first_publish(jetstream, config, state, publish).await;
    }
    let ack = match jetstream
        .publish(publish.subject.clone(), publish.stored.clone())
        .await
    {
        Ok(ack) => ack,
        Err(error) => return not_sent(state, publish, &error.to_string()),
    };
    let (jetstream, state) = (jetstream.clone(), state.clone());
    tokio::spawn(async move {
        let acked = ack.await;
        settle(&jetstream, &state, publish, acked).await;
    });
}

/// The first publish to a stream on this link: makes sure of the stream, then sends
/// the message and waits for its acknowledgement, while the publishes behind it wait.
/// A stream JetStream has just made may answer "no stream" (no responders) for a
/// moment: the message is sent again, within [`FIRST_PUBLISH_TIMEOUT`], before any
/// message behind it, so that the hub's order is kept.
async fn first_publish(
    jetstream: &Context,
    config: &NatsConfig,
    state: &Arc<State>,
    publish: StreamPublish,
) {
    let known = &state.streams;
    if let Err(error) = ensure(jetstream, config, &publish.room, publish.history, known).await {
        return not_sent(state, publish, &error);
    }
    let deadline = Instant::now() + FIRST_PUBLISH_TIMEOUT;
    loop {
        let acked = match jetstream
            .publish(publish.subject.clone(), publish.stored.clone())
            .await
        {
            Ok(ack) => ack.await,
            Err(error) => return not_sent(state, publish, &error.to_string()),
        };
        match acked {
            Err(error)
                if error.kind() == PublishErrorKind::StreamNotFound
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked => {
                if acked.is_ok() {
                    known.ensured(&publish.stream, publish.history);
                }
                return settle(jetstream, state, publish, acked).await;
            }
        }
    }
}

/// Counts and answers a publish that was not sent.
fn not_sent(state: &State, publish: StreamPublish, why: &str) {
    state.stats.lose(&publish.subject, why);
    publish.answer(Err(StreamError::Unavailable(why.to_owned())));
}

/// Counts and answers a publish by its acknowledgement.
async fn settle(
    jetstream: &Context,
    state: &State,
    publish: StreamPublish,
    acked: Result<PublishAck, PublishError>,
) {
    let stats = &state.stats;
    let answer = match acked {
        Ok(ack) => {
            stats.count(&stats.0.published);
            match state
                .streams
                .epoch(jetstream, &ack.stream, ack.sequence)
                .await
            {
                Ok(epoch) => Ok(Position::new(ack.sequence, epoch)),
                Err(error) => Err(StreamError::Unconfirmed(format!(
                    "stored at {}, but the stream's epoch is unknown: {error}",
                    ack.sequence
                ))),
            }
        }
        Err(error) if error.kind() == PublishErrorKind::StreamNotFound => {
            // Deleted since this link made sure of it: made again by the next publish.
            state.streams.unsure(&publish.stream);
            stats.lose(&publish.subject, &error.to_string());
            Err(StreamError::Unavailable(error.to_string()))
        }
        Err(error) => {
            stats.count(&stats.0.unconfirmed);
            Err(StreamError::Unconfirmed(error.to_string()))
        }
    };
    publish.answer(answer);
}

/// A read of a room's stream.
pub(crate) struct Read {
    pub(crate) jetstream: Context,
    pub(crate) config: NatsConfig,
    pub(crate) room: String,
    pub(crate) history: History,
    pub(crate) state: Arc<State>,
}

impl Read {
    /// The messages after `after`, within [`READ_TIMEOUT`].
    pub(crate) async fn run(self, after: u64) -> Result<StreamRead, StreamError> {
        match tokio::time::timeout(READ_TIMEOUT, self.read(after)).await {
            Ok(read) => read,
            Err(_) => Err(StreamError::Unavailable(format!(
                "JetStream did not answer within {READ_TIMEOUT:?}"
            ))),
        }
    }

    async fn read(&self, after: u64) -> Result<StreamRead, StreamError> {
        if !self.state.is_connected() {
            return Err(StreamError::Unavailable("no link to NATS".to_owned()));
        }
        let (jetstream, history) = (&self.jetstream, self.history);
        let (stream, info) = ensure(
            jetstream,
            &self.config,
            &self.room,
            history,
            &self.state.streams,
        )
        .await
        .map_err(StreamError::Unavailable)?;
        let epoch = epoch_of(&info);
        let (first, top) = (info.state.first_sequence, info.state.last_sequence);
        let max_len = u64::try_from(history.max_len.max(1)).unwrap_or(u64::MAX);
        let start = after
            .saturating_add(1)
            .max(first)
            .max(top.saturating_sub(max_len - 1));
        let got: Vec<_> = futures_util::stream::iter(start..=top)
            .map(|sequence| {
                let stream = &stream;
                async move { (sequence, stream.get_raw_message(sequence).await) }
            })
            .buffered(READ_CONCURRENCY)
            .collect()
            .await;
        let oldest = history
            .max_age
            .map(|age| now_nanos().saturating_sub(age.as_nanos()));
        let mut entries = Vec::with_capacity(got.len());
        for (offset, message) in got {
            let message = match message {
                Ok(message) => message,
                // Trimmed (by length or age) since the info: a hole the hub sees.
                Err(error)
                    if error.kind()
                        == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                {
                    continue;
                }
                Err(error) => return Err(StreamError::Unavailable(error.to_string())),
            };
            let stored_at = u128::try_from(message.time.unix_timestamp_nanos()).unwrap_or(0);
            if oldest.is_some_and(|oldest| stored_at < oldest) {
                continue;
            }
            match wire::decode_stored(message.payload, Position::new(offset, epoch)) {
                Ok(envelope) => entries.push(StreamEntry {
                    offset,
                    message: envelope.message,
                    except: envelope.except,
                }),
                Err(error) => {
                    self.state.stats.count(&self.state.stats.0.malformed);
                    tracing::warn!(offset, %error, "skipped a stream message that is not a message");
                }
            }
        }
        Ok(StreamRead {
            epoch,
            top,
            entries,
        })
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}
