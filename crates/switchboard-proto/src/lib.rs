//! The WebSocket protocol without IO: RFC 6455 framing, masking, UTF-8 validation,
//! fragmentation, the close handshake's frames, and the opening handshake.
//!
//! Nothing here reads a socket or a clock. Callers hand in bytes and get back messages
//! ([`Decoder`]), hand in messages and get back bytes ([`Frame::encode`]), and validate
//! handshakes with plain `http` types ([`handshake`]). That makes every rule testable
//! with byte vectors, and lets any IO layer (tokio, blocking, a fuzzer) drive it.
//!
//! ```
//! use bytes::BytesMut;
//! use switchboard_proto::{Decoder, Frame, Limits, Message, Role};
//!
//! // What a browser sends for `ws.send("Hello")` (RFC 6455 §5.7).
//! let mut wire = BytesMut::new();
//! Frame::text("Hello").masked([0x37, 0xfa, 0x21, 0x3d]).write_to(&mut wire);
//!
//! let mut decoder = Decoder::new(Role::Server, Limits::default());
//! decoder.feed(wire);
//! assert_eq!(decoder.decode()?, Some(Message::text("Hello")));
//! # Ok::<(), switchboard_proto::ProtocolError>(())
//! ```
// Peer input is hostile (STYLE): no unwrap, expect, panic or indexing that a peer's
// bytes could reach. Tests are exempt through clippy.toml's `allow-*-in-tests`.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod close;
mod config;
mod decode;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
mod message;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use config::{Limits, Role};
pub use decode::{Decoder, ProtocolError};
pub use frame::{EncodedFrame, Frame, FrameHeader, OpCode};
pub use message::Message;
pub use utf8::Utf8Bytes;
