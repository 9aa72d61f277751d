//! Readiness follows the link to Redis: a hub on a Redis that dies answers `/ready` 503
//! (while `/health` stays 200), and 200 again only once Redis is back and the hub has
//! subscribed again to its rooms and its node, when messages across hubs flow again.
//!
//! The test starts its own Redis on a free port, so that killing it touches no other
//! test.

mod common;

use common::{
    Node, OwnRedis, client, config, end_and_collect, http_get, node_with, read_until_ends,
    subscribers_at, unique_prefix, within,
};
use std::time::Duration;

/// Waits until `GET /ready` on `node` answers `status`.
async fn ready_becomes(node: &Node, status: u16) -> String {
    within(&format!("/ready to answer {status}"), async {
        loop {
            let (got, body) = http_get(node.addr, "/ready").await;
            if got == status {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn ready_is_503_while_redis_is_down_and_200_once_resubscribed() {
    let mut redis = OwnRedis::start().await;
    let prefix = unique_prefix("ready");
    let config = || config(&prefix).url(redis.url());
    let (mut a, mut b) = (
        node_with(&prefix, config()).await,
        node_with(&prefix, config()).await,
    );
    assert_eq!(ready_becomes(&a, 200).await, "ready");
    ready_becomes(&b, 200).await;
    let (_a1, a1_ws) = client(&mut a, "/chat/green").await;
    let (_b1, b1_ws) = client(&mut b, "/chat/green").await;
    let room = format!("{prefix}:room:green");
    subscribers_at(&redis.url(), &room, 2).await;

    redis.kill();
    // `within` bounds it: 10 s; in practice the link notices the reset at once.
    assert_eq!(ready_becomes(&a, 503).await, "broker not ready");
    ready_becomes(&b, 503).await;
    assert!(!a.hub.is_ready() && !a.hub.is_broker_ready());
    assert_eq!(http_get(a.addr, "/health").await, (200, "ok".to_owned()));

    redis.restart().await;
    ready_becomes(&a, 200).await;
    ready_becomes(&b, 200).await;
    // Ready means resubscribed: Redis counts both hubs on the room, and on each node
    // channel, as soon as both say so (no waiting here).
    let numsub = |channel: String| {
        let url = redis.url();
        async move {
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .unwrap();
            counts[0].1
        }
    };
    assert_eq!(numsub(room.clone()).await, 2);
    assert_eq!(numsub(format!("{prefix}:node:{}", a.hub.node())).await, 1);
    assert_eq!(numsub(format!("{prefix}:node:{}", b.hub.node())).await, 1);

    let readers = [a1_ws, b1_ws].map(|ws| read_until_ends(ws, 2));
    b.hub.to("green").send_text("after the restart");
    let got = end_and_collect(&a, &b, readers).await;
    assert_eq!(got[0], ["after the restart"], "across the hubs");
    assert_eq!(got[1], ["after the restart"], "on its own hub");

    // Draining: not ready, whatever the link, while the process still serves.
    let hub = a.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown(Duration::from_secs(1)).await });
    assert_eq!(ready_becomes(&a, 503).await, "draining");
    assert_eq!(http_get(a.addr, "/health").await, (200, "ok".to_owned()));
    within("shutdown", shutdown).await.unwrap();
}
