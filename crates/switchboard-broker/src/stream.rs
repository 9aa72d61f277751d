//! Streams: rooms that keep their recent messages, each at a numbered position, so that
//! a client that comes back says where it was and gets exactly what it missed.
//!
//! Engine-neutral: the engine (in memory, Redis…) assigns each message of a stream its
//! [`Position`] when it is published, atomically, so that every hub of a deployment
//! sees one order and one offset sequence per stream; it keeps the stream's recent
//! messages within its [`History`]; and it answers [`Broker::read_stream`](crate::Broker::read_stream).
//! Hubs do the rest (ordering, gap filling, recovery of clients) the same way over any
//! engine.

use crate::ConnectionId;
use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    str::FromStr,
    time::{Duration, Instant},
};
use switchboard_proto::Message;

/// Which incarnation of a stream's history a position belongs to: the engine draws a
/// new one whenever the stream's history may have been lost (a process that kept it in
/// memory restarted, a Redis that lost its data, a stream forgotten for being idle),
/// so that a client can never mistake a new stream for the old one.
///
/// Displays and parses as 16 hex digits, as it travels in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(u64);

impl Epoch {
    /// A new epoch: 64 random bits, so that two incarnations do not share one.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The epoch whose 64 bits are `bits` (what [`Epoch::as_u64`] gave).
    pub const fn from_u64(bits: u64) -> Self {
        Self(bits)
    }

    /// The 64 bits.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({self})")
    }
}

impl FromStr for Epoch {
    type Err = ParseEpochError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseEpochError);
        }
        u64::from_str_radix(text, 16)
            .map(Self)
            .map_err(|_| ParseEpochError)
    }
}

/// Text that is not an [`Epoch`] (1 to 16 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an epoch is 1 to 16 hex digits")]
pub struct ParseEpochError;

/// Where a message sits in its stream: its offset (1 for the stream's first message,
/// one more for each message after it) within an epoch. Offset 0 is the position
/// before the first message: where a client that has seen nothing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The message's number in the stream: 1, 2, 3…
    pub offset: u64,
    /// The incarnation of the stream's history the offset counts in.
    pub epoch: Epoch,
}

impl Position {
    /// The position `offset` in `epoch`.
    pub const fn new(offset: u64, epoch: Epoch) -> Self {
        Self { offset, epoch }
    }
}

/// How much history a stream keeps: at most its last [`History::max_len`] messages, and
/// of those only the ones younger than [`History::max_age`]. Both bound the memory
/// (and a Redis key's size) that a stream takes.
///
/// ```
/// use std::time::Duration;
/// use switchboard_broker::History;
///
/// let history = History::default().max_len(500).max_age(Duration::from_secs(60));
/// assert_eq!(history.max_len, 500);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct History {
    /// The most messages a stream keeps; older ones are trimmed as new ones come. 0 is
    /// taken as 1.
    ///
    /// Default 100: a few seconds of a busy room, minutes of a chat, enough for the
    /// reconnects that recovery is for, and at most 100 × the hub's message size per
    /// stream.
    pub max_len: usize,
    /// How long a message is kept; `None` keeps it until [`History::max_len`] trims it.
    /// An engine that stores streams elsewhere also forgets a stream that has had no
    /// message for this long (Redis: for a day when `None`, and caps it at ten years).
    ///
    /// Default 5 minutes: a reconnect (a restart, a network change, a laptop waking)
    /// recovers; a client gone longer is told it did not and reloads its state.
    pub max_age: Option<Duration>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            max_len: 100,
            max_age: Some(Duration::from_secs(5 * 60)),
        }
    }
}

impl History {
    /// Sets [`History::max_len`] (0 is taken as 1).
    pub fn max_len(mut self, max: usize) -> Self {
        self.max_len = max;
        self
    }

    /// Sets [`History::max_age`].
    pub fn max_age(mut self, max: Duration) -> Self {
        self.max_age = Some(max);
        self
    }

    /// Keeps messages until [`History::max_len`] trims them, however old, while the
    /// stream is in use: the Redis engine still drops a stream that had no message for
    /// a day.
    pub fn no_max_age(mut self) -> Self {
        self.max_age = None;
        self
    }

    /// Drops from `kept` (oldest first; `at` says when each one was kept) what this
    /// history no longer keeps at `now`: past its length, older than its age. One
    /// rule for every store of recent messages (an engine's, a hub's tail).
    pub fn trim<T>(&self, kept: &mut VecDeque<T>, now: Instant, at: impl Fn(&T) -> Instant) {
        while kept.len() > self.max_len.max(1) {
            kept.pop_front();
        }
        if let Some(max_age) = self.max_age {
            while kept
                .front()
                .is_some_and(|oldest| now.saturating_duration_since(at(oldest)) > max_age)
            {
                kept.pop_front();
            }
        }
    }
}

