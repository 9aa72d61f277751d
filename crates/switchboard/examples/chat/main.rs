//! The chat example: a page at `/`, and two ways into the same rooms-and-names chat
//! on one server and one in-memory hub.
//!
//! ```text
//! cargo run --release --example chat                # http://127.0.0.1:8080
//! cargo run --release --example chat -- --addr 0.0.0.0:3000
//! cargo run --release --example chat -- --restart-window 1-10
//! # several processes as one chat, over Redis (see "Several processes" below):
//! cargo run --release --example chat -- --addr 127.0.0.1:8081 --redis redis://127.0.0.1:6379/
//! # or over NATS:
//! cargo run --release --example chat -- --addr 127.0.0.1:8082 --nats nats://127.0.0.1:4222
//! RUST_LOG=switchboard=debug cargo run --release --example chat   # every connection's story
//! # https:// and wss:// (feature `tls`), with a certificate chain and key in PEM:
//! cargo run --release --features tls --example chat -- --tls-cert cert.pem --tls-key key.pem
//! ```
//!
//! `/health` answers 200 while the process serves, `/ready` 200 while the hub accepts
//! and delivers (503 once shutdown has begun). On Ctrl-C or SIGTERM every socket gets
//! 1001; with `--restart-window MIN-MAX` (seconds) it gets 1012 with
//! `server restarting; retry in MIN-MAXs`, and switchboard's JS client comes back at a
//! random moment in that window.
//!
//! Prometheus metrics are at `/metrics` (see `switchboard::metrics`).
//!
//! # Several processes: `--redis URL` or `--nats URL`
//!
//! With `--redis redis://host:6379/` the hub joins the others on that Redis (and
//! `--redis-prefix`, default `switchboard`), with `--nats nats://host:4222` those on that
//! NATS (and `--nats-prefix`): people on different processes share rooms, messages and
//! presence, and a process that dies has its people leave everyone's list within the
//! hub's `node_timeout`. It starts even while the server is down (`/ready` answers 503
//! until the link is up). Without either, the hub is in memory, alone.
//!
//! # Channels: `/socket/websocket?vsn=2.0.0`
//!
//! Phoenix channels V2, what the page speaks through `clients/js` (served at
//! `/client/{file}.js`) and what phoenix.js speaks unmodified:
//! `new Socket("/socket")`. JSON arrays `[join_ref, ref, topic, event, payload]`:
//!
//! - Join `room:{name}` with `{"user": name}` (at most 32 characters), which is also
//!   the presence key; without one the join is refused with `{"reason": "user required"}`.
//!   After the `{}` reply comes `presence_state`, then `presence_diff` as people come and go
//!   (metas carry `online_at`, milliseconds since the epoch as a string).
//! - Push `new_msg` `{"body": …}`: every member of the topic, the sender too, gets
//!   `new_msg` `{"user": …, "body": …}`. `ping` is answered with its own payload.
//!
//! The channel is `channel.rs`, shared with the `channels` example.
//!
//! # Plain: `/chat/{room}?name=…`
//!
//! For clients without a channels library (e.g. `websocat`). JSON text frames, server to
//! client: `welcome` (your id, the room, your name, who is here), `joined` / `left` (who,
//! how many now), `message` (who, their connection id, what). Clients send the body of a
//! message as plain text. These rooms are separate from the channel topics: a plain
//! client in `lobby` does not see the messages of `room:lobby`.

mod channel;

