//! Presence across hubs: three hubs on a `MemoryNetwork` and on Redis (the machine's,
//! and one the test starts and restarts), seen by raw V2 clients that apply
//! `presence_state` and `presence_diff` as phoenix.js does.

mod presence_support;

use presence_support::{Member, OwnRedis, View, refs_of, serve, unique_prefix, until};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use switchboard::{
    channels::{Channels, ChannelsConfig},
    hub::{Broker, BrokerMetrics, Envelope, History, Hub, HubConfig, Inbox, MemoryNetwork, Target},
};
use switchboard_redis::{RedisBroker, RedisConfig};

const TOPIC: &str = "lobby:main";

fn hub_config() -> HubConfig {
    HubConfig::default()
        .node_heartbeat(Duration::from_millis(50))
        .node_timeout(Duration::from_millis(500))
}

fn channels_config() -> ChannelsConfig {
    ChannelsConfig::default().presence_batch(Duration::from_millis(20))
}

struct Node {
    hub: Hub,
    addr: SocketAddr,
    endpoint: switchboard::channels::Endpoint,
}

async fn node(hub: Hub) -> Node {
    node_with(hub, None).await
}

/// A node whose `lobby:*` topics keep `history`, if given: presence is not part of the
/// stream, and must work the same on such a topic.
async fn node_with(hub: Hub, history: Option<History>) -> Node {
    let mut channels = Channels::new(hub.clone()).config(channels_config());
    if let Some(history) = history {
        channels = channels.history("lobby:*", history);
    }
    let channels = channels.channel("lobby:*", presence_support::Lobby);
    let endpoint = channels.endpoint();
    let app: axum::Router = channels.into_router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = hub.clone();
    tokio::spawn(async move {
        let _ =
            switchboard::serve_with_shutdown(listener, app, &serving, std::future::pending()).await;
    });
    Node {
        hub,
        addr,
        endpoint,
    }
}

impl Node {
    fn listed(&self) -> BTreeMap<String, BTreeSet<String>> {
        refs_of(&self.endpoint.presence().list(TOPIC))
    }
}

async fn memory_nodes(network: &MemoryNetwork, n: usize) -> Vec<Node> {
    memory_nodes_with(network, n, None).await
}

async fn memory_nodes_with(
    network: &MemoryNetwork,
    n: usize,
    history: Option<History>,
) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        let hub = Hub::with_broker(hub_config(), network.broker());
        nodes.push(node_with(hub, history).await);
    }
    nodes
}

async fn redis_nodes(url: &str, prefix: &str, n: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        let config = RedisConfig::default().url(url).prefix(prefix);
        let broker = RedisBroker::connect(config).await.expect("redis");
        nodes.push(node(Hub::with_broker(hub_config(), broker)).await);
    }
    nodes
}

async fn until_they_know_each_other(nodes: &[Node]) {
    until("every hub knows every hub", Duration::from_secs(10), || {
        nodes.iter().all(|n| n.hub.nodes().len() == nodes.len())
    })
    .await;
}

/// Waits until every hub lists `expected` users and every member's view equals
/// its hub's list.
async fn until_converged(nodes: &[Node], members: &[&Member], expected: usize, limit: Duration) {
    until("every hub and client lists the same", limit, || {
        let lists: Vec<_> = nodes.iter().map(Node::listed).collect();
        let agreed = lists.iter().all(|l| l.len() == expected && *l == lists[0]);
        agreed && members.iter().all(|m| m.view().state == lists[0])
    })
    .await;
}

fn assert_once(members: &[&Member]) {
    for member in members {
        let view: View = member.view();
        assert!(
            view.repeated().is_empty(),
            "{} got changes more than once: {:?}",
            member.user,
            view.repeated()
        );
    }
}

/// Joins `per_node` users on every hub (all at once); returns them, hub by hub.
async fn join_everywhere(nodes: &[Node], per_node: usize) -> Vec<Member> {
    let users: Vec<(SocketAddr, String)> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, node)| (0..per_node).map(move |j| (node.addr, format!("user-{i}-{j}"))))
        .collect();
    let joins = users
        .iter()
        .map(|(addr, user)| Member::join(*addr, TOPIC, user));
    futures_util::future::join_all(joins).await
}

async fn lists_agree_and_each_change_arrives_once(nodes: Vec<Node>) {
    until_they_know_each_other(&nodes).await;
    let mut members = join_everywhere(&nodes, 3).await;
    let all: Vec<&Member> = members.iter().collect();
    until_converged(&nodes, &all, 9, Duration::from_secs(10)).await;
    assert_once(&all);
    // Every member's own join and every later one came as a diff, once; the earlier
    // ones were in its presence_state.
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
    until_converged(&nodes, &rest, 6, Duration::from_secs(10)).await;
    assert_once(&rest);
    for member in &rest {
        let view = member.view();
        for reference in &left {
            assert_eq!(view.leaves.get(reference), Some(&1), "{}", member.user);
        }
    }
}

#[tokio::test]
async fn three_hubs_in_memory_list_the_same_and_each_change_arrives_once() {
    let network = MemoryNetwork::new();
    let nodes = memory_nodes(&network, 3).await;
    lists_agree_and_each_change_arrives_once(nodes).await;
}

#[tokio::test]
async fn on_a_topic_with_history_three_hubs_list_the_same_and_each_change_arrives_once() {
    let network = MemoryNetwork::new();
    let nodes = memory_nodes_with(&network, 3, Some(History::default())).await;
    lists_agree_and_each_change_arrives_once(nodes).await;
}

