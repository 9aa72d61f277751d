//! Hub settings, with the reason for each default.

use super::{Histories, IpNet, MessageRate, Position, ProxyHeader, RatePolicy};
use crate::Compression;
use std::sync::Arc;
use std::{ops::Range, time::Duration};
use switchboard_broker::History;
use switchboard_proto::Message;
use switchboard_proto::{CloseCode, CloseFrame};

/// Settings of a [`super::Hub`]. Every limit is on by default.
///
/// Start from [`HubConfig::default`] and change what you need, one method per setting;
/// the fields stay readable (`hub.config().max_connections`):
///
/// ```
/// use std::time::Duration;
/// use switchboard::hub::{BufferPolicy, Hub, HubConfig, Origins};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let config = HubConfig::default()
///     .max_connections(50_000)
///     .ping_interval(Duration::from_secs(20))
///     .allowed_origins(Origins::SameOriginAnd(vec!["https://chat.example.com".into()]))
///     .buffer_policy(BufferPolicy::Close);
/// let hub = Hub::new(config);
/// assert_eq!(hub.config().max_connections, 50_000);
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
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
    ///
    /// Default [`Origins::SameOrigin`]: pages of this server, and clients that are not
    /// browsers; another site's page cannot open a connection with the user's cookies.
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
    ///
    /// Default [`BufferPolicy::DropNewest`]: a client that falls behind misses messages
    /// (each drop counted and reported) rather than its connection; chat and dashboards
    /// prefer it. Choose [`BufferPolicy::Close`] where a gap is worse than a reconnect.
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
    /// second. An upgrade keeps its slot after its head, while the application works
    /// before registering it (middleware, a channels `connect` callback, an auth
    /// lookup in a handler), until the hub admits it: then it counts toward
    /// [`HubConfig::max_connections`] instead (from before its `on_open` runs). A plain
    /// HTTP connection gives its slot back when its head arrives, and counts toward
    /// [`HubConfig::max_http_connections`]. So every task `serve` runs for a
    /// connection before its 101 holds one of these slots or a hub's.
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
    /// Default 5 s: long enough for a peer across the world, short enough that a
    /// vanished peer does not hold a socket (nor a shutdown wait for it).
    pub close_timeout: Duration,
    /// Connections open at once from one client address (an IPv6 client: its /64); the
    /// next upgrade from it is answered 429 Too Many Requests with `Retry-After`.
    ///
    /// 429 rather than 503: the client is the cause, not the server (RFC 6585 §4), so
    /// the refusal does not read as an outage on a dashboard of 503s, and a client
    /// that backs off learns it is its own doing.
    ///
    /// The address is [`Connection::remote_addr`](super::Connection::remote_addr): the
    /// peer's, or the one a trusted proxy names ([`HubConfig::trusted_proxies`]). A
    /// connection whose address is unknown (a hyper service that did not give
    /// [`HubUpgrade::peer_addr`](crate::HubUpgrade::peer_addr)) is not counted.
    ///
    /// Default 1,000, a tenth of [`HubConfig::max_connections`]: an office, a campus or
    /// a mobile carrier's NAT puts hundreds of people behind one address, each with a
    /// few tabs open, and they all fit; one host opening connections in a loop takes a
    /// tenth of the server, not all of it.
    pub max_connections_per_ip: usize,
    /// The reverse proxies (addresses or blocks) whose [`HubConfig::proxy_header`] is
    /// believed. When the peer is one of them, the client is the rightmost address of
    /// that header that is not one of them; everything left of it was written by
    /// someone no trusted proxy vouches for. The client's address is then the
    /// connection's [`remote_addr`](super::Connection::remote_addr) (with the port the
    /// header gives, or 0) and what [`HubConfig::max_connections_per_ip`] counts.
    ///
    /// Default none: any client can write the header, so it is believed only from a
    /// proxy you name; without one, a server behind a proxy counts every client as the
    /// proxy's address.
    pub trusted_proxies: Vec<IpNet>,
    /// The header [`HubConfig::trusted_proxies`] name the client in.
    ///
    /// Default [`ProxyHeader::XForwardedFor`], the header most proxies and load
    /// balancers write.
    pub proxy_header: ProxyHeader,
    /// Rooms one connection may be in at once; a join past it is refused
    /// ([`Connection::try_join`](super::Connection::try_join) says why), counted in
    /// [`Connection::refused_joins`](super::Connection::refused_joins) and logged at
    /// `debug`.
    ///
    /// Default 100, the channels' `max_channels`: a page is in a handful of rooms, and
    /// each membership holds memory in the hub's two indexes and, for a new room, a
    /// broker subscription; a client that joins whatever its messages name cannot make
    /// the server hold thousands for it.
    pub max_rooms_per_connection: usize,
    /// The data messages a client may send (text and binary; control frames are bounded
    /// otherwise); past it, [`HubConfig::rate_policy`] applies.
    ///
    /// Default 1,000 a second with bursts of 1,000: tens of times what a person or a
    /// page sends (keystrokes, cursor moves and game inputs at 60 a second), and room
    /// for a burst such as rejoining 100 channels after a reconnect; a client that
    /// sends in a tight loop (tens of thousands a second on a LAN) meets it, so one
    /// connection cannot keep the server's callbacks and broadcasts busy for everyone.
    pub max_message_rate: MessageRate,
    /// What happens to a data message over [`HubConfig::max_message_rate`].
    ///
    /// Default [`RatePolicy::Drop`]: the excess is dropped and counted, and the
    /// connection stays; a client closed for a burst would reconnect and rejoin at
    /// once, costing the server more than its messages. Choose [`RatePolicy::Close`]
    /// where every message must be handled or the client told.
    pub rate_policy: RatePolicy,
    /// The close code graceful shutdown ([`super::Hub::shutdown`], [`crate::serve`])
    /// sends to every connection: [`CloseCode::GOING_AWAY`] (1001, reason
    /// `server shutting down`) or [`CloseCode::SERVICE_RESTART`] (1012, reason
    /// `server restarting`) when the server will be back.
    ///
    /// Default 1001: a shutdown may be for good; say 1012 when it is a restart (a
    /// deploy), and clients that know it (switchboard's JS client) come back spread
    /// over [`HubConfig::reconnect_window`] instead of all at once.
    pub shutdown_close: CloseCode,
    /// The window the shutdown's close reason suggests clients reconnect within, as
    /// `; retry in MIN-MAXs` after the reason (seconds, decimals when needed:
    /// `server restarting; retry in 1-10s`). Each client picks a random moment in it,
    /// so that a restarted server sees its clients come back spread over the window.
    ///
    /// Default `None` (no suggestion: the reason is as above, and switchboard's JS
    /// client waits its own default window). Make it as wide as the handshakes the
    /// new server can take: 10,000 clients over 1-10 s are about 1,100 handshakes/s.
    pub reconnect_window: Option<Range<Duration>>,
    /// Whether the hub records the metrics that cost something per message or per
    /// broadcast (histograms, a timestamp carried with each broadcast frame, counters
    /// of messages and bytes, closes by code, refusals by reason), for
    /// `switchboard::metrics` (feature `metrics`, on by default) to serve. Without the
    /// feature this records nothing.
    ///
    /// Default off: a hub nobody scrapes pays nothing for them. What a hub counts
    /// anyway ([`Hub::metrics`](super::Hub::metrics), its connections and rooms) is
    /// served either way.
    pub metrics: bool,
    /// How often this hub tells the other hubs on its broker that it is alive (see
    /// [`Hub::nodes`](super::Hub::nodes)); each heartbeat is one small broadcast.
    ///
    /// Default 1 s: a fifth of [`HubConfig::node_timeout`], so that four heartbeats
    /// in a row can be late or lost before a live hub is taken for dead.
    pub node_heartbeat: Duration,
    /// How long a hub that sends nothing (no heartbeat, no message) is still taken for
    /// alive by the others. Past it, they forget it: its presences leave every topic,
    /// and cluster queries stop waiting for it. A hub that shuts down says goodbye and
    /// is forgotten at once.
    ///
    /// Default 5 s: the longest a dead hub's users stay listed, against a broker
    /// blip or a pause of that length passing for a death (which then heals: the hub
    /// is back with its presences at its next heartbeat).
    pub node_timeout: Duration,
    /// How long a cluster query or order ([`Hub::cluster`](super::Hub::cluster)) waits
    /// for the other hubs' replies unless told otherwise
    /// ([`ClusterQuery::timeout`](super::ClusterQuery::timeout)); the hubs that have
    /// not replied by then are named in the answer's `missing`.
    ///
    /// Default 1 s: a round trip over the broker takes milliseconds, so a hub that has
    /// not answered in a second is stalled, and the caller (often answering a user or
    /// an HTTP request) should not wait on it; shorter than
    /// [`HubConfig::node_timeout`], so that a stalled hub is named missing before it
    /// is taken for dead.
    ///
    /// It also bounds a read of stream history ([`Broker::read_stream`](super::Broker::read_stream)):
    /// a read unanswered by then failed (its joiners join live, not recovered).
    pub cluster_timeout: Duration,
    /// The rooms that keep history, by pattern ([`HubConfig::history`]).
    ///
    /// Default none: a room keeps nothing and its messages get no position, as
    /// history costs memory (or a Redis key) per room and a round trip to the engine
    /// per message; rooms whose members must not miss messages ask for it.
    pub(crate) histories: Histories,
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
            max_connections_per_ip: 1_000,
            trusted_proxies: Vec::new(),
            proxy_header: ProxyHeader::XForwardedFor,
            max_rooms_per_connection: 100,
            max_message_rate: MessageRate::new(1_000, 1_000),
            rate_policy: RatePolicy::Drop,
            shutdown_close: CloseCode::GOING_AWAY,
            reconnect_window: None,
            metrics: false,
            node_heartbeat: Duration::from_secs(1),
            node_timeout: Duration::from_secs(5),
            cluster_timeout: Duration::from_secs(1),
            histories: Histories::default(),
        }
    }
}

