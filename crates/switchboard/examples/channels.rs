//! Chat on Phoenix channels: a socket at `/socket` that the official `phoenix` npm
//! client talks to unmodified, with rooms and presence.
//!
//! ```text
//! cargo run --release --example channels                      # ws://127.0.0.1:4000/socket
//! cargo run --release --example channels -- --addr 0.0.0.0:4000 --token s3cret
//! ```
//!
//! From phoenix.js:
//!
//! ```js
//! const socket = new Socket("ws://127.0.0.1:4000/socket", {params: {token: "s3cret"}})
//! socket.connect()
//! const room = socket.channel("room:lobby", {user: "ann"})
//! const presence = new Presence(room)
//! presence.onSync(() => console.log(presence.list((user) => user)))
//! room.on("new_msg", ({user, body}) => console.log(`${user}: ${body}`))
//! room.join().receive("ok", () => room.push("new_msg", {body: "hello"}))
//! ```
//!
//! - Connect: with `--token`, the socket's `token` param must match (403 otherwise).
//! - Topics `room:{name}`; join params `{"user": name}`, which is also the presence key;
//!   joining without a user is refused with `{"reason": "user required"}`.
//! - `new_msg` `{"body": …}` reaches every member of the topic, the sender too, as
//!   `new_msg` `{"user": …, "body": …}`.
//! - `ping` is answered with its own payload, JSON or binary.

use serde_json::{Value, json};
use std::{
    error::Error,
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};
use switchboard::{
    channels::{Assigns, Channel, Channels, HandleIn, Payload, Refused, Reply, Socket},
    hub::{Hub, HubConfig},
};

/// A name is at most this many characters.
const MAX_NAME: usize = 32;
/// A message body is at most this many characters.
const MAX_BODY: usize = 2000;

/// The member's name, assigned on join.
#[derive(Clone)]
struct User(String);

struct Room;

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
        let _ = socket.push("presence_state", presence.list(socket.topic()));
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
                let _ = socket.broadcast("new_msg", json!({"user": user, "body": body}));
                Reply::ok(json!({})).into()
            }
            "ping" => Reply::ok(payload).into(),
            _ => Reply::error(json!({"reason": "unknown event"})).into(),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut addr: SocketAddr = "127.0.0.1:4000".parse()?;
    let mut token: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value.parse()?,
            ("--token", Some(value)) => token = Some(value),
            _ => {
                let usage = "usage: channels [--addr HOST:PORT] [--token SECRET]";
                return Err(format!("{usage} (got {arg})").into());
            }
        }
    }
    let hub = Hub::new(HubConfig::default());
    let channels = Channels::new(hub.clone())
        .connect(move |info| {
            let allowed = token
                .as_deref()
                .is_none_or(|t| info.param("token") == Some(t));
            async move {
                if allowed {
                    Ok(Assigns::new())
                } else {
                    Err(Refused::new("invalid token"))
                }
            }
        })
        .channel("room:{name}", Room);
    let app: axum::Router = channels.into_router();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("channels server on ws://{}/socket", listener.local_addr()?);
    switchboard::serve(listener, app, &hub).await?;
    Ok(())
}
