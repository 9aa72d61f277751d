//! Hubs of one process, wired to each other without a network.

use crate::{Broker, Envelope, Inbox, NodeId, Target};
use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

/// Hubs in one process, connected to each other: the default backplane of a single
/// hub, and the way tests wire several hubs together.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    members: Arc<Mutex<HashMap<NodeId, Member>>>,
}

struct Member {
    inbox: Inbox,
    rooms: HashSet<String>,
}

/// One hub's attachment to a [`MemoryNetwork`].
pub struct MemoryBroker {
    network: MemoryNetwork,
    node: Mutex<Option<NodeId>>,
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// A broker for one more hub on this network.
    pub fn broker(&self) -> MemoryBroker {
        MemoryBroker {
            network: self.clone(),
            node: Mutex::new(None),
        }
    }
}

impl MemoryBroker {
    fn with_member(&self, f: impl FnOnce(&mut Member)) {
        let Some(node) = *lock(&self.node) else {
            return;
        };
        if let Some(member) = lock(&self.network.members).get_mut(&node) {
            f(member);
        }
    }
}

impl Broker for MemoryBroker {
    fn start(&self, inbox: Inbox) {
        *lock(&self.node) = Some(inbox.node());
        let member = Member {
            inbox: inbox.clone(),
            rooms: HashSet::new(),
        };
        lock(&self.network.members).insert(inbox.node(), member);
    }

    fn publish(&self, envelope: Envelope) {
        let origin = envelope.origin;
        // Delivered outside the lock: a hub may publish again while delivering.
        let inboxes: Vec<Inbox> = lock(&self.network.members)
            .iter()
            .filter(|(node, member)| {
                **node != origin
                    && match &envelope.target {
                        Target::All | Target::Nodes => true,
                        Target::Room(room) => member.rooms.contains(room),
                        Target::Connection(id) => id.node() == **node,
                        Target::Node(id) => id == *node,
                    }
            })
            .map(|(_, member)| member.inbox.clone())
            .collect();
        for inbox in inboxes {
            inbox.deliver(&envelope);
        }
    }

    fn subscribe(&self, room: &str) {
        self.with_member(|m| {
            m.rooms.insert(room.to_owned());
        });
    }

    fn unsubscribe(&self, room: &str) {
        self.with_member(|m| {
            m.rooms.remove(room);
        });
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        if let Some(node) = *lock(&self.node) {
            lock(&self.network.members).remove(&node);
        }
    }
}

impl fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryNetwork")
            .field("hubs", &lock(&self.members).len())
            .finish()
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("node", &*lock(&self.node))
            .finish()
    }
}

/// The lock, even if a panic poisoned it: each critical section here is one map
/// update, which a panic cannot leave half done.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnectionId;
    use switchboard_proto::Message;

    /// A hub stand-in on `network`: its broker and what its inbox received.
    fn hub(network: &MemoryNetwork) -> (MemoryBroker, NodeId, Arc<Mutex<Vec<String>>>) {
        let broker = network.broker();
        let node = NodeId::random();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        broker.start(Inbox::new(node, move |envelope| {
            if let Message::Text(text) = &envelope.message {
                lock(&log).push(text.as_str().to_owned());
            }
            true
        }));
        (broker, node, received)
    }

    fn envelope(origin: NodeId, target: Target, text: &str) -> Envelope {
        Envelope {
            origin,
            target,
            except: None,
            message: Message::text(text.to_owned()),
            position: None,
        }
    }

    #[test]
    fn envelopes_reach_the_other_hubs_they_are_for() {
        let network = MemoryNetwork::new();
        let (a, a_node, a_got) = hub(&network);
        let (b, b_node, b_got) = hub(&network);
        let (_c, _, c_got) = hub(&network);
        b.subscribe("red");
        a.subscribe("red");
        a.publish(envelope(a_node, Target::All, "all"));
        a.publish(envelope(a_node, Target::Room("red".into()), "red"));
        let b_conn = ConnectionId::new(b_node, 1);
        a.publish(envelope(a_node, Target::Connection(b_conn), "to b"));
        a.publish(envelope(a_node, Target::Node(b_node), "to b itself"));
        a.publish(envelope(a_node, Target::Nodes, "nodes"));
        b.unsubscribe("red");
        a.publish(envelope(a_node, Target::Room("red".into()), "red again"));
        b.publish(envelope(b_node, Target::Room("red".into()), "red from b"));
        assert_eq!(*lock(&a_got), ["red from b"], "a hub never hears itself");
        assert_eq!(
            *lock(&b_got),
            ["all", "red", "to b", "to b itself", "nodes"]
        );
        assert_eq!(*lock(&c_got), ["all", "nodes"]);
        drop(b);
        assert_eq!(format!("{network:?}"), "MemoryNetwork { hubs: 2 }");
    }
}
