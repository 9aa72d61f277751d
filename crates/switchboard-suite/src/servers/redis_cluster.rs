//! A Redis Cluster of one test: three masters and a replica of each, on free ports,
//! without persistence, with a node timeout of one second (a killed master's replica
//! takes over within a few), all killed when dropped.

use super::{
    free_port,
    process::{Process, TempDir},
    redis::redis_server_args,
};
use crate::support::within;
use redis::{Cmd, FromRedisValue, Value};
use std::{process::Stdio, time::Duration};

/// Six `redis-server --cluster-enabled yes` and their files.
#[derive(Debug)]
pub struct RedisCluster {
    /// Dropped first: the processes go before their files.
    nodes: Vec<Node>,
    dir: TempDir,
}

#[derive(Debug)]
struct Node {
    port: u16,
    /// `None` while killed.
    process: Option<Process>,
}

impl RedisCluster {
    /// Starts three masters and three replicas (`redis-cli --cluster create
    /// --cluster-replicas 1`) and returns once every node says `cluster_state:ok`.
    pub async fn start() -> Self {
        let mut cluster = Self {
            nodes: Vec::new(),
            dir: TempDir::new("cluster"),
        };
        while cluster.nodes.len() < 6 {
            cluster.start_node().await;
        }
        cluster.create().await;
        cluster.until_ok().await;
        cluster
    }

    /// Starts one more node, on a free port whose bus port is free too.
    async fn start_node(&mut self) {
        let (process, [port, _]) = Process::start_on_free_ports(
            "redis-server",
            || {
                let port = free_port();
                [port, bus_port(port)]
            },
            |[port, _]| self.args(port),
        )
        .await;
        self.nodes.push(Node {
            port,
            process: Some(process),
        });
    }

    /// Starts the node on `port` again, with its cluster configuration.
    async fn restart_node(&self, port: u16) -> Process {
        let started =
            Process::start("redis-server", &self.args(port), &[port, bus_port(port)]).await;
        started.unwrap_or_else(|status| panic!("a cluster node again on port {port}: {status}"))
    }

