//! The queue from a hub to its link task is bounded: a hub that publishes faster than
//! Redis takes its envelopes keeps at most `max_pending_publishes` of them, drops the
//! rest and counts each in `BrokerStats::lost`; room subscriptions are never dropped.

mod common;

use common::{
    client, config, node, node_with, read_until_ends, subscribers, unique_prefix, within,
};
use std::time::Duration;

/// Publishes the test makes while the link task cannot run: far more than the queue holds.
const BURST: u64 = 10_000;
const CAPACITY: usize = 4;

// The default current-thread runtime runs the link task only when the test awaits, so
// the burst below meets a queue that nothing drains: exactly `CAPACITY` publishes fit.
#[tokio::test]
async fn a_full_queue_drops_and_counts_publishes_but_keeps_subscriptions() {
    let prefix = unique_prefix("queue");
    let mut a = node_with(&prefix, config(&prefix).max_pending_publishes(CAPACITY)).await;
    let mut b = node(&prefix).await;
    let (a1, a1_ws) = client(&mut a, "/ws").await;
    let (_b1, _b1_ws) = client(&mut b, "/chat/elsewhere").await;
    let elsewhere = format!("{prefix}:room:elsewhere");
    subscribers(&elsewhere, 1).await;

    // The hub's own heartbeat went out before the burst (it beats at start).
    let before = a.stats.published();
    for i in 0..BURST {
        a.hub.to("elsewhere").send_text(i.to_string());
    }
    // Joined with the queue full: the subscription still reaches Redis.
    a1.join("green");
    assert_eq!(a.stats.lost(), BURST - CAPACITY as u64);

    subscribers(&format!("{prefix}:room:green"), 1).await;
    within("the queued publishes", async {
        while a.stats.published() < before + CAPACITY as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(a.stats.published(), before + CAPACITY as u64);
    assert_eq!(a.stats.lost(), BURST - CAPACITY as u64);

    let reader = read_until_ends(a1_ws, 1);
    b.hub.to("green").send_text("to green from b");
    b.hub.to("green").send_text("end");
    let got = within("a1", reader).await.unwrap();
    assert_eq!(got, ["to green from b"]);
}

/// A queue of 0 is taken as 1: publishes still go out, one waiting at a time.
#[tokio::test]
async fn a_queue_of_zero_holds_one_publish() {
    let prefix = unique_prefix("queue-zero");
    let a = node_with(&prefix, config(&prefix).max_pending_publishes(0)).await;
    assert_eq!(a.stats.lost(), 0);
    for i in 0..BURST {
        a.hub.to("elsewhere").send_text(i.to_string());
    }
    assert_eq!(a.stats.lost(), BURST - 1);
    within("the queued publish", async {
        while a.stats.published() < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}
