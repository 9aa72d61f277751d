//! Real-time WebSocket applications on tokio.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "axum")]
pub mod axum;
pub mod client;
mod error;
pub mod upgrade;
pub mod ws;

pub use error::Error;
pub use switchboard_proto as proto;
pub use switchboard_proto::{CloseCode, CloseFrame, Message, Role, Utf8Bytes};
pub use ws::{WebSocket, WebSocketConfig, WsReader, WsWriter};
