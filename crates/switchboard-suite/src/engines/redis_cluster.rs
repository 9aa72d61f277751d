//! Hubs on a Redis Cluster of their own (three masters, three replicas), with sharded
//! pub/sub.

use crate::servers::redis_cluster::RedisCluster;
use std::time::Duration;
use switchboard_broker::Broker;
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

/// The broker of a child process's hub, from `redis_cluster URL…`.
pub(crate) fn broker(nodes: &[String]) -> Box<dyn Broker> {
    Box::new(RedisBroker::new(config(nodes)).expect("valid cluster URLs"))
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

    fn child_args(&self) -> Option<Vec<String>> {
        Some([vec![Self::NAME.to_owned()], self.0.urls()].concat())
    }

    async fn blip(&self) {
        self.0.kill_clients().await;
    }

    async fn stop(&mut self) {
        self.0.stop();
    }

    async fn restart(&mut self) {
        self.0.restart().await;
    }
}
