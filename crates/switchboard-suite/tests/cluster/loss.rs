//! No silent loss: what a hub should have received but did not, because its link to
//! the engine blipped, is counted as missed on the receiving hub (`BrokerMetrics`),
//! from the gaps in the publishers' numbering.

use futures_util::StreamExt;
use std::time::Duration;
use switchboard::hub::{BrokerMetrics, Connection, Handler, Hub, HubConfig};
use switchboard_suite::{
    Engine,
    support::{Client, connect, hub, serve, until, within},
};
use tokio_tungstenite::tungstenite::Message as TMessage;

/// Joins the route's `{room}` on open.
struct Joiner;

impl Handler for Joiner {
    async fn on_open(&self, conn: &Connection) {
        if let Some(room) = conn.param("room") {
            conn.join(room);
        }
    }
}

fn metrics(hub: &Hub) -> BrokerMetrics {
    hub.broker_metrics()
        .expect("an engine that can fail counts")
}

/// What `hub` was handed plus what it knows it missed.
fn accounted_for(hub: &Hub) -> u64 {
    let metrics = metrics(hub);
    metrics.received + metrics.missed
}

/// What `hub` published, whether the engine took it or the hub lost it (its link
/// failed): a receiving hub gets it or counts it as missed either way.
fn sent(hub: &Hub) -> u64 {
    let metrics = metrics(hub);
    metrics.published + metrics.lost
}

/// Returns once what `b` accounts for past `base` is `expected()`, and stays so:
/// the count is exact, not passing through.
async fn accounted(b: &Hub, base: u64, expected: impl Fn() -> u64) {
    until("every envelope received or counted as missed", || {
        accounted_for(b) - base == expected()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(accounted_for(b) - base, expected());
}

/// Returns once `a`'s start-up traffic (its heartbeat) is behind it: a probe `a`
/// publishes after it on the same link has reached `member` (on the other hub), and
/// `a` counts the probe published. The engine hands a publisher's envelopes over in
/// order, so none of `a`'s is in flight to the other hub any more.
async fn settle(a: &Hub, member: &mut Client) {
    let before = sent(a);
    a.to("r").send_text("settled");
    within("the probe", async {
        while let Some(Ok(message)) = member.next().await {
            if matches!(&message, TMessage::Text(text) if text.as_str() == "settled") {
                return;
            }
        }
        panic!("the member's connection ended");
    })
    .await;
    until("a to count the probe", || sent(a) > before).await;
}

async fn what_a_blip_drops_is_counted_as_missed_on_the_receiving_hub<E: Engine>() {
    let engine = E::start().await;
    // One heartbeat, at start: the counts are not blurred by more.
    let config = HubConfig::default().node_heartbeat(Duration::from_secs(3600));
    let a = hub(&engine, config.clone()).await;
    let b = hub(&engine, config).await;
    let app = axum::Router::new().route("/chat/{room}", switchboard::ws(b.clone(), Joiner));
    let b_node = serve(b.clone(), app, ()).await;
    let mut member = connect(b_node.addr, "/chat/r").await;
    engine.subscribed("r", 1).await;
    settle(&a, &mut member).await;
    // From here, everything `a` publishes is for `b` (all, its node, its room).
    let (a_base, b_base) = (sent(&a), accounted_for(&b));
    let published = || sent(&a) - a_base;
    // `b` hears `a` on the room before the cut: a gap needs a number to start from.
    for i in 0..100 {
        a.to("r").send_text(format!("before {i}"));
    }
    accounted(&b, b_base, published).await;

    let publishing = async {
        for i in 0..600 {
            a.to("r").send_text(format!("during {i}"));
            if i == 100 {
                engine.blip(b.node()).await;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    within("publishing across the cut", publishing).await;
    until("b to be ready again", || b.is_broker_ready()).await;
    for i in 0..100 {
        a.to("r").send_text(format!("after {i}"));
    }
    accounted(&b, b_base, published).await;
    let b_metrics = metrics(&b);
    assert!(b_metrics.reconnects >= 1, "the blip did not cut the link");
    assert!(
        b_metrics.missed > 0,
        "nothing was lost: the test shows nothing"
    );
    eprintln!(
        "{} blip: {} missed, {} received",
        E::NAME,
        b_metrics.missed,
        b_metrics.received
    );
}

switchboard_suite::every_engine!(failing; what_a_blip_drops_is_counted_as_missed_on_the_receiving_hub);
