//! Prometheus metrics of a hub (feature `metrics`), in the OpenMetrics text format
//! that Prometheus scrapes.
//!
//! Turn recording on with [`HubConfig::metrics`](crate::hub::HubConfig::metrics) and
//! serve the metrics with one route, [`route`]:
//!
// The example serves through axum: without the feature it is shown, not compiled.
#![cfg_attr(feature = "axum", doc = "```no_run")]
#![cfg_attr(not(feature = "axum"), doc = "```ignore")]
//! use switchboard::hub::{Handler, Hub, HubConfig};
//! # struct Chat;
//! # impl Handler for Chat {}
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::new(HubConfig::default().metrics(true));
//! let app = axum::Router::new()
//!     .route("/chat/{room}", switchboard::ws(hub.clone(), Chat))
//!     .route("/metrics", switchboard::metrics::route(&hub));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! switchboard::serve(listener, app, &hub).await
//! # }
//! ```
//!
//! The metrics are encoded with `prometheus-client`, the Prometheus project's own Rust
//! client: it keeps no global registry (each hub serves its own), encodes OpenMetrics
//! text, and its counters are plain atomics. (`metrics` with its Prometheus exporter
//! would route every update through a global recorder and its key lookup.) Its types
//! stay out of this API: [`encode`] returns the text.
//!
//! # The metrics
//!
//! Names follow Prometheus' conventions: counters end in `_total`, units are base
//! units (`_bytes`, `_seconds`), and labels take few values (a close code, a refusal's
//! reason, a channel's topic *pattern*; never a room or a topic).
//!
//! Served whatever [`HubConfig::metrics`](crate::hub::HubConfig::metrics) says, read at
//! each scrape from what the hub keeps anyway:
//!
//! | metric | type | what |
//! |---|---|---|
//! | `switchboard_connections` | gauge | connections open |
//! | `switchboard_rooms` | gauge | rooms with a member on this hub |
//! | `switchboard_room_members` | gauge | memberships (a connection in 3 rooms counts 3) |
//! | `switchboard_queued_bytes` | gauge | bytes queued for every connection, not yet written |
//! | `switchboard_messages_dropped_total` | counter | messages dropped by the buffer policy |
//! | `switchboard_messages_refused_total` | counter | sends refused (connection closing, channel ended, control frame too long) |
//! | `switchboard_messages_rate_limited_total` | counter | client messages dropped over `max_message_rate` |
//! | `switchboard_joins_refused_total` | counter | room joins refused at `max_rooms_per_connection` |
//! | `switchboard_stream_reads_total` | counter | reads of stream history from the engine (recoveries share them; gap fills; link blips) |
//! | `switchboard_stream_recoveries_total` | counter | joins from a position, by `result`: `recovered`, `not_recovered` |
//! | `switchboard_stream_filled_total` | counter | stream messages delivered from a read after a gap, not as published |
//! | `switchboard_stream_lost_total` | counter | stream messages this hub's members never got (trimmed before a gap was read, history lost, read failed, engine unavailable at send) |
//! | `switchboard_broker_published_total` | counter | envelopes the broker published |
//! | `switchboard_broker_received_total` | counter | envelopes received from other hubs |
//! | `switchboard_broker_lost_total` | counter | envelopes that could not be published |
//! | `switchboard_broker_missed_total` | counter | envelopes other hubs published for this hub that never reached it (gaps in their numbering) |
//! | `switchboard_broker_malformed_total` | counter | messages that were not envelopes |
//! | `switchboard_broker_reconnects_total` | counter | times the broker's link was opened again |
//! | `switchboard_broker_up` | gauge | 1 while the broker's link is up, else 0 |
//!
//! The broker's are there when the broker reports them
//! ([`Broker::metrics`](crate::hub::Broker::metrics): the Redis broker does).
//!
//! Recorded only with [`HubConfig::metrics`](crate::hub::HubConfig::metrics) on:
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `switchboard_connections_accepted_total` | counter | | upgrades admitted |
//! | `switchboard_connections_refused_total` | counter | `reason` | refused before the 101: `origin`, `full`, `draining`, `too_many_per_ip`, `bad_handshake`, `handshake_timeout`, `unauthorized` |
//! | `switchboard_connections_closed_total` | counter | `code` | ended, by close code (1006: the transport died) |
//! | `switchboard_messages_received_total` | counter | | data messages received |
//! | `switchboard_received_bytes_total` | counter | | their payload bytes |
//! | `switchboard_messages_sent_total` | counter | | data frames handed to sockets |
//! | `switchboard_sent_bytes_total` | counter | | their bytes, as on the wire |
//! | `switchboard_connection_backlog_bytes` | histogram | | bytes queued per connection, sampled by the keepalive sweeper |
//! | `switchboard_broadcast_recipients` | histogram | | recipients on this hub per broadcast (room or all) |
//! | `switchboard_broadcast_delivery_seconds` | histogram | | from a broadcast to each recipient's completed socket write |
//! | `switchboard_presence_entries` | gauge | | presence entries of the hub's channels endpoints |
//! | `switchboard_channel_joins_total` | counter | `pattern`, `result` | channel joins: `ok`, `error` (the channel refused or panicked), `refused` (before the channel ran; `pattern` is empty when none matched) |
//!
//! `bad_handshake` and `handshake_timeout` are counted where the hub sees the request:
//! by [`crate::serve`] (the timeout), [`crate::ws()`] and the channels route (a bad
//! handshake). A hyper service or a bare stream answers those before it names a hub.
//!
//! The backlog histogram samples every connection at each sweep of the keepalive
//! sweeper (every quarter of the shorter of `ping_interval` and `pong_timeout`:
//! 2.5 s by default), so its count grows by the open connections at each sweep.
//! The delivery histogram is fed by a timestamp that each broadcast frame carries in
//! the connection's queue (only with metrics on); a recipient's sample is taken when
//! its task sees the write complete.
//!
//! # Cost
//!
//! With [`HubConfig::metrics`](crate::hub::HubConfig::metrics) off (the default), a hub
//! records nothing more than it counts anyway: the recording sites test one `Option`
//! (and without the feature they compile to nothing). On, each message costs a few
//! shared atomic additions, each broadcast a clock read and a histogram observation
//! per recipient. `docs/benchmarks.md` has the measured overhead.

