//! Hubs of one process, wired to each other without a network, and the in-memory
//! stream engine they share.

// Every critical section here is one map or queue update, or one stream's update,
// which a panic (in this code, none of which calls out under a lock) cannot leave half
// done: `lock` may take a poisoned lock.
use crate::{
    Broker, ConnectionId, Envelope, Epoch, History, Inbox, NodeId, Position, StreamEntry,
    StreamError, StreamFuture, StreamRead, Target, sync::lock,
};
use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fmt,
    sync::{Arc, Mutex},
    time::Instant,
};
use switchboard_proto::Message;

/// The default of [`MemoryNetwork::max_streams`].
///
/// 10,000: more rooms with history than one process serves at once in practice; at
/// the default [`History`] of 100 messages, the bound on what the streams hold is a
/// million messages (each one refcounted bytes, shared with the hubs' queues).
pub const DEFAULT_MAX_STREAMS: usize = 10_000;

/// Hubs in one process, connected to each other: the default backplane of a single
/// hub, and the way tests wire several hubs together.
///
/// It is also the in-memory stream engine ([`Broker::publish_stream`],
/// [`Broker::read_stream`]) of those hubs: one store of streams for the whole
/// network, so that every hub on it sees one order and one offset sequence per
/// stream. The store is bounded: each stream by its [`History`] (length and age), the
/// number of streams by [`MemoryNetwork::max_streams`], past which the stream used
/// least recently is forgotten (it comes back, if published to or read again, with a
/// new [`Epoch`]: its history was lost). A read of a stream the network does not have
/// makes none (it answers an epoch that the stream's first publish keeps), and a
/// stream is trimmed by the [`History`] it is published with, whatever its readers'. Everything is lost with the process: a
/// restarted process has new epochs.
#[derive(Clone)]
pub struct MemoryNetwork {
    members: Arc<Mutex<HashMap<NodeId, Member>>>,
    streams: Arc<Mutex<Streams>>,
    outbox: Arc<Mutex<Outbox>>,
}

/// Stream envelopes numbered, waiting to be handed to the hubs, in offset order
/// (queued under the streams' lock, delivered outside it).
#[derive(Default)]
struct Outbox {
    queue: VecDeque<(Envelope, Vec<Inbox>)>,
    /// Whether a thread is delivering the queue: it delivers what others queue
    /// meanwhile, so that one order reaches every hub.
    delivering: bool,
}

struct Member {
    inbox: Inbox,
    rooms: HashSet<String>,
}

/// The streams of a network, and the order they were used in.
struct Streams {
    by_room: HashMap<String, Stream>,
    /// The epochs given to reads of streams never published to (or forgotten), so
    /// that the stream's first publish keeps the epoch its readers saw (a new epoch
    /// would look like a lost history). Bounded by `max` too, oldest first out: a
    /// stream whose epoch went that way starts in another one, which a hub takes as a
    /// new history (and fills from its start).
    unknown: HashMap<String, Epoch>,
    unknown_order: VecDeque<String>,
    /// Rooms by their last use (a publish or a read), least recent first: what is
    /// forgotten past `max`.
    by_use: BTreeMap<u64, String>,
    /// Counts uses, to order them.
    clock: u64,
    max: usize,
}

struct Stream {
    epoch: Epoch,
    /// The history of its last publish: what it is trimmed by (a reader's history
    /// trims nothing: hubs with other settings share the stream).
    history: History,
    /// The offset of its newest message (0: none yet).
    top: u64,
    /// Its kept messages, oldest first, consecutive offsets ending at `top`.
    kept: VecDeque<Kept>,
    /// Its key in `Streams::by_use`.
    used: u64,
}

struct Kept {
    offset: u64,
    at: Instant,
    message: Message,
    except: Option<ConnectionId>,
}

/// One hub's attachment to a [`MemoryNetwork`].
pub struct MemoryBroker {
    network: MemoryNetwork,
    node: Mutex<Option<NodeId>>,
}

impl Default for MemoryNetwork {
    fn default() -> Self {
        Self {
            members: Arc::default(),
            outbox: Arc::default(),
            streams: Arc::new(Mutex::new(Streams {
                by_room: HashMap::new(),
                unknown: HashMap::new(),
                unknown_order: VecDeque::new(),
                by_use: BTreeMap::new(),
                clock: 0,
                max: DEFAULT_MAX_STREAMS,
            })),
        }
    }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// A broker for one more hub on this network.
    pub fn broker(&self) -> MemoryBroker {
        MemoryBroker {
            network: self.clone(),
            node: Mutex::new(None),
        }
    }

