//! The queue from a hub to the engine is bounded: a hub that publishes faster than
//! the engine takes its envelopes keeps at most its bound of them, drops the rest and
//! counts each as lost; room subscriptions are never dropped.

use super::queries::{QueryNode, client, node_with};
use futures_util::StreamExt;
use std::{future::Future, sync::Arc, time::Duration};
use switchboard::hub::{Hub, HubConfig};
use switchboard_suite::{
    Engine,
    support::{until, within},
};
use tokio_tungstenite::tungstenite::Message as TMessage;

/// Publishes the test makes while the engine's link cannot run: far more than the
/// queue holds.
const BURST: u64 = 10_000;
const CAPACITY: usize = 4;

/// Runs `test` on a current-thread runtime of its own: the link to the engine then
/// runs only when the test awaits, so that a burst meets a queue that nothing
/// drains, and exactly its bound fits.
async fn on_one_thread<E: Engine, F: Future<Output = ()>>(
    test: impl FnOnce(Arc<E>) -> F + Send + 'static,
) {
    let engine = Arc::new(E::start().await);
    let run = move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(test(engine));
    };
    // A panic of the test is the test's failure.
    if let Err(panic) = tokio::task::spawn_blocking(run).await {
        std::panic::resume_unwind(panic.into_panic());
    }
}

/// One heartbeat, at start: the counts are not blurred by more.
fn config() -> HubConfig {
    HubConfig::default().node_heartbeat(Duration::from_secs(3600))
}

async fn node_with_queue<E: Engine>(engine: &E, queue: usize) -> QueryNode {
    node_with(engine.broker_with_queue(queue), config()).await
}

fn published(hub: &Hub) -> u64 {
    hub.broker_metrics()
        .expect("an engine with a queue")
        .published
}

fn lost(hub: &Hub) -> u64 {
    hub.broker_metrics().expect("an engine with a queue").lost
}

async fn a_full_queue_drops_and_counts_publishes_but_keeps_subscriptions<E: Engine>() {
    on_one_thread(|engine: Arc<E>| async move {
        let mut a = node_with_queue(&*engine, CAPACITY).await;
        let mut b = node_with(engine.broker(), config()).await;
        let (a1, mut a1_ws) = client(&mut a, "/ws").await;
        let (_b1, _b1_ws) = client(&mut b, "/chat/elsewhere").await;
        engine.subscribed("elsewhere", 1).await;

        // The hub's own heartbeat went out before the burst (it beats at start).
        let before = published(&a.hub);
        for i in 0..BURST {
            a.hub.to("elsewhere").send_text(i.to_string());
        }
        // Joined with the queue full: the subscription still reaches the engine.
        a1.join("green");
        assert_eq!(lost(&a.hub), BURST - CAPACITY as u64);

        engine.subscribed("green", 1).await;
        until("the queued publishes", || {
            published(&a.hub) >= before + CAPACITY as u64
        })
        .await;
        assert_eq!(published(&a.hub), before + CAPACITY as u64);
        assert_eq!(lost(&a.hub), BURST - CAPACITY as u64);

        b.hub.to("green").send_text("to green from b");
        b.hub.to("green").send_text("end");
        for expected in ["to green from b", "end"] {
            let got = within("a message for a1", a1_ws.next()).await;
            assert!(
                matches!(&got, Some(Ok(TMessage::Text(text))) if text.as_str() == expected),
                "expected {expected:?}, got {got:?}"
            );
        }
    })
    .await;
}

/// A queue of 0 is taken as 1: publishes still go out, one waiting at a time.
async fn a_queue_of_zero_holds_one_publish<E: Engine>() {
    on_one_thread(|engine: Arc<E>| async move {
        let a = node_with_queue(&*engine, 0).await;
        assert_eq!(lost(&a.hub), 0);
        let before = published(&a.hub);
        for i in 0..BURST {
            a.hub.to("elsewhere").send_text(i.to_string());
        }
        assert_eq!(lost(&a.hub), BURST - 1);
        until("the queued publish", || published(&a.hub) > before).await;
    })
    .await;
}

switchboard_suite::every_engine!(queued;
    a_full_queue_drops_and_counts_publishes_but_keeps_subscriptions,
    a_queue_of_zero_holds_one_publish,
);
