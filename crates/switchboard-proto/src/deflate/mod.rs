//! permessage-deflate (RFC 7692): negotiation in the opening handshake, and the codec
//! that compresses outgoing messages and inflates incoming ones.
//!
//! - [`DeflateConfig`] says what this endpoint wants; [`DeflateParams`] is what the
//!   handshake agreed. A server negotiates with
//!   [`ServerHandshake::negotiate_deflate`](crate::handshake::ServerHandshake::negotiate_deflate),
//!   a client offers with
//!   [`ClientHandshake::with_deflate`](crate::handshake::ClientHandshake::with_deflate) and
//!   reads the agreement from
//!   [`ClientAccepted::deflate`](crate::handshake::ClientAccepted::deflate).
//! - [`Decoder::with_deflate`](crate::Decoder::with_deflate) inflates compressed messages,
//!   enforcing [`Limits::max_message_size`](crate::Limits::max_message_size) on the inflated
//!   size as it inflates.
//! - [`Deflater`] compresses a message into one frame with RSV1 set.
//!
//! ```
//! use bytes::BytesMut;
//! use switchboard_proto::{
//!     Decoder, Limits, Message, OpCode, Role,
//!     deflate::{DeflateConfig, Deflater},
//!     handshake::{ClientHandshake, ServerHandshake},
//! };
//!
//! let config = DeflateConfig::default();
//! let client = ClientHandshake::new(&"ws://example.com/".parse()?, [7; 16])?
//!     .with_deflate(config);
//! let mut server = ServerHandshake::from_request(&client.request())?;
//! let agreed = server.negotiate_deflate(&config).ok_or("declined")?;
//! let accepted = client.validate_response(&server.response())?;
//! assert_eq!(accepted.deflate(), Some(agreed));
//!
//! // The server compresses; the client inflates.
//! let mut deflater = Deflater::new(&agreed, Role::Server, 6);
//! let frame = deflater.frame(OpCode::Text, "Hello, Hello, Hello".as_bytes())?;
//! assert!(frame.header().rsv1);
//! let mut wire = BytesMut::new();
//! frame.write_to(&mut wire);
//! let mut decoder = Decoder::new(Role::Client, Limits::default()).with_deflate(&agreed);
//! decoder.feed(wire);
//! assert_eq!(decoder.decode()?, Some(Message::text("Hello, Hello, Hello")));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod codec;
mod negotiate;

pub use codec::{DeflateError, Deflater};
pub(crate) use codec::{InflateError, Inflater};
pub use negotiate::{DeflateConfig, DeflateParams, DeflateResponseError};
pub(crate) use negotiate::{accept_response, negotiate_server};
