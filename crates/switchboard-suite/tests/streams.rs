//! Streams with history on every engine, hub to hub, with tokio-tungstenite clients:
//! a client that comes back, on the hub it left or on another, gets exactly what it
//! missed (with one read of the engine), then live messages; joiners racing publishers on two hubs get one order; members that stay
//! connected through a blip of the engine get every message once, in order; the
//! clients of a hub killed with SIGKILL come back elsewhere with no gap and no
//! duplicate; an engine restarted without its data makes a returning client "not
//! recovered", in a new epoch.
//!
//! Members get each message as `<offset> <epoch> <text>` (the hub's framing), and a
//! client that joins from a position is then told `recovery <recovered> <offset>
//! <epoch> <missed>`.

use futures_util::{StreamExt, future::join_all};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};
use switchboard::{
    Message,
    hub::{Broker, Connection, Handler, History, Hub, HubConfig, Position},
};
use switchboard_suite::{
    Engine,
    engines::broker_from_args,
    support::{ChildHub, Client, Node, child_args, hub_on, serve, serve_child, until, within},
};
use tokio::{
    sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
    task::JoinHandle,
};
use tokio_tungstenite::tungstenite::Message as TMessage;

const ROOM: &str = "r";

/// Room `r` keeps enough history for every test here; members see positions.
fn hub_config() -> HubConfig {
    HubConfig::default()
        .node_heartbeat(Duration::from_secs(3600))
        .history_framed(
            ROOM,
            History::default().max_len(5000),
            |message, position| {
                let text = match message {
                    Message::Text(text) => text.as_str().to_owned(),
                    _ => String::new(),
                };
                Message::text(format!("{} {} {text}", position.offset, position.epoch))
            },
        )
}

/// Joins `r`, from `?offset=N&epoch=E` when given, and then says how it went, to the
/// client and to the test.
struct Joiner(UnboundedSender<()>);

impl Handler for Joiner {
    async fn on_open(&self, conn: &Connection) {
        let since = conn
            .query("offset")
            .and_then(|offset| offset.parse().ok())
            .zip(conn.query("epoch").and_then(|epoch| epoch.parse().ok()));
        if let Some((offset, epoch)) = since {
            let recovery = conn
                .join_from(ROOM, Position::new(offset, epoch))
                .await
                .unwrap();
            let position = recovery
                .position
                .expect("the engine answered: the position is known");
            conn.send_text(format!(
                "recovery {} {} {} {}",
                recovery.recovered, position.offset, position.epoch, recovery.missed
            ));
        } else {
            conn.join(ROOM);
        }
        let _ = self.0.send(());
    }
}

/// A hub serving `/s`; its events say a client has joined.
type StreamNode = Node<UnboundedReceiver<()>>;

async fn node(broker: impl Broker) -> StreamNode {
    let hub = hub_on(broker, hub_config()).await;
    let (joined, events) = unbounded_channel();
    let app = axum::Router::new().route("/s", switchboard::ws(hub.clone(), Joiner(joined)));
    serve(hub, app, events).await
}

/// A client of `addr`, from `since` when given.
async fn connect(addr: SocketAddr, since: Option<Position>) -> Client {
    let query = since.map_or(String::new(), |at| {
        format!("?offset={}&epoch={}", at.offset, at.epoch)
    });
    switchboard_suite::support::connect(addr, &format!("/s{query}")).await
}

/// A client of `node`, from `since` when given, once it has joined.
async fn join(node: &mut StreamNode, since: Option<Position>) -> Client {
    let ws = connect(node.addr, since).await;
    within("the join", node.events.recv()).await.unwrap();
    ws
}

/// What a client got: a message at its position, or how its join from a position went.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Message(Position, String),
    Recovery {
        recovered: bool,
        position: Position,
        missed: usize,
    },
}

fn parse(text: &str) -> Got {
    let words: Vec<&str> = text.splitn(5, ' ').collect();
    if words[0] == "recovery" {
        return Got::Recovery {
            recovered: words[1] == "true",
            position: Position::new(words[2].parse().unwrap(), words[3].parse().unwrap()),
            missed: words[4].parse().unwrap(),
        };
    }
    let (offset, rest) = text.split_once(' ').unwrap();
    let (epoch, text) = rest.split_once(' ').unwrap();
    let position = Position::new(offset.parse().unwrap(), epoch.parse().unwrap());
    Got::Message(position, text.to_owned())
}

