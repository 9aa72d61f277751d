//! Phoenix's heartbeat timeout ([`ChannelsConfig::heartbeat_timeout`]): a socket that
//! sends no message for that long is closed, as Phoenix's transport closes a socket
//! whose client went quiet. One sweeper per endpoint, like the hub's keepalive, rather
//! than a timer per socket.
//!
//! [`ChannelsConfig::heartbeat_timeout`]: super::ChannelsConfig::heartbeat_timeout

use super::state::ConnState;
use crate::{
    CloseCode,
    hub::{Connection, ConnectionId, Hub},
    sync::lock,
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::Duration,
};

/// The open sockets of one endpoint, watched for silence.
pub(crate) struct Heartbeats {
    hub: Hub,
    timeout: Duration,
    /// One entry per open socket, removed when it closes: bounded by the hub's
    /// `max_connections`.
    sockets: Mutex<HashMap<ConnectionId, Connection>>,
    sweeper: OnceLock<()>,
}

impl Heartbeats {
    pub(crate) fn new(hub: Hub, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            hub,
            timeout,
            sockets: Mutex::default(),
            sweeper: OnceLock::new(),
        })
    }

    /// Watches `conn`, whose clock starts now. The sweeper starts with the first
    /// socket: by then a runtime is running, which is not sure when routes are built.
    pub(crate) fn watch(self: &Arc<Self>, conn: &Connection, state: &ConnState) {
        // Zero turns the timeout off (see the setting): no sweeper, no entries.
        if self.timeout.is_zero() {
            return;
        }
        state.heard(&self.hub);
        lock(&self.sockets).insert(conn.id(), conn.clone());
        self.sweeper
            .get_or_init(|| drop(tokio::spawn(sweep(Arc::downgrade(self)))));
    }

    pub(crate) fn unwatch(&self, conn: &Connection) {
        lock(&self.sockets).remove(&conn.id());
    }

    fn sweep_once(&self) {
        let now = self.hub.now_micros();
        let timeout = self.timeout.as_micros() as u64;
        for conn in lock(&self.sockets).values() {
            let heard = conn
                .internal::<Arc<ConnState>>()
                .map_or(0, |state| state.last_heard());
            if now.saturating_sub(heard) > timeout {
                // A graceful close: a client that stopped sending may still read, and
                // the close handshake is bounded by the hub's `close_timeout`.
                conn.close_for(CloseCode::GOING_AWAY, "heartbeat timeout");
            }
        }
    }
}

/// Runs until the endpoint is dropped.
async fn sweep(heartbeats: Weak<Heartbeats>) {
    let Some(timeout) = heartbeats.upgrade().map(|h| h.timeout) else {
        return;
    };
    // A quarter of the timeout keeps each deadline's error under 25%, as the hub's
    // keepalive does.
    let mut tick = tokio::time::interval((timeout / 4).max(Duration::from_millis(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(heartbeats) = heartbeats.upgrade() else {
            return;
        };
        heartbeats.sweep_once();
    }
}
