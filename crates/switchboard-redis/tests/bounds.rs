//! A hub whose link stalls (its Redis stopped with SIGSTOP) keeps at most
//! `max_pending_publishes` envelopes waiting, sheds the rest and counts them; once
//! Redis runs again, every envelope is accounted for as published or lost.

mod common;

use common::{OwnRedis, config, unique_prefix, until_ready, within};
use std::time::Duration;
use switchboard::{
    Message,
    hub::{Broker, Envelope, Inbox, NodeId, Target},
};
use switchboard_redis::RedisBroker;

const BOUND: u64 = 64;
const BURST: u64 = 5_000;

#[tokio::test]
async fn a_stalled_link_stays_within_its_bound_and_counts_what_it_sheds() {
    let redis = OwnRedis::start().await;
    let prefix = unique_prefix("stall");
    let config = config(&prefix)
        .url(redis.url())
        .max_pending_publishes(BOUND as usize);
    let broker = RedisBroker::new(config).unwrap();
    let (stats, node) = (broker.stats(), NodeId::random());
    broker.start(Inbox::new(node, |_| true));
    until_ready("the broker", true, || broker.is_ready()).await;

    // Resumed by the guard's drop if the test fails while it is stopped.
    redis.pause();
    let mut most = 0;
    for i in 0..BURST {
        broker.publish(Envelope {
            origin: node,
            target: Target::Room(format!("room{}", i % 10)),
            except: None,
            message: Message::text(i.to_string()),
            position: None,
        });
        most = most.max(stats.pending_publishes());
        if i % 50 == 0 {
            // The link task runs: it takes a batch, then waits for the stopped Redis.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(most <= BOUND, "{most} publishes waited");
    assert!(stats.shed() > 0, "nothing was shed: the link did not stall");
    assert!(stats.lost() >= stats.shed());

    redis.resume();
    until_ready("the broker", true, || broker.is_ready()).await;
    within("every publish accounted for", async {
        while stats.published() + stats.lost() != BURST {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(stats.pending_publishes(), 0);
}
