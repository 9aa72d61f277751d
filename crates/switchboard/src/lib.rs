//! Real-time WebSocket applications on tokio.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "axum")]
pub mod axum;
pub mod client;
mod error;
pub mod hub;
#[cfg(feature = "axum")]
mod route;
#[cfg(feature = "axum")]
mod serve;
pub mod upgrade;
pub mod ws;

#[cfg(feature = "axum")]
pub use route::{HubRejection, HubUpgrade, ws};
#[cfg(feature = "axum")]
pub use serve::{serve, serve_with_shutdown};

pub use error::Error;
pub use switchboard_proto as proto;
pub use switchboard_proto::{CloseCode, CloseFrame, Message, Role, Utf8Bytes};
pub use ws::{Compression, WebSocket, WebSocketConfig, WsReader, WsWriter};

/// The README's quick start, compiled as a doctest so that it cannot rot.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
