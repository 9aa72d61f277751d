//! Hubs on a Redis of the test's own ([`RedisServer`]), each through its own
//! [`RedisBroker`].

use crate::servers::redis::RedisServer;
use std::time::Duration;
use switchboard_broker::{Broker, NodeId};
use switchboard_redis::{RedisBroker, RedisConfig};

/// The name [`broker_from_args`](super::broker_from_args) knows a Redis child by.
pub(crate) const ARG: &str = "redis";

/// A `redis-server` per test.
#[derive(Debug)]
pub struct Engine {
    server: RedisServer,
}

impl Engine {
    /// The test's `redis-server`, for checks and cuts of Redis's own.
    pub fn server(&self) -> &RedisServer {
        &self.server
    }
}

/// The configuration of a hub's broker on the Redis at `url`: reconnections within
/// 200 ms, so that the tests' blips and restarts are short.
fn config(url: &str) -> RedisConfig {
    RedisConfig::default()
        .url(url)
        .max_backoff(Duration::from_millis(200))
}

/// A broker on `config`.
fn connect(config: RedisConfig) -> Box<dyn Broker> {
    Box::new(RedisBroker::new(config).expect("a valid Redis configuration"))
}

/// The broker of a hub on the Redis at `url`.
pub(crate) fn broker(url: &str) -> Box<dyn Broker> {
    connect(config(url))
}

impl crate::Engine for Engine {
    const NAME: &'static str = "redis";
    const CROSSES_PROCESSES: bool = true;
    const CAN_FAIL: bool = true;

    async fn start() -> Self {
        Self {
            server: RedisServer::start().await,
        }
    }

    fn broker(&self) -> Box<dyn Broker> {
        broker(&self.server.url())
    }

    fn broker_with_queue(&self, max_pending_publishes: usize) -> Box<dyn Broker> {
        connect(config(&self.server.url()).max_pending_publishes(max_pending_publishes))
    }

    fn child_args(&self) -> Option<Vec<String>> {
        Some(vec![ARG.to_owned(), self.server.url()])
    }

    async fn subscribed(&self, room: &str, hubs: usize) {
        // The broker's default prefix.
        let channel = format!("switchboard:room:{room}");
        self.server.until_subscribers(&channel, hubs).await;
    }

    /// Kills the hub's subscriber connection (`CLIENT KILL ID`), which fails its
    /// whole link: it reconnects and subscribes again.
    async fn blip(&self, node: NodeId) {
        self.server.kill_subscriber_of(node).await;
    }

    async fn stop(&mut self) {
        self.server.kill();
    }

    async fn restart(&mut self) {
        self.server.restart().await;
    }
}
