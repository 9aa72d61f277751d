//! One sweeper per hub pings idle connections and closes those that stopped answering:
//! a single timer for the whole hub instead of one per connection.

use super::{Closer, ConnectionState, Hub, HubInner};
use crate::ws::OutboxClose;
use std::{
    sync::{Weak, atomic::Ordering::Relaxed},
    time::Duration,
};
use switchboard_proto::{CloseCode, CloseFrame};

/// Runs until the hub is dropped.
pub(super) async fn sweep(hub: Weak<HubInner>) {
    let Some(period) = hub.upgrade().map(|inner| {
        let config = &inner.config;
        // A quarter of the shorter interval keeps each deadline's error under 25%.
        (config.ping_interval.min(config.pong_timeout) / 4).max(Duration::from_millis(5))
    }) else {
        return;
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = hub.upgrade() else { return };
        sweep_once(&Hub::from_inner(inner));
    }
}

/// `Keepalive::ping_sent` of a connection aborted for its pong timeout: it is aborted
/// (and its timeout reported) once, however many sweeps pass before its task ends.
pub(super) const TIMED_OUT: u64 = u64::MAX;

fn sweep_once(hub: &Hub) {
    let config = hub.config();
    let ping_interval = config.ping_interval.as_micros() as u64;
    let pong_timeout = config.pong_timeout.as_micros() as u64;
    let now = hub.now_micros();
    // A snapshot: the registry stays unlocked while the pings are queued.
    let connections = hub.read().connections.snapshot();
    for conn in connections.iter() {
        // `on_open` still runs, before the 101: there is no socket to ping yet, and the
        // time it takes is not the peer's silence.
        if conn.state() == ConnectionState::Connecting {
            continue;
        }
        if let Some(instruments) = hub.instruments() {
            instruments.backlog(conn.buffered_amount());
        }
        let keepalive = conn.keepalive();
        let ping_sent = keepalive.ping_sent.load(Relaxed);
        if ping_sent == TIMED_OUT {
            // Aborted already; its task has not ended yet.
        } else if ping_sent != 0 {
            if now.saturating_sub(ping_sent) > pong_timeout {
                keepalive.ping_sent.store(TIMED_OUT, Relaxed);
                tracing::debug!(
                    parent: conn.span(),
                    pong_timeout = ?config.pong_timeout,
                    "pong timeout: aborting the connection with 1001"
                );
                // The peer is gone or hung: waiting for a close handshake would be futile.
                let frame = CloseFrame::new(CloseCode::GOING_AWAY, "pong timeout");
                conn.request_close(OutboxClose::Abort(frame), Closer::Hub);
            }
        } else if now.saturating_sub(keepalive.last_seen.load(Relaxed)) > ping_interval {
            keepalive.ping_sent.store(now, Relaxed);
            keepalive.last_ping.store(now, Relaxed);
            conn.ping();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{HubConfig, broadcast::tests::assert_registry_free_during};

    #[tokio::test]
    async fn the_registry_is_free_while_the_sweeper_pings() {
        let config = HubConfig::default().ping_interval(Duration::ZERO);
        assert_registry_free_during(config, |hub| {
            // Every connection idle for longer than the interval: each one is pinged.
            std::thread::sleep(Duration::from_millis(2));
            sweep_once(hub);
        });
    }
}
