//! Streams on the hub: rooms that keep history, whose messages the engine numbers
//! (see `switchboard_broker`'s `stream` module), delivered to this hub's members in
//! offset order, and recovered for connections that come back with a position.
//!
//! # One state per stream room with members here
//!
//! The engine delivers every message of a stream to every subscribed hub, the
//! publisher's included, with its [`Position`]. Each hub keeps, per stream room with
//! local members (or connections joining it), the epoch, the last offset it delivered
//! and a tail of its recent messages (bounded by the room's [`History`]), and hands
//! messages to its members only in offset order:
//!
//! - an offset at or below the last is a duplicate: dropped;
//! - the next offset is delivered (framed once, kept in the tail, fanned out);
//! - a jump (a message lost between the engine and this hub: a link blip, a slow
//!   subscription) holds the newer messages, reads the gap from the engine
//!   ([`Broker::read_stream`](super::Broker::read_stream)), delivers it, then them;
//! - another epoch means the history was lost: the state starts over, and members go
//!   on live.
//!
//! When the broker's link comes back (`is_ready` false → true, watched on the
//! heartbeat tick), every stream reads what it missed, so that members get it before
//! newer messages even if no newer message comes.
//!
//! # Joining from a position
//!
//! A connection joins a stream room under the stream's lock: every message up to the
//! last delivered one reached the members before it joined, every later one reaches it
//! too, so the join point is exact. What it missed (after its position, up to the join
//! point) comes from the tail; when the tail does not reach back far enough, from one
//! engine read that every joiner of the stream on this hub shares: reads go one at a
//! time per stream, each from the lowest offset asked meanwhile, and what they return
//! stays in the tail for the joiners that follow.

use super::{
    Connection, ConnectionId, Envelope, Hub, JoinError, Target,
    broadcast::{deliver_local, fan_out},
};
use crate::sync::{lock, read, write};
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
    sync::{
        Arc, Mutex, OnceLock, RwLock, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Instant,
};
use switchboard_broker::{Epoch, History, Position, StreamError, StreamRead};
use switchboard_proto::Message;
use tokio::sync::Notify;

/// The most messages a stream holds past a gap while it is read, whatever its
/// [`History::max_len`]: 1,000 is more than a busy stream publishes during a read's
/// round trip; past it, the gap is given up (counted lost) rather than the memory
/// spent. (In time, a read is bounded by
/// [`HubConfig::cluster_timeout`](super::HubConfig::cluster_timeout), and held
/// messages wait for no more than one read started after they came.)
const MAX_HELD: usize = 1_000;

/// How many engine reads a hub has under way at once, over all its streams: a link
/// that comes back makes every stream read, and 10,000 streams must not be 10,000
/// reads at once on the engine. 16 keeps an engine's round trips busy without
/// queueing on it.
const MAX_READS: usize = 16;

/// What a stream room's messages look like to its members: the message as published
/// and its position, to the message sent (channels add the position to their
/// broadcasts). Applied once per message per hub.
pub(crate) type Framing = Arc<dyn Fn(&Message, Position) -> Message + Send + Sync>;

/// How a connection joined a stream room from a position
/// ([`Connection::join_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// Whether the connection got every message after the position it gave: `false`
    /// when the stream is in another epoch (its history was lost), or the messages
    /// after that position were trimmed (by [`History`]'s length or age), or the
    /// position is past the stream's newest; it joined live then, and should reload
    /// what it shows.
    pub recovered: bool,
    /// The join point: the position after which live messages start for this
    /// connection (the newest message it got, or the stream's position when it
    /// joined). `None` when the engine could not be reached and the stream had never
    /// been seen here: the position is unknown.
    pub position: Option<Position>,
    /// The messages queued to the connection from history, before any live one. A
    /// message whose send left a connection out ([`Broadcast::except`](super::Broadcast::except))
    /// is among them all the same: the one left out was the publisher's connection,
    /// not this one.
    pub missed: usize,
}

/// The rooms that keep history: exact names, or prefixes (`"chat:*"`); the most
/// specific pattern wins (an exact name, then the longest prefix).
#[derive(Clone, Default)]
pub(crate) struct Histories {
    rules: Vec<Rule>,
}

#[derive(Clone)]
struct Rule {
    /// The room name, or the prefix (without its `*`).
    name: String,
    prefix: bool,
    history: History,
    frame: Option<Framing>,
}

impl Histories {
    /// Adds (or replaces) the rule of `pattern`.
    pub(crate) fn add(&mut self, pattern: &str, history: History, frame: Option<Framing>) {
        let (name, prefix) = match pattern.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (pattern, false),
        };
        self.rules
            .retain(|rule| !(rule.name == name && rule.prefix == prefix));
        self.rules.push(Rule {
            name: name.to_owned(),
            prefix,
            history,
            frame,
        });
    }

    fn find(&self, room: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .filter(|rule| match rule.prefix {
                true => room.starts_with(&rule.name),
                false => room == rule.name,
            })
            .max_by_key(|rule| (!rule.prefix, rule.name.len()))
    }

    fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl fmt::Debug for Histories {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for rule in &self.rules {
            let star = if rule.prefix { "*" } else { "" };
            map.entry(&format_args!("{}{star}", rule.name), &rule.history);
        }
        map.finish()
    }
}

impl PartialEq for Histories {
    fn eq(&self, other: &Self) -> bool {
        let same_frame = |a: &Option<Framing>, b: &Option<Framing>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        self.rules.len() == other.rules.len()
            && self.rules.iter().zip(&other.rules).all(|(a, b)| {
                a.name == b.name
                    && a.prefix == b.prefix
                    && a.history == b.history
                    && same_frame(&a.frame, &b.frame)
            })
    }
}

impl Eq for Histories {}

/// A hub's streams: the patterns, the state of each stream room with members here,
/// and the counters.
pub(crate) struct Streams {
    /// Whether any pattern is registered: a hub without one pays one atomic load per
    /// room send, and nothing else.
    any: AtomicBool,
    /// Slots for engine reads ([`MAX_READS`]).
    read_slots: Arc<tokio::sync::Semaphore>,
    histories: RwLock<Histories>,
    states: Mutex<HashMap<Arc<str>, Arc<StreamState>>>,
    /// Where read tasks run when the caller is outside a runtime (a send from a plain
    /// thread that finds a gap).
    runtime: OnceLock<tokio::runtime::Handle>,
    /// Whether the broker was ready at the last look (see [`Hub::watch_stream_link`]).
    link_up: AtomicBool,
    /// The broker's reconnect count at the last look.
    reconnects: AtomicU64,
    reads: AtomicU64,
    recovered: AtomicU64,
    not_recovered: AtomicU64,
    filled: AtomicU64,
    /// Stream messages this hub's members never got (see [`Streams::lose`]).
    lost: AtomicU64,
    /// Whether the last send to a stream room found the engine unavailable: warned
    /// once per outage.
    sends_failing: AtomicBool,
}

