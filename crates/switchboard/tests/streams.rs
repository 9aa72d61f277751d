//! Streams with history on the in-memory engine: rooms whose messages are numbered,
//! kept and recovered by connections that come back with their position, over real
//! sockets with a tokio-tungstenite client.
//!
//! The route `/stream/{room}` joins its room on open: live, or from the position in
//! its query (`?offset=N&epoch=HEX`); the handler reports the [`Recovery`] to the test.

mod common;

use axum::Router;
use common::{
    hub::{Client, HubServer, connect, serve},
    within,
};
use futures_util::StreamExt;
use std::time::Duration;
use switchboard::hub::{
    Broker, Connection, Epoch, Handler, History, Hub, HubConfig, MemoryNetwork, Position, Recovery,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_tungstenite::tungstenite::Message as TMessage;

/// Joins `{room}` from the query's position, or live; reports how.
struct Joiner(UnboundedSender<Option<Recovery>>);

impl Handler for Joiner {
    async fn on_open(&self, conn: &Connection) {
        let room = conn.param("room").unwrap_or("lobby").to_owned();
        let recovery = match since(conn) {
            Some(since) => Some(conn.join_from(&room, since).await.unwrap()),
            None => {
                conn.join(&room);
                None
            }
        };
        let _ = self.0.send(recovery);
    }
}

fn since(conn: &Connection) -> Option<Position> {
    let offset = conn.query("offset")?.parse().ok()?;
    let epoch = conn.query("epoch")?.parse().ok()?;
    Some(Position::new(offset, epoch))
}

type Node = HubServer<UnboundedReceiver<Option<Recovery>>>;

async fn node(config: HubConfig, network: &MemoryNetwork) -> Node {
    let hub = Hub::with_broker(config, network.broker());
    let (tx, joined) = unbounded_channel();
    let app = Router::new().route("/stream/{room}", switchboard::ws(hub.clone(), Joiner(tx)));
    serve(hub, app, joined).await
}

/// A client of `room` from `since` (live with `None`), and how it joined.
async fn join(node: &mut Node, room: &str, since: Option<Position>) -> (Client, Option<Recovery>) {
    let path = match since {
        Some(since) => format!(
            "/stream/{room}?offset={}&epoch={}",
            since.offset, since.epoch
        ),
        None => format!("/stream/{room}"),
    };
    let client = connect(node.addr, &path).await;
    let recovery = within("on_open", node.events.recv()).await.unwrap();
    (client, recovery)
}

/// The next `n` texts a client receives.
async fn texts(client: &mut Client, n: usize) -> Vec<String> {
    let mut texts = Vec::with_capacity(n);
    while texts.len() < n {
        match within("a message", client.next()).await {
            Some(Ok(TMessage::Text(text))) => texts.push(text.to_string()),
            other => panic!("expected text, got {other:?}"),
        }
    }
    texts
}

async fn publish(hub: &Hub, room: &str, text: String) -> Position {
    within("publish", hub.to(room).publish(text)).await.unwrap()
}

fn numbered(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

#[tokio::test]
async fn a_client_back_from_a_disconnection_gets_exactly_the_500_it_missed_then_live_ones() {
    let network = MemoryNetwork::new();
    let config = HubConfig::default().history("news", History::default().max_len(1_000));
    let mut node = node(config, &network).await;
    let (mut first, _) = join(&mut node, "news", None).await;
    let mut seen = Position::new(0, Epoch::from_u64(0));
    for i in 1..=10 {
        seen = publish(&node.hub, "news", format!("m{i}")).await;
    }
    assert_eq!(texts(&mut first, 10).await, numbered(1..=10));
    first.close(None).await.unwrap();
    drop(first);
    for i in 11..=510 {
        publish(&node.hub, "news", format!("m{i}")).await;
    }
    let (mut back, recovery) = join(&mut node, "news", Some(seen)).await;
    let recovery = recovery.unwrap();
    assert!(recovery.recovered);
    assert_eq!(recovery.missed, 500);
    assert_eq!(recovery.position, Position::new(510, seen.epoch));
    publish(&node.hub, "news", "m511".into()).await;
    assert_eq!(texts(&mut back, 501).await, numbered(11..=511));
}

#[tokio::test]
async fn a_position_whose_next_messages_were_trimmed_is_not_recovered() {
    let network = MemoryNetwork::new();
    let config = HubConfig::default().history("news", History::default().max_len(10));
    let mut node = node(config, &network).await;
    let first = publish(&node.hub, "news", "m1".into()).await;
    for i in 2..=50 {
        publish(&node.hub, "news", format!("m{i}")).await;
    }
    let (mut client, recovery) = join(&mut node, "news", Some(first)).await;
    let recovery = recovery.unwrap();
    assert!(!recovery.recovered, "2 to 40 were trimmed");
    assert_eq!(recovery.missed, 0);
    assert_eq!(recovery.position, Position::new(50, first.epoch));
    // Within the last 10: recovered.
    let at_45 = Position::new(45, first.epoch);
    let (mut recent, recovery) = join(&mut node, "news", Some(at_45)).await;
    assert_eq!(recovery.unwrap().missed, 5);
    publish(&node.hub, "news", "m51".into()).await;
    assert_eq!(
        texts(&mut client, 1).await,
        ["m51"],
        "live after the refusal"
    );
    assert_eq!(texts(&mut recent, 6).await, numbered(46..=51));
}

#[tokio::test]
async fn a_position_older_than_max_age_is_not_recovered() {
    let network = MemoryNetwork::new();
    let history = History::default().max_age(Duration::from_millis(100));
    let mut node = node(HubConfig::default().history("news", history), &network).await;
    let (_member, _) = join(&mut node, "news", None).await;
    let first = publish(&node.hub, "news", "m1".into()).await;
    publish(&node.hub, "news", "m2".into()).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (_client, recovery) = join(&mut node, "news", Some(first)).await;
    let recovery = recovery.unwrap();
    assert!(!recovery.recovered, "m2 is too old to be kept");
    assert_eq!(recovery.position, Position::new(2, first.epoch));
    // A position with nothing after it needs nothing kept.
    let at_2 = Position::new(2, first.epoch);
    let (_client, recovery) = join(&mut node, "news", Some(at_2)).await;
    assert!(recovery.unwrap().recovered);
}

#[tokio::test]
async fn a_position_of_another_epoch_is_not_recovered() {
    let network = MemoryNetwork::new();
    let mut node = node(
        HubConfig::default().history("news", History::default()),
        &network,
    )
    .await;
    let first = publish(&node.hub, "news", "m1".into()).await;
    let other = Epoch::from_u64(first.epoch.as_u64() ^ 1);
    let (mut client, recovery) = join(&mut node, "news", Some(Position::new(0, other))).await;
    let recovery = recovery.unwrap();
    assert!(!recovery.recovered);
    assert_eq!(recovery.position, first);
    publish(&node.hub, "news", "m2".into()).await;
    assert_eq!(texts(&mut client, 1).await, ["m2"]);
}

#[tokio::test]
async fn a_stream_forgotten_past_max_streams_comes_back_in_a_new_epoch() {
    let network = MemoryNetwork::new().max_streams(1);
    let config = HubConfig::default().history("*", History::default());
    let mut node = node(config, &network).await;
    let old = publish(&node.hub, "one", "m1".into()).await;
    publish(&node.hub, "two", "m1".into()).await;
    let (_client, recovery) = join(&mut node, "one", Some(old)).await;
    let recovery = recovery.unwrap();
    assert!(!recovery.recovered, "\"one\" was forgotten for \"two\"");
    assert_ne!(recovery.position.epoch, old.epoch);
    assert_eq!(recovery.position.offset, 0);
}

#[tokio::test]
async fn a_room_without_history_is_not_joined_from_a_position_and_not_published_to() {
    let network = MemoryNetwork::new();
    let mut node = node(
        HubConfig::default().history("news", History::default()),
        &network,
    )
    .await;
    let (_client, _) = join(&mut node, "lobby", None).await;
    assert!(node.hub.to("lobby").publish("x").await.is_err());
    assert_eq!(
        node.hub.to("lobby").send_text("x").queued,
        1,
        "today's path"
    );
    assert_eq!(node.hub.history_of("lobby"), None);
    // The memory engine, unused by rooms without history.
    let read = network.broker().read_stream("lobby", 0, History::default());
    assert_eq!(read.await.unwrap().top, 0);
}
