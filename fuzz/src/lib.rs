//! What the fuzz targets run, kept in a library so that each target is one line and the
//! seed generator (`examples/seeds.rs`) shares the input layout.
//!
//! Every function here panics on a broken invariant: a panic is what libFuzzer reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use switchboard::channels::{
    self, Payload,
    protocol::{self, ChannelMessage},
};
use switchboard_proto::{
    CloseCode, Decoder, Frame, Limits, Message, OpCode, ProtocolError, Role,
    deflate::{DeflateParams, Deflater},
    handshake::{ClientHandshake, ClientHandshakeError, ServerHandshake, accept_key, http1},
};

/// The limits the decode targets run with: small, so that frames past them are cheap to
/// find, and large enough for 16- and 64-bit lengths.
pub fn normal_limits() -> Limits {
    Limits::default()
        .max_frame_size(64 << 10)
        .max_message_size(256 << 10)
}

/// Tiny limits, picked by a flag in the input, so that the message limit is reachable by
/// a few fragments.
pub fn tiny_limits() -> Limits {
    Limits::default().max_frame_size(100).max_message_size(300)
}

/// How many bytes of the input at most choose the pieces.
pub const MAX_PIECES: usize = 7;

/// Control byte flag: decode with [`tiny_limits`] rather than [`normal_limits`].
pub const TINY: u8 = 0x80;
/// Control byte flag: permessage-deflate negotiated with the default parameters.
pub const DEFLATE: u8 = 0x40;
/// Control byte flag, with [`DEFLATE`]: the smallest windows and no context takeover.
pub const DEFLATE_SMALL: u8 = 0x20;

/// The input of a decode target: a control byte (flags [`TINY`], [`DEFLATE`],
/// [`DEFLATE_SMALL`]; bits 0-2: the number of pieces), one byte per piece for its size,
/// then the bytes on the wire.
pub fn decode_input(flags: u8, piece_sizes: &[u8], wire: &[u8]) -> Vec<u8> {
    let pieces = piece_sizes.len().min(MAX_PIECES);
    let mut input = vec![flags & 0xF8 | pieces as u8];
    input.extend_from_slice(&piece_sizes[..pieces]);
    input.extend_from_slice(wire);
    input
}

/// Feeds the wire to a decoder whole and in the chosen pieces; both must keep every
/// invariant and agree.
pub fn decode(data: &[u8], role: Role) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let limits = if control & TINY != 0 {
        tiny_limits()
    } else {
        normal_limits()
    };
    let deflate = (control & DEFLATE != 0).then(|| deflate_params(control & DEFLATE_SMALL != 0));
    let count = usize::from(control & 7).min(rest.len());
    let (sizes, wire) = rest.split_at(count);
    let mut ends = Vec::with_capacity(count);
    let mut at = 0;
    for &size in sizes {
        at += usize::from(size);
        ends.push(at);
    }
    let whole = decode_in_pieces(wire, &[], role, limits, deflate);
    let split = decode_in_pieces(wire, &ends, role, limits, deflate);
    assert_eq!(whole, split, "split at {ends:?}");
}

/// Everything a decoder made of a stream.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    messages: Vec<Message>,
    error: Option<ProtocolError>,
    /// How many bytes the decoder holds, and its read hint, when no error came.
    buffered: usize,
    wanted: usize,
}

/// Feeds `wire` in pieces ending at `ends` (then the rest), decoding until the decoder
/// errs or needs more bytes after each piece. An erred decoder is dropped, never reused.
fn decode_in_pieces(
    wire: &[u8],
    ends: &[usize],
    role: Role,
    limits: Limits,
    deflate: Option<DeflateParams>,
) -> Outcome {
    let mut decoder = Decoder::new(role, limits);
    if let Some(params) = &deflate {
        decoder = decoder.with_deflate(params);
    }
    let mut messages = Vec::new();
    let mut at = 0;
    for end in ends
        .iter()
        .map(|&end| end.min(wire.len()))
        .chain([wire.len()])
    {
        let end = end.max(at);
        decoder.feed(BytesMut::from(&wire[at..end]));
        at = end;
        loop {
            match decoder.decode() {
                Ok(Some(message)) => {
                    check_message(&message, limits);
                    messages.push(message);
                }
                Ok(None) => {
                    // Asking again without new bytes changes nothing.
                    let held = decoder.buffered();
                    assert_eq!(decoder.decode(), Ok(None));
                    assert_eq!(decoder.buffered(), held);
                    break;
                }
                Err(error) => {
                    let code = error.close_code().0;
                    assert!(
                        matches!(code, 1002 | 1007 | 1009),
                        "{error} closes with {code}"
                    );
                    return Outcome {
                        messages,
                        error: Some(error),
                        buffered: 0,
                        wanted: 0,
                    };
                }
            }
        }
    }
    Outcome {
        wanted: decoder.bytes_wanted(),
        buffered: decoder.buffered(),
        messages,
        error: None,
    }
}

