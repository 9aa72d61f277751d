//! The Phoenix V2 wire protocol, sans-IO: parsing what clients send and encoding what
//! the server sends, for text (JSON) and binary frames.
//!
//! The facts here come from the two ends of the protocol: the client's serializer
//! (`phoenix/assets/js/phoenix/serializer.js` in the `phoenix` npm package) and the
//! server's (`Phoenix.Socket.V2.JSONSerializer`). Each check below names the one it
//! follows.
//!
//! # Text frames
//!
//! Every message is a JSON array of five elements:
//!
//! ```text
//! [join_ref, ref, topic, event, payload]
//! ```
//!
//! `join_ref` and `ref` are strings or `null`; `topic` and `event` are strings; the
//! payload is any JSON value (an object in practice).
//!
//! # Binary frames
//!
//! A one-byte kind, then one byte per header field giving its length, the fields, and
//! the payload bytes to the end of the frame:
//!
//! ```text
//! push (0, client → server): 0, |join_ref|, |ref|, |topic|, |event|, join_ref, ref, topic, event, data
//! push (0, server → client): 0, |join_ref|, |topic|, |event|, join_ref, topic, event, data
//! reply (1):                 1, |join_ref|, |ref|, |topic|, |status|, join_ref, ref, topic, status, data
//! broadcast (2):             2, |topic|, |event|, topic, event, data
//! ```
//!
//! # Streams
//!
//! On a topic that keeps history (see [`Channels::history`](super::Channels::history)),
//! three additions, each of which phoenix.js ignores, so that it works as before:
//!
//! - a JSON broadcast carries its position as a sixth element,
//!   `[null, null, topic, event, payload, {"offset": N, "epoch": "hex16"}]`
//!   ([`with_position`]); a binary broadcast has no room for one: it is not part of
//!   the stream (live only, at most once);
//! - a join payload may carry where the client was, `"_position": {"offset": N,
//!   "epoch": "hex"}` ([`take_position`]), removed before the channel's `join` sees
//!   the payload;
//! - the ok reply to a join says whether the client recovered and where the stream is,
//!   in a sibling of `status` and `response` ([`encode_join_reply`]): `"stream":
//!   {"recovered": bool, "offset": N, "epoch": "hex16"}` (`{"recovered": false,
//!   "epoch": null}` when the server could not read the stream).
//!
//! ```
//! use switchboard::channels::protocol::{self, Payload};
//!
//! let message = protocol::decode_text(r#"["1","2","room:lobby","new_msg",{"body":"hi"}]"#)?;
//! assert_eq!(message.topic, "room:lobby");
//! assert_eq!(message.payload, Payload::Json(serde_json::json!({"body": "hi"})));
//!
//! let reply = protocol::encode_reply(Some("1"), Some("2"), "room:lobby", "ok", &Payload::empty())?;
//! assert_eq!(
//!     reply,
//!     switchboard::Message::text(r#"["1","2","room:lobby","phx_reply",{"response":{},"status":"ok"}]"#)
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::{CloseCode, Message};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};
use std::fmt::Write as _;
use switchboard_broker::{Epoch, Position};

/// The event of a join request.
pub const JOIN: &str = "phx_join";
/// The event of a leave request.
pub const LEAVE: &str = "phx_leave";
/// The event of a reply to a message that carried a `ref`.
pub const REPLY: &str = "phx_reply";
/// The event the server sends when it closed a channel normally (leave, stop, a
/// duplicate join).
pub const CLOSE: &str = "phx_close";
/// The event the server sends when a channel crashed; clients rejoin.
pub const ERROR: &str = "phx_error";
/// The topic of the socket-level heartbeat.
pub const HEARTBEAT_TOPIC: &str = "phoenix";
/// The event of the socket-level heartbeat.
pub const HEARTBEAT: &str = "heartbeat";

/// The key of a join payload that says where the client was in the topic's stream.
pub const POSITION_KEY: &str = "_position";
/// The key of a join reply, beside `status` and `response`, that says whether the
/// client recovered and where the stream is.
pub const STREAM_KEY: &str = "stream";

