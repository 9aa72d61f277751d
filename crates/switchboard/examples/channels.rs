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
//! - The chat channel of [`chat/channel.rs`](chat/channel.rs), which the `chat` example
//!   serves too: topics `room:{name}`; join params `{"user": name}`, which is also the
//!   presence key; joining without a user is refused with `{"reason": "user required"}`.
//! - `new_msg` `{"body": …}` reaches every member of the topic, the sender too, as
//!   `new_msg` `{"user": …, "body": …}`.
//! - `ping` is answered with its own payload, JSON or binary.

#[path = "chat/channel.rs"]
mod channel;

use std::{error::Error, net::SocketAddr};
use switchboard::{
    channels::{Channels, Refused},
    hub::{Hub, HubConfig},
};

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
                    Ok(())
                } else {
                    Err(Refused::new("invalid token"))
                }
            }
        })
        .channel(channel::TOPICS, channel::Room);
    let app: axum::Router = channels.into_router();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("channels server on ws://{}/socket", listener.local_addr()?);
    switchboard::serve(listener, app, &hub).await?;
    Ok(())
}
