//! What the presence tests share: a hub serving one presence channel, a raw V2 client
//! that applies `presence_state` and `presence_diff` as phoenix.js `Presence` does and
//! counts what it got, and a Redis server of a test's own.

#![allow(dead_code)] // Each test file uses part of it.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use switchboard::{
    channels::{Channel, Channels, ChannelsConfig, Socket},
    hub::Hub,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_tungstenite::{connect_async, tungstenite::Message as WsMessage};

/// How long any single step may take before the test counts as hung.
pub(crate) const STEP: Duration = Duration::from_secs(20);

pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Waits until `condition` holds, polling; panics after `limit`, saying `what`.
pub(crate) async fn until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `lobby:*`: join params `{"user": name}`; tracks the user with the hub's node as
/// meta and pushes the presence state, as the Phoenix guides' channel does.
pub(crate) struct Lobby;

impl Channel for Lobby {
    async fn join(&self, topic: &str, payload: Value, socket: &Socket) -> Result<Value, Value> {
        let Some(user) = payload.get("user").and_then(Value::as_str) else {
            return Err(json!({"reason": "user required"}));
        };
        let presence = socket.presence();
        let node = socket.connection().id().node().to_string();
        presence
            .track(socket, user, json!({ "node": node }))
            .map_err(|e| json!({"reason": e.to_string()}))?;
        socket.push("presence_state", presence.list(topic));
        Ok(json!({}))
    }
}

/// Serves `lobby:*` for `hub` on a free port; returns the address.
pub(crate) async fn serve(hub: &Hub, config: ChannelsConfig) -> SocketAddr {
    let app: axum::Router = Channels::new(hub.clone())
        .config(config)
        .channel("lobby:*", Lobby)
        .into_router();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hub = hub.clone();
    tokio::spawn(async move {
        let _ = switchboard::serve_with_shutdown(listener, app, &hub, std::future::pending()).await;
    });
    addr
}

/// The presence a client holds, as phoenix.js `Presence` builds it: key → refs; and
/// what it got to build it.
#[derive(Debug, Default, Clone)]
pub(crate) struct View {
    pub(crate) state: BTreeMap<String, BTreeSet<String>>,
    pub(crate) got_state: bool,
    /// How many diffs carried each ref's join, and each ref's leave.
    pub(crate) joins: HashMap<String, usize>,
    pub(crate) leaves: HashMap<String, usize>,
    /// `presence_diff` messages and their bytes.
    pub(crate) diffs: usize,
    pub(crate) diff_bytes: usize,
}

impl View {
    fn apply_state(&mut self, state: &Value) {
        self.state = refs_of(state);
        self.got_state = true;
    }

    /// phoenix.js `syncDiff`: the joins, then the leaves.
    fn apply_diff(&mut self, diff: &Value, bytes: usize) {
        self.diffs += 1;
        self.diff_bytes += bytes;
        for (key, refs) in refs_of(&diff["joins"]) {
            for reference in refs {
                *self.joins.entry(reference.clone()).or_default() += 1;
                self.state.entry(key.clone()).or_default().insert(reference);
            }
        }
        for (key, refs) in refs_of(&diff["leaves"]) {
            for reference in refs {
                *self.leaves.entry(reference.clone()).or_default() += 1;
                if let Some(held) = self.state.get_mut(&key) {
                    held.remove(&reference);
                    if held.is_empty() {
                        self.state.remove(&key);
                    }
                }
            }
        }
    }

    /// Refs whose join or leave came in more than one diff.
    pub(crate) fn repeated(&self) -> Vec<String> {
        let joins = self.joins.iter().filter(|(_, n)| **n > 1);
        let leaves = self.leaves.iter().filter(|(_, n)| **n > 1);
        joins.chain(leaves).map(|(r, _)| r.clone()).collect()
    }
}

/// `{key: {"metas": [{"phx_ref": …}, …]}}` as key → refs.
pub(crate) fn refs_of(state: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut refs = BTreeMap::new();
    for (key, value) in state.as_object().into_iter().flatten() {
        let metas = value["metas"].as_array().into_iter().flatten();
        let set: BTreeSet<String> = metas
            .filter_map(|m| m["phx_ref"].as_str().map(str::to_owned))
            .collect();
        if !set.is_empty() {
            refs.insert(key.clone(), set);
        }
    }
    refs
}

/// A member: a socket joined to one topic as one user; a task applies what arrives.
pub(crate) struct Member {
    pub(crate) user: String,
    pub(crate) view: Arc<Mutex<View>>,
    reader: JoinHandle<()>,
    writer: futures_util::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        WsMessage,
    >,
}

impl Member {
    /// Connects to `addr` and joins `topic` as `user` (the ok reply is awaited).
    pub(crate) async fn join(addr: SocketAddr, topic: &str, user: &str) -> Self {
        let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
        let (ws, _) = within("connect", connect_async(url)).await.unwrap();
        let (mut writer, mut reader) = ws.split();
        let join = json!(["1", "1", topic, "phx_join", {"user": user}]);
        within("send join", writer.send(WsMessage::text(join.to_string())))
            .await
            .unwrap();
        let view = Arc::new(Mutex::new(View::default()));
        let (joined_tx, joined) = tokio::sync::oneshot::channel();
        let applied = view.clone();
        let reader = tokio::spawn(async move {
            let mut joined_tx = Some(joined_tx);
            while let Some(Ok(message)) = reader.next().await {
                let WsMessage::Text(text) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                match value[3].as_str() {
                    Some("phx_reply") => {
                        if let Some(tx) = joined_tx.take() {
                            let _ = tx.send(value[4]["status"] == "ok");
                        }
                    }
                    Some("presence_state") => applied.lock().unwrap().apply_state(&value[4]),
                    Some("presence_diff") => {
                        applied.lock().unwrap().apply_diff(&value[4], text.len())
                    }
                    _ => {}
                }
            }
        });
        assert!(within("join reply", joined).await.unwrap(), "join refused");
        Self {
            user: user.to_owned(),
            view,
            reader,
            writer,
        }
    }

    pub(crate) fn view(&self) -> View {
        self.view.lock().unwrap().clone()
    }

    /// Closes the socket, which ends its channel and its presence.
    pub(crate) async fn leave(mut self) {
        let _ = self.writer.send(WsMessage::Close(None)).await;
        let _ = self.writer.close().await;
        let _ = within("the socket to close", &mut self.reader).await;
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A Redis server of one test, on a free port (never the shared 6379), killed when
/// dropped.
pub(crate) struct OwnRedis {
    pub(crate) port: u16,
    process: Option<std::process::Child>,
}

impl OwnRedis {
    pub(crate) fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        let mut redis = Self {
            port,
            process: None,
        };
        redis.restart();
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: its clients see their connections reset, as on a crash.
    pub(crate) fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let process = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        self.process = Some(process);
        let deadline = Instant::now() + STEP;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A prefix no other run uses, for tests on the shared Redis.
pub(crate) fn unique_prefix(test: &str) -> String {
    format!("sbtest:{test}:{:016x}", rand_bits())
}

fn rand_bits() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}
