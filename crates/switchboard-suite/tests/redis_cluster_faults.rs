//! Hubs on a Redis Cluster (three masters and a replica of each) whose shards fall
//! sick one at a time: a master killed or frozen fails its own shard only, the rooms
//! of the others keep being delivered across hubs throughout, the sick shard's losses
//! are counted, and its rooms come back after the failover or the thaw; a room with
//! history whose slot moves while it is published to reaches its subscribers during
//! the move and after it, every offset once and in order.

mod redis_hubs;

use futures_util::StreamExt;
use redis_hubs::cluster_hub;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};
use switchboard::hub::Hub;
use switchboard_suite::{
    servers::redis_cluster::{RedisCluster, room_channel},
    support::{Client, Node, connect, until, within},
};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A client of `room` on `node`.
async fn client(node: &Node, room: &str) -> Client {
    connect(node.addr, &format!("/chat/{room}")).await
}

/// The next text a client gets.
async fn next_text(ws: &mut Client) -> String {
    loop {
        match within("a message", ws.next()).await {
            Some(Ok(WsMessage::Text(text))) => return text.as_str().to_owned(),
            Some(Ok(_)) => {}
            other => panic!("the client's connection ended: {other:?}"),
        }
    }
}

/// The texts a client gets up to `last` (included).
async fn texts_until(ws: &mut Client, last: &str) -> Vec<String> {
    let mut texts = Vec::new();
    loop {
        let text = next_text(ws).await;
        let done = text.ends_with(last);
        texts.push(text);
        if done {
            return texts;
        }
    }
}