/// One stream's state on this hub, and the joiners waiting for its reads.
struct StreamState {
    room: Arc<str>,
    history: History,
    frame: Option<Framing>,
    state: Mutex<State>,
    /// Told when a read has been merged.
    read_done: Notify,
    /// Connections in [`Hub::join_from_then`] on this stream: the state stays (and the
    /// broker subscription) while there are any, members or not.
    joining: AtomicUsize,
    /// Removed from the hub's map (its room emptied): a delivery that found it before
    /// looks again, so that it cannot reach members that joined through its successor.
    retired: AtomicBool,
}

#[derive(Default)]
struct State {
    /// `None` until the first message or read.
    epoch: Option<Epoch>,
    /// The offset of the last message delivered to the members.
    last: u64,
    /// The newest messages delivered, framed, consecutive offsets ending at `last`.
    tail: VecDeque<Kept>,
    /// Messages past a gap, waiting for it to be read: offset → message, except.
    held: BTreeMap<u64, (Message, Option<ConnectionId>)>,
    /// The reads started when the oldest held message came: a read started after it
    /// that does not reach it means the engine does not have it (no use reading
    /// again).
    holding_since: u64,
    /// The lowest offset a read is wanted from, not started yet.
    wanted: Option<u64>,
    /// Whether a read task runs.
    reading: bool,
    /// The offset the read under way reads from.
    in_flight: Option<u64>,
    /// Reads started, and the number of the last one merged (or failed).
    started: u64,
    done: u64,
    /// Whether the last read failed.
    failed: bool,
    /// A read from this offset was merged in this epoch: every message the engine kept
    /// after it is in the tail, or trimmed by the same bound the engine applies, so a
    /// position at or after it that the tail does not cover cannot be recovered.
    all_kept_after: Option<u64>,
    /// Counts the resets (a new epoch): a read started before one answers for a
    /// history that is gone, and is read again rather than merged.
    generation: u64,
    /// Whether `last` is only where a read found the stream before any message was
    /// delivered here (see [`State::merge`]): the first live message may move it back.
    start_unsure: bool,
    /// Whether a loss of this outage was warned of (cleared by the next message
    /// delivered in order as it came).
    warned: bool,
}

struct Kept {
    offset: u64,
    /// When this hub got it, for the history's `max_age`.
    at: Instant,
    message: Message,
}

/// What a joiner does next.
enum Plan {
    /// Join now: recovered (or not) from the tail.
    Join { recovered: bool },
    /// Wait for a read from this offset.
    Read(u64),
}

impl Streams {
    pub(crate) fn new(histories: &Histories) -> Self {
        Self {
            any: AtomicBool::new(!histories.is_empty()),
            read_slots: Arc::new(tokio::sync::Semaphore::new(MAX_READS)),
            histories: RwLock::new(histories.clone()),
            states: Mutex::default(),
            runtime: OnceLock::new(),
            link_up: AtomicBool::new(true),
            reconnects: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            not_recovered: AtomicU64::new(0),
            filled: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            sends_failing: AtomicBool::new(false),
        }
    }

    /// The rule of `room`, if it keeps history (a copy: for making a state).
    fn rule(&self, room: &str) -> Option<Rule> {
        if !self.any.load(Relaxed) {
            return None;
        }
        read(&self.histories).find(room).cloned()
    }

    /// The history of `room`, if it keeps one: what every send to a room asks, so
    /// nothing is copied but the `History`.
    fn history(&self, room: &str) -> Option<History> {
        if !self.any.load(Relaxed) {
            return None;
        }
        read(&self.histories).find(room).map(|rule| rule.history)
    }

    fn stream(&self, room: &str) -> Option<Arc<StreamState>> {
        lock(&self.states).get(room).cloned()
    }

    /// The counters, for [`super::HubMetrics`]: reads, recovered, not recovered,
    /// filled, lost.
    pub(crate) fn counters(&self) -> [u64; 5] {
        [
            self.reads.load(Relaxed),
            self.recovered.load(Relaxed),
            self.not_recovered.load(Relaxed),
            self.filled.load(Relaxed),
            self.lost.load(Relaxed),
        ]
    }

    /// Counts `lost` messages of `room` that this hub's members will never get (the
    /// engine trimmed them before they could be read, a read failed, the history
    /// was lost with them): nothing is lost without a count, and a warning once per
    /// outage (`warned` is the stream's flag, cleared when messages flow again).
    fn lose(&self, room: &str, lost: u64, warned: &mut bool) {
        if lost == 0 {
            return;
        }
        self.lost.fetch_add(lost, Relaxed);
        if !std::mem::replace(warned, true) {
            tracing::warn!(room, lost, "stream messages lost on this hub's members");
        }
    }

    /// Counts a send to a stream room that the engine could not take (it answered
    /// [`StreamError::Unavailable`]): no member anywhere gets it.
    pub(crate) fn send_failed(&self, room: &str, error: &StreamError) {
        self.lost.fetch_add(1, Relaxed);
        if !self.sends_failing.swap(true, Relaxed) {
            tracing::warn!(room, %error, "stream send lost: the engine is unavailable");
        }
    }

    /// A send to a stream room was taken by the engine.
    pub(crate) fn send_taken(&self) {
        if self.sends_failing.load(Relaxed) {
            self.sends_failing.store(false, Relaxed);
        }
    }

    fn remember_runtime(&self) {
        if self.runtime.get().is_some() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let _ = self.runtime.set(handle);
        }
    }
}

impl fmt::Debug for Streams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streams")
            .field("histories", &*read(&self.histories))
            .field("streams", &lock(&self.states).len())
            .finish_non_exhaustive()
    }
}

impl Hub {
    fn streams(&self) -> &Streams {
        &self.inner.streams
    }

    /// The history `room` keeps, if a pattern ([`HubConfig::history`](super::HubConfig::history),
    /// or a channels topic's) names it.
    pub fn history_of(&self, room: &str) -> Option<History> {
        self.streams().history(room)
    }