    /// A node's arguments: its cluster configuration in a file named after its port.
    fn args(&self, port: u16) -> Vec<String> {
        let config = self.dir.path().join(format!("nodes-{port}.conf"));
        let cluster = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &config.to_string_lossy(),
            "--cluster-node-timeout",
            "1000",
        ];
        let cluster = cluster.map(str::to_owned).to_vec();
        [redis_server_args(port, self.dir.path()), cluster].concat()
    }

    async fn create(&self) {
        let mut create = tokio::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &self.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .kill_on_drop(true);
        let status = within("redis-cli --cluster create", create.status()).await;
        assert!(
            status.is_ok_and(|status| status.success()),
            "redis-cli --cluster create"
        );
    }

    /// Returns once every live node says `cluster_state:ok`, a live master serves
    /// every slot and every replica is in sync with its master (a replica that never
    /// synced cannot take over): after a start, a failover or a slot's move.
    pub async fn until_ok(&self) {
        within("cluster_state:ok on every node", async {
            while !self.is_ok().await {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }

    async fn is_ok(&self) -> bool {
        let live = self.live_ports();
        for &port in &live {
            let cluster: String = query(port, redis::cmd("CLUSTER").arg("INFO"))
                .await
                .unwrap_or_default();
            let replication: String = query(port, redis::cmd("INFO").arg("replication"))
                .await
                .unwrap_or_default();
            let replica_down = replication.contains("role:slave")
                && !replication.contains("master_link_status:up");
            if !cluster.contains("cluster_state:ok") || replica_down {
                return false;
            }
        }
        let masters = self.masters().await;
        masters.iter().all(|master| live.contains(master))
    }

    /// The URLs of every node, `redis://127.0.0.1:<port>/`: what a broker is given.
    pub fn urls(&self) -> Vec<String> {
        let ports = self.nodes.iter().map(|node| node.port);
        ports
            .map(|port| format!("redis://127.0.0.1:{port}/"))
            .collect()
    }

    fn live_ports(&self) -> Vec<u16> {
        let live = self.nodes.iter().filter(|node| node.process.is_some());
        live.map(|node| node.port).collect()
    }

    /// The ports of the masters that serve slots, as a live node sees them.
    pub async fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<u16> = self
            .slots()
            .await
            .into_iter()
            .map(|(_, _, port)| port)
            .collect();
        masters.sort_unstable();
        masters.dedup();
        masters
    }

    /// The port of the master that serves `slot`.
    pub async fn master_of(&self, slot: u16) -> u16 {
        let slots = self.slots().await;
        let owner = slots
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot));
        owner.expect("every slot has a master").2
    }

    /// `CLUSTER SLOTS` of the first live node that answers: `(start, end, master port)`.
    async fn slots(&self) -> Vec<(u16, u16, u16)> {
        for port in self.live_ports() {
            let Ok(Value::Array(ranges)) = query(port, redis::cmd("CLUSTER").arg("SLOTS")).await
            else {
                continue;
            };
            return ranges.iter().filter_map(range).collect();
        }
        panic!("no live cluster node answers")
    }

    /// The slot Redis computes for `key` (`CLUSTER KEYSLOT`).
    pub async fn keyslot(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await
            .expect("CLUSTER KEYSLOT")
    }

    /// Kills every node with SIGKILL, until [`RedisCluster::restart`]: what they held
    /// is lost, their cluster configuration kept.
    pub fn stop(&mut self) {
        for port in self.live_ports() {
            self.kill(port);
        }
    }

    /// Starts every node that is not running again, on its port and with its cluster
    /// configuration, and returns once the cluster is ok.
    pub async fn restart(&mut self) {
        self.restart_nodes().await;
        self.until_ok().await;
    }

    /// Starts every node that is not running again, on its port and with its cluster
    /// configuration, and returns once each serves, before the cluster agrees it is ok
    /// (see [`RedisCluster::until_ok`]).
    pub async fn restart_nodes(&mut self) {
        for index in 0..self.nodes.len() {
            if self.nodes[index].process.is_none() {
                let process = self.restart_node(self.nodes[index].port).await;
                self.nodes[index].process = Some(process);
            }
        }
    }

    /// Cuts the subscriber connections named `name` (`CLIENT SETNAME`) on every
    /// master (`CLIENT KILL ID`); how many.
    pub async fn kill_clients_named(&self, name: &str) -> usize {
        let mut killed = 0;
        for port in self.masters().await {
            let list: String = query(port, redis::cmd("CLIENT").arg("LIST"))
                .await
                .unwrap_or_default();
            let named = format!("name={name} ");
            let ids = list
                .lines()
                .filter(|line| line.contains(&named))
                .filter_map(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")));
            for id in ids {
                let kill = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).clone();
                killed += query::<usize>(port, &kill).await.unwrap_or(0);
            }
        }
        killed
    }

    /// Returns once `hubs` connections are subscribed to the sharded `channel` on its
    /// master (`PUBSUB SHARDNUMSUB`).
    pub async fn until_subscribers(&self, channel: &str, hubs: usize) {
        within(&format!("{hubs} subscribers on {channel}"), async {
            loop {
                let master = self.master_of(self.keyslot(channel).await).await;
                let numsub = redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channel).clone();
                let counts: Vec<(String, usize)> = query(master, &numsub).await.unwrap_or_default();
                if counts.first().is_some_and(|(_, count)| *count == hubs) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Stops the node on `port` without closing anything (SIGSTOP): a frozen node,
    /// whose connections stay open and unanswered, until [`RedisCluster::resume`]
    /// (or its kill). Panics if no live node is there.
    pub fn pause(&self, port: u16) {
        assert!(self.node(port).signal("STOP"), "SIGSTOP the node on {port}");
    }

    /// Lets the node on `port` that [`RedisCluster::pause`] stopped run again
    /// (SIGCONT).
    pub fn resume(&self, port: u16) {
        assert!(self.node(port).signal("CONT"), "SIGCONT the node on {port}");
    }

    /// The process of the live node on `port`.
    fn node(&self, port: u16) -> &Process {
        let node = self.nodes.iter().find(|node| node.port == port);
        let process = node.and_then(|node| node.process.as_ref());
        process.unwrap_or_else(|| panic!("no live cluster node on port {port}"))
    }

    /// Kills the node on `port` with SIGKILL, as a crash would.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|node| node.port == port) {
            // Dropped: SIGKILLed and reaped.
            node.process = None;
        }
    }

    /// Room names `<stem><n>`, each served by another master, one per master, each
    /// with its master's port.
    pub async fn rooms_on_each_master(&self, stem: &str) -> Vec<(String, u16)> {
        let masters = self.masters().await;
        let mut rooms: Vec<(String, u16)> = Vec::new();
        for n in 0.. {
            let room = format!("{stem}{n}");
            let master = self
                .master_of(self.keyslot(&room_channel(&room)).await)
                .await;
            if rooms.iter().all(|(_, taken)| *taken != master) {
                rooms.push((room, master));
            }
            if rooms.len() == masters.len() {
                break;
            }
        }
        rooms
    }

    /// Moves `slot` (and its keys) to the master on `to`, as `redis-cli --cluster
    /// reshard` does: [`RedisCluster::begin_move`], [`SlotMove::migrate_keys`],
    /// [`RedisCluster::end_move`].
    pub async fn move_slot(&self, slot: u16, to: u16) {
        let moving = self.begin_move(slot, to).await;
        moving.migrate_keys().await;
        self.end_move(&moving).await;
    }

    /// Starts moving `slot` to the master on `to`: `SETSLOT IMPORTING` there and
    /// `MIGRATING` on its master, which then answers `ASK` for keys it no longer has.
    pub async fn begin_move(&self, slot: u16, to: u16) -> SlotMove {
        let from = self.master_of(slot).await;
        let (from_id, to_id) = (node_id(from).await, node_id(to).await);
        setslot(to, slot, "IMPORTING", &from_id).await;
        setslot(from, slot, "MIGRATING", &to_id).await;
        SlotMove {
            slot,
            from,
            to,
            to_id,
        }
    }

    /// Ends `moving`: `SETSLOT NODE` on both ends and every other master, and returns
    /// once the cluster is ok.
    pub async fn end_move(&self, moving: &SlotMove) {
        for port in [moving.to, moving.from] {
            setslot(port, moving.slot, "NODE", &moving.to_id).await;
        }
        for port in self.masters().await {
            // Those that refuse (a master that knows already) need not be told.
            let _: redis::RedisResult<()> =
                query(port, &slot_command(moving.slot, "NODE", &moving.to_id)).await;
        }
        self.until_ok().await;
    }
}