/// Binary kind of a push (serializer.js `KINDS.push`).
const KIND_PUSH: u8 = 0;
/// Binary kind of a reply (serializer.js `KINDS.reply`).
const KIND_REPLY: u8 = 1;
/// Binary kind of a broadcast (serializer.js `KINDS.broadcast`).
const KIND_BROADCAST: u8 = 2;

/// The payload of a message: JSON in text frames, bytes in binary frames.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A JSON value (an object in practice), sent in a text frame.
    Json(Value),
    /// Raw bytes, sent in a binary frame (phoenix.js: an `ArrayBuffer`).
    Binary(Bytes),
}

impl Payload {
    /// The empty JSON object, the payload of control messages (`{}`).
    pub fn empty() -> Self {
        Self::Json(Value::Object(Map::new()))
    }

    /// The JSON value, if this is a JSON payload.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Self::Json(value) => Some(value),
            Self::Binary(_) => None,
        }
    }

    /// The bytes, if this is a binary payload.
    pub fn as_binary(&self) -> Option<&Bytes> {
        match self {
            Self::Json(_) => None,
            Self::Binary(bytes) => Some(bytes),
        }
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self::Json(value)
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Self::Binary(bytes)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Binary(bytes.into())
    }
}

/// A message as a client sends it: `[join_ref, ref, topic, event, payload]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelMessage {
    /// The `ref` of the join of the channel this message belongs to (phoenix.js sets it
    /// on every channel message; `null` on heartbeats).
    pub join_ref: Option<String>,
    /// This message's own `ref`; a reply echoes it.
    pub msg_ref: Option<String>,
    /// The topic, e.g. `room:lobby`.
    pub topic: String,
    /// The event, e.g. `phx_join` or an application event.
    pub event: String,
    /// The payload.
    pub payload: Payload,
}

/// Why a client's message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The text is not JSON.
    #[error("invalid json: {0}")]
    Json(String),
    /// The JSON is not an array.
    #[error("expected an array [join_ref, ref, topic, event, payload]")]
    NotAnArray,
    /// The array does not have five elements.
    #[error("expected 5 elements [join_ref, ref, topic, event, payload], got {0}")]
    Arity(usize),
    /// `join_ref` or `ref` is neither a string nor `null`.
    #[error("{0} must be a string or null")]
    Ref(&'static str),
    /// `topic` or `event` is not a string.
    #[error("{0} must be a string")]
    NotAString(&'static str),
    /// A binary frame ends before the lengths in its header say.
    #[error("binary message shorter than its header")]
    Truncated,
    /// A binary frame of a kind clients do not send.
    #[error("binary message of kind {0}: clients send pushes (kind 0) only")]
    Kind(u8),
    /// A header field of a binary frame is not UTF-8.
    #[error("{0} is not valid utf-8")]
    Utf8(&'static str),
}

impl DecodeError {
    /// The close code for a connection that sent this: 1008, the RFC's code for "a
    /// message that violates its policy" when no more specific code applies
    /// (RFC 6455 §7.4.1); the WebSocket frames themselves were valid.
    pub fn close_code(&self) -> CloseCode {
        CloseCode::POLICY_VIOLATION
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A header field of a binary frame is longer than its one-byte length allows.
    #[error("{field} of {len} bytes does not fit a binary frame header (at most 255)")]
    FieldTooLong {
        /// Which field: `join_ref`, `ref`, `topic`, `event` or `status`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
}

/// Parses a WebSocket message from a client: text as JSON, binary as a push.
///
/// Control messages (ping, pong, close) are not protocol messages: `None`.
pub fn decode(message: &Message) -> Option<Result<ChannelMessage, DecodeError>> {
    match message {
        Message::Text(text) => Some(decode_text(text.as_str())),
        Message::Binary(data) => Some(decode_binary(data)),
        _ => None,
    }
}

/// Parses a text frame: `[join_ref, ref, topic, event, payload]`.
pub fn decode_text(text: &str) -> Result<ChannelMessage, DecodeError> {
    let value: Value =
        serde_json::from_str(text).map_err(|error| DecodeError::Json(error.to_string()))?;
    let Value::Array(fields) = value else {
        return Err(DecodeError::NotAnArray);
    };
    // V2JSONSerializer.decode_text destructures five elements; serializer.js encodes
    // exactly five. Anything else is not a V2 message.
    let Ok([join_ref, msg_ref, topic, event, payload]) = <[Value; 5]>::try_from(fields) else {
        return Err(DecodeError::Arity(arity(text)));
    };
    Ok(ChannelMessage {
        join_ref: optional_string(join_ref, "join_ref")?,
        msg_ref: optional_string(msg_ref, "ref")?,
        topic: string(topic, "topic")?,
        event: string(event, "event")?,
        payload: Payload::Json(payload),
    })
}

/// The length of the JSON array in `text` (only called once it is known to be one).
fn arity(text: &str) -> usize {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(fields)) => fields.len(),
        _ => 0,
    }
}

fn optional_string(value: Value, field: &'static str) -> Result<Option<String>, DecodeError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(DecodeError::Ref(field)),
    }
}

fn string(value: Value, field: &'static str) -> Result<String, DecodeError> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(DecodeError::NotAString(field)),
    }
}

