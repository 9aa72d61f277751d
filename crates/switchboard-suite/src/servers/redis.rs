//! A `redis-server` of one test, on a port of its own (never the machine's shared
//! 6379), without persistence, that the test can kill, pause, resume and restart on
//! the same port.

use super::{free_port, signal};
use crate::support::within;
use redis::aio::MultiplexedConnection;
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};
use switchboard::hub::NodeId;
use tokio::sync::OnceCell;

/// How many ports [`RedisServer::start`] tries: another process may take a free
/// port before `redis-server` binds it.
const TRIES: usize = 5;

/// A `redis-server` process; resumed and killed when dropped, so that a failing test
/// leaves no stopped or stray server behind.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    process: Option<Child>,
    /// The test's own connection to the server, for its checks: one for all of
    /// them (waits poll every few milliseconds), opened again after a restart.
    connection: OnceCell<MultiplexedConnection>,
}

/// Why a `redis-server` did not come up as ours.
#[derive(Debug)]
enum Launch {
    /// It exited at once: its port was taken.
    Exited,
    /// Another process answers on its port.
    NotOurs,
}

impl RedisServer {
    /// Starts `redis-server` on a free port (`--save '' --appendonly no`: a restart
    /// comes back empty) and returns once it answers; on another port if that one
    /// turns out taken.
    pub async fn start() -> Self {
        for _ in 0..TRIES {
            let mut server = Self {
                port: free_port(),
                process: None,
                connection: OnceCell::new(),
            };
            match server.launch().await {
                Ok(()) => return server,
                Err(why) => tracing::debug!(port = server.port, ?why, "trying another port"),
            }
        }
        panic!("redis-server did not start on any of {TRIES} free ports");
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

    /// Starts the server again, empty, on its port and returns once it answers.
    /// Panics if the port was taken meanwhile: the hubs know this address.
    pub async fn restart(&mut self) {
        if let Err(why) = self.launch().await {
            panic!("redis-server again on port {}: {why:?}", self.port);
        }
    }

    /// Kills the server if it runs, starts `redis-server` on its port, and returns
    /// once that process, and not another, answers there.
    async fn launch(&mut self) -> Result<(), Launch> {
        self.kill();
        let port = self.port.to_string();
        let process = Command::new("redis-server")
            .args(["--port", &port, "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        let pid = process.id();
        let client = redis::Client::open(self.url()).expect("a valid URL");
        let process = self.process.insert(process);
        let answered = within("redis-server to answer", async {
            loop {
                if let Ok(Some(_)) = process.try_wait() {
                    return Err(Launch::Exited);
                }
                if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
                    let info: redis::RedisResult<String> = redis::cmd("INFO")
                        .arg("server")
                        .query_async(&mut connection)
                        .await;
                    if let Ok(info) = info {
                        if process_id(&info) != Some(pid) {
                            return Err(Launch::NotOurs);
                        }
                        return Ok(connection);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        match answered {
            Ok(connection) => {
                self.connection = OnceCell::new_with(Some(connection));
                Ok(())
            }
            Err(why) => {
                self.kill();
                Err(why)
            }
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

/// The `process_id` of an `INFO server` reply.
fn process_id(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server started on a port where another already answers: not taken for
    /// that one.
    #[tokio::test]
    async fn a_server_whose_port_is_taken_is_not_taken_for_the_one_there() {
        let there = RedisServer::start().await;
        let mut late = RedisServer {
            port: there.port(),
            process: None,
            connection: OnceCell::new(),
        };
        assert!(matches!(
            late.launch().await,
            Err(Launch::Exited | Launch::NotOurs)
        ));
        assert!(late.process.is_none(), "the late server is killed");
        // The one there still answers.
        let pong: String = there.query(&redis::cmd("PING")).await;
        assert_eq!(pong, "PONG");
    }
}
