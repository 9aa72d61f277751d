//! What only the NATS engine does, on a `nats-server -js` each test starts: subjects
//! for any room name, a NATS restart (hubs not ready, then ready again, delivering,
//! their losses counted), streams on JetStream (a client back on another hub recovers
//! exactly what it missed; a new epoch when the storage is gone), bounded publishes.
//! The engine-neutral guarantees run on NATS in the shared suite.

use futures_util::{SinkExt, StreamExt};
use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};
use switchboard::{
    Message,
    hub::{Connection, Handler, History, Hub, HubConfig, Position, StreamError},
};
use switchboard_broker::{Broker, Envelope, Inbox, NodeId, Target};
use switchboard_nats::{BrokerStats, NatsBroker, NatsConfig};
use switchboard_suite::{engines::nats, servers::nats::NatsServer};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message as TMessage};

const PREFIX: &str = "t";

/// The room that keeps history here; members see `<offset> <epoch> <text>`.
const STREAM: &str = "history.room";

type Client = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 10 s"))
}

async fn until(what: &str, condition: impl Fn() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn hub_config() -> HubConfig {
    HubConfig::default()
        .node_heartbeat(Duration::from_secs(3600))
        .history_framed(STREAM, History::default().max_len(1000), |message, at| {
            let text = match message {
                Message::Text(text) => text.as_str().to_owned(),
                _ => String::new(),
            };
            Message::text(format!("{} {} {text}", at.offset, at.epoch))
        })
}

/// Joins the room `?room=`, from `&offset=&epoch=` when given (then says `recovery
/// <recovered> <missed>`).
struct Joiner;

impl Handler for Joiner {
    async fn on_open(&self, conn: &Connection) {
        let room = conn.query("room").unwrap_or_default().to_owned();
        let since = conn
            .query("offset")
            .and_then(|offset| offset.parse().ok())
            .zip(conn.query("epoch").and_then(|epoch| epoch.parse().ok()));
        let Some((offset, epoch)) = since else {
            conn.join(&room);
            return;
        };
        let recovery = conn.join_from(&room, Position::new(offset, epoch)).await;
        let recovery = recovery.unwrap();
        conn.send_text(format!(
            "recovery {} {}",
            recovery.recovered, recovery.missed
        ));
    }
}

/// A hub on its own listener, on the NATS at `url`.
struct NatsHub {
    hub: Hub,
    addr: SocketAddr,
    stats: BrokerStats,
    served: JoinHandle<std::io::Result<()>>,
}

impl Drop for NatsHub {
    fn drop(&mut self) {
        self.served.abort();
    }
}

async fn nats_hub(server: &NatsServer) -> NatsHub {
    let broker = nats::broker(&server.url(), PREFIX);
    let stats = broker.stats();
    let hub = Hub::with_broker(hub_config(), broker);
    let app = axum::Router::new().route("/s", switchboard::ws(hub.clone(), Joiner));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn({
        let hub = hub.clone();
        async move { switchboard::serve(listener, app, &hub).await }
    });
    until("the hub is ready", || hub.is_ready()).await;
    NatsHub {
        hub,
        addr,
        stats,
        served,
    }
}

/// `text` as a query parameter.
fn escaped(text: &str) -> String {
    text.bytes().map(|byte| format!("%{byte:02X}")).collect()
}

async fn client(hub: &NatsHub, room: &str, since: Option<Position>) -> Client {
    let from = since.map_or(String::new(), |at| {
        format!("&offset={}&epoch={}", at.offset, at.epoch)
    });
    let url = format!("ws://{}/s?room={}{from}", hub.addr, escaped(room));
    within("connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .0
}

/// The next text the client got.
async fn next(ws: &mut Client) -> String {
    loop {
        match within("a message", ws.next()).await {
            Some(Ok(TMessage::Text(text))) => return text.as_str().to_owned(),
            Some(Ok(TMessage::Ping(_) | TMessage::Pong(_))) => {}
            other => panic!("expected a text, got {other:?}"),
        }
    }
}

/// Parses `<offset> <epoch> <text>`.
fn positioned(text: &str) -> (Position, String) {
    let mut words = text.splitn(3, ' ');
    let offset = words.next().unwrap().parse().unwrap();
    let epoch = words.next().unwrap().parse().unwrap();
    (
        Position::new(offset, epoch),
        words.next().unwrap().to_owned(),
    )
}

/// The subject of `room`'s envelopes, which the tests wait on.
fn subject_of(room: &str) -> String {
    NatsConfig::default().prefix(PREFIX).room_subject(room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_with_dots_spaces_and_wildcards_reach_their_members_only_across_hubs() {
    let server = NatsServer::start().await;
    let (a, b) = (nats_hub(&server).await, nats_hub(&server).await);
    // Past 4 KB, a subject would be a protocol line NATS refuses, closing the link.
    let long = ".".repeat(5_000);
    let rooms = ["lobby", "a.b", "a b", "*", ">", "a.*", "x.>", "", &long];
    let mut clients = Vec::new();
    for room in rooms {
        clients.push(client(&a, room, None).await);
        server.until_subscribers(&subject_of(room), 1).await;
    }
    for room in rooms {
        b.hub.to(room).send(format!("to {room:?}"));
    }
    b.hub.broadcast("to all");
    for (room, ws) in rooms.iter().zip(&mut clients) {
        // Two subjects: no order between them.
        let mut got = [next(ws).await, next(ws).await];
        got.sort();
        assert_eq!(got, [format!("to {room:?}"), "to all".to_owned()]);
    }
    assert_eq!(a.stats.missed(), 0);
    assert_eq!(a.stats.malformed(), 0);
    assert_eq!(a.stats.reconnects() + b.stats.reconnects(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_makes_hubs_unready_then_ready_again_delivering_with_losses_counted() {
    let server = NatsServer::start().await;
    let (a, b) = (nats_hub(&server).await, nats_hub(&server).await);
    let mut ws = client(&a, "r", None).await;
    server.until_subscribers(&subject_of("r"), 1).await;
    b.hub.to("r").send("before");
    assert_eq!(next(&mut ws).await, "before");

    server.kill();
    until("hubs not ready", || !a.hub.is_ready() && !b.hub.is_ready()).await;
    for i in 0..5 {
        b.hub.to("r").send(format!("lost {i}"));
    }
    until("losses counted", || b.stats.lost() >= 5).await;
    server.restart().await;
    until("hubs ready again", || a.hub.is_ready() && b.hub.is_ready()).await;
    assert!(a.stats.reconnects() >= 1 && b.stats.reconnects() >= 1);

    b.hub.to("r").send("after");
    assert_eq!(next(&mut ws).await, "after");
    // B numbered the five it lost: A counts them missed when the next one arrives.
    assert!(a.stats.missed() >= 5, "missed {}", a.stats.missed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_on_another_hub_recovers_exactly_what_it_missed() {
    let server = NatsServer::start().await;
    let (a, b) = (nats_hub(&server).await, nats_hub(&server).await);
    let mut ws = client(&a, STREAM, None).await;
    server.until_subscribers(&subject_of(STREAM), 1).await;
    for i in 0..10 {
        within("publish", b.hub.to(STREAM).publish(format!("before {i}")))
            .await
            .unwrap();
    }
    let mut last = None;
    for i in 0..10u64 {
        let (at, text) = positioned(&next(&mut ws).await);
        assert_eq!((at.offset, text), (i + 1, format!("before {i}")));
        last = Some(at);
    }
    ws.close(None).await.unwrap();

    let mut published = Vec::new();
    for i in 0..100 {
        let text = format!("missed {i}");
        let at = within("publish", b.hub.to(STREAM).publish(text.clone()))
            .await
            .unwrap();
        published.push((at, text));
    }
    let mut back = client(&b, STREAM, last).await;
    let mut got = Vec::new();
    for _ in 0..100 {
        got.push(positioned(&next(&mut back).await));
    }
    assert_eq!(got, published);
    assert_eq!(next(&mut back).await, "recovery true 100");
    within("publish", a.hub.to(STREAM).publish("live"))
        .await
        .unwrap();
    let (at, text) = positioned(&next(&mut back).await);
    assert_eq!((at.offset, text.as_str()), (111, "live"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_gets_a_new_epoch_when_nats_loses_its_storage_but_not_on_a_restart() {
    let server = NatsServer::start().await;
    let a = nats_hub(&server).await;
    let publish = |text: &'static str| within("publish", a.hub.to(STREAM).publish(text));
    let first = publish("one").await.unwrap();
    assert_eq!(first.offset, 1);

    server.restart().await;
    until("ready after the restart", || a.hub.is_ready()).await;
    let kept = publish("two").await.unwrap();
    assert_eq!(kept, Position::new(2, first.epoch), "the storage was kept");

    server.restart_empty().await;
    until("ready after the loss", || a.hub.is_ready()).await;
    let again = publish("three").await.unwrap();
    assert_eq!(again.offset, 1, "a stream made again");
    assert_ne!(again.epoch, first.epoch);
}

/// A broker alone, its inbox a channel.
async fn lone_broker(
    server: &NatsServer,
    config: NatsConfig,
) -> (NatsBroker, NodeId, mpsc::UnboundedReceiver<Envelope>) {
    let broker = NatsBroker::new(config.url(server.url()).prefix(PREFIX)).unwrap();
    let node = NodeId::random();
    let (sender, received) = mpsc::unbounded_channel();
    broker.start(Inbox::new(node, move |envelope| {
        sender.send(envelope.clone()).is_ok()
    }));
    until("the broker is ready", || broker.is_ready()).await;
    (broker, node, received)
}

fn envelope(origin: NodeId, target: Target, text: &str) -> Envelope {
    Envelope {
        origin,
        target,
        except: None,
        message: Message::text(text),
        position: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_traffic_reaches_one_hub_or_every_hub() {
    let server = NatsServer::start().await;
    let (a, a_node, _) = lone_broker(&server, NatsConfig::default()).await;
    let (_b, b_node, mut at_b) = lone_broker(&server, NatsConfig::default()).await;
    let (_c, _, mut at_c) = lone_broker(&server, NatsConfig::default()).await;
    a.publish(envelope(a_node, Target::Node(b_node), "query"));
    a.publish(envelope(a_node, Target::Nodes, "presence"));
    // Two subjects: no order between them.
    let mut at_b_got = Vec::new();
    for _ in 0..2 {
        at_b_got.push(within("at b", at_b.recv()).await.unwrap().message);
    }
    at_b_got.sort_by_key(|message| format!("{message:?}"));
    assert_eq!(
        at_b_got,
        [Message::text("presence"), Message::text("query")]
    );
    assert_eq!(
        within("at c", at_c.recv()).await.unwrap().message,
        Message::text("presence")
    );
    // Whatever reached C before a marker sent after the query came before it.
    a.publish(envelope(a_node, Target::Nodes, "marker"));
    let next = within("the marker at c", at_c.recv()).await.unwrap();
    assert_eq!(
        next.message,
        Message::text("marker"),
        "a query for B reached C"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_publish_queue_sheds_and_counts() {
    let server = NatsServer::start().await;
    let (broker, node, _) =
        lone_broker(&server, NatsConfig::default().max_pending_publishes(4)).await;
    let stats = broker.stats();
    for i in 0..10_000 {
        broker.publish(envelope(node, Target::Room("r".into()), &i.to_string()));
    }
    assert!(stats.shed() > 0, "nothing shed");
    until("every publish settled", || {
        stats.published() + stats.lost() == 10_000
    })
    .await;
    assert!(stats.shed() <= stats.lost());
    assert!(stats.pending_publishes() <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_gets_what_another_hub_broadcasts_after_it_joins() {
    let server = NatsServer::start().await;
    let (a, b) = (nats_hub(&server).await, nats_hub(&server).await);
    let (mut on_a, mut on_b) = (
        client(&a, "both", None).await,
        client(&b, "both", None).await,
    );
    server.until_subscribers(&subject_of("both"), 2).await;
    for i in 0..100 {
        a.hub.to("both").send(format!("from a {i}"));
    }
    for i in 0..100 {
        assert_eq!(next(&mut on_a).await, format!("from a {i}"));
        assert_eq!(next(&mut on_b).await, format!("from a {i}"));
    }
    on_b.send(TMessage::Close(None)).await.unwrap();
    assert_eq!(b.stats.missed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_is_made_again_in_a_new_epoch_that_members_get() {
    let server = NatsServer::start().await;
    let (a, b) = (nats_hub(&server).await, nats_hub(&server).await);
    let mut ws = client(&a, STREAM, None).await;
    server.until_subscribers(&subject_of(STREAM), 1).await;
    let publish = |text: &'static str| within("publish", b.hub.to(STREAM).publish(text));
    let first = publish("one").await.unwrap();
    assert_eq!(positioned(&next(&mut ws).await), (first, "one".to_owned()));

    // What `nats stream rm` does.
    let nats = async_nats::connect(server.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(nats);
    jetstream.delete_stream("t_Shistory_2Eroom").await.unwrap();
    // B made sure of the stream before: the first publish finds it gone, and is lost.
    assert!(matches!(
        publish("lost").await,
        Err(StreamError::Unavailable(_))
    ));
    let again = publish("two").await.unwrap();
    assert_eq!(again.offset, 1);
    assert_ne!(again.epoch, first.epoch);
    assert_eq!(positioned(&next(&mut ws).await), (again, "two".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_client_drops_for_a_slow_hub_is_counted_as_missed() {
    let server = NatsServer::start().await;
    let (sender, node, _) = lone_broker(&server, NatsConfig::default()).await;
    // A hub that takes 1 ms per envelope, with room for one in each queue.
    let slow = NatsBroker::new(
        NatsConfig::default()
            .url(server.url())
            .prefix(PREFIX)
            .max_pending_deliveries(1),
    )
    .unwrap();
    let stats = slow.stats();
    slow.start(Inbox::new(NodeId::random(), |_| {
        std::thread::sleep(Duration::from_millis(1));
        true
    }));
    until("the slow broker is ready", || slow.is_ready()).await;
    const SENT: u64 = 500;
    for i in 0..SENT {
        sender.publish(envelope(node, Target::All, &i.to_string()));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    until("the client dropped some", || stats.slow_consumer() > 0).await;
    // One more after a pause: its number shows the gap before it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    sender.publish(envelope(node, Target::All, "last"));
    until("every envelope received or counted missed", || {
        stats.received() + stats.missed() == SENT + 1
    })
    .await;
    assert!(stats.missed() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_that_does_not_answer_holds_up_neither_envelopes_nor_its_publishes_for_long() {
    let server = NatsServer::start_without_jetstream().await;
    // Takes every JetStream request and answers none: each waits for its timeout.
    let silent = async_nats::connect(server.url()).await.unwrap();
    let _api = silent.subscribe("$JS.API.>").await.unwrap();
    silent.flush().await.unwrap();
    let (a, a_node, _) = lone_broker(&server, NatsConfig::default()).await;
    let (_b, _, mut at_b) = lone_broker(&server, NatsConfig::default()).await;
    let stored = |text| {
        let room = Target::Room(STREAM.into());
        a.publish_stream(envelope(a_node, room, text), History::default())
    };
    let asked = Instant::now();
    let first = stored("stalled");
    a.publish(envelope(a_node, Target::All, "core"));
    let got = within("the envelope at b", at_b.recv()).await.unwrap();
    assert_eq!(got.message, Message::text("core"));
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );

    let refused = within("the stream publish", first).await;
    assert!(matches!(refused, Err(StreamError::Unavailable(_))));
    let waited = asked.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "JetStream's timeout: {waited:?}"
    );
    // The stream's making just failed: the next publish is refused at once.
    let asked = Instant::now();
    let refused = within("the next stream publish", stored("refused")).await;
    assert!(matches!(refused, Err(StreamError::Unavailable(_))));
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(a.stats().lost(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_jetstream_refuses_is_unavailable_and_lost() {
    let server = NatsServer::start().await;
    // The room's stream, made by hand with the limits the hub asks for, and room
    // for 16 bytes a message.
    let nats = async_nats::connect(server.url()).await.unwrap();
    let history = History::default()
        .max_len(5)
        .max_age(Duration::from_secs(60));
    let jetstream = async_nats::jetstream::new(nats);
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "t_Shistory_2Eroom".to_owned(),
            subjects: vec!["t.stream.history_2Eroom".to_owned()],
            max_messages: 5,
            max_age: Duration::from_secs(60),
            max_message_size: 16,
            ..Default::default()
        })
        .await
        .unwrap();
    let (a, a_node, _) = lone_broker(&server, NatsConfig::default()).await;
    let room = Target::Room(STREAM.into());
    let long = "longer than sixteen bytes";
    let refused = within(
        "publish",
        a.publish_stream(envelope(a_node, room, long), history),
    )
    .await;
    assert!(
        matches!(refused, Err(StreamError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(
        (a.stats().lost(), a.stats().unconfirmed()),
        (1, 0),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_message_past_the_server_max_payload_is_refused_without_losing_the_link() {
    let server = NatsServer::start().await;
    let (a, a_node, _) = lone_broker(&server, NatsConfig::default()).await;
    let (_b, _, mut at_b) = lone_broker(&server, NatsConfig::default()).await;
    let history = History::default();
    let stored = |text: &str| {
        let room = Target::Room(STREAM.into());
        a.publish_stream(envelope(a_node, room, text), history)
    };
    // nats-server takes 1 MB a message by default.
    let huge = "x".repeat(2 << 20);
    let refused = within("the huge publish", stored(&huge)).await;
    assert!(
        matches!(refused, Err(StreamError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(a.stats().lost(), 1);
    within("a publish after it", stored("small")).await.unwrap();
    a.publish(envelope(a_node, Target::All, "core"));
    let got = within("the envelope at b", at_b.recv()).await.unwrap();
    assert_eq!(got.message, Message::text("core"));
    assert_eq!(a.stats().reconnects(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_nats_makes_the_hub_unready_within_seconds_and_its_publishes_lost() {
    let server = NatsServer::start().await;
    let (a, a_node, _) = lone_broker(&server, NatsConfig::default()).await;
    let stats = a.stats();
    server.pause();
    let frozen = Instant::now();
    // Two pings unanswered, 2 s apart, and the client gives the link up.
    tokio::time::timeout(Duration::from_secs(10), async {
        while a.is_ready() {
            a.publish(envelope(a_node, Target::All, "into the void"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the hub still ready 10 s after NATS froze");
    let lost = stats.lost();
    for _ in 0..10 {
        a.publish(envelope(a_node, Target::All, "lost"));
    }
    until("the publishes counted lost", || stats.lost() >= lost + 10).await;
    server.resume();
    until("ready again", || a.is_ready()).await;
    assert!(frozen.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_makes_no_stream_and_the_first_publish_keeps_the_epoch_it_answered() {
    let server = NatsServer::start().await;
    let (a, a_node, _) = lone_broker(&server, NatsConfig::default()).await;
    let history = History::default();
    let read = within("a read", a.read_stream(STREAM, 0, history)).await;
    let read = read.unwrap();
    assert_eq!((read.top, read.entries.len()), (0, 0));
    let nats = async_nats::connect(server.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(nats);
    assert!(
        jetstream.get_stream("t_Shistory_2Eroom").await.is_err(),
        "a read made the stream"
    );
    let room = Target::Room(STREAM.into());
    let stored = a.publish_stream(envelope(a_node, room, "first"), history);
    let first = within("the first publish", stored).await.unwrap();
    assert_eq!(first, Position::new(1, read.epoch));
}
