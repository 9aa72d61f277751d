//! The link to Redis breaks (Redis closes every connection, as on a restart or a
//! failover) and comes back: each hub reconnects, subscribes again to what it had, and
//! rooms span both hubs again. What could not be published meanwhile is counted.
//!
//! Its own test binary: it kills every client connection of the Redis server, and
//! cargo runs test binaries one at a time.

mod common;

use common::{REDIS, client, end_and_collect, read_until_ends, subscribers, two_nodes, within};
use std::time::Duration;

async fn kill_clients() {
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for kind in ["pubsub", "normal"] {
        let _: i64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", kind, "SKIPME", "yes"][..])
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn hubs_reconnect_and_resubscribe_after_redis_drops_them() {
    let (prefix, mut a, mut b) = two_nodes("reconnect").await;
    let (_a1, a1_ws) = client(&mut a, "/chat/green").await;
    let (_b1, b1_ws) = client(&mut b, "/chat/green").await;
    let room = format!("{prefix}:room:green");
    subscribers(&room, 2).await;

    // The hubs' heartbeat at start went out before.
    let published_before = a.stats.published();
    kill_clients().await;
    // A publish with the link down is lost and counted, or taken by the new link if
    // the hub has reconnected already; never silently dropped.
    a.hub.to("green").send_text("during the outage");
    within("both hubs to reconnect", async {
        while a.stats.reconnects() == 0 || b.stats.reconnects() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    subscribers(&room, 2).await;
    subscribers(&format!("{prefix}:all"), 2).await;
    let outage_published = a.stats.published() - published_before;
    assert_eq!(outage_published + a.stats.lost(), 1);

    let readers = [a1_ws, b1_ws].map(|ws| read_until_ends(ws, 2));
    b.hub.to("green").send_text("after");
    let got = end_and_collect(&a, &b, readers).await;
    // a1 had its own hub's outage message locally; b1 has it only if it was published
    // (at most once: Redis may take it before b has subscribed again).
    assert!(
        got[0].contains(&"during the outage".to_owned()),
        "{:?}",
        got[0]
    );
    assert!(got[0].contains(&"after".to_owned()), "{:?}", got[0]);
    assert!(got[1].contains(&"after".to_owned()), "{:?}", got[1]);
    if got[1].iter().any(|t| t == "during the outage") {
        assert_eq!(outage_published, 1);
    }
}
