//! What one client socket keeps across its messages: the channels it joined (topic →
//! socket handle and handler), and when it was last heard from. (The assigns of its
//! `connect` are the connection's.)
//!
//! It is kept in the hub connection's crate-private state (beside its assigns, out of
//! the application's reach), so that the socket's handler, the
//! heartbeat watcher and intercepted broadcasts (which run on other tasks) all find it
//! from the connection alone.

use super::{DynChannel, Socket};
use crate::{
    CloseCode,
    hub::{Connection, Hub},
    sync::lock,
};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::SystemTime,
};
use tokio::task::AbortHandle;

/// The channels of one connection, kept in the connection's crate-private state.
#[derive(Default)]
pub(crate) struct ConnState {
    channels: Mutex<HashMap<String, Joined>>,
    /// When the client last sent a message, in the hub's clock, for the heartbeat
    /// timeout.
    last_heard: AtomicU64,
    /// When the credentials of `connect` expire.
    expires_at: Option<SystemTime>,
    /// The timer that closes the socket then, stopped when it closes first.
    expiry: Mutex<Option<AbortHandle>>,
}

/// A joined channel: the handle its callbacks get and the handler that serves it.
#[derive(Clone)]
pub(super) struct Joined {
    pub(super) socket: Socket,
    pub(super) channel: Arc<dyn DynChannel>,
}

impl ConnState {
    pub(crate) fn new(expires_at: Option<SystemTime>) -> Self {
        Self {
            expires_at,
            ..Self::default()
        }
    }

    /// Starts the timer that closes `conn` with [`CloseCode::TOKEN_EXPIRED`] when its
    /// credentials expire. A task per expiring socket, not a sweeper: its deadline is
    /// exact and only sockets with a token's expiry pay for it.
    pub(super) fn expire(&self, conn: &Connection) {
        let Some(at) = self.expires_at else { return };
        // Already past (the server's clock is the judge): closes at once.
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        let conn = conn.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            conn.close_for(CloseCode::TOKEN_EXPIRED, "token expired");
        });
        *lock(&self.expiry) = Some(timer.abort_handle());
    }

    /// Stops the expiry timer, which also lets go of its connection handle.
    pub(super) fn stop_expiry(&self) {
        if let Some(timer) = lock(&self.expiry).take() {
            timer.abort();
        }
    }

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
