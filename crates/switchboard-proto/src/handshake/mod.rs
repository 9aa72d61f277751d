//! The opening handshake (RFC 6455 §4).
//!
//! Both sides work on plain [`http`] types, so the same checks serve hyper, axum and a
//! bare socket. No IO, clock or randomness: the client's 16 random key bytes are an
//! argument.
//!
//! - A server checks a request with [`ServerHandshake`], answers it with
//!   [`ServerHandshake::response`], or refuses it with [`HandshakeError::response`].
//! - A client builds its request with [`ClientHandshake`] and checks the answer with
//!   [`ClientHandshake::validate_response`].
//! - [`http1`] reads and writes the heads as HTTP/1.1 bytes for callers without an HTTP
//!   library.
//!
//! ```
//! use switchboard_proto::handshake::{ClientHandshake, ServerHandshake, http1};
//!
//! // The client: 16 bytes from a random source, fresh for each connection.
//! let client = ClientHandshake::new(&"ws://example.com/chat".parse()?, [7; 16])?
//!     .with_protocols(&["chat.v2", "chat.v1"])?;
//! let mut to_server = Vec::new();
//! http1::write_request(&client.request(), &mut to_server);
//!
//! // The server.
//! let (request, _) = http1::parse_request(&to_server)?.ok_or("incomplete head")?;
//! let mut server = ServerHandshake::from_request(&request)?;
//! server.select_protocol(&["chat.v1"]);
//! let mut to_client = Vec::new();
//! http1::write_response(&server.response(), &mut to_client);
//!
//! // The client again.
//! let (response, _) = http1::parse_response(&to_client)?.ok_or("incomplete head")?;
//! let accepted = client.validate_response(&response)?;
//! assert_eq!(accepted.protocol(), Some("chat.v1"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod client;
pub(crate) mod fields;
pub mod http1;
mod key;
mod server;

pub use client::{ClientAccepted, ClientHandshake, ClientHandshakeError, ClientRequestError};
pub use key::{accept_key, generate_key};
pub use server::{HandshakeError, ServerHandshake};

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, StatusCode, header::ORIGIN};

    #[test]
    fn round_trip_through_http1_bytes() {
        let client = ClientHandshake::new(
            &"wss://example.com:8443/live?v=2".parse().unwrap(),
            [42; 16],
        )
        .unwrap()
        .with_protocols(&["graphql-transport-ws", "graphql-ws"])
        .unwrap()
        .with_extensions(HeaderValue::from_static(
            "permessage-deflate; client_max_window_bits",
        ))
        .with_header(ORIGIN, HeaderValue::from_static("https://example.com"));
        let mut wire = Vec::new();
        http1::write_request(&client.request(), &mut wire);
        // A first frame sent eagerly behind the head stays unread.
        wire.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);

        let (request, head_len) = http1::parse_request(&wire).unwrap().unwrap();
        assert_eq!(wire.get(head_len..), Some(&[0x81, 0x80, 1, 2, 3, 4][..]));
        assert_eq!(request.uri(), "/live?v=2");
        assert_eq!(request.headers()["host"], "example.com:8443");
        assert_eq!(request.headers()[ORIGIN], "https://example.com");
        let mut server = ServerHandshake::from_request(&request).unwrap();
        assert_eq!(
            server.protocols().collect::<Vec<_>>(),
            ["graphql-transport-ws", "graphql-ws"]
        );
        assert_eq!(
            server.extensions().collect::<Vec<_>>(),
            ["permessage-deflate; client_max_window_bits"]
        );
        assert_eq!(
            server.select_protocol(&["graphql-ws", "graphql-transport-ws"]),
            Some("graphql-transport-ws")
        );
        server.set_extensions(HeaderValue::from_static("permessage-deflate"));
        let mut reply = Vec::new();
        http1::write_response(&server.response(), &mut reply);
        assert!(reply.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));

        let (response, len) = http1::parse_response(&reply).unwrap().unwrap();
        assert_eq!(len, reply.len());
        let accepted = client.validate_response(&response).unwrap();
        assert_eq!(accepted.protocol(), Some("graphql-transport-ws"));
        assert_eq!(
            accepted.extensions().collect::<Vec<_>>(),
            ["permessage-deflate"]
        );
    }

    #[test]
    fn a_refusal_round_trips_with_its_reason() {
        let client = ClientHandshake::new(&"ws://h/".parse().unwrap(), [0; 16]).unwrap();
        let mut request = client.request();
        request
            .headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        let error = ServerHandshake::from_request(&request).unwrap_err();
        let mut wire = Vec::new();
        http1::write_response_with_body(&error.response(), error.to_string().as_bytes(), &mut wire);

        let (response, len) = http1::parse_response(&wire).unwrap().unwrap();
        assert_eq!(
            wire.get(len..),
            Some(&b"sec-websocket-version is not 13"[..])
        );
        assert_eq!(response.headers()["sec-websocket-version"], "13");
        assert_eq!(
            client.validate_response(&response),
            Err(ClientHandshakeError::UnexpectedStatus(
                StatusCode::UPGRADE_REQUIRED
            ))
        );
    }
}
