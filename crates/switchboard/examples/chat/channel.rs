//! The chat channel, shared by the `chat` example (next to its plain `/chat/{room}`
//! endpoint) and the `channels` example (`#[path]`-included from there).
//!
//! - Topics `room:{name}`; join params `{"user": name}`, which is also the presence key;
//!   joining without a user (or with one longer than [`MAX_NAME`]) is refused with
//!   `{"reason": "user required"}`. The join is answered `{}`, then the topic's presence
//!   list follows as `presence_state`; later changes come as `presence_diff`.
//! - `new_msg` `{"body": …}` reaches every member of the topic, the sender too, as
//!   `new_msg` `{"user": …, "body": …}` (the body trimmed, at most [`MAX_BODY`]
//!   characters); an empty body is answered with an error reply.
//! - `ping` is answered with its own payload, JSON or binary.

use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};
use switchboard::channels::{Channel, HandleIn, Payload, Reply, Socket};

/// A name is at most this many characters.
pub(crate) const MAX_NAME: usize = 32;
/// A message body is at most this many characters.
pub(crate) const MAX_BODY: usize = 2000;

/// The topic pattern [`Room`] serves.
pub(crate) const TOPICS: &str = "room:{name}";

/// The member's name, assigned on join.
#[derive(Clone)]
struct User(String);

/// The chat channel: rooms with messages and presence.
pub(crate) struct Room;

impl Channel for Room {
    async fn join(&self, _topic: &str, payload: Value, socket: &Socket) -> Result<Value, Value> {
        let name = payload
            .get("user")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|name| !name.is_empty() && name.chars().count() <= MAX_NAME)
            .ok_or_else(|| json!({"reason": "user required"}))?;
        socket.assign(User(name.to_owned()));
        let presence = socket.presence();
        let online_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        presence
            .track(socket, name, json!({"online_at": online_at.to_string()}))
            .map_err(|error| json!({"reason": error.to_string()}))?;
        // Held until the join's ok reply has gone out, as Phoenix's `:after_join`.
        socket.push("presence_state", presence.list(socket.topic()));
        Ok(json!({}))
    }

    async fn handle_in(&self, event: &str, payload: Payload, socket: &Socket) -> HandleIn {
        match event {
            "new_msg" => {
                let body = payload
                    .as_json()
                    .and_then(|p| p.get("body"))
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|body| !body.is_empty());
                let (Some(body), Some(User(user))) = (body, socket.assigned::<User>()) else {
                    return Reply::error(json!({"reason": "body required"})).into();
                };
                let body: String = body.chars().take(MAX_BODY).collect();
                socket.broadcast("new_msg", json!({"user": user, "body": body}));
                Reply::ok(json!({})).into()
            }
            "ping" => Reply::ok(payload).into(),
            _ => Reply::error(json!({"reason": "unknown event"})).into(),
        }
    }
}
