//! Presence across hubs, seen by raw V2 clients that apply `presence_state` and
//! `presence_diff` as phoenix.js `Presence` does and count what they got.

use futures_util::{SinkExt, StreamExt, future::join_all};
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard::{
    channels::{Channel, Channels, ChannelsConfig, Endpoint, Socket},
    hub::{Broker, BrokerMetrics, Envelope, History, HubConfig, Inbox, Target},
};
use switchboard_suite::{
    Engine,
    engines::broker_from_args,
    support::{
        ChildHub, Client, Node, child_args, connect, hub_on, serve, serve_child, until, within,
    },
};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const TOPIC: &str = "lobby:main";
const HEARTBEAT: Duration = Duration::from_millis(50);
const NODE_TIMEOUT: Duration = Duration::from_millis(500);

fn hub_config() -> HubConfig {
    HubConfig::default()
        .node_heartbeat(HEARTBEAT)
        .node_timeout(NODE_TIMEOUT)
}

/// `lobby:*`: join params `{"user": name}`; tracks the user with the hub's node as
/// meta and pushes the presence state, as the Phoenix guides' channel does.
struct Lobby;

impl Channel for Lobby {
    async fn join(&self, topic: &str, payload: Value, socket: &Socket) -> Result<Value, Value> {
        let Some(user) = payload.get("user").and_then(Value::as_str) else {
            return Err(json!({"reason": "user required"}));
        };
        let presence = socket.presence();
        let node = socket.connection().id().node().to_string();
        presence
            .track(socket, user, json!({ "node": node }))
            .map_err(|e| json!({"reason": e.to_string()}))?;
        socket.push("presence_state", presence.list(topic));
        Ok(json!({}))
    }
}

/// A hub serving `lobby:*`, whose presence the test reads through its endpoint.
type LobbyNode = Node<Endpoint>;

/// A hub on `broker` serving `lobby:*`, batching presence diffs for `batch`; its
/// topics keep `history`, if given: presence is not part of the stream, and must
/// work the same on such a topic.
async fn lobby_node(broker: impl Broker, batch: Duration, history: Option<History>) -> LobbyNode {
    let hub = hub_on(broker, hub_config()).await;
    let config = ChannelsConfig::default().presence_batch(batch);
    let mut channels = Channels::new(hub.clone()).config(config);
    if let Some(history) = history {
        channels = channels.history("lobby:*", history);
    }
    let channels = channels.channel("lobby:*", Lobby);
    let endpoint = channels.endpoint();
    serve(hub, channels.into_router(), endpoint).await
}

async fn nodes<E: Engine>(engine: &E, n: usize, history: Option<History>) -> Vec<LobbyNode> {
    let batch = Duration::from_millis(20);
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(lobby_node(engine.broker(), batch, history).await);
    }
    nodes
}

fn listed(node: &LobbyNode) -> BTreeMap<String, BTreeSet<String>> {
    refs_of(&node.events.presence().list(TOPIC))
}

/// The presence a client holds, as phoenix.js `Presence` builds it: key → refs; and
/// what it got to build it.
#[derive(Debug, Default, Clone)]
struct View {
    state: BTreeMap<String, BTreeSet<String>>,
    /// How many diffs carried each ref's join, and each ref's leave.
    joins: HashMap<String, usize>,
    leaves: HashMap<String, usize>,
    /// `presence_diff` messages and their bytes.
    diffs: usize,
    diff_bytes: usize,
}

impl View {
    /// phoenix.js `syncDiff`: the joins, then the leaves.
    fn apply_diff(&mut self, diff: &Value, bytes: usize) {
        self.diffs += 1;
        self.diff_bytes += bytes;
        for (key, refs) in refs_of(&diff["joins"]) {
            for reference in refs {
                *self.joins.entry(reference.clone()).or_default() += 1;
                self.state.entry(key.clone()).or_default().insert(reference);
            }
        }
        for (key, refs) in refs_of(&diff["leaves"]) {
            for reference in refs {
                *self.leaves.entry(reference.clone()).or_default() += 1;
                if let Some(held) = self.state.get_mut(&key) {
                    held.remove(&reference);
                    if held.is_empty() {
                        self.state.remove(&key);
                    }
                }
            }
        }
    }

    /// Refs whose join or leave came in more than one diff.
    fn repeated(&self) -> Vec<String> {
        let joins = self.joins.iter().filter(|(_, n)| **n > 1);
        let leaves = self.leaves.iter().filter(|(_, n)| **n > 1);
        joins.chain(leaves).map(|(r, _)| r.clone()).collect()
    }
}