use axum::{
    Router,
    extract::Path,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use std::{error::Error, net::SocketAddr, ops::Range, time::Duration};
use switchboard::{
    CloseCode, Compression, Message,
    channels::Channels,
    hub::{Broker, ClusterQuery, Connection, Handler, Hub, HubConfig},
};
use switchboard_nats::{NatsBroker, NatsConfig};
use switchboard_redis::{RedisBroker, RedisConfig};

use tracing_subscriber::EnvFilter;

const PAGE: &str = include_str!("index.html");

/// The modules of `clients/js/src`, served at `/client/{name}` for the page to import.
const CLIENT: &[(&str, &str)] = &[
    (
        "backoff.js",
        include_str!("../../../../clients/js/src/backoff.js"),
    ),
    (
        "channel-socket.js",
        include_str!("../../../../clients/js/src/channel-socket.js"),
    ),
    (
        "channel.js",
        include_str!("../../../../clients/js/src/channel.js"),
    ),
    (
        "close-codes.js",
        include_str!("../../../../clients/js/src/close-codes.js"),
    ),
    (
        "emitter.js",
        include_str!("../../../../clients/js/src/emitter.js"),
    ),
    (
        "index.js",
        include_str!("../../../../clients/js/src/index.js"),
    ),
    (
        "presence.js",
        include_str!("../../../../clients/js/src/presence.js"),
    ),
    (
        "push.js",
        include_str!("../../../../clients/js/src/push.js"),
    ),
    (
        "serializer.js",
        include_str!("../../../../clients/js/src/serializer.js"),
    ),
    (
        "socket.js",
        include_str!("../../../../clients/js/src/socket.js"),
    ),
];

/// One of [`CLIENT`], or 404.
async fn client_module(Path(name): Path<String>) -> Response {
    match CLIENT.iter().find(|(file, _)| *file == name) {
        Some((_, source)) => (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *source,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such module").into_response(),
    }
}

/// A name is at most this many characters; longer ones are cut.
const MAX_NAME: usize = channel::MAX_NAME;

/// A room name is at most this many characters, so no client can make the hub keep
/// arbitrarily long keys.
const MAX_ROOM: usize = 64;

/// How long a plain client's welcome waits for the other processes' members.
const CLUSTER_WAIT: Duration = Duration::from_millis(500);

/// The prefix of the plain rooms' hub rooms, apart from those of channel topics (`phx:`).
const PLAIN_ROOM_PREFIX: &str = "chat:";

struct Chat;

impl Chat {
    /// The room as clients see it.
    fn room(conn: &Connection) -> String {
        conn.param("room")
            .unwrap_or("lobby")
            .chars()
            .take(MAX_ROOM)
            .collect()
    }

    /// The room's name in the hub, which the channels share.
    fn hub_room(conn: &Connection) -> String {
        format!("{PLAIN_ROOM_PREFIX}{}", Self::room(conn))
    }

    fn name(conn: &Connection) -> String {
        conn.metadata("name").unwrap_or_default()
    }

    /// Questions to every chat process, answered within [`CLUSTER_WAIT`].
    fn cluster(hub: &Hub) -> ClusterQuery<'_> {
        hub.cluster().timeout(CLUSTER_WAIT)
    }
}

impl Handler for Chat {
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
        let room = Self::room(conn);
        let hub_room = Self::hub_room(conn);
        conn.join(&hub_room);
        let hub = conn.hub();
        // Everyone in the room on every process: a cluster-wide query (on one process,
        // it answers at once). A process that does not answer in time is left out of the
        // list rather than holding up the welcome.
        let members: Vec<String> = Self::cluster(hub)
            .room_members(&hub_room)
            .await
            .value
            .iter()
            .filter_map(|member| member.metadata("name").map(str::to_owned))
            .collect();
        let count = members.len();
        let welcome = json!({"type": "welcome", "id": conn.id(), "room": room, "user": name, "members": members});
        conn.send_text(welcome.to_string());
        let joined = json!({"type": "joined", "user": name, "count": count});
        hub.to(&hub_room)
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
        let out =
            json!({"type": "message", "id": conn.id(), "user": Self::name(conn), "body": body});
        conn.hub()
            .to(&Self::hub_room(conn))
            .send_text(out.to_string());
    }

    async fn on_close(&self, conn: &Connection, _code: CloseCode, _reason: &str) {
        let room = Self::hub_room(conn);
        // Still a member here; the hub removes the connection after this returns.
        let count = Self::cluster(conn.hub())
            .room_size(&room)
            .await
            .value
            .saturating_sub(1);
        let left = json!({"type": "left", "user": Self::name(conn), "count": count});
        conn.hub()
            .to(&room)
            .except(conn.id())
            .send_text(left.to_string());
    }
}

/// A `--redis`/`--nats` flag and its `-prefix`.
#[derive(Default)]
struct Backplane {
    url: Option<String>,
    prefix: Option<String>,
}