#[tokio::test]
async fn three_hubs_on_redis_list_the_same_and_each_change_arrives_once() {
    let prefix = unique_prefix("presence_three_hubs");
    let nodes = redis_nodes("redis://127.0.0.1:6379/", &prefix, 3).await;
    lists_agree_and_each_change_arrives_once(nodes).await;
}

#[tokio::test]
async fn a_hub_that_shuts_down_takes_its_entries_with_it() {
    let network = MemoryNetwork::new();
    let mut nodes = memory_nodes(&network, 3).await;
    until_they_know_each_other(&nodes).await;
    let mut members = join_everywhere(&nodes, 2).await;
    let all: Vec<&Member> = members.iter().collect();
    until_converged(&nodes, &all, 6, Duration::from_secs(10)).await;
    let gone = nodes.pop().unwrap();
    let started = Instant::now();
    let shutdown = tokio::spawn(async move { gone.hub.shutdown(Duration::from_secs(1)).await });
    members.truncate(4); // The last two were on the hub that shut down.
    let rest: Vec<&Member> = members.iter().collect();
    until_converged(&nodes, &rest, 4, Duration::from_secs(2)).await;
    // Its sockets' leaves, or its goodbye, make it well before node_timeout (500 ms).
    let took = started.elapsed();
    assert!(took < Duration::from_millis(400), "{took:?}");
    shutdown.await.unwrap();
    assert_once(&rest);
}

#[tokio::test]
async fn a_late_hub_gets_every_entry_and_everyone_gets_its() {
    let network = MemoryNetwork::new();
    let mut nodes = memory_nodes(&network, 2).await;
    until_they_know_each_other(&nodes).await;
    let mut members = join_everywhere(&nodes, 2).await;
    nodes.push(node(Hub::with_broker(hub_config(), network.broker())).await);
    until_they_know_each_other(&nodes).await;
    let late = nodes.last().unwrap().addr;
    members.push(Member::join(late, TOPIC, "late").await);
    let all: Vec<&Member> = members.iter().collect();
    until_converged(&nodes, &all, 5, Duration::from_secs(10)).await;
    assert_once(&all);
}

#[tokio::test]
async fn presence_converges_after_a_redis_restart() {
    let mut redis = OwnRedis::start();
    let prefix = unique_prefix("presence_restart");
    let nodes = redis_nodes(&redis.url(), &prefix, 3).await;
    until_they_know_each_other(&nodes).await;
    let mut members = join_everywhere(&nodes, 2).await;
    let all: Vec<&Member> = members.iter().collect();
    until_converged(&nodes, &all, 6, Duration::from_secs(10)).await;
    redis.kill();
    // Cut off for longer than node_timeout: each hub takes the others for dead and
    // its clients see their users leave, then come back once Redis does.
    until(
        "the hubs take each other for dead",
        Duration::from_secs(10),
        || nodes.iter().all(|n| n.hub.nodes().len() == 1),
    )
    .await;
    // Changes made while the hubs cannot reach each other.
    members.remove(0).leave().await;
    members.push(Member::join(nodes[2].addr, TOPIC, "while-down").await);
    redis.restart();
    let all: Vec<&Member> = members.iter().collect();
    until_converged(&nodes, &all, 6, Duration::from_secs(20)).await;
    assert_eq!(
        nodes[1]
            .listed()
            .keys()
            .filter(|k| *k == "while-down")
            .count(),
        1
    );
}

/// A broker that counts what its hub publishes to the other hubs.
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
                self.casts.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(text.len(), Ordering::Relaxed);
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

#[tokio::test]
async fn a_large_topic_gets_one_diff_per_batch_not_one_per_join() {
    const MEMBERS: usize = 400;
    const RATE: f64 = 2_000.0; // joins per second: 0.2 s of joins
    let network = MemoryNetwork::new();
    let (casts, bytes) = (Arc::default(), Arc::default());
    let counting = Counting {
        inner: network.broker(),
        casts: Arc::clone(&casts),
        bytes: Arc::clone(&bytes),
    };
    let batch = Duration::from_millis(50);
    let config = ChannelsConfig::default().presence_batch(batch);
    let joined_on = Hub::with_broker(hub_config(), counting);
    let watched_on = Hub::with_broker(hub_config(), network.broker());
    let (a, b) = (
        serve(&joined_on, config.clone()).await,
        serve(&watched_on, config).await,
    );
    until("the hubs know each other", Duration::from_secs(5), || {
        joined_on.nodes().len() == 2
    })
    .await;
    let watcher = Member::join(b, TOPIC, "watcher").await;
    let started = Instant::now();
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let due = started + Duration::from_secs_f64(i as f64 / RATE);
        tokio::time::sleep_until(due.into()).await;
        members.push(Member::join(a, TOPIC, &format!("m{i}")).await);
    }
    let joining = started.elapsed();
    until(
        "the watcher sees every member",
        Duration::from_secs(10),
        || watcher.view().state.len() == MEMBERS + 1,
    )
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
    let casts = casts.load(Ordering::Relaxed);
    assert!(casts <= batches + 3, "{casts} casts for {MEMBERS} joins");
    eprintln!(
        "{MEMBERS} joins in {joining:?}: watcher got {} diffs, {} bytes ({:.0} B/join); \
         {casts} casts, {} bytes ({:.0} B/join)",
        view.diffs,
        view.diff_bytes,
        view.diff_bytes as f64 / MEMBERS as f64,
        bytes.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed) as f64 / MEMBERS as f64,
    );
    // The last member to join sees everyone, and its own join once.
    let last = members.last().unwrap().view();
    assert_eq!(last.state.len(), MEMBERS + 1);
    assert!(last.repeated().is_empty());
}
