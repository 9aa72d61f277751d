//! The Redis stream engine, broker to broker (no hub): positions assigned atomically by
//! the publish script, every subscribed broker (the publisher too) handed each
//! positioned envelope once in offset order, reads, trimming by length and age, a new
//! epoch when Redis lost its data, and publishes lost (and said so) while Redis is
//! down. Tests that flush or kill Redis run their own.

mod common;

use common::{OwnRedis, REDIS, config, subscribers_at, unique_prefix, until_ready, within};
use futures_util::future::join_all;
use std::{collections::HashMap, time::Duration};
use switchboard::{
    Message,
    hub::{Broker, Envelope, Inbox, NodeId, Target},
};
use switchboard_broker::{Epoch, History, Position, StreamError, StreamRead};
use switchboard_redis::{BrokerStats, RedisBroker};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// A broker attached to the Redis at `url`, subscribed to room `r`, with what it is
/// handed.
struct Attached {
    broker: RedisBroker,
    stats: BrokerStats,
    node: NodeId,
    arrived: UnboundedReceiver<Envelope>,
}

async fn attach(url: &str, prefix: &str) -> Attached {
    let broker = RedisBroker::new(config(prefix).url(url)).unwrap();
    let (stats, node) = (broker.stats(), NodeId::random());
    let (tx, arrived) = unbounded_channel();
    broker.start(Inbox::new(node, move |envelope| {
        let _ = tx.send(envelope.clone());
        true
    }));
    broker.subscribe("r");
    until_ready("broker", true, || broker.is_ready()).await;
    Attached {
        broker,
        stats,
        node,
        arrived,
    }
}

/// Brokers on one new prefix, each subscribed to `r`, once Redis counts them all.
async fn attached(url: &str, test: &str, n: usize) -> (String, Vec<Attached>) {
    let prefix = unique_prefix(test);
    let mut brokers = Vec::new();
    for _ in 0..n {
        brokers.push(attach(url, &prefix).await);
    }
    subscribers_at(url, &format!("{prefix}:room:r"), n as i64).await;
    (prefix, brokers)
}

fn to_room(origin: NodeId, text: String) -> Envelope {
    Envelope {
        origin,
        target: Target::Room("r".into()),
        except: None,
        message: Message::text(text),
        position: None,
    }
}

async fn publish(at: &Attached, text: &str, history: History) -> Position {
    let envelope = to_room(at.node, text.to_owned());
    within("a publish", at.broker.publish_stream(envelope, history))
        .await
        .unwrap()
}

async fn read(at: &Attached, after: u64, history: History) -> StreamRead {
    within("a read", at.broker.read_stream("r", after, history))
        .await
        .unwrap()
}

fn offsets(read: &StreamRead) -> Vec<u64> {
    read.entries.iter().map(|entry| entry.offset).collect()
}

