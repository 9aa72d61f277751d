//! A `redis-server` of one test, on a port of its own (never the machine's shared
//! 6379), without persistence, that the test can kill, pause, resume and restart on
//! the same port.

use super::{free_port, signal};
use crate::support::within;
use std::process::{Child, Command, Stdio};
use switchboard::hub::NodeId;

/// A `redis-server` process; resumed and killed when dropped, so that a failing test
/// leaves no stopped or stray server behind.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    process: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port (`--save '' --appendonly no`: a restart
    /// comes back empty) and returns once it answers.
    pub async fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            process: None,
        };
        server.restart().await;
        server
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
        if let Some(mut process) = self.process.take() {
            // A stopped process dies of SIGKILL too; resumed first all the same, so
            // that its sockets close at once.
            signal(process.id(), "CONT");
            let _ = process.kill();
            let _ = process.wait();
        }
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
            .is_some_and(|process| signal(process.id(), name))
    }

    /// Starts the server (again, empty) on its port and returns once it answers.
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let process = Command::new("redis-server")
            .args(["--port", &port, "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        self.process = Some(process);
        let client = redis::Client::open(self.url()).expect("a valid URL");
        within("redis-server to answer", async {
            while client.get_multiplexed_async_connection().await.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Runs a command on the server, for a test's own checks and settings.
    pub async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let client = redis::Client::open(self.url()).expect("a valid URL");
        let mut conn = within("a connection to redis-server", async {
            client.get_multiplexed_async_connection().await
        })
        .await
        .expect("redis-server answers");
        within("a reply of redis-server", command.query_async(&mut conn))
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
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// Cuts the subscriber connection of the hub `node` (the broker names it
    /// `switchboard-sub-<node id>`) with `CLIENT KILL ID`: a blip of that hub alone.
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