/// Publishes `m<n>` from `hub` to every room every 10 ms until stopped; how many
/// rounds were sent.
struct Publisher {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Publisher {
    fn start(hub: &Hub, rooms: Vec<String>) -> Self {
        let (stop, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let task = tokio::spawn({
            let (hub, stop, sent) = (hub.clone(), stop.clone(), sent.clone());
            async move {
                while !stop.load(Relaxed) {
                    let n = sent.load(Relaxed);
                    for room in &rooms {
                        hub.to(room).send_text(format!("m{n}"));
                    }
                    sent.store(n + 1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Self { stop, sent, task }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Relaxed)
    }

    /// Returns once `more` more rounds went out.
    async fn until_more(&self, more: u64) {
        let target = self.sent() + more;
        until("more publishes", || self.sent() >= target).await;
    }

    /// Stops, and returns how many rounds went out.
    async fn stop(self) -> u64 {
        self.stop.store(true, Relaxed);
        let sent = self.sent.clone();
        self.task.await.unwrap();
        sent.load(Relaxed)
    }
}

/// The numbers of `m<n>` texts a client got up to `m<last>`.
async fn numbers_until(ws: &mut Client, last: u64) -> Vec<u64> {
    let texts = texts_until(ws, &format!("m{last}")).await;
    texts
        .iter()
        .map(|text| text[1..].parse().unwrap())
        .collect()
}

/// One room per master, a client of hub `b` in each, `a` publishing to all of them;
/// `sick` (a master) falls sick through `fall_sick` and heals through `heal`. The
/// rooms of the other masters get every message, in order, throughout; the sick one's
/// resume, and what it lost is counted.
async fn the_other_shards_deliver_while_one_is_sick(
    mut cluster: RedisCluster,
    fall_sick: impl FnOnce(&mut RedisCluster, u16),
    heal: impl FnOnce(&mut RedisCluster, u16),
) {
    let ((a, a_stats), (b, b_stats)) = (cluster_hub(&cluster).await, cluster_hub(&cluster).await);
    let rooms = cluster.rooms_on_each_master("r").await;
    let mut clients = Vec::new();
    for (room, _) in &rooms {
        clients.push(client(&b, room).await);
        cluster.until_subscribers(&room_channel(room), 1).await;
    }
    let publisher = Publisher::start(&a.hub, rooms.iter().map(|(room, _)| room.clone()).collect());
    publisher.until_more(20).await;
    let sick = rooms[0].1;
    fall_sick(&mut cluster, sick);
    // Both hubs see the sick shard: `a` counts what it could not publish there, and
    // `b` is not ready (it would miss that room).
    until("a to count the sick shard's publishes", || {
        a_stats.lost() + a_stats.unconfirmed() > 0
    })
    .await;
    until("b to be unready", || !b.hub.is_ready()).await;
    publisher.until_more(100).await;
    heal(&mut cluster, sick);
    cluster.until_ok().await;
    until("a to be ready again", || a.hub.is_ready()).await;
    until("b to be ready again", || b.hub.is_ready()).await;
    publisher.until_more(20).await;
    let last = publisher.stop().await;
    // A last message on every room, once every shard is back: the sick room's resumed.
    for (room, _) in &rooms {
        a.hub.to(room).send_text(format!("m{last}"));
    }
    for (index, ((room, _), ws)) in rooms.iter().zip(&mut clients).enumerate() {
        let numbers = numbers_until(ws, last).await;
        if index == 0 {
            // Not in order: a frozen master runs what it had buffered when it thaws,
            // perhaps after what the hub published on its new connection.
            assert!(
                (numbers.len() as u64) < last + 1,
                "{room}: the sick shard lost something"
            );
        } else {
            let every: Vec<u64> = (0..=last).collect();
            assert_eq!(
                numbers, every,
                "{room}, on a healthy shard, got every message in order"
            );
        }
    }
    // Nothing silent: what the sick room did not get is counted on one side or the other.
    assert!(a_stats.lost() + a_stats.unconfirmed() + b_stats.missed() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_its_shard_alone() {
    let cluster = RedisCluster::start().await;
    the_other_shards_deliver_while_one_is_sick(
        cluster,
        |cluster, sick| cluster.kill(sick),
        // Its replica takes over: nothing to do but wait.
        |_, _| {},
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_fails_its_shard_alone() {
    let cluster = RedisCluster::start().await;
    the_other_shards_deliver_while_one_is_sick(
        cluster,
        |cluster, sick| cluster.pause(sick),
        // Thawed after its replica took over (the cluster's node timeout is a second):
        // it rejoins as a replica.
        |cluster, sick| cluster.resume(sick),
    )
    .await;
}

/// A stream room's slot moves while `a` publishes into it, in the steps
/// `redis-cli --cluster reshard` takes; the move is held open after its keys went
/// over, when the old master answers the publish script with `ASK` and subscribers
/// stay on it: what `a` publishes then reaches `b`'s client during the move. After
/// it, the room's offsets all arrived, once each and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_room_is_delivered_while_its_slot_moves() {
    let cluster = RedisCluster::start().await;
    let ((a, a_stats), (b, _)) = (cluster_hub(&cluster).await, cluster_hub(&cluster).await);
    let (room, from) = cluster.rooms_on_each_master("h").await.remove(0);
    let slot = cluster.keyslot(&room_channel(&room)).await;
    let masters = cluster.masters().await;
    let to = *masters.iter().find(|&&master| master != from).unwrap();
    let mut ws = client(&b, &room).await;
    cluster.until_subscribers(&room_channel(&room), 1).await;
    a.hub.to(&room).send_text("before");
    assert_eq!(next_text(&mut ws).await, "1 before");

    let moving = cluster.begin_move(slot, to).await;
    let publisher = Publisher::start(&a.hub, vec![room.clone()]);
    publisher.until_more(10).await;
    let keys = moving.keys().await;
    assert_eq!(keys.len(), 2, "the stream's two keys: {keys:?}");
    moving.migrate_keys().await;
    // The keys are on `to`, the slot still `from`'s: publishes are ASKed over, and a
    // message published now reaches `b` while the move is held open.
    let during = publisher.sent() + 5;
    publisher.until_more(5).await;
    let texts = texts_until(&mut ws, &format!(" m{during}")).await;
    assert!(!texts.is_empty());
    cluster.end_move(&moving).await;
    assert_eq!(cluster.master_of(slot).await, to);
    cluster.until_subscribers(&room_channel(&room), 1).await;
    until("b to be ready again", || b.hub.is_ready()).await;
    publisher.until_more(10).await;
    let last = publisher.stop().await;
    a.hub.to(&room).send_text(format!("m{last}"));
    let rest = texts_until(&mut ws, &format!(" m{last}")).await;
    let offsets: Vec<u64> = [vec!["1 before".to_owned()], texts, rest]
        .concat()
        .iter()
        .map(|text| text.split(' ').next().unwrap().parse().unwrap())
        .collect();
    // "before", then m0 to m<last>.
    let every: Vec<u64> = (1..=last + 2).collect();
    assert_eq!(offsets, every, "every offset once, in order");
    // Every publish was published: none lost, none unanswered.
    assert_eq!(a_stats.lost() + a_stats.unconfirmed(), 0);
}
