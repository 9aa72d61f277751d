//! The presence state of every topic, without IO (the shape of Phoenix.Tracker):
//! this hub's own entries, a replica of every other hub's, and the local changes not
//! yet handed out.
//!
//! Each hub owns the entries of its own sockets. Its changes wait in a batch until
//! [`Tracker::take_batch`] hands them out, numbered, to be broadcast to the local
//! subscribers and cast to the other hubs; the other hubs apply the casts to their
//! replica of this hub ([`Tracker::apply_cast`]), replace it wholesale with a
//! snapshot when they may have missed some ([`Tracker::replace`]), and drop it when
//! the hub dies ([`Tracker::drop_node`]). Every one of those returns the diffs it
//! makes, by topic, for the local subscribers: exactly the change, so that a client
//! applying every diff it gets lists what the tracker lists.
//!
//! Entries are told apart by `phx_ref` (unique per tracking), so applying a join
//! already applied, or a leave of a ref already gone, changes nothing and yields no
//! diff: a snapshot that already holds the batch cast after it is harmless.

use super::presence::PresenceError;
use crate::hub::{ConnectionId, NodeId};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A meta as clients see it, `phx_ref` included.
type Meta = Map<String, Value>;

/// Keys of one topic and their metas, in tracking order.
type Keys<E> = BTreeMap<String, Vec<E>>;

/// The presence of every topic: own entries, replicas, and the pending batch.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    local: HashMap<String, Keys<Entry>>,
    replicas: HashMap<NodeId, Replica>,
    /// Local changes not yet handed out, by topic.
    pending: BTreeMap<String, Changes>,
    /// The batches handed out so far: the number of the last one.
    version: u64,
}

#[derive(Debug)]
struct Entry {
    conn: ConnectionId,
    meta: Meta,
}

/// What this hub knows of another hub's entries.
#[derive(Debug, Default)]
struct Replica {
    /// The number of the last batch of that hub applied (or the snapshot's).
    version: u64,
    topics: HashMap<String, Keys<Meta>>,
}

/// Joins and leaves of one topic, in order: a client applies the joins first, then the
/// leaves (phoenix.js `syncDiff`), so a ref that joins and leaves within one batch
/// ends up gone.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Changes {
    joins: Vec<(String, Meta)>,
    leaves: Vec<(String, Meta)>,
}

/// One batch of this hub's changes: its number, and a diff per topic.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Batch {
    pub(crate) version: u64,
    pub(crate) diffs: Vec<(String, Value)>,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// The `presence_diff` payload: `{"joins": {key: {"metas": […]}}, "leaves": …}`.
    pub(crate) fn to_diff(&self) -> Value {
        json!({ "joins": by_key(&self.joins), "leaves": by_key(&self.leaves) })
    }
}

fn by_key(changes: &[(String, Meta)]) -> Value {
    let mut keys: Map<String, Value> = Map::new();
    for (key, meta) in changes {
        let entry = keys
            .entry(key.clone())
            .or_insert_with(|| json!({ "metas": [] }));
        if let Some(Value::Array(metas)) = entry.get_mut("metas") {
            metas.push(Value::Object(meta.clone()));
        }
    }
    Value::Object(keys)
}

fn phx_ref(meta: &Meta) -> Option<&str> {
    meta.get("phx_ref").and_then(Value::as_str)
}

impl Tracker {
    /// This hub's own entries (not the replicas'), so that the hubs' counts add up to
    /// the cluster's.
    pub(crate) fn len(&self) -> usize {
        self.local
            .values()
            .flat_map(|k| k.values())
            .map(Vec::len)
            .sum()
    }

    pub(crate) fn track(
        &mut self,
        topic: &str,
        conn: ConnectionId,
        key: String,
        mut meta: Meta,
        phx_ref: String,
    ) -> Result<(), PresenceError> {
        let entries = self
            .local
            .entry(topic.to_owned())
            .or_default()
            .entry(key.clone())
            .or_default();
        if entries.iter().any(|e| e.conn == conn) {
            return Err(PresenceError::AlreadyTracked);
        }
        meta.insert("phx_ref".to_owned(), Value::String(phx_ref));
        entries.push(Entry {
            conn,
            meta: meta.clone(),
        });
        self.changes(topic).joins.push((key, meta));
        Ok(())
    }