/// The permessage-deflate agreement of [`DEFLATE`]: the defaults, or with `small`, the
/// smallest windows and no context takeover either way.
pub fn deflate_params(small: bool) -> DeflateParams {
    if small {
        DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 9,
            client_max_window_bits: 9,
        }
    } else {
        DeflateParams::default()
    }
}

/// What any message the decoder hands out must be.
fn check_message(message: &Message, limits: Limits) {
    match message {
        Message::Text(text) => {
            assert!(
                std::str::from_utf8(text.as_bytes()).is_ok(),
                "text is not UTF-8"
            );
            assert!(text.len() <= limits.max_message_size);
        }
        Message::Binary(data) => assert!(data.len() <= limits.max_message_size),
        // "All control frames MUST have a payload length of 125 bytes or less" (RFC 6455 §5.5).
        Message::Ping(data) | Message::Pong(data) => assert!(data.len() <= 125),
        Message::Close(Some(close)) => {
            assert!(close.code.is_sendable(), "close code {}", close.code);
            assert!(matches!(close.code.0, 1000..=1003 | 1007..=1014 | 3000..=4999));
            assert!(std::str::from_utf8(close.reason.as_bytes()).is_ok());
            assert!(close.reason.len() <= 123);
        }
        Message::Close(None) => {}
    }
}

/// The key of [`fixed_client`]'s handshake.
pub const CLIENT_KEY: [u8; 16] = *b"the sample nonce";

/// A client that offers two subprotocols and an extension, as a browser might.
pub fn fixed_client() -> ClientHandshake {
    ClientHandshake::new(&"ws://fuzz.example/chat".parse().unwrap(), CLIENT_KEY)
        .unwrap()
        .with_protocols(&["chat", "superchat"])
        .unwrap()
        .with_extensions(HeaderValue::from_static("permessage-deflate"))
}

/// Parses the input as a request head and as a response head, and checks what each
/// side makes of it.
pub fn handshake(data: &[u8]) {
    if let Ok(Some((request, len))) = http1::parse_request(data) {
        assert!(len <= data.len() && len <= http1::MAX_HEAD_LEN);
        // The head alone parses the same: nothing after it was read.
        let (alone, alone_len) = http1::parse_request(&data[..len]).unwrap().unwrap();
        assert_eq!(alone_len, len);
        assert_eq!(alone.headers(), request.headers());
        serve(&request);
        // Written back out, the request reads the same.
        let mut wire = Vec::new();
        http1::write_request(&request, &mut wire);
        let (again, again_len) = http1::parse_request(&wire).unwrap().unwrap();
        assert_eq!(again_len, wire.len());
        assert_eq!(again.method(), request.method());
        assert_eq!(again.headers(), request.headers());
        if request.uri().scheme().is_none() && request.uri().path().starts_with('/') {
            assert_eq!(again.uri(), request.uri());
        }
    }
    if let Ok(Some((response, len))) = http1::parse_response(data) {
        assert!(len <= data.len() && len <= http1::MAX_HEAD_LEN);
        let (alone, alone_len) = http1::parse_response(&data[..len]).unwrap().unwrap();
        assert_eq!(alone_len, len);
        assert_eq!(alone.headers(), response.headers());
        validate(&response);
        // Written back out, the response reads the same, `Content-Length: 0` aside ...
        let mut wire = Vec::new();
        http1::write_response(&response, &mut wire);
        let again = http1::parse_response(&wire);
        if let Err(http1::ParseError::TooManyHeaders) = again {
            // ... unless that line is one more than a reader takes: the writer adds it to
            // a response that has content and no length (RFC 9112 §6.3), whatever the
            // count (see `http1::write_response`).
            assert_eq!(response.headers().len(), http1::MAX_HEADERS);
            assert!(!response.headers().contains_key(header::CONTENT_LENGTH));
            return;
        }
        let (again, again_len) = again.unwrap().unwrap();
        assert_eq!(again_len, wire.len());
        assert_eq!(again.status(), response.status());
        let mut headers = again.headers().clone();
        if !response.headers().contains_key(header::CONTENT_LENGTH) {
            headers.remove(header::CONTENT_LENGTH);
        }
        assert_eq!(&headers, response.headers());
    }
}

