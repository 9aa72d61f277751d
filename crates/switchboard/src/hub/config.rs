//! Hub settings, with the reason for each default.

use crate::Compression;
use std::time::Duration;

/// Settings of a [`super::Hub`]. Every limit is on by default.
///
/// Start from [`HubConfig::default`] and change the fields you need:
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard::hub::{BufferPolicy, Hub, HubConfig, Origins};
///
/// # #[tokio::main] async fn main() {
/// let mut config = HubConfig::default();
/// config.max_connections = 50_000;
/// config.ping_interval = Duration::from_secs(20);
/// config.allowed_origins = Origins::List(vec!["https://chat.example.com".into()]);
/// config.buffer_policy = BufferPolicy::Close;
/// let hub = Hub::new(config);
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HubConfig {
    /// Connections open at once; the next upgrade is answered 503 with `Retry-After`.
    ///
    /// Default 10,000: enough for one chat server, and a bound on the
    /// memory and file descriptors a flood of clients can take.
    pub max_connections: usize,
    /// The longest message a client may send (after reassembly); longer closes with 1009.
    ///
    /// Default 64 KiB: chat and dashboard messages are far smaller, and
    /// a peer cannot make the server buffer megabytes per connection.
    pub max_message_size: usize,
    /// How long a connection may be silent before the hub pings it.
    ///
    /// Default 30 s: under the idle timeouts of common proxies and
    /// load balancers (60 s), so that they do not cut quiet connections.
    pub ping_interval: Duration,
    /// How long a ping may wait for its pong before the connection is closed.
    ///
    /// Default 10 s: a live client answers within a round trip, and a dead one is
    /// noticed within 40 s of silence (with the default `ping_interval`).
    pub pong_timeout: Duration,
    /// permessage-deflate (RFC 7692) with the clients that offer it (browsers do).
    ///
    /// Default [`Compression::Disabled`]: compression costs CPU on every message and, with
    /// context takeover, memory on every connection; it pays off for large, repetitive
    /// messages. For rooms, [`Compression::Shared`] compresses each broadcast once for all
    /// its recipients.
    pub compression: Compression,
    /// Which `Origin` may open connections (checked before the upgrade, 403 otherwise).
    pub allowed_origins: Origins,
    /// Outbound bytes a connection may have queued and unwritten before
    /// [`HubConfig::buffer_policy`] applies.
    ///
    /// Frames count their size on the wire; a message waiting for its connection's own
    /// compression context (context takeover) counts its uncompressed size until then.
    ///
    /// Default 1 MiB: a second of a busy room for a healthy client; a stalled client
    /// cannot make the server hold more than this for it.
    pub max_buffered_bytes: usize,
    /// What happens to a message that would pass [`HubConfig::max_buffered_bytes`].
    pub buffer_policy: BufferPolicy,
    /// How long a client may take to send its upgrade request (see [`crate::serve`]).
    ///
    /// Default 10 s: a slowloris client holds a socket no longer.
    pub handshake_timeout: Duration,
    /// Connections [`crate::serve`] holds at once whose first request head has not
    /// arrived yet; past it, new connections wait in the listen backlog until one of
    /// these sends its head or ends, as HAProxy's `maxconn` does, rather than being
    /// accepted and refused.
    ///
    /// Default 1,024: each costs some 23 KiB (hyper's buffers and task), so slow or
    /// silent clients can make the server hold at most about 23 MiB, each for at most
    /// [`HubConfig::handshake_timeout`] (then 408); a head that is not slowed down
    /// arrives in a round trip, so 1,024 at once admit thousands of connections a
    /// second. Once its head has arrived, an upgrade counts toward
    /// [`HubConfig::max_connections`] (from before its `on_open` runs), and a plain
    /// HTTP connection toward [`HubConfig::max_http_connections`].
    ///
    /// 0 is taken as 1: a server that accepts no connection at all is never what is
    /// meant, and lifting the limit is never safe.
    pub max_pending_handshakes: usize,
    /// Plain HTTP connections (the router's other routes: pages, `/metrics`, an API)
    /// [`crate::serve`] holds at once after their first request head, for as long as
    /// they stay open; past it, a plain request is answered 503 with `Retry-After` and
    /// its connection closed. Upgrades do not count here.
    ///
    /// Default 1,024, for the same reason and cost as
    /// [`HubConfig::max_pending_handshakes`]: a client that keeps a connection alive
    /// with a request now and then, or sends a request body slowly, holds a slot, not
    /// the server's memory without bound; an idle kept-alive connection is closed after
    /// [`HubConfig::handshake_timeout`]. A request's own duration is the
    /// application's to bound (tower's `TimeoutLayer`). 0 is taken as 1.
    pub max_http_connections: usize,
    /// How long the close handshake may take before the transport is closed.
    ///
    /// Default 5 s.
    pub close_timeout: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_message_size: 64 << 10,
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            compression: Compression::Disabled,
            allowed_origins: Origins::SameOrigin,
            max_buffered_bytes: 1 << 20,
            buffer_policy: BufferPolicy::DropNewest,
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 1024,
            max_http_connections: 1024,
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Which browser origins may connect.
///
/// A browser names its page's origin in the `Origin` header; the check stops another
/// site's page from opening a connection with the user's cookies (cross-site WebSocket
/// hijacking). Clients that send no `Origin` (not browsers) are always let in.
///
/// ```
/// use switchboard::hub::{HubConfig, Origins};
///
/// let mut config = HubConfig::default();
/// // Pages of this server, whatever name they were loaded under (`localhost`,
/// // `127.0.0.1`), plus the development server of the front end.
/// config.allowed_origins = Origins::SameOriginAnd(vec!["http://localhost:5173".into()]);
/// assert!(config.allowed_origins.allows(Some("http://localhost:5173"), Some("127.0.0.1:3000")));
/// assert!(config.allowed_origins.allows(Some("http://localhost:3000"), Some("localhost:3000")));
/// assert!(!config.allowed_origins.allows(Some("https://evil.example"), Some("localhost:3000")));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origins {
    /// Requests without an `Origin` header (non-browser clients), and browsers on a page
    /// of the same host and port. Blocks cross-site WebSocket hijacking by default.
    SameOrigin,
    /// Exactly these origins (e.g. `https://example.com`), plus requests without an
    /// `Origin` header. The list replaces same-origin: a page of this server is refused
    /// unless its origin is listed under the very name it was loaded by (`localhost`
    /// and `127.0.0.1` differ); [`Origins::SameOriginAnd`] keeps it allowed.
    List(Vec<String>),
    /// Same-origin, as [`Origins::SameOrigin`], and these origins too.
    SameOriginAnd(Vec<String>),
    /// Any origin.
    Any,
}