    pub(crate) fn update(
        &mut self,
        topic: &str,
        conn: ConnectionId,
        key: &str,
        mut meta: Meta,
        phx_ref: String,
    ) -> Result<(), PresenceError> {
        let entry = self
            .local
            .get_mut(topic)
            .and_then(|keys| keys.get_mut(key))
            .and_then(|entries| entries.iter_mut().find(|e| e.conn == conn))
            .ok_or(PresenceError::NotTracked)?;
        let previous = entry.meta.get("phx_ref").cloned().unwrap_or(Value::Null);
        meta.insert("phx_ref".to_owned(), Value::String(phx_ref));
        // Phoenix.Tracker marks an update's new meta with the ref it replaces.
        meta.insert("phx_ref_prev".to_owned(), previous);
        let old = std::mem::replace(&mut entry.meta, meta.clone());
        let changes = self.changes(topic);
        changes.joins.push((key.to_owned(), meta));
        changes.leaves.push((key.to_owned(), old));
        Ok(())
    }

    /// Stops tracking `key` for `conn`; whether it was tracked.
    pub(crate) fn untrack(&mut self, topic: &str, conn: ConnectionId, key: &str) -> bool {
        let gone = self.remove_local(topic, |k, e| k == key && e.conn == conn);
        let left = !gone.is_empty();
        self.changes(topic).leaves.extend(gone);
        self.drop_empty_changes(topic);
        left
    }

    /// Stops tracking every key of `conn` on `topic`; whether any was tracked.
    pub(crate) fn untrack_all(&mut self, topic: &str, conn: ConnectionId) -> bool {
        let gone = self.remove_local(topic, |_, e| e.conn == conn);
        let left = !gone.is_empty();
        self.changes(topic).leaves.extend(gone);
        self.drop_empty_changes(topic);
        left
    }

    /// Forgets every key of `conn` on `topic` as if never tracked: a join still in
    /// the pending batch is withdrawn (nobody was told of it); one already handed out
    /// is left, as nobody may keep it.
    pub(crate) fn forget_all(&mut self, topic: &str, conn: ConnectionId) {
        let gone = self.remove_local(topic, |_, e| e.conn == conn);
        let changes = self.changes(topic);
        for (key, meta) in gone {
            let pending = changes
                .joins
                .iter()
                .position(|(_, joined)| phx_ref(joined) == phx_ref(&meta));
            match pending {
                Some(at) => {
                    changes.joins.remove(at);
                }
                None => changes.leaves.push((key, meta)),
            }
        }
        self.drop_empty_changes(topic);
    }

