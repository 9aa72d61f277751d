//! Real-time WebSocket applications on tokio.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod error;
pub mod ws;

pub use error::Error;
pub use switchboard_proto as proto;
pub use switchboard_proto::{CloseCode, CloseFrame, Message, Role, Utf8Bytes};
pub use ws::{WebSocket, WebSocketConfig, WsReader, WsWriter};
