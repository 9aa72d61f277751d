//! Rooms across processes: run it twice, on two ports, against one Redis; clients of
//! either server are in the same rooms.
//!
//! ```sh
//! cargo run --release -p switchboard-redis --example redis_rooms -- --addr 127.0.0.1:8091
//! cargo run --release -p switchboard-redis --example redis_rooms -- --addr 127.0.0.1:8092
//! # then, e.g. with websocat: ws://127.0.0.1:8091/chat/lobby and ws://127.0.0.1:8092/chat/lobby
//! ```
//!
//! Each text sent to `/chat/{room}` goes to everyone else in the room, on both servers.
//! A server starts even while Redis is down: `/ready` answers 503 until it has
//! reached Redis, and its own clients hear each other meanwhile.

use std::{error::Error, net::SocketAddr};
use switchboard::{
    Message,
    hub::{Connection, Handler, Hub, HubConfig},
};
use switchboard_redis::{RedisBroker, RedisConfig};

struct Room;

impl Handler for Room {
    async fn on_open(&self, conn: &Connection) {
        if let Some(room) = conn.param("room") {
            conn.join(room);
        }
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        if let Some(room) = conn.param("room") {
            conn.hub().to(room).except(conn.id()).send(message);
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut addr: SocketAddr = "127.0.0.1:8091".parse()?;
    let mut redis = "redis://127.0.0.1:6379/".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value.parse()?,
            ("--redis", Some(value)) => redis = value,
            _ => {
                return Err(format!(
                    "usage: redis_rooms [--addr HOST:PORT] [--redis URL] (got {arg})"
                )
                .into());
            }
        }
    }
    // Starts even while Redis is down: the server serves its own clients, answers 503
    // on /ready, and joins the other servers when Redis comes up.
    let broker = RedisBroker::new(RedisConfig::default().url(redis).prefix("redis_rooms"))?;
    let hub = Hub::with_broker(HubConfig::default(), broker);
    let app = axum::Router::new()
        .route("/chat/{room}", switchboard::ws(hub.clone(), Room))
        .route("/ready", switchboard::ready(hub.clone()));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "rooms on ws://{}/chat/{{room}}, node {}",
        listener.local_addr()?,
        hub.node()
    );
    switchboard::serve(listener, app, &hub).await?;
    Ok(())
}
