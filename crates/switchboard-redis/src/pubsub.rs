//! Our own pub/sub connection to Redis, read at the pace of the hub.
//!
//! redis-rs's `PubSub` has a driver task that reads every message as fast as Redis
//! sends it into an unbounded queue: a hub slower than its inbound traffic would grow
//! without bound. Here nothing reads the socket until the previous message has been
//! handed on, so a slow hub leaves the bytes in the kernel's buffers and then in
//! Redis's, until Redis's `client-output-buffer-limit pubsub` closes the connection —
//! a loss the hub counts from the gaps in the publishers' numbering once it is back.
//!
//! The subset of RESP2 a subscribed connection receives: arrays of bulk strings and
//! integers, and errors.

use crate::cluster;
use redis::RedisConnectionInfo;
use std::{collections::BTreeMap, io};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Channels per `SUBSCRIBE` or `UNSUBSCRIBE` command: Redis takes any number, this
/// keeps one command's arguments to a few hundred kilobytes.
const CHANNELS_PER_COMMAND: usize = 1000;

/// The longest header line (`*3`, `$1234`, `:5`, an error) read before giving up on
/// the connection: Redis's are short, and a line without end must not grow a buffer.
const MAX_LINE: u64 = 4096;

/// The longest bulk string held: a message's payload as large as the WebSocket
/// codec's default `max_message_size` (64 MiB, far above the hub's 64 KiB for what
/// clients send), and 64 KiB for the envelope's header and the channel's name. A
/// larger one is read past and dropped (its envelope then counts as missed, by its
/// publisher's numbering), rather than have a broken or hostile peer make each
/// shard's reader hold up to Redis's own 512 MB limit, or one huge publish end every
/// hub's subscription.
const MAX_BULK: usize = (64 << 20) + (64 << 10);

/// The deepest nesting of arrays read: Redis sends a subscriber arrays of depth one
/// (two for nothing it sends today); a broken or hostile peer's deeper nesting must
/// not recurse until the stack overflows.
const MAX_DEPTH: usize = 8;

/// The most array items one reply may hold, at every depth together: a subscriber's
/// pushes have at most four (`pmessage`, pattern, channel, payload), and a broken or
/// hostile peer's long array must not grow the reply for as long as it sends.
const MAX_ITEMS: usize = 16;

type Reading = Box<dyn AsyncRead + Send + Unpin>;
type Writing = Box<dyn AsyncWrite + Send + Unpin>;

/// The half that sends subscriptions.
pub(crate) struct Commands {
    write: Writing,
}

/// The half that reads what Redis sends.
pub(crate) struct Replies {
    read: BufReader<Reading>,
}

/// One thing Redis sent on a subscribed connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// A message published on `channel`.
    Message { channel: String, payload: Vec<u8> },
    /// A subscription (`true`) or unsubscription confirmed (sharded or not); on a
    /// Redis Cluster, an unsubscription Redis sends by itself when the channel's slot
    /// moved to another shard.
    Subscription { channel: String, subscribed: bool },
    /// The answer to a [`Commands::ping`]: in RESP2, a subscribed connection answers
    /// `PING` with a `pong` push rather than `+PONG`.
    Pong,
    /// Redis Cluster refused a sharded subscription to channels of `slot` with
    /// `MOVED`: the slot is served elsewhere (the subscriber's map was stale). The
    /// connection stays good.
    Moved { slot: u16 },
    /// Anything else Redis sent, which a subscriber has no use for.
    Other,
}

/// Authenticates a connection just opened to Redis, given as its two halves (see
/// `connect::Node::subscriber`).
pub(crate) async fn open(
    read: impl AsyncRead + Send + Unpin + 'static,
    write: impl AsyncWrite + Send + Unpin + 'static,
    settings: &RedisConnectionInfo,
) -> io::Result<(Commands, Replies)> {
    let (read, write): (Reading, Writing) = (Box::new(read), Box::new(write));
    let (mut commands, mut replies) = (Commands { write }, Replies::new(read));
    let mut setup = Vec::new();
    if let Some(password) = settings.password() {
        let mut auth = redis::cmd("AUTH");
        if let Some(username) = settings.username() {
            auth.arg(username);
        }
        setup.push(auth.arg(password).get_packed_command());
    }
    if setup.is_empty() {
        return Ok((commands, replies));
    }
    commands.write.write_all(&setup.concat()).await?;
    commands.write.flush().await?;
    for _ in &setup {
        // An error (a wrong password) fails the connection.
        replies.value().await?;
    }
    Ok((commands, replies))
}

