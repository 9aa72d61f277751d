//! What a hub with [`HubConfig::metrics`](crate::hub::HubConfig::metrics) records as
//! it runs: the counters and histograms that cost something per message, per
//! broadcast or per connection, in atomics: prometheus-client's counters and
//! families, and histograms of our own (`histogram.rs`).

use super::histogram::Histogram;
use crate::hub::{Census, HubConfig, JoinResult, Refusal};
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::{Registry, Unit},
};
use std::{
    fmt,
    sync::{Mutex, Weak},
};
use switchboard_proto::CloseCode;

/// A refusal's reason, as a label.
type ReasonLabel = [(&'static str, &'static str); 1];
/// A close code, as a label.
type CodeLabel = [(&'static str, u16); 1];
/// A channel join's topic pattern and result, as labels.
type JoinLabels = [(&'static str, String); 2];

/// Buckets of the bytes a connection has queued: 64 B to 16 MiB, by fours; the
/// default buffer bound (1 MiB) falls on a bucket's edge.
const BACKLOG_BUCKETS: &[u64] = &[
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
];

/// Buckets of a broadcast's recipients on this hub: 1 to 100,000.
const FANOUT_BUCKETS: &[u64] = &[1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10_000, 100_000];

/// Buckets of the time from a broadcast to a recipient's socket write, in
/// microseconds: 10 µs to 10 s. On loopback an idle server writes within tens of
/// microseconds; a backlog shows as milliseconds, a stalled reader as seconds.
const DELIVERY_BUCKETS: &[u64] = &[
    10, 25, 50, 100, 250, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 1_000_000, 10_000_000,
];

/// Microseconds in a second, for histograms kept in microseconds.
const MICROS: f64 = 1e-6;

/// The hub's recorded metrics.
pub(crate) struct Instruments {
    accepted: Counter,
    refused: Family<ReasonLabel, Counter>,
    closed: Family<CodeLabel, Counter>,
    messages_received: Counter,
    received_bytes: Counter,
    messages_sent: Counter,
    sent_bytes: Counter,
    backlog: Histogram,
    fanout: Histogram,
    delivery: Histogram,
    joins: Family<JoinLabels, Counter>,
    /// The channels endpoints on the hub, for their presence entries at each scrape.
    censuses: Mutex<Vec<Weak<dyn Census>>>,
}

impl Instruments {
    /// The instruments of a hub with `config`, if it records metrics.
    pub(crate) fn for_config(config: &HubConfig) -> Option<Self> {
        config.metrics.then(Self::new)
    }

    fn new() -> Self {
        Self {
            accepted: Counter::default(),
            refused: Family::default(),
            closed: Family::default(),
            messages_received: Counter::default(),
            received_bytes: Counter::default(),
            messages_sent: Counter::default(),
            sent_bytes: Counter::default(),
            backlog: Histogram::new(BACKLOG_BUCKETS, 1.0),
            fanout: Histogram::new(FANOUT_BUCKETS, 1.0),
            delivery: Histogram::new(DELIVERY_BUCKETS, MICROS),
            joins: Family::default(),
            censuses: Mutex::default(),
        }
    }

    /// An upgrade was admitted and its connection registered.
    pub(crate) fn accepted(&self) {
        self.accepted.inc();
    }

    /// A connection was refused before its 101.
    pub(crate) fn refused(&self, reason: Refusal) {
        self.refused
            .get_or_create(&[("reason", reason.label())])
            .inc();
    }

    /// A connection ended with `code` (1006 when its transport died).
    pub(crate) fn closed(&self, code: CloseCode) {
        self.closed.get_or_create(&[("code", code.0)]).inc();
    }

    /// A data message of `len` payload bytes arrived.
    pub(crate) fn received(&self, len: usize) {
        self.messages_received.inc();
        self.received_bytes.inc_by(len as u64);
    }

    /// A data frame of `len` bytes (as on the wire) went to a socket's write queue.
    pub(crate) fn sent(&self, len: usize) {
        self.messages_sent.inc();
        self.sent_bytes.inc_by(len as u64);
    }

    /// A connection had `bytes` queued when the sweeper looked.
    pub(crate) fn backlog(&self, bytes: usize) {
        self.backlog.observe(bytes as u64);
    }

    /// A broadcast reached `recipients` connections of this hub.
    pub(crate) fn fanout(&self, recipients: usize) {
        self.fanout.observe(recipients as u64);
    }

    /// A broadcast frame's write completed `micros` after the broadcast.
    pub(crate) fn delivered(&self, micros: u64) {
        self.delivery.observe(micros);
    }

    /// A channel join of a topic that `pattern` serves ended with `result`.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn channel_join(&self, pattern: &str, result: JoinResult) {
        let labels = [
            ("pattern", pattern.to_owned()),
            ("result", result.label().to_owned()),
        ];
        self.joins.get_or_create(&labels).inc();
    }

    /// Counts the presence entries of `census` at each scrape, while it lives.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn add_census(&self, census: Weak<dyn Census>) {
        let mut censuses = crate::sync::lock(&self.censuses);
        censuses.retain(|census| census.strong_count() > 0);
        censuses.push(census);
    }

    /// The presence entries of every live census.
    pub(crate) fn presence_entries(&self) -> usize {
        crate::sync::lock(&self.censuses)
            .iter()
            .filter_map(Weak::upgrade)
            .map(|census| census.presence_entries())
            .sum()
    }

    /// Registers every recorded metric (shared handles, not copies) in `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_accepted",
            "Upgrades admitted and registered",
            self.accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused before the 101, by reason",
            self.refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections ended, by close code (1006: the transport died)",
            self.closed.clone(),
        );
        registry.register(
            "messages_received",
            "Data messages received",
            self.messages_received.clone(),
        );
        registry.register_with_unit(
            "received",
            "Payload bytes of the data messages received",
            Unit::Bytes,
            self.received_bytes.clone(),
        );
        registry.register(
            "messages_sent",
            "Data frames handed to sockets",
            self.messages_sent.clone(),
        );
        registry.register_with_unit(
            "sent",
            "Bytes of the data frames handed to sockets, as on the wire",
            Unit::Bytes,
            self.sent_bytes.clone(),
        );
        registry.register_with_unit(
            "connection_backlog",
            "Bytes queued per connection, sampled by the keepalive sweeper",
            Unit::Bytes,
            self.backlog.clone(),
        );
        registry.register(
            "broadcast_recipients",
            "Recipients on this hub per broadcast",
            self.fanout.clone(),
        );
        registry.register_with_unit(
            "broadcast_delivery",
            "Time from a broadcast until a recipient's socket write completed",
            Unit::Seconds,
            self.delivery.clone(),
        );
        registry.register(
            "channel_joins",
            "Channel joins, by topic pattern and result",
            self.joins.clone(),
        );
    }
}

impl fmt::Debug for Instruments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instruments")
            .field("accepted", &self.accepted.get())
            .finish_non_exhaustive()
    }
}
