//! Streams with history on JetStream: one stream per room, its sequence the room's
//! offsets, republished onto the room's subject as it stores (see the crate's docs).

use crate::{NatsConfig, link::State, names};
use async_nats::{
    header::{NATS_SEQUENCE, NATS_STREAM},
    jetstream::{
        Context, ErrorCode,
        context::{GetStreamError, GetStreamErrorKind, PublishError, PublishErrorKind},
        publish::PublishAck,
        stream::{Config, DiscardPolicy, Info, Republish, StorageType},
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
    Target,
    link::{AwaitsPosition, Counter},
    lock, wire,
};
use tokio::sync::{
    mpsc::{self, Receiver, Sender, error::TrySendError},
    oneshot,
};

/// How long a read may take, its stream's info and its messages together.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the first publish to a stream on a link tries while JetStream says the
/// stream it has just made is not there yet.
const FIRST_PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a stream whose making failed is not asked for again: its publishes are
/// refused meanwhile, rather than each wait for JetStream to fail again.
const ENSURE_BACKOFF: Duration = Duration::from_secs(1);

/// The most publishes waiting for one stream, behind the one being sent.
const MAX_PENDING_PER_STREAM: usize = 64;

/// How long a stream's publishing task waits for a publish before it ends.
const WORKER_IDLE: Duration = Duration::from_secs(10);

/// Messages a read asks for at once.
const READ_CONCURRENCY: usize = 16;

/// How a stream's description holds its epoch.
const EPOCH_DESCRIPTION: &str = "switchboard epoch ";

/// A stream's epoch: the one its maker wrote in its description, or else (a stream
/// made otherwise) from its creation time. A stream made again (NATS restarted without
/// storage, `nats stream rm`) has a new one.
fn epoch_of(info: &Info) -> Epoch {
    let written = info.config.description.as_deref().and_then(|description| {
        let hex = description.strip_prefix(EPOCH_DESCRIPTION)?;
        hex.parse().ok()
    });
    // Nanoseconds since 1970 fit in 64 bits until 2554.
    written.unwrap_or_else(|| Epoch::from_u64(info.created.unix_timestamp_nanos() as u64))
}

/// Whether JetStream answered that the stream is not there.
fn absent(error: &GetStreamError) -> bool {
    matches!(error.kind(), GetStreamErrorKind::JetStream(error)
        if error.error_code() == ErrorCode::STREAM_NOT_FOUND)
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

/// The configuration of `room`'s stream for `history`, made in `epoch`.
fn config_of(config: &NatsConfig, room: &str, history: History, epoch: Epoch) -> Config {
    let stored = config.subject_stored(room);
    Config {
        name: names::stream_name(&config.prefix, room),
        description: Some(format!("{EPOCH_DESCRIPTION}{epoch}")),
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
    /// Per stream: its epoch and the newest sequence the subscriptions' readers got
    /// of it.
    epochs: Mutex<HashMap<String, (Epoch, u64)>>,
    /// Per stream: the history it was made sure of, once it took a message, and its
    /// epoch then.
    ensured: Mutex<HashMap<String, (History, Epoch)>>,
    /// Per stream whose making failed: until when its publishes are refused.
    failed: Mutex<HashMap<String, Instant>>,
    /// Per stream a read found absent: the epoch it answered, which the stream gets
    /// if this hub makes it (another hub makes it in an epoch of its own).
    absent: Mutex<HashMap<String, Epoch>>,
}

impl Known {
    pub(crate) fn clear(&self) {
        lock(&self.epochs).clear();
        lock(&self.ensured).clear();
        lock(&self.failed).clear();
    }

    pub(crate) fn forget(&self, stream: &str) {
        lock(&self.epochs).remove(stream);
    }

    /// The epoch of `stream` for its message at `sequence`, which a subscription's
    /// reader got: known when it follows the last one read, else (the first, a jump,
    /// a sequence back or at 1 again: the stream may have been made again) asked of
    /// JetStream.
    pub(crate) async fn epoch(
        &self,
        jetstream: &Context,
        stream: &str,
        sequence: u64,
    ) -> Result<Epoch, String> {
        if let Some(epoch) = self.known(stream, sequence) {
            return Ok(epoch);
        }
        let epoch = current_epoch(jetstream, stream).await?;
        self.note(stream, epoch, sequence);
        Ok(epoch)
    }

    fn known(&self, stream: &str, sequence: u64) -> Option<Epoch> {
        let mut epochs = lock(&self.epochs);
        let (epoch, newest) = epochs.get_mut(stream)?;
        if sequence == 1 || sequence != newest.saturating_add(1) {
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
        lock(&self.ensured)
            .get(stream)
            .is_some_and(|(ensured, _)| *ensured == history)
    }

    fn ensured(&self, stream: &str, history: History, epoch: Epoch) {
        let mut ensured = lock(&self.ensured);
        if ensured.len() >= DEFAULT_MAX_CHANNELS {
            ensured.clear();
        }
        ensured.insert(stream.to_owned(), (history, epoch));
    }

    /// The epoch of `stream` for a publish JetStream acknowledged at `sequence`: the
    /// one this link made sure of, else (not made sure of, or at 1: it may have been
    /// made again since) asked of JetStream.
    async fn acked_epoch(
        &self,
        jetstream: &Context,
        stream: &str,
        sequence: u64,
    ) -> Result<Epoch, String> {
        let ensured = lock(&self.ensured).get(stream).map(|(_, epoch)| *epoch);
        match ensured {
            Some(epoch) if sequence != 1 => Ok(epoch),
            _ => current_epoch(jetstream, stream).await,
        }
    }

    fn unsure(&self, stream: &str) {
        lock(&self.ensured).remove(stream);
    }

    /// The epoch to answer a read of `stream`, which JetStream does not have.
    fn absent_epoch(&self, stream: &str) -> Epoch {
        let mut absent = lock(&self.absent);
        if let Some(epoch) = absent.get(stream) {
            return *epoch;
        }
        if absent.len() >= DEFAULT_MAX_CHANNELS {
            absent.clear();
        }
        *absent
            .entry(stream.to_owned())
            .or_insert_with(Epoch::random)
    }

    /// The epoch to make `stream` in: the one a read answered, or a new one.
    fn new_epoch(&self, stream: &str) -> Epoch {
        lock(&self.absent)
            .remove(stream)
            .unwrap_or_else(Epoch::random)
    }

    /// Whether making `stream` failed less than [`ENSURE_BACKOFF`] ago.
    fn failing(&self, stream: &str) -> bool {
        let mut failed = lock(&self.failed);
        match failed.get(stream) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                failed.remove(stream);
                false
            }
            None => false,
        }
    }

    fn failed(&self, stream: &str) {
        let mut failed = lock(&self.failed);
        if failed.len() >= DEFAULT_MAX_CHANNELS {
            failed.clear();
        }
        failed.insert(stream.to_owned(), Instant::now() + ENSURE_BACKOFF);
    }
}

/// The epoch of `stream` as JetStream has it now.
async fn current_epoch(jetstream: &Context, stream: &str) -> Result<Epoch, String> {
    let found = jetstream.get_stream(stream).await;
    Ok(epoch_of(
        found.map_err(|error| error.to_string())?.cached_info(),
    ))
}

/// Makes sure `room`'s stream exists with `history`'s limits (creates it, or updates
/// limits that differ), and returns its epoch.
async fn ensure(
    jetstream: &Context,
    config: &NatsConfig,
    room: &str,
    history: History,
    known: &Known,
) -> Result<Epoch, String> {
    let name = names::stream_name(&config.prefix, room);
    let stream = match jetstream.get_stream(&name).await {
        Ok(stream) => stream,
        Err(error) if absent(&error) => {
            let made = config_of(config, room, history, known.new_epoch(&name));
            match jetstream.create_stream(made).await {
                Ok(stream) => stream,
                // Another hub made it meanwhile, in its epoch: that one is the stream.
                Err(error) => jetstream
                    .get_stream(&name)
                    .await
                    .map_err(|_| error.to_string())?,
            }
        }
        Err(error) => return Err(error.to_string()),
    };
    let mut info = stream.cached_info().clone();
    let mut wanted = config_of(config, room, history, epoch_of(&info));
    // Its description as it is: a stream made otherwise keeps its epoch.
    wanted.description = info.config.description.clone();
    if info.config.max_messages != wanted.max_messages || info.config.max_age != wanted.max_age {
        info = jetstream
            .update_stream(wanted)
            .await
            .map_err(|error| error.to_string())?;
    }
    Ok(epoch_of(&info))
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
}

impl AwaitsPosition for StreamPublish {
    fn channel(&self) -> &str {
        &self.subject
    }

    fn answer(self, result: Result<Position, StreamError>) {
        // Nobody waits for it any more: the position is not needed.
        let _ = self.reply.send(result);
    }
}

/// The publishing tasks of the streams, one per stream taking messages: a stream's
/// publishes go in the hub's order, and a slow stream (JetStream making it, or slow
/// to acknowledge) holds up neither the other streams nor the core envelopes.
pub(crate) struct Workers {
    jetstream: Context,
    config: NatsConfig,
    state: Arc<State>,
    /// Per stream: its task's queue, bounded by [`MAX_PENDING_PER_STREAM`]; the map by
    /// `DEFAULT_MAX_CHANNELS` streams.
    queues: HashMap<String, Sender<StreamPublish>>,
}

impl Workers {
    pub(crate) fn new(jetstream: Context, config: NatsConfig, state: Arc<State>) -> Self {
        Self {
            jetstream,
            config,
            state,
            queues: HashMap::new(),
        }
    }

    /// Queues `publish` for its stream's task, started if it has none; a full queue
    /// sheds it, counted.
    pub(crate) fn send(&mut self, publish: StreamPublish) {
        let refused = match self.queue(&publish.stream) {
            Some(queue) => queue.try_send(publish),
            None => Err(TrySendError::Full(publish)),
        };
        let (publish, why) = match refused {
            Ok(()) => return,
            Err(TrySendError::Full(publish)) => {
                (publish, "too many publishes waiting for the stream")
            }
            // Its task ended meanwhile, idle.
            Err(TrySendError::Closed(publish)) => (publish, "the stream's task ended"),
        };
        self.state.stats.count(Counter::Shed);
        not_sent(&self.state, publish, why);
    }

    /// The queue of `stream`'s task, started now if it has none running; `None` when
    /// [`DEFAULT_MAX_CHANNELS`] streams are taking messages.
    fn queue(&mut self, stream: &str) -> Option<&Sender<StreamPublish>> {
        if self.queues.get(stream).is_some_and(Sender::is_closed) {
            self.queues.remove(stream);
        }
        if !self.queues.contains_key(stream) {
            if self.queues.len() >= DEFAULT_MAX_CHANNELS {
                self.queues.retain(|_, queue| !queue.is_closed());
            }
            if self.queues.len() >= DEFAULT_MAX_CHANNELS {
                return None;
            }
            let (queue, publishes) = mpsc::channel(MAX_PENDING_PER_STREAM);
            let work = work(
                self.jetstream.clone(),
                self.config.clone(),
                self.state.clone(),
                publishes,
            );
            tokio::spawn(work);
            self.queues.insert(stream.to_owned(), queue);
        }
        self.queues.get(stream)
    }
}

/// Publishes one stream's messages in order, until none came for [`WORKER_IDLE`]
/// or the link's publishing task is gone.
async fn work(
    jetstream: Context,
    config: NatsConfig,
    state: Arc<State>,
    mut publishes: Receiver<StreamPublish>,
) {
    loop {
        match tokio::time::timeout(WORKER_IDLE, publishes.recv()).await {
            Ok(Some(publish)) => self::publish(&jetstream, &config, &state, publish).await,
            Ok(None) => return,
            Err(_) => {
                // Queued as the wait ended: refused rather than sent out of order
                // beside the task that takes the stream next.
                publishes.close();
                while let Ok(publish) = publishes.try_recv() {
                    not_sent(&state, publish, "the stream's task ended");
                }
                return;
            }
        }
    }
}

/// Sends a stream's message in its stream's order. Its acknowledgement is awaited
/// apart, so that the next publishes do not wait for it, once the stream took a
/// message from this link; the first publish to a stream on a link makes sure of the
/// stream and waits for its acknowledgement (see [`first_publish`]).
async fn publish(
    jetstream: &Context,
    config: &NatsConfig,
    state: &Arc<State>,
    publish: StreamPublish,
) {
    let max_payload = jetstream.client().server_info().max_payload;
    if max_payload > 0 && publish.stored.len() > max_payload {
        // NATS would close the connection on it (the client checks only core publishes).
        let why = format!(
            "a stream message of {} bytes, NATS takes {max_payload}",
            publish.stored.len()
        );
        return not_sent(state, publish, &why);
    }
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
    if known.failing(&publish.stream) {
        return not_sent(
            state,
            publish,
            "JetStream failed to make the stream just before",
        );
    }
    let epoch = match ensure(jetstream, config, &publish.room, publish.history, known).await {
        Ok(epoch) => epoch,
        Err(error) => {
            known.failed(&publish.stream);
            return not_sent(state, publish, &error);
        }
    };
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
                    known.ensured(&publish.stream, publish.history, epoch);
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
            stats.count(Counter::Published);
            match state
                .streams
                .acked_epoch(jetstream, &ack.stream, ack.sequence)
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
        Err(error) if refused(&error) => {
            // JetStream answered no (limits, a message too large): not stored.
            stats.lose(&publish.subject, &error.to_string());
            Err(StreamError::Unavailable(error.to_string()))
        }
        Err(error) => {
            stats.count(Counter::Unconfirmed);
            Err(StreamError::Unconfirmed(error.to_string()))
        }
    };
    publish.answer(answer);
}

/// Whether JetStream answered the publish with an error of its API: it did not
/// store the message.
fn refused(error: &PublishError) -> bool {
    std::error::Error::source(error)
        .is_some_and(|source| source.is::<async_nats::jetstream::Error>())
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
        if !self.state.is_connected(&self.jetstream.client()) {
            return Err(StreamError::Unavailable("no link to NATS".to_owned()));
        }
        let history = self.history;
        let name = names::stream_name(&self.config.prefix, &self.room);
        // A read makes no stream: rooms only read would fill JetStream.
        let stream = match self.jetstream.get_stream(&name).await {
            Ok(stream) => stream,
            Err(error) if absent(&error) => {
                let epoch = self.state.streams.absent_epoch(&name);
                let entries = Vec::new();
                return Ok(StreamRead {
                    epoch,
                    top: 0,
                    entries,
                });
            }
            Err(error) => return Err(StreamError::Unavailable(error.to_string())),
        };
        let info = stream.cached_info();
        let epoch = epoch_of(info);
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
                    self.state.stats.count(Counter::Malformed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_broker::NodeId;
    use switchboard_proto::Message;

    fn publish_to(
        room: &str,
    ) -> (
        StreamPublish,
        oneshot::Receiver<Result<Position, StreamError>>,
    ) {
        let envelope = Envelope {
            origin: NodeId::from_bits(1),
            target: Target::Room(room.into()),
            except: None,
            message: Message::text("m"),
            position: None,
        };
        StreamPublish::new(&NatsConfig::default(), &envelope, History::default()).unwrap()
    }

    #[tokio::test]
    async fn a_streams_queue_sheds_past_its_bound() {
        // A client that never connects (nothing listens on port 1): no stream's task
        // gets anywhere, and on this one-threaded runtime none runs before the end.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .unwrap();
        let state = Arc::new(State::default());
        let jetstream = crate::link::jetstream(&client);
        let mut workers = Workers::new(jetstream, NatsConfig::default(), state.clone());
        let mut answers = Vec::new();
        for _ in 0..MAX_PENDING_PER_STREAM + 3 {
            let (publish, answer) = publish_to("r");
            workers.send(publish);
            answers.push(answer);
        }
        assert_eq!(state.stats.get(Counter::Shed), 3);
        assert_eq!(state.stats.get(Counter::Lost), 3);
        for mut answer in answers.drain(MAX_PENDING_PER_STREAM..) {
            assert_eq!(
                answer.try_recv(),
                Ok(Err(StreamError::Unavailable(
                    "too many publishes waiting for the stream".into()
                )))
            );
        }
        // Another stream has a queue of its own.
        workers.send(publish_to("other").0);
        assert_eq!(state.stats.get(Counter::Shed), 3);
    }

    #[test]
    fn the_known_streams_stay_bounded() {
        let known = Known::default();
        let (history, epoch) = (History::default(), Epoch::from_u64(1));
        for stream in (0..=DEFAULT_MAX_CHANNELS).map(|n| n.to_string()) {
            known.note(&stream, epoch, 1);
            known.ensured(&stream, history, epoch);
            known.failed(&stream);
            known.absent_epoch(&stream);
        }
        let lens = [
            lock(&known.epochs).len(),
            lock(&known.ensured).len(),
            lock(&known.failed).len(),
            lock(&known.absent).len(),
        ];
        assert!(
            lens.iter().all(|len| *len <= DEFAULT_MAX_CHANNELS),
            "{lens:?}"
        );
    }
}