    /// Makes the rooms that `pattern` names keep `history`, from now on (what
    /// [`HubConfig::history_framed`](super::HubConfig::history_framed) does before the
    /// hub is built): for channels, which register their topics' patterns on a hub
    /// that exists.
    // Channels (behind `axum`) call it.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn keep_history(&self, pattern: &str, history: History, frame: Option<Framing>) {
        let streams = self.streams();
        write(&streams.histories).add(pattern, history, frame);
        streams.any.store(true, Relaxed);
    }

    /// Whether `room` is a stream room whose messages are framed with their position
    /// (a channels topic with history): its channel joins recover from a `_position`.
    #[cfg(feature = "axum")]
    pub(crate) fn is_framed_stream(&self, room: &str) -> bool {
        self.streams()
            .rule(room)
            .is_some_and(|rule| rule.frame.is_some())
    }

    /// The history of the room `target` names, if it is a stream room: its sends go
    /// to the engine ([`Broker::publish_stream`](super::Broker::publish_stream)).
    pub(crate) fn stream_history(&self, target: &Target) -> Option<History> {
        match target {
            Target::Room(room) => self.history_of(room),
            _ => None,
        }
    }

    /// Joins `conn` to the stream room `room` from `since`: it gets exactly the
    /// messages after `since`, in order, then live ones; see
    /// [`Connection::join_from`].
    pub async fn join_from(
        &self,
        conn: &Connection,
        room: &str,
        since: Position,
    ) -> Result<Recovery, JoinError> {
        if self.history_of(room).is_some() && self.is_member(conn.id(), room) {
            return Err(JoinError::AlreadyMember);
        }
        let join = || self.try_join(conn, room);
        self.join_from_then(conn, room, Some(since), join, |_| {})
            .await
    }

    /// [`Hub::join_from`], or a live join that still learns the stream's position
    /// (`since` `None`: [`Recovery::recovered`] is `false`), with `before` run right
    /// before the missed messages are queued, under the stream's lock (channels queue
    /// their join reply there, so that it precedes them). `before` must not block nor
    /// publish to the room. `join` joins the room (`Hub::try_join`), under the stream's
    /// lock too: channels' presence wraps it to stop holding diffs at the same moment.
    pub(crate) async fn join_from_then(
        &self,
        conn: &Connection,
        room: &str,
        since: Option<Position>,
        join: impl FnOnce() -> Result<(), JoinError> + Send,
        before: impl FnOnce(&Recovery) + Send,
    ) -> Result<Recovery, JoinError> {
        let Some(rule) = self.streams().rule(room) else {
            return Err(JoinError::NoHistory);
        };
        self.check_join(conn, room)?;
        self.streams().remember_runtime();
        let joining = Joining::new(self, room, &rule);
        let stream = joining.stream.clone();
        // The reads started when this joiner last asked for one: a read after them
        // that has been merged answered it.
        let mut asked_at: Option<u64> = None;
        loop {
            let read_done = stream.read_done.notified();
            {
                let mut state = lock(&stream.state);
                state.trim(&stream.history, Instant::now());
                let answered = asked_at.is_some_and(|mark| state.done > mark);
                if answered && state.failed {
                    // The engine cannot be read now: join live rather than wait.
                    return self.join_at(conn, &stream, &mut state, since, false, (join, before));
                }
                match state.plan(since, answered) {
                    Plan::Join { recovered } => {
                        let hooks = (join, before);
                        return self.join_at(conn, &stream, &mut state, since, recovered, hooks);
                    }
                    Plan::Read(after) => {
                        if asked_at.is_none() || answered {
                            asked_at = Some(state.started);
                        }
                        self.want_read(&stream, &mut state, after);
                    }
                }
            }
            read_done.await;
        }
    }

    /// Joins `conn` under the stream's lock and queues what it missed.
    fn join_at(
        &self,
        conn: &Connection,
        stream: &StreamState,
        state: &mut State,
        since: Option<Position>,
        recovered: bool,
        (join, before): (
            impl FnOnce() -> Result<(), JoinError>,
            impl FnOnce(&Recovery),
        ),
    ) -> Result<Recovery, JoinError> {
        // A member (a channel joined twice, or a join meanwhile) gets the live
        // messages already: replaying would repeat them, and it recovers nothing.
        let member = self.is_member(conn.id(), &stream.room);
        let recovered = recovered && !member;
        join()?;
        // Its join point is `last`: the start is fixed now.
        state.start_unsure = false;
        let missed: Vec<Message> = match since {
            Some(since) if recovered => state
                .tail
                .iter()
                .filter(|kept| kept.offset > since.offset)
                .map(|kept| kept.message.clone())
                .collect(),
            _ => Vec::new(),
        };
        let recovery = Recovery {
            recovered,
            position: state.epoch.map(|epoch| Position::new(state.last, epoch)),
            missed: missed.len(),
        };
        if since.is_some() && !member {
            let counter = match recovered {
                true => &self.streams().recovered,
                false => &self.streams().not_recovered,
            };
            counter.fetch_add(1, Relaxed);
        }
        before(&recovery);
        for message in missed {
            conn.send(message);
        }
        Ok(recovery)
    }

    /// Asks for a read of `stream`'s stream after `after`, in one task per stream: none
    /// if the read under way reads from there or before (its answer will do).
    fn want_read(&self, stream: &Arc<StreamState>, state: &mut State, after: u64) {
        if state.in_flight.is_some_and(|reading| reading <= after) {
            return;
        }
        state.wanted = Some(state.wanted.map_or(after, |wanted| wanted.min(after)));
        if state.reading {
            return;
        }
        let runtime = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.streams().runtime.get().cloned());
        let Some(runtime) = runtime else {
            // No runtime has seen this hub yet: nobody joined from a position, so
            // the gap is let go rather than held for ever.
            state.wanted = None;
            state.release_held(self, stream);
            return;
        };
        state.reading = true;
        runtime.spawn(read_loop(Arc::downgrade(&self.inner), stream.clone()));
    }

    /// Hands a positioned envelope of a stream room to this hub's members, in offset
    /// order (called by the inbox, for every hub's envelopes, this one's included).
    pub(crate) fn receive_stream(&self, envelope: &Envelope, position: Position) {
        let Target::Room(room) = &envelope.target else {
            deliver_local(self, envelope);
            return;
        };
        if self.streams().history(room).is_none() {
            // A hub that keeps no history for the room delivers as it comes.
            deliver_local(self, envelope);
            return;
        }
        loop {
            let Some(stream) = self.cell_with_members(room) else {
                return;
            };
            let mut state = lock(&stream.state);
            if !stream.retired.load(Relaxed) {
                state.receive(self, &stream, envelope, position);
                return;
            }
        }
    }

    pub(crate) fn stream_send_failed(&self, room: &str, error: &StreamError) {
        self.streams().send_failed(room, error);
    }

    pub(crate) fn stream_send_taken(&self) {
        self.streams().send_taken();
    }

    /// `room` has its first member here: a stream room gets its state now, and reads
    /// where the stream is, so that a blip of the broker's link before the room's
    /// first message is filled too. Called outside the registry's lock.
    pub(crate) fn stream_room_created(&self, room: &str) {
        if self.streams().history(room).is_none() || self.streams().stream(room).is_some() {
            // No stream; or a joiner's state (which reads itself, and may hold its
            // lock now).
            return;
        }
        self.streams().remember_runtime();
        let Some(stream) = self.cell_with_members(room) else {
            return;
        };
        let mut state = lock(&stream.state);
        if state.epoch.is_none() && !state.reading {
            self.want_read(&stream, &mut state, 0);
        }
    }

    /// The state of `room`, made if the room has members here; `None` if it has
    /// none (nothing to deliver).
    fn cell_with_members(&self, room: &str) -> Option<Arc<StreamState>> {
        if let Some(stream) = self.streams().stream(room) {
            return Some(stream);
        }
        let rule = self.streams().rule(room)?;
        // Under the registry's lock: a room removed meanwhile removes its state after.
        let registry = self.read();
        let (name, _) = registry.rooms.get_key_value(room)?;
        let mut states = lock(&self.streams().states);
        let stream = states
            .entry(name.clone())
            .or_insert_with(|| Arc::new(StreamState::new(name.clone(), &rule)));
        Some(stream.clone())
    }

    /// Forgets the state of `room`, which has no member here any more, unless a
    /// connection is joining it; returns whether the broker subscription should go too.
    /// Called under the registry's write lock.
    pub(crate) fn stream_room_removed(&self, room: &str) -> bool {
        if !self.streams().any.load(Relaxed) {
            return true;
        }
        let mut states = lock(&self.streams().states);
        match states.get(room) {
            Some(stream) if stream.joining.load(Relaxed) > 0 => false,
            Some(stream) => {
                stream.retired.store(true, Relaxed);
                states.remove(room);
                true
            }
            None => true,
        }
    }

    /// Reads every stream after its last offset, when the broker's link has come
    /// back: what was published while it was down reaches the members before newer
    /// messages, even if none comes. Called on every heartbeat tick.
    pub(crate) fn watch_stream_link(&self) {
        let streams = self.streams();
        if !streams.any.load(Relaxed) {
            return;
        }
        streams.remember_runtime();
        let ready = self.broker().is_ready();
        let was_ready = streams.link_up.swap(ready, Relaxed);
        // A link that failed and came back between two ticks shows in its count.
        let reconnects = self.broker().metrics().map_or(0, |m| m.reconnects);
        let reconnected = streams.reconnects.swap(reconnects, Relaxed) != reconnects;
        if !ready || (was_ready && !reconnected) {
            return;
        }
        let states: Vec<Arc<StreamState>> = lock(&streams.states).values().cloned().collect();
        tracing::debug!(
            streams = states.len(),
            "broker link back: reading the streams"
        );
        for stream in states {
            let mut state = lock(&stream.state);
            if state.epoch.is_some() && !stream.retired.load(Relaxed) {
                let last = state.last;
                self.want_read(&stream, &mut state, last);
            }
        }
    }
}