/// The next `n` envelopes a broker is handed.
async fn next(at: &mut Attached, n: usize) -> Vec<Envelope> {
    let mut got = Vec::new();
    within(&format!("{n} envelopes"), async {
        while got.len() < n {
            got.push(at.arrived.recv().await.unwrap());
        }
    })
    .await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_are_contiguous_and_every_broker_gets_each_message_once_in_order() {
    const EACH: usize = 500;
    let (_prefix, mut brokers) = attached(REDIS, "stream-order", 3).await;
    let history = History::default().max_len(2 * EACH);
    // The first two publish at once, interleaving their publishes in Redis; the third
    // only listens.
    let published = {
        let publishing = brokers[..2].iter().map(|at| {
            let futures: Vec<_> = (0..EACH)
                .map(|i| {
                    let envelope = to_room(at.node, format!("{} {i}", at.node));
                    let text = format!("{} {i}", at.node);
                    let position = at.broker.publish_stream(envelope, history);
                    async move { (position.await.unwrap(), text) }
                })
                .collect();
            join_all(futures)
        });
        within("the publishes", join_all(publishing)).await
    };
    let by_offset: HashMap<u64, (Epoch, String)> = published
        .into_iter()
        .flatten()
        .map(|(position, text)| (position.offset, (position.epoch, text)))
        .collect();
    let mut assigned: Vec<u64> = by_offset.keys().copied().collect();
    assigned.sort_unstable();
    assert_eq!(assigned, (1..=2 * EACH as u64).collect::<Vec<_>>());
    let epoch = by_offset[&1].0;
    assert!(by_offset.values().all(|(e, _)| *e == epoch), "one epoch");
    // A marker after them all: each broker's next envelope after the 2 × EACH, so
    // that none was handed twice.
    let marker = publish(&brokers[2], "marker", history).await;
    assert_eq!(marker.offset, 2 * EACH as u64 + 1);
    for at in &mut brokers {
        let got = next(at, 2 * EACH).await;
        for (i, envelope) in got.iter().enumerate() {
            let offset = i as u64 + 1;
            assert_eq!(envelope.position, Some(Position::new(offset, epoch)));
            assert_eq!(envelope.target, Target::Room("r".into()));
            let text = &by_offset[&offset].1;
            assert_eq!(envelope.message, Message::text(text.clone()), "{offset}");
        }
        // Once each: the marker comes next.
        let after = next(at, 1).await;
        assert_eq!(after[0].position, Some(marker));
        assert_eq!(after[0].message, Message::text("marker"));
        assert_eq!(at.stats.missed(), 0);
    }
    let published: u64 = brokers.iter().map(|at| at.stats.published()).sum();
    assert_eq!(published, 2 * EACH as u64 + 1);
}

#[tokio::test]
async fn stream_and_plain_publishes_go_out_in_the_order_they_were_made() {
    let (_prefix, mut brokers) = attached(REDIS, "stream-mixed", 2).await;
    let at = &brokers[0];
    let mut positions = Vec::new();
    for i in 0..50 {
        at.broker.publish(to_room(at.node, format!("plain {i}")));
        let envelope = to_room(at.node, format!("stream {i}"));
        positions.push(at.broker.publish_stream(envelope, History::default()));
    }
    within("the publishes", join_all(positions)).await;
    let got = next(&mut brokers[1], 100).await;
    let texts: Vec<String> = got
        .iter()
        .map(|envelope| match &envelope.message {
            Message::Text(text) => text.as_str().to_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    let expected: Vec<String> = (0..50)
        .flat_map(|i| [format!("plain {i}"), format!("stream {i}")])
        .collect();
    assert_eq!(texts, expected);
    // The publisher is handed its stream messages, not its plain ones.
    let own = next(&mut brokers[0], 50).await;
    assert!(own.iter().all(|envelope| envelope.position.is_some()));
}

#[tokio::test]
async fn reads_return_what_follows_an_offset_up_to_the_top() {
    let (_prefix, brokers) = attached(REDIS, "stream-read", 1).await;
    let at = &brokers[0];
    let history = History::default();
    // A stream that never had a message: an epoch, kept for the first publish.
    let empty = read(at, 0, history).await;
    assert_eq!((empty.top, empty.entries.len()), (0, 0));
    assert!(empty.covers(Position::new(0, empty.epoch)));
    let mut last = Position::new(0, empty.epoch);
    for i in 1..=10 {
        last = publish(at, &format!("m{i}"), history).await;
    }
    assert_eq!(last, Position::new(10, empty.epoch));

    let all = read(at, 0, history).await;
    assert_eq!((all.epoch, all.top), (empty.epoch, 10));
    assert_eq!(offsets(&all), (1..=10).collect::<Vec<_>>());
    assert_eq!(all.entries[2].message, Message::text("m3"));
    assert!(all.covers(Position::new(0, all.epoch)));

    let middle = read(at, 4, history).await;
    assert_eq!(offsets(&middle), (5..=10).collect::<Vec<_>>());
    assert!(middle.covers(Position::new(4, all.epoch)));

    let top = read(at, 10, history).await;
    assert!(top.entries.is_empty());
    assert!(top.covers(Position::new(10, all.epoch)));

    let beyond = read(at, 11, history).await;
    assert!(beyond.entries.is_empty());
    assert!(!beyond.covers(Position::new(11, all.epoch)));
    // An offset no stream reaches is read as one past the top, not as an error.
    let huge = read(at, u64::MAX, history).await;
    assert!(huge.entries.is_empty());
}

/// The stream key's length, as Redis counts it.
async fn xlen(url: &str, prefix: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("XLEN")
        .arg(format!("{{{prefix}:room:r}}:s"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// The key's time to live in ms, as Redis counts it.
async fn pttl(url: &str, key: String) -> i64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn history_is_trimmed_to_max_len_in_redis() {
    let (prefix, brokers) = attached(REDIS, "stream-max-len", 1).await;
    let at = &brokers[0];
    let history = History::default().max_len(5);
    for i in 1..=12 {
        publish(at, &format!("m{i}"), history).await;
    }
    assert_eq!(xlen(REDIS, &prefix).await, 5);
    let kept = read(at, 0, history).await;
    assert_eq!(offsets(&kept), [8, 9, 10, 11, 12]);
    assert!(!kept.covers(Position::new(0, kept.epoch)), "1 to 7 trimmed");
    assert!(kept.covers(Position::new(7, kept.epoch)));
    // A shorter history reads the newest, so that the read is a trimmed one, not one
    // cut short of the top.
    let shorter = read(at, 0, history.max_len(2)).await;
    assert_eq!(offsets(&shorter), [11, 12]);
    // 0 is taken as 1.
    publish(at, "m13", history.max_len(0)).await;
    assert_eq!(xlen(REDIS, &prefix).await, 1);
}

/// A generic command on the Redis at `url`.
async fn query<T: redis::FromRedisValue>(url: &str, command: &redis::Cmd) -> T {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    command.query_async(&mut conn).await.unwrap()
}

#[tokio::test]
async fn a_history_without_limits_is_capped_not_half_published() {
    // `usize::MAX` and `Duration::MAX` reached the scripts as `1e+19` and an expiry
    // past Redis's clock: XADD or PEXPIRE failed after the offset was taken.
    let (prefix, brokers) = attached(REDIS, "stream-huge", 1).await;
    let at = &brokers[0];
    let huge = History::default()
        .max_len(usize::MAX)
        .max_age(Duration::MAX);
    let first = publish(at, "a", huge).await;
    let second = publish(at, "b", History::default()).await;
    assert_eq!((first.offset, second.offset), (1, 2));
    let both = read(at, 0, huge).await;
    assert_eq!(offsets(&both), [1, 2]);
    assert!(both.covers(Position::new(0, both.epoch)));
    // Unlimited age: the keys still expire, in ten years or a day.
    publish(at, "c", huge.no_max_age()).await;
    let stream = pttl(REDIS, format!("{{{prefix}:room:r}}:s")).await;
    assert!(stream > 0, "{stream}");
    assert_eq!(at.stats.lost(), 0);
}

#[tokio::test]
async fn history_is_trimmed_by_age_and_the_keys_expire() {
    let (prefix, brokers) = attached(REDIS, "stream-max-age", 1).await;
    let at = &brokers[0];
    // Seconds, not milliseconds: a loaded machine may take hundreds of ms between two
    // steps, and every step below happens well within (or well past) the age.
    let age = Duration::from_secs(3);
    let history = History::default().max_age(age);
    for i in 1..=3 {
        publish(at, &format!("old {i}"), history).await;
    }
    tokio::time::sleep(age + Duration::from_millis(500)).await;
    // Read before anything trims them: left out all the same.
    let aged = read(at, 0, history).await;
    assert_eq!((aged.top, aged.entries.len()), (3, 0));
    assert!(!aged.covers(Position::new(0, aged.epoch)));
    assert!(aged.covers(Position::new(3, aged.epoch)), "saw everything");
    for i in 4..=5 {
        publish(at, &format!("new {i}"), history).await;
    }
    assert_eq!(xlen(REDIS, &prefix).await, 2, "trimmed in Redis");
    assert_eq!(offsets(&read(at, 0, history).await), [4, 5]);

    let stream = pttl(REDIS, format!("{{{prefix}:room:r}}:s")).await;
    assert!(0 < stream && stream <= 3000, "{stream}");
    let meta = pttl(REDIS, format!("{{{prefix}:room:r}}:m")).await;
    assert!(meta > 24 * 3600 * 1000, "{meta}");
    // Idle past max_age: the messages are gone, the epoch and top stay.
    tokio::time::sleep(age + Duration::from_millis(500)).await;
    assert_eq!(xlen(REDIS, &prefix).await, 0);
    let idle = read(at, 5, history).await;
    assert_eq!((idle.epoch, idle.top), (aged.epoch, 5));
    assert!(idle.covers(Position::new(5, aged.epoch)));
}

#[tokio::test]
async fn expiries_only_grow_and_a_read_alone_keeps_a_meta_a_minute() {
    let (prefix, brokers) = attached(REDIS, "stream-expiry", 1).await;
    let at = &brokers[0];
    let meta = format!("{{{prefix}:room:r}}:m");
    const DAY: i64 = 24 * 3600 * 1000;
    // Read before any publish (a client joining a name nobody publishes to): the
    // meta is kept a minute, not a day.
    let hour = History::default().max_age(Duration::from_secs(3600));
    read(at, 0, hour).await;
    let left = pttl(REDIS, meta.clone()).await;
    assert!(0 < left && left <= 60_000, "{left}");
    // The first publish gives it its full expiry.
    publish(at, "a", hour).await;
    let left = pttl(REDIS, meta.clone()).await;
    assert!(left > DAY + 3_500_000, "{left}");
    // A read, or a publish, with a shorter history does not shorten it.
    let second = History::default().max_age(Duration::from_secs(1));
    read(at, 0, second).await;
    publish(at, "b", second).await;
    let left = pttl(REDIS, meta.clone()).await;
    assert!(left > DAY + 3_500_000, "{left}");
    let stream = pttl(REDIS, format!("{{{prefix}:room:r}}:s")).await;
    assert!(stream > 3_500_000, "{stream}");
}

#[tokio::test]
async fn a_meta_that_is_not_ours_is_a_lost_one_new_epoch() {
    let (prefix, brokers) = attached(REDIS, "stream-bad-meta", 1).await;
    let at = &brokers[0];
    let history = History::default();
    let meta = format!("{{{prefix}:room:r}}:m");
    let mut epoch = publish(at, "first", history).await.epoch;
    for (field, bad) in [
        ("e", "not hex at all!!"),
        ("e", "ab"),
        ("o", "x1"),
        ("o", "1e20"),
    ] {
        publish(at, "old", history).await;
        let () = query(REDIS, redis::cmd("HSET").arg(&meta).arg(field).arg(bad)).await;
        let fresh = publish(at, "new", history).await;
        assert_eq!(fresh.offset, 1, "{field}={bad}");
        assert_ne!(fresh.epoch, epoch, "{field}={bad}");
        epoch = fresh.epoch;
        let read = read(at, 0, history).await;
        assert_eq!(
            (read.epoch, offsets(&read)),
            (epoch, vec![1]),
            "{field}={bad}"
        );
        assert_eq!(read.entries[0].message, Message::text("new"));
    }
    assert_eq!(at.stats.lost(), 0);
}

#[tokio::test]
async fn entries_dated_out_of_order_by_a_clock_step_leave_no_hidden_hole() {
    let (prefix, brokers) = attached(REDIS, "stream-clock", 1).await;
    let at = &brokers[0];
    let history = History::default().max_age(Duration::from_secs(10));
    for i in 1..=3 {
        publish(at, &format!("m{i}"), history).await;
    }
    // 4 and 5 as a clock 20 s behind would have dated them (older than max_age).
    let (stream, meta) = (
        format!("{{{prefix}:room:r}}:s"),
        format!("{{{prefix}:room:r}}:m"),
    );
    let time: Vec<u64> = query(REDIS, &redis::cmd("TIME")).await;
    let behind = time[0] * 1000 - 20_000;
    for offset in 4..=5 {
        let () = query(
            REDIS,
            redis::cmd("XADD")
                .arg(&stream)
                .arg(format!("{offset}-{behind}"))
                .arg("t")
                .arg(format!("m{offset}")),
        )
        .await;
    }
    let () = query(REDIS, redis::cmd("HSET").arg(&meta).arg("o").arg(5)).await;
    // Either all five, or (had the old ones been left out) not "recovered".
    let all = read(at, 0, history).await;
    assert_eq!(all.top, 5);
    assert_eq!(offsets(&all), [1, 2, 3, 4, 5]);
    assert!(all.covers(Position::new(0, all.epoch)));

    // An entry dated a minute ahead (a clock that then stepped back): the next is not
    // dated before it.
    let ahead = time[0] * 1000 + 60_000;
    let () = query(
        REDIS,
        redis::cmd("XADD")
            .arg(&stream)
            .arg(format!("6-{ahead}"))
            .arg("t")
            .arg("m6"),
    )
    .await;
    let () = query(REDIS, redis::cmd("HSET").arg(&meta).arg("o").arg(6)).await;
    assert_eq!(publish(at, "m7", history).await.offset, 7);
    let newest: Vec<(String, Vec<(String, String)>)> = query(
        REDIS,
        redis::cmd("XREVRANGE")
            .arg(&stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1),
    )
    .await;
    let dated: u64 = newest[0].0.split('-').nth(1).unwrap().parse().unwrap();
    assert!(dated >= ahead, "{} dated before {ahead}", newest[0].0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_gives_the_stream_a_new_epoch() {
    let mut redis = OwnRedis::start().await;
    let (prefix, brokers) = attached(&redis.url(), "stream-epoch", 1).await;
    let at = &brokers[0];
    let history = History::default();
    let first = publish(at, "a", history).await;
    publish(at, "b", history).await;

    let () = redis.query(&redis::cmd("FLUSHALL")).await;
    let flushed = publish(at, "c", history).await;
    assert_eq!(flushed.offset, 1);
    assert_ne!(flushed.epoch, first.epoch);
    let read_flushed = read(at, 0, history).await;
    assert_eq!(read_flushed.epoch, flushed.epoch);
    assert_eq!(offsets(&read_flushed), [1]);

    // The meta alone lost (evicted, say): a new epoch, and the old messages go with
    // the old epoch rather than be read as the new one's.
    publish(at, "d", history).await;
    let () = redis
        .query(redis::cmd("DEL").arg(format!("{{{prefix}:room:r}}:m")))
        .await;
    let evicted = publish(at, "e", history).await;
    assert_eq!(evicted.offset, 1);
    assert_ne!(evicted.epoch, flushed.epoch);
    let read_evicted = read(at, 0, history).await;
    assert_eq!(offsets(&read_evicted), [1]);
    assert_eq!(read_evicted.entries[0].message, Message::text("e"));

    // Restarted without its data: the link comes back, loads the script again, and
    // the stream starts over in a new epoch.
    redis.restart().await;
    until_ready("the broker after the restart", false, || {
        at.broker.is_ready()
    })
    .await;
    until_ready("the broker after the restart", true, || {
        at.broker.is_ready()
    })
    .await;
    let restarted = publish(at, "f", history).await;
    assert_eq!(restarted.offset, 1);
    assert_ne!(restarted.epoch, evicted.epoch);
    assert_eq!(read(at, 0, history).await.epoch, restarted.epoch);
}

#[tokio::test]
async fn scripts_flushed_from_redis_are_loaded_again() {
    let redis = OwnRedis::start().await;
    let (_prefix, brokers) = attached(&redis.url(), "stream-noscript", 1).await;
    let at = &brokers[0];
    let history = History::default();
    publish(at, "a", history).await;
    read(at, 0, history).await;
    let () = redis.query(redis::cmd("SCRIPT").arg("FLUSH")).await;
    assert_eq!(publish(at, "b", history).await.offset, 2);
    assert_eq!(offsets(&read(at, 0, history).await), [1, 2]);
    assert_eq!(at.stats.lost(), 0);
}

#[tokio::test]
async fn a_mixed_batch_that_meets_noscript_keeps_its_order() {
    let redis = OwnRedis::start().await;
    let (_prefix, mut brokers) = attached(&redis.url(), "stream-noscript-mixed", 2).await;
    let () = redis.query(redis::cmd("SCRIPT").arg("FLUSH")).await;
    let at = &brokers[0];
    // The current-thread runtime runs the link task only when the test awaits: the
    // four go out in one pipeline, where the stream publishes meet NOSCRIPT.
    let mut positions = Vec::new();
    for i in 0..2 {
        at.broker.publish(to_room(at.node, format!("plain {i}")));
        let envelope = to_room(at.node, format!("stream {i}"));
        positions.push(at.broker.publish_stream(envelope, History::default()));
    }
    within("the publishes", join_all(positions)).await;
    let texts: Vec<String> = next(&mut brokers[1], 4)
        .await
        .iter()
        .map(|envelope| format!("{:?}", envelope.message))
        .collect();
    let expected: Vec<String> = ["plain 0", "stream 0", "plain 1", "stream 1"]
        .map(|text| format!("{:?}", Message::text(text)))
        .into();
    assert_eq!(texts, expected);
}

#[tokio::test]
async fn with_redis_down_a_publish_fails_and_is_counted_and_a_read_fails_in_time() {
    let mut redis = OwnRedis::start().await;
    let (_prefix, brokers) = attached(&redis.url(), "stream-down", 1).await;
    let at = &brokers[0];
    let history = History::default();
    publish(at, "a", history).await;
    redis.kill();
    until_ready("the broker", false, || at.broker.is_ready()).await;
    let lost = at.stats.lost();
    let envelope = to_room(at.node, "b".to_owned());
    let failed = within("a publish", at.broker.publish_stream(envelope, history)).await;
    assert!(
        matches!(failed, Err(StreamError::Unavailable(_))),
        "{failed:?}"
    );
    assert_eq!(at.stats.lost(), lost + 1);
    let read = within("a read", at.broker.read_stream("r", 0, history)).await;
    assert!(matches!(read, Err(StreamError::Unavailable(_))), "{read:?}");
}

/// A TCP proxy to a Redis that can swallow Redis's replies, then cut every connection:
/// a link that fails after Redis ran a command and before its answer arrived.
struct MuteProxy {
    url: String,
    mute: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<bool>,
}

impl MuteProxy {
    async fn start(redis_port: u16) -> Self {
        use std::sync::{Arc, atomic::AtomicBool};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}/", listener.local_addr().unwrap());
        let mute = Arc::new(AtomicBool::new(false));
        let (cut, _) = tokio::sync::watch::channel(false);
        let (muted, cuts) = (mute.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
                    .await
                    .unwrap();
                tokio::spawn(Self::pipe(client, server, muted.clone(), cuts.subscribe()));
            }
        });
        Self { url, mute, cut }
    }

    async fn pipe(
        client: tokio::net::TcpStream,
        server: tokio::net::TcpStream,
        mute: std::sync::Arc<std::sync::atomic::AtomicBool>,
        mut cut: tokio::sync::watch::Receiver<bool>,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client_in, mut client_out) = client.into_split();
        let (mut server_in, mut server_out) = server.into_split();
        let up = tokio::io::copy(&mut client_in, &mut server_out);
        let down = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = server_in.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                if !mute.load(Relaxed) && client_out.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = up => {}
            () = down => {}
            _ = cut.wait_for(|cut| *cut) => {}
        }
    }
}

#[tokio::test]
async fn a_publish_whose_answer_is_lost_is_unconfirmed_not_unavailable() {
    use std::sync::atomic::Ordering::Relaxed;
    let redis = OwnRedis::start().await;
    let proxy = MuteProxy::start(redis.port).await;
    let (prefix, brokers) = attached(&proxy.url, "stream-unconfirmed", 1).await;
    let at = &brokers[0];
    proxy.mute.store(true, Relaxed);
    let envelope = to_room(at.node, "a".to_owned());
    let published = at.broker.publish_stream(envelope, History::default());
    // Redis ran the script: the offset is taken and the message published.
    let meta = format!("{{{prefix}:room:r}}:m");
    within("the script to run", async {
        loop {
            let top: Option<u64> = redis.query(redis::cmd("HGET").arg(&meta).arg("o")).await;
            if top == Some(1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let _ = proxy.cut.send(true);
    let answer = within("the answer", published).await;
    assert!(
        matches!(answer, Err(StreamError::Unconfirmed(_))),
        "{answer:?}"
    );
    assert_eq!((at.stats.unconfirmed(), at.stats.lost()), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_stuck_on_a_frozen_redis_gives_up_and_the_next_reads_use_a_new_connection() {
    let redis = OwnRedis::start().await;
    let (_prefix, brokers) = attached(&redis.url(), "stream-frozen", 1).await;
    let at = &brokers[0];
    let history = History::default();
    publish(at, "a", history).await;
    read(at, 0, history).await;
    redis.pause();
    let stuck = within("a read", at.broker.read_stream("r", 0, history)).await;
    assert!(
        matches!(stuck, Err(StreamError::Unavailable(_))),
        "{stuck:?}"
    );
    // Many at once while it stays frozen: each gives up, none hangs.
    let reads = (0..20).map(|_| at.broker.read_stream("r", 0, history));
    for read in within("20 reads", join_all(reads)).await {
        assert!(matches!(read, Err(StreamError::Unavailable(_))), "{read:?}");
    }
    redis.resume();
    // The stuck connection was dropped: a read works again once Redis answers.
    within("a read after the thaw", async {
        while at.broker.read_stream("r", 0, history).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_publish_the_queue_sheds_fails_and_is_counted() {
    let prefix = unique_prefix("stream-shed");
    let broker = RedisBroker::connect(config(&prefix).max_pending_publishes(1))
        .await
        .unwrap();
    let stats = broker.stats();
    broker.start(Inbox::new(NodeId::random(), |_| true));
    // The current-thread runtime runs the link task only when the test awaits: the
    // second publish meets a full queue.
    let history = History::default();
    let first = broker.publish_stream(to_room(NodeId::random(), "a".into()), history);
    let second = broker.publish_stream(to_room(NodeId::random(), "b".into()), history);
    assert_eq!((stats.shed(), stats.lost()), (1, 1));
    assert!(matches!(
        within("the shed publish", second).await,
        Err(StreamError::Unavailable(_))
    ));
    assert_eq!(within("the first publish", first).await.unwrap().offset, 1);
    // Only a room's text or binary message has a stream.
    let mut to_all = to_room(NodeId::random(), "c".into());
    to_all.target = Target::All;
    let refused = broker.publish_stream(to_all, history).await;
    assert_eq!(refused, Err(StreamError::NoHistory));
    let mut ping = to_room(NodeId::random(), String::new());
    ping.message = Message::Ping(Default::default());
    let refused = broker.publish_stream(ping, history).await;
    assert_eq!(refused, Err(StreamError::NotData));
    assert_eq!(stats.lost(), 3);
}