/// A slot on its way from one master to another.
#[derive(Debug)]
pub struct SlotMove {
    /// The slot.
    pub slot: u16,
    /// The port of its master when the move began.
    pub from: u16,
    /// The port of the master it goes to.
    pub to: u16,
    to_id: String,
}

impl SlotMove {
    /// The keys of the slot still on the old master.
    pub async fn keys(&self) -> Vec<String> {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("GETKEYSINSLOT").arg(self.slot).arg(100);
        query(self.from, &cmd).await.expect("GETKEYSINSLOT")
    }

    /// `MIGRATE`s the slot's keys to the new master, until the old one has none.
    pub async fn migrate_keys(&self) {
        loop {
            let keys = self.keys().await;
            if keys.is_empty() {
                return;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(self.to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys);
            ok(query(self.from, &migrate).await);
        }
    }
}

/// A room's channel on a Redis Cluster, with the default prefix.
pub fn room_channel(room: &str) -> String {
    switchboard_redis::RedisConfig::default()
        .cluster([""; 0])
        .channel_room(room)
}

/// The id of the cluster node on `port` (`CLUSTER MYID`).
pub async fn node_id(port: u16) -> String {
    query(port, redis::cmd("CLUSTER").arg("MYID"))
        .await
        .expect("CLUSTER MYID")
}

/// `CLUSTER SETSLOT <slot> <state> <id>` on `port`, which must accept it.
pub async fn setslot(port: u16, slot: u16, state: &str, id: &str) {
    ok(query(port, &slot_command(slot, state, id)).await);
}

fn slot_command(slot: u16, state: &str, id: &str) -> Cmd {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
    cmd
}

/// The port of the cluster bus of the node on `port`: Redis's, 10,000 above.
fn bus_port(port: u16) -> u16 {
    port + 10_000
}

/// `(start, end, master's port)` of a `CLUSTER SLOTS` range.
fn range(range: &Value) -> Option<(u16, u16, u16)> {
    let Value::Array(range) = range else {
        return None;
    };
    let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
        (range.first(), range.get(1), range.get(2))
    else {
        return None;
    };
    let Some(Value::Int(port)) = master.get(1) else {
        return None;
    };
    Some((
        u16::try_from(*start).ok()?,
        u16::try_from(*end).ok()?,
        u16::try_from(*port).ok()?,
    ))
}

/// Runs `command` on the node on `port`, within a second.
pub async fn query<T: FromRedisValue>(port: u16, command: &Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let reply = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        command.query_async(&mut conn).await
    };
    tokio::time::timeout(Duration::from_secs(1), reply)
        .await
        .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "no answer within 1 s").into()))
}

fn ok(reply: redis::RedisResult<()>) {
    reply.expect("the cluster node accepts the command");
}
