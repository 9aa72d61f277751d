//! Real-time WebSocket applications on tokio: an RFC 6455 implementation of its own
//! ([`proto`], sans-IO), a hub that knows every connection, rooms and broadcast
//! ([`hub`]), and upgrades from axum, hyper or a bare stream ([`upgrade`]).
//!
//! # Quick start: a chat room
//!
// The example serves through axum: without the feature it is shown, not compiled.
#![cfg_attr(feature = "axum", doc = "```no_run")]
#![cfg_attr(not(feature = "axum"), doc = "```ignore")]
//! use switchboard::{Message, hub::{Connection, Handler, Hub, HubConfig}};
//!
//! struct Chat;
//!
//! impl Handler for Chat {
//!     async fn on_open(&self, conn: &Connection) {
//!         let room = conn.param("room").unwrap_or("lobby").to_owned();
//!         conn.join(&room);
//!         conn.hub().to(&room).except(conn.id()).send_text("a user joined");
//!     }
//!
//!     async fn on_message(&self, conn: &Connection, message: Message) {
//!         for room in conn.rooms() {
//!             conn.hub().to(&room).send(message.clone());
//!         }
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let hub = Hub::new(HubConfig::default());
//!     let app = axum::Router::new().route("/chat/{room}", switchboard::ws(hub.clone(), Chat));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     // Graceful: on Ctrl-C or SIGTERM, every socket gets 1001 and time to close.
//!     switchboard::serve(listener, app, &hub).await
//! }
//! ```
//!
//! Without axum (`default-features = false`), a hub takes its connections from a hyper
//! service ([`HubUpgrade::from_request`]) or a bare stream
//! ([`upgrade::StreamUpgrade::register`]), with the same checks and semantics as the
//! axum route (`switchboard::ws`).
//!
//! With the `tls` feature (rustls), `serve_tls` serves `https://` and `wss://`, and
//! [`client::connect`] dials `wss://`: see the `tls` module.
//!
//! Sends never wait for the peer: [`hub::Connection::send`] queues and returns at once,
//! from any task or thread; a broadcast encodes its frame once for every recipient.
//! Sends are fire-and-forget, and what one could not deliver is counted on its
//! connection and the hub; [`hub::Connection::try_send`] returns the result, with the
//! message handed back.
//!
//! # Logs
//!
//! switchboard records what happens with [`tracing`](https://docs.rs/tracing); install
//! a subscriber to see it (e.g. `tracing-subscriber`'s `fmt` with an `EnvFilter`, and
//! `RUST_LOG=switchboard=debug`). Without one, it costs a check per event, and nothing
//! is formatted.
//!
//! Each hub connection has a span, `connection`, with the fields `id` (the
//! [`ConnectionId`](hub::ConnectionId)), `remote` (the peer's address, when known),
//! `route` (the route's pattern, e.g. `/chat/{room}`, or the request's path without a
//! router) and `node` (the hub's [`NodeId`](hub::NodeId)). Its task and every callback of
//! its [`Handler`](hub::Handler) run in it, so the application's own events in
//! `on_message` carry those fields too. The span is at `info`, so that the warnings and
//! errors of a connection carry its fields where servers usually log; a span writes no
//! line of its own.
//!
//! | level | event | fields |
//! |---|---|---|
//! | `error` | `handler panicked: closing the connection with 1011` | `callback` |
//! | `error` | `channel join panicked`, `channel handle_in panicked`, `channel terminate panicked`, `handle_out panicked: …` | `topic` (`event`) |
//! | `info` | `serving` (from `serve`) | `local`, `node` |
//! | `info` | `hub shutting down: …`, `hub shutdown deadline passed: …`, `hub shut down` | `node`, `connections`, `deadline`, `code` |
//! | `debug` | `upgrade refused`: every request refused before its 101 | `status`, `cause`, `error`, `remote`, `route` |
//! | `debug` | `connection opened` (after `on_open`) | `healthy` (`false`: `on_open` panicked) |
//! | `debug` | `connection closed` | `code`, `reason`, `closed_by`, `error` |
//! | `debug` | `pong timeout: aborting the connection with 1001` (once) | `pong_timeout` |
//! | `debug` | `slow consumer: outbound buffer full, message dropped` (the first drop of a connection only) | `policy`, `max_buffered_bytes` |
//! | `debug` | `channel joined`, `channel join refused`, `channel left`, `malformed channel message` | `topic`, `reason`, `error` |
//! | `debug` | `message rate exceeded` (the first excess message, or the close with 1008) | `close` |
//! | `trace` | `message received` | `opcode`, `len` |
//!
//! The `cause` of a refusal is `origin` (403), `full` or `draining` (503, with
//! `Retry-After`), `connections per ip` (429), `handshake` (400, 405 or 426; `error` names the check that failed),
//! `handshake timeout` (408), `head too large` (431), `http connections` (503: plain HTTP
//! connections at `max_http_connections`), or, on a channels socket, `protocol version`
//! or `connect` (403). `closed_by` is `peer` (its close frame came first, or its
//! transport ended: 1006), `server` (the application's
//! [`Connection::close`](hub::Connection::close)) or `hub` (its own reasons: shutdown,
//! pong timeout, the buffer policy's 1008, a handler's panic, a protocol error; the code
//! and reason say which).
//!
//! `info` is quiet while all is well: nothing is written per connection or per message
//! above `debug`. The Redis broker (`switchboard-redis`) writes a `warn` when its link
//! to Redis goes down (once per outage) and an `info` when it is back.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "axum")]
pub mod channels;
pub mod client;
mod error;
#[cfg(feature = "axum")]
mod health;
pub mod hub;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "axum")]
mod route;
#[cfg(feature = "axum")]
mod serve;
mod sync;
#[cfg(feature = "tls")]
pub mod tls;
pub mod upgrade;
pub mod ws;

#[cfg(feature = "axum")]
pub use health::{health, ready};
#[cfg(feature = "axum")]
pub use route::ws;
#[cfg(feature = "axum")]
pub use serve::{serve, serve_with_shutdown};
#[cfg(all(feature = "axum", feature = "tls"))]
pub use serve::{serve_tls, serve_tls_with_shutdown};
pub use upgrade::hub::{HubRejection, HubUpgrade};

pub use error::Error;
pub use switchboard_proto as proto;
pub use switchboard_proto::{CloseCode, CloseFrame, Message, Role, Utf8Bytes};
pub use ws::{Compression, WebSocket, WebSocketConfig, WsReader, WsWriter};

/// The README's quick start, compiled as a doctest so that it cannot rot.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The examples of `docs/guide.md`, compiled as doctests (TLS's among them).
#[cfg(all(doctest, feature = "axum", feature = "tls"))]
#[doc = include_str!("../../../docs/guide.md")]
pub struct GuideDoctests;