mod histogram;
mod instruments;

pub(crate) use instruments::Instruments;

use crate::hub::Hub;
use prometheus_client::{
    encoding::text,
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
    },
    registry::{Registry, Unit},
};

/// The content type of [`encode`]'s text: OpenMetrics 1.0, which Prometheus asks for
/// first.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The hub's metrics now, in the OpenMetrics text format (serve with
/// [`CONTENT_TYPE`]), ending with `# EOF`.
///
/// ```
/// use switchboard::hub::{Hub, HubConfig};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let hub = Hub::new(HubConfig::default().metrics(true));
/// let text = switchboard::metrics::encode(&hub);
/// assert!(text.contains("switchboard_connections 0\n"));
/// assert!(text.contains("switchboard_connections_accepted_total 0\n"));
/// assert!(text.ends_with("# EOF\n"));
/// # }
/// ```
pub fn encode(hub: &Hub) -> String {
    let mut registry = Registry::with_prefix("switchboard");
    register_state(hub, &mut registry);
    if let Some(instruments) = hub.instruments() {
        instruments.register(&mut registry);
    }
    let mut text = String::new();
    // Writing to a `String` cannot fail, and every metric here encodes.
    let _ = text::encode(&mut text, &registry);
    text
}

/// A route that answers `GET` with [`encode`]'s text (feature `axum`).
///
/// ```no_run
/// use switchboard::hub::{Hub, HubConfig};
///
/// let hub = Hub::new(HubConfig::default().metrics(true));
/// let app: axum::Router = axum::Router::new().route("/metrics", switchboard::metrics::route(&hub));
/// ```
#[cfg(feature = "axum")]
pub fn route<S: Clone + Send + Sync + 'static>(hub: &Hub) -> axum::routing::MethodRouter<S> {
    let hub = hub.clone();
    axum::routing::get(move || {
        let text = encode(&hub);
        async move { ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], text) }
    })
}

/// Registers what is read from the hub's state at each scrape.
fn register_state(hub: &Hub, registry: &mut Registry) {
    let (connections, rooms, members) = {
        let state = hub.read();
        let members: usize = state.rooms.values().map(|room| room.len()).sum();
        (state.connections.len(), state.rooms.len(), members)
    };
    let queued: usize = hub.connections().iter().map(|c| c.buffered_amount()).sum();
    let counters = hub.metrics();
    let gauge = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
    registry.register("connections", "Connections open", gauge(connections));
    registry.register("rooms", "Rooms with a member on this hub", gauge(rooms));
    registry.register("room_members", "Room memberships", gauge(members));
    registry.register_with_unit(
        "queued",
        "Bytes queued for every connection, not yet written",
        Unit::Bytes,
        gauge(queued),
    );
    registry.register(
        "messages_dropped",
        "Messages dropped by the buffer policy",
        ConstCounter::new(counters.dropped_messages),
    );
    registry.register(
        "messages_refused",
        "Sends refused: connection closing, channel ended, control frame too long",
        ConstCounter::new(counters.refused_messages),
    );
    registry.register(
        "messages_rate_limited",
        "Client messages dropped over the message rate",
        ConstCounter::new(counters.rate_limited_messages),
    );
    registry.register(
        "joins_refused",
        "Room joins refused at the rooms-per-connection limit",
        ConstCounter::new(counters.refused_joins),
    );
    register_streams(hub, registry);
    if let Some(instruments) = hub.instruments() {
        registry.register(
            "presence_entries",
            "Presence entries of the hub's channels endpoints",
            gauge(instruments.presence_entries()),
        );
    }
    register_broker(hub, registry);
}

