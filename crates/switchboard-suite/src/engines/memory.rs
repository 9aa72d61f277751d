//! Hubs of one process on a [`MemoryNetwork`].

use switchboard_broker::{Broker, MemoryNetwork, NodeId};

/// A [`MemoryNetwork`] per test.
#[derive(Debug, Clone)]
pub struct Engine(MemoryNetwork);

impl crate::Engine for Engine {
    const NAME: &'static str = "memory";
    const CROSSES_PROCESSES: bool = false;
    const CAN_FAIL: bool = false;

    async fn start() -> Self {
        Self(MemoryNetwork::new())
    }

    fn broker(&self) -> Box<dyn Broker> {
        Box::new(self.0.broker())
    }

    fn broker_with_queue(&self, _max_pending_publishes: usize) -> Box<dyn Broker> {
        self.broker()
    }

    fn child_args(&self) -> Option<Vec<String>> {
        None
    }

    /// At once: a memory broker subscribes as the hub asks.
    async fn subscribed(&self, _room: &str, _hubs: usize) {}

    async fn blip(&self, _node: NodeId) {}

    async fn stop(&mut self) {}

    async fn restart(&mut self) {}
}