/// The server's side of a parsed request: accept it, and a client that sent its key
/// accepts the answer; or refuse it, and the refusal is a valid response no client
/// accepts.
fn serve(request: &http::Request<()>) {
    match ServerHandshake::from_request(request) {
        Ok(mut server) => {
            let key = request.headers()[header::SEC_WEBSOCKET_KEY]
                .as_bytes()
                .trim_ascii();
            let random: [u8; 16] = STANDARD
                .decode(key)
                .expect("an accepted key is base64")
                .try_into()
                .expect("an accepted key is 16 bytes");
            assert_eq!(server.accept(), &accept_key(key));
            // The client offers what the request offered, when a client may offer it.
            let offered: Vec<&str> = server.protocols().collect();
            let (client, protocols) = match client_for(random).with_protocols(&offered) {
                Ok(client) => (client, offered.clone()),
                Err(_) => (client_for(random), Vec::new()),
            };
            let protocols: Vec<String> = protocols.iter().map(|p| (*p).to_owned()).collect();
            let choice: Vec<&str> = protocols.last().map(String::as_str).into_iter().collect();
            server.select_protocol(&choice);
            let response = server.response();
            assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
            let mut wire = Vec::new();
            http1::write_response(&response, &mut wire);
            let (parsed, len) = http1::parse_response(&wire).unwrap().unwrap();
            assert_eq!(len, wire.len());
            let accepted = client
                .validate_response(&parsed)
                .unwrap_or_else(|e| panic!("the client refuses the server's answer: {e}"));
            assert_eq!(accepted.protocol(), server.protocol());
        }
        Err(error) => {
            let response = error.response();
            assert_eq!(response.status(), error.status());
            assert!(response.status().is_client_error());
            let mut wire = Vec::new();
            http1::write_response_with_body(&response, error.to_string().as_bytes(), &mut wire);
            let (parsed, len) = http1::parse_response(&wire).unwrap().unwrap();
            assert_eq!(&wire[len..], error.to_string().as_bytes());
            assert_eq!(
                fixed_client().validate_response(&parsed),
                Err(ClientHandshakeError::UnexpectedStatus(error.status()))
            );
        }
    }
}

fn client_for(random: [u8; 16]) -> ClientHandshake {
    ClientHandshake::new(&"ws://fuzz.example/".parse().unwrap(), random).unwrap()
}

/// The client's side of a parsed response, for clients that offer more or less.
fn validate(response: &Response<()>) {
    let clients = [
        (fixed_client(), &["chat", "superchat"][..], true),
        (client_for(CLIENT_KEY), &[][..], false),
    ];
    for (client, offered, extensions) in clients {
        let Ok(accepted) = client.validate_response(response) else {
            continue;
        };
        // What acceptance means (RFC 6455 §4.1, the client's six checks).
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let headers = response.headers();
        let accept = single(headers, header::SEC_WEBSOCKET_ACCEPT).expect("one accept");
        let expected = accept_key(STANDARD.encode(CLIENT_KEY).as_bytes());
        assert_eq!(accept.as_bytes().trim_ascii(), expected.as_bytes());
        if let Some(protocol) = accepted.protocol() {
            assert!(offered.contains(&protocol), "{protocol:?} was not offered");
        }
        if !extensions {
            // Lines of empty list elements only may come back; no extension may.
            for line in accepted.extensions() {
                assert!(line.split(',').all(|e| e.trim().is_empty()), "{line:?}");
            }
        }
    }
}

/// The value of a header that appears exactly once.
fn single(headers: &HeaderMap, name: header::HeaderName) -> Option<&HeaderValue> {
    let mut values = headers.get_all(name).into_iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}

/// Control byte flag of the inflate target: compress each message with a [`Deflater`]
/// (level in bits 0-3), rather than take the bytes as compressed data.
pub const COMPRESS: u8 = 0x40;

/// The input of the inflate target: a control byte (flags [`TINY`], [`COMPRESS`],
/// [`DEFLATE_SMALL`]), then each message's payload after a byte of its length.
pub fn inflate_input(flags: u8, messages: &[&[u8]]) -> Vec<u8> {
    let mut input = vec![flags];
    for message in messages {
        let len = message.len().min(255);
        input.push(len as u8);
        input.extend_from_slice(&message[..len]);
    }
    input
}

