//! Streams with history on the in-memory engine: rooms whose messages are numbered,
//! kept and recovered by connections that come back with their position, over real
//! sockets with a tokio-tungstenite client: which positions are not recovered
//! (trimmed, too old, another epoch, a forgotten stream), rooms without history, and
//! how a hub fills gaps and drops duplicates over a link that loses. A client back
//! with exactly what it missed, on the same hub or on another, joiners racing
//! publishers, and recovery across an engine's failures are in the one suite every
//! engine runs (`crates/switchboard-suite/tests/streams.rs`).
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
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};
use switchboard::hub::{
    Broker, BrokerMetrics, Connection, Envelope, Epoch, Handler, History, Hub, HubConfig, Inbox,
    MemoryBroker, MemoryNetwork, Position, Recovery, StreamError, StreamFuture, StreamRead,
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
    assert_eq!(recovery.position, Some(Position::new(50, first.epoch)));
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
    assert_eq!(recovery.position, Some(Position::new(2, first.epoch)));
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
    assert_eq!(recovery.position, Some(first));
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
    let position = recovery.position.unwrap();
    assert_ne!(position.epoch, old.epoch);
    assert_eq!(position.offset, 0);
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

/// The memory engine with a link that can fail: it drops the stream deliveries the
/// test names, or all of them while "down" (when `is_ready` is false), and can deliver
/// each one twice. The memory engine itself never loses nor repeats a message, so this
/// is how the hub's gap filling, duplicate dropping and link-blip recovery are tested
/// without an engine of their own; the Redis tests do it with a killed link.
struct Lossy {
    engine: MemoryBroker,
    link: Arc<Link>,
}

#[derive(Default)]
struct Link {
    /// Offsets whose delivery to this hub is lost.
    lose: Mutex<HashSet<u64>>,
    down: AtomicBool,
    twice: AtomicBool,
    /// The engine refuses publishes, as one whose link is down does.
    refuse: AtomicBool,
    reads: AtomicUsize,
    reconnects: AtomicUsize,
}

impl Broker for Lossy {
    fn start(&self, inbox: Inbox) {
        let link = self.link.clone();
        let node = inbox.node();
        self.engine.start(Inbox::new(node, move |envelope| {
            if let Some(position) = envelope.position {
                let lost = link.lose.lock().unwrap().contains(&position.offset);
                if lost || link.down.load(Relaxed) {
                    return true;
                }
                if link.twice.load(Relaxed) {
                    inbox.deliver(envelope);
                }
            }
            inbox.deliver(envelope)
        }));
    }
    fn publish(&self, envelope: Envelope) {
        self.engine.publish(envelope);
    }
    fn subscribe(&self, room: &str) {
        self.engine.subscribe(room);
    }
    fn unsubscribe(&self, room: &str) {
        self.engine.unsubscribe(room);
    }
    fn publish_stream(&self, envelope: Envelope, history: History) -> StreamFuture<Position> {
        if self.link.refuse.load(Relaxed) {
            let down = StreamError::Unavailable("link down".into());
            return Box::pin(std::future::ready(Err(down)));
        }
        self.engine.publish_stream(envelope, history)
    }
    fn read_stream(&self, room: &str, after: u64, history: History) -> StreamFuture<StreamRead> {
        self.link.reads.fetch_add(1, Relaxed);
        self.engine.read_stream(room, after, history)
    }
    fn is_ready(&self) -> bool {
        !self.link.down.load(Relaxed)
    }
    fn metrics(&self) -> Option<BrokerMetrics> {
        let mut metrics = BrokerMetrics::default();
        metrics.reconnects = self.link.reconnects.load(Relaxed) as u64;
        metrics.connected = self.is_ready();
        Some(metrics)
    }
}

/// A hub on a lossy link to `network`'s engine, whose heartbeat (and link watch)
/// ticks every 10 ms.
async fn lossy_node(network: &MemoryNetwork, history: History) -> (Node, Arc<Link>) {
    let link = Arc::new(Link::default());
    let broker = Lossy {
        engine: network.broker(),
        link: link.clone(),
    };
    let config = HubConfig::default()
        .history("news", history)
        .node_heartbeat(Duration::from_millis(10));
    let hub = Hub::with_broker(config, broker);
    let (tx, joined) = unbounded_channel();
    let app = Router::new().route("/stream/{room}", switchboard::ws(hub.clone(), Joiner(tx)));
    (serve(hub, app, joined).await, link)
}

#[tokio::test]
async fn a_gap_is_filled_from_the_engine_before_newer_messages_are_delivered() {
    let network = MemoryNetwork::new();
    let (mut node, link) = lossy_node(&network, History::default()).await;
    let (mut client, _) = join(&mut node, "news", None).await;
    link.lose.lock().unwrap().extend([3, 4, 5]);
    for i in 1..=6 {
        publish(&node.hub, "news", format!("m{i}")).await;
    }
    assert_eq!(texts(&mut client, 6).await, numbered(1..=6));
    let metrics = node.hub.metrics();
    assert_eq!(metrics.stream_filled, 3);
    // One when the client joined (where the stream is), one for the gap.
    assert_eq!((metrics.stream_reads, link.reads.load(Relaxed)), (2, 2));
    publish(&node.hub, "news", "m7".into()).await;
    assert_eq!(texts(&mut client, 1).await, ["m7"]);
}

#[tokio::test]
async fn a_filled_message_still_leaves_out_the_connection_its_send_did() {
    let network = MemoryNetwork::new();
    let (mut node, link) = lossy_node(&network, History::default()).await;
    let (mut sender, _) = join(&mut node, "news", None).await;
    let sender_id = node.hub.room_members("news")[0].id();
    let (mut other, _) = join(&mut node, "news", None).await;
    link.lose.lock().unwrap().insert(1);
    let send = node
        .hub
        .to("news")
        .except(sender_id)
        .publish("from the sender");
    within("publish", send).await.unwrap();
    publish(&node.hub, "news", "m2".into()).await;
    assert_eq!(texts(&mut other, 2).await, ["from the sender", "m2"]);
    assert_eq!(
        texts(&mut sender, 1).await,
        ["m2"],
        "left out, filled or not"
    );
    assert_eq!(node.hub.metrics().stream_filled, 1);
}

#[tokio::test]
async fn what_was_published_while_the_link_was_down_is_delivered_when_it_comes_back() {
    let network = MemoryNetwork::new();
    let (mut node, link) = lossy_node(&network, History::default()).await;
    let (mut client, _) = join(&mut node, "news", None).await;
    publish(&node.hub, "news", "m1".into()).await;
    assert_eq!(texts(&mut client, 1).await, ["m1"]);
    link.down.store(true, Relaxed);
    for i in 2..=4 {
        publish(&node.hub, "news", format!("m{i}")).await;
    }
    // Ticks of the link watch see it down (the count of reconnects stays: the edge
    // alone brings what was missed).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!node.hub.is_broker_ready());
    link.down.store(false, Relaxed);
    // No newer message: the watch alone brings them.
    assert_eq!(texts(&mut client, 3).await, numbered(2..=4));
    assert_eq!(node.hub.metrics().stream_filled, 3);
    publish(&node.hub, "news", "m5".into()).await;
    assert_eq!(texts(&mut client, 1).await, ["m5"]);
    // A blip shorter than a tick: the link never looks down, only the count of
    // reconnects shows it.
    link.lose.lock().unwrap().insert(6);
    publish(&node.hub, "news", "m6".into()).await;
    link.reconnects.fetch_add(1, Relaxed);
    assert_eq!(texts(&mut client, 1).await, ["m6"]);
    nothing_more(&node.hub, &mut client).await;
}

/// Publishes a last message to "news" and checks that it is the next one `client`
/// gets: nothing else came after what the test expected.
async fn nothing_more(hub: &Hub, client: &mut Client) {
    publish(hub, "news", "end".into()).await;
    assert_eq!(texts(client, 1).await, ["end"], "nothing before the end");
}

#[tokio::test]
async fn messages_trimmed_before_their_gap_was_read_are_counted_lost() {
    let network = MemoryNetwork::new();
    let (mut node, link) = lossy_node(&network, History::default().max_len(3)).await;
    let (mut client, _) = join(&mut node, "news", None).await;
    link.lose.lock().unwrap().extend(2..=6);
    for i in 1..=8 {
        publish(&node.hub, "news", format!("m{i}")).await;
    }
    // The engine keeps 6 to 8 when the gap is read: 2 to 5 are gone.
    assert_eq!(texts(&mut client, 4).await, ["m1", "m6", "m7", "m8"]);
    let metrics = node.hub.metrics();
    assert_eq!((metrics.stream_lost, metrics.stream_filled), (4, 1));
    // A send the engine refuses reaches no one, and is counted too.
    link.refuse.store(true, Relaxed);
    assert_eq!(node.hub.to("news").send_text("m9").queued, 0);
    link.refuse.store(false, Relaxed);
    assert_eq!(node.hub.metrics().stream_lost, 5);
    publish(&node.hub, "news", "m10".into()).await;
    assert_eq!(texts(&mut client, 1).await, ["m10"], "nothing in between");
    #[cfg(feature = "metrics")]
    {
        let text = switchboard::metrics::encode(&node.hub);
        let line = "switchboard_stream_lost_total 5\n";
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn held_messages_the_engine_trimmed_meanwhile_are_delivered_not_dropped() {
    let network = MemoryNetwork::new();
    let (mut node, link) = lossy_node(&network, History::default().max_len(3)).await;
    let (mut client, _) = join(&mut node, "news", None).await;
    link.lose.lock().unwrap().extend([6, 10]);
    for i in 1..=10 {
        publish(&node.hub, "news", format!("m{i}")).await;
    }
    // 7 to 9 are held for the gap at 6; the engine keeps 8 to 10 when it is read.
    let mut expected = numbered(1..=5);
    expected.extend(numbered(7..=10));
    assert_eq!(texts(&mut client, 9).await, expected);
    let metrics = node.hub.metrics();
    assert_eq!((metrics.stream_lost, metrics.stream_filled), (1, 1));
    publish(&node.hub, "news", "m11".into()).await;
    assert_eq!(texts(&mut client, 1).await, ["m11"]);
}

#[tokio::test]
async fn members_of_a_stream_that_starts_over_get_its_first_messages_lost_on_the_way() {
    let network = MemoryNetwork::new().max_streams(1);
    let (mut node, link) = lossy_node(&network, History::default()).await;
    let (mut client, _) = join(&mut node, "news", None).await;
    publish(&node.hub, "news", "m1".into()).await;
    assert_eq!(texts(&mut client, 1).await, ["m1"]);
    // Another stream takes the only place: "news" starts over, in a new epoch whose
    // first four messages do not reach the hub.
    let other = Envelope {
        origin: node.hub.node(),
        target: switchboard::hub::Target::Room("other".into()),
        except: None,
        message: switchboard::Message::text("x"),
        position: None,
    };
    network
        .broker()
        .publish_stream(other, History::default())
        .await
        .unwrap();
    link.lose.lock().unwrap().extend(1..=4);
    for i in 1..=5 {
        publish(&node.hub, "news", format!("n{i}")).await;
    }
    let expected: Vec<String> = (1..=5).map(|i| format!("n{i}")).collect();
    assert_eq!(texts(&mut client, 5).await, expected);
    assert_eq!(node.hub.metrics().stream_filled, 4);
    nothing_more(&node.hub, &mut client).await;
}

#[tokio::test]
async fn a_blip_before_a_rooms_first_message_is_filled() {
    let network = MemoryNetwork::new();
    let (mut node, link) = lossy_node(&network, History::default()).await;
    let (mut client, _) = join(&mut node, "news", None).await;
    link.down.store(true, Relaxed);
    for i in 1..=3 {
        publish(&node.hub, "news", format!("m{i}")).await;
    }
    link.reconnects.fetch_add(1, Relaxed);
    link.down.store(false, Relaxed);
    assert_eq!(texts(&mut client, 3).await, numbered(1..=3));
    nothing_more(&node.hub, &mut client).await;
    publish(&node.hub, "news", "m4".into()).await;
    assert_eq!(texts(&mut client, 1).await, ["m4"]);
}

#[tokio::test]
async fn more_held_than_the_engine_keeps_are_delivered_over_their_gap() {
    let network = MemoryNetwork::new();
    let (mut node, link) = lossy_node(&network, History::default().max_len(3)).await;
    let (mut client, _) = join(&mut node, "news", None).await;
    link.lose.lock().unwrap().insert(2);
    for i in 1..=6 {
        publish(&node.hub, "news", format!("m{i}")).await;
    }
    // 3 to 6 held: more than the 3 the engine keeps, so 2 is gone.
    let mut expected = numbered(1..=1);
    expected.extend(numbered(3..=6));
    assert_eq!(texts(&mut client, 5).await, expected);
    assert_eq!(node.hub.metrics().stream_lost, 1);
    nothing_more(&node.hub, &mut client).await;
}

#[tokio::test]
async fn a_hub_holds_at_most_a_thousand_messages_past_a_gap_whatever_the_history() {
    let network = MemoryNetwork::new();
    let (mut node, link) = lossy_node(&network, History::default().max_len(5_000)).await;
    let (mut client, _) = join(&mut node, "news", None).await;
    link.lose.lock().unwrap().insert(2);
    // Sent without a pause: no read of the gap can run before the 1,001st is held.
    for i in 1..=1_003 {
        node.hub.to("news").send_text(format!("m{i}"));
    }
    let mut expected = numbered(1..=1);
    expected.extend(numbered(3..=1_003));
    assert_eq!(texts(&mut client, 1_002).await, expected);
    assert_eq!(node.hub.metrics().stream_lost, 1, "2 was given up");
    nothing_more(&node.hub, &mut client).await;
}

#[tokio::test]
async fn a_message_delivered_twice_reaches_members_once() {
    let network = MemoryNetwork::new();
    let (mut node, link) = lossy_node(&network, History::default()).await;
    let (mut client, _) = join(&mut node, "news", None).await;
    link.twice.store(true, Relaxed);
    for i in 1..=3 {
        publish(&node.hub, "news", format!("m{i}")).await;
    }
    link.twice.store(false, Relaxed);
    publish(&node.hub, "news", "m4".into()).await;
    assert_eq!(texts(&mut client, 4).await, numbered(1..=4));
}

#[tokio::test]
async fn members_go_on_live_when_the_stream_comes_back_in_a_new_epoch() {
    let network = MemoryNetwork::new().max_streams(1);
    let mut node = node(
        HubConfig::default().history("*", History::default()),
        &network,
    )
    .await;
    let (mut client, _) = join(&mut node, "one", None).await;
    let old = publish(&node.hub, "one", "m1".into()).await;
    publish(&node.hub, "one", "m2".into()).await;
    // "two" takes the only place: "one" is forgotten, and starts over.
    publish(&node.hub, "two", "x".into()).await;
    let new = publish(&node.hub, "one", "m3".into()).await;
    assert_ne!(new.epoch, old.epoch);
    assert_eq!(new.offset, 1);
    assert_eq!(texts(&mut client, 3).await, numbered(1..=3));
    publish(&node.hub, "one", "end".into()).await;
    assert_eq!(texts(&mut client, 1).await, ["end"]);
}
