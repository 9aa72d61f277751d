//! Private messages by connection id: `hub.connection(id)` finds the recipient, and
//! `try_send` on it sends to that connection alone and says whether it took the
//! message (the other sends here are fire-and-forget `send_text`).
//!
//! ```text
//! cargo run --release --example private_message        # ws://127.0.0.1:8082/ws
//! cargo run --release --example private_message -- --addr 0.0.0.0:3000
//! websocat 'ws://127.0.0.1:8082/ws?name=ada'
//! ```
//!
//! Server to client, JSON:
//!
//! - on connecting, `{"type":"welcome","id":"…","name":"ada","online":[{"id":"…","name":"…"}]}`
//!   (everyone else connected); the others get `{"type":"online","id":"…","name":"ada"}`,
//!   and `{"type":"offline",…}` when a connection ends;
//! - `{"type":"private","from":"…","name":"ada","body":"…"}` to the recipient of a
//!   private message, `{"type":"sent","to":"…","name":"bob"}` to its sender;
//! - `{"type":"error","error":"…"}` for an unknown id or a malformed request.
//!
//! Client to server: `{"to":"<id>","body":"…"}`, the id as the server sent it (a
//! `ConnectionId` serializes as a JSON string, and deserializes only from one).

use axum::Router;
use serde_json::{Value, json};
use std::{error::Error, net::SocketAddr};
use switchboard::{
    CloseCode, Message,
    hub::{Connection, ConnectionId, Handler, Hub, HubConfig},
};

/// A name is at most this many characters; longer ones are cut.
const MAX_NAME: usize = 32;

struct PrivateMessages;

impl PrivateMessages {
    fn name(conn: &Connection) -> String {
        conn.metadata("name").unwrap_or_default()
    }

    fn error(conn: &Connection, error: impl Into<String>) {
        let error = json!({"type": "error", "error": error.into()});
        conn.send_text(error.to_string());
    }

    /// `{"to": id, "body": text}`, or why not.
    fn parse(text: &str) -> Result<(ConnectionId, String), String> {
        const USAGE: &str = r#"expected {"to": "<id>", "body": "<text>"}"#;
        let request: Value = serde_json::from_str(text).map_err(|_| USAGE.to_owned())?;
        let to = request
            .get("to")
            .and_then(|id| serde_json::from_value::<ConnectionId>(id.clone()).ok())
            .ok_or_else(|| format!("{USAGE}: \"to\" must be a connection id"))?;
        let body = request
            .get("body")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|body| !body.is_empty())
            .ok_or_else(|| format!("{USAGE}: \"body\" must be non-empty text"))?;
        Ok((to, body.to_owned()))
    }
}

impl Handler for PrivateMessages {
    async fn on_open(&self, conn: &Connection) {
        let name: String = conn
            .query("name")
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map_or_else(
                || format!("guest-{}", conn.id().sequence()),
                |n| n.chars().take(MAX_NAME).collect(),
            );
        conn.set_metadata("name", &name);
        let hub = conn.hub();
        let online: Vec<Value> = hub
            .connections()
            .iter()
            .filter(|c| c.id() != conn.id())
            .map(|c| json!({"id": c.id(), "name": Self::name(c)}))
            .collect();
        let welcome = json!({"type": "welcome", "id": conn.id(), "name": name, "online": online});
        conn.send_text(welcome.to_string());
        let arrived = json!({"type": "online", "id": conn.id(), "name": name});
        hub.broadcast_except(arrived.to_string(), conn.id());
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        let Message::Text(text) = message else {
            return Self::error(conn, "send text frames");
        };
        let (to, body) = match Self::parse(&text) {
            Ok(request) => request,
            Err(error) => return Self::error(conn, error),
        };
        // This hub's connections only. With a broker, `hub.send_to(id, …)` also reaches
        // ids held by other hubs, but cannot tell whether the id exists.
        let Some(recipient) = conn.hub().connection(to) else {
            return Self::error(conn, format!("no connection with id {to}"));
        };
        let private =
            json!({"type": "private", "from": conn.id(), "name": Self::name(conn), "body": body});
        // `try_send`, not `send_text`: the sender is told whether it was delivered.
        match recipient.try_send(private.to_string()) {
            Ok(()) => {
                let sent = json!({"type": "sent", "to": to, "name": Self::name(&recipient)});
                conn.send_text(sent.to_string());
            }
            Err(error) => Self::error(conn, format!("not delivered to {to}: {error}")),
        }
    }

    async fn on_close(&self, conn: &Connection, _code: CloseCode, _reason: &str) {
        let gone = json!({"type": "offline", "id": conn.id(), "name": Self::name(conn)});
        conn.hub().broadcast_except(gone.to_string(), conn.id());
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut addr: SocketAddr = "127.0.0.1:8082".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value.parse()?,
            _ => {
                return Err(
                    format!("usage: private_message [--addr HOST:PORT] (got {arg})").into(),
                );
            }
        }
    }
    let hub = Hub::new(HubConfig::default());
    let app = Router::new().route("/ws", switchboard::ws(hub.clone(), PrivateMessages));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "private message server on ws://{}/ws",
        listener.local_addr()?
    );
    switchboard::serve(listener, app, &hub).await?;
    Ok(())
}
