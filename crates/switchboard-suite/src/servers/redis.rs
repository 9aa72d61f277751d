//! A `redis-server` of one test, on a port of its own (never the machine's shared
//! 6379), without persistence, that the test can kill, pause, resume and restart on
//! the same port.

use super::{
    free_port,
    process::{Process, TempDir},
};
use crate::support::within;
use redis::aio::MultiplexedConnection;
use std::{path::Path, time::Duration};
use switchboard::hub::NodeId;
use tokio::sync::OnceCell;

/// A `redis-server` process; killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// `None` while killed.
    process: Option<Process>,
    /// The test's own connection to the server, for its checks: one for all of
    /// them (waits poll every few milliseconds), opened again after a restart.
    connection: OnceCell<MultiplexedConnection>,
    /// Its working directory: whatever it writes stays out of the crate's.
    dir: TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and returns once it listens; on another
    /// port if that one turns out taken.
    pub async fn start() -> Self {
        let dir = TempDir::new("redis");
        let (process, [port]) = Process::start_on_free_ports(
            "redis-server",
            || [free_port()],
            |[port]| redis_server_args(port, dir.path()),
        )
        .await;
        Self {
            port,
            process: Some(process),
            connection: OnceCell::new(),
            dir,
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server with SIGKILL (its clients see their connections reset, as on
    /// a crash) and waits until it is gone. What it held is lost.
    pub fn kill(&mut self) {
        self.connection = OnceCell::new();
        // Dropped: killed and reaped.
        self.process = None;
    }

    /// Stops the server without closing anything (SIGSTOP): a stalled link.
    pub fn pause(&self) {
        assert!(self.signal("STOP"), "SIGSTOP redis-server");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        assert!(self.signal("CONT"), "SIGCONT redis-server");
    }

    fn signal(&self, name: &str) -> bool {
        self.process
            .as_ref()
            .is_some_and(|process| process.signal(name))
    }

    /// Starts the server again, empty, on its port and returns once it listens.
    /// Panics if the port was taken meanwhile: the hubs know this address.
    pub async fn restart(&mut self) {
        self.kill();
        let args = redis_server_args(self.port, self.dir.path());
        match Process::start("redis-server", &args, &[self.port]).await {
            Ok(process) => self.process = Some(process),
            Err(status) => panic!("redis-server again on port {}: {status}", self.port),
        }
    }

    /// The test's connection to the server, opened if it is not yet.
    async fn connection(&self) -> MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("a valid URL");
        let open = self
            .connection
            .get_or_try_init(|| client.get_multiplexed_async_connection());
        within("a connection to redis-server", open)
            .await
            .expect("redis-server answers")
            .clone()
    }

    /// Runs a command on the server, for a test's own checks and settings.
    pub async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let mut connection = self.connection().await;
        within(
            "a reply of redis-server",
            command.query_async(&mut connection),
        )
        .await
        .expect("redis-server's reply")
    }

    /// How many subscribers the server counts on `channel` (`PUBSUB NUMSUB`).
    pub async fn subscribers(&self, channel: &str) -> usize {
        let counts: Vec<(String, usize)> = self
            .query(redis::cmd("PUBSUB").arg("NUMSUB").arg(channel))
            .await;
        counts.first().map_or(0, |(_, count)| *count)
    }

    /// Returns once the server counts `expected` subscribers on `channel`.
    pub async fn until_subscribers(&self, channel: &str, expected: usize) {
        within(&format!("{expected} subscribers on {channel}"), async {
            while self.subscribers(channel).await != expected {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// Cuts the subscriber connection of the hub `node` (the broker names it
    /// `switchboard-sub-<node id>` with `CLIENT SETNAME`) with `CLIENT KILL ID`: a
    /// blip of that hub alone.
    pub async fn kill_subscriber_of(&self, node: NodeId) {
        let list: String = self.query(redis::cmd("CLIENT").arg("LIST")).await;
        let name = format!("name=switchboard-sub-{node} ");
        let line = list.lines().find(|line| line.contains(&name));
        let id = line.and_then(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")));
        let id = id.unwrap_or_else(|| panic!("no {name} in {list}"));
        let killed: u64 = self
            .query(redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id))
            .await;
        assert_eq!(killed, 1, "CLIENT KILL ID {id}");
    }
}

/// Returns once the server of `conn` counts `expected` subscribers on `channel`
/// (`PUBSUB NUMSUB`): for a server that is not a [`RedisServer`] (TLS, Sentinel).
pub async fn until_subscribers(conn: &mut MultiplexedConnection, channel: &str, expected: usize) {
    within(&format!("{expected} subscribers on {channel}"), async {
        loop {
            let counts: Vec<(String, usize)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query_async(conn)
                .await
                .expect("PUBSUB NUMSUB");
            if counts.first().map_or(0, |(_, count)| *count) == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// The arguments of every `redis-server` the suite starts (a Sentinel's and a
/// cluster node's too), on `port` and working in `dir`, before those of its kind: on
/// 127.0.0.1 alone, and without persistence (`--save '' --appendonly no`: a restart
/// comes back empty).
pub(crate) fn redis_server_args(port: u16, dir: &Path) -> Vec<String> {
    let (port, dir) = (port.to_string(), dir.to_string_lossy());
    let args = [
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir,
    ];
    args.map(str::to_owned).into()
}