/// Feeds permessage-deflate messages to a client-role decoder: hostile compressed data
/// must end in an error or messages within the limits, and what a [`Deflater`]
/// compressed must come back as it was.
pub fn inflate(data: &[u8]) {
    let Some((&control, mut rest)) = data.split_first() else {
        return;
    };
    let limits = if control & TINY != 0 {
        tiny_limits()
    } else {
        normal_limits()
    };
    let params = deflate_params(control & DEFLATE_SMALL != 0);
    let mut deflater = Deflater::new(&params, Role::Server, u32::from(control & 0x0F));
    let mut sent = Vec::new();
    let mut wire = BytesMut::new();
    while let Some((&len, tail)) = rest.split_first() {
        let (payload, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        let frame = if control & COMPRESS != 0 {
            sent.push(Message::Binary(Bytes::copy_from_slice(payload)));
            deflater.frame(OpCode::Binary, payload).unwrap()
        } else {
            Frame::binary(Bytes::copy_from_slice(payload)).with_rsv1(true)
        };
        frame.write_to(&mut wire);
    }
    // `decode_in_pieces` checks each message and error as the decode targets do.
    let outcome = decode_in_pieces(&wire, &[], Role::Client, limits, Some(params));
    if control & COMPRESS != 0 {
        // What the Deflater compressed comes back as it was, until a frame past the
        // limits (compressed data can be larger than its input) ends the stream.
        assert!(sent.starts_with(&outcome.messages));
        match outcome.error {
            None => assert_eq!(outcome.messages.len(), sent.len()),
            Some(error) => assert_eq!(error.close_code(), CloseCode::MESSAGE_TOO_BIG),
        }
    }
}

/// Parses the input as a channels message from a client, as text (when it is UTF-8) and
/// as binary: what parses encodes back to the same message, and the server's reply to
/// it is a message phoenix.js reads, echoing its topic and refs.
pub fn channels(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check_channel_message(protocol::decode_text(text));
    }
    check_channel_message(protocol::decode_binary(&Bytes::copy_from_slice(data)));
}

fn check_channel_message(decoded: Result<ChannelMessage, channels::DecodeError>) {
    let message = match decoded {
        Ok(message) => message,
        Err(error) => {
            // A message the socket cannot read closes it with 1008 (RFC 6455 §7.4.1).
            assert_eq!(error.close_code(), CloseCode::POLICY_VIOLATION);
            return;
        }
    };
    let wire = message.encode().expect("a decoded message encodes");
    let again = protocol::decode(&wire)
        .unwrap()
        .expect("an encoded message decodes");
    assert_eq!(again.join_ref, message.join_ref);
    assert_eq!(again.msg_ref, message.msg_ref);
    assert_eq!(again.topic, message.topic);
    assert_eq!(again.event, message.event);
    if let Payload::Binary(data) = &message.payload {
        assert_eq!(again.payload, Payload::Binary(data.clone()));
    }
    let reply = protocol::encode_reply(
        message.join_ref.as_deref(),
        message.msg_ref.as_deref(),
        &message.topic,
        "ok",
        &message.payload,
    )
    .expect("a reply to a decoded message encodes");
    check_reply(&reply, &message);
}

/// What phoenix.js's serializer reads of a reply: `[join_ref, ref, topic, "phx_reply",
/// {status, response}]` in text, kind 1 with its header lengths in binary.
fn check_reply(reply: &Message, message: &ChannelMessage) {
    match reply {
        Message::Text(text) => {
            let value: serde_json::Value = serde_json::from_str(text).expect("a reply is JSON");
            let fields = value.as_array().expect("a reply is an array");
            assert_eq!(fields.len(), 5);
            assert_eq!(fields[0].as_str(), message.join_ref.as_deref());
            assert_eq!(fields[1].as_str(), message.msg_ref.as_deref());
            assert_eq!(fields[2].as_str(), Some(message.topic.as_str()));
            assert_eq!(fields[3].as_str(), Some(protocol::REPLY));
            assert_eq!(fields[4]["status"], "ok");
        }
        Message::Binary(data) => {
            let [kind, join_ref, msg_ref, topic, status, ..] = data[..] else {
                panic!("a binary reply has a header");
            };
            assert_eq!(kind, 1);
            let lengths = [join_ref, msg_ref, topic, status].map(usize::from);
            let fields = [
                message.join_ref.as_deref().unwrap_or_default(),
                message.msg_ref.as_deref().unwrap_or_default(),
                &message.topic,
                "ok",
            ];
            assert_eq!(lengths, fields.map(str::len));
            assert!(data.len() >= 5 + lengths.iter().sum::<usize>());
        }
        other => panic!("a reply is text or binary, not {other:?}"),
    }
}
