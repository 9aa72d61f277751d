//! The cluster: the hubs that share a broker, as this hub sees them, and the hubs' own
//! traffic (heartbeats, casts, requests and replies) on [`Target::Node`] and
//! [`Target::Nodes`].
//!
//! Everything here travels as envelopes over any [`Broker`](super::Broker), so that
//! every engine gets the same membership, presence and queries without code of its own.
//!
//! # Membership
//!
//! Every hub announces itself on [`Target::Nodes`] every
//! [`HubConfig::node_heartbeat`](super::HubConfig::node_heartbeat). A hub that heard
//! nothing from a peer for [`HubConfig::node_timeout`](super::HubConfig::node_timeout)
//! takes it for dead ([`PeerEvent::Down`]); a hub that shuts down says goodbye, so that
//! its peers need not wait. Node ids are drawn anew by every hub, so a process that
//! restarts is a new peer: nothing of the old one (presence, say) carries over.
//!
//! # Casts and gaps
//!
//! A cast goes to every hub and carries the sender's cast count; so does every
//! heartbeat. A receiver that sees the count jump, or a heartbeat announce casts it
//! never got, knows it missed some ([`PeerEvent::Gap`]) and resynchronises what it
//! keeps of that peer (its presence, say) with a request.
//!
//! # Requests
//!
//! A request goes to every live hub (this one included, answered in place) or to one,
//! and gathers the replies that arrive within a timeout. The answer names the hubs
//! that did not reply in time, so that a partial answer is never mistaken for a whole
//! one.

// Presence and the cluster queries build on the casts, requests and peer events.
#![allow(dead_code)]

use super::{Envelope, Hub, HubInner, NodeId, Target};
use crate::sync::{lock, read, write};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};
use switchboard_proto::Message;
use tokio::sync::oneshot;

/// What a hub does with a cast, a send or a request of one service: given the hub and
/// the sender, it returns the reply (ignored for casts and sends).
pub(crate) type Service = Arc<dyn Fn(&Hub, NodeId, Value) -> Value + Send + Sync>;

/// What this hub learned about a peer; services that keep state per peer (presence)
/// follow these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerEvent {
    /// A hub this hub had not heard from (new, or back after it was taken for dead).
    Up(NodeId),
    /// A hub that said goodbye or was silent for `node_timeout`.
    Down(NodeId),
    /// A hub some of whose casts this hub missed.
    Gap(NodeId),
}

/// Called on every [`PeerEvent`], from the broker's delivery or the heartbeat task:
/// must not block.
pub(crate) type PeerListener = Arc<dyn Fn(&Hub, PeerEvent) + Send + Sync>;

/// The hubs' own messages, as JSON in a text envelope.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Wire {
    /// "I am alive, and I have sent `casts` casts."
    Heartbeat { casts: u64 },
    /// "I am shutting down: forget me now."
    Bye,
    /// A message to every hub's `service`; the sender's `seq`-th cast.
    Cast {
        service: String,
        seq: u64,
        body: Value,
    },
    /// A message to one hub's `service`.
    Send { service: String, body: Value },
    /// A request to `service`, to be answered with a [`Wire::Reply`] of the same `id`.
    Request {
        id: u64,
        service: String,
        body: Value,
    },
    /// The answer to request `id`.
    Reply { id: u64, body: Value },
}

/// The replies to a request: by hub, and the hubs that did not reply in time.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Gathered {
    pub(crate) replies: BTreeMap<NodeId, Value>,
    pub(crate) missing: BTreeSet<NodeId>,
}

/// This hub's view of the cluster. One per hub, inside it.
pub(crate) struct Cluster {
    /// Made by [`Hub::new`], on a network of its own: it never has peers.
    solitary: AtomicBool,
    services: RwLock<HashMap<String, Service>>,
    listeners: RwLock<Vec<PeerListener>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    peers: HashMap<NodeId, Peer>,
    /// Casts this hub has sent.
    casts: u64,
    next_request: u64,
    pending: HashMap<u64, Pending>,
    /// Whether the heartbeat task runs (it starts with the first runtime that sees the
    /// hub).
    beating: bool,
    /// Said goodbye: beats no more.
    left: bool,
}

struct Peer {
    last_seen: Instant,
    /// The count of casts this hub got from the peer, or learned it missed.
    casts: u64,
}