/// `{key: {"metas": [{"phx_ref": …}, …]}}` as key → refs.
fn refs_of(state: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut refs = BTreeMap::new();
    for (key, value) in state.as_object().into_iter().flatten() {
        let metas = value["metas"].as_array().into_iter().flatten();
        let set: BTreeSet<String> = metas
            .filter_map(|m| m["phx_ref"].as_str().map(str::to_owned))
            .collect();
        if !set.is_empty() {
            refs.insert(key.clone(), set);
        }
    }
    refs
}

/// A member: a socket joined to [`TOPIC`] as one user; a task applies what arrives.
struct Member {
    user: String,
    view: Arc<Mutex<View>>,
    reader: JoinHandle<()>,
    writer: futures_util::stream::SplitSink<Client, WsMessage>,
}

impl Member {
    /// Connects to `addr` and joins [`TOPIC`] as `user` (the ok reply is awaited).
    async fn join(addr: SocketAddr, user: &str) -> Self {
        let ws = connect(addr, "/socket/websocket?vsn=2.0.0").await;
        let (mut writer, mut reader) = ws.split();
        let join = json!(["1", "1", TOPIC, "phx_join", {"user": user}]);
        within("send join", writer.send(WsMessage::text(join.to_string())))
            .await
            .unwrap();
        let view = Arc::new(Mutex::new(View::default()));
        let (joined_tx, joined) = tokio::sync::oneshot::channel();
        let applied = view.clone();
        let reader = tokio::spawn(async move {
            let mut joined_tx = Some(joined_tx);
            while let Some(Ok(message)) = reader.next().await {
                let WsMessage::Text(text) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                match value[3].as_str() {
                    Some("phx_reply") => {
                        if let Some(tx) = joined_tx.take() {
                            let _ = tx.send(value[4]["status"] == "ok");
                        }
                    }
                    Some("presence_state") => applied.lock().unwrap().state = refs_of(&value[4]),
                    Some("presence_diff") => {
                        applied.lock().unwrap().apply_diff(&value[4], text.len())
                    }
                    _ => {}
                }
            }
        });
        assert!(within("join reply", joined).await.unwrap(), "join refused");
        Self {
            user: user.to_owned(),
            view,
            reader,
            writer,
        }
    }

    fn view(&self) -> View {
        self.view.lock().unwrap().clone()
    }

    /// Closes the socket, which ends its channel and its presence.
    async fn leave(mut self) {
        let _ = self.writer.send(WsMessage::Close(None)).await;
        let _ = self.writer.close().await;
        let _ = within("the socket to close", &mut self.reader).await;
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn until_they_know_each_other(nodes: &[LobbyNode]) {
    until("every hub knows every hub", || {
        nodes.iter().all(|n| n.hub.nodes().len() == nodes.len())
    })
    .await;
}

/// Returns once every hub lists `expected` users and every member's view equals its
/// hub's list.
async fn until_converged(nodes: &[LobbyNode], members: &[&Member], expected: usize) {
    until("every hub and client lists the same", || {
        let lists: Vec<_> = nodes.iter().map(listed).collect();
        let agreed = lists.iter().all(|l| l.len() == expected && *l == lists[0]);
        agreed && members.iter().all(|m| m.view().state == lists[0])
    })
    .await;
}

fn assert_once(members: &[&Member]) {
    for member in members {
        let view = member.view();
        assert!(
            view.repeated().is_empty(),
            "{} got changes more than once: {:?}",
            member.user,
            view.repeated()
        );
    }
}

/// Joins `per_node` users on every hub (all at once); returns them, hub by hub.
async fn join_everywhere(nodes: &[LobbyNode], per_node: usize) -> Vec<Member> {
    let users: Vec<(SocketAddr, String)> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, node)| (0..per_node).map(move |j| (node.addr, format!("user-{i}-{j}"))))
        .collect();
    join_all(users.iter().map(|(addr, user)| Member::join(*addr, user))).await
}

async fn lists_agree_and_each_change_arrives_once(nodes: Vec<LobbyNode>) {
    until_they_know_each_other(&nodes).await;
    let mut members = join_everywhere(&nodes, 3).await;
    let all: Vec<&Member> = members.iter().collect();
    until_converged(&nodes, &all, 9).await;
    // Every member's own join and every later one came as a diff, once; the earlier
    // ones were in its presence_state.
    assert_once(&all);
    // One member per hub leaves: every other member sees each leave once.
    let leaving: Vec<Member> = [6, 3, 0].iter().map(|&i| members.remove(i)).collect();
    let left: Vec<String> = leaving
        .iter()
        .flat_map(|m| m.view().state.get(&m.user).cloned().unwrap_or_default())
        .collect();
    assert_eq!(left.len(), 3);
    for member in leaving {
        member.leave().await;
    }
    let rest: Vec<&Member> = members.iter().collect();
    until_converged(&nodes, &rest, 6).await;
    assert_once(&rest);
    for member in &rest {
        let view = member.view();
        for reference in &left {
            assert_eq!(view.leaves.get(reference), Some(&1), "{}", member.user);
        }
    }
}

