//! The publishes a hub hands its link: numbered for the receivers, queued in a bounded
//! queue, shed (and counted) when it is full.

use crate::{
    DEFAULT_MAX_CHANNELS, Envelope, PUBLISHER_IDLE, Position, Sequencer, StreamError, StreamFuture,
    link::{Counter, Counters},
    sync::lock,
    wire,
};
use bytes::{Bytes, BytesMut};
use std::{sync::Mutex, time::Instant};
use tokio::sync::{
    mpsc::{self, Receiver, Sender, error::TrySendError},
    oneshot,
};

/// A stream's publish waiting in an [`Outbox`]: someone awaits its position.
pub trait AwaitsPosition: Send + 'static {
    /// The channel (subject) it is published on: for logs, and to route it.
    fn channel(&self) -> &str;

    /// Hands the publish's outcome to whoever awaits it (nobody may wait any more).
    fn answer(self, result: Result<Position, StreamError>);
}

/// What the link publishes, in the order the hub asked.
#[derive(Debug)]
pub enum Publish<S> {
    /// An envelope, stamped.
    Envelope {
        /// Where it goes (a Redis channel, a NATS subject).
        channel: String,
        /// The envelope in wire form.
        payload: Bytes,
    },
    /// A stream's message, whose answer is its position. Boxed: it is several times
    /// the size of an envelope's publish, which fill the queue.
    Stream(Box<S>),
}

impl<S: AwaitsPosition> Publish<S> {
    /// Where it goes.
    pub fn channel(&self) -> &str {
        match self {
            Self::Envelope { channel, .. } => channel,
            Self::Stream(publish) => publish.channel(),
        }
    }

    /// Drops the publish, telling whoever awaits a stream's position why.
    pub fn lose(self, why: &str) {
        if let Self::Stream(publish) = self {
            publish.answer(Err(StreamError::Unavailable(why.to_owned())));
        }
    }
}

/// The hub's way to its link: numbers each envelope on its channel (for the
/// receivers' gap count) and queues it, with a bounded number of publishes pending:
/// in the queue, and in the link until it calls [`Counters::dequeued`] for them.
/// Full, it sheds the new publish (drop newest: what waits keeps its order), counted
/// in [`Counter::Shed`] and [`Counter::Lost`]; a shed envelope's number is spent, so
/// receivers count it as missed.
#[derive(Debug)]
pub struct Outbox<S> {
    queue: Sender<Publish<S>>,
    /// The most publishes pending.
    max_pending: u64,
    /// Locked across the numbering and the queueing, so that numbers go out in order.
    sequencer: Mutex<Sequencer>,
    counters: Counters,
    /// Why a full queue sheds: "too many publishes waiting for Redis", say.
    full: String,
}

impl<S: AwaitsPosition> Outbox<S> {
    /// An outbox of at most `max_pending` publishes (0 is taken as 1: a channel of no
    /// capacity cannot be made) to `server` (its name, for logs), counting in
    /// `counters`; and the receiving end the link takes them from (call
    /// [`Counters::dequeued`] for each it takes).
    pub fn new(
        max_pending: usize,
        counters: Counters,
        server: &str,
    ) -> (Self, Receiver<Publish<S>>) {
        let max_pending = max_pending.max(1);
        let (queue, receiver) = mpsc::channel(max_pending);
        let outbox = Self {
            queue,
            max_pending: max_pending as u64,
            sequencer: Mutex::new(Sequencer::new(DEFAULT_MAX_CHANNELS, PUBLISHER_IDLE)),
            counters,
            full: format!("too many publishes waiting for {server}"),
        };
        (outbox, receiver)
    }

    /// Encodes, numbers and queues `envelope` for `channel`; one that cannot be
    /// encoded (not text or binary) is lost, counted.
    pub fn publish(&self, channel: String, envelope: &Envelope) {
        match wire::encode(envelope) {
            Ok(wire) => self.enqueue(channel, wire),
            Err(error) => {
                self.counters.count(Counter::Lost);
                tracing::warn!(%error, "envelope not published");
            }
        }
    }

    /// Queues a stream's publish that the engine made (`made`: the publish and where
    /// its answer comes, or why it could not be made, then lost and counted) behind
    /// the publishes already waiting: counted, shed and lost as they are. The future
    /// resolves to the answer, or to what `dropped` says when the link dropped the
    /// publish without one.
    pub fn publish_stream(
        &self,
        made: Result<(S, oneshot::Receiver<Result<Position, StreamError>>), StreamError>,
        dropped: impl FnOnce() -> StreamError + Send + 'static,
    ) -> StreamFuture<Position> {
        let answer = match made {
            Ok((publish, answer)) => {
                if let Err(refused) = self.queue(Publish::Stream(Box::new(publish))) {
                    self.refuse(refused);
                }
                answer
            }
            Err(error) => {
                self.counters.count(Counter::Lost);
                tracing::warn!(%error, "stream message not published");
                return Box::pin(std::future::ready(Err(error)));
            }
        };
        Box::pin(async move { answer.await.unwrap_or_else(|_| Err(dropped())) })
    }