    /// Sets how many streams the network keeps at most (0 is taken as 1); past it,
    /// the one used least recently (published to or read) is forgotten. Default
    /// [`DEFAULT_MAX_STREAMS`].
    pub fn max_streams(self, max: usize) -> Self {
        lock(&self.streams).max = max.max(1);
        self
    }

    /// Delivers the queued stream envelopes, in order, unless another thread is at
    /// it (it will deliver these too). Outside every lock but the queue's, briefly:
    /// a hub's delivery may publish to a stream again (a framing closure that
    /// sends), which queues behind.
    fn deliver_streams(&self) {
        {
            let mut outbox = lock(&self.outbox);
            if outbox.delivering {
                return;
            }
            outbox.delivering = true;
        }
        // A delivery that panics does not stop the network's streams for ever.
        let _done = Delivering(&self.outbox);
        loop {
            let Some((envelope, inboxes)) = lock(&self.outbox).queue.pop_front() else {
                return;
            };
            for inbox in inboxes {
                inbox.deliver(&envelope);
            }
        }
    }

    /// The inboxes of the hubs subscribed to `room`.
    fn subscribed(&self, room: &str) -> Vec<Inbox> {
        lock(&self.members)
            .values()
            .filter(|member| member.rooms.contains(room))
            .map(|member| member.inbox.clone())
            .collect()
    }
}

/// Ends a thread's turn at delivering the streams (see
/// [`MemoryNetwork::deliver_streams`]), even by a panic.
struct Delivering<'a>(&'a Mutex<Outbox>);

impl Drop for Delivering<'_> {
    fn drop(&mut self) {
        lock(self.0).delivering = false;
    }
}

impl Streams {
    /// The stream of `room`, made now if the network has none (in the epoch its
    /// readers were told, or a new one), and marked as the one used last: for a
    /// publish.
    fn touch(&mut self, room: &str, history: History) -> &mut Stream {
        self.clock += 1;
        let used = self.clock;
        if !self.by_room.contains_key(room) && self.by_room.len() >= self.max {
            self.forget_least_recent();
        }
        let epoch = match self.by_room.contains_key(room) {
            true => None,
            false => self.unknown.remove(room),
        };
        let stream = self
            .by_room
            .entry(room.to_owned())
            .or_insert_with(|| Stream {
                epoch: epoch.unwrap_or_else(Epoch::random),
                history,
                top: 0,
                kept: VecDeque::new(),
                used: 0,
            });
        stream.history = history;
        self.by_use.remove(&stream.used);
        stream.used = used;
        self.by_use.insert(used, room.to_owned());
        stream
    }

    /// The epoch to answer a read of `room`, which has no stream: the one given
    /// before, or a new one remembered for its first publish.
    fn unknown_epoch(&mut self, room: &str) -> Epoch {
        if let Some(epoch) = self.unknown.get(room) {
            return *epoch;
        }
        while self.unknown.len() >= self.max {
            match self.unknown_order.pop_front() {
                Some(oldest) => self.unknown.remove(&oldest),
                None => break,
            };
        }
        let epoch = Epoch::random();
        self.unknown.insert(room.to_owned(), epoch);
        self.unknown_order.push_back(room.to_owned());
        epoch
    }

    fn forget_least_recent(&mut self) {
        if let Some((_, room)) = self.by_use.pop_first() {
            self.by_room.remove(&room);
        }
    }
}

impl Stream {
    /// Drops the messages `history` no longer keeps: past its length, older than its
    /// age.
    fn trim(&mut self, now: Instant) {
        self.history.trim(&mut self.kept, now, |kept| kept.at);
    }
}

impl MemoryBroker {
    fn with_member(&self, f: impl FnOnce(&mut Member)) {
        let Some(node) = *lock(&self.node) else {
            return;
        };
        if let Some(member) = lock(&self.network.members).get_mut(&node) {
            f(member);
        }
    }
}

impl Broker for MemoryBroker {
    fn start(&self, inbox: Inbox) {
        *lock(&self.node) = Some(inbox.node());
        let member = Member {
            inbox: inbox.clone(),
            rooms: HashSet::new(),
        };
        lock(&self.network.members).insert(inbox.node(), member);
    }

