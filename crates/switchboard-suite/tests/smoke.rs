//! The suite's own checks: a hub on each engine reaches a hub on another broker of
//! the same engine (they know each other, and a message goes from a client of one to
//! a client of the other and back), and the engines that `every_engine!` lists under
//! a capability have it.

use futures_util::{SinkExt, StreamExt};
use switchboard::{
    Message,
    hub::{Connection, Handler, HubConfig},
};
use switchboard_suite::{
    Engine,
    support::{Client, connect, hub, serve, sorted, until, within},
};
use tokio_tungstenite::tungstenite::Message as TMessage;

/// Joins `r` on open, and sends what a client says to the room's members on every
/// hub but itself.
struct Relay;

impl Handler for Relay {
    async fn on_open(&self, conn: &Connection) {
        conn.join("r");
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        conn.hub().to("r").except(conn.id()).send(message);
    }
}

async fn said(ws: &mut Client) -> String {
    loop {
        match within("a message", ws.next()).await {
            Some(Ok(TMessage::Text(text))) => return text.as_str().to_owned(),
            Some(Ok(_)) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

async fn a_client_of_each_hub_reaches_the_other<E: Engine>() {
    let engine = E::start().await;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let hub = hub(&engine, HubConfig::default()).await;
        let app = axum::Router::new().route("/r", switchboard::ws(hub.clone(), Relay));
        nodes.push(serve(hub, app, ()).await);
    }
    let both = sorted(nodes.iter().map(|node| node.hub.node()).collect());
    until("each hub knows the other", || {
        nodes.iter().all(|node| node.hub.nodes() == both)
    })
    .await;
    let mut a = connect(nodes[0].addr, "/r").await;
    let mut b = connect(nodes[1].addr, "/r").await;
    engine.subscribed("r", 2).await;
    within("a's message", a.send(TMessage::text("from a")))
        .await
        .unwrap();
    assert_eq!(said(&mut b).await, "from a");
    within("b's message", b.send(TMessage::text("from b")))
        .await
        .unwrap();
    assert_eq!(said(&mut a).await, "from b");
}

switchboard_suite::every_engine!(all; a_client_of_each_hub_reaches_the_other);

/// The engines listed as `failing` can fail, and their hubs cross processes.
async fn failing_engines_fail_and_cross_processes<E: Engine>() {
    assert!(E::CAN_FAIL && E::CROSSES_PROCESSES, "{}", E::NAME);
    assert!(E::start().await.child_args().is_some(), "{}", E::NAME);
}

/// The engines listed as `queued` have a publish queue to bound: their brokers
/// count what they publish.
async fn queued_engines_count_their_publishes<E: Engine>() {
    let engine = E::start().await;
    let hub = hub(&engine, HubConfig::default()).await;
    assert!(hub.broker_metrics().is_some(), "{}", E::NAME);
}

mod failing {
    use super::*;
    switchboard_suite::every_engine!(failing; failing_engines_fail_and_cross_processes);
}

mod queued {
    use super::*;
    switchboard_suite::every_engine!(queued; queued_engines_count_their_publishes);
}