impl Commands {
    /// Names the connection (what `CLIENT LIST` shows: an operator sees which hub a
    /// subscriber is); before the first subscription, which allows no other command.
    /// Redis's `+OK` arrives as [`Reply::Other`].
    pub(crate) async fn set_name(&mut self, name: &str) -> io::Result<()> {
        let command = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(name)
            .get_packed_command();
        self.write.write_all(&command).await
    }

    /// Asks Redis for a [`Reply::Pong`]: what keeps a quiet connection proven alive.
    pub(crate) async fn ping(&mut self) -> io::Result<()> {
        self.write
            .write_all(&redis::cmd("PING").get_packed_command())
            .await?;
        self.write.flush().await
    }

    /// Sends one `verb` (`SUBSCRIBE`, `UNSUBSCRIBE`) per thousand channels, all in one
    /// write: one round trip however many channels. Redis confirms each channel once.
    /// A sharded verb (`SSUBSCRIBE`, `SUNSUBSCRIBE`) takes the channels of one slot only
    /// (Redis refuses others with `CROSSSLOT`): one command per slot, then.
    pub(crate) async fn send(&mut self, verb: &str, channels: &[String]) -> io::Result<()> {
        let mut packed = Vec::new();
        let mut pack = |channels: &[&String]| {
            for chunk in channels.chunks(CHANNELS_PER_COMMAND) {
                packed.extend(redis::cmd(verb).arg(chunk).get_packed_command());
            }
        };
        if verb.starts_with('S') {
            let mut slots: BTreeMap<u16, Vec<&String>> = BTreeMap::new();
            for channel in channels {
                slots
                    .entry(cluster::slot(channel))
                    .or_default()
                    .push(channel);
            }
            slots.values().for_each(|slot| pack(slot));
        } else {
            pack(&channels.iter().collect::<Vec<_>>());
        }
        if packed.is_empty() {
            // UNSUBSCRIBE without channels would leave them all.
            return Ok(());
        }
        self.write.write_all(&packed).await?;
        self.write.flush().await
    }
}

/// A value of the subset.
#[derive(Debug, PartialEq, Eq)]
enum Value {
    Bulk(Option<Vec<u8>>),
    Int(i64),
    Array(Vec<Value>),
    Status,
}

impl Replies {
    fn new(read: Reading) -> Self {
        Self {
            read: BufReader::new(read),
        }
    }

    /// The next reply; an error when the connection ends or Redis sends an error
    /// other than `MOVED`.
    pub(crate) async fn next(&mut self) -> io::Result<Reply> {
        let value = match self.value().await {
            Ok(value) => value,
            Err(error) => {
                return moved_slot(&error)
                    .map(|slot| Reply::Moved { slot })
                    .ok_or(error);
            }
        };
        let Value::Array(items) = value else {
            return Ok(Reply::Other);
        };
        let mut items = items.into_iter();
        if let Some(Value::Bulk(Some(kind))) = items.as_slice().first() {
            if kind == b"pong" {
                return Ok(Reply::Pong);
            }
        }
        let (Some(Value::Bulk(Some(kind))), Some(Value::Bulk(Some(channel)))) =
            (items.next(), items.next())
        else {
            return Ok(Reply::Other);
        };
        let channel = String::from_utf8_lossy(&channel).into_owned();
        Ok(match kind.as_slice() {
            b"message" | b"smessage" => match items.next() {
                Some(Value::Bulk(Some(payload))) => Reply::Message { channel, payload },
                _ => Reply::Other,
            },
            b"subscribe" | b"ssubscribe" => Reply::Subscription {
                channel,
                subscribed: true,
            },
            b"unsubscribe" | b"sunsubscribe" => Reply::Subscription {
                channel,
                subscribed: false,
            },
            _ => Reply::Other,
        })
    }

    async fn value(&mut self) -> io::Result<Value> {
        let mut items = MAX_ITEMS;
        self.value_within(MAX_DEPTH, &mut items).await
    }