    fn publish(&self, envelope: Envelope) {
        let origin = envelope.origin;
        // Delivered outside the lock: a hub may publish again while delivering.
        let inboxes: Vec<Inbox> = lock(&self.network.members)
            .iter()
            .filter(|(node, member)| {
                **node != origin
                    && match &envelope.target {
                        Target::All | Target::Nodes => true,
                        Target::Room(room) => member.rooms.contains(room),
                        Target::Connection(id) => id.node() == **node,
                        Target::Node(id) => id == *node,
                    }
            })
            .map(|(_, member)| member.inbox.clone())
            .collect();
        for inbox in inboxes {
            inbox.deliver(&envelope);
        }
    }

    fn subscribe(&self, room: &str) {
        self.with_member(|m| {
            m.rooms.insert(room.to_owned());
        });
    }

    fn unsubscribe(&self, room: &str) {
        self.with_member(|m| {
            m.rooms.remove(room);
        });
    }

    /// Numbers, keeps and queues for delivery in one step under the network's stream
    /// lock, then delivers outside it, in the order queued: every hub gets a
    /// stream's messages in offset order, however many hubs publish at once, and a
    /// hub's delivery may publish again (it queues behind).
    fn publish_stream(&self, mut envelope: Envelope, history: History) -> StreamFuture<Position> {
        let Target::Room(room) = &envelope.target else {
            return Box::pin(std::future::ready(Err(StreamError::NoHistory)));
        };
        if !envelope.message.is_data() {
            return Box::pin(std::future::ready(Err(StreamError::NotData)));
        }
        let mut streams = lock(&self.network.streams);
        let stream = streams.touch(room, history);
        stream.top += 1;
        let position = Position::new(stream.top, stream.epoch);
        let now = Instant::now();
        stream.kept.push_back(Kept {
            offset: position.offset,
            at: now,
            message: envelope.message.clone(),
            except: envelope.except,
        });
        stream.trim(now);
        envelope.position = Some(position);
        let inboxes = self.network.subscribed(room);
        lock(&self.network.outbox)
            .queue
            .push_back((envelope, inboxes));
        drop(streams);
        self.network.deliver_streams();
        Box::pin(std::future::ready(Ok(position)))
    }

    /// Reads when polled, not when called: a hub may ask from anywhere, even while
    /// the network delivers to it.
    ///
    /// A read makes no stream (names read but never published to take no place
    /// among the `max_streams`; see `Streams::unknown`) and trims by the history the
    /// stream was published with, not `history`.
    fn read_stream(&self, room: &str, after: u64, history: History) -> StreamFuture<StreamRead> {
        let _ = history;
        let streams = self.network.streams.clone();
        let room = room.to_owned();
        Box::pin(async move {
            let mut streams = lock(&streams);
            streams.clock += 1;
            let used = streams.clock;
            let Some(stream) = streams.by_room.get_mut(&room) else {
                let epoch = streams.unknown_epoch(&room);
                let entries = Vec::new();
                return Ok(StreamRead {
                    epoch,
                    top: 0,
                    entries,
                });
            };
            let before = std::mem::replace(&mut stream.used, used);
            stream.trim(Instant::now());
            let entries = stream
                .kept
                .iter()
                .filter(|kept| kept.offset > after)
                .map(|kept| StreamEntry {
                    offset: kept.offset,
                    message: kept.message.clone(),
                    except: kept.except,
                })
                .collect();
            let read = StreamRead {
                epoch: stream.epoch,
                top: stream.top,
                entries,
            };
            streams.by_use.remove(&before);
            streams.by_use.insert(used, room);
            Ok(read)
        })
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        if let Some(node) = *lock(&self.node) {
            lock(&self.network.members).remove(&node);
        }
    }
}

