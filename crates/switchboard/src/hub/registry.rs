//! Who is connected and who is in which room: a two-way index, so that a broadcast
//! reads one room and leaving every room on close costs only the rooms of that
//! connection.
//!
//! A broadcast does not fan out under the registry's lock: it takes a snapshot of the
//! recipients (an `Arc` clone, under a brief read lock) and queues for them outside it,
//! so that joins, leaves and registrations never wait for a fan-out. Snapshots are
//! copy-on-write, built lazily: a change only forgets the snapshot (O(1)), and the next
//! broadcast rebuilds it (O(members), no more than the fan-out it serves). A storm of
//! 10,000 joins costs 10,000 O(1) changes, not O(n²) copies.

use super::{Connection, ConnectionId};
use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{Arc, OnceLock},
};

/// A room name, shared between the two indexes.
pub(crate) type Room = Arc<str>;

#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) connections: Members,
    /// Room → its members. A room exists while it has members.
    pub(crate) rooms: HashMap<Room, Members>,
    /// Connection → the rooms it is in; present only for connections in a room. A list:
    /// a connection is in a few rooms, and a set would cost each one a hash table.
    memberships: HashMap<ConnectionId, Vec<Room>>,
}

/// What a membership change did to the room, for the broker's subscriptions.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RoomChange {
    /// The connection was already a member, or not one: nothing changed.
    None,
    /// The room changed size but exists before and after.
    Resized,
    /// The room was created by this join.
    Created(Room),
    /// The room was removed by this leave.
    Removed(Room),
}

/// Connections by id, with a snapshot of them for broadcasts.
#[derive(Debug, Default)]
pub(crate) struct Members {
    by_id: HashMap<ConnectionId, Connection>,
    /// Every member, built by the first broadcast after a change (see the module's
    /// doc); empty after each change.
    snapshot: OnceLock<Arc<[Connection]>>,
}

impl Members {
    /// Adds a member; false if it was one already.
    pub(crate) fn insert(&mut self, id: ConnectionId, conn: Connection) -> bool {
        match self.by_id.entry(id) {
            Entry::Occupied(_) => false,
            Entry::Vacant(entry) => {
                entry.insert(conn);
                self.snapshot.take();
                true
            }
        }
    }

    pub(crate) fn remove(&mut self, id: &ConnectionId) -> Option<Connection> {
        let removed = self.by_id.remove(id);
        if removed.is_some() {
            self.snapshot.take();
        }
        removed
    }