    /// A value whose arrays nest at most `depth` deep and hold at most `items` items
    /// in all (taken from it).
    async fn value_within(&mut self, depth: usize, items: &mut usize) -> io::Result<Value> {
        let line = self.line().await?;
        // The kind is one byte; a line that starts with a multi-byte character has
        // none of ours (and cannot be split after its first byte).
        let (Some(kind), Some(rest)) = (line.get(..1), line.get(1..)) else {
            return Err(invalid(&line));
        };
        match kind {
            "*" => {
                let len = parse_len(rest)?.unwrap_or(0);
                let Some(inner) = depth.checked_sub(1) else {
                    return Err(invalid("arrays nested too deep"));
                };
                *items = items
                    .checked_sub(len)
                    .ok_or_else(|| invalid("an array too long for a subscriber"))?;
                let mut array = Vec::with_capacity(len);
                for _ in 0..len {
                    array.push(Box::pin(self.value_within(inner, items)).await?);
                }
                Ok(Value::Array(array))
            }
            "$" => match parse_len(rest)? {
                None => Ok(Value::Bulk(None)),
                Some(len) if len > MAX_BULK => {
                    let with_crlf = len as u64 + 2;
                    let skipped = tokio::io::copy(
                        &mut (&mut self.read).take(with_crlf),
                        &mut tokio::io::sink(),
                    )
                    .await?;
                    if skipped != with_crlf {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    tracing::warn!(len, max = MAX_BULK, "dropped a message too large to hold");
                    Ok(Value::Bulk(None))
                }
                Some(len) => {
                    // Grown as the bytes arrive, not allocated at the length claimed.
                    let mut data = Vec::new();
                    let with_crlf = len as u64 + 2;
                    (&mut self.read)
                        .take(with_crlf)
                        .read_to_end(&mut data)
                        .await?;
                    if data.len() as u64 != with_crlf {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    data.truncate(len);
                    Ok(Value::Bulk(Some(data)))
                }
            },
            ":" => rest.parse().map(Value::Int).map_err(|_| invalid(&line)),
            "+" => Ok(Value::Status),
            "-" => Err(io::Error::other(RedisErrorText(rest.to_owned()))),
            _ => Err(invalid(&line)),
        }
    }

    /// A header line without its CRLF.
    async fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        let mut limited = (&mut self.read).take(MAX_LINE);
        limited.read_until(b'\n', &mut line).await?;
        if line.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if !line.ends_with(b"\r\n") || line.len() < 3 {
            return Err(invalid(&String::from_utf8_lossy(&line)));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| invalid("a line that is not UTF-8"))
    }
}

/// An array's or a bulk string's length; `None` for -1 (nil).
fn parse_len(text: &str) -> io::Result<Option<usize>> {
    if text == "-1" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| invalid(text))
}

fn invalid(what: &str) -> io::Error {
    let what: String = what.chars().take(64).collect();
    io::Error::new(io::ErrorKind::InvalidData, format!("not RESP: {what:?}"))
}

/// The slot of a `MOVED <slot> <host>:<port>` error Redis sent.
fn moved_slot(error: &io::Error) -> Option<u16> {
    let RedisErrorText(text) = error.get_ref()?.downcast_ref()?;
    let (slot, _node) = text.strip_prefix("MOVED ")?.split_once(' ')?;
    slot.parse().ok()
}

/// An error Redis sent.
#[derive(Debug)]
struct RedisErrorText(String);

impl std::fmt::Display for RedisErrorText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redis answered: {}", self.0)
    }
}