/// From a text frame that failed to decode, the `join_ref`, `ref` and `topic` needed to
/// answer it with an error reply, when they can be read.
pub(crate) fn salvage(text: &str) -> Option<(Option<String>, String, String)> {
    let Value::Array(fields) = serde_json::from_str(text).ok()? else {
        return None;
    };
    let join_ref = fields.first().and_then(Value::as_str).map(str::to_owned);
    let msg_ref = fields.get(1)?.as_str()?.to_owned();
    let topic = fields.get(2)?.as_str()?.to_owned();
    Some((join_ref, msg_ref, topic))
}

/// Parses a binary frame: a push (kind 0), the only kind clients send.
pub fn decode_binary(data: &Bytes) -> Result<ChannelMessage, DecodeError> {
    let (&kind, rest) = data.split_first().ok_or(DecodeError::Truncated)?;
    // serializer.js binaryEncode writes KINDS.push and four lengths; replies and
    // broadcasts only travel server → client.
    if kind != KIND_PUSH {
        return Err(DecodeError::Kind(kind));
    }
    let Some(&[join_ref_len, ref_len, topic_len, event_len]) = rest.get(..4) else {
        return Err(DecodeError::Truncated);
    };
    let mut offset = 5;
    let mut field = |len: u8, name: &'static str| -> Result<String, DecodeError> {
        let end = offset + usize::from(len);
        let bytes = data.get(offset..end).ok_or(DecodeError::Truncated)?;
        offset = end;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Utf8(name))
    };
    let join_ref = field(join_ref_len, "join_ref")?;
    let msg_ref = field(ref_len, "ref")?;
    let topic = field(topic_len, "topic")?;
    let event = field(event_len, "event")?;
    // An empty ref is what serializer.js writes for a missing one.
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    Ok(ChannelMessage {
        join_ref: non_empty(join_ref),
        msg_ref: non_empty(msg_ref),
        topic,
        event,
        payload: Payload::Binary(data.slice(offset..)),
    })
}