/// The broker the flags ask for, `None` for a hub alone in memory. Either starts
/// whether its server is up or not: until the link is up, `/ready` says 503 and the
/// hub serves its own people.
fn broker(redis: Backplane, nats: Backplane) -> Result<Option<Box<dyn Broker>>, Box<dyn Error>> {
    match (redis, nats) {
        (Backplane { url: Some(_), .. }, Backplane { url: Some(_), .. }) => {
            Err("--redis and --nats: one backplane at a time".into())
        }
        (
            Backplane {
                url: Some(url),
                prefix,
            },
            _,
        ) => {
            let mut config = RedisConfig::default().url(url);
            if let Some(prefix) = prefix {
                config = config.prefix(prefix);
            }
            Ok(Some(Box::new(RedisBroker::new(config)?)))
        }
        (
            _,
            Backplane {
                url: Some(url),
                prefix,
            },
        ) => {
            let mut config = NatsConfig::default().url(url);
            if let Some(prefix) = prefix {
                config = config.prefix(prefix);
            }
            Ok(Some(Box::new(NatsBroker::new(config)?)))
        }
        (
            Backplane {
                prefix: Some(_), ..
            },
            _,
        ) => Err("--redis-prefix goes with --redis".into()),
        (
            _,
            Backplane {
                prefix: Some(_), ..
            },
        ) => Err("--nats-prefix goes with --nats".into()),
        _ => Ok(None),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // The hub's events on stderr: `info` (the default) is quiet while all is well;
    // `RUST_LOG=switchboard=debug` tells each connection's story.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let mut addr: SocketAddr = "127.0.0.1:8080".parse()?;
    // Browsers offer permessage-deflate; a long message to a room is compressed once
    // for all its members.
    let mut config = HubConfig::default()
        .compression(Compression::shared())
        .metrics(true);
    let (mut cert, mut key) = (None, None);
    let (mut redis, mut nats) = (Backplane::default(), Backplane::default());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value.parse()?,
            ("--restart-window", Some(value)) => {
                config = config
                    .shutdown_close(CloseCode::SERVICE_RESTART)
                    .reconnect_window(seconds_range(&value)?);
            }
            ("--tls-cert", Some(value)) => cert = Some(value),
            ("--tls-key", Some(value)) => key = Some(value),
            ("--redis", Some(value)) => redis.url = Some(value),
            ("--redis-prefix", Some(value)) => redis.prefix = Some(value),
            ("--nats", Some(value)) => nats.url = Some(value),
            ("--nats-prefix", Some(value)) => nats.prefix = Some(value),
            _ => {
                let usage = "usage: chat [--addr HOST:PORT] [--restart-window MIN-MAX] \
                             [--tls-cert PEM --tls-key PEM] \
                             [--redis URL [--redis-prefix P] | --nats URL [--nats-prefix P]]";
                return Err(format!("{usage} (got {arg})").into());
            }
        }
    }
    let hub = match broker(redis, nats)? {
        Some(broker) => Hub::with_broker(config, broker),
        None => Hub::new(config),
    };
    let channels = Channels::new(hub.clone()).channel(channel::TOPICS, channel::Room);
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/client/{name}", get(client_module))
        .route("/chat/{room}", switchboard::ws(hub.clone(), Chat))
        .route("/health", switchboard::health())
        .route("/ready", switchboard::ready(hub.clone()))
        .route("/metrics", switchboard::metrics::route(&hub))
        .merge(channels.into_router());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    match (cert, key) {
        (None, None) => {
            println!("chat server on http://{}", listener.local_addr()?);
            switchboard::serve(listener, app, &hub).await?;
        }
        (Some(cert), Some(key)) => serve_tls(listener, app, &hub, &cert, &key).await?,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    }
    Ok(())
}

/// `MIN-MAX` in seconds (decimals allowed), as `--restart-window` takes it.
fn seconds_range(text: &str) -> Result<Range<Duration>, Box<dyn Error>> {
    let parse = |s: &str| -> Result<Duration, Box<dyn Error>> {
        Ok(Duration::try_from_secs_f64(s.trim().parse()?)?)
    };
    match text.split_once('-') {
        Some((min, max)) => Ok(parse(min)?..parse(max)?),
        None => Err(format!("--restart-window takes MIN-MAX seconds, got {text}").into()),
    }
}

#[cfg(feature = "tls")]
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    hub: &Hub,
    cert: &str,
    key: &str,
) -> Result<(), Box<dyn Error>> {
    let tls = switchboard::tls::TlsConfig::from_pem_files(cert, key)?;
    println!("chat server on https://{}", listener.local_addr()?);
    switchboard::serve_tls(listener, app, hub, tls).await?;
    Ok(())
}

#[cfg(not(feature = "tls"))]
async fn serve_tls(
    _: tokio::net::TcpListener,
    _: Router,
    _: &Hub,
    _: &str,
    _: &str,
) -> Result<(), Box<dyn Error>> {
    Err("--tls-cert needs the `tls` feature: cargo run --features tls --example chat".into())
}
