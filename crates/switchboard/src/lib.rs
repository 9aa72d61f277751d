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
//! Sends never wait for the peer: [`hub::Connection::send`] queues and returns at once,
//! from any task or thread; a broadcast encodes its frame once for every recipient.
//! Sends are fire-and-forget, and what one could not deliver is counted on its
//! connection and the hub; [`hub::Connection::try_send`] returns the result, with the
//! message handed back.
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
pub mod upgrade;
pub mod ws;

#[cfg(feature = "axum")]
pub use health::{health, ready};
#[cfg(feature = "axum")]
pub use route::ws;
#[cfg(feature = "axum")]
pub use serve::{serve, serve_with_shutdown};
pub use upgrade::hub::{HubRejection, HubUpgrade};

pub use error::Error;
pub use switchboard_proto as proto;
pub use switchboard_proto::{CloseCode, CloseFrame, Message, Role, Utf8Bytes};
pub use ws::{Compression, WebSocket, WebSocketConfig, WsReader, WsWriter};

/// The README's quick start, compiled as a doctest so that it cannot rot.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The examples of `docs/guide.md`, compiled as doctests.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../../../docs/guide.md")]
pub struct GuideDoctests;
