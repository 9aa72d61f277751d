//! Who is connected and who is in which room: a two-way index, so that a broadcast
//! reads one room and leaving every room on close costs only the rooms of that
//! connection.

use super::{Connection, ConnectionId};
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

/// A room name, shared between the two indexes.
pub(crate) type Room = Arc<str>;

#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) connections: HashMap<ConnectionId, Connection>,
    /// Room → its members. A room exists while it has members.
    pub(crate) rooms: HashMap<Room, HashMap<ConnectionId, Connection>>,
    /// Connection → the rooms it is in; present only for connections in a room.
    memberships: HashMap<ConnectionId, HashSet<Room>>,
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

impl Registry {
    pub(crate) fn join(&mut self, conn: &Connection, room: &str) -> RoomChange {
        let id = conn.id();
        let (room, created) = match self.rooms.get_key_value(room) {
            Some((name, _)) => (name.clone(), false),
            None => (Room::from(room), true),
        };
        let members = self.rooms.entry(room.clone()).or_default();
        if members.insert(id, conn.clone()).is_some() {
            return RoomChange::None;
        }
        self.memberships.entry(id).or_default().insert(room.clone());
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
        if !memberships.remove(room) {
            return RoomChange::None;
        }
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

    pub(crate) fn is_member(&self, id: ConnectionId, room: &str) -> bool {
        self.memberships
            .get(&id)
            .is_some_and(|rooms| rooms.contains(room))
    }

    #[cfg(test)]
    pub(crate) fn check_consistency(&self) {
        for (room, members) in &self.rooms {
            assert!(!members.is_empty(), "empty room {room} kept");
            for id in members.keys() {
                assert!(
                    self.memberships[id].contains(room),
                    "{id} in {room} one way only"
                );
            }
        }
        for (id, rooms) in &self.memberships {
            assert!(!rooms.is_empty());
            for room in rooms {
                assert!(
                    self.rooms[room].contains_key(id),
                    "{id} in {room} one way only"
                );
            }
        }
    }
}
