//! Chat on Phoenix channels: a socket at `/socket` that the official `phoenix` npm
//! client talks to unmodified, with rooms and presence.
//!
//! ```text
//! cargo run --release --example channels                      # ws://127.0.0.1:4000/socket
//! cargo run --release --example channels -- --addr 0.0.0.0:4000 --token s3cret
//! ```
//!
//! Three servers that are one, over Redis (presence lists, broadcasts and every topic
//! span them; a client may connect to any):
//!
//! ```text
//! cargo run --release --example channels -- --addr 127.0.0.1:4001 --redis redis://127.0.0.1:6379/
//! cargo run --release --example channels -- --addr 127.0.0.1:4002 --redis redis://127.0.0.1:6379/
//! cargo run --release --example channels -- --addr 127.0.0.1:4003 --redis redis://127.0.0.1:6379/
//! ```
//!
//! From phoenix.js:
//!
//! ```js
//! const socket = new Socket("ws://127.0.0.1:4000/socket", {authToken: "s3cret"})
//! socket.connect()
//! const room = socket.channel("room:lobby", {user: "ann"})
//! const presence = new Presence(room)
//! presence.onSync(() => console.log(presence.list((user) => user)))
//! room.on("new_msg", ({user, body}) => console.log(`${user}: ${body}`))
//! room.join().receive("ok", () => room.push("new_msg", {body: "hello"}))
//! ```
//!
//! - Connect: with `--token SECRET`, the socket's auth token (phoenix.js `authToken`,
//!   sent in `Sec-WebSocket-Protocol`; or else its `token` param) must be `SECRET`, or
//!   `SECRET.UNTIL` with `UNTIL` a Unix time in milliseconds: a stand-in for a signed
//!   token with an expiry. A wrong token is refused with close code 3000
//!   (`CloseCode::UNAUTHORIZED`), an expired one with 4401 (`CloseCode::TOKEN_EXPIRED`),
//!   and a socket is closed with 4401 when its token expires.
//! - The chat channel of [`chat/channel.rs`](chat/channel.rs), which the `chat` example
//!   serves too: topics `room:{name}`; join params `{"user": name}`, which is also the
//!   presence key; joining without a user is refused with `{"reason": "user required"}`.
//! - `new_msg` `{"body": …}` reaches every member of the topic, the sender too, as
//!   `new_msg` `{"user": …, "body": …}`.
//! - `ping` is answered with its own payload, JSON or binary.
//! - `--redis URL` joins the servers on that Redis under `--prefix` (default
//!   `channels`); `--node-timeout MS` sets how long a silent server is still taken for
//!   alive (default 5000), which bounds how long a crashed server's users stay listed.
//! - `--history PATTERN` (repeatable, e.g. `'room:*'`) makes the topics that match
//!   keep history (`Channels::history`, the default `History`: 100 messages, 5
//!   minutes): broadcasts carry their position, and switchboard's JS client recovers
//!   what it missed on every rejoin. In memory the history ends with the process (a
//!   restart is a new epoch: clients are told they did not recover); with `--redis` it
//!   lives in Redis and survives the server (docs/streams.md).

#[path = "chat/channel.rs"]
mod channel;

use std::{
    error::Error,
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use switchboard::{
    channels::{Channels, ConnectInfo, Refused},
    hub::{History, Hub, HubConfig},
};
use switchboard_redis::{RedisBroker, RedisConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut addr: SocketAddr = "127.0.0.1:4000".parse()?;
    let mut token: Option<String> = None;
    let mut redis: Option<String> = None;
    let mut prefix = "channels".to_owned();
    let mut histories = Vec::new();
    let mut config = HubConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value.parse()?,
            ("--token", Some(value)) => token = Some(value),
            ("--redis", Some(value)) => redis = Some(value),
            ("--prefix", Some(value)) => prefix = value,
            ("--history", Some(value)) => histories.push(value),
            ("--node-timeout", Some(value)) => {
                let timeout = Duration::from_millis(value.parse()?);
                // Four heartbeats per timeout, as the defaults (1 s and 5 s).
                config = config.node_timeout(timeout).node_heartbeat(timeout / 5);
            }
            _ => {
                let usage = "usage: channels [--addr HOST:PORT] [--token SECRET] \
                             [--history PATTERN]... \
                             [--redis URL [--prefix PREFIX] [--node-timeout MS]]";
                return Err(format!("{usage} (got {arg})").into());
            }
        }
    }
    let hub = match redis {
        Some(url) => {
            let broker = RedisBroker::connect(RedisConfig::default().url(url).prefix(prefix));
            Hub::with_broker(config, broker.await?)
        }
        None => Hub::new(config),
    };
    let channels = histories
        .iter()
        .fold(Channels::new(hub.clone()), |channels, pattern| {
            channels.history(pattern, History::default())
        })
        .connect(move |info| {
            let checked = token.as_deref().map_or(Ok(()), |t| check(&info, t));
            async move { checked }
        })
        .channel(channel::TOPICS, channel::Room);
    let app: axum::Router = channels.into_router();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("channels server on ws://{}/socket", listener.local_addr()?);
    switchboard::serve(listener, app, &hub).await?;
    Ok(())
}

/// Checks the socket's token against `secret`: `SECRET`, or `SECRET.UNTIL` (Unix ms),
/// which expires.
fn check(info: &ConnectInfo, secret: &str) -> Result<(), Refused> {
    let token = info.auth_token().or_else(|| info.param("token"));
    let Some(rest) = token.and_then(|t| t.strip_prefix(secret)) else {
        return Err(Refused::new("invalid token"));
    };
    if rest.is_empty() {
        return Ok(());
    }
    let until = rest.strip_prefix('.').and_then(|ms| ms.parse::<u64>().ok());
    let Some(until) = until.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)) else {
        return Err(Refused::new("invalid token"));
    };
    if until <= SystemTime::now() {
        return Err(Refused::expired());
    }
    info.expires_at(until);
    Ok(())
}