/// A connection in [`Hub::join_from_then`]: keeps its stream's state and the broker
/// subscription while it waits for reads, and lets them go when it ends if the room
/// has no member.
struct Joining<'a> {
    hub: &'a Hub,
    stream: Arc<StreamState>,
}

impl<'a> Joining<'a> {
    fn new(hub: &'a Hub, room: &str, rule: &Rule) -> Self {
        let stream = {
            let mut states = lock(&hub.streams().states);
            let stream = states
                .entry(Arc::from(room))
                .or_insert_with(|| Arc::new(StreamState::new(Arc::from(room), rule)))
                .clone();
            stream.joining.fetch_add(1, Relaxed);
            stream
        };
        // Subscribed before anything is read, so that what is published after the
        // read reaches this hub (a broker's subscribe is idempotent).
        let registry = hub.write();
        if !registry.rooms.contains_key(room) {
            hub.broker().subscribe(room);
        }
        drop(registry);
        Self { hub, stream }
    }
}

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        let registry = self.hub.write();
        let mut states = lock(&self.hub.streams().states);
        let last = self.stream.joining.fetch_sub(1, Relaxed) == 1;
        let ours = states
            .get(&self.stream.room)
            .is_some_and(|stream| Arc::ptr_eq(stream, &self.stream));
        // Another state of the room (made after this one was retired) has its own
        // members and joiners, and the subscription is theirs.
        if last && ours && !registry.rooms.contains_key(&self.stream.room) {
            self.stream.retired.store(true, Relaxed);
            states.remove(&self.stream.room);
            self.hub.broker().unsubscribe(&self.stream.room);
        }
    }
}

impl StreamState {
    fn new(room: Arc<str>, rule: &Rule) -> Self {
        Self {
            room,
            history: rule.history,
            frame: rule.frame.clone(),
            state: Mutex::default(),
            read_done: Notify::new(),
            joining: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
        }
    }
}

impl State {
    /// What a joiner from `since` does, given whether a read asked since it came has
    /// been merged (`answered`): then the state is as up to date as the engine was.
    fn plan(&self, since: Option<Position>, answered: bool) -> Plan {
        let Some(epoch) = self.epoch else {
            return Plan::Read(since.map_or(0, |since| since.offset));
        };
        let Some(since) = since else {
            return Plan::Join { recovered: false };
        };
        let engine_seen = answered || self.all_kept_after.is_some();
        if since.epoch != epoch {
            // The state may be behind an engine that changed epochs: ask it once.
            return match engine_seen {
                true => Plan::Join { recovered: false },
                false => Plan::Read(since.offset),
            };
        }
        if since.offset == self.last {
            return Plan::Join { recovered: true };
        }
        if since.offset < self.last {
            let reaches = self
                .tail
                .front()
                .is_some_and(|first| first.offset <= since.offset + 1);
            if reaches {
                return Plan::Join { recovered: true };
            }
            let trimmed = answered
                || self
                    .all_kept_after
                    .is_some_and(|after| after <= since.offset);
            return match trimmed {
                true => Plan::Join { recovered: false },
                false => Plan::Read(since.offset),
            };
        }
        // Past what this hub delivered: it may be behind the engine.
        match answered {
            true => Plan::Join { recovered: false },
            false => Plan::Read(self.last),
        }
    }

    /// A positioned message from the engine.
    fn receive(
        &mut self,
        hub: &Hub,
        stream: &Arc<StreamState>,
        envelope: &Envelope,
        position: Position,
    ) {
        if position.offset == u64::MAX {
            // No engine numbers that far; one that says so is broken, and no offset
            // could follow it.
            tracing::warn!(room = %stream.room, "stream message at offset u64::MAX refused");
            hub.streams().lose(&stream.room, 1, &mut self.warned);
            return;
        }
        if self.epoch != Some(position.epoch) {
            // A new epoch starts at 1, and this hub goes on from there (filling what
            // did not come from the engine); a stream never seen here, at this message.
            let last = match self.epoch {
                Some(_) => {
                    tracing::debug!(room = %stream.room, "stream epoch changed: its history was lost");
                    0
                }
                None => position.offset.saturating_sub(1),
            };
            self.reset(hub, stream, position.epoch, last);
        }
        if self.start_unsure && position.offset <= self.last {
            self.last = position.offset - 1;
            self.tail.retain(|kept| kept.offset < position.offset);
        }
        if position.offset <= self.last {
            return;
        }
        let except = envelope.except;
        if position.offset == self.last + 1 && self.held.is_empty() {
            self.warned = false;
            self.deliver(hub, stream, position.offset, &envelope.message, except);
            return;
        }
        if self.held.is_empty() {
            self.holding_since = self.started;
        }
        self.held
            .insert(position.offset, (envelope.message.clone(), except));
        self.deliver_held(hub, stream);
        if self.held.len() > stream.history.max_len.clamp(1, MAX_HELD) {
            // More held than the engine keeps (the gap cannot be read any more), or
            // than this hub holds.
            self.release_held(hub, stream);
        } else if !self.held.is_empty() {
            let last = self.last;
            hub.want_read(stream, self, last);
        }
    }

    fn reset(&mut self, hub: &Hub, stream: &StreamState, epoch: Epoch, last: u64) {
        if let Some((&newest, _)) = self.held.last_key_value() {
            // The old epoch's held messages, and its gap before them, never came.
            let lost = newest.saturating_sub(self.last);
            hub.streams().lose(&stream.room, lost, &mut self.warned);
        }
        self.generation += 1;
        self.start_unsure = false;
        self.epoch = Some(epoch);
        self.last = last;
        self.tail.clear();
        self.held.clear();
        self.all_kept_after = None;
    }

