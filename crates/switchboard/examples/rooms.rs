//! Rooms with metadata: each connection carries who it is (`user_id`,
//! `username`, `role`), starts in `chat:general` and `notifications`, talks to a room,
//! and leaves or rejoins rooms by command.
//!
//! ```text
//! cargo run --release --example rooms                  # ws://127.0.0.1:8081/ws
//! cargo run --release --example rooms -- --addr 0.0.0.0:3000
//! websocat 'ws://127.0.0.1:8081/ws?user_id=42&username=ada&role=admin'
//! ```
//!
//! The query carries the metadata so that the example can be tried from any client; a
//! real server takes it from authentication instead (middleware or an extractor puts
//! the user into the request's extensions, read back with `Connection::assigned`), since
//! anyone can write `role=admin` in a URL.
//!
//! Client to server, text frames:
//!
//! - `/leave ROOM`, `/join ROOM`: leave or join `chat:general`, `chat:random` or
//!   `notifications`;
//! - `/rooms`: the rooms you are in, with their sizes;
//! - `/announce TEXT`: to everyone in `notifications` (role `admin` only);
//! - anything else: a message to `chat:general`, if you are still in it.
//!
//! Server to client, JSON: `welcome` (your id, metadata, rooms with sizes), `joined` and
//! `left` (who, which room, its size now), `message`, `announcement`, `announced` (how
//! many it reached), `rooms`, `error`.

use axum::Router;
use serde_json::{Map, Value, json};
use std::{error::Error, net::SocketAddr};
use switchboard::{
    CloseCode, Message,
    hub::{Connection, Handler, Hub, HubConfig},
};

const GENERAL: &str = "chat:general";
const NOTIFICATIONS: &str = "notifications";
/// The rooms a client may be in: a peer cannot make the server create rooms at will.
const ROOMS: [&str; 3] = [GENERAL, "chat:random", NOTIFICATIONS];
/// Metadata values from the query are cut to this many characters.
const MAX_FIELD: usize = 32;

struct Rooms;

impl Rooms {
    fn username(conn: &Connection) -> String {
        conn.metadata("username").unwrap_or_default()
    }

    /// The rooms `conn` is in, each with its size.
    fn sizes(conn: &Connection) -> Value {
        let hub = conn.hub();
        let sizes: Map<String, Value> = conn
            .rooms()
            .into_iter()
            .map(|room| {
                let size = hub.room_size(&room);
                (room, size.into())
            })
            .collect();
        Value::Object(sizes)
    }

    fn reply(conn: &Connection, message: Value) {
        conn.send_text(message.to_string());
    }

    fn error(conn: &Connection, error: impl Into<String>) {
        Self::reply(conn, json!({"type": "error", "error": error.into()}));
    }

    /// A room the client named, if it is one of [`ROOMS`].
    fn known_room(conn: &Connection, room: &str) -> Option<&'static str> {
        let known = ROOMS.into_iter().find(|r| *r == room);
        if known.is_none() {
            Self::error(
                conn,
                format!("no room {room:?}; rooms: {}", ROOMS.join(", ")),
            );
        }
        known
    }

    fn join(conn: &Connection, room: &str) {
        let Some(room) = Self::known_room(conn, room) else {
            return;
        };
        if conn.in_room(room) {
            return Self::error(conn, format!("already in {room}"));
        }
        conn.join(room);
        let hub = conn.hub();
        let joined = json!({"type": "joined", "room": room, "username": Self::username(conn), "size": hub.room_size(room)});
        // The room, the newcomer included: its own `joined` confirms the command.
        hub.to(room).send_text(joined.to_string());
    }

    fn leave(conn: &Connection, room: &str) {
        let Some(room) = Self::known_room(conn, room) else {
            return;
        };
        if !conn.in_room(room) {
            return Self::error(conn, format!("not in {room}"));
        }
        conn.leave(room);
        let hub = conn.hub();
        let left = json!({"type": "left", "room": room, "username": Self::username(conn), "size": hub.room_size(room)});
        hub.to(room).send_text(left.to_string());
        Self::reply(conn, left);
    }

    fn announce(conn: &Connection, body: &str) {
        if conn.metadata("role").as_deref() != Some("admin") {
            return Self::error(conn, "only an admin may announce");
        }
        let announcement =
            json!({"type": "announcement", "from": Self::username(conn), "body": body});
        let report = conn
            .hub()
            .to(NOTIFICATIONS)
            .send_text(announcement.to_string());
        Self::reply(
            conn,
            json!({"type": "announced", "delivered": report.queued, "dropped": report.dropped}),
        );
    }

    fn say(conn: &Connection, body: &str) {
        if !conn.in_room(GENERAL) {
            return Self::error(
                conn,
                format!("you left {GENERAL}; /join {GENERAL} to talk there"),
            );
        }
        let message = json!({
            "type": "message",
            "room": GENERAL,
            "from": Self::username(conn),
            "user_id": conn.metadata("user_id"),
            "role": conn.metadata("role"),
            "body": body,
        });
        conn.hub().to(GENERAL).send_text(message.to_string());
    }
}