async fn three_hubs_list_the_same_and_each_change_arrives_once<E: Engine>() {
    let engine = E::start().await;
    lists_agree_and_each_change_arrives_once(nodes(&engine, 3, None).await).await;
}

async fn on_a_topic_with_history_three_hubs_list_the_same_and_each_change_arrives_once<
    E: Engine,
>() {
    let engine = E::start().await;
    let nodes = nodes(&engine, 3, Some(History::default())).await;
    lists_agree_and_each_change_arrives_once(nodes).await;
}

async fn a_hub_that_shuts_down_takes_its_entries_with_it<E: Engine>() {
    let engine = E::start().await;
    let mut nodes = nodes(&engine, 3, None).await;
    until_they_know_each_other(&nodes).await;
    let mut members = join_everywhere(&nodes, 2).await;
    let all: Vec<&Member> = members.iter().collect();
    until_converged(&nodes, &all, 6).await;
    let gone = nodes.pop().unwrap();
    let started = Instant::now();
    let shutdown = tokio::spawn(async move { gone.hub.shutdown(Duration::from_secs(1)).await });
    members.truncate(4); // The last two were on the hub that shut down.
    let rest: Vec<&Member> = members.iter().collect();
    until_converged(&nodes, &rest, 4).await;
    // Its sockets' leaves, or its goodbye, make it well before node_timeout (500 ms).
    let took = started.elapsed();
    assert!(took < Duration::from_millis(400), "{took:?}");
    shutdown.await.unwrap();
    assert_once(&rest);
}

async fn a_late_hub_gets_every_entry_and_everyone_gets_its<E: Engine>() {
    let engine = E::start().await;
    let mut nodes = nodes(&engine, 2, None).await;
    until_they_know_each_other(&nodes).await;
    let mut members = join_everywhere(&nodes, 2).await;
    nodes.extend(self::nodes(&engine, 1, None).await);
    until_they_know_each_other(&nodes).await;
    members.push(Member::join(nodes[2].addr, "late").await);
    let all: Vec<&Member> = members.iter().collect();
    until_converged(&nodes, &all, 5).await;
    assert_once(&all);
}

async fn presence_converges_after_the_engine_restarts<E: Engine>() {
    let mut engine = E::start().await;
    let nodes = nodes(&engine, 3, None).await;
    until_they_know_each_other(&nodes).await;
    let mut members = join_everywhere(&nodes, 2).await;
    let all: Vec<&Member> = members.iter().collect();
    until_converged(&nodes, &all, 6).await;
    engine.stop().await;
    // Cut off for longer than node_timeout: each hub takes the others for dead and
    // its clients see their users leave, then come back once the engine does.
    until("the hubs take each other for dead", || {
        nodes.iter().all(|n| n.hub.nodes().len() == 1)
    })
    .await;
    // Changes made while the hubs cannot reach each other.
    members.remove(0).leave().await;
    members.push(Member::join(nodes[2].addr, "while-down").await);
    engine.restart().await;
    let all: Vec<&Member> = members.iter().collect();
    until_converged(&nodes, &all, 6).await;
    // Listed once: one meta under its key, not a second entry of the same socket.
    let list = nodes[1].events.presence().list(TOPIC);
    let while_down = list["while-down"]["metas"].as_array().map_or(0, Vec::len);
    assert_eq!(while_down, 1, "{list}");
}

/// A hub killed with SIGKILL (a real process, without a goodbye) loses its entries on
/// every other hub, and in every client's list, within `node_timeout` and a
/// heartbeat.
async fn a_killed_hub_leaves_every_list_within_node_timeout<E: Engine>() {
    if let Some(args) = child_args() {
        let batch = Duration::from_millis(20);
        return serve_child(lobby_node(broker_from_args(&args), batch, None).await).await;
    }
    let engine = E::start().await;
    let mut child = ChildHub::start(&engine).await;
    let nodes = nodes(&engine, 2, None).await;
    until("the three hubs know each other", || {
        nodes.iter().all(|n| n.hub.nodes().len() == 3)
    })
    .await;
    let mut members = Vec::new();
    for (addr, name) in [
        (nodes[0].addr, "a"),
        (nodes[1].addr, "b"),
        (child.addr, "child"),
    ] {
        for i in 0..2 {
            members.push(Member::join(addr, &format!("{name}{i}")).await);
        }
    }
    let survivors: Vec<&Member> = members[..4].iter().collect();
    until_converged(&nodes, &survivors, 6).await;
    let killed = Instant::now();
    // SIGKILL: no goodbye, no close of its sockets' presences.
    child.kill();
    until_converged(&nodes, &survivors, 4).await;
    let took = killed.elapsed();
    println!(
        "presence of a SIGKILLed hub removed everywhere in {took:?} (node_timeout {NODE_TIMEOUT:?}, heartbeat {HEARTBEAT:?})"
    );
    // Taken for dead after node_timeout of silence, found by the next heartbeat
    // tick; the leaves go out at once (they are not batched). 250 ms of slack for a
    // loaded machine.
    let bound = NODE_TIMEOUT + HEARTBEAT + Duration::from_millis(250);
    assert!(took <= bound, "took {took:?}, more than {bound:?}");
    assert_once(&survivors);
    for member in survivors {
        assert!(!member.view().state.keys().any(|k| k.starts_with("child")));
    }
}

