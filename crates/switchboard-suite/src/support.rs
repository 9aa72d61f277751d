//! What the suite's tests share: bounded waits, hubs served on their own listeners,
//! tokio-tungstenite clients of them, and hubs in child processes.

use axum::Router;
use std::{
    future::Future,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};
use switchboard::hub::{Hub, HubConfig, NodeId};
use tokio::{net::TcpStream, task::JoinHandle};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Engine, servers::process::Process};

/// How long one step of a test may take before it counts as hung: a hang fails, it
/// does not hang CI.
pub const STEP: Duration = Duration::from_secs(20);

/// `future`'s output, or a panic saying `what` did not happen within [`STEP`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Returns once `condition` holds, polling every 5 ms; panics after [`STEP`].
pub async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A hub on `engine` with `config`, once its broker is ready: its node's channel and
/// the cluster's are subscribed, so that what other hubs send it arrives.
pub async fn hub<E: Engine>(engine: &E, config: HubConfig) -> Hub {
    hub_on(engine.broker(), config).await
}

/// A hub on `broker` with `config`, once the broker is ready.
pub async fn hub_on(broker: impl switchboard::hub::Broker, config: HubConfig) -> Hub {
    let hub = Hub::with_broker(config, broker);
    until("the hub's broker to be ready", || hub.is_broker_ready()).await;
    hub
}

/// A hub's router served on its own listener; what its handler reports to the test
/// arrives on `events`. Dropping it stops serving.
#[derive(Debug)]
pub struct Node<Events = ()> {
    /// The hub.
    pub hub: Hub,
    /// Where it listens.
    pub addr: SocketAddr,
    /// What its handler reports.
    pub events: Events,
    served: JoinHandle<std::io::Result<()>>,
}

impl<Events> Drop for Node<Events> {
    fn drop(&mut self) {
        self.served.abort();
    }
}

/// Serves `app`, whose routes register with `hub`, on 127.0.0.1 at a free port.
pub async fn serve<Events>(hub: Hub, app: Router, events: Events) -> Node<Events> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a listener");
    let addr = listener.local_addr().expect("its address");
    let served = tokio::spawn({
        let hub = hub.clone();
        async move {
            switchboard::serve_with_shutdown(listener, app, &hub, std::future::pending()).await
        }
    });
    Node {
        hub,
        addr,
        events,
        served,
    }
}

/// A tokio-tungstenite client of a hub.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A client of `path` on `addr`.
pub async fn connect(addr: SocketAddr, path: &str) -> Client {
    let url = format!("ws://{addr}{path}");
    within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("the hub accepts")
    .0
}

/// `nodes`, sorted as a hub lists them.
pub fn sorted(mut nodes: Vec<NodeId>) -> Vec<NodeId> {
    nodes.sort_unstable();
    nodes
}

/// Set in a child hub's environment: the engine's [`Engine::child_args`], one a line.
const CHILD_ARGS: &str = "SWITCHBOARD_SUITE_CHILD";

/// In a child hub (see [`ChildHub`]): the arguments for
/// [`broker_from_args`](crate::engines::broker_from_args); `None` in a test itself.
pub fn child_args() -> Option<Vec<String>> {
    let args = std::env::var(CHILD_ARGS).ok()?;
    Some(args.lines().map(str::to_owned).collect())
}

/// The end of a child hub: says who it is, then serves until the test (holding its
/// stdin) goes away, or until it is killed.
pub async fn serve_child<Events>(node: Node<Events>) {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    println!("NODE {} {}", node.hub.node(), node.addr);
    std::future::pending::<()>().await;
}

/// A hub in a process of its own, that a signal can stop or kill without touching
/// the test: the test binary run again, on the calling test alone, with
/// [`child_args`] set. The test's function starts with
/// `if let Some(args) = child_args() { … serve_child(node) }`. Resumed and killed
/// when dropped.
#[derive(Debug)]
pub struct ChildHub {
    process: Process,
    /// The child hub's node id.
    pub node: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ChildHub {
    /// Runs the calling test again as a child hub on `engine`. Called from the test's
    /// own thread (the future a `#[tokio::test]` awaits runs there), which libtest
    /// names after the test.
    pub async fn start<E: Engine>(engine: &E) -> Self {
        let args = engine
            .child_args()
            .expect("an engine that crosses processes");
        let thread = std::thread::current();
        let test = thread
            .name()
            .expect("a test's thread, named after the test");
        let mut process = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--exact", test])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD_ARGS, args.join("\n"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the test binary runs");
        let stdout = process.stdout.take().expect("a piped stdout");
        // Killed by its drop if it never says who it is.
        let mut child = Self {
            process: Process::new(process, format!("the child hub of {test}")),
            node: NodeId::from_bits(0),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                // After libtest's "test <name> ... ", on the same line.
                .find_map(|line| line.split_once("NODE ").map(|(_, rest)| rest.to_owned()))
        });
        let line = within("the child hub", line).await.expect("its reader");
        let line = line.expect("the child hub's NODE line");
        let (node, addr) = line.split_once(' ').expect("NODE <id> <addr>");
        child.node = node.parse().expect("a node id");
        child.addr = addr.parse().expect("an address");
        child
    }

    /// Stops the child (SIGSTOP), and returns once every thread of it is stopped:
    /// `kill` returns once the signal is sent, and a thread still running could
    /// answer one more query.
    pub async fn stop(&self) {
        assert!(self.process.signal("STOP"));
        let pid = self.process.id().expect("a child not killed");
        let tasks = format!("/proc/{pid}/task");
        until("the child to stop", || all_stopped(&tasks)).await;
    }

    /// Lets a stopped child run again (SIGCONT).
    pub fn resume(&self) {
        assert!(self.process.signal("CONT"));
    }

    /// Kills the child with SIGKILL (no goodbye, no close of its sockets) and waits
    /// until it is gone.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// Whether every thread under `/proc/<pid>/task` is stopped (state `T`).
fn all_stopped(tasks: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(tasks) else {
        return false;
    };
    entries.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // "pid (comm) S ...": the state follows the command's closing parenthesis.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        state == Some('T')
    })
}
