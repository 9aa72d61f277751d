//! The hub's side of its metrics: why a connection was refused, how a channel join
//! ended, and where the recorded metrics live (`crate::metrics`, feature `metrics`).
//! Without the feature, [`Instruments`] has no value, so every recording site compiles
//! to nothing.

#[cfg(feature = "metrics")]
pub(crate) use crate::metrics::Instruments;

/// Why a connection was refused before its 101: a label with few values. (Those
/// that only `serve` and the axum routes see are unused without axum.)
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The `Origin` is not allowed (403).
    Origin,
    /// The hub is at `max_connections` (503).
    Full,
    /// The hub is shutting down (503).
    Draining,
    /// The client's address is at `max_connections_per_ip` (429).
    TooManyPerIp,
    /// Not a valid WebSocket handshake (400, 405, 426).
    BadHandshake,
    /// The request head did not arrive within `handshake_timeout` (408).
    HandshakeTimeout,
    /// The channels `connect` callback refused it (403).
    Unauthorized,
}

impl Refusal {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Origin => "origin",
            Self::Full => "full",
            Self::Draining => "draining",
            Self::TooManyPerIp => "too_many_per_ip",
            Self::BadHandshake => "bad_handshake",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::Unauthorized => "unauthorized",
        }
    }
}

/// How a channel join ended: a label with few values.
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinResult {
    /// The channel's `join` accepted it.
    Ok,
    /// The channel's `join` refused it, or panicked.
    Error,
    /// Refused before the channel's `join` ran (no pattern matched, the topic was too
    /// long, the socket had too many channels, the payload was not JSON).
    Refused,
}

#[cfg_attr(not(feature = "axum"), allow(dead_code))]
impl JoinResult {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Refused => "refused",
        }
    }
}

/// Something that counts presence entries on the hub (a channels endpoint), asked at
/// each scrape.
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) trait Census: Send + Sync {
    /// The presence entries held now.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn presence_entries(&self) -> usize;
}

/// Without the feature no hub has instruments: this type has no value, and the
/// recording sites behind `Hub::instruments` (always `None`) compile to nothing.
#[cfg(not(feature = "metrics"))]
#[derive(Debug)]
pub(crate) enum Instruments {}

#[cfg(not(feature = "metrics"))]
impl Instruments {
    pub(crate) fn for_config(_: &super::HubConfig) -> Option<Self> {
        None
    }
    pub(crate) fn accepted(&self) {
        match *self {}
    }
    pub(crate) fn refused(&self, _: Refusal) {
        match *self {}
    }
    pub(crate) fn closed(&self, _: switchboard_proto::CloseCode) {
        match *self {}
    }
    pub(crate) fn received(&self, _: usize) {
        match *self {}
    }
    pub(crate) fn sent(&self, _: usize) {
        match *self {}
    }
    pub(crate) fn backlog(&self, _: usize) {
        match *self {}
    }
    pub(crate) fn fanout(&self, _: usize) {
        match *self {}
    }
    pub(crate) fn delivered(&self, _: u64) {
        match *self {}
    }
    #[cfg(feature = "axum")]
    pub(crate) fn channel_join(&self, _: &str, _: JoinResult) {
        match *self {}
    }
    #[cfg(feature = "axum")]
    pub(crate) fn add_census(&self, _: std::sync::Weak<dyn Census>) {
        match *self {}
    }
}
