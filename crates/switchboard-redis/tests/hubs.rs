//! Two hubs in one process, each attached to the real Redis at 127.0.0.1:6379 through
//! its own broker (as two machines would be): room broadcasts, broadcasts to all and
//! sends to an id reach the right clients on both hubs, exactly once; rooms follow
//! their members.
//!
//! Every client reads until it has two texts `end`, one broadcast by each hub last:
//! each hub's publishes reach Redis in order, so what a client has not received by its
//! second `end` was never sent to it.

mod common;

use common::{
    client, end_and_collect, node, read_until_ends, subscribers, two_nodes, unique_prefix,
};
use switchboard::Message;

#[tokio::test]
async fn broadcasts_and_sends_cross_hubs_exactly_once() {
    let (prefix, mut a, mut b) = two_nodes("cross").await;
    let (a1, a1_ws) = client(&mut a, "/chat/red").await;
    let (a2, a2_ws) = client(&mut a, "/ws").await;
    let (b1, b1_ws) = client(&mut b, "/chat/red").await;
    let (b2, b2_ws) = client(&mut b, "/chat/red").await;
    let (b3, b3_ws) = client(&mut b, "/ws").await;
    // Each hub subscribes to everyone's channel and to the rooms it has members in.
    subscribers(&format!("{prefix}:all"), 2).await;
    subscribers(&format!("{prefix}:room:red"), 2).await;

    let readers = [a1_ws, a2_ws, b1_ws, b2_ws, b3_ws].map(|ws| read_until_ends(ws, 2));
    a.hub.to("red").send_text("1 red from a");
    b.hub
        .to("red")
        .except(b1.id())
        .send_text("2 red from b except b1");
    a.hub.send_to(b2.id(), "3 a to b2");
    b.hub.send_to(a2.id(), "4 b to a2");
    b.hub
        .broadcast_except(Message::text("5 all but a1"), a1.id());
    let mut got = end_and_collect(&a, &b, readers).await;
    let expected: [&[&str]; 5] = [
        &["1 red from a", "2 red from b except b1"],
        &["4 b to a2", "5 all but a1"],
        &["1 red from a", "5 all but a1"],
        &[
            "1 red from a",
            "2 red from b except b1",
            "3 a to b2",
            "5 all but a1",
        ],
        &["5 all but a1"],
    ];
    for ((texts, expected), name) in got
        .iter_mut()
        .zip(expected)
        .zip(["a1", "a2", "b1", "b2", "b3"])
    {
        // Local sends and those through Redis interleave; each arrives once.
        texts.sort();
        assert_eq!(texts, expected, "{name}");
    }
    let _ = (b3, a2);
    // What crossed: a published 1, 3 and end; b published 2, 4, 5 and end; each its
    // first heartbeat.
    assert_eq!(a.stats.published(), 3 + 1);
    assert_eq!(b.stats.published(), 4 + 1);
    assert_eq!(a.stats.lost() + b.stats.lost(), 0);
    assert_eq!(a.stats.malformed() + b.stats.malformed(), 0);
}

#[tokio::test]
async fn a_room_is_subscribed_from_the_first_join_to_the_last_leave() {
    let (prefix, mut a, mut b) = two_nodes("rooms").await;
    let room = format!("{prefix}:room:blue");
    let (x, _x_ws) = client(&mut a, "/chat/blue").await;
    let (y, _y_ws) = client(&mut b, "/chat/blue").await;
    let (z, _z_ws) = client(&mut b, "/chat/blue").await;
    subscribers(&room, 2).await;
    assert!(b.hub.leave(&y, "blue"));
    // b still has a member.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    subscribers(&room, 2).await;
    assert!(b.hub.leave(&z, "blue"));
    subscribers(&room, 1).await;
    assert!(a.hub.leave(&x, "blue"));
    assert!(!a.hub.leave(&x, "blue"), "left twice");
    subscribers(&room, 0).await;
    // And back.
    b.hub.join(&z, "blue");
    subscribers(&room, 1).await;
}

#[tokio::test]
async fn a_dropped_hub_leaves_redis() {
    let prefix = unique_prefix("drop");
    let all = format!("{prefix}:all");
    let a = node(&prefix).await;
    subscribers(&all, 1).await;
    drop(a);
    subscribers(&all, 0).await;
}
