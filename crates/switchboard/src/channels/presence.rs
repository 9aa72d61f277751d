//! Presence: who is on a topic, by key (a user id), with metadata per socket, in the
//! shape phoenix.js `Presence` reads.
//!
//! A key may be tracked by several sockets at once (tabs, devices); each tracking is a
//! "meta" with its own `phx_ref`. Clients get the whole state once, as a
//! `presence_state` push the channel sends on join, and then `presence_diff`
//! broadcasts:
//!
//! ```text
//! presence_state: {"ann": {"metas": [{"phx_ref": "F1", "device": "phone"}, {"phx_ref": "F2", …}]}}
//! presence_diff:  {"joins": {"bob": {"metas": [{"phx_ref": "F3", …}]}}, "leaves": {}}
//! ```
//!
//! This tracker is per hub: presence does not yet travel over the broker.

use super::{Endpoint, Socket};
use crate::{hub::ConnectionId, sync::lock};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};

/// The event of the full state, pushed to a socket that joined.
pub const PRESENCE_STATE: &str = "presence_state";
/// The event of a change, broadcast to a topic.
pub const PRESENCE_DIFF: &str = "presence_diff";

/// Why a presence could not be tracked or updated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// Metadata must be a JSON object (phoenix.js adds `phx_ref` to it).
    #[error("presence metadata must be a json object")]
    NotAnObject,
    /// This socket already tracks this key on this topic (`Phoenix.Presence.track`
    /// answers `{:error, {:already_tracked, …}}` too); use [`Presence::update`].
    #[error("key already tracked by this socket")]
    AlreadyTracked,
    /// This socket does not track this key on this topic.
    #[error("key not tracked by this socket")]
    NotTracked,
    /// The channel is closed.
    #[error("channel is closed")]
    Closed,
}

/// The presence of a hub's channels: track, update, untrack, list.
///
/// Obtained from [`Endpoint::presence`] or [`Socket::presence`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct Presence {
    endpoint: Endpoint,
}

impl Presence {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    /// Tracks `key` for this socket's topic with `meta` (a JSON object) and broadcasts
    /// the join as a `presence_diff`. Returns the meta's `phx_ref`.
    ///
    /// Called inside [`Channel::join`](super::Channel::join), the diff is broadcast once
    /// the join succeeded and the socket is subscribed, so that the joining client sees
    /// it too; if the join fails, the key is untracked without a diff. The presence ends
    /// when the channel does (leave, stop, crash, close, timeout).
    pub fn track(
        &self,
        socket: &Socket,
        key: impl Into<String>,
        meta: Value,
    ) -> Result<String, PresenceError> {
        let Value::Object(meta) = meta else {
            return Err(PresenceError::NotAnObject);
        };
        if socket.is_closed() {
            return Err(PresenceError::Closed);
        }
        let phx_ref = new_ref();
        let diff = self.tracker().track(
            socket.topic(),
            socket.id(),
            key.into(),
            meta,
            phx_ref.clone(),
        )?;
        self.announce(socket, diff);
        Ok(phx_ref)
    }

    /// Replaces the meta this socket tracks for `key`; the diff carries the old meta in
    /// `leaves` and the new one in `joins`, with `phx_ref_prev` naming the old.
    pub fn update(&self, socket: &Socket, key: &str, meta: Value) -> Result<String, PresenceError> {
        let Value::Object(meta) = meta else {
            return Err(PresenceError::NotAnObject);
        };
        let phx_ref = new_ref();
        let diff =
            self.tracker()
                .update(socket.topic(), socket.id(), key, meta, phx_ref.clone())?;
        self.announce(socket, diff);
        Ok(phx_ref)
    }

    /// Stops tracking `key` for this socket; returns whether it was tracked.
    pub fn untrack(&self, socket: &Socket, key: &str) -> bool {
        let diff = self.tracker().untrack(socket.topic(), socket.id(), key);
        match diff {
            Some(diff) => {
                self.announce(socket, diff);
                true
            }
            None => false,
        }
    }

    /// Everyone on `topic`: `{key: {"metas": [meta, …]}}`, the `presence_state` payload.
    pub fn list(&self, topic: &str) -> Value {
        self.tracker().list(topic)
    }

