//! Hubs on a NATS server with JetStream of the test's own.

use crate::servers::nats::NatsServer;
use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};
use switchboard_broker::{Broker, NodeId};
use switchboard_nats::{LinkHandle, NatsBroker, NatsConfig};

/// The name [`broker_from_args`](super::broker_from_args) knows a NATS child by.
pub(crate) const ARG: &str = "nats";

/// The configuration of a hub's broker on the NATS at `url` under `prefix`:
/// reconnections within half a second of NATS coming back (tests restart it).
fn config(url: &str, prefix: &str) -> NatsConfig {
    NatsConfig::default()
        .url(url)
        .prefix(prefix)
        .max_backoff(Duration::from_millis(500))
}

/// A broker for a hub on the NATS at `url` under `prefix`, as the suite makes them:
/// for tests of NATS's own and for examples that measure the engine.
pub fn broker(url: &str, prefix: &str) -> NatsBroker {
    NatsBroker::new(config(url, prefix)).expect("a valid prefix")
}

/// The broker of a hub in a child process, on the NATS at `url` under `prefix`.
pub(crate) fn child_broker(url: &str, prefix: &str) -> Box<dyn Broker> {
    Box::new(broker(url, prefix))
}

/// One `nats-server -js` per test.
#[derive(Debug)]
pub struct Engine {
    server: NatsServer,
    /// This engine value's own ([`super::unique_prefix`]).
    prefix: String,
    /// The links of the brokers this engine made, for [`crate::Engine::blip`].
    links: Mutex<Vec<LinkHandle>>,
}

impl Engine {
    /// The test's server, for what only NATS does (restart it without its storage).
    pub fn server(&self) -> &NatsServer {
        &self.server
    }
}

impl crate::Engine for Engine {
    const NAME: &'static str = "nats";
    const CROSSES_PROCESSES: bool = true;
    const CAN_FAIL: bool = true;

    async fn start() -> Self {
        Self {
            server: NatsServer::start().await,
            prefix: super::unique_prefix(),
            links: Mutex::default(),
        }
    }

    fn broker(&self) -> Box<dyn Broker> {
        self.broker_with_queue(NatsConfig::default().max_pending_publishes)
    }

    fn broker_with_queue(&self, max_pending_publishes: usize) -> Box<dyn Broker> {
        let config =
            config(&self.server.url(), &self.prefix).max_pending_publishes(max_pending_publishes);
        let broker = NatsBroker::new(config).expect("a valid prefix");
        self.links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(broker.link());
        Box::new(broker)
    }

    /// The name, the URL, the prefix.
    fn child_args(&self) -> Option<Vec<String>> {
        Some(vec![ARG.to_owned(), self.server.url(), self.prefix.clone()])
    }

    async fn subscribed(&self, room: &str, hubs: usize) {
        let subject = NatsConfig::default()
            .prefix(&self.prefix)
            .room_subject(room);
        self.server.until_subscribers(&subject, hubs).await;
    }

    /// Closes the hub's connection (the client's `force_reconnect`): NATS drops its
    /// subscriptions, and what others publish until it is back is lost to it.
    async fn blip(&self, node: NodeId) {
        let link = self
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|link| link.node() == Some(node))
            .cloned();
        let link = link.unwrap_or_else(|| panic!("no broker of this engine for {node}"));
        assert!(link.force_reconnect().await, "{node} has no link to cut");
    }

    async fn stop(&mut self) {
        self.server.kill();
    }

    /// Back without its storage, as the Redis engine's comes back without its data
    /// (tests of a restart that keeps JetStream's storage are NATS's own).
    async fn restart(&mut self) {
        self.server.restart_empty().await;
    }
}