    /// Frames, keeps and fans out the message at `offset`, the next one.
    fn deliver(
        &mut self,
        hub: &Hub,
        stream: &StreamState,
        offset: u64,
        message: &Message,
        except: Option<ConnectionId>,
    ) {
        // Every caller set the epoch (a message or a read of one came).
        let Some(epoch) = self.epoch else { return };
        let position = Position::new(offset, epoch);
        let message = frame(stream, message, offset, epoch);
        self.start_unsure = false;
        self.keep(stream, offset, message.clone(), Instant::now());
        self.last = offset;
        let envelope = Envelope {
            origin: hub.node(),
            target: Target::Room(stream.room.to_string()),
            except,
            message,
            position: Some(position),
        };
        // The members are looked up under the registry's lock, which retiring a state
        // takes too: a retired state reaches no one, not even the members that joined
        // through its successor (which got this message from it, or from a read).
        let recipients = {
            let registry = hub.read();
            if stream.retired.load(Relaxed) {
                return;
            }
            match registry.rooms.get(&*stream.room) {
                Some(members) => members.snapshot(),
                None => return,
            }
        };
        fan_out(hub, &envelope, &recipients);
    }

    fn keep(&mut self, stream: &StreamState, offset: u64, message: Message, at: Instant) {
        if self
            .tail
            .back()
            .is_some_and(|kept| kept.offset + 1 != offset)
        {
            self.tail.clear();
        }
        self.tail.push_back(Kept {
            offset,
            at,
            message,
        });
        self.trim(&stream.history, at);
    }

    fn trim(&mut self, history: &History, now: Instant) {
        history.trim(&mut self.tail, now, |kept| kept.at);
    }

    /// Delivers the held messages that follow the last one, and drops those at or
    /// below it.
    fn deliver_held(&mut self, hub: &Hub, stream: &StreamState) {
        while let Some(entry) = self.held.first_entry() {
            let offset = *entry.key();
            if offset > self.last + 1 {
                break;
            }
            let (message, except) = entry.remove();
            if offset == self.last + 1 {
                self.deliver(hub, stream, offset, &message, except);
            }
        }
    }

    /// Delivers every held message in order, over the gaps before them: what those
    /// gaps lacked is lost.
    fn release_held(&mut self, hub: &Hub, stream: &StreamState) {
        while let Some((offset, (message, except))) = self.held.pop_first() {
            self.jump_to(hub, stream, offset);
            self.deliver(hub, stream, offset, &message, except);
        }
    }

    /// Goes on at `offset` (past `last`), counting what lies between as lost.
    fn jump_to(&mut self, hub: &Hub, stream: &StreamState, offset: u64) {
        let lost = offset.saturating_sub(self.last).saturating_sub(1);
        hub.streams().lose(&stream.room, lost, &mut self.warned);
        self.last = self.last.max(offset.saturating_sub(1));
    }

    /// Merges what a read after `after` returned: fills the gap (delivering it), keeps
    /// older messages in the tail for joiners, then delivers what was held.
    fn merge(
        &mut self,
        hub: &Hub,
        stream: &Arc<StreamState>,
        after: u64,
        number: u64,
        read: StreamRead,
    ) {
        let now = Instant::now();
        if self.epoch.is_some() && self.epoch != Some(read.epoch) {
            // The history was lost: the members go on with the new one from its
            // start, as far as the engine has it.
            self.reset(hub, stream, read.epoch, 0);
            if after != 0 {
                hub.want_read(stream, self, 0);
                return;
            }
        }
        if self.epoch != Some(read.epoch) {
            // A stream never seen here: it starts at the engine's top, for now. The
            // members joined before the read, maybe before some of these messages,
            // whose live deliveries may come after this answer: until a message is
            // delivered or a connection joins at this point, the first live one
            // moves the start back to it.
            self.reset(hub, stream, read.epoch, read.top);
            self.start_unsure = true;
            if read
                .entries
                .last()
                .is_some_and(|last| last.offset == read.top)
            {
                for entry in read.entries {
                    let message = frame(stream, &entry.message, entry.offset, read.epoch);
                    self.keep(stream, entry.offset, message, now);
                }
            }
            self.all_kept_after = Some(after);
            return;
        }
        let mut filled = 0;
        let from = self.last;
        for entry in read.entries.iter().filter(|entry| entry.offset > from) {
            self.deliver_held(hub, stream);
            if entry.offset <= self.last {
                continue;
            }
            // An entry past `last + 1`: the engine trimmed the ones between, but this
            // hub may hold some of them, as they came: those go first.
            while let Some(held) = self.held.first_entry() {
                if *held.key() >= entry.offset {
                    break;
                }
                let offset = *held.key();
                let (message, except) = held.remove();
                self.jump_to(hub, stream, offset);
                self.deliver(hub, stream, offset, &message, except);
            }
            self.jump_to(hub, stream, entry.offset);
            match self.held.remove(&entry.offset) {
                // As it came live: with its `except`.
                Some((message, except)) => {
                    self.deliver(hub, stream, entry.offset, &message, except);
                }
                None => {
                    self.deliver(hub, stream, entry.offset, &entry.message, entry.except);
                    filled += 1;
                }
            }
        }
        hub.streams().filled.fetch_add(filled, Relaxed);
        self.keep_older(stream, &read, now);
        let reaches_tail = match (read.entries.first(), self.tail.front()) {
            (None, _) => read.top <= self.last,
            // A full tail holds all that the engine keeps under the same bound.
            (Some(first), Some(front)) => {
                front.offset <= first.offset || self.tail.len() >= stream.history.max_len.max(1)
            }
            (Some(_), None) => false,
        };
        if reaches_tail {
            self.all_kept_after = Some(self.all_kept_after.map_or(after, |a| a.min(after)));
        }
        self.deliver_held(hub, stream);
        if let Some((&first, _)) = self.held.first_key_value() {
            if read.top >= first || number > self.holding_since {
                // The engine had the held ones, yet not the ones before them (or a
                // read started after they came does not have them: it never will).
                self.release_held(hub, stream);
            } else {
                // Published after the read: read again.
                let last = self.last;
                hub.want_read(stream, self, last);
            }
        }
    }

    /// Puts the read's entries older than the tail in front of it, for joiners.
    fn keep_older(&mut self, stream: &StreamState, read: &StreamRead, now: Instant) {
        let Some(epoch) = self.epoch else { return };
        let front = match self.tail.front() {
            Some(front) => front.offset,
            None if read.top == self.last => self.last + 1,
            None => return,
        };
        let room = stream
            .history
            .max_len
            .max(1)
            .saturating_sub(self.tail.len());
        let mut next = front;
        for entry in read
            .entries
            .iter()
            .rev()
            .filter(|e| e.offset < front)
            .take(room)
        {
            if entry.offset + 1 != next {
                break;
            }
            let message = frame(stream, &entry.message, entry.offset, epoch);
            self.tail.push_front(Kept {
                offset: entry.offset,
                at: now,
                message,
            });
            next = entry.offset;
        }
    }
}

fn frame(stream: &StreamState, message: &Message, offset: u64, epoch: Epoch) -> Message {
    match &stream.frame {
        Some(frame) => frame(message, Position::new(offset, epoch)),
        None => message.clone(),
    }
}