    /// Hands out the pending changes as the next batch, if there are any.
    pub(crate) fn take_batch(&mut self) -> Option<Batch> {
        if self.pending.is_empty() {
            return None;
        }
        self.version += 1;
        let diffs = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(topic, changes)| (topic, changes.to_diff()))
            .collect();
        Some(Batch {
            version: self.version,
            diffs,
        })
    }

    /// This hub's entries, `{topic: {key: {"metas": […]}}}`, and the number of the
    /// last batch handed out. The pending changes are in it: the next batch repeats
    /// them, which a replica applies as nothing.
    pub(crate) fn snapshot(&self) -> (u64, Value) {
        let mut topics = Map::new();
        for (topic, keys) in &self.local {
            let mut state = Map::new();
            for (key, entries) in keys {
                let metas: Vec<Value> = entries
                    .iter()
                    .map(|e| Value::Object(e.meta.clone()))
                    .collect();
                state.insert(key.clone(), json!({ "metas": metas }));
            }
            topics.insert(topic.clone(), Value::Object(state));
        }
        (self.version, Value::Object(topics))
    }

    /// Applies batch `version` of `node` (`{topic: diff}`, from the wire: anything
    /// malformed in it is skipped). Returns the local diffs, and whether batches of
    /// `node` were missed before this one (then its replica needs a snapshot).
    pub(crate) fn apply_cast(
        &mut self,
        node: NodeId,
        version: u64,
        topics: &Map<String, Value>,
    ) -> (Vec<(String, Value)>, bool) {
        let known = self.replicas.contains_key(&node);
        let replica = self.replicas.entry(node).or_default();
        if known && version <= replica.version {
            return (Vec::new(), false); // Already in the replica.
        }
        let missed = known && version > replica.version + 1;
        replica.version = version;
        let mut diffs = Vec::new();
        for (topic, diff) in topics {
            let mut applied = Changes::default();
            for (key, meta) in metas_of(diff.get("joins")) {
                if replica.add(topic, &key, &meta) {
                    applied.joins.push((key, meta));
                }
            }
            for (key, meta) in metas_of(diff.get("leaves")) {
                if let Some(removed) = replica.remove(topic, &key, &meta) {
                    applied.leaves.push((key, removed));
                }
            }
            if !applied.is_empty() {
                diffs.push((topic.clone(), applied.to_diff()));
            }
        }
        (diffs, missed)
    }

    /// Replaces the replica of `node` with its snapshot (`{topic: {key: {"metas":
    /// […]}}}`) as of its batch `version`; returns the local diffs, exactly what
    /// differs. A snapshot older than the batches already applied is ignored (`None`).
    pub(crate) fn replace(
        &mut self,
        node: NodeId,
        version: u64,
        topics: &Map<String, Value>,
    ) -> Option<Vec<(String, Value)>> {
        if self
            .replicas
            .get(&node)
            .is_some_and(|replica| version < replica.version)
        {
            return None;
        }
        let old = self.replicas.remove(&node).unwrap_or_default();
        let mut new = Replica {
            version,
            topics: HashMap::new(),
        };
        for (topic, keys) in topics {
            for (key, meta) in state_metas(keys) {
                new.add(topic, &key, &meta);
            }
        }
        let diffs = changes_between(&old, &new);
        self.replicas.insert(node, new);
        Some(diffs)
    }

    /// Forgets `node`'s entries (it died or left); returns their leaves by topic.
    pub(crate) fn drop_node(&mut self, node: NodeId) -> Vec<(String, Value)> {
        match self.replicas.remove(&node) {
            Some(old) => changes_between(&old, &Replica::default()),
            None => Vec::new(),
        }
    }

    /// Everyone on `topic` on every hub: `{key: {"metas": [meta, …]}}`, metas in hub
    /// order (node ids, `own` being this hub's), so every hub lists them alike.
    pub(crate) fn list(&self, topic: &str, own: NodeId) -> Value {
        let mut nodes: Vec<NodeId> = self.replicas.keys().copied().collect();
        nodes.push(own);
        nodes.sort_unstable();
        let mut state: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for node in nodes {
            if node == own {
                for (key, entries) in self.local.get(topic).into_iter().flatten() {
                    let metas = entries.iter().map(|e| Value::Object(e.meta.clone()));
                    state.entry(key).or_default().extend(metas);
                }
            } else if let Some(replica) = self.replicas.get(&node) {
                for (key, metas) in replica.topics.get(topic).into_iter().flatten() {
                    let metas = metas.iter().cloned().map(Value::Object);
                    state.entry(key).or_default().extend(metas);
                }
            }
        }
        let state: Map<String, Value> = state
            .into_iter()
            .map(|(key, metas)| (key.to_owned(), json!({ "metas": metas })))
            .collect();
        Value::Object(state)
    }

    fn changes(&mut self, topic: &str) -> &mut Changes {
        self.pending.entry(topic.to_owned()).or_default()
    }

    fn drop_empty_changes(&mut self, topic: &str) {
        if self.pending.get(topic).is_some_and(Changes::is_empty) {
            self.pending.remove(topic);
        }
    }

    /// Removes the local entries of `topic` that `gone` picks; returns them as
    /// (key, meta).
    fn remove_local(
        &mut self,
        topic: &str,
        gone: impl Fn(&str, &Entry) -> bool,
    ) -> Vec<(String, Meta)> {
        let Some(keys) = self.local.get_mut(topic) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        keys.retain(|key, entries| {
            entries.retain(|entry| {
                if gone(key, entry) {
                    removed.push((key.clone(), entry.meta.clone()));
                    false
                } else {
                    true
                }
            });
            !entries.is_empty()
        });
        if keys.is_empty() {
            self.local.remove(topic);
        }
        removed
    }
}

impl Replica {
    /// Adds a meta unless its ref is there already; whether it was added.
    fn add(&mut self, topic: &str, key: &str, meta: &Meta) -> bool {
        let Some(reference) = phx_ref(meta) else {
            return false;
        };
        let metas = self
            .topics
            .entry(topic.to_owned())
            .or_default()
            .entry(key.to_owned())
            .or_default();
        if metas.iter().any(|m| phx_ref(m) == Some(reference)) {
            return false;
        }
        metas.push(meta.clone());
        true
    }