impl Origins {
    /// Whether a request with this `Origin` (if any) to this `Host` may connect.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        match self {
            Self::Any => true,
            Self::List(list) => listed(list, origin),
            Self::SameOrigin => same_origin(origin, host),
            Self::SameOriginAnd(list) => same_origin(origin, host) || listed(list, origin),
        }
    }
}

/// Whether `origin` names the host (and port) the request was sent to.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    host.is_some_and(|host| authority.eq_ignore_ascii_case(host))
}

/// Whether `origin` is in `list`, ignoring ASCII case as scheme and host do.
fn listed(list: &[String], origin: &str) -> bool {
    list.iter().any(|o| o.eq_ignore_ascii_case(origin))
}

/// What a send does when the connection's outbound buffer is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BufferPolicy {
    /// The message is not queued for that connection; the drop is counted
    /// ([`Connection::dropped_messages`](super::Connection::dropped_messages)), and a
    /// broadcast's report or a `try_send` says so. Pings, pongs and close frames are
    /// never dropped.
    DropNewest,
    /// The connection is closed with 1008 "slow consumer".
    Close,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_compares_host_and_port() {
        let policy = Origins::SameOrigin;
        assert!(policy.allows(None, Some("example.com")));
        assert!(policy.allows(Some("http://example.com:8080"), Some("example.com:8080")));
        assert!(!policy.allows(Some("http://evil.com"), Some("example.com")));
        assert!(!policy.allows(Some("http://example.com:9"), Some("example.com:8080")));
        let list = Origins::List(vec!["https://a.example".into()]);
        assert!(list.allows(Some("https://a.example"), Some("x")));
        assert!(!list.allows(Some("https://b.example"), Some("x")));
    }
}
