//! What one client socket keeps across its messages: the channels it joined (topic →
//! socket handle and handler), and when it was last heard from. (The assigns of its
//! `connect` are the connection's.)
//!
//! It is kept in the hub connection's crate-private state (beside its assigns, out of
//! the application's reach), so that the socket's handler, the
//! heartbeat watcher and intercepted broadcasts (which run on other tasks) all find it
//! from the connection alone.

use super::{DynChannel, Socket};
use crate::{hub::Hub, sync::lock};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

/// The channels of one connection, kept in the connection's crate-private state.
#[derive(Default)]
pub(crate) struct ConnState {
    channels: Mutex<HashMap<String, Joined>>,
    /// When the client last sent a message, in the hub's clock, for the heartbeat
    /// timeout.
    last_heard: AtomicU64,
}

/// A joined channel: the handle its callbacks get and the handler that serves it.
#[derive(Clone)]
pub(super) struct Joined {
    pub(super) socket: Socket,
    pub(super) channel: Arc<dyn DynChannel>,
}

impl ConnState {
    pub(super) fn get(&self, topic: &str) -> Option<Joined> {
        lock(&self.channels).get(topic).cloned()
    }

    pub(super) fn insert(&self, topic: String, joined: Joined) {
        lock(&self.channels).insert(topic, joined);
    }

    pub(super) fn remove(&self, topic: &str) -> Option<Joined> {
        lock(&self.channels).remove(topic)
    }

    /// How many channels are joined.
    pub(super) fn len(&self) -> usize {
        lock(&self.channels).len()
    }

    /// Removes every joined channel, for the socket's close.
    pub(super) fn drain(&self) -> Vec<Joined> {
        lock(&self.channels)
            .drain()
            .map(|(_, joined)| joined)
            .collect()
    }

    /// The client sent something.
    pub(crate) fn heard(&self, hub: &Hub) {
        self.last_heard.store(hub.now_micros(), Relaxed);
    }

    pub(crate) fn last_heard(&self) -> u64 {
        self.last_heard.load(Relaxed)
    }
}
