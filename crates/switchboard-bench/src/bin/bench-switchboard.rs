//! The switchboard benchmark server.
//!
//! - echo: [`switchboard::upgrade::accept_with`] on the bare stream and
//!   `WebSocket::recv`/`send`, as `examples/echo.rs` does;
//! - broadcast: a [`Hub`] behind an axum route (`switchboard::ws`), each connection in
//!   the room `room`, each message sent with `hub.to("room").except(sender)` (encoded
//!   once, every recipient's queue sharing the bytes).
//!
//! To measure what the hub's metrics cost, `SWITCHBOARD_BENCH_METRICS=on` (or `off`)
//! runs both modes on a hub with `HubConfig::metrics` on (or off): echo then goes
//! through a hub too (`conn.send` of each message back), so that the two settings
//! compare the same path; unset, echo is the bare stream above.

use std::{env, io, process::ExitCode, sync::Arc};
use switchboard::{
    Message,
    hub::{Connection, Handler, Hub, HubConfig, MessageRate},
    upgrade::{AcceptConfig, accept_with},
};
use switchboard_bench::server::{self, Mode};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    server::main(|listener, mode| async move {
        match (mode, metrics()) {
            (Mode::Echo, None) => echo(listener).await,
            (Mode::Echo, Some(metrics)) => hub_echo(listener, metrics).await,
            (Mode::Broadcast, metrics) => broadcast(listener, metrics.unwrap_or(false)).await,
        }
    })
}

async fn echo(listener: TcpListener) -> io::Result<()> {
    let config = Arc::new(AcceptConfig::default());
    loop {
        let stream = server::accept(&listener).await;
        let config = config.clone();
        tokio::spawn(async move {
            let Ok((mut ws, _)) = accept_with(stream, &config).await else {
                return;
            };
            while let Some(Ok(message)) = ws.recv().await {
                if let Message::Text(_) | Message::Binary(_) = message {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

/// `SWITCHBOARD_BENCH_METRICS`: `Some(on)` when set.
fn metrics() -> Option<bool> {
    env::var("SWITCHBOARD_BENCH_METRICS")
        .ok()
        .map(|value| value == "on")
}

/// A hub whose connections send every message back.
struct Echo;

impl Handler for Echo {
    async fn on_message(&self, conn: &Connection, message: Message) {
        conn.send(message);
    }
}

async fn hub_echo(listener: TcpListener, metrics: bool) -> io::Result<()> {
    let hub = Hub::new(config(metrics));
    let app = axum::Router::new().route("/echo", switchboard::ws(hub.clone(), Echo));
    switchboard::serve(listener, app, &hub).await
}

fn config(metrics: bool) -> HubConfig {
    // The defaults are production bounds; the benchmark's largest room is 10,000
    // subscribers plus the publisher, and the idle test holds more, all from the load
    // generator's one address, whose publishers send as fast as the server takes.
    HubConfig::default()
        .max_connections(1 << 20)
        .max_connections_per_ip(1 << 20)
        .max_message_rate(MessageRate::UNLIMITED)
        .metrics(metrics)
}

/// Every connection joins the one room; a message goes to the others.
struct Room;

impl Handler for Room {
    async fn on_open(&self, conn: &Connection) {
        conn.join("room");
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        conn.hub().to("room").except(conn.id()).send(message);
    }
}

async fn broadcast(listener: TcpListener, metrics: bool) -> io::Result<()> {
    let hub = Hub::new(config(metrics));
    let app = axum::Router::new().route("/room", switchboard::ws(hub.clone(), Room));
    switchboard::serve(listener, app, &hub).await
}