    /// Untracks every key of a channel that ended, and tells the others.
    pub(crate) fn untrack_socket(&self, socket: &Socket) {
        let diff = self.tracker().untrack_all(socket.topic(), socket.id());
        if let Some(diff) = diff {
            self.endpoint
                .broadcast_from(socket.id(), socket.topic(), PRESENCE_DIFF, diff);
        }
    }

    /// Forgets a failed join's presences: nobody was told of them.
    pub(crate) fn forget_socket(&self, socket: &Socket) {
        let _ = self.tracker().untrack_all(socket.topic(), socket.id());
    }

    fn announce(&self, socket: &Socket, diff: Value) {
        if socket.defer_broadcast(PRESENCE_DIFF, &diff) {
            return;
        }
        // A channel that closed meanwhile has already untracked and announced its
        // leaves; a late change must neither linger nor be announced.
        if socket.is_closed() {
            self.forget_socket(socket);
            return;
        }
        self.endpoint.broadcast(socket.topic(), PRESENCE_DIFF, diff);
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        lock(&self.endpoint.shared.tracker)
    }
}

/// A fresh `phx_ref`. Clients compare refs only for equality; 64 random bits keep them
/// apart across restarts, when clients still hold refs from before.
fn new_ref() -> String {
    format!("F{:016x}", rand::random::<u64>())
}

/// The presence state of every topic, without IO: each change returns its diff.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    topics: HashMap<String, BTreeMap<String, Vec<Entry>>>,
}

#[derive(Debug)]
struct Entry {
    conn: ConnectionId,
    /// The meta as clients see it, `phx_ref` included.
    meta: Map<String, Value>,
}

impl Tracker {
    /// Entries of every topic: one per socket tracking a key.
    pub(crate) fn len(&self) -> usize {
        self.topics
            .values()
            .flat_map(|keys| keys.values())
            .map(Vec::len)
            .sum()
    }

    pub(crate) fn track(
        &mut self,
        topic: &str,
        conn: ConnectionId,
        key: String,
        mut meta: Map<String, Value>,
        phx_ref: String,
    ) -> Result<Value, PresenceError> {
        let entries = self
            .topics
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
        Ok(diff(one(key, vec![meta]), Map::new()))
    }

    pub(crate) fn update(
        &mut self,
        topic: &str,
        conn: ConnectionId,
        key: &str,
        mut meta: Map<String, Value>,
        phx_ref: String,
    ) -> Result<Value, PresenceError> {
        let entry = self
            .topics
            .get_mut(topic)
            .and_then(|keys| keys.get_mut(key))
            .and_then(|entries| entries.iter_mut().find(|e| e.conn == conn))
            .ok_or(PresenceError::NotTracked)?;
        let previous = entry.meta.get("phx_ref").cloned().unwrap_or(Value::Null);
        meta.insert("phx_ref".to_owned(), Value::String(phx_ref));
        // Phoenix.Tracker marks an update's new meta with the ref it replaces.
        meta.insert("phx_ref_prev".to_owned(), previous);
        let old = std::mem::replace(&mut entry.meta, meta.clone());
        Ok(diff(
            one(key.to_owned(), vec![meta]),
            one(key.to_owned(), vec![old]),
        ))
    }

    pub(crate) fn untrack(&mut self, topic: &str, conn: ConnectionId, key: &str) -> Option<Value> {
        let keys = self.topics.get_mut(topic)?;
        let entries = keys.get_mut(key)?;
        let at = entries.iter().position(|e| e.conn == conn)?;
        let entry = entries.remove(at);
        if entries.is_empty() {
            keys.remove(key);
        }
        if keys.is_empty() {
            self.topics.remove(topic);
        }
        Some(diff(Map::new(), one(key.to_owned(), vec![entry.meta])))
    }

    pub(crate) fn untrack_all(&mut self, topic: &str, conn: ConnectionId) -> Option<Value> {
        let keys = self.topics.get_mut(topic)?;
        let mut leaves = Map::new();
        keys.retain(|key, entries| {
            let (gone, kept): (Vec<Entry>, Vec<Entry>) = std::mem::take(entries)
                .into_iter()
                .partition(|e| e.conn == conn);
            *entries = kept;
            if !gone.is_empty() {
                leaves.insert(
                    key.clone(),
                    metas(gone.into_iter().map(|e| Value::Object(e.meta)).collect()),
                );
            }
            !entries.is_empty()
        });
        if keys.is_empty() {
            self.topics.remove(topic);
        }
        (!leaves.is_empty()).then(|| diff(Map::new(), leaves))
    }