    /// Removes the meta of `meta`'s ref; the meta removed, if it was there.
    fn remove(&mut self, topic: &str, key: &str, meta: &Meta) -> Option<Meta> {
        let reference = phx_ref(meta)?;
        let keys = self.topics.get_mut(topic)?;
        let metas = keys.get_mut(key)?;
        let at = metas.iter().position(|m| phx_ref(m) == Some(reference))?;
        let removed = metas.remove(at);
        if metas.is_empty() {
            keys.remove(key);
        }
        if keys.is_empty() {
            self.topics.remove(topic);
        }
        Some(removed)
    }

    /// Every (key, ref) of a topic.
    fn refs(&self, topic: &str) -> BTreeSet<(&str, &str)> {
        let keys = self.topics.get(topic).into_iter().flatten();
        keys.flat_map(|(key, metas)| {
            metas
                .iter()
                .filter_map(move |m| Some((key.as_str(), phx_ref(m)?)))
        })
        .collect()
    }
}

/// The diffs that take a client from `old`'s entries to `new`'s, by topic.
fn changes_between(old: &Replica, new: &Replica) -> Vec<(String, Value)> {
    let topics: BTreeSet<&String> = old.topics.keys().chain(new.topics.keys()).collect();
    let mut diffs = Vec::new();
    for topic in topics {
        let (before, after) = (old.refs(topic), new.refs(topic));
        let mut changes = Changes::default();
        for (key, metas) in new.topics.get(topic).into_iter().flatten() {
            for meta in metas {
                if phx_ref(meta).is_some_and(|r| !before.contains(&(key.as_str(), r))) {
                    changes.joins.push((key.clone(), meta.clone()));
                }
            }
        }
        for (key, metas) in old.topics.get(topic).into_iter().flatten() {
            for meta in metas {
                if phx_ref(meta).is_some_and(|r| !after.contains(&(key.as_str(), r))) {
                    changes.leaves.push((key.clone(), meta.clone()));
                }
            }
        }
        if !changes.is_empty() {
            diffs.push((topic.clone(), changes.to_diff()));
        }
    }
    diffs
}

/// The (key, meta) pairs of `{key: {"metas": [meta, …]}}` from a peer: what is not
/// an object with metas that are objects is skipped.
fn metas_of(keys: Option<&Value>) -> Vec<(String, Meta)> {
    keys.map(state_metas).unwrap_or_default()
}

