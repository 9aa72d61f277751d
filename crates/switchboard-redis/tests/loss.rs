//! No silent loss: envelopes a hub should have received but did not are counted on
//! the receiving hub (`BrokerStats::missed`), from the gaps in the publishers'
//! numbering, when Redis closes its subscription for its output-buffer limit; a
//! stream's envelopes are not (the hub fills them). Each test runs its own Redis. A
//! subscription cut by a blip is counted the same on every engine: see the suite
//! (`crates/switchboard-suite/tests/cluster/loss.rs`).

mod common;

use common::{OwnRedis, config, subscribers_at, unique_prefix, until_ready, within};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};
use switchboard::{
    Message,
    hub::{Broker, Envelope, Inbox, NodeId, Target},
};
use switchboard_redis::{BrokerStats, RedisBroker};

/// Waits until what `b` was handed plus what it knows it missed is `expected`.
async fn accounted(b: &BrokerStats, base: u64, expected: impl Fn() -> u64) {
    within("every envelope received or counted as missed", async {
        while b.received() + b.missed() - base != expected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Nothing more trickles in: the count is exact, not passing through.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.received() + b.missed() - base, expected());
}

/// A hub that takes envelopes only while `open`: the delivery of a hub stuck behind
/// a slow handler. It waits 20 s at most, so that a failing test still ends.
fn gated_inbox(open: Arc<AtomicBool>) -> Inbox {
    Inbox::new(NodeId::random(), move |_| {
        // Off the worker: tokio cannot steal the task a blocked worker would hold in
        // its LIFO slot (the publishing broker's link task, say), and the test would
        // stall with it.
        tokio::task::block_in_place(|| {
            let began = std::time::Instant::now();
            while !open.load(Relaxed) && began.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        true
    })
}

/// Opens the gate when dropped: a test that fails while it is shut does not leave a
/// worker thread blocked, which the runtime would wait for.
struct Opens(Arc<AtomicBool>);

impl Drop for Opens {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

fn to_room(origin: NodeId, size: usize) -> Envelope {
    Envelope {
        origin,
        target: Target::Room("r".into()),
        except: None,
        message: Message::binary(vec![7u8; size]),
        position: None,
    }
}

// Worker threads: the gated inbox blocks one while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_output_buffer_disconnect_is_counted_as_missed_on_the_receiving_hub() {
    let redis = OwnRedis::start().await;
    let limit = redis::cmd("CONFIG")
        .arg("SET")
        .arg("client-output-buffer-limit")
        .arg("pubsub 64kb 32kb 1")
        .clone();
    let () = redis.query(&limit).await;
    let prefix = unique_prefix("output-buffer");
    let a = RedisBroker::new(config(&prefix).url(redis.url())).unwrap();
    let (a_stats, a_node) = (a.stats(), NodeId::random());
    a.start(Inbox::new(a_node, |_| true));
    let open = Arc::new(AtomicBool::new(true));
    let _opens = Opens(open.clone());
    let b_config = config(&prefix).url(redis.url()).max_pending_deliveries(4);
    let b = RedisBroker::new(b_config).unwrap();
    let b_stats = b.stats();
    b.start(gated_inbox(open.clone()));
    b.subscribe("r");
    until_ready("a", true, || a.is_ready()).await;
    until_ready("b", true, || b.is_ready()).await;
    subscribers_at(&redis.url(), &format!("{prefix}:room:r"), 1).await;
    let mut sent = 0;
    for _ in 0..10 {
        a.publish(to_room(a_node, 16));
        sent += 1;
    }
    accounted(&b_stats, 0, || sent).await;

    // `b` stops taking envelopes: its queue fills, its reader stops reading, the
    // kernel's buffers fill, then Redis's output buffer for `b`, past its limit.
    open.store(false, Relaxed);
    for _ in 0..20_000 {
        a.publish(to_room(a_node, 1024));
        sent += 1;
        // Paced to the link, so that `a` sheds nothing (it would count anyway).
        within("a's queue to drain", async {
            while a_stats.pending_publishes() > 512 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    }
    within("a's publishes to go out", async {
        while a_stats.published() + a_stats.lost() < sent {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    open.store(true, Relaxed);
    within("b to reconnect", async {
        while b_stats.reconnects() == 0 || !b.is_ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for _ in 0..10 {
        a.publish(to_room(a_node, 16));
        sent += 1;
    }
    accounted(&b_stats, 0, || sent).await;
    assert!(b_stats.missed() > 0, "Redis did not cut b off");
    eprintln!("output buffer: {} missed of {sent}", b_stats.missed());
}

// Worker threads: the gated inbox blocks one while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streams_envelope_dropped_with_the_link_is_not_counted_as_missed() {
    // The hub finds a stream's missing offsets and fills them from the stream (and
    // counts its own losses): the broker counting them too would count a loss that
    // never reaches a client.
    let redis = OwnRedis::start().await;
    let prefix = unique_prefix("dropped-stream");
    let a = RedisBroker::new(config(&prefix).url(redis.url())).unwrap();
    let (a_stats, a_node) = (a.stats(), NodeId::random());
    a.start(Inbox::new(a_node, |_| true));
    let open = Arc::new(AtomicBool::new(false));
    let _opens = Opens(open.clone());
    let b_config = config(&prefix).url(redis.url()).max_pending_deliveries(2);
    let b = RedisBroker::new(b_config).unwrap();
    let b_stats = b.stats();
    b.start(gated_inbox(open.clone()));
    b.subscribe("r");
    until_ready("a", true, || a.is_ready()).await;
    until_ready("b", true, || b.is_ready()).await;
    subscribers_at(&redis.url(), &format!("{prefix}:room:r"), 1).await;
    // b's hub takes none: one in its handler, two queued, the reader waiting with one
    // more (and the rest unread).
    let history = switchboard_broker::History::default();
    for _ in 0..10 {
        drop(a.publish_stream(to_room(a_node, 16), history));
    }
    within("a's publishes to go out", async {
        while a_stats.published() < 10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // b's link fails while its reader waits: the publisher's connection is killed,
    // and b's next publish finds out.
    let kill = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .clone();
    let _: i64 = redis.query(&kill).await;
    b.publish(to_room(NodeId::random(), 16));
    within("b to reconnect", async {
        while b_stats.reconnects() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    open.store(true, Relaxed);
    assert_eq!(b_stats.missed(), 0);
}
