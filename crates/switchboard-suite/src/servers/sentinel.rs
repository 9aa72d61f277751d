//! A Sentinel deployment of one test: a master, its replica and three Sentinels
//! (`redis-server --sentinel`), on free ports, with short failure detection so that a
//! failover takes seconds.

use super::{
    free_port,
    process::{Process, TempDir},
};
use std::{collections::HashMap, time::Duration};

/// The master's name in the Sentinels' configuration.
pub const SERVICE: &str = "mymaster";

/// How long a master may be silent before a Sentinel thinks it down: short, for a
/// failover within seconds; not so short that a busy test machine fakes one.
const DOWN_AFTER: Duration = Duration::from_millis(1500);

/// How long the deployment may take to be ready, or a failover to be done.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A master, a replica of it and three Sentinels watching it as [`SERVICE`], all
/// killed when dropped.
#[derive(Debug)]
pub struct Sentinels {
    /// The two data servers, by port: the master at start, then the replica.
    servers: Vec<(u16, Process)>,
    sentinels: Vec<(u16, Process)>,
    _dir: TempDir,
}

impl Sentinels {
    /// Starts the deployment and returns once the replica is in sync and every
    /// Sentinel knows the replica and the two other Sentinels (a failover needs them).
    pub async fn start() -> Self {
        let dir = TempDir::new("sentinel");
        let master = free_port();
        let master_process = redis_server(master, &[]).await;
        let replica = free_port();
        let master_arg = master.to_string();
        let replica_process =
            redis_server(replica, &["--replicaof", "127.0.0.1", &master_arg]).await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.write(
                &format!("sentinel-{port}.conf"),
                sentinel_conf(port, master),
            );
            let process = Process::start("redis-server", &[&conf, "--sentinel"], port).await;
            sentinels.push((port, process));
        }
        let deployment = Self {
            servers: vec![(master, master_process), (replica, replica_process)],
            sentinels,
            _dir: dir,
        };
        deployment.until_settled().await;
        deployment
    }

    /// The Sentinels' URLs, `redis://127.0.0.1:<port>/`.
    pub fn sentinel_urls(&self) -> Vec<String> {
        let ports = self.sentinels.iter().map(|(port, _)| *port);
        ports
            .map(|port| format!("redis://127.0.0.1:{port}/"))
            .collect()
    }

    /// The master's port, as the first Sentinel names it now.
    pub async fn master(&self) -> u16 {
        let named: (String, u16) = query(
            self.sentinels[0].0,
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(SERVICE),
        )
        .await
        .expect("the Sentinel names the master");
        named.1
    }

    /// The ports of the two data servers (the master's at start first).
    pub fn servers(&self) -> [u16; 2] {
        [self.servers[0].0, self.servers[1].0]
    }

    /// SIGKILLs the data server on `port` (the master, say), as a crash would.
    pub fn kill(&mut self, port: u16) {
        for (_, process) in self.servers.iter_mut().filter(|(at, _)| *at == port) {
            process.kill();
        }
    }

    /// Asks a Sentinel to fail over now (`SENTINEL FAILOVER`): the old master, alive,
    /// becomes a replica of the new one.
    pub async fn failover(&self) {
        let command = redis::cmd("SENTINEL").arg("FAILOVER").arg(SERVICE).clone();
        let _: () = query(self.sentinels[0].0, &command)
            .await
            .expect("SENTINEL FAILOVER");
    }

    /// Waits until every Sentinel names a master other than `old` and that master
    /// says it is one; its port.
    pub async fn until_failed_over(&self, old: u16) -> u16 {
        let failed_over = async {
            loop {
                if let Some(new) = self.new_master(old).await {
                    return new;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(SETTLE_TIMEOUT, failed_over)
            .await
            .unwrap_or_else(|_| panic!("no failover from port {old} within {SETTLE_TIMEOUT:?}"))
    }

    async fn new_master(&self, old: u16) -> Option<u16> {
        let mut named = Vec::new();
        for (port, _) in &self.sentinels {
            let command = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(SERVICE)
                .clone();
            let (_, master): (String, u16) = query(*port, &command).await.ok()?;
            named.push(master);
        }
        let new = named[0];
        if new == old || named.iter().any(|master| *master != new) {
            return None;
        }
        let role: Vec<redis::Value> = query(new, &redis::cmd("ROLE")).await.ok()?;
        let is_master =
            matches!(role.first(), Some(redis::Value::BulkString(role)) if role == b"master");
        is_master.then_some(new)
    }

    async fn until_settled(&self) {
        let settled = async {
            while !self.is_settled().await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if tokio::time::timeout(SETTLE_TIMEOUT, settled).await.is_err() {
            panic!("the Sentinel deployment did not settle within {SETTLE_TIMEOUT:?}");
        }
    }

    async fn is_settled(&self) -> bool {
        let replica = self.servers[1].0;
        let Ok(info) = query::<String>(replica, redis::cmd("INFO").arg("replication")).await else {
            return false;
        };
        if !info.contains("master_link_status:up") {
            return false;
        }
        for (port, _) in &self.sentinels {
            let command = redis::cmd("SENTINEL").arg("MASTER").arg(SERVICE).clone();
            let Ok(master) = query::<HashMap<String, String>>(*port, &command).await else {
                return false;
            };
            let count = |field: &str| master.get(field).and_then(|n| n.parse::<u32>().ok());
            if count("num-other-sentinels") != Some(2) || count("num-slaves") != Some(1) {
                return false;
            }
        }
        true
    }
}

/// Starts a `redis-server` without persistence on `port`, with `more` arguments.
async fn redis_server(port: u16, more: &[&str]) -> Process {
    let port_arg = port.to_string();
    let mut args = vec!["--port", &port_arg, "--save", "", "--appendonly", "no"];
    args.extend_from_slice(more);
    Process::start("redis-server", &args, port).await
}

/// A Sentinel's configuration file (Sentinels rewrite theirs: one file each).
fn sentinel_conf(port: u16, master: u16) -> String {
    let down_after = DOWN_AFTER.as_millis();
    format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         protected-mode no\n\
         sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n\
         sentinel down-after-milliseconds {SERVICE} {down_after}\n\
         sentinel failover-timeout {SERVICE} 5000\n\
         sentinel parallel-syncs {SERVICE} 1\n"
    )
}

/// Runs `command` on the server at 127.0.0.1:`port`, within 2 s.
pub async fn query<T: redis::FromRedisValue>(
    port: u16,
    command: &redis::Cmd,
) -> redis::RedisResult<T> {
    let url = format!("redis://127.0.0.1:{port}/");
    let run = async {
        let mut conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        command.query_async(&mut conn).await
    };
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "no answer within 2 s").into()))
}