/// Reads a stream, one read at a time, from the lowest offset wanted, until no more
/// is wanted; tells the joiners after each.
async fn read_loop(hub: Weak<super::HubInner>, stream: Arc<StreamState>) {
    // Whatever ends this task (a read that panics, a runtime shutting down), the
    // stream is not left "reading" with joiners waiting for ever.
    let _guard = ReadGuard {
        hub: hub.clone(),
        stream: stream.clone(),
    };
    loop {
        let (after, number, generation) = {
            let mut state = lock(&stream.state);
            state.in_flight = state.wanted.take();
            let Some(after) = state.in_flight else {
                state.reading = false;
                return;
            };
            state.started += 1;
            (after, state.started, state.generation)
        };
        let Some(inner) = hub.upgrade() else { return };
        let hub = Hub::from_inner(inner);
        if stream.retired.load(Relaxed) {
            // Its room emptied: nobody waits for this read.
            return;
        }
        let slots = hub.streams().read_slots.clone();
        let Ok(_slot) = slots.acquire().await else {
            return;
        };
        hub.streams().reads.fetch_add(1, Relaxed);
        let read = hub
            .broker()
            .read_stream(&stream.room, after, stream.history);
        let timeout = hub.config().cluster_timeout;
        let result = match tokio::time::timeout(timeout, read).await {
            Ok(result) => result.and_then(checked),
            Err(_) => Err(StreamError::Unavailable(format!(
                "no answer to a read in {timeout:?}"
            ))),
        };
        {
            let mut state = lock(&stream.state);
            state.in_flight = None;
            if stream.retired.load(Relaxed) {
                state.reading = false;
                return;
            }
            if state.generation != generation {
                // The stream started over while it was read (a live message of a new
                // epoch): this answer may be of the old one. Read again.
                state.wanted = Some(state.wanted.map_or(after, |wanted| wanted.min(after)));
                drop(state);
                stream.read_done.notify_waiters();
                continue;
            }
            state.done = number;
            state.failed = result.is_err();
            match result {
                Ok(read) => state.merge(&hub, &stream, after, number, read),
                Err(error) => failed_read(&hub, &stream, &mut state, &error),
            }
        }
        stream.read_done.notify_waiters();
    }
}

/// Ends a stream's read task: if it ended while reading (a panic, the runtime
/// shutting down), the read failed: its joiners join live, its held messages go.
struct ReadGuard {
    hub: Weak<super::HubInner>,
    stream: Arc<StreamState>,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let mut state = lock(&self.stream.state);
        if !state.reading {
            return;
        }
        state.reading = false;
        state.in_flight = None;
        state.wanted = None;
        state.done = state.started;
        state.failed = true;
        tracing::warn!(room = %self.stream.room, "stream read task ended while reading");
        if let Some(inner) = self.hub.upgrade() {
            state.release_held(&Hub::from_inner(inner), &self.stream);
        }
        drop(state);
        self.stream.read_done.notify_waiters();
    }
}

/// A read whose offsets make sense: a top below `u64::MAX` (a next offset exists),
/// entries between 1 and the top.
fn checked(read: StreamRead) -> Result<StreamRead, StreamError> {
    let valid = |offset| offset > 0 && offset <= read.top;
    if read.top == u64::MAX || !read.entries.iter().all(|entry| valid(entry.offset)) {
        return Err(StreamError::Malformed(format!(
            "a read with offsets out of range (top {})",
            read.top
        )));
    }
    Ok(read)
}