struct Pending {
    waiting: BTreeSet<NodeId>,
    /// Asked every hub: a reply from a hub this one had not heard of yet counts too.
    everyone: bool,
    gathered: Gathered,
    done: Option<oneshot::Sender<()>>,
}

impl Cluster {
    pub(crate) fn new() -> Self {
        Self {
            solitary: AtomicBool::new(false),
            services: RwLock::default(),
            listeners: RwLock::default(),
            state: Mutex::default(),
        }
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("peers", &lock(&self.state).peers.len())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// This hub's view of the cluster (`cluster` is the public [`Hub::cluster`]).
    fn cluster_state(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// The hubs this hub knows to be alive, itself included, in node id order.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.start_heartbeat();
        let mut nodes: Vec<NodeId> = lock(&self.cluster_state().state)
            .peers
            .keys()
            .copied()
            .collect();
        nodes.push(self.node());
        nodes.sort_unstable();
        nodes
    }

    /// Makes `service` answer casts, sends and requests by that name. A later call for
    /// the same name replaces the earlier.
    pub(crate) fn serve_cluster(&self, service: &str, handler: Service) {
        write(&self.cluster_state().services).insert(service.to_owned(), handler);
        self.start_heartbeat();
    }

    /// Calls `listener` on every [`PeerEvent`] from now on, starting with an `Up` for
    /// each peer already known: a listener that came after a peer was heard (presence,
    /// made once the broker is up) would otherwise never take that peer's state. A
    /// peer heard while this runs may come up twice, which listeners take as once.
    pub(crate) fn on_peer_event(&self, listener: PeerListener) {
        write(&self.cluster_state().listeners).push(listener.clone());
        self.start_heartbeat();
        let known: Vec<NodeId> = lock(&self.cluster_state().state)
            .peers
            .keys()
            .copied()
            .collect();
        for node in known {
            listener(self, PeerEvent::Up(node));
        }
    }

    /// Sends `body` to `service` on every other hub, in order with this hub's other
    /// casts.
    pub(crate) fn cast(&self, service: &str, body: Value) {
        let seq = {
            let mut state = lock(&self.cluster_state().state);
            state.casts += 1;
            state.casts
        };
        let service = service.to_owned();
        self.publish_wire(Target::Nodes, &Wire::Cast { service, seq, body });
    }

    /// Sends `body` to `service` on the hub `node` (nothing if it is this hub).
    pub(crate) fn send_to_node(&self, node: NodeId, service: &str, body: Value) {
        let service = service.to_owned();
        self.publish_wire(Target::Node(node), &Wire::Send { service, body });
    }

    /// Asks `service` on `to` (one hub, or every live hub with `None`; this hub answers
    /// in place) and gathers the replies that arrive within `timeout`.
    pub(crate) async fn request(
        &self,
        to: Option<NodeId>,
        service: &str,
        body: Value,
        timeout: Duration,
    ) -> Gathered {
        self.request_with(to, service, body, timeout, false).await
    }

    /// Asks `service` on every hub, this one in place, and gathers every reply that
    /// arrives within `timeout`, from hubs this one has not heard of yet too: for a hub
    /// that may not know every other one yet (see [`Hub::is_young`]).
    pub(crate) async fn request_everyone_for(
        &self,
        service: &str,
        body: Value,
        timeout: Duration,
    ) -> Gathered {
        self.request_with(None, service, body, timeout, true).await
    }

    /// Whether this hub started too recently to have heard every other hub's first
    /// heartbeat (a period and a quarter, for the broker's delays): until then,
    /// [`Hub::nodes`] may leave out live hubs.
    pub(crate) fn is_young(&self) -> bool {
        if self.cluster_state().solitary.load(Relaxed) {
            return false;
        }
        let period = self.config().node_heartbeat;
        self.inner.started.elapsed() < period + period / 4
    }

    async fn request_with(
        &self,
        to: Option<NodeId>,
        service: &str,
        body: Value,
        timeout: Duration,
        whole_timeout: bool,
    ) -> Gathered {
        self.start_heartbeat();
        let own = self.node();
        let local = match to {
            None => true,
            Some(node) => node == own,
        };
        let mut waiting: BTreeSet<NodeId> = match to {
            None => lock(&self.cluster_state().state)
                .peers
                .keys()
                .copied()
                .collect(),
            Some(node) if node == own => BTreeSet::new(),
            Some(node) => BTreeSet::from([node]),
        };
        waiting.remove(&own);
        let mut gathered = Gathered::default();
        if local {
            if let Some(reply) = self.answer(own, service, body.clone()) {
                gathered.replies.insert(own, reply);
            }
        }
        if waiting.is_empty() && !whole_timeout {
            return gathered;
        }
        let (done, finished) = oneshot::channel();
        // Kept here, never sent, for the request to last the whole timeout (a dropped
        // sender would end the wait at once).
        let (done, kept) = if whole_timeout {
            (None, Some(done))
        } else {
            (Some(done), None)
        };
        let id = {
            let mut state = lock(&self.cluster_state().state);
            state.next_request += 1;
            let id = state.next_request;
            let pending = Pending {
                waiting: waiting.clone(),
                everyone: to.is_none(),
                gathered,
                done,
            };
            state.pending.insert(id, pending);
            id
        };
        let wire = Wire::Request {
            id,
            service: service.to_owned(),
            body,
        };
        match to {
            Some(node) => self.publish_wire(Target::Node(node), &wire),
            None => self.publish_wire(Target::Nodes, &wire),
        }
        // Every reply, or the timeout: either way, what has arrived is the answer.
        let _ = tokio::time::timeout(timeout, finished).await;
        drop(kept);
        let pending = lock(&self.cluster_state().state).pending.remove(&id);
        let Some(Pending {
            waiting,
            mut gathered,
            ..
        }) = pending
        else {
            return Gathered::default();
        };
        gathered.missing = waiting;
        gathered
    }

    /// Handles an envelope for this hub itself ([`Target::Node`], [`Target::Nodes`]).
    pub(crate) fn receive_cluster(&self, envelope: &Envelope) {
        // A hub that said goodbye answers nothing more: a reply would make the others
        // take it for alive again.
        if lock(&self.cluster_state().state).left {
            return;
        }
        let Message::Text(text) = &envelope.message else {
            tracing::debug!(from = %envelope.origin, "ignored a binary cluster message");
            return;
        };
        let wire = match serde_json::from_str::<Wire>(text.as_str()) {
            Ok(wire) => wire,
            Err(error) => {
                tracing::warn!(from = %envelope.origin, %error, "ignored a malformed cluster message");
                return;
            }
        };
        let from = envelope.origin;
        if matches!(wire, Wire::Bye) {
            self.forget_peer(from);
            return;
        }
        let mut events = Vec::with_capacity(2);
        self.heard_from(from, &wire, &mut events);
        // A new peer is announced before its first message is handled, and a gap
        // after: a listener that resynchronises then sees the message already applied.
        let (before, after): (Vec<_>, Vec<_>) = events
            .into_iter()
            .partition(|event| matches!(event, PeerEvent::Up(_)));
        self.notify(&before);
        match wire {
            Wire::Heartbeat { .. } | Wire::Bye => {}
            Wire::Cast { service, body, .. } | Wire::Send { service, body } => {
                let _ = self.answer(from, &service, body);
            }
            Wire::Request { id, service, body } => {
                // A hub without the service still answers, so that the asker is not left
                // waiting for the timeout: with null.
                let body = self.answer(from, &service, body).unwrap_or(Value::Null);
                self.publish_wire(Target::Node(from), &Wire::Reply { id, body });
            }
            Wire::Reply { id, body } => self.gather(from, id, body),
        }
        self.notify(&after);
    }

    /// Notes that `from` is alive, and whether it is new or sent casts this hub missed.
    fn heard_from(&self, from: NodeId, wire: &Wire, events: &mut Vec<PeerEvent>) {
        let announced = match wire {
            Wire::Heartbeat { casts } => Some(*casts),
            Wire::Cast { seq, .. } => Some(*seq),
            _ => None,
        };
        let mut state = lock(&self.cluster_state().state);
        let now = Instant::now();
        match state.peers.get_mut(&from) {
            Some(peer) => {
                peer.last_seen = now;
                if let Some(count) = announced {
                    // A cast is the one after the last; a heartbeat repeats the last.
                    let expected = match wire {
                        Wire::Cast { .. } => peer.casts + 1,
                        _ => peer.casts,
                    };
                    if count > expected {
                        events.push(PeerEvent::Gap(from));
                    }
                    peer.casts = peer.casts.max(count);
                }
            }
            None => {
                // What a new peer cast before this hub heard of it is not missed: the
                // listeners of `Up` take its whole state.
                let peer = Peer {
                    last_seen: now,
                    casts: announced.unwrap_or(0),
                };
                state.peers.insert(from, peer);
                events.push(PeerEvent::Up(from));
            }
        }
    }

    fn answer(&self, from: NodeId, service: &str, body: Value) -> Option<Value> {
        let handler = read(&self.cluster_state().services).get(service).cloned();
        match handler {
            Some(handler) => Some(handler(self, from, body)),
            None => {
                tracing::debug!(%from, service, "no such cluster service here");
                None
            }
        }
    }

    fn gather(&self, from: NodeId, id: u64, body: Value) {
        let mut state = lock(&self.cluster_state().state);
        let Some(pending) = state.pending.get_mut(&id) else {
            return; // Late: the asker stopped waiting.
        };
        let expected = pending.waiting.remove(&from);
        // It answered, so it is alive: leaving its reply out would make the answer
        // partial without naming anyone missing.
        let newcomer = pending.everyone && !pending.gathered.replies.contains_key(&from);
        if expected || newcomer {
            pending.gathered.replies.insert(from, body);
        }
        if pending.waiting.is_empty() {
            if let Some(done) = pending.done.take() {
                let _ = done.send(());
            }
        }
    }

    fn forget_peer(&self, node: NodeId) {
        let known = lock(&self.cluster_state().state)
            .peers
            .remove(&node)
            .is_some();
        if known {
            self.notify(&[PeerEvent::Down(node)]);
        }
        self.stop_waiting_for(&[node]);
    }

    /// Requests waiting for hubs that are gone need not wait for the timeout.
    fn stop_waiting_for(&self, gone: &[NodeId]) {
        let mut state = lock(&self.cluster_state().state);
        for pending in state.pending.values_mut() {
            // Still named missing: they did not reply.
            let all_gone = pending.waiting.iter().all(|node| gone.contains(node));
            if all_gone {
                if let Some(done) = pending.done.take() {
                    let _ = done.send(());
                }
            }
        }
    }

    fn notify(&self, events: &[PeerEvent]) {
        if events.is_empty() {
            return;
        }
        let listeners = read(&self.cluster_state().listeners).clone();
        for event in events {
            tracing::debug!(?event, "cluster peer event");
            for listener in &listeners {
                listener(self, *event);
            }
        }
    }

    fn publish_wire(&self, target: Target, wire: &Wire) {
        let text = match serde_json::to_string(wire) {
            Ok(text) => text,
            // Values built by this crate always serialize.
            Err(error) => {
                tracing::error!(%error, "a cluster message could not be encoded");
                return;
            }
        };
        self.broker().publish(Envelope {
            origin: self.node(),
            target,
            except: None,
            message: Message::text(text),
            position: None,
        });
    }

    /// Notes that this hub is alone on its broker for good (see [`Hub::new`]).
    pub(crate) fn set_solitary(&self) {
        self.cluster_state().solitary.store(true, Relaxed);
    }

    /// Says goodbye to the other hubs, so that they forget this one at once.
    pub(crate) fn leave_cluster(&self) {
        lock(&self.cluster_state().state).left = true;
        self.publish_wire(Target::Nodes, &Wire::Bye);
    }

    /// Starts the heartbeat task once, from within a runtime (a hub may be made
    /// outside one; it beats from its first use inside one).
    pub(crate) fn start_heartbeat(&self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut state = lock(&self.cluster_state().state);
        if !state.beating {
            state.beating = true;
            tokio::spawn(beat(Arc::downgrade(&self.inner)));
        }
    }

    /// One heartbeat, and the peers that have been silent too long forgotten.
    fn beat_once(&self) {
        let (casts, dead) = {
            let mut state = lock(&self.cluster_state().state);
            if state.left {
                return;
            }
            let timeout = self.config().node_timeout;
            let dead: Vec<NodeId> = state
                .peers
                .iter()
                .filter(|(_, peer)| peer.last_seen.elapsed() > timeout)
                .map(|(node, _)| *node)
                .collect();
            for node in &dead {
                state.peers.remove(node);
            }
            (state.casts, dead)
        };
        self.publish_wire(Target::Nodes, &Wire::Heartbeat { casts });
        if !dead.is_empty() {
            tracing::info!(?dead, "hubs silent for node_timeout are taken for dead");
            let events: Vec<PeerEvent> = dead.iter().map(|node| PeerEvent::Down(*node)).collect();
            self.notify(&events);
            self.stop_waiting_for(&dead);
        }
    }
}

/// Runs until the hub is dropped.
async fn beat(hub: Weak<HubInner>) {
    let Some(period) = hub.upgrade().map(|inner| inner.config.node_heartbeat) else {
        return;
    };
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = hub.upgrade() else { return };
        let hub = Hub::from_inner(inner);
        hub.beat_once();
        hub.watch_stream_link();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{HubConfig, MemoryNetwork};
    use serde_json::json;

    fn config() -> HubConfig {
        HubConfig::default()
            .node_heartbeat(Duration::from_millis(20))
            .node_timeout(Duration::from_millis(200))
    }

    /// `n` hubs on one in-memory network, each answering `whoami` with its node id.
    fn cluster(network: &MemoryNetwork, n: usize) -> Vec<Hub> {
        (0..n)
            .map(|_| {
                let hub = Hub::with_broker(config(), network.broker());
                hub.serve_cluster(
                    "whoami",
                    Arc::new(|hub, _, _| json!(hub.node().to_string())),
                );
                hub
            })
            .collect()
    }

    async fn until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn hubs_learn_of_each_other_and_a_request_reaches_every_one() {
        let network = MemoryNetwork::new();
        let hubs = cluster(&network, 3);
        let mut all: Vec<NodeId> = hubs.iter().map(Hub::node).collect();
        all.sort_unstable();
        until("every hub knows every hub", || {
            hubs.iter().all(|hub| hub.nodes() == all)
        })
        .await;
        let gathered = hubs[0]
            .request(None, "whoami", Value::Null, Duration::from_secs(5))
            .await;
        assert!(gathered.missing.is_empty());
        for (node, reply) in &gathered.replies {
            assert_eq!(reply, &json!(node.to_string()));
        }
        assert_eq!(gathered.replies.len(), 3);
        let one = hubs[0]
            .request(
                Some(hubs[2].node()),
                "whoami",
                Value::Null,
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(
            one.replies.keys().copied().collect::<Vec<_>>(),
            [hubs[2].node()]
        );
    }

    /// Every peer event `hub` sees, from now on.
    fn events(hub: &Hub) -> Arc<Mutex<Vec<PeerEvent>>> {
        let events = Arc::new(Mutex::new(Vec::new()));
        let log = events.clone();
        hub.on_peer_event(Arc::new(move |_, event| lock(&log).push(event)));
        events
    }

    #[tokio::test]
    async fn a_listener_that_comes_late_hears_the_peers_already_known_come_up() {
        let network = MemoryNetwork::new();
        let hubs = cluster(&network, 2);
        until("they know each other", || hubs[0].nodes().len() == 2).await;
        let seen = events(&hubs[0]);
        assert_eq!(*lock(&seen), [PeerEvent::Up(hubs[1].node())]);
    }

    #[tokio::test]
    async fn a_silent_hub_is_named_missing_then_taken_for_dead() {
        let network = MemoryNetwork::new();
        let mut hubs = cluster(&network, 2);
        let seen = events(&hubs[0]);
        until("they know each other", || hubs[0].nodes().len() == 2).await;
        // Dropped without a goodbye, as a killed process: its broker leaves the network.
        let silent = hubs.pop().map(|hub| hub.node()).unwrap();
        let asked = Instant::now();
        let gathered = hubs[0]
            .request(None, "whoami", Value::Null, Duration::from_millis(100))
            .await;
        assert!(asked.elapsed() < Duration::from_secs(1));
        assert_eq!(gathered.missing, BTreeSet::from([silent]));
        assert_eq!(gathered.replies.len(), 1, "this hub answers itself");
        until("the silent hub is taken for dead", || {
            hubs[0].nodes() == [hubs[0].node()]
        })
        .await;
        assert!(lock(&seen).contains(&PeerEvent::Down(silent)));
        assert_eq!(
            lock(&seen)
                .iter()
                .filter(|e| **e == PeerEvent::Down(silent))
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn a_request_for_the_whole_timeout_hears_hubs_not_yet_known() {
        let network = MemoryNetwork::new();
        // One heartbeat each, at start: the second hub never hears the first's.
        let slow = HubConfig::default().node_heartbeat(Duration::from_secs(3600));
        let first = Hub::with_broker(slow.clone(), network.broker());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = Hub::with_broker(slow, network.broker());
        for hub in [&first, &second] {
            hub.serve_cluster(
                "whoami",
                Arc::new(|hub, _, _| json!(hub.node().to_string())),
            );
        }
        until("the first hears the second", || first.nodes().len() == 2).await;
        assert_eq!(second.nodes(), [second.node()]);
        assert!(second.is_young());
        let early = second
            .request(None, "whoami", Value::Null, Duration::from_millis(200))
            .await;
        assert_eq!(early.replies.len(), 1, "only itself: it knows no other hub");
        let asked = Instant::now();
        let whole = second
            .request_everyone_for("whoami", Value::Null, Duration::from_millis(200))
            .await;
        assert!(asked.elapsed() >= Duration::from_millis(200));
        let mut both = vec![first.node(), second.node()];
        both.sort_unstable();
        assert_eq!(whole.replies.keys().copied().collect::<Vec<_>>(), both);
        assert!(whole.missing.is_empty());
        assert_eq!(second.nodes(), both, "the reply made it known");
    }

    #[tokio::test]
    async fn a_reply_from_a_hub_not_yet_known_counts() {
        let hub = Hub::new(config());
        let receive = |origin: NodeId, wire: Wire| {
            hub.receive_cluster(&Envelope {
                origin,
                target: Target::Node(hub.node()),
                except: None,
                message: Message::text(serde_json::to_string(&wire).unwrap()),
                position: None,
            })
        };
        // A known peer that will not reply, so that the request waits.
        let silent = NodeId::random();
        receive(silent, Wire::Heartbeat { casts: 0 });
        let asking = hub.request(None, "none", Value::Null, Duration::from_millis(200));
        let stranger = NodeId::random();
        let reply = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let id = lock(&hub.cluster_state().state).next_request;
            let body = json!("stranger");
            receive(stranger, Wire::Reply { id, body });
        };
        let (gathered, ()) = tokio::join!(asking, reply);
        assert_eq!(gathered.replies.get(&stranger), Some(&json!("stranger")));
        assert_eq!(gathered.missing, BTreeSet::from([silent]));
    }

    #[tokio::test]
    async fn a_hub_that_shuts_down_is_forgotten_at_once() {
        let network = MemoryNetwork::new();
        let hubs = cluster(&network, 2);
        let seen = events(&hubs[0]);
        until("they know each other", || hubs[0].nodes().len() == 2).await;
        hubs[1].shutdown(Duration::from_millis(10)).await;
        // Well before node_timeout (200 ms), and whatever the heartbeats do.
        until("the goodbye arrives", || {
            lock(&seen).contains(&PeerEvent::Down(hubs[1].node()))
        })
        .await;
        assert!(!hubs[0].nodes().contains(&hubs[1].node()));
    }

    #[tokio::test]
    async fn missed_casts_are_a_gap_found_by_the_next_cast_or_heartbeat() {
        let hub = Hub::new(config());
        let seen = events(&hub);
        let peer = NodeId::random();
        let receive = |wire: Wire| {
            hub.receive_cluster(&Envelope {
                origin: peer,
                target: Target::Nodes,
                except: None,
                message: Message::text(serde_json::to_string(&wire).unwrap()),
                position: None,
            })
        };
        let cast = |seq| Wire::Cast {
            service: "none".into(),
            seq,
            body: Value::Null,
        };
        receive(cast(4)); // new: what it cast before is not missed
        receive(cast(5));
        receive(Wire::Heartbeat { casts: 5 });
        assert_eq!(*lock(&seen), [PeerEvent::Up(peer)]);
        receive(cast(7)); // 6 is missing
        assert_eq!(lock(&seen).last(), Some(&PeerEvent::Gap(peer)));
        receive(Wire::Heartbeat { casts: 9 }); // 8 and 9 are missing
        receive(cast(10));
        let gaps = lock(&seen)
            .iter()
            .filter(|e| **e == PeerEvent::Gap(peer))
            .count();
        assert_eq!(gaps, 2);
        receive(Wire::Bye);
        assert_eq!(lock(&seen).last(), Some(&PeerEvent::Down(peer)));
    }

    #[tokio::test]
    async fn a_malformed_cluster_message_is_ignored() {
        let hub = Hub::new(config());
        let seen = events(&hub);
        for text in ["", "{}", r#"{"t":"cast"}"#, "[1,2]"] {
            hub.receive_cluster(&Envelope {
                origin: NodeId::random(),
                target: Target::Nodes,
                except: None,
                message: Message::text(text),
                position: None,
            });
        }
        assert!(lock(&seen).is_empty());
        assert_eq!(hub.nodes(), [hub.node()]);
    }
}