/// A broker that counts what its hub publishes to the other hubs about presence.
struct Counting<B> {
    inner: B,
    casts: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl<B: Broker> Broker for Counting<B> {
    fn start(&self, inbox: Inbox) {
        self.inner.start(inbox);
    }

    fn publish(&self, envelope: Envelope) {
        if let (Target::Nodes, switchboard::Message::Text(text)) =
            (&envelope.target, &envelope.message)
        {
            if text.as_str().contains(r#""service":"presence""#) {
                self.casts.fetch_add(1, Relaxed);
                self.bytes.fetch_add(text.len(), Relaxed);
            }
        }
        self.inner.publish(envelope);
    }

    fn subscribe(&self, room: &str) {
        self.inner.subscribe(room);
    }

    fn unsubscribe(&self, room: &str) {
        self.inner.unsubscribe(room);
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    fn metrics(&self) -> Option<BrokerMetrics> {
        self.inner.metrics()
    }
}

async fn a_large_topic_gets_one_diff_per_batch_not_one_per_join<E: Engine>() {
    const MEMBERS: usize = 400;
    const RATE: f64 = 2_000.0; // joins per second: 0.2 s of joins
    let engine = E::start().await;
    let (casts, bytes) = (Arc::default(), Arc::default());
    let counting = Counting {
        inner: engine.broker(),
        casts: Arc::clone(&casts),
        bytes: Arc::clone(&bytes),
    };
    let batch = Duration::from_millis(50);
    let joined_on = lobby_node(counting, batch, None).await;
    let watched_on = lobby_node(engine.broker(), batch, None).await;
    until("the hubs know each other", || {
        joined_on.hub.nodes().len() == 2
    })
    .await;
    let watcher = Member::join(watched_on.addr, "watcher").await;
    let started = Instant::now();
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let due = started + Duration::from_secs_f64(i as f64 / RATE);
        tokio::time::sleep_until(due.into()).await;
        members.push(Member::join(joined_on.addr, &format!("m{i}")).await);
    }
    let joining = started.elapsed();
    until("the watcher sees every member", || {
        watcher.view().state.len() == MEMBERS + 1
    })
    .await;
    let view = watcher.view();
    assert!(view.repeated().is_empty());
    // One diff per batch while members join (and one for the watcher's own join),
    // give or take the batches cut at the edges.
    let batches = (joining.as_secs_f64() / batch.as_secs_f64()).ceil() as usize;
    assert!(
        view.diffs <= batches + 3,
        "{} diffs for {MEMBERS} joins in {joining:?}",
        view.diffs
    );
    let casts = casts.load(Relaxed);
    assert!(casts <= batches + 3, "{casts} casts for {MEMBERS} joins");
    eprintln!(
        "{MEMBERS} joins in {joining:?}: watcher got {} diffs, {} bytes ({:.0} B/join); \
         {casts} casts, {} bytes ({:.0} B/join)",
        view.diffs,
        view.diff_bytes,
        view.diff_bytes as f64 / MEMBERS as f64,
        bytes.load(Relaxed),
        bytes.load(Relaxed) as f64 / MEMBERS as f64,
    );
    // The last member to join sees everyone, and its own join once. Its
    // presence_state is pushed after its join's reply: waited for.
    let last = members.last().unwrap();
    until("the last member sees everyone", || {
        last.view().state.len() == MEMBERS + 1
    })
    .await;
    assert!(last.view().repeated().is_empty());
}

switchboard_suite::every_engine!(all;
    three_hubs_list_the_same_and_each_change_arrives_once,
    on_a_topic_with_history_three_hubs_list_the_same_and_each_change_arrives_once,
    a_hub_that_shuts_down_takes_its_entries_with_it,
    a_late_hub_gets_every_entry_and_everyone_gets_its,
    a_large_topic_gets_one_diff_per_batch_not_one_per_join,
);

/// On the engines that fail, and whose hubs can be processes of their own.
mod failing {
    use super::*;

    switchboard_suite::every_engine!(failing;
        presence_converges_after_the_engine_restarts,
        a_killed_hub_leaves_every_list_within_node_timeout,
    );
}