impl fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryNetwork")
            .field("hubs", &lock(&self.members).len())
            .field("streams", &lock(&self.streams).by_room.len())
            .finish()
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("node", &*lock(&self.node))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        task::{Context, Poll, Waker},
        thread,
        time::Duration,
    };

    /// A hub stand-in on `network`: its broker and what its inbox received.
    fn hub(network: &MemoryNetwork) -> (MemoryBroker, NodeId, Arc<Mutex<Vec<String>>>) {
        let broker = network.broker();
        let node = NodeId::random();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        broker.start(Inbox::new(node, move |envelope| {
            if let Message::Text(text) = &envelope.message {
                lock(&log).push(text.as_str().to_owned());
            }
            true
        }));
        (broker, node, received)
    }

    fn envelope(origin: NodeId, target: Target, text: &str) -> Envelope {
        Envelope {
            origin,
            target,
            except: None,
            message: Message::text(text.to_owned()),
            position: None,
        }
    }

    #[test]
    fn envelopes_reach_the_other_hubs_they_are_for() {
        let network = MemoryNetwork::new();
        let (a, a_node, a_got) = hub(&network);
        let (b, b_node, b_got) = hub(&network);
        let (_c, _, c_got) = hub(&network);
        b.subscribe("red");
        a.subscribe("red");
        a.publish(envelope(a_node, Target::All, "all"));
        a.publish(envelope(a_node, Target::Room("red".into()), "red"));
        let b_conn = ConnectionId::new(b_node, 1);
        a.publish(envelope(a_node, Target::Connection(b_conn), "to b"));
        a.publish(envelope(a_node, Target::Node(b_node), "to b itself"));
        a.publish(envelope(a_node, Target::Nodes, "nodes"));
        b.unsubscribe("red");
        a.publish(envelope(a_node, Target::Room("red".into()), "red again"));
        b.publish(envelope(b_node, Target::Room("red".into()), "red from b"));
        assert_eq!(*lock(&a_got), ["red from b"], "a hub never hears itself");
        assert_eq!(
            *lock(&b_got),
            ["all", "red", "to b", "to b itself", "nodes"]
        );
        assert_eq!(*lock(&c_got), ["all", "nodes"]);
        drop(b);
        assert_eq!(
            format!("{network:?}"),
            "MemoryNetwork { hubs: 2, streams: 0 }"
        );
    }

    /// The answer of a memory engine's future, which never waits.
    fn now<T>(mut future: StreamFuture<T>) -> Result<T, StreamError> {
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("the memory engine waited"),
        }
    }

    /// A hub stand-in that records the positions and texts it receives.
    fn stream_hub(network: &MemoryNetwork) -> (MemoryBroker, Log) {
        let broker = network.broker();
        let log = Log::default();
        let received = log.clone();
        broker.start(Inbox::new(NodeId::random(), move |envelope| {
            if let (Some(position), Message::Text(text)) = (envelope.position, &envelope.message) {
                lock(&received).push((position.offset, text.as_str().to_owned()));
            }
            true
        }));
        (broker, log)
    }

    type Log = Arc<Mutex<Vec<(u64, String)>>>;

    fn publish(broker: &MemoryBroker, room: &str, text: &str, history: History) -> Position {
        let envelope = envelope(NodeId::random(), Target::Room(room.into()), text);
        now(broker.publish_stream(envelope, history)).unwrap()
    }

    fn offsets(read: &StreamRead) -> Vec<u64> {
        read.entries.iter().map(|entry| entry.offset).collect()
    }

    #[test]
    fn a_stream_numbers_keeps_and_delivers_to_every_subscribed_hub_the_publisher_included() {
        let network = MemoryNetwork::new();
        let (a, a_got) = stream_hub(&network);
        let (b, b_got) = stream_hub(&network);
        let (_c, c_got) = stream_hub(&network);
        a.subscribe("news");
        b.subscribe("news");
        let history = History::default();
        let first = publish(&a, "news", "one", history);
        let second = publish(&b, "news", "two", history);
        assert_eq!((first.offset, second.offset), (1, 2));
        assert_eq!(first.epoch, second.epoch);
        let expected = [(1, "one".to_owned()), (2, "two".to_owned())];
        assert_eq!(*lock(&a_got), expected, "the publisher hears its own");
        assert_eq!(*lock(&b_got), expected);
        assert!(lock(&c_got).is_empty(), "not subscribed");
        let read = now(a.read_stream("news", 1, history)).unwrap();
        assert_eq!(
            (read.epoch, read.top, offsets(&read)),
            (first.epoch, 2, vec![2])
        );
        assert_eq!(read.entries[0].message, Message::text("two"));
        assert!(read.covers(first));
        let fresh = now(a.read_stream("other", 0, history)).unwrap();
        assert_ne!(fresh.epoch, first.epoch, "each stream draws its epoch");
        assert_eq!((fresh.top, fresh.entries.len()), (0, 0));
    }

    #[test]
    fn a_stream_keeps_its_last_max_len_messages() {
        let network = MemoryNetwork::new();
        let (a, _) = stream_hub(&network);
        let history = History::default().max_len(3);
        let positions: Vec<Position> = (0..10)
            .map(|i| publish(&a, "r", &i.to_string(), history))
            .collect();
        let read = now(a.read_stream("r", 0, history)).unwrap();
        assert_eq!((read.top, offsets(&read)), (10, vec![8, 9, 10]));
        assert!(!read.covers(positions[5]), "6 and 7 were trimmed");
        assert!(read.covers(positions[6]));
        let one = History::default().max_len(0);
        publish(&a, "r", "11", one);
        assert_eq!(offsets(&now(a.read_stream("r", 0, one)).unwrap()), [11]);
    }

    #[test]
    fn a_stream_drops_messages_older_than_max_age() {
        let network = MemoryNetwork::new();
        let (a, _) = stream_hub(&network);
        let history = History::default().max_age(Duration::from_millis(50));
        publish(&a, "r", "old", history);
        thread::sleep(Duration::from_millis(80));
        publish(&a, "r", "new", history);
        let read = now(a.read_stream("r", 0, history)).unwrap();
        assert_eq!((read.top, offsets(&read)), (2, vec![2]));
        thread::sleep(Duration::from_millis(80));
        let read = now(a.read_stream("r", 0, history)).unwrap();
        assert_eq!(
            (read.top, offsets(&read)),
            (2, vec![]),
            "aged out on read too"
        );
        let kept = History::default().no_max_age();
        assert_eq!(
            offsets(&now(a.read_stream("r", 0, kept)).unwrap()),
            Vec::<u64>::new(),
            "what was dropped is gone"
        );
    }

    #[test]
    fn past_max_streams_the_least_recently_used_is_forgotten_and_returns_with_a_new_epoch() {
        let network = MemoryNetwork::new().max_streams(2);
        let (a, _) = stream_hub(&network);
        let history = History::default();
        let first = publish(&a, "one", "1", history);
        let second = publish(&a, "two", "2", history);
        // "one" is used again: "two" is now the least recent.
        assert_eq!(
            now(a.read_stream("one", 0, history)).unwrap().epoch,
            first.epoch
        );
        publish(&a, "three", "3", history);
        assert_eq!(
            format!("{network:?}"),
            "MemoryNetwork { hubs: 1, streams: 2 }"
        );
        assert_eq!(
            now(a.read_stream("one", 0, history)).unwrap().top,
            1,
            "kept"
        );
        let two = now(a.read_stream("two", 0, history)).unwrap();
        assert_eq!((two.top, two.entries.len()), (0, 0), "forgotten");
        assert_ne!(
            two.epoch, second.epoch,
            "a forgotten stream has a new epoch"
        );
        // Publishing "two" again forgets "three", the least recent now; its first
        // message is in the epoch its reader saw.
        let again = publish(&a, "two", "4", history);
        assert_eq!(again, Position::new(1, two.epoch));
        let three = now(a.read_stream("three", 0, history)).unwrap();
        assert_eq!(three.top, 0, "forgotten");
        assert_eq!(now(a.read_stream("one", 0, history)).unwrap().top, 1);
    }

    #[test]
    fn reads_make_no_stream_and_trim_nothing_of_others() {
        let network = MemoryNetwork::new().max_streams(2);
        let (a, _) = stream_hub(&network);
        let history = History::default().max_len(5);
        let first = publish(&a, "real", "1", history);
        for i in 2..=5 {
            publish(&a, "real", &i.to_string(), history);
        }
        // Clients joining names nobody publishes to take no place.
        let fresh: Vec<Epoch> = (0..10)
            .map(|i| {
                now(a.read_stream(&format!("fresh{i}"), 0, history))
                    .unwrap()
                    .epoch
            })
            .collect();
        let small = History::default().max_len(1);
        let read = now(a.read_stream("real", 0, small)).unwrap();
        assert_eq!(read.epoch, first.epoch, "kept");
        assert_eq!(read.entries.len(), 5, "a reader's history trims nothing");
        // A name read twice answers one epoch, which its first publish keeps.
        let again = now(a.read_stream("fresh9", 0, history)).unwrap();
        assert_eq!(again.epoch, fresh[9]);
        assert_eq!(publish(&a, "fresh9", "x", history).epoch, fresh[9]);
    }

    #[test]
    fn a_stream_is_a_room_of_data_messages() {
        let network = MemoryNetwork::new();
        let (a, _) = stream_hub(&network);
        let history = History::default();
        let to_all = envelope(NodeId::random(), Target::All, "x");
        assert_eq!(
            now(a.publish_stream(to_all, history)),
            Err(StreamError::NoHistory)
        );
        let mut ping = envelope(NodeId::random(), Target::Room("r".into()), "x");
        ping.message = Message::Ping(Default::default());
        assert_eq!(
            now(a.publish_stream(ping, history)),
            Err(StreamError::NotData)
        );
    }
}
