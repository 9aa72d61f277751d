//! A hub killed with SIGKILL (a real process, without a goodbye) loses its presence
//! entries on every other hub, and in every client's list, within `node_timeout` and
//! a heartbeat.
//!
//! The killed hub is this test binary run again as a child (`harness = false`: the
//! binary's `main` is the child when `SB_PRESENCE_CHILD` is set), on the machine's
//! Redis under a prefix of this run's own.

mod presence_support;

use presence_support::{Member, refs_of, unique_prefix, until, within};
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use switchboard::{
    channels::{Channels, ChannelsConfig, Endpoint},
    hub::{Hub, HubConfig},
};
use switchboard_redis::{RedisBroker, RedisConfig};

/// Set in the child: the Redis prefix it joins.
const CHILD: &str = "SB_PRESENCE_CHILD";
const REDIS: &str = "redis://127.0.0.1:6379/";
const TOPIC: &str = "lobby:kill";
const HEARTBEAT: Duration = Duration::from_millis(50);
const NODE_TIMEOUT: Duration = Duration::from_millis(500);
/// A child that the test did not kill (it failed first) ends by itself.
const CHILD_LIFETIME: Duration = Duration::from_secs(60);

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    if let Ok(prefix) = std::env::var(CHILD) {
        runtime.block_on(child(prefix));
        return;
    }
    let name = "a_killed_hub_leaves_every_list_within_node_timeout";
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
        println!("running 0 tests");
        return;
    }
    println!("running 1 test");
    runtime.block_on(a_killed_hub_leaves_every_list_within_node_timeout());
    println!("test {name} ... ok");
}

async fn hub_and_endpoint(prefix: &str) -> (Hub, Endpoint, SocketAddr) {
    let broker = RedisBroker::connect(RedisConfig::default().url(REDIS).prefix(prefix))
        .await
        .expect("the machine's redis on 6379");
    let config = HubConfig::default()
        .node_heartbeat(HEARTBEAT)
        .node_timeout(NODE_TIMEOUT);
    let hub = Hub::with_broker(config, broker);
    let channels = Channels::new(hub.clone())
        .config(ChannelsConfig::default().presence_batch(Duration::from_millis(20)))
        .channel("lobby:*", presence_support::Lobby);
    let endpoint = channels.endpoint();
    let app: axum::Router = channels.into_router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = hub.clone();
    tokio::spawn(async move {
        let _ =
            switchboard::serve_with_shutdown(listener, app, &serving, std::future::pending()).await;
    });
    (hub, endpoint, addr)
}

/// The child: a hub that says where it listens, then serves until killed.
async fn child(prefix: String) {
    let (_hub, _endpoint, addr) = hub_and_endpoint(&prefix).await;
    println!("listening {addr}");
    tokio::time::sleep(CHILD_LIFETIME).await;
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(prefix: &str) -> (Killed, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, prefix)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = Killed(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("child said {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

async fn a_killed_hub_leaves_every_list_within_node_timeout() {
    let prefix = unique_prefix("presence_kill");
    let (mut child, child_addr) = spawn_child(&prefix);
    let (a, a_presence, a_addr) = hub_and_endpoint(&prefix).await;
    let (b, b_presence, b_addr) = hub_and_endpoint(&prefix).await;
    until(
        "the three hubs know each other",
        Duration::from_secs(10),
        || a.nodes().len() == 3 && b.nodes().len() == 3,
    )
    .await;
    let mut members = Vec::new();
    for (addr, name) in [(a_addr, "a"), (b_addr, "b"), (child_addr, "child")] {
        for i in 0..2 {
            members.push(Member::join(addr, TOPIC, &format!("{name}{i}")).await);
        }
    }
    let lists =
        || [&a_presence, &b_presence].map(|endpoint| refs_of(&endpoint.presence().list(TOPIC)));
    let survivors = &members[..4];
    until(
        "all six are listed everywhere",
        Duration::from_secs(10),
        || {
            let [on_a, on_b] = lists();
            on_a.len() == 6 && on_a == on_b && survivors.iter().all(|m| m.view().state == on_a)
        },
    )
    .await;
    let killed = Instant::now();
    // SIGKILL: no goodbye, no close of its sockets' presences.
    child.0.kill().unwrap();
    let _ = child.0.wait();
    until(
        "the killed hub's users are gone",
        Duration::from_secs(5),
        || {
            let [on_a, on_b] = lists();
            on_a.len() == 4 && on_a == on_b && survivors.iter().all(|m| m.view().state == on_a)
        },
    )
    .await;
    let took = killed.elapsed();
    println!(
        "presence of a SIGKILLed hub removed everywhere in {took:?} (node_timeout {NODE_TIMEOUT:?}, heartbeat {HEARTBEAT:?})"
    );
    // Taken for dead after node_timeout of silence, found by the next heartbeat
    // tick; the leaves go out at once (they are not batched). 250 ms of slack for a
    // loaded machine.
    let bound = NODE_TIMEOUT + HEARTBEAT + Duration::from_millis(250);
    assert!(took <= bound, "took {took:?}, more than {bound:?}");
    for member in survivors {
        let view = member.view();
        assert!(
            view.repeated().is_empty(),
            "{}: {:?}",
            member.user,
            view.repeated()
        );
        assert!(!view.state.keys().any(|k| k.starts_with("child")));
    }
    within("the survivors leave", async {
        for member in members.drain(..) {
            member.leave().await;
        }
    })
    .await;
}
