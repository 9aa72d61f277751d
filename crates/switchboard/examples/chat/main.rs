//! The seeds' chat example: a page at `/`, rooms at `/chat/{room}?name=…`, on an
//! in-memory hub.
//!
//! ```text
//! cargo run --release --example chat                # http://127.0.0.1:8080
//! cargo run --release --example chat -- --addr 0.0.0.0:3000
//! ```
//!
//! Wire format (JSON text frames, server to client): `welcome` (your id, the room, who
//! is here), `joined` / `left` (who, how many now), `message` (who, their connection id,
//! what). Clients send the body of a message as plain text.

use axum::{Router, response::Html, routing::get};
use serde_json::json;
use std::{error::Error, net::SocketAddr};
use switchboard::{
    Message,
    hub::{Connection, Handler, Hub, HubConfig},
};

const PAGE: &str = include_str!("index.html");

/// A name is at most this many characters; longer ones are cut.
const MAX_NAME: usize = 32;

/// A room name is at most this many characters, so no client can make the hub keep
/// arbitrarily long keys.
const MAX_ROOM: usize = 64;

struct Chat;

impl Chat {
    fn room(conn: &Connection) -> String {
        conn.param("room").unwrap_or("lobby").chars().take(MAX_ROOM).collect()
    }

    fn name(conn: &Connection) -> String {
        conn.metadata("name").unwrap_or_default()
    }
}

impl Handler for Chat {
    async fn on_open(&self, conn: &Connection) {
        let name: String = conn
            .query("name")
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map_or_else(
                || format!("guest-{}", conn.id() & 0xFFFF),
                |n| n.chars().take(MAX_NAME).collect(),
            );
        conn.set_metadata("name", &name);
        let room = Self::room(conn);
        conn.join(&room);
        let hub = conn.hub();
        let members: Vec<String> = hub
            .room_members(&room)
            .iter()
            .filter_map(|c| c.metadata("name"))
            .collect();
        let welcome = json!({"type": "welcome", "id": conn.id().to_string(), "room": room, "user": name, "members": members});
        let _ = conn.send_text(welcome.to_string());
        let joined = json!({"type": "joined", "user": name, "count": hub.room_size(&room)});
        hub.to(&room)
            .except(conn.id())
            .send_text(joined.to_string());
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        let Message::Text(body) = message else { return };
        let body = body.trim();
        if body.is_empty() {
            return;
        }
        // The sender's id lets a page tell its own messages from those of a namesake.
        let out = json!({"type": "message", "id": conn.id().to_string(), "user": Self::name(conn), "body": body});
        conn.hub().to(&Self::room(conn)).send_text(out.to_string());
    }

    async fn on_close(&self, conn: &Connection, _code: switchboard::CloseCode, _reason: &str) {
        let room = Self::room(conn);
        // Still a member here; the hub removes the connection after this returns.
        let count = conn.hub().room_size(&room).saturating_sub(1);
        let left = json!({"type": "left", "user": Self::name(conn), "count": count});
        conn.hub()
            .to(&room)
            .except(conn.id())
            .send_text(left.to_string());
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut addr: SocketAddr = "127.0.0.1:8080".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value.parse()?,
            _ => return Err(format!("usage: chat [--addr HOST:PORT] (got {arg})").into()),
        }
    }
    let hub = Hub::new(HubConfig::default());
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/chat/{room}", switchboard::ws(hub.clone(), Chat));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("chat server on http://{}", listener.local_addr()?);
    switchboard::serve(listener, app, &hub).await?;
    Ok(())
}