fn state_metas(keys: &Value) -> Vec<(String, Meta)> {
    let Some(keys) = keys.as_object() else {
        return Vec::new();
    };
    let mut all = Vec::new();
    for (key, value) in keys {
        let metas = value.get("metas").and_then(Value::as_array);
        for meta in metas.into_iter().flatten() {
            if let Value::Object(meta) = meta {
                all.push((key.clone(), meta.clone()));
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sequence: u64) -> ConnectionId {
        ConnectionId::new(NodeId::from_bits(1), sequence)
    }

    fn meta(value: Value) -> Meta {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    fn object(value: Value) -> Map<String, Value> {
        meta(value)
    }

    /// The one diff of the next batch, for `topic`.
    fn batch_of(tracker: &mut Tracker, topic: &str) -> Value {
        let batch = tracker.take_batch().expect("a batch");
        let diffs: BTreeMap<String, Value> = batch.diffs.into_iter().collect();
        diffs.get(topic).cloned().expect("a diff for the topic")
    }

    #[test]
    fn track_batches_a_join_and_lists_several_metas_per_key() {
        let mut tracker = Tracker::default();
        let own = NodeId::from_bits(1);
        tracker
            .track(
                "room:a",
                id(1),
                "ann".into(),
                meta(json!({"device": "phone"})),
                "r1".into(),
            )
            .unwrap();
        assert_eq!(
            batch_of(&mut tracker, "room:a"),
            json!({"joins": {"ann": {"metas": [{"device": "phone", "phx_ref": "r1"}]}}, "leaves": {}})
        );
        assert_eq!(tracker.take_batch(), None, "nothing pending");
        tracker
            .track(
                "room:a",
                id(2),
                "ann".into(),
                meta(json!({"device": "laptop"})),
                "r2".into(),
            )
            .unwrap();
        tracker
            .track("room:a", id(3), "bob".into(), meta(json!({})), "r3".into())
            .unwrap();
        tracker
            .track("room:b", id(3), "bob".into(), meta(json!({})), "r4".into())
            .unwrap();
        let batch = tracker.take_batch().unwrap();
        assert_eq!(batch.version, 2);
        assert_eq!(batch.diffs.len(), 2, "one diff per topic");
        assert_eq!(
            tracker.list("room:a", own),
            json!({
                "ann": {"metas": [
                    {"device": "phone", "phx_ref": "r1"},
                    {"device": "laptop", "phx_ref": "r2"}
                ]},
                "bob": {"metas": [{"phx_ref": "r3"}]}
            })
        );
        assert_eq!(tracker.list("room:none", own), json!({}));
    }

    #[test]
    fn a_socket_tracks_a_key_once() {
        let mut tracker = Tracker::default();
        tracker
            .track("t", id(1), "ann".into(), Map::new(), "r1".into())
            .unwrap();
        assert_eq!(
            tracker.track("t", id(1), "ann".into(), Map::new(), "r2".into()),
            Err(PresenceError::AlreadyTracked)
        );
    }

    #[test]
    fn update_leaves_the_old_meta_and_joins_the_new() {
        let mut tracker = Tracker::default();
        tracker
            .track(
                "t",
                id(1),
                "ann".into(),
                meta(json!({"status": "away"})),
                "r1".into(),
            )
            .unwrap();
        tracker.take_batch();
        tracker
            .update(
                "t",
                id(1),
                "ann",
                meta(json!({"status": "here"})),
                "r2".into(),
            )
            .unwrap();
        assert_eq!(
            batch_of(&mut tracker, "t"),
            json!({
                "joins": {"ann": {"metas": [{"status": "here", "phx_ref": "r2", "phx_ref_prev": "r1"}]}},
                "leaves": {"ann": {"metas": [{"status": "away", "phx_ref": "r1"}]}}
            })
        );
        assert_eq!(
            tracker.update("t", id(2), "ann", Map::new(), "r3".into()),
            Err(PresenceError::NotTracked)
        );
    }

    #[test]
    fn untrack_and_untrack_all_leave_what_they_remove() {
        let mut tracker = Tracker::default();
        tracker
            .track("t", id(1), "ann".into(), Map::new(), "r1".into())
            .unwrap();
        tracker
            .track("t", id(1), "alt".into(), Map::new(), "r2".into())
            .unwrap();
        tracker
            .track("t", id(2), "ann".into(), Map::new(), "r3".into())
            .unwrap();
        tracker.take_batch();
        assert!(tracker.untrack("t", id(2), "ann"));
        assert!(!tracker.untrack("t", id(2), "ann"));
        assert!(tracker.untrack_all("t", id(1)));
        assert!(!tracker.untrack_all("t", id(1)));
        assert_eq!(
            batch_of(&mut tracker, "t"),
            json!({"joins": {}, "leaves": {
                "ann": {"metas": [{"phx_ref": "r3"}, {"phx_ref": "r1"}]},
                "alt": {"metas": [{"phx_ref": "r2"}]}
            }})
        );
        assert!(tracker.local.is_empty(), "empty topics are dropped");
    }

    #[test]
    fn forgetting_withdraws_a_pending_join_and_leaves_one_handed_out() {
        let mut tracker = Tracker::default();
        tracker
            .track("t", id(1), "ann".into(), Map::new(), "r1".into())
            .unwrap();
        tracker.forget_all("t", id(1));
        assert_eq!(tracker.take_batch(), None, "nobody was told of it");
        tracker
            .track("t", id(1), "ann".into(), Map::new(), "r2".into())
            .unwrap();
        tracker.take_batch();
        tracker.forget_all("t", id(1));
        assert_eq!(
            batch_of(&mut tracker, "t"),
            json!({"joins": {}, "leaves": {"ann": {"metas": [{"phx_ref": "r2"}]}}})
        );
    }

    #[test]
    fn a_replica_follows_casts_once_and_notices_missed_batches() {
        let (mut origin, mut replica) = (Tracker::default(), Tracker::default());
        let peer = NodeId::from_bits(7);
        origin
            .track("t", id(1), "ann".into(), Map::new(), "r1".into())
            .unwrap();
        let first = origin.take_batch().unwrap();
        let cast = |batch: &Batch| -> Map<String, Value> { batch.diffs.iter().cloned().collect() };
        let (diffs, missed) = replica.apply_cast(peer, first.version, &cast(&first));
        assert_eq!(diffs, first.diffs);
        assert!(!missed);
        let (again, _) = replica.apply_cast(peer, first.version, &cast(&first));
        assert!(again.is_empty(), "a batch is applied once");
        origin
            .track("t", id(2), "bob".into(), Map::new(), "r2".into())
            .unwrap();
        let _lost = origin.take_batch().unwrap();
        origin.untrack("t", id(1), "ann");
        let third = origin.take_batch().unwrap();
        let (diffs, missed) = replica.apply_cast(peer, third.version, &cast(&third));
        assert!(missed, "batch 2 was missed");
        assert_eq!(diffs, third.diffs);
        // The snapshot brings exactly what was missed.
        let (version, state) = origin.snapshot();
        let diffs = replica.replace(peer, version, &object(state)).unwrap();
        assert_eq!(
            diffs,
            [(
                "t".to_owned(),
                json!({"joins": {"bob": {"metas": [{"phx_ref": "r2"}]}}, "leaves": {}})
            )]
        );
        let own = NodeId::from_bits(1);
        assert_eq!(replica.list("t", own), origin.list("t", peer));
        assert_eq!(
            replica.replace(peer, version - 1, &Map::new()),
            None,
            "stale"
        );
        assert_eq!(
            replica.drop_node(peer),
            [(
                "t".to_owned(),
                json!({"joins": {}, "leaves": {"bob": {"metas": [{"phx_ref": "r2"}]}}})
            )]
        );
        assert_eq!(replica.len(), 0);
    }

    #[test]
    fn a_snapshot_holds_the_pending_batch_which_then_changes_nothing() {
        let (mut origin, mut replica) = (Tracker::default(), Tracker::default());
        let peer = NodeId::from_bits(7);
        origin
            .track("t", id(1), "ann".into(), Map::new(), "r1".into())
            .unwrap();
        let (version, state) = origin.snapshot();
        assert_eq!(
            replica
                .replace(peer, version, &object(state))
                .unwrap()
                .len(),
            1
        );
        let batch = origin.take_batch().unwrap();
        let topics: Map<String, Value> = batch.diffs.into_iter().collect();
        let (diffs, missed) = replica.apply_cast(peer, batch.version, &topics);
        assert!(diffs.is_empty() && !missed);
    }

    #[test]
    fn lists_merge_hubs_in_node_order() {
        let mut tracker = Tracker::default();
        let (low, own, high) = (
            NodeId::from_bits(1),
            NodeId::from_bits(5),
            NodeId::from_bits(9),
        );
        tracker
            .track("t", id(1), "ann".into(), Map::new(), "mine".into())
            .unwrap();
        let state = |r: &str| object(json!({"t": {"ann": {"metas": [{"phx_ref": r}]}}}));
        tracker.replace(high, 1, &state("high")).unwrap();
        tracker.replace(low, 1, &state("low")).unwrap();
        assert_eq!(
            tracker.list("t", own),
            json!({"ann": {"metas": [{"phx_ref": "low"}, {"phx_ref": "mine"}, {"phx_ref": "high"}]}})
        );
    }

    #[test]
    fn malformed_peer_state_is_skipped() {
        let mut tracker = Tracker::default();
        let peer = NodeId::from_bits(3);
        let junk = object(json!({
            "t": {
                "joins": {"ann": {"metas": [1, "x", {"no_ref": true}, {"phx_ref": "ok"}]}, "bob": 3},
                "leaves": 5
            },
            "u": [],
        }));
        let (diffs, _) = tracker.apply_cast(peer, 1, &junk);
        assert_eq!(
            diffs,
            [(
                "t".to_owned(),
                json!({"joins": {"ann": {"metas": [{"phx_ref": "ok"}]}}, "leaves": {}})
            )]
        );
        assert_eq!(
            tracker.list("t", NodeId::from_bits(1)),
            json!({"ann": {"metas": [{"phx_ref": "ok"}]}})
        );
        assert_eq!(tracker.len(), 0, "a replica is not this hub's own");
    }
}