    fn enqueue(&self, channel: String, mut wire: BytesMut) {
        let mut sequencer = lock(&self.sequencer);
        if let Err(error) = wire::stamp(&mut wire, sequencer.next(&channel, Instant::now())) {
            drop(sequencer);
            return self.counters.lose(&channel, &error.to_string());
        }
        let payload = wire.freeze();
        let refused = self.queue(Publish::Envelope { channel, payload });
        drop(sequencer);
        if let Err(refused) = refused {
            self.refuse(refused);
        }
    }

    /// Hands a publish to the link, or hands it back when as many as allowed are
    /// pending (queued, or held by the link) or the link has ended.
    fn queue(&self, publish: Publish<S>) -> Result<(), TrySendError<Publish<S>>> {
        // Counted before the send, so that the link never takes one uncounted.
        let refused = if self.counters.queued() >= self.max_pending {
            Err(TrySendError::Full(publish))
        } else {
            self.queue.try_send(publish)
        };
        refused.inspect_err(|_| self.counters.dequeued(1))
    }

    /// Counts and drops a publish the queue refused.
    fn refuse(&self, refused: TrySendError<Publish<S>>) {
        let (publish, why) = match refused {
            TrySendError::Full(publish) => {
                self.counters.count(Counter::Shed);
                (publish, self.full.as_str())
            }
            // The link ends only when its hub is gone.
            TrySendError::Closed(publish) => (publish, "the link task has ended"),
        };
        self.counters.lose(publish.channel(), why);
        publish.lose(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeId, Target};
    use switchboard_proto::Message;

    #[derive(Debug)]
    struct Awaited(oneshot::Sender<Result<Position, StreamError>>);

    impl AwaitsPosition for Awaited {
        fn channel(&self) -> &str {
            "room"
        }

        fn answer(self, result: Result<Position, StreamError>) {
            let _ = self.0.send(result);
        }
    }

    fn envelope(message: Message) -> Envelope {
        Envelope {
            origin: NodeId::from_bits(1),
            target: Target::Room("room".into()),
            except: None,
            message,
            position: None,
        }
    }

    #[tokio::test]
    async fn a_full_queue_sheds_the_newest_and_counts_it() {
        let counters = Counters::default();
        let (outbox, mut queue) = Outbox::<Awaited>::new(1, counters.clone(), "the server");
        outbox.publish("room".into(), &envelope(Message::text("kept")));
        outbox.publish("room".into(), &envelope(Message::text("shed")));
        let (reply, answer) = oneshot::channel();
        let shed = outbox.publish_stream(Ok((Awaited(reply), answer)), || unreachable!());
        assert_eq!(
            shed.await,
            Err(StreamError::Unavailable(
                "too many publishes waiting for the server".into()
            ))
        );
        let stats = counters.stats();
        assert_eq!(
            (stats.shed(), stats.lost(), stats.pending_publishes()),
            (2, 2, 1)
        );
        let Some(Publish::Envelope { payload, .. }) = queue.recv().await else {
            panic!("the first envelope is not queued");
        };
        let (kept, stamp) = wire::decode(payload).unwrap();
        assert_eq!(kept.message, Message::text("kept"));
        assert_eq!(stamp.map(|stamp| stamp.sequence), Some(1));
    }

    #[tokio::test]
    async fn what_cannot_be_published_is_lost_and_counted() {
        let counters = Counters::default();
        let (outbox, queue) = Outbox::<Awaited>::new(4, counters.clone(), "the server");
        outbox.publish("room".into(), &envelope(Message::Ping(Bytes::new())));
        let refused = outbox.publish_stream(Err(StreamError::NotData), || unreachable!());
        assert_eq!(refused.await, Err(StreamError::NotData));
        drop(queue);
        outbox.publish("room".into(), &envelope(Message::text("no link")));
        assert_eq!(
            (counters.get(Counter::Lost), counters.get(Counter::Shed)),
            (3, 0)
        );
    }

    #[tokio::test]
    async fn what_the_link_holds_unanswered_counts_toward_the_bound() {
        let counters = Counters::default();
        let (outbox, mut queue) = Outbox::<Awaited>::new(2, counters.clone(), "the server");
        outbox.publish("room".into(), &envelope(Message::text("sent")));
        outbox.publish("room".into(), &envelope(Message::text("queued")));
        // The link takes the first into a pipeline, not answered yet.
        let _sent = queue.recv().await.unwrap();
        outbox.publish("room".into(), &envelope(Message::text("shed")));
        assert_eq!(
            (
                counters.get(Counter::Shed),
                counters.stats().pending_publishes()
            ),
            (1, 2)
        );
        counters.dequeued(1);
        outbox.publish("room".into(), &envelope(Message::text("queued too")));
        assert_eq!(
            (
                counters.get(Counter::Shed),
                counters.stats().pending_publishes()
            ),
            (1, 2)
        );
    }
}
