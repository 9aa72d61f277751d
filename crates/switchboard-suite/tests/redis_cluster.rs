//! Hubs on a Redis Cluster of three masters (and a replica of each) that each test
//! starts: rooms on every shard reach WebSocket clients across hubs; a master killed
//! while a hub publishes fails over to its replica and delivery resumes, what was lost
//! counted and a room with history gapless; a room whose slot moves to another master
//! follows it.

mod redis_hubs;

use redis_hubs::{Traffic, cluster_hub, count, member};
use std::time::Duration;
use switchboard_suite::{
    servers::redis_cluster::{RedisCluster, query, room_channel},
    support::{until, within},
};

/// Returns once `hubs` hubs are subscribed to `room` on the master on `port`.
async fn until_subscribed(port: u16, room: &str, hubs: usize) {
    let channel = room_channel(room);
    let numsub = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg(&channel)
        .clone();
    within(&format!("{hubs} subscribers on {channel}"), async {
        loop {
            let counts: Vec<(String, usize)> = query(port, &numsub).await.unwrap_or_default();
            if counts.first().is_some_and(|(_, count)| *count == hubs) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_every_shard_reach_clients_across_hubs() {
    let cluster = RedisCluster::start().await;
    // A room's channel hashes where its stream's keys do, braces in its name or not.
    for room in ["lobby", "{x}", "a}b", "}", "{", "{}", "a{b}c"] {
        let slot = cluster.keyslot(&room_channel(room)).await;
        for key in [":s", ":m"] {
            let key = format!("{}{key}", room_channel(room));
            assert_eq!(cluster.keyslot(&key).await, slot, "{key}");
        }
    }
    let ((a, a_stats), (b, b_stats)) = (cluster_hub(&cluster).await, cluster_hub(&cluster).await);
    let rooms = cluster.rooms_on_each_master("room").await;
    assert_eq!(rooms.len(), 3);
    let mut clients = Vec::new();
    for (room, master) in &rooms {
        clients.push(member(&b, room).await);
        until_subscribed(*master, room, 1).await;
    }
    for n in 0..10 {
        for (room, _) in &rooms {
            a.hub.to(room).send_text(format!("{room} {n}"));
        }
    }
    for ((room, _), texts) in rooms.iter().zip(&clients) {
        until("ten texts of each room", || count(texts) == 10).await;
        let expected: Vec<String> = (0..10).map(|n| format!("{room} {n}")).collect();
        assert_eq!(*texts.lock().unwrap(), expected);
    }
    assert!(a_stats.published() >= 30);
    assert_eq!(a_stats.lost() + b_stats.missed() + b_stats.malformed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_delivery_resumes() {
    let mut cluster = RedisCluster::start().await;
    let ((a, a_stats), (b, b_stats)) = (cluster_hub(&cluster).await, cluster_hub(&cluster).await);
    // A room with history and one without, on the master about to die.
    let (history, master) = cluster.rooms_on_each_master("h").await.remove(0);
    let plain = cluster.rooms_on_each_master("p").await;
    let (live, _) = plain.into_iter().find(|(_, on)| *on == master).unwrap();
    let traffic = Traffic::new(&a, &b, &live, &history).await;
    until_subscribed(master, &live, 1).await;
    until_subscribed(master, &history, 1).await;

    let failover = async {
        cluster.kill(master);
        cluster.until_ok().await;
    };
    traffic.through(failover, &a_stats, &b_stats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_follows_its_slot_to_another_master() {
    let cluster = RedisCluster::start().await;
    let ((a, a_stats), (b, b_stats)) = (cluster_hub(&cluster).await, cluster_hub(&cluster).await);
    let (room, from) = cluster.rooms_on_each_master("m").await.remove(0);
    let texts = member(&b, &room).await;
    until_subscribed(from, &room, 1).await;
    a.hub.to(&room).send_text("before");
    until("the text before the move", || count(&texts) == 1).await;

    let slot = cluster.keyslot(&room_channel(&room)).await;
    let masters = cluster.masters().await;
    let to = *masters.iter().find(|&&master| master != from).unwrap();
    cluster.move_slot(slot, to).await;
    assert_eq!(cluster.master_of(slot).await, to);
    until_subscribed(to, &room, 1).await;
    until("hub b to be ready again", || b.hub.is_ready()).await;
    // `a` publishes to the old master, which answers MOVED: the publish goes to the
    // new one, and `a` reconnects on the new map.
    a.hub.to(&room).send_text("after");
    until("the text after the move", || count(&texts) == 2).await;
    assert_eq!(*texts.lock().unwrap(), ["before", "after"]);
    assert_eq!(a_stats.lost() + b_stats.malformed(), 0);
    assert!(
        b_stats.reconnects() >= 1,
        "b followed the slot by reconnecting"
    );
}