/// Encodes a message from the server to one channel: `[join_ref, null, topic, event,
/// payload]`, or a binary push (kind 0).
pub fn encode_push(
    join_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<Message, EncodeError> {
    match payload {
        Payload::Json(value) => Ok(json_array(join_ref, None, topic, event, value)),
        Payload::Binary(data) => {
            // V2JSONSerializer.encode!(%Message{payload: {:binary, _}}): pushes carry no ref.
            let join_ref = join_ref.unwrap_or_default();
            let mut out = BytesMut::with_capacity(4 + join_ref.len() + topic.len() + event.len());
            out.put_u8(KIND_PUSH);
            out.put_u8(header_len(join_ref, "join_ref")?);
            out.put_u8(header_len(topic, "topic")?);
            out.put_u8(header_len(event, "event")?);
            Ok(binary(out, &[join_ref, topic, event], data))
        }
    }
}

/// Encodes a reply: `[join_ref, ref, topic, "phx_reply", {"status": status, "response":
/// response}]`, or a binary reply (kind 1) whose header carries the status.
pub fn encode_reply(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    status: &str,
    response: &Payload,
) -> Result<Message, EncodeError> {
    match response {
        Payload::Json(value) => {
            let mut payload = Map::new();
            payload.insert("response".to_owned(), value.clone());
            payload.insert("status".to_owned(), Value::from(status));
            Ok(json_array(
                join_ref,
                msg_ref,
                topic,
                REPLY,
                &Value::Object(payload),
            ))
        }
        Payload::Binary(data) => {
            let (join_ref, msg_ref) = (join_ref.unwrap_or_default(), msg_ref.unwrap_or_default());
            let mut out = BytesMut::new();
            out.put_u8(KIND_REPLY);
            out.put_u8(header_len(join_ref, "join_ref")?);
            out.put_u8(header_len(msg_ref, "ref")?);
            out.put_u8(header_len(topic, "topic")?);
            out.put_u8(header_len(status, "status")?);
            Ok(binary(out, &[join_ref, msg_ref, topic, status], data))
        }
    }
}

/// Encodes a broadcast: `[null, null, topic, event, payload]`, or a binary broadcast
/// (kind 2). The same bytes go to every subscriber, so they carry no per-socket ref.
pub fn encode_broadcast(
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<Message, EncodeError> {
    match payload {
        Payload::Json(value) => Ok(json_array(None, None, topic, event, value)),
        Payload::Binary(data) => {
            let mut out = BytesMut::new();
            out.put_u8(KIND_BROADCAST);
            out.put_u8(header_len(topic, "topic")?);
            out.put_u8(header_len(event, "event")?);
            Ok(binary(out, &[topic, event], data))
        }
    }
}

/// Encodes a control message of a channel, `phx_close` or `phx_error`: `[join_ref,
/// join_ref, topic, event, {}]`, as `Phoenix.Socket` sends them.
pub fn encode_control(join_ref: Option<&str>, topic: &str, event: &str) -> Message {
    json_array(join_ref, join_ref, topic, event, &Value::Object(Map::new()))
}

/// Adds a broadcast's position in its stream to its encoding, as a sixth element of the
/// JSON array: `[null, null, topic, event, payload, {"offset": N, "epoch": "hex16"}]`.
///
/// Written into the text before its final `]`, so that the payload is not parsed
/// again. A binary broadcast (kind 2) has no field for it and comes back as it is, as
/// does anything that is not a JSON array.
pub fn with_position(message: &Message, position: Position) -> Message {
    let Message::Text(text) = message else {
        return message.clone();
    };
    let text = text.as_str();
    let Some(head) = text.strip_suffix(']').filter(|_| text.starts_with('[')) else {
        return message.clone();
    };
    let mut out = String::with_capacity(text.len() + 48);
    out.push_str(head);
    // An empty array (sent raw to a `phx:` room) takes the position as its only element.
    let empty = head[1..].trim_start().is_empty();
    let comma = if empty { "" } else { "," };
    let _ = write!(
        out,
        r#"{comma}{{"offset":{},"epoch":"{}"}}]"#,
        position.offset, position.epoch
    );
    Message::text(out)
}

/// A `_position` in a join payload that is not `{"offset": N, "epoch": "hex"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid _position: expected {{\"offset\": integer >= 0, \"epoch\": 1 to 16 hex digits}}")]
pub struct PositionError;

/// Takes the client's position, `"_position": {"offset": N, "epoch": "hex"}`, out of a
/// join payload: `Ok(None)` when there is none (or it is `null`), the position
/// otherwise; either way the key is gone from the payload. A malformed one is an
/// error, with the key removed too.
pub fn take_position(payload: &mut Value) -> Result<Option<Position>, PositionError> {
    let Some(value) = payload.as_object_mut().and_then(|o| o.remove(POSITION_KEY)) else {
        return Ok(None);
    };
    if value.is_null() {
        return Ok(None);
    }
    let offset = value.get("offset").and_then(Value::as_u64);
    let epoch = value
        .get("epoch")
        .and_then(Value::as_str)
        .and_then(|e| e.parse::<Epoch>().ok());
    match (offset, epoch) {
        (Some(offset), Some(epoch)) => Ok(Some(Position::new(offset, epoch))),
        _ => Err(PositionError),
    }
}

/// Encodes the ok reply to a join of a topic with history: [`encode_reply`]'s
/// `{"status": "ok", "response": response}` and, beside them, `"stream": {"recovered":
/// recovered, "offset": N, "epoch": "hex16"}`, where `position` is the stream's newest
/// message when the client joined; `{"recovered": false, "epoch": null}` when the
/// stream's position is not known (its engine could not be read).
pub fn encode_join_reply(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    response: &Value,
    recovered: bool,
    position: Option<Position>,
) -> Message {
    let mut payload = Map::new();
    payload.insert("response".to_owned(), response.clone());
    payload.insert("status".to_owned(), Value::from("ok"));
    let mut stream = Map::new();
    stream.insert("recovered".to_owned(), Value::from(recovered));
    match position {
        Some(position) => {
            stream.insert("offset".to_owned(), Value::from(position.offset));
            stream.insert("epoch".to_owned(), Value::from(position.epoch.to_string()));
        }
        None => {
            stream.insert("epoch".to_owned(), Value::Null);
        }
    }
    payload.insert(STREAM_KEY.to_owned(), Value::Object(stream));
    json_array(join_ref, msg_ref, topic, REPLY, &Value::Object(payload))
}

impl ChannelMessage {
    /// Encodes this message as a client sends it: a JSON array, or a binary push (kind
    /// 0) with both refs when the payload is binary. For client implementations and
    /// tests.
    pub fn encode(&self) -> Result<Message, EncodeError> {
        let (join_ref, msg_ref) = (self.join_ref.as_deref(), self.msg_ref.as_deref());
        match &self.payload {
            Payload::Json(value) => Ok(json_array(
                join_ref,
                msg_ref,
                &self.topic,
                &self.event,
                value,
            )),
            Payload::Binary(data) => {
                let (join_ref, msg_ref) =
                    (join_ref.unwrap_or_default(), msg_ref.unwrap_or_default());
                let mut out = BytesMut::new();
                out.put_u8(KIND_PUSH);
                out.put_u8(header_len(join_ref, "join_ref")?);
                out.put_u8(header_len(msg_ref, "ref")?);
                out.put_u8(header_len(&self.topic, "topic")?);
                out.put_u8(header_len(&self.event, "event")?);
                Ok(binary(
                    out,
                    &[join_ref, msg_ref, &self.topic, &self.event],
                    data,
                ))
            }
        }
    }
}

fn json_array(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Value,
) -> Message {
    let mut out = String::with_capacity(32 + topic.len() + event.len());
    out.push('[');
    for field in [join_ref, msg_ref, Some(topic), Some(event)] {
        match field {
            Some(s) => push_json_string(&mut out, s),
            None => out.push_str("null"),
        }
        out.push(',');
    }
    // Writing into a String cannot fail.
    let _ = write!(out, "{payload}");
    out.push(']');
    Message::text(out)
}

fn push_json_string(out: &mut String, s: &str) {
    let _ = write!(out, "{}", Value::from(s));
}

/// A header field's length as its one length byte (serializer.js `assertFieldSize`,
/// V2JSONSerializer `byte_size!(_, _, 255)`).
fn header_len(field: &str, name: &'static str) -> Result<u8, EncodeError> {
    u8::try_from(field.len()).map_err(|_| EncodeError::FieldTooLong {
        field: name,
        len: field.len(),
    })
}

fn binary(mut out: BytesMut, fields: &[&str], data: &Bytes) -> Message {
    out.reserve(fields.iter().map(|f| f.len()).sum::<usize>() + data.len());
    for field in fields {
        out.put_slice(field.as_bytes());
    }
    out.put_slice(data);
    Message::Binary(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(message: Message) -> String {
        match message {
            Message::Text(text) => text.as_str().to_owned(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    fn bytes(message: Message) -> Vec<u8> {
        match message {
            Message::Binary(data) => data.to_vec(),
            other => panic!("expected binary, got {other:?}"),
        }
    }

    #[test]
    fn decodes_a_join() {
        let message = decode_text(r#"["3","3","room:lobby","phx_join",{"user":"ann"}]"#).unwrap();
        assert_eq!(
            message,
            ChannelMessage {
                join_ref: Some("3".into()),
                msg_ref: Some("3".into()),
                topic: "room:lobby".into(),
                event: JOIN.into(),
                payload: Payload::Json(json!({"user": "ann"})),
            }
        );
    }

    #[test]
    fn decodes_a_heartbeat_with_null_join_ref() {
        let message = decode_text(r#"[null,"7","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(message.join_ref, None);
        assert_eq!(message.msg_ref.as_deref(), Some("7"));
        assert_eq!(message.topic, HEARTBEAT_TOPIC);
        assert_eq!(message.event, HEARTBEAT);
    }

    #[test]
    fn rejects_malformed_text() {
        assert!(matches!(decode_text("not json"), Err(DecodeError::Json(_))));
        assert_eq!(
            decode_text(r#"{"topic":"x"}"#),
            Err(DecodeError::NotAnArray)
        );
        assert_eq!(decode_text(r#"["1","2","t"]"#), Err(DecodeError::Arity(3)));
        assert_eq!(
            decode_text(r#"["1","2","t","e",{},6]"#),
            Err(DecodeError::Arity(6))
        );
        assert_eq!(
            decode_text(r#"[1,"2","t","e",{}]"#),
            Err(DecodeError::Ref("join_ref"))
        );
        assert_eq!(
            decode_text(r#"["1",{},"t","e",{}]"#),
            Err(DecodeError::Ref("ref"))
        );
        assert_eq!(
            decode_text(r#"["1","2",null,"e",{}]"#),
            Err(DecodeError::NotAString("topic"))
        );
        assert_eq!(
            decode_text(r#"["1","2","t",5,{}]"#),
            Err(DecodeError::NotAString("event"))
        );
        assert_eq!(
            DecodeError::NotAnArray.close_code(),
            CloseCode::POLICY_VIOLATION
        );
    }

    #[test]
    fn salvages_ref_and_topic_of_a_bad_message() {
        assert_eq!(
            salvage(r#"["1","2","room:a",5,{}]"#),
            Some((Some("1".into()), "2".into(), "room:a".into()))
        );
        assert_eq!(
            salvage(r#"[null,"2","t"]"#),
            Some((None, "2".into(), "t".into()))
        );
        assert_eq!(salvage(r#"[null,null,"t","e",{}]"#), None);
        assert_eq!(salvage("{"), None);
    }

    #[test]
    fn encodes_text_messages_like_the_phoenix_serializer() {
        // V2 JSONSerializerTest: fastlane of %Broadcast{topic: "t", event: "e", payload: %{m: 1}}.
        let broadcast = encode_broadcast("t", "e", &json!({"m": 1}).into()).unwrap();
        assert_eq!(text(broadcast), r#"[null,null,"t","e",{"m":1}]"#);
        let push = encode_push(Some("5"), "t", "e", &json!({"m": 1}).into()).unwrap();
        assert_eq!(text(push), r#"["5",null,"t","e",{"m":1}]"#);
        let reply = encode_reply(
            Some("5"),
            Some("6"),
            "t",
            "error",
            &json!({"reason": "no"}).into(),
        )
        .unwrap();
        let reply: Value = serde_json::from_str(&text(reply)).unwrap();
        assert_eq!(
            reply,
            json!(["5", "6", "t", "phx_reply", {"status": "error", "response": {"reason": "no"}}])
        );
        let close = encode_control(Some("5"), "t", CLOSE);
        assert_eq!(text(close), r#"["5","5","t","phx_close",{}]"#);
    }

    #[test]
    fn escapes_strings() {
        let push = encode_push(None, "a\"b", "\u{1F600}\n", &Payload::empty()).unwrap();
        let value: Value = serde_json::from_str(&text(push)).unwrap();
        assert_eq!(value, json!([null, null, "a\"b", "\u{1F600}\n", {}]));
    }

    // The byte vectors of V2 JSONSerializerTest ("binary encode"/"binary decode").
    const CLIENT_PUSH: &[u8] = b"\x00\x02\x03\x05\x0512123topiceventefg";
    const SERVER_PUSH: &[u8] = b"\x00\x02\x05\x0512topiceventefg";
    const REPLY_BYTES: &[u8] = b"\x01\x02\x03\x05\x0212123topicokefg";
    const BROADCAST_BYTES: &[u8] = b"\x02\x05\x05topiceventefg";

    #[test]
    fn decodes_a_binary_push() {
        let message = decode_binary(&Bytes::from_static(CLIENT_PUSH)).unwrap();
        assert_eq!(
            message,
            ChannelMessage {
                join_ref: Some("12".into()),
                msg_ref: Some("123".into()),
                topic: "topic".into(),
                event: "event".into(),
                payload: Payload::Binary(Bytes::from_static(b"efg")),
            }
        );
        assert_eq!(bytes(message.encode().unwrap()), CLIENT_PUSH);
    }

    #[test]
    fn encodes_binary_messages_like_the_phoenix_serializer() {
        let data = Payload::Binary(Bytes::from_static(b"efg"));
        assert_eq!(
            bytes(encode_push(Some("12"), "topic", "event", &data).unwrap()),
            SERVER_PUSH
        );
        assert_eq!(
            bytes(encode_reply(Some("12"), Some("123"), "topic", "ok", &data).unwrap()),
            REPLY_BYTES
        );
        assert_eq!(
            bytes(encode_broadcast("topic", "event", &data).unwrap()),
            BROADCAST_BYTES
        );
    }

    #[test]
    fn refuses_binary_headers_over_255_bytes() {
        let long = "t".repeat(256);
        let data = Payload::Binary(Bytes::new());
        assert_eq!(
            encode_broadcast(&long, "e", &data),
            Err(EncodeError::FieldTooLong {
                field: "topic",
                len: 256
            })
        );
        assert!(encode_push(Some(&long), "t", "e", &data).is_err());
        assert!(encode_reply(Some("1"), Some(&long), "t", "ok", &data).is_err());
        // 255 is the largest that fits.
        assert!(encode_broadcast(&long[..255], "e", &data).is_ok());
        // JSON has no such limit.
        assert!(encode_broadcast(&long, "e", &Payload::empty()).is_ok());
    }

    #[test]
    fn rejects_malformed_binary_without_panicking() {
        let bad: &[&[u8]] = &[
            b"",
            b"\x00",
            b"\x00\x01\x01\x01",
            b"\x00\x05\x00\x00\x00abc",
            b"\x00\x00\x00\x01\x00\xff",
            b"\x01\x00\x00\x00\x00",
            b"\x02\x00\x00",
            b"\x07",
        ];
        for input in bad {
            assert!(
                decode_binary(&Bytes::copy_from_slice(input)).is_err(),
                "{input:?}"
            );
        }
        assert_eq!(
            decode_binary(&Bytes::from_static(b"\x01")),
            Err(DecodeError::Kind(1))
        );
        assert_eq!(
            decode_binary(&Bytes::from_static(b"\x00\x00\x00\x01\x00\xff")),
            Err(DecodeError::Utf8("topic"))
        );
        // Every prefix of a valid push is truncated, never a panic.
        for end in 0..CLIENT_PUSH.len() - 3 {
            assert!(decode_binary(&Bytes::copy_from_slice(&CLIENT_PUSH[..end])).is_err());
        }
    }

    fn at(offset: u64, epoch: u64) -> Position {
        Position::new(offset, Epoch::from_u64(epoch))
    }

    #[test]
    fn a_position_is_spliced_into_json_broadcasts_only() {
        let broadcast = encode_broadcast("t", "e", &json!({"m": [1, "]"]}).into()).unwrap();
        assert_eq!(
            text(with_position(&broadcast, at(7, 0xab))),
            r#"[null,null,"t","e",{"m":[1,"]"]},{"offset":7,"epoch":"00000000000000ab"}]"#
        );
        let spliced: Value =
            serde_json::from_str(&text(with_position(&broadcast, at(1, 1)))).expect("still JSON");
        assert_eq!(spliced.as_array().map(Vec::len), Some(6));
        let data = Payload::Binary(Bytes::from_static(b"efg"));
        let binary = encode_broadcast("topic", "event", &data).unwrap();
        assert_eq!(bytes(with_position(&binary, at(7, 1))), BROADCAST_BYTES);
        // Not an array: left alone rather than made invalid.
        for other in ["", "{}", "[", "x]"] {
            assert_eq!(text(with_position(&Message::text(other), at(1, 1))), other);
        }
        // Sent raw to the room: still JSON, no leading comma.
        for empty in ["[]", "[ ]", "[\n]"] {
            let spliced = text(with_position(&Message::text(empty), at(1, 1)));
            let parsed: Value = serde_json::from_str(&spliced).expect(&spliced);
            assert_eq!(parsed, json!([{"offset": 1, "epoch": "0000000000000001"}]));
        }
    }

    #[test]
    fn a_position_is_taken_out_of_a_join_payload() {
        let mut payload = json!({"user": "ann", "_position": {"offset": 3, "epoch": "ab"}});
        assert_eq!(take_position(&mut payload), Ok(Some(at(3, 0xab))));
        assert_eq!(payload, json!({"user": "ann"}));
        for mut none in [
            json!({"user": "ann"}),
            json!({"_position": null}),
            json!([1]),
            json!(null),
        ] {
            assert_eq!(take_position(&mut none), Ok(None), "{none}");
            assert!(none.get(POSITION_KEY).is_none());
        }
        let bad = [
            json!({"_position": 3}),
            json!({"_position": {"offset": -1, "epoch": "ab"}}),
            json!({"_position": {"offset": 1.5, "epoch": "ab"}}),
            json!({"_position": {"offset": "1", "epoch": "ab"}}),
            json!({"_position": {"offset": 1}}),
            json!({"_position": {"offset": 1, "epoch": "xyz"}}),
            json!({"_position": {"offset": 1, "epoch": "00000000000000000"}}),
            json!({"_position": {"offset": 1, "epoch": 171}}),
        ];
        for mut payload in bad {
            let shown = payload.to_string();
            assert_eq!(take_position(&mut payload), Err(PositionError), "{shown}");
            assert_eq!(payload, json!({}), "{shown}");
        }
    }

    #[test]
    fn a_join_reply_says_where_the_stream_is_beside_status_and_response() {
        let reply = encode_join_reply(
            Some("1"),
            Some("2"),
            "t",
            &json!({"a": 1}),
            true,
            Some(at(9, 0xff)),
        );
        let reply: Value = serde_json::from_str(&text(reply)).unwrap();
        assert_eq!(
            reply,
            json!(["1", "2", "t", "phx_reply", {
                "status": "ok",
                "response": {"a": 1},
                "stream": {"recovered": true, "offset": 9, "epoch": "00000000000000ff"},
            }])
        );
        // Where the stream is, unknown: no offset, a null epoch.
        let reply = encode_join_reply(None, Some("2"), "t", &json!({}), false, None);
        let reply: Value = serde_json::from_str(&text(reply)).unwrap();
        assert_eq!(
            reply[4]["stream"],
            json!({"recovered": false, "epoch": null})
        );
    }

    #[test]
    fn an_empty_binary_payload_and_refs_are_allowed() {
        let message = decode_binary(&Bytes::from_static(b"\x00\x00\x00\x01\x01te")).unwrap();
        assert_eq!(message.join_ref, None);
        assert_eq!(message.msg_ref, None);
        assert_eq!(message.payload, Payload::Binary(Bytes::new()));
    }
}