impl HubConfig {
    /// Sets [`HubConfig::max_connections`].
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Sets [`HubConfig::max_message_size`]: it bounds every frame of a message too.
    pub fn max_message_size(mut self, max: usize) -> Self {
        self.max_message_size = max;
        self
    }

    /// Sets [`HubConfig::ping_interval`].
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Sets [`HubConfig::pong_timeout`].
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.pong_timeout = timeout;
        self
    }

    /// Sets [`HubConfig::compression`].
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Sets [`HubConfig::allowed_origins`].
    pub fn allowed_origins(mut self, origins: Origins) -> Self {
        self.allowed_origins = origins;
        self
    }

    /// Sets [`HubConfig::max_buffered_bytes`].
    pub fn max_buffered_bytes(mut self, max: usize) -> Self {
        self.max_buffered_bytes = max;
        self
    }

    /// Sets [`HubConfig::buffer_policy`].
    pub fn buffer_policy(mut self, policy: BufferPolicy) -> Self {
        self.buffer_policy = policy;
        self
    }

    /// Sets [`HubConfig::handshake_timeout`].
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets [`HubConfig::max_pending_handshakes`]; the hub takes 0 as 1.
    pub fn max_pending_handshakes(mut self, max: usize) -> Self {
        self.max_pending_handshakes = max;
        self
    }

    /// Sets [`HubConfig::max_http_connections`]; the hub takes 0 as 1.
    pub fn max_http_connections(mut self, max: usize) -> Self {
        self.max_http_connections = max;
        self
    }

    /// Sets [`HubConfig::close_timeout`].
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Sets [`HubConfig::max_connections_per_ip`].
    pub fn max_connections_per_ip(mut self, max: usize) -> Self {
        self.max_connections_per_ip = max;
        self
    }

    /// Sets [`HubConfig::trusted_proxies`]: addresses (`IpNet::from(ip)`) or blocks
    /// (`"10.0.0.0/8".parse()?`).
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted_proxies = proxies.into_iter().collect();
        self
    }

    /// Sets [`HubConfig::proxy_header`].
    pub fn proxy_header(mut self, header: ProxyHeader) -> Self {
        self.proxy_header = header;
        self
    }

    /// Sets [`HubConfig::max_rooms_per_connection`].
    pub fn max_rooms_per_connection(mut self, max: usize) -> Self {
        self.max_rooms_per_connection = max;
        self
    }

    /// Sets [`HubConfig::max_message_rate`].
    pub fn max_message_rate(mut self, rate: MessageRate) -> Self {
        self.max_message_rate = rate;
        self
    }

    /// Sets [`HubConfig::rate_policy`].
    pub fn rate_policy(mut self, policy: RatePolicy) -> Self {
        self.rate_policy = policy;
        self
    }

    /// Makes the rooms that `pattern` names keep `history`: `pattern` is a room's name,
    /// or a prefix ending in `*` (`"ticker:*"`: every room whose name starts with
    /// `ticker:`; `"*"`: every room). The most specific pattern wins (a name, then the
    /// longest prefix); a pattern given again replaces the earlier one.
    ///
    /// Every message sent to such a room (`hub.to(room).send(..)`,
    /// [`Broadcast::publish`](super::Broadcast::publish)) is numbered and kept by the
    /// broker's engine (in memory, or Redis), delivered to every member in one order,
    /// and can be recovered by a connection that comes back with its position
    /// ([`Connection::join_from`](super::Connection::join_from)). Rooms no pattern
    /// names keep today's path and cost.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::hub::{History, Hub, HubConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let history = History::default().max_len(500).max_age(Duration::from_secs(60));
    /// let hub = Hub::new(HubConfig::default().history("ticker:*", history));
    /// assert_eq!(hub.history_of("ticker:ACME"), Some(history));
    /// assert_eq!(hub.history_of("lobby"), None);
    /// # }
    /// ```
    pub fn history(mut self, pattern: impl Into<String>, history: History) -> Self {
        self.histories.add(&pattern.into(), history, None);
        self
    }

    /// [`HubConfig::history`], with the message each member gets made by `frame` from
    /// the message published and its position, once per message per hub (so that
    /// clients see positions: channels add them to their broadcasts this way). The
    /// history keeps the message as published; recovered messages are framed too.
    ///
    /// `frame` runs while the hub delivers the stream (under its state's lock): keep
    /// it quick, and do not join, leave or wait there. It may send, to any room: a
    /// send to a stream room is queued by the engine behind the one being delivered.
    pub fn history_framed(
        mut self,
        pattern: impl Into<String>,
        history: History,
        frame: impl Fn(&Message, Position) -> Message + Send + Sync + 'static,
    ) -> Self {
        self.histories
            .add(&pattern.into(), history, Some(Arc::new(frame)));
        self
    }

    /// Sets [`HubConfig::metrics`].
    pub fn metrics(mut self, enabled: bool) -> Self {
        self.metrics = enabled;
        self
    }

    /// Sets [`HubConfig::node_heartbeat`].
    pub fn node_heartbeat(mut self, every: Duration) -> Self {
        self.node_heartbeat = every;
        self
    }

    /// Sets [`HubConfig::node_timeout`].
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// Sets [`HubConfig::cluster_timeout`].
    pub fn cluster_timeout(mut self, timeout: Duration) -> Self {
        self.cluster_timeout = timeout;
        self
    }

    /// Sets [`HubConfig::shutdown_close`].
    pub fn shutdown_close(mut self, code: CloseCode) -> Self {
        self.shutdown_close = code;
        self
    }

    /// Sets [`HubConfig::reconnect_window`].
    pub fn reconnect_window(mut self, window: Range<Duration>) -> Self {
        self.reconnect_window = Some(window);
        self
    }

    /// The close frame graceful shutdown sends: [`HubConfig::shutdown_close`] with its
    /// reason and the [`HubConfig::reconnect_window`].
    pub(crate) fn shutdown_frame(&self) -> CloseFrame {
        let what = if self.shutdown_close == CloseCode::SERVICE_RESTART {
            "server restarting"
        } else {
            "server shutting down"
        };
        let reason = match &self.reconnect_window {
            Some(window) => format!(
                "{what}; retry in {}-{}s",
                seconds(window.start),
                seconds(window.end)
            ),
            None => what.to_owned(),
        };
        CloseFrame::new(self.shutdown_close, reason)
    }
}

