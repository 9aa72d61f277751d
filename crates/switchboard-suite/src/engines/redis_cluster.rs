//! Hubs on a Redis Cluster of their own (three masters, three replicas), with sharded
//! pub/sub, on a prefix of the engine value's own.

use super::redis::connect;
use crate::servers::redis_cluster::RedisCluster;
use std::time::Duration;
use switchboard_broker::{Broker, NodeId};
use switchboard_redis::RedisConfig;

/// A cluster per test.
#[derive(Debug)]
pub struct Engine {
    cluster: RedisCluster,
    /// Every hub's configuration, on the cluster's nodes and the engine's prefix.
    config: RedisConfig,
}

impl Engine {
    /// The cluster, for a test's own checks (which master serves a slot, a failover).
    pub fn cluster(&mut self) -> &mut RedisCluster {
        &mut self.cluster
    }

    /// The configuration of this engine's hubs: the prefix of their channels and
    /// keys.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }
}

/// The configuration of a hub on the cluster of these nodes, on `prefix`:
/// reconnections at most 200 ms apart, so that a failover is followed within a test's
/// patience.
pub fn config(nodes: &[String], prefix: &str) -> RedisConfig {
    RedisConfig::default()
        .cluster(nodes)
        .prefix(prefix)
        .max_backoff(Duration::from_millis(200))
}

/// The name [`broker_from_args`](super::broker_from_args) knows a cluster child by.
pub(crate) const ARG: &str = "redis_cluster";

/// The broker of a hub on the cluster of these nodes, on `prefix`.
pub(crate) fn broker(nodes: &[String], prefix: &str) -> Box<dyn Broker> {
    connect(&config(nodes, prefix), None)
}

impl crate::Engine for Engine {
    const NAME: &'static str = "redis_cluster";
    const CROSSES_PROCESSES: bool = true;
    const CAN_FAIL: bool = true;

    async fn start() -> Self {
        let cluster = RedisCluster::start().await;
        let config = config(&cluster.urls(), &super::unique_prefix());
        Self { cluster, config }
    }

    fn broker(&self) -> Box<dyn Broker> {
        connect(&self.config, None)
    }

    fn broker_with_queue(&self, max_pending_publishes: usize) -> Box<dyn Broker> {
        connect(&self.config, Some(max_pending_publishes))
    }

    /// The name, the prefix, the nodes' URLs.
    fn child_args(&self) -> Option<Vec<String>> {
        let head = [ARG.to_owned(), self.config.prefix.clone()];
        Some([head.to_vec(), self.cluster.urls()].concat())
    }

    /// Counts the subscribers of the room's sharded channel, `{<prefix>:room:<room>}`
    /// (its stream's hash tag), on its master.
    async fn subscribed(&self, room: &str, hubs: usize) {
        let channel = self.config.channel_room(room);
        self.cluster.until_subscribers(&channel, hubs).await;
    }

    /// Kills the hub's subscriber connections (`CLIENT KILL ID` on every master): one
    /// is enough to fail its whole link, which reconnects and subscribes again.
    async fn blip(&self, node: NodeId) {
        let killed = self
            .cluster
            .kill_clients_named(&format!("switchboard-sub-{node}"))
            .await;
        assert!(killed > 0, "no subscriber of {node} to kill");
    }

    async fn stop(&mut self) {
        self.cluster.stop();
    }

    async fn restart(&mut self) {
        self.cluster.restart().await;
    }
}