/// The next thing the client got; `None` when its connection ended.
async fn next(ws: &mut Client) -> Option<Got> {
    loop {
        match within("a message", ws.next()).await {
            Some(Ok(TMessage::Text(text))) => return Some(parse(text.as_str())),
            Some(Ok(TMessage::Close(_)) | Err(_)) | None => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// The next `n` messages.
async fn messages(ws: &mut Client, n: usize) -> Vec<(Position, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        match next(ws).await {
            Some(Got::Message(position, text)) => got.push((position, text)),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    got
}

async fn publish(hub: &Hub, text: String) -> Position {
    within("a publish", hub.to(ROOM).publish(Message::text(text)))
        .await
        .unwrap()
}

/// What a client got, in order, and the recoveries it was told.
type Followed = (Vec<(Position, String)>, Vec<Got>);

/// Reads until `end`, coming back on `elsewhere` from its last position when its
/// connection ends; counts the messages in `seen`.
fn follow(mut ws: Client, elsewhere: SocketAddr, seen: Arc<AtomicUsize>) -> JoinHandle<Followed> {
    tokio::spawn(async move {
        let (mut got, mut recoveries) = (Vec::new(), Vec::new());
        loop {
            match next(&mut ws).await {
                Some(Got::Message(position, text)) => {
                    let end = text == "end";
                    got.push((position, text));
                    seen.fetch_add(1, Relaxed);
                    if end {
                        return (got, recoveries);
                    }
                }
                Some(recovery) => recoveries.push(recovery),
                None => {
                    let last: Option<&(Position, String)> = got.last();
                    let last = last.expect("a message before the cut").0;
                    ws = connect(elsewhere, Some(last)).await;
                }
            }
        }
    })
}

/// Every offset from 1 to `end`'s, once, in order, in `end`'s epoch, each with the
/// text published at it.
fn assert_gapless(got: &[(Position, String)], end: Position, published: &HashMap<u64, String>) {
    let offsets: Vec<u64> = got.iter().map(|(at, _)| at.offset).collect();
    assert_eq!(offsets, (1..=end.offset).collect::<Vec<_>>());
    for (at, text) in got {
        assert_eq!((at.epoch, text), (end.epoch, &published[&at.offset]));
    }
}

/// Where a client that left comes back; the hub it comes back to publishes while
/// it is away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Back {
    /// On the hub it left, once that hub has forgotten the stream (its room empty).
    SameHub,
    /// On another hub.
    OtherHub,
}

/// A client leaves hub 0 after 10 messages, 500 are published, and it comes back
/// from its position `back` where said: it gets exactly the 500 in order, is told
/// so, then gets live messages; the hub it came back to read the engine once for
/// it, and no hub read it for anything else meanwhile.
async fn back_with_the_500_it_missed<E: Engine>(back: Back) {
    let engine = E::start().await;
    let mut nodes = [node(engine.broker()).await, node(engine.broker()).await];
    let there = match back {
        Back::SameHub => 0,
        Back::OtherHub => 1,
    };
    let mut ws = join(&mut nodes[0], None).await;
    engine.subscribed(ROOM, 1).await;
    for i in 0..10 {
        publish(&nodes[there].hub, format!("before {i}")).await;
    }
    let before = messages(&mut ws, 10).await;
    let last = before[9].0;
    assert_eq!(last.offset, 10);
    ws.close(None).await.unwrap();
    drop(ws);
    // Gone from the room: on hub 0, the stream's state with it.
    until("the room to empty", || nodes[0].hub.room_size(ROOM) == 0).await;

    let mut published = Vec::new();
    for i in 0..500 {
        let text = format!("missed {i}");
        published.push((publish(&nodes[there].hub, text.clone()).await, text));
    }
    // The first client's join read the stream once on hub 0 (twice where the
    // first message overtook that read: a message of a stream not known yet makes
    // a read under way stale, and it is made again; what that second read brings
    // before its live copy comes counts as filled).
    let first = nodes[0].hub.metrics().stream_reads;
    assert!((1..=2).contains(&first), "{first} reads for the first join");
    let before = nodes.each_ref().map(|node| node.hub.metrics().stream_reads);
    let filled = nodes
        .each_ref()
        .map(|node| node.hub.metrics().stream_filled);
    let mut ws = join(&mut nodes[there], Some(last)).await;
    assert_eq!(messages(&mut ws, 500).await, published);
    let told = next(&mut ws).await.unwrap();
    let top = Position::new(510, last.epoch);
    assert_eq!(
        told,
        Got::Recovery {
            recovered: true,
            position: top,
            missed: 500
        }
    );
    for i in 0..5 {
        publish(&nodes[1 - there].hub, format!("live {i}")).await;
    }
    let live: Vec<u64> = messages(&mut ws, 5)
        .await
        .iter()
        .map(|(position, _)| position.offset)
        .collect();
    assert_eq!(live, [511, 512, 513, 514, 515]);
    let hub = &nodes[there].hub;
    let metrics = hub.metrics();
    assert_eq!(
        (metrics.streams_recovered, metrics.streams_not_recovered),
        (1, 0)
    );
    // One read for the recovery (the hub had no state of the stream: it never had
    // one, or forgot it with its last member), none for the live messages.
    let mut reads = before;
    reads[there] += 1;
    let counted = nodes.each_ref().map(|node| node.hub.metrics().stream_reads);
    assert_eq!(counted, reads, "reads of the engine, hub by hub");
    let text = switchboard::metrics::encode(hub);
    for line in [
        "switchboard_stream_recoveries_total{result=\"recovered\"} 1\n".to_owned(),
        "switchboard_stream_recoveries_total{result=\"not_recovered\"} 0\n".to_owned(),
        format!("switchboard_stream_reads_total {}\n", reads[there]),
        format!("switchboard_stream_filled_total {}\n", filled[there]),
    ] {
        assert!(text.contains(&line), "no {line:?} in\n{text}");
    }
    // Nothing was lost since: no gap filled from the engine.
    let counted = nodes
        .each_ref()
        .map(|node| node.hub.metrics().stream_filled);
    assert_eq!(counted, filled, "fills from the engine, hub by hub");
}

async fn a_client_back_on_the_same_hub_gets_exactly_the_500_it_missed_then_live_ones<E: Engine>() {
    back_with_the_500_it_missed::<E>(Back::SameHub).await;
}

async fn a_client_back_on_another_hub_gets_exactly_the_500_it_missed_then_live_ones<E: Engine>() {
    back_with_the_500_it_missed::<E>(Back::OtherHub).await;
}

async fn joiners_racing_publishers_on_two_hubs_get_one_order_without_gap_or_duplicate<E: Engine>() {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 250;
    const JOINERS: usize = 8;
    let engine = E::start().await;
    let mut nodes = [node(engine.broker()).await, node(engine.broker()).await];
    let start = publish(&nodes[0].hub, "start".into()).await;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let hub = nodes[p % 2].hub.clone();
            tokio::spawn(async move {
                let mut positions = Vec::new();
                for i in 0..EACH {
                    let text = format!("p{p}-{i}");
                    let position = hub.to(ROOM).publish(Message::text(text.clone()));
                    positions.push(async move { (position.await.unwrap(), text) });
                    // Spread over the joins.
                    if i % 10 == 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                join_all(positions).await
            })
        })
        .collect();
    let mut clients = Vec::new();
    for j in 0..JOINERS {
        let ws = join(&mut nodes[j % 2], Some(start)).await;
        clients.push(follow(ws, nodes[j % 2].addr, Arc::default()));
    }
    let mut published = HashMap::from([(start.offset, "start".to_owned())]);
    for publisher in publishers {
        let positions = within("the publishers", publisher).await.unwrap();
        published.extend(positions.into_iter().map(|(at, text)| (at.offset, text)));
    }
    let end = publish(&nodes[0].hub, "end".into()).await;
    published.insert(end.offset, "end".to_owned());
    assert_eq!(published.len() as u64, end.offset, "offsets are contiguous");
    for (j, client) in clients.into_iter().enumerate() {
        let (got, recoveries) = within("a joiner", client).await.unwrap();
        // From the position after `start` (the stream's first): every message since,
        // once, in order.
        let mut all = vec![(start, "start".to_owned())];
        all.extend(got);
        assert_gapless(&all, end, &published);
        assert!(
            matches!(
                recoveries[..],
                [Got::Recovery {
                    recovered: true,
                    ..
                }]
            ),
            "joiner {j}: {recoveries:?}"
        );
    }
}

async fn members_that_stay_connected_through_a_blip_get_every_message_once_in_order<E: Engine>() {
    let engine = E::start().await;
    let a = node(engine.broker()).await;
    let mut b = node(engine.broker()).await;
    let ws = join(&mut b, None).await;
    engine.subscribed(ROOM, 1).await;
    let follower = follow(ws, b.addr, Arc::default());
    let mut positions = Vec::new();
    for i in 0..600 {
        let text = format!("m {i}");
        let position = a.hub.to(ROOM).publish(Message::text(text.clone()));
        positions.push(async move { (position.await.unwrap(), text) });
        if i == 100 {
            engine.blip(b.hub.node()).await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let positions = within("the publishes", join_all(positions)).await;
    let mut published: HashMap<u64, String> = positions
        .into_iter()
        .map(|(at, text)| (at.offset, text))
        .collect();
    let end = publish(&a.hub, "end".to_owned()).await;
    published.insert(end.offset, "end".to_owned());
    let (got, recoveries) = within("the member", follower).await.unwrap();
    assert_gapless(&got, end, &published);
    assert!(recoveries.is_empty(), "the member stayed connected");
    let reconnects = b.hub.broker_metrics().map_or(0, |m| m.reconnects);
    assert!(reconnects >= 1, "the blip did not cut the link");
    let filled = b.hub.metrics().stream_filled;
    assert!(filled > 0, "nothing was missed: the test shows nothing");
    eprintln!(
        "{} blip: {filled} filled from the engine, {} reads",
        E::NAME,
        b.hub.metrics().stream_reads
    );
}

async fn the_clients_of_a_killed_hub_come_back_elsewhere_without_gap_or_duplicate<E: Engine>() {
    if let Some(args) = child_args() {
        return serve_child(node(broker_from_args(&args)).await).await;
    }
    const CLIENTS: usize = 4;
    const EACH: usize = 400;
    let engine = E::start().await;
    let (a, b) = (node(engine.broker()).await, node(engine.broker()).await);
    let mut child = ChildHub::start(&engine).await;
    let seen: Vec<Arc<AtomicUsize>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let mut followers = Vec::new();
    for (i, seen) in seen.iter().enumerate() {
        let elsewhere = if i % 2 == 0 { a.addr } else { b.addr };
        let ws = connect(child.addr, None).await;
        followers.push(follow(ws, elsewhere, seen.clone()));
    }
    // The four joins are on the child (not only the first, which subscribed it),
    // so that every client gets the stream from its first message.
    within("the four joins on the child", async {
        while a.hub.cluster().room_size(ROOM).await.value != CLIENTS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    engine.subscribed(ROOM, 1).await;

    // Both hubs publish at once, a message every 2 ms each, not waiting for the
    // engine.
    let publishing = [&a.hub, &b.hub].map(|hub| {
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut positions = Vec::new();
            for i in 0..EACH {
                let text = format!("{} {i}", hub.node());
                let position = hub.to(ROOM).publish(Message::text(text.clone()));
                positions.push(async move { (position.await.unwrap(), text) });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            join_all(positions).await
        })
    });
    until("every client to get 20 messages", || {
        seen.iter().all(|seen| seen.load(Relaxed) >= 20)
    })
    .await;
    child.kill();
    let mut published: HashMap<u64, String> = HashMap::new();
    for publisher in publishing {
        let positions = within("the publishers", publisher).await.unwrap();
        assert_eq!(positions.len(), EACH, "a publisher lost some");
        published.extend(positions.into_iter().map(|(at, text)| (at.offset, text)));
    }
    let end = publish(&a.hub, "end".to_owned()).await;
    published.insert(end.offset, "end".to_owned());
    assert_eq!(published.len() as u64, end.offset, "offsets are contiguous");

    for follower in followers {
        let (got, recoveries) = within("a client", follower).await.unwrap();
        assert_gapless(&got, end, &published);
        // The kill did cut it off, and it recovered.
        assert!(
            matches!(
                recoveries[..],
                [Got::Recovery {
                    recovered: true,
                    ..
                }]
            ),
            "{recoveries:?}"
        );
    }
}

async fn an_engine_restarted_without_its_data_makes_a_returning_client_not_recovered<E: Engine>() {
    let mut engine = E::start().await;
    let mut a = node(engine.broker()).await;
    let mut ws = join(&mut a, None).await;
    engine.subscribed(ROOM, 1).await;
    for i in 0..5 {
        publish(&a.hub, format!("m {i}")).await;
    }
    let last = messages(&mut ws, 5).await[4].0;
    ws.close(None).await.unwrap();

    engine.stop().await;
    engine.restart().await;
    until("the hub to reconnect", || {
        let reconnects = a.hub.broker_metrics().map_or(0, |m| m.reconnects);
        reconnects > 0 && a.hub.is_broker_ready()
    })
    .await;
    let mut back = join(&mut a, Some(last)).await;
    let Some(Got::Recovery {
        recovered,
        position,
        missed,
    }) = next(&mut back).await
    else {
        panic!("expected the recovery");
    };
    assert!(!recovered);
    assert_ne!(position.epoch, last.epoch);
    assert_eq!((position.offset, missed), (0, 0));
    // Live from there, in the new epoch.
    let after = publish(&a.hub, "after".to_owned()).await;
    assert_eq!(after, Position::new(1, position.epoch));
    assert_eq!(messages(&mut back, 1).await, [(after, "after".to_owned())]);
}

switchboard_suite::every_engine!(all;
    a_client_back_on_the_same_hub_gets_exactly_the_500_it_missed_then_live_ones,
    a_client_back_on_another_hub_gets_exactly_the_500_it_missed_then_live_ones,
    joiners_racing_publishers_on_two_hubs_get_one_order_without_gap_or_duplicate,
);

/// On the engines that fail, and whose hubs can be processes of their own.
mod failing {
    use super::*;

    switchboard_suite::every_engine!(failing;
        members_that_stay_connected_through_a_blip_get_every_message_once_in_order,
        the_clients_of_a_killed_hub_come_back_elsewhere_without_gap_or_duplicate,
        an_engine_restarted_without_its_data_makes_a_returning_client_not_recovered,
    );
}