/// Seconds as the reconnect window's format writes them: `2`, `0.25`, `1.5`.
fn seconds(duration: Duration) -> String {
    let millis = duration.as_millis();
    let text = format!("{}.{:03}", millis / 1000, millis % 1000);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
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
/// // Pages of this server, whatever name they were loaded under (`localhost`,
/// // `127.0.0.1`), plus the development server of the front end.
/// let config = HubConfig::default()
///     .allowed_origins(Origins::SameOriginAnd(vec!["http://localhost:5173".into()]));
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

    #[test]
    fn every_builder_method_sets_its_field() {
        // Values other than the defaults, so that a method that sets nothing fails.
        let origins = Origins::List(vec!["https://a.example".into()]);
        let proxy: IpNet = "10.0.0.0/8".parse().unwrap();
        let config = HubConfig::default()
            .max_connections(1)
            .max_message_size(2)
            .ping_interval(Duration::from_secs(3))
            .pong_timeout(Duration::from_secs(4))
            .compression(Compression::shared())
            .allowed_origins(origins.clone())
            .max_buffered_bytes(5)
            .buffer_policy(BufferPolicy::Close)
            .handshake_timeout(Duration::from_secs(6))
            .max_pending_handshakes(7)
            .max_http_connections(8)
            .close_timeout(Duration::from_secs(9))
            .max_connections_per_ip(10)
            .trusted_proxies([proxy])
            .proxy_header(ProxyHeader::Forwarded)
            .max_rooms_per_connection(11)
            .max_message_rate(MessageRate::new(12, 13))
            .rate_policy(RatePolicy::Close)
            .shutdown_close(CloseCode::SERVICE_RESTART)
            .reconnect_window(Duration::from_secs(10)..Duration::from_secs(11))
            .metrics(true)
            .node_heartbeat(Duration::from_millis(12))
            .node_timeout(Duration::from_millis(13))
            .cluster_timeout(Duration::from_millis(14))
            .history("r", History::default().max_len(15));
        // Exhaustive: a new field does not compile here until it has a method and a check.
        let HubConfig {
            max_connections,
            max_message_size,
            ping_interval,
            pong_timeout,
            compression,
            allowed_origins,
            max_buffered_bytes,
            buffer_policy,
            handshake_timeout,
            max_pending_handshakes,
            max_http_connections,
            close_timeout,
            max_connections_per_ip,
            trusted_proxies,
            proxy_header,
            max_rooms_per_connection,
            max_message_rate,
            rate_policy,
            shutdown_close,
            reconnect_window,
            metrics,
            node_heartbeat,
            node_timeout,
            cluster_timeout,
            histories,
        } = config;
        assert_eq!(max_connections, 1);
        assert_eq!(max_message_size, 2);
        assert_eq!(ping_interval, Duration::from_secs(3));
        assert_eq!(pong_timeout, Duration::from_secs(4));
        assert_eq!(compression, Compression::shared());
        assert_eq!(allowed_origins, origins);
        assert_eq!(max_buffered_bytes, 5);
        assert_eq!(buffer_policy, BufferPolicy::Close);
        assert_eq!(handshake_timeout, Duration::from_secs(6));
        assert_eq!(max_pending_handshakes, 7);
        assert_eq!(max_http_connections, 8);
        assert_eq!(close_timeout, Duration::from_secs(9));
        assert_eq!(max_connections_per_ip, 10);
        assert_eq!(trusted_proxies, [proxy]);
        assert_eq!(proxy_header, ProxyHeader::Forwarded);
        assert_eq!(max_rooms_per_connection, 11);
        assert_eq!(max_message_rate, MessageRate::new(12, 13));
        assert_eq!(rate_policy, RatePolicy::Close);
        assert!(metrics);
        assert_eq!(node_heartbeat, Duration::from_millis(12));
        assert_eq!(node_timeout, Duration::from_millis(13));
        assert_eq!(cluster_timeout, Duration::from_millis(14));
        let mut expected = Histories::default();
        expected.add("r", History::default().max_len(15), None);
        assert_eq!(histories, expected);
        assert_eq!(shutdown_close, CloseCode::SERVICE_RESTART);
        assert_eq!(
            reconnect_window,
            Some(Duration::from_secs(10)..Duration::from_secs(11))
        );
    }

    #[test]
    fn the_shutdown_reason_names_the_restart_and_its_window() {
        let frame = HubConfig::default().shutdown_frame();
        assert_eq!(
            (frame.code, frame.reason.as_str()),
            (CloseCode::GOING_AWAY, "server shutting down")
        );
        let restart = HubConfig::default()
            .shutdown_close(CloseCode::SERVICE_RESTART)
            .reconnect_window(Duration::from_millis(250)..Duration::from_secs(10));
        let frame = restart.shutdown_frame();
        assert_eq!(frame.code, CloseCode::SERVICE_RESTART);
        assert_eq!(
            frame.reason.as_str(),
            "server restarting; retry in 0.25-10s"
        );
        let odd =
            restart.reconnect_window(Duration::from_millis(1500)..Duration::from_millis(2001));
        assert_eq!(
            odd.shutdown_frame().reason.as_str(),
            "server restarting; retry in 1.5-2.001s"
        );
    }
}