fn failed_read(hub: &Hub, stream: &StreamState, state: &mut State, error: &StreamError) {
    match error {
        // A broker without history: its stream rooms are plain ones.
        StreamError::Unsupported => {}
        _ => tracing::warn!(room = %stream.room, %error, "stream read failed"),
    }
    // Held messages wait for no read now.
    state.release_held(hub, stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{
        HubConfig, MemoryBroker, MemoryNetwork, Registration, broadcast::tests::admitted,
    };
    use std::sync::atomic::AtomicUsize;

    /// A hub on `network` whose rooms named `s*` keep `history`.
    fn hub(network: &MemoryNetwork, history: History) -> Hub {
        Hub::with_broker(
            HubConfig::default().history("s*", history),
            network.broker(),
        )
    }

    /// The memory engine with reads that wait for the test to open a gate: the round
    /// trip of an engine across a network, during which joiners pile up. (The memory
    /// engine answers at once, so without it no joiner would come during a read.)
    struct SlowReads {
        engine: MemoryBroker,
        gate: Arc<tokio::sync::Semaphore>,
        reads: Arc<AtomicUsize>,
        /// Whether the engine answers before the gate (the answer then travels while
        /// the stream changes) rather than after it.
        stale: bool,
        /// Whether a read panics once the gate opens.
        panics: bool,
    }

    impl SlowReads {
        fn new(engine: MemoryBroker, gate: &Arc<tokio::sync::Semaphore>) -> Self {
            Self {
                engine,
                gate: gate.clone(),
                reads: Arc::default(),
                stale: false,
                panics: false,
            }
        }
    }

    impl super::super::Broker for SlowReads {
        fn start(&self, inbox: super::super::Inbox) {
            self.engine.start(inbox);
        }
        fn publish(&self, envelope: Envelope) {
            self.engine.publish(envelope);
        }
        fn subscribe(&self, room: &str) {
            self.engine.subscribe(room);
        }
        fn unsubscribe(&self, room: &str) {
            self.engine.unsubscribe(room);
        }
        fn publish_stream(
            &self,
            envelope: Envelope,
            history: History,
        ) -> switchboard_broker::StreamFuture<Position> {
            self.engine.publish_stream(envelope, history)
        }
        fn read_stream(
            &self,
            room: &str,
            after: u64,
            history: History,
        ) -> switchboard_broker::StreamFuture<StreamRead> {
            self.reads.fetch_add(1, Relaxed);
            let read = self.engine.read_stream(room, after, history);
            let gate = self.gate.clone();
            let (stale, panics) = (self.stale, self.panics);
            Box::pin(async move {
                if panics {
                    let _open = gate.acquire().await;
                    panic!("a read that panics");
                }
                if stale {
                    let answer = read.await;
                    let _open = gate.acquire().await;
                    return answer;
                }
                let _open = gate.acquire().await;
                read.await
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_joiners_of_a_cold_stream_share_one_engine_read() {
        let network = MemoryNetwork::new();
        let history = History::default();
        let publisher = hub(&network, history);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let reads = Arc::new(AtomicUsize::new(0));
        let mut slow = SlowReads::new(network.broker(), &gate);
        slow.reads = reads.clone();
        let cold = Hub::with_broker(HubConfig::default().history("s*", history), slow);
        let mut since = None;
        for i in 0..50 {
            let position = publisher.to("s").publish(format!("m{i}")).await.unwrap();
            since.get_or_insert(position);
        }
        let since = since.unwrap();
        let joiners: Vec<Registration> = (0..1_000).map(|_| admitted(&cold)).collect();
        let join = |joiner: &Registration| {
            let (hub, conn) = (cold.clone(), joiner.conn().clone());
            tokio::spawn(async move { hub.join_from(&conn, "s", since).await })
        };
        // Half before the read starts, half while it is under way.
        let mut joins: Vec<_> = joiners[..500].iter().map(join).collect();
        while reads.load(Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        joins.extend(joiners[500..].iter().map(join));
        // Every joiner waits on the read before it is answered.
        let stream = cold.streams().stream("s").unwrap();
        while stream.joining.load(Relaxed) < 1_000 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(1_000);
        for join in futures_util::future::join_all(joins).await {
            let recovery = join.unwrap().unwrap();
            assert!(recovery.recovered);
            assert_eq!(recovery.missed, 49);
            assert_eq!(recovery.position, Some(Position::new(50, since.epoch)));
        }
        assert_eq!(
            reads.load(Relaxed),
            1,
            "one read for the hub, not one per joiner"
        );
        let metrics = cold.metrics();
        assert_eq!(metrics.stream_reads, 1);
        assert_eq!(metrics.streams_recovered, 1_000);
        assert_eq!(cold.room_size("s"), 1_000);
        // Joiners that come later are served from the tail.
        let late = admitted(&cold);
        let recovery = cold.join_from(late.conn(), "s", since).await.unwrap();
        assert_eq!(recovery.missed, 49);
        assert_eq!(reads.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn a_read_answered_before_the_stream_started_over_is_read_again() {
        let network = MemoryNetwork::new().max_streams(1);
        let publisher = hub(&network, History::default());
        let old = publisher.to("s").publish("m1").await.unwrap();
        publisher.to("s").publish("m2").await.unwrap();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut slow = SlowReads::new(network.broker(), &gate);
        slow.stale = true;
        let reads = slow.reads.clone();
        let cold = Hub::with_broker(HubConfig::default().history("s*", History::default()), slow);
        let joiner = admitted(&cold);
        let join = tokio::spawn({
            let (cold, conn) = (cold.clone(), joiner.conn().clone());
            async move { cold.join_from(&conn, "s", old).await }
        });
        while reads.load(Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        // The engine answered {old epoch, top 2}; then the stream is forgotten and
        // starts over, and its first message reaches the hub before that answer.
        publisher.to("sx").publish("x").await.unwrap();
        let new = publisher.to("s").publish("n1").await.unwrap();
        assert_ne!(new.epoch, old.epoch);
        gate.add_permits(10);
        let recovery = join.await.unwrap().unwrap();
        assert!(!recovery.recovered, "the old epoch's history is gone");
        assert_eq!(recovery.position, Some(new));
    }

    #[tokio::test]
    async fn a_retired_stream_state_delivers_to_no_one() {
        let network = MemoryNetwork::new();
        let hub = hub(&network, History::default());
        let member = admitted(&hub);
        member.conn().join("s");
        hub.to("s").publish("m1").await.unwrap();
        let stream = hub.streams().stream("s").unwrap();
        // As a delivery that found the state before the room emptied and a new
        // member joined through a new state.
        stream.retired.store(true, Relaxed);
        let queued = member.conn().buffered_amount();
        assert!(queued > 0, "m1");
        lock(&stream.state).deliver(&hub, &stream, 2, &Message::text("m2"), None);
        assert_eq!(member.conn().buffered_amount(), queued, "not m2");
    }

    #[tokio::test]
    async fn an_offset_no_next_can_follow_is_refused() {
        let network = MemoryNetwork::new();
        let hub = hub(&network, History::default());
        let member = admitted(&hub);
        member.conn().join("s");
        let epoch = hub.to("s").publish("m1").await.unwrap().epoch;
        let queued = member.conn().buffered_amount();
        let envelope = |offset| Envelope {
            origin: hub.node(),
            target: Target::Room("s".into()),
            except: None,
            message: Message::text("x"),
            position: Some(Position::new(offset, epoch)),
        };
        for offset in [u64::MAX, u64::MAX] {
            hub.receive_stream(&envelope(offset), Position::new(offset, epoch));
        }
        assert_eq!(hub.metrics().stream_lost, 2);
        assert_eq!(member.conn().buffered_amount(), queued, "nothing delivered");
        let read = StreamRead {
            epoch,
            top: u64::MAX,
            entries: Vec::new(),
        };
        assert!(matches!(checked(read), Err(StreamError::Malformed(_))));
    }

    #[tokio::test]
    async fn a_read_that_never_answers_or_panics_lets_its_joiners_join_live() {
        let network = MemoryNetwork::new();
        let publisher = hub(&network, History::default());
        let since = publisher.to("s").publish("m1").await.unwrap();
        publisher.to("s").publish("m2").await.unwrap();
        for panics in [false, true] {
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            let mut slow = SlowReads::new(network.broker(), &gate);
            slow.panics = panics;
            let config = HubConfig::default()
                .history("s*", History::default())
                .cluster_timeout(std::time::Duration::from_millis(50));
            let cold = Hub::with_broker(config, slow);
            let joiner = admitted(&cold);
            if panics {
                gate.add_permits(1);
            }
            let join = cold.join_from(joiner.conn(), "s", since);
            let recovery = tokio::time::timeout(std::time::Duration::from_secs(5), join)
                .await
                .expect("the read ended")
                .unwrap();
            assert!(!recovery.recovered, "panics: {panics}");
            assert_eq!(recovery.position, None, "the stream was never seen");
            assert!(joiner.conn().in_room("s"));
            assert!(!lock(&cold.streams().stream("s").unwrap().state).reading);
        }
    }

    #[tokio::test]
    async fn a_hub_reads_at_most_max_reads_streams_at_once() {
        let network = MemoryNetwork::new();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let slow = SlowReads::new(network.broker(), &gate);
        let reads = slow.reads.clone();
        let hub = Hub::with_broker(HubConfig::default().history("s*", History::default()), slow);
        let members: Vec<Registration> = (0..100).map(|_| admitted(&hub)).collect();
        // Each room's first member reads where its stream is.
        for (i, member) in members.iter().enumerate() {
            member.conn().join(&format!("s{i}"));
        }
        while reads.load(Relaxed) < MAX_READS {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(reads.load(Relaxed), MAX_READS, "the others wait for a slot");
        gate.add_permits(100);
        while reads.load(Relaxed) < 100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(hub.metrics().stream_reads, 100);
    }

    #[tokio::test]
    async fn the_tail_keeps_no_message_older_than_max_age() {
        let network = MemoryNetwork::new();
        let history = History::default().max_age(std::time::Duration::from_millis(30));
        let hub = hub(&network, history);
        let member = admitted(&hub);
        member.conn().join("s");
        hub.to("s").publish("old").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        hub.to("s").publish("new").await.unwrap();
        let stream = hub.streams().stream("s").unwrap();
        let tail: Vec<u64> = lock(&stream.state).tail.iter().map(|k| k.offset).collect();
        assert_eq!(tail, [2], "aged out as the next one came, no join needed");
    }

    #[test]
    fn a_framing_that_sends_to_a_stream_room_does_not_deadlock() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let network = MemoryNetwork::new();
                let me: Arc<OnceLock<Hub>> = Arc::default();
                let framing = me.clone();
                let config = HubConfig::default()
                    .history("log", History::default())
                    .history_framed("s", History::default(), move |message, _| {
                        if let Some(hub) = framing.get() {
                            hub.to("log").send_text("framed one");
                        }
                        message.clone()
                    });
                let hub = Hub::with_broker(config, network.broker());
                let _ = me.set(hub.clone());
                let member = admitted(&hub);
                member.conn().join("s");
                member.conn().join("log");
                hub.to("s").publish("m").await.unwrap();
                let engine = network.broker();
                let log = super::super::Broker::read_stream(&engine, "log", 0, History::default());
                let _ = done.send(log.await.unwrap().top);
            });
        });
        let logged = finished.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(logged, Ok(1), "the framing's send was published");
    }

    #[tokio::test]
    async fn a_live_join_learns_the_position_without_recovering() {
        let network = MemoryNetwork::new();
        let publisher = hub(&network, History::default());
        let last = publisher.to("s").publish("m").await.unwrap();
        let cold = hub(&network, History::default());
        let member = admitted(&cold);
        let mut seen = None;
        let join = || cold.try_join(member.conn(), "s");
        let recovery = cold
            .join_from_then(member.conn(), "s", None, join, |recovery| {
                seen = Some(*recovery)
            })
            .await
            .unwrap();
        assert_eq!(seen, Some(recovery), "`before` saw the recovery");
        assert!(!recovery.recovered);
        assert_eq!((recovery.position, recovery.missed), (Some(last), 0));
        assert!(member.conn().in_room("s"));
        let metrics = cold.metrics();
        assert_eq!(metrics.streams_recovered + metrics.streams_not_recovered, 0);
        let again = cold.join_from(member.conn(), "s", last).await;
        assert_eq!(again, Err(JoinError::AlreadyMember));
        let metrics = cold.metrics();
        assert_eq!(metrics.streams_recovered + metrics.streams_not_recovered, 0);
        let lobby = cold.join_from(member.conn(), "lobby", last).await;
        assert_eq!(lobby, Err(JoinError::NoHistory));
        assert!(!member.conn().in_room("lobby"));
    }

    #[tokio::test]
    async fn each_message_is_framed_once_per_hub_whatever_its_members_and_joiners() {
        let network = MemoryNetwork::new();
        let framed = Arc::new(AtomicUsize::new(0));
        let count = framed.clone();
        let config = HubConfig::default().history_framed("s", History::default(), move |m, p| {
            count.fetch_add(1, Relaxed);
            Message::text(format!("{}:{}", p.offset, m.len()))
        });
        let hub = Hub::with_broker(config, network.broker());
        let members: Vec<Registration> = (0..3).map(|_| admitted(&hub)).collect();
        for member in &members {
            member.conn().join("s");
        }
        let mut first = None;
        for i in 0..5 {
            first.get_or_insert(hub.to("s").publish(format!("m{i}")).await.unwrap());
        }
        let joiner = admitted(&hub);
        let recovery = hub
            .join_from(joiner.conn(), "s", first.unwrap())
            .await
            .unwrap();
        assert_eq!(recovery.missed, 4);
        assert_eq!(framed.load(Relaxed), 5, "once per message, not per member");
    }

    /// A broker of the trait's defaults for streams: it keeps no history.
    struct NoStreams(MemoryBroker);

    impl super::super::Broker for NoStreams {
        fn start(&self, inbox: super::super::Inbox) {
            self.0.start(inbox);
        }
        fn publish(&self, envelope: Envelope) {
            self.0.publish(envelope);
        }
        fn subscribe(&self, room: &str) {
            self.0.subscribe(room);
        }
        fn unsubscribe(&self, room: &str) {
            self.0.unsubscribe(room);
        }
    }

    #[tokio::test]
    async fn with_a_broker_that_keeps_no_history_a_stream_room_is_a_plain_one() {
        let network = MemoryNetwork::new();
        let config = HubConfig::default().history("s", History::default());
        let hub = Hub::with_broker(config, NoStreams(network.broker()));
        let member = admitted(&hub);
        member.conn().join("s");
        assert_eq!(hub.to("s").send_text("m").queued, 1);
        let publish = hub.to("s").publish("m").await;
        assert_eq!(publish, Err(StreamError::Unsupported));
        let joiner = admitted(&hub);
        let since = Position::new(0, Epoch::from_u64(1));
        let recovery = hub.join_from(joiner.conn(), "s", since).await.unwrap();
        assert!(!recovery.recovered, "no history to recover from");
        assert!(joiner.conn().in_room("s"));
    }

    #[tokio::test]
    async fn a_stream_state_lasts_while_its_room_has_members_or_joiners() {
        let network = MemoryNetwork::new();
        let hub = hub(&network, History::default());
        let states = |hub: &Hub| lock(&hub.streams().states).len();
        let member = admitted(&hub);
        let join = || hub.try_join(member.conn(), "s");
        let live = hub
            .join_from_then(member.conn(), "s", None, join, |_| {})
            .await;
        assert!(live.is_ok());
        assert_eq!(states(&hub), 1);
        hub.to("s").publish("m").await.unwrap();
        assert!(member.conn().leave("s"));
        assert_eq!(states(&hub), 0, "the room emptied");
        // A joiner that ends while the engine reads leaves nothing behind either.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let slow = SlowReads::new(network.broker(), &gate);
        let slow = Hub::with_broker(HubConfig::default().history("s", History::default()), slow);
        let leaving = admitted(&slow);
        let since = Position::new(0, Epoch::from_u64(1));
        let join = tokio::spawn({
            let (slow, conn) = (slow.clone(), leaving.conn().clone());
            async move { slow.join_from(&conn, "s", since).await }
        });
        while lock(&slow.streams().states).is_empty() {
            tokio::task::yield_now().await;
        }
        leaving.conn().set_closed();
        leaving.unregister();
        gate.add_permits(1);
        assert_eq!(join.await.unwrap(), Err(JoinError::Closed));
        assert_eq!(states(&slow), 0);
        // Nor does a plain member's stream outlive it.
        let plain = admitted(&hub);
        plain.conn().join("s");
        hub.to("s").publish("m").await.unwrap();
        assert_eq!(states(&hub), 1);
        drop(plain);
        assert_eq!(states(&hub), 0);
        assert_eq!(
            format!("{:?}", hub.streams()).matches("streams: 0").count(),
            1
        );
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let mut histories = Histories::default();
        let short = History::default().max_len(1);
        let long = History::default().max_len(2);
        let exact = History::default().max_len(3);
        histories.add("*", short, None);
        histories.add("chat:*", long, None);
        histories.add("chat:lobby", exact, None);
        let find = |histories: &Histories, room| histories.find(room).map(|rule| rule.history);
        assert_eq!(find(&histories, "chat:lobby"), Some(exact));
        assert_eq!(find(&histories, "chat:other"), Some(long));
        assert_eq!(find(&histories, "news"), Some(short));
        histories.add("chat:*", short, None);
        let again = find(&histories, "chat:other");
        assert_eq!(again, Some(short), "a pattern given again replaces");
        assert_eq!(format!("{histories:?}").matches("chat:*").count(), 1);
        let mut none = Histories::default();
        none.add("chat", exact, None);
        assert_eq!(
            none.find("chat:lobby").map(|r| r.history),
            None,
            "no star: exact"
        );
    }
}