    pub(crate) fn list(&self, topic: &str) -> Value {
        let mut state = Map::new();
        for (key, entries) in self.topics.get(topic).into_iter().flatten() {
            let all = entries
                .iter()
                .map(|e| Value::Object(e.meta.clone()))
                .collect();
            state.insert(key.clone(), metas(all));
        }
        Value::Object(state)
    }
}

fn metas(metas: Vec<Value>) -> Value {
    json!({ "metas": metas })
}

fn one(key: String, list: Vec<Map<String, Value>>) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert(key, metas(list.into_iter().map(Value::Object).collect()));
    map
}

fn diff(joins: Map<String, Value>, leaves: Map<String, Value>) -> Value {
    json!({ "joins": joins, "leaves": leaves })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::NodeId;

    fn id(sequence: u64) -> ConnectionId {
        ConnectionId::new(NodeId::from_bits(1), sequence)
    }

    fn meta(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn track_returns_a_join_diff_and_lists_several_metas_per_key() {
        let mut tracker = Tracker::default();
        let diff = tracker
            .track(
                "room:a",
                id(1),
                "ann".into(),
                meta(json!({"device": "phone"})),
                "r1".into(),
            )
            .unwrap();
        assert_eq!(
            diff,
            json!({"joins": {"ann": {"metas": [{"device": "phone", "phx_ref": "r1"}]}}, "leaves": {}})
        );
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
        assert_eq!(
            tracker.list("room:a"),
            json!({
                "ann": {"metas": [
                    {"device": "phone", "phx_ref": "r1"},
                    {"device": "laptop", "phx_ref": "r2"}
                ]},
                "bob": {"metas": [{"phx_ref": "r3"}]}
            })
        );
        assert_eq!(
            tracker.list("room:b"),
            json!({"bob": {"metas": [{"phx_ref": "r4"}]}})
        );
        assert_eq!(tracker.list("room:none"), json!({}));
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
        let diff = tracker
            .update(
                "t",
                id(1),
                "ann",
                meta(json!({"status": "here"})),
                "r2".into(),
            )
            .unwrap();
        assert_eq!(
            diff,
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
    fn untrack_removes_one_meta_and_empty_keys() {
        let mut tracker = Tracker::default();
        tracker
            .track("t", id(1), "ann".into(), Map::new(), "r1".into())
            .unwrap();
        tracker
            .track("t", id(2), "ann".into(), Map::new(), "r2".into())
            .unwrap();
        let diff = tracker.untrack("t", id(1), "ann").unwrap();
        assert_eq!(
            diff,
            json!({"joins": {}, "leaves": {"ann": {"metas": [{"phx_ref": "r1"}]}}})
        );
        assert_eq!(
            tracker.list("t"),
            json!({"ann": {"metas": [{"phx_ref": "r2"}]}})
        );
        assert_eq!(tracker.untrack("t", id(1), "ann"), None);
        assert!(tracker.untrack("t", id(2), "ann").is_some());
        assert!(tracker.topics.is_empty(), "empty topics are dropped");
    }

    #[test]
    fn untrack_all_leaves_every_key_of_a_socket() {
        let mut tracker = Tracker::default();
        tracker
            .track("t", id(1), "ann".into(), Map::new(), "r1".into())
            .unwrap();
        tracker
            .track("t", id(1), "ann-alt".into(), Map::new(), "r2".into())
            .unwrap();
        tracker
            .track("t", id(2), "bob".into(), Map::new(), "r3".into())
            .unwrap();
        let diff = tracker.untrack_all("t", id(1)).unwrap();
        assert_eq!(
            diff,
            json!({"joins": {}, "leaves": {
                "ann": {"metas": [{"phx_ref": "r1"}]},
                "ann-alt": {"metas": [{"phx_ref": "r2"}]}
            }})
        );
        assert_eq!(tracker.untrack_all("t", id(1)), None);
        assert_eq!(
            tracker.list("t"),
            json!({"bob": {"metas": [{"phx_ref": "r3"}]}})
        );
    }

    #[test]
    fn refs_are_distinct() {
        assert_ne!(new_ref(), new_ref());
    }
}