/// Registers the streams' counters (see [`HubMetrics`](crate::hub::HubMetrics)).
fn register_streams(hub: &Hub, registry: &mut Registry) {
    let counters = hub.metrics();
    let streams = registry.sub_registry_with_prefix("stream");
    streams.register(
        "reads",
        "Reads of stream history from the engine",
        ConstCounter::new(counters.stream_reads),
    );
    let recoveries = Family::<[(&'static str, &'static str); 1], Counter>::default();
    for (result, count) in [
        ("recovered", counters.streams_recovered),
        ("not_recovered", counters.streams_not_recovered),
    ] {
        recoveries
            .get_or_create(&[("result", result)])
            .inc_by(count);
    }
    streams.register(
        "recoveries",
        "Joins from a stream position, by whether every missed message was recovered",
        recoveries,
    );
    streams.register(
        "filled",
        "Stream messages delivered from a read after a gap",
        ConstCounter::new(counters.stream_filled),
    );
    streams.register(
        "lost",
        "Stream messages this hub's members never got",
        ConstCounter::new(counters.stream_lost),
    );
}

/// Registers the broker's counters and link state, when it reports them.
fn register_broker(hub: &Hub, registry: &mut Registry) {
    let Some(broker) = hub.broker_metrics() else {
        return;
    };
    let counters = [
        (
            "published",
            "Envelopes the broker published",
            broker.published,
        ),
        (
            "received",
            "Envelopes received from other hubs",
            broker.received,
        ),
        ("lost", "Envelopes that could not be published", broker.lost),
        (
            "missed",
            "Envelopes other hubs published for this hub that never reached it",
            broker.missed,
        ),
        (
            "malformed",
            "Broker messages that were not envelopes",
            broker.malformed,
        ),
        (
            "reconnects",
            "Times the broker's link was opened again",
            broker.reconnects,
        ),
    ];
    let broker_registry = registry.sub_registry_with_prefix("broker");
    for (name, help, value) in counters {
        broker_registry.register(name, help, ConstCounter::new(value));
    }
    broker_registry.register(
        "up",
        "1 while the broker's link is up, else 0",
        ConstGauge::new(i64::from(broker.connected)),
    );
}

#[cfg(test)]
mod tests {
    use super::encode;
    use crate::hub::{Broker, BrokerMetrics, Envelope, Hub, HubConfig, Inbox};

    /// A broker that reports fixed counters and a link that is up.
    struct Reporting;

    impl Broker for Reporting {
        fn start(&self, _: Inbox) {}
        fn publish(&self, _: Envelope) {}
        fn subscribe(&self, _: &str) {}
        fn unsubscribe(&self, _: &str) {}
        fn metrics(&self) -> Option<BrokerMetrics> {
            let mut metrics = BrokerMetrics::default();
            (metrics.published, metrics.received, metrics.lost) = (1, 2, 3);
            (metrics.malformed, metrics.reconnects, metrics.missed) = (4, 5, 6);
            metrics.connected = true;
            Some(metrics)
        }
    }

    #[tokio::test]
    async fn the_brokers_counters_and_link_are_served() {
        let text = encode(&Hub::with_broker(HubConfig::default(), Reporting));
        for line in [
            "switchboard_broker_published_total 1\n",
            "switchboard_broker_received_total 2\n",
            "switchboard_broker_lost_total 3\n",
            "switchboard_broker_malformed_total 4\n",
            "switchboard_broker_reconnects_total 5\n",
            "switchboard_broker_missed_total 6\n",
            "switchboard_broker_up 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[tokio::test]
    async fn a_hub_without_metrics_serves_only_what_it_counts_anyway() {
        let text = encode(&Hub::new(HubConfig::default()));
        assert!(
            text.contains("# TYPE switchboard_connections gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("switchboard_messages_dropped_total 0\n"),
            "{text}"
        );
        assert!(!text.contains("accepted"), "{text}");
        assert!(
            !text.contains("broker"),
            "the in-memory broker reports nothing: {text}"
        );
        let on = encode(&Hub::new(HubConfig::default().metrics(true)));
        assert!(
            on.contains("# TYPE switchboard_broadcast_delivery_seconds histogram\n"),
            "{on}"
        );
    }
}