impl Handler for Rooms {
    async fn on_open(&self, conn: &Connection) {
        let field = |key: &str| {
            conn.query(key)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| v.chars().take(MAX_FIELD).collect::<String>())
        };
        let user_id = field("user_id").unwrap_or_else(|| "anonymous".to_owned());
        let username =
            field("username").unwrap_or_else(|| format!("guest-{}", conn.id().sequence()));
        // Anything but `admin` is an ordinary member.
        let role = if field("role").as_deref() == Some("admin") {
            "admin"
        } else {
            "member"
        };
        conn.set_metadata("user_id", &user_id);
        conn.set_metadata("username", &username);
        conn.set_metadata("role", role);

        conn.join(GENERAL);
        conn.join(NOTIFICATIONS);
        let welcome = json!({
            "type": "welcome",
            "id": conn.id(),
            "user_id": user_id,
            "username": username,
            "role": role,
            "rooms": Self::sizes(conn),
        });
        Self::reply(conn, welcome);
        let hub = conn.hub();
        let joined = json!({"type": "joined", "room": GENERAL, "username": username, "size": hub.room_size(GENERAL)});
        hub.to(GENERAL)
            .except(conn.id())
            .send_text(joined.to_string());
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        let Message::Text(text) = message else {
            return Self::error(conn, "send text frames");
        };
        let text = text.trim();
        let (command, argument) = text.split_once(' ').unwrap_or((text, ""));
        let argument = argument.trim();
        match command {
            "" => {}
            "/join" => Self::join(conn, argument),
            "/leave" => Self::leave(conn, argument),
            "/rooms" => Self::reply(conn, json!({"type": "rooms", "rooms": Self::sizes(conn)})),
            "/announce" if !argument.is_empty() => Self::announce(conn, argument),
            _ if command.starts_with('/') => Self::error(
                conn,
                "commands: /join ROOM, /leave ROOM, /rooms, /announce TEXT",
            ),
            _ => Self::say(conn, text),
        }
    }

    async fn on_close(&self, conn: &Connection, _code: CloseCode, _reason: &str) {
        let hub = conn.hub();
        let username = Self::username(conn);
        // Still a member of its rooms here; the hub removes it after this returns.
        for room in conn.rooms() {
            let size = hub.room_size(&room).saturating_sub(1);
            let left = json!({"type": "left", "room": room, "username": username, "size": size});
            hub.to(&room).except(conn.id()).send_text(left.to_string());
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut addr: SocketAddr = "127.0.0.1:8081".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value.parse()?,
            _ => return Err(format!("usage: rooms [--addr HOST:PORT] (got {arg})").into()),
        }
    }
    let hub = Hub::new(HubConfig::default());
    let app = Router::new().route("/ws", switchboard::ws(hub.clone(), Rooms));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("rooms server on ws://{}/ws", listener.local_addr()?);
    switchboard::serve(listener, app, &hub).await?;
    Ok(())
}