    pub(crate) fn get(&self, id: &ConnectionId) -> Option<&Connection> {
        self.by_id.get(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Connection> {
        self.by_id.values()
    }

    /// Every member now, to fan out to once the registry's lock is released.
    pub(crate) fn snapshot(&self) -> Arc<[Connection]> {
        self.snapshot
            .get_or_init(|| self.by_id.values().cloned().collect())
            .clone()
    }
}

impl Registry {
    /// Whether `conn` is registered: its id's entry is this very connection (a
    /// connection of another hub may carry the same id).
    pub(crate) fn holds(&self, conn: &Connection) -> bool {
        self.connections
            .get(&conn.id())
            .is_some_and(|registered| registered.is(conn))
    }

    pub(crate) fn join(&mut self, conn: &Connection, room: &str) -> RoomChange {
        let id = conn.id();
        let (room, created) = match self.rooms.get_key_value(room) {
            Some((name, _)) => (name.clone(), false),
            None => (Room::from(room), true),
        };
        let members = self.rooms.entry(room.clone()).or_default();
        if !members.insert(id, conn.clone()) {
            return RoomChange::None;
        }
        self.memberships
            .entry(id)
            // Most connections are in one room: no room for four.
            .or_insert_with(|| Vec::with_capacity(1))
            .push(room.clone());
        if created {
            RoomChange::Created(room)
        } else {
            RoomChange::Resized
        }
    }

    pub(crate) fn leave(&mut self, id: ConnectionId, room: &str) -> RoomChange {
        let Some(memberships) = self.memberships.get_mut(&id) else {
            return RoomChange::None;
        };
        let Some(index) = memberships.iter().position(|r| &**r == room) else {
            return RoomChange::None;
        };
        memberships.swap_remove(index);
        if memberships.is_empty() {
            self.memberships.remove(&id);
        }
        self.remove_member(id, room)
    }

    /// Removes a connection from every room it is in; returns the rooms that emptied.
    pub(crate) fn leave_all(&mut self, id: ConnectionId) -> Vec<Room> {
        let rooms = self.memberships.remove(&id).unwrap_or_default();
        rooms
            .iter()
            .filter_map(|room| match self.remove_member(id, room) {
                RoomChange::Removed(room) => Some(room),
                _ => None,
            })
            .collect()
    }

    fn remove_member(&mut self, id: ConnectionId, room: &str) -> RoomChange {
        let Some(members) = self.rooms.get_mut(room) else {
            return RoomChange::None;
        };
        members.remove(&id);
        if !members.is_empty() {
            return RoomChange::Resized;
        }
        // Rooms are removed when empty: millions of one-off room names leave nothing.
        match self.rooms.remove_entry(room) {
            Some((name, _)) => RoomChange::Removed(name),
            None => RoomChange::None,
        }
    }

    pub(crate) fn rooms_of(&self, id: ConnectionId) -> Vec<String> {
        self.memberships
            .get(&id)
            .map(|rooms| rooms.iter().map(|r| r.to_string()).collect())
            .unwrap_or_default()
    }

    /// How many rooms the connection is in.
    pub(crate) fn room_count(&self, id: ConnectionId) -> usize {
        self.memberships.get(&id).map_or(0, Vec::len)
    }

    pub(crate) fn is_member(&self, id: ConnectionId, room: &str) -> bool {
        self.memberships
            .get(&id)
            .is_some_and(|rooms| rooms.iter().any(|r| &**r == room))
    }

    #[cfg(test)]
    pub(crate) fn check_consistency(&self) {
        for (room, members) in &self.rooms {
            assert!(!members.is_empty(), "empty room {room} kept");
            members.check_snapshot();
            for id in members.by_id.keys() {
                assert!(
                    self.memberships[id].contains(room),
                    "{id} in {room} one way only"
                );
            }
        }
        self.connections.check_snapshot();
        for (id, rooms) in &self.memberships {
            assert!(!rooms.is_empty());
            for room in rooms {
                assert!(
                    self.rooms[room].by_id.contains_key(id),
                    "{id} in {room} one way only"
                );
            }
        }
    }
}

#[cfg(test)]
impl Members {
    /// A snapshot, when built, holds the members now: a change forgot the last one.
    fn check_snapshot(&self) {
        if let Some(snapshot) = self.snapshot.get() {
            let mut held: Vec<ConnectionId> = snapshot.iter().map(Connection::id).collect();
            let mut members: Vec<ConnectionId> = self.by_id.keys().copied().collect();
            held.sort_unstable();
            members.sort_unstable();
            assert_eq!(held, members, "stale snapshot");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, HubConfig, RequestInfo};
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::collections::BTreeSet;
    use tracing::Span;

    /// Connections that belong to a hub but run no task: enough for the registry.
    fn connections(n: u64) -> Vec<Connection> {
        let hub = Hub::new(HubConfig::default());
        (1..=n)
            .map(|n| {
                let id = ConnectionId::new(hub.node(), n);
                Connection::new(id, hub.clone(), RequestInfo::default(), Span::none())
            })
            .collect()
    }

    /// What the registry should hold: connection → rooms.
    type Model = HashMap<ConnectionId, BTreeSet<String>>;

    fn room_count(model: &Model, room: &str) -> usize {
        model.values().filter(|rooms| rooms.contains(room)).count()
    }

    fn assert_matches(registry: &Registry, model: &Model, conns: &[Connection]) {
        registry.check_consistency();
        for conn in conns {
            let id = conn.id();
            let expected = model.get(&id).cloned().unwrap_or_default();
            let rooms: BTreeSet<String> = registry.rooms_of(id).into_iter().collect();
            assert_eq!(rooms, expected, "rooms of {id}");
            for room in &expected {
                assert!(registry.is_member(id, room));
            }
        }
        let all: BTreeSet<&str> = model.values().flatten().map(String::as_str).collect();
        let held: BTreeSet<&str> = registry.rooms.keys().map(|r| &**r).collect();
        assert_eq!(held, all, "rooms with members");
        for room in all {
            assert_eq!(
                registry.rooms[room].len(),
                room_count(model, room),
                "{room}"
            );
        }
    }

    #[test]
    fn random_joins_and_leaves_keep_both_indexes_consistent() {
        let conns = connections(12);
        for seed in 0..10 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut registry = Registry::default();
            let mut model = Model::new();
            for step in 0..500 {
                let conn = &conns[rng.random_range(0..conns.len())];
                let id = conn.id();
                let room = format!("r{}", rng.random_range(0..8));
                match rng.random_range(0..12) {
                    0..5 => {
                        let before = room_count(&model, &room);
                        let inserted = model.entry(id).or_default().insert(room.clone());
                        let expected = match (inserted, before) {
                            (false, _) => RoomChange::None,
                            (true, 0) => RoomChange::Created(room.as_str().into()),
                            (true, _) => RoomChange::Resized,
                        };
                        assert_eq!(registry.join(conn, &room), expected, "seed {seed}");
                    }
                    5..9 => {
                        let removed = model.get_mut(&id).is_some_and(|r| r.remove(&room));
                        model.retain(|_, rooms| !rooms.is_empty());
                        let after = room_count(&model, &room);
                        let expected = match (removed, after) {
                            (false, _) => RoomChange::None,
                            (true, 0) => RoomChange::Removed(room.as_str().into()),
                            (true, _) => RoomChange::Resized,
                        };
                        assert_eq!(registry.leave(id, &room), expected, "seed {seed}");
                    }
                    // A broadcast's snapshot, kept by `check_consistency` until a change.
                    9..11 => {
                        let snapshot = registry.rooms.get(room.as_str()).map(Members::snapshot);
                        let mut held: Vec<ConnectionId> = snapshot
                            .iter()
                            .flat_map(|s| s.iter().map(Connection::id))
                            .collect();
                        let mut expected: Vec<ConnectionId> = model
                            .iter()
                            .filter(|(_, rooms)| rooms.contains(&room))
                            .map(|(id, _)| *id)
                            .collect();
                        held.sort_unstable();
                        expected.sort_unstable();
                        assert_eq!(held, expected, "seed {seed}");
                    }
                    _ => {
                        let left = model.remove(&id).unwrap_or_default();
                        let mut expected: Vec<String> = left
                            .into_iter()
                            .filter(|room| room_count(&model, room) == 0)
                            .collect();
                        let mut emptied: Vec<String> = registry
                            .leave_all(id)
                            .iter()
                            .map(|r| r.to_string())
                            .collect();
                        expected.sort();
                        emptied.sort();
                        assert_eq!(emptied, expected, "seed {seed}");
                    }
                }
                registry.check_consistency();
                if step % 16 == 0 {
                    assert_matches(&registry, &model, &conns);
                }
            }
            assert_matches(&registry, &model, &conns);
            for conn in &conns {
                registry.leave_all(conn.id());
            }
            registry.check_consistency();
            assert!(registry.rooms.is_empty());
            assert!(registry.memberships.is_empty());
        }
    }

    #[test]
    fn rooms_and_memberships_are_removed_when_empty() {
        let conns = connections(1);
        let mut registry = Registry::default();
        for i in 0..10_000 {
            let room = format!("room-{i}");
            assert!(matches!(
                registry.join(&conns[0], &room),
                RoomChange::Created(_)
            ));
            assert!(matches!(
                registry.leave(conns[0].id(), &room),
                RoomChange::Removed(_)
            ));
        }
        registry.check_consistency();
        assert!(registry.rooms.is_empty());
        assert!(registry.memberships.is_empty());
        assert_eq!(registry.leave(conns[0].id(), "room-0"), RoomChange::None);
        assert!(registry.leave_all(conns[0].id()).is_empty());
    }
}