/// A message kept in a stream, at its offset (in the epoch of the read that returned
/// it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// Its offset.
    pub offset: u64,
    /// The message, as published.
    pub message: Message,
    /// The connection its publish left out ([`Envelope::except`](crate::Envelope::except)),
    /// kept with it: a hub that fills a gap with it leaves that connection out too.
    /// (A connection recovering from a position gets it all the same: the one left
    /// out was the publisher's, which is another connection by then.)
    pub except: Option<ConnectionId>,
}

/// What an engine answered to [`Broker::read_stream`](crate::Broker::read_stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRead {
    /// The stream's current epoch (a new one, for a stream the engine never had or
    /// lost).
    pub epoch: Epoch,
    /// The offset of the stream's newest message (0: none yet in this epoch).
    pub top: u64,
    /// The messages kept after the offset asked for, oldest first, at most up to `top`.
    /// Messages trimmed (by length or age) are not there: the first entry's offset is
    /// then more than one past the one asked for.
    pub entries: Vec<StreamEntry>,
}

impl StreamRead {
    /// Whether these entries are exactly everything after `since`: same epoch, and
    /// every offset from `since + 1` to `top`, in order, with no hole (trimmed at the
    /// start, or an entry an engine skipped).
    pub fn covers(&self, since: Position) -> bool {
        if since.epoch != self.epoch || since.offset > self.top {
            return false;
        }
        self.top - since.offset == self.entries.len() as u64
            && (since.offset + 1..)
                .zip(&self.entries)
                .all(|(offset, entry)| entry.offset == offset)
    }
}

/// Why a stream could not be published to or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The engine does not keep history (a broker without streams).
    #[error("this broker keeps no stream history")]
    Unsupported,
    /// The engine could not be reached (the link is down), its queue is full, or it
    /// refused the publish: the message was not published.
    #[error("the stream engine is unavailable: {0}")]
    Unavailable(String),
    /// The publish was sent but its answer never came (the link failed on the way):
    /// it may have been published, and delivered, or not. Publishing it again may
    /// publish it twice.
    #[error("the stream engine did not confirm the publish: {0}")]
    Unconfirmed(String),
    /// The engine answered with something that is not a stream.
    #[error("the stream engine answered with something unexpected: {0}")]
    Malformed(String),
    /// The room keeps no history (no pattern of the hub names it), or the target is
    /// not a room: there is no stream to publish to.
    #[error("this room keeps no history")]
    NoHistory,
    /// A control message (ping, pong, close): those are not broadcast, nor kept.
    #[error("control messages are not published")]
    NotData,
}

/// An engine's answer that comes later: `Send`, boxed, so that the trait stays object
/// safe.
pub type StreamFuture<T> = Pin<Box<dyn Future<Output = Result<T, StreamError>> + Send>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_display_and_parse_as_hex() {
        let epoch = Epoch::from_u64(0xab);
        assert_eq!(epoch.to_string(), "00000000000000ab");
        assert_eq!("00000000000000ab".parse(), Ok(epoch));
        assert_eq!("ab".parse(), Ok(epoch));
        for bad in ["", "xyz", "+1", "00000000000000000"] {
            assert_eq!(bad.parse::<Epoch>(), Err(ParseEpochError), "{bad:?}");
        }
    }

    fn read(epoch: u64, top: u64, offsets: &[u64]) -> StreamRead {
        StreamRead {
            epoch: Epoch::from_u64(epoch),
            top,
            entries: offsets
                .iter()
                .map(|&offset| StreamEntry {
                    offset,
                    message: Message::text("m"),
                    except: None,
                })
                .collect(),
        }
    }

    #[test]
    fn a_read_covers_a_position_only_without_a_hole_in_the_same_epoch() {
        let at = |offset| Position::new(offset, Epoch::from_u64(1));
        assert!(read(1, 5, &[3, 4, 5]).covers(at(2)));
        assert!(read(1, 5, &[]).covers(at(5)), "nothing missed");
        assert!(!read(1, 5, &[4, 5]).covers(at(2)), "3 was trimmed");
        assert!(!read(2, 5, &[3, 4, 5]).covers(at(2)), "another epoch");
        assert!(!read(1, 5, &[]).covers(at(7)), "a position past the top");
        assert!(!read(1, 5, &[]).covers(at(3)), "4 and 5 trimmed");
        assert!(!read(1, 5, &[3, 5]).covers(at(2)), "a hole in the middle");
        assert!(!read(1, 5, &[3, 4]).covers(at(2)), "short of the top");
    }
}
