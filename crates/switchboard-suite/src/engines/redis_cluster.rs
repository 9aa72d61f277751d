//! Hubs on a Redis Cluster of their own (three masters, three replicas), with sharded
//! pub/sub.

use crate::servers::redis_cluster::RedisCluster;
use std::time::Duration;
use switchboard_broker::{Broker, NodeId};
use switchboard_redis::{RedisBroker, RedisConfig};

/// A cluster per test.
#[derive(Debug)]
pub struct Engine(RedisCluster);

impl Engine {
    /// The cluster, for a test's own checks (which master serves a slot, a failover).
    pub fn cluster(&mut self) -> &mut RedisCluster {
        &mut self.0
    }
}

/// The configuration of a hub on the cluster of these nodes: reconnections at most
/// 200 ms apart, so that a failover is followed within a test's patience.
pub fn config(nodes: &[String]) -> RedisConfig {
    RedisConfig::default()
        .cluster(nodes)
        .max_backoff(Duration::from_millis(200))
}

/// The name [`broker_from_args`](super::broker_from_args) knows a cluster child by.
pub(crate) const ARG: &str = "redis_cluster";

/// A broker on `config`.
fn connect(config: RedisConfig) -> Box<dyn Broker> {
    Box::new(RedisBroker::new(config).expect("valid cluster URLs"))
}

/// The broker of a hub on the cluster of these nodes.
pub(crate) fn broker(nodes: &[String]) -> Box<dyn Broker> {
    connect(config(nodes))
}

impl crate::Engine for Engine {
    const NAME: &'static str = "redis_cluster";
    const CROSSES_PROCESSES: bool = true;
    const CAN_FAIL: bool = true;

    async fn start() -> Self {
        Self(RedisCluster::start().await)
    }

    fn broker(&self) -> Box<dyn Broker> {
        broker(&self.0.urls())
    }

    fn broker_with_queue(&self, max_pending_publishes: usize) -> Box<dyn Broker> {
        connect(config(&self.0.urls()).max_pending_publishes(max_pending_publishes))
    }

    fn child_args(&self) -> Option<Vec<String>> {
        Some([vec![ARG.to_owned()], self.0.urls()].concat())
    }

    async fn subscribed(&self, room: &str, hubs: usize) {
        // The broker's default prefix; a room's channel is its stream's hash tag.
        let channel = format!("{{switchboard:room:{room}}}");
        self.0.until_subscribers(&channel, hubs).await;
    }

    /// Kills the hub's subscriber connections (`CLIENT KILL ID` on every master): one
    /// is enough to fail its whole link, which reconnects and subscribes again.
    async fn blip(&self, node: NodeId) {
        let killed = self
            .0
            .kill_clients_named(&format!("switchboard-sub-{node}"))
            .await;
        assert!(killed > 0, "no subscriber of {node} to kill");
    }

    async fn stop(&mut self) {
        self.0.stop();
    }

    async fn restart(&mut self) {
        self.0.restart().await;
    }
}