impl std::error::Error for RedisErrorText {}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies(bytes: &'static [u8]) -> Replies {
        Replies::new(Box::new(bytes))
    }

    #[tokio::test]
    async fn messages_and_confirmations_are_read() {
        let mut replies = replies(
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
              *3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhe\r\no\r\n\
              *3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n+OK\r\n",
        );
        let subscribed = Reply::Subscription {
            channel: "a".into(),
            subscribed: true,
        };
        assert_eq!(replies.next().await.unwrap(), subscribed);
        let message = Reply::Message {
            channel: "a".into(),
            payload: b"he\r\no".to_vec(),
        };
        assert_eq!(replies.next().await.unwrap(), message);
        let unsubscribed = Reply::Subscription {
            channel: "a".into(),
            subscribed: false,
        };
        assert_eq!(replies.next().await.unwrap(), unsubscribed);
        assert_eq!(replies.next().await.unwrap(), Reply::Other);
        let end = replies.next().await.unwrap_err();
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn sharded_messages_and_confirmations_are_read_alike() {
        let mut replies = replies(
            b"*3\r\n$10\r\nssubscribe\r\n$1\r\na\r\n:1\r\n\
              *3\r\n$8\r\nsmessage\r\n$1\r\na\r\n$2\r\nhi\r\n\
              *3\r\n$12\r\nsunsubscribe\r\n$1\r\na\r\n:0\r\n",
        );
        let subscribed = Reply::Subscription {
            channel: "a".into(),
            subscribed: true,
        };
        assert_eq!(replies.next().await.unwrap(), subscribed);
        let message = Reply::Message {
            channel: "a".into(),
            payload: b"hi".to_vec(),
        };
        assert_eq!(replies.next().await.unwrap(), message);
        let unsubscribed = Reply::Subscription {
            channel: "a".into(),
            subscribed: false,
        };
        assert_eq!(replies.next().await.unwrap(), unsubscribed);
        let end = replies.next().await.unwrap_err();
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn errors_and_garbage_end_the_connection_without_panic() {
        let error = replies(b"-NOAUTH Authentication required.\r\n")
            .next()
            .await;
        assert!(error.unwrap_err().to_string().contains("NOAUTH"));
        for bad in [
            &b"?\r\n"[..],
            b"*x\r\n",
            b"$5\r\nab",
            b"*2\r\n$1\r\n",
            b"\r\n",
            b":\xff\r\n",
            b"$999999999999\r\n",
        ] {
            let leaked: &'static [u8] = Box::leak(bad.to_vec().into_boxed_slice());
            assert!(replies(leaked).next().await.is_err(), "{bad:?}");
        }
        let endless: &'static [u8] = Box::leak(vec![b'*'; 10_000].into_boxed_slice());
        assert!(replies(endless).next().await.is_err());
    }

    #[tokio::test]
    async fn a_line_that_starts_with_a_multibyte_character_is_an_error() {
        for bad in [
            &b"\xc3\xa9\r\n"[..],
            b"\xe2\x82\xac1\r\n",
            b"*1\r\n\xc3\xa9x\r\n",
        ] {
            let leaked: &'static [u8] = Box::leak(bad.to_vec().into_boxed_slice());
            let error = replies(leaked).next().await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn arrays_nest_at_most_max_depth() {
        let nested = |depth: usize| -> &'static [u8] {
            let mut bytes = b"*1\r\n".repeat(depth);
            bytes.extend_from_slice(b":1\r\n");
            Box::leak(bytes.into_boxed_slice())
        };
        assert_eq!(
            replies(nested(MAX_DEPTH)).next().await.unwrap(),
            Reply::Other
        );
        let error = replies(nested(MAX_DEPTH + 1)).next().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        // Deep enough to overflow the stack of a reader without a bound.
        assert!(replies(nested(1_000_000)).next().await.is_err());
    }

    #[tokio::test]
    async fn arrays_hold_at_most_max_items_in_all() {
        let array = |lens: &[usize]| -> &'static [u8] {
            let mut bytes = Vec::new();
            for len in lens {
                bytes.extend(format!("*{len}\r\n").bytes());
                bytes.extend(b":1\r\n".repeat(*len));
            }
            Box::leak(bytes.into_boxed_slice())
        };
        assert_eq!(
            replies(array(&[MAX_ITEMS])).next().await.unwrap(),
            Reply::Other
        );
        let error = replies(array(&[MAX_ITEMS + 1])).next().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        // A length claimed is refused before its items are read.
        let error = replies(b"*4294967295\r\n").next().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        // Nested arrays share the bound: two of ten are too many.
        let nested = b"*2\r\n*9\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n:1\r\n*9\r\n";
        let error = replies(nested).next().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn bulk_strings_are_at_most_max_bulk() {
        let claim = |len: usize| -> &'static [u8] {
            Box::leak(format!("${len}\r\nab").into_bytes().into_boxed_slice())
        };
        // Longer than a message the broker carries: read past, not held, and the
        // replies after it are read.
        let mut stream = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n".to_vec();
        stream.extend(format!("${}\r\n", MAX_BULK + 1).into_bytes());
        stream.resize(stream.len() + MAX_BULK + 1, b'x');
        stream.extend(b"\r\n*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nok\r\n");
        let mut read = replies(Box::leak(stream.into_boxed_slice()));
        assert_eq!(read.next().await.unwrap(), Reply::Other);
        let next = read.next().await.unwrap();
        let ok = Reply::Message {
            channel: "c".to_owned(),
            payload: b"ok".to_vec(),
        };
        assert_eq!(next, ok);
        // A claim past the bound that the peer does not send: the end of the
        // connection, without a buffer of the claimed size.
        for too_long in [MAX_BULK + 1, 512 << 20] {
            let error = replies(claim(too_long)).next().await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{too_long}");
        }
        // Within the bound, but the peer sends less than it claimed: the end of the
        // connection, not a wait or a buffer of the claimed size.
        let error = replies(claim(MAX_BULK)).next().await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_subscribed_pong_is_read() {
        let mut replies = replies(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        assert_eq!(replies.next().await.unwrap(), Reply::Pong);
    }

    #[tokio::test]
    async fn a_moved_subscription_is_a_reply_not_a_failure() {
        let mut replies = replies(
            b"-MOVED 3999 10.0.0.2:7001\r\n\
              *3\r\n$10\r\nssubscribe\r\n$1\r\nb\r\n:1\r\n",
        );
        assert_eq!(replies.next().await.unwrap(), Reply::Moved { slot: 3999 });
        let subscribed = Reply::Subscription {
            channel: "b".into(),
            subscribed: true,
        };
        assert_eq!(replies.next().await.unwrap(), subscribed);
    }
}
