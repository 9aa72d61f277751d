//! A Sentinel deployment of one test: a master, its replica and three Sentinels
//! (`redis-server --sentinel`), on free ports, with short failure detection so that a
//! failover takes seconds; over TCP, or all of it over TLS with a private CA.

use super::{
    free_port,
    process::{Process, TempDir},
    redis::redis_server_args,
    redis_tls::{self, Ca},
};
use redis::{Cmd, FromRedisValue, RedisResult, aio::MultiplexedConnection};
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
    /// The CA of every server's certificate, when they speak TLS.
    ca: Option<Ca>,
    _dir: TempDir,
}

impl Sentinels {
    /// Starts the deployment and returns once the replica is in sync and every
    /// Sentinel knows the replica and the two other Sentinels (a failover needs them).
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// [`Sentinels::start`], every server (Sentinels included) speaking TLS only,
    /// with a certificate of a new CA ([`Sentinels::root_certificate`]).
    pub async fn start_tls() -> Self {
        Self::start_with(Some(Ca::new())).await
    }

    async fn start_with(ca: Option<Ca>) -> Self {
        let dir = TempDir::new("sentinel");
        // Each server works in a directory of its own (a replica writes the dump it
        // receives from its master there), and speaks TLS if the deployment does.
        let args = |port: u16| {
            let own_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&own_dir).expect("a server's directory");
            let tls = ca.as_ref().map(|ca| ca.server_args(&dir, port));
            [redis_server_args(port, &own_dir), tls.unwrap_or_default()].concat()
        };
        let master = start_on_a_free_port(&args).await;
        let replicaof = ["--replicaof", "127.0.0.1", &master.0.to_string()].map(String::from);
        let replica = start_on_a_free_port(|port| [args(port), replicaof.to_vec()].concat()).await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let sentinel = start_on_a_free_port(|port| {
                let conf = dir.write(&format!("sentinel-{port}.conf"), sentinel_conf(master.0));
                [vec![conf, "--sentinel".to_owned()], args(port)].concat()
            })
            .await;
            sentinels.push(sentinel);
        }
        let deployment = Self {
            servers: vec![master, replica],
            sentinels,
            ca,
            _dir: dir,
        };
        deployment.until_settled().await;
        deployment
    }

    /// The CA's certificate (PEM) when the servers speak TLS.
    pub fn root_certificate(&self) -> Option<String> {
        self.ca.as_ref().map(Ca::certificate)
    }

    /// The URL of the server on `port` (`rediss://` over TLS).
    pub fn url(&self, port: u16) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{port}/")
    }

    /// The Sentinels' URLs.
    pub fn sentinel_urls(&self) -> Vec<String> {
        let ports = self.sentinels.iter().map(|(port, _)| *port);
        ports.map(|port| self.url(port)).collect()
    }

    /// The ports of the two data servers (the master's at start first).
    pub fn servers(&self) -> [u16; 2] {
        [self.servers[0].0, self.servers[1].0]
    }

    /// The master's port, as the first Sentinel names it now.
    pub async fn master(&self) -> u16 {
        let (_, port): (String, u16) = self
            .query(self.sentinels[0].0, &master_addr())
            .await
            .expect("the Sentinel names the master");
        port
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
        let () = self
            .query(self.sentinels[0].0, &command)
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

    /// Runs `command` on the server at 127.0.0.1:`port`, within 2 s.
    pub async fn query<T: FromRedisValue>(&self, port: u16, command: &Cmd) -> RedisResult<T> {
        let run = async {
            let mut conn = self.connection(port).await?;
            command.query_async(&mut conn).await
        };
        tokio::time::timeout(Duration::from_secs(2), run)
            .await
            .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "no answer within 2 s").into()))
    }

    /// A connection to the server on `port`, trusting the CA if there is one.
    pub async fn connection(&self, port: u16) -> RedisResult<MultiplexedConnection> {
        redis_tls::connection(&self.url(port), self.root_certificate()).await
    }

    async fn new_master(&self, old: u16) -> Option<u16> {
        let mut named = Vec::new();
        for (port, _) in &self.sentinels {
            let (_, master): (String, u16) = self.query(*port, &master_addr()).await.ok()?;
            named.push(master);
        }
        let new = named[0];
        if new == old || named.iter().any(|master| *master != new) {
            return None;
        }
        let role: Vec<redis::Value> = self.query(new, &redis::cmd("ROLE")).await.ok()?;
        let is_master = matches!(
            role.first(),
            Some(redis::Value::BulkString(role)) if role == b"master"
        );
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
        let command = redis::cmd("INFO").arg("replication").clone();
        let info = self.query::<String>(replica, &command).await;
        if !info.is_ok_and(|info| info.contains("master_link_status:up")) {
            return false;
        }
        for (port, _) in &self.sentinels {
            let command = redis::cmd("SENTINEL").arg("MASTER").arg(SERVICE).clone();
            let Ok(master) = self.query::<HashMap<String, String>>(*port, &command).await else {
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

fn master_addr() -> Cmd {
    redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(SERVICE)
        .clone()
}

/// A `redis-server` with the arguments `args` makes for a free port, and that port.
async fn start_on_a_free_port(mut args: impl FnMut(u16) -> Vec<String>) -> (u16, Process) {
    let (process, [port]) =
        Process::start_on_free_ports("redis-server", || [free_port()], |[port]| args(port)).await;
    (port, process)
}

/// A Sentinel's configuration file (Sentinels rewrite theirs: one file each); its
/// port and address are on its command line.
fn sentinel_conf(master: u16) -> String {
    let down_after = DOWN_AFTER.as_millis();
    format!(
        "protected-mode no\n\
         sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n\
         sentinel down-after-milliseconds {SERVICE} {down_after}\n\
         sentinel failover-timeout {SERVICE} 5000\n\
         sentinel parallel-syncs {SERVICE} 1\n"
    )
}
