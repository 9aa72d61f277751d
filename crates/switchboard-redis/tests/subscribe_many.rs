//! Subscriptions go in batches: 20,000 rooms are subscribed in a few round trips, and
//! subscribed again, all of them, after Redis restarts.

mod common;

use common::{OwnRedis, config, unique_prefix, until_ready, within};
use std::time::{Duration, Instant};
use switchboard::{
    Message,
    hub::{Broker, Envelope, Inbox, NodeId, Target},
};
use switchboard_redis::RedisBroker;
use tokio::sync::mpsc::unbounded_channel;

const ROOMS: usize = 20_000;

/// How many channels of `prefix`'s rooms Redis has subscribers on.
async fn room_channels(redis: &OwnRedis, prefix: &str) -> usize {
    let pattern = format!("{prefix}:room:*");
    let channels: Vec<String> = redis
        .query(redis::cmd("PUBSUB").arg("CHANNELS").arg(pattern))
        .await;
    channels.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_rooms_subscribe_in_batches_and_again_after_a_restart() {
    let mut redis = OwnRedis::start().await;
    let prefix = unique_prefix("many-rooms");
    let b = RedisBroker::new(config(&prefix).url(redis.url())).unwrap();
    let (tx, mut arrived) = unbounded_channel();
    b.start(Inbox::new(NodeId::random(), move |envelope| {
        let _ = tx.send(envelope.clone());
        true
    }));
    until_ready("b", true, || b.is_ready()).await;

    let began = Instant::now();
    for i in 0..ROOMS {
        b.subscribe(&format!("room{i}"));
    }
    within("every room subscribed", async {
        while room_channels(&redis, &prefix).await < ROOMS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    eprintln!("subscribed {ROOMS} rooms in {:?}", began.elapsed());

    redis.kill();
    until_ready("b", false, || b.is_ready()).await;
    redis.restart().await;
    let restarted = Instant::now();
    until_ready("b", true, || b.is_ready()).await;
    eprintln!(
        "resubscribed {ROOMS} rooms {:?} after Redis answered (reconnection wait included)",
        restarted.elapsed()
    );
    assert_eq!(room_channels(&redis, &prefix).await, ROOMS);

    let a = RedisBroker::new(config(&prefix).url(redis.url())).unwrap();
    let a_node = NodeId::random();
    a.start(Inbox::new(a_node, |_| true));
    until_ready("a", true, || a.is_ready()).await;
    for room in ["room0", "room19999"] {
        a.publish(Envelope {
            origin: a_node,
            target: Target::Room(room.into()),
            except: None,
            message: Message::text(room),
            position: None,
        });
        let envelope = loop {
            let envelope = within("the room's envelope", arrived.recv()).await.unwrap();
            // The hub's start-up traffic is not there (no hub here), but be exact.
            if envelope.target == Target::Room(room.into()) {
                break envelope;
            }
        };
        assert_eq!(envelope.message, Message::text(room));
    }
}
