//! Hubs on a Redis of the test's own ([`RedisServer`]), each through its own
//! [`RedisBroker`], on a prefix of the engine value's own.

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
    /// Every hub's configuration, on the server's URL and the engine's prefix.
    config: RedisConfig,
}

impl Engine {
    /// The test's `redis-server`, for checks and cuts of Redis's own.
    pub fn server(&self) -> &RedisServer {
        &self.server
    }

    /// The configuration of this engine's hubs: the prefix of their channels and
    /// keys, say.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }
}

/// The configuration of a hub's broker on the Redis at `url`, on `prefix`:
/// reconnections within 200 ms, so that the tests' blips and restarts are short.
fn config(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig::default()
        .url(url)
        .prefix(prefix)
        .max_backoff(Duration::from_millis(200))
}

/// A broker on `config` (of a single Redis or of a cluster), its queue of publishes
/// bounded to `max_pending_publishes` if given.
pub(super) fn connect(
    config: &RedisConfig,
    max_pending_publishes: Option<usize>,
) -> Box<dyn Broker> {
    let mut config = config.clone();
    if let Some(max) = max_pending_publishes {
        config = config.max_pending_publishes(max);
    }
    Box::new(RedisBroker::new(config).expect("a valid Redis configuration"))
}

/// The broker of a hub on the Redis at `url`, on `prefix`.
pub(crate) fn broker(url: &str, prefix: &str) -> Box<dyn Broker> {
    connect(&config(url, prefix), None)
}

impl crate::Engine for Engine {
    const NAME: &'static str = "redis";
    const CROSSES_PROCESSES: bool = true;
    const CAN_FAIL: bool = true;

    async fn start() -> Self {
        let server = RedisServer::start().await;
        let config = config(&server.url(), &super::unique_prefix());
        Self { server, config }
    }

    fn broker(&self) -> Box<dyn Broker> {
        connect(&self.config, None)
    }

    fn broker_with_queue(&self, max_pending_publishes: usize) -> Box<dyn Broker> {
        connect(&self.config, Some(max_pending_publishes))
    }

    /// The name, the URL, the prefix.
    fn child_args(&self) -> Option<Vec<String>> {
        Some(vec![
            ARG.to_owned(),
            self.server.url(),
            self.config.prefix.clone(),
        ])
    }

    /// Counts the subscribers of the room's channel, `<prefix>:room:<room>`.
    async fn subscribed(&self, room: &str, hubs: usize) {
        let channel = self.config.channel_room(room);
        self.server.until_subscribers(&channel, hubs).await;
    }

    /// Kills the hub's subscriber connection, found by the name the broker gives it
    /// (`CLIENT SETNAME switchboard-sub-<node>`), with `CLIENT KILL ID`: that fails
    /// the hub's whole link, which reconnects and subscribes again.
    async fn blip(&self, node: NodeId) {
        self.server.kill_subscriber_of(node).await;
    }

    async fn stop(&mut self) {
        self.server.kill();
    }

    /// `redis-server --save '' --appendonly no` again: it had nothing on disk.
    async fn restart(&mut self) {
        self.server.restart().await;
    }
}
