//! `/metrics` of a hub that real clients (tokio-tungstenite) opened, talked on, were
//! refused by and closed, read by an independent parser: the Prometheus project's
//! Python client (`prometheus_client`, installed by `scripts/setup-python` into the
//! virtualenv that `$SWITCHBOARD_PYTHON` names).

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::{
    collections::BTreeMap, future::Future, io::Write, net::SocketAddr, path::PathBuf,
    process::Stdio, time::Duration,
};
use switchboard::{
    Message,
    channels::{Channel, Channels, Socket},
    hub::{Connection, Handler, Hub, HubConfig},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::tungstenite::{
    self, Message as TMessage, client::IntoClientRequest, protocol::CloseFrame,
    protocol::frame::coding::CloseCode as TCloseCode,
};

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A bound only for a failure, which would otherwise wait for ever.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Every connection joins the room of its path; what one sends goes to the room.
struct Chat;

impl Handler for Chat {
    async fn on_open(&self, conn: &Connection) {
        conn.join(conn.param("room").unwrap_or("lobby"));
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        for room in conn.rooms() {
            conn.hub().to(&room).send(message.clone());
        }
    }
}

/// Joins anyone, tracking them in the topic's presence.
struct Room;

impl Channel for Room {
    async fn join(&self, _topic: &str, _payload: Value, socket: &Socket) -> Result<Value, Value> {
        socket.presence().track(socket, "alice", json!({})).unwrap();
        Ok(json!({}))
    }
}

/// A server with metrics on: `/chat/{room}`, channels at `/socket`, `/metrics`.
async fn server() -> SocketAddr {
    let hub = Hub::new(HubConfig::default().metrics(true));
    let channels = Channels::new(hub.clone()).channel("room:*", Room);
    let app = axum::Router::new()
        .route("/chat/{room}", switchboard::ws(hub.clone(), Chat))
        .route("/metrics", switchboard::metrics::route(&hub))
        .merge(channels.into_router());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { switchboard::serve(listener, app, &hub).await });
    addr
}

async fn next_text(ws: &mut Client) -> String {
    match within("a text message", ws.next()).await {
        Some(Ok(TMessage::Text(text))) => text.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// The response to a GET of `path`, whole: head and body.
async fn get(addr: SocketAddr, path: &str, extra: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    within("a response", tcp.read_to_string(&mut response))
        .await
        .unwrap();
    response
}

/// Scrapes `/metrics`, checks its content type, and returns its body.
async fn scrape(addr: SocketAddr) -> String {
    let response = get(addr, "/metrics", "").await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    body.to_owned()
}

/// The Python of the test virtualenv.
fn python() -> PathBuf {
    let python = std::env::var_os("SWITCHBOARD_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(PathBuf::from(home).join(".cache/switchboard/venv/bin/python"))
        })
        .filter(|python| python.exists());
    python.expect("no Python with prometheus_client: run scripts/setup-python")
}

/// Parses an OpenMetrics text with `prometheus_client`'s parser: every sample, by name
/// and labels (as a sorted `k=v,…` string).
fn parse(text: &str) -> BTreeMap<String, BTreeMap<String, f64>> {
    const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
samples = [
    [s.name, ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())), s.value]
    for family in text_string_to_metric_families(sys.stdin.read())
    for s in family.samples
]
json.dump(samples, sys.stdout)
"#;
    let mut child = std::process::Command::new(python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the parser refused:\n{text}");
    let samples: Vec<(String, String, f64)> = serde_json::from_slice(&output.stdout).unwrap();
    let mut metrics: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (name, labels, value) in samples {
        metrics.entry(name).or_default().insert(labels, value);
    }
    metrics
}

/// A sample's value; panics when the metric or its labels are missing.
fn value(metrics: &BTreeMap<String, BTreeMap<String, f64>>, name: &str, labels: &str) -> f64 {
    metrics
        .get(name)
        .and_then(|samples| samples.get(labels))
        .copied()
        .unwrap_or_else(|| panic!("no {name}{{{labels}}} in {metrics:#?}"))
}

#[tokio::test]
async fn metrics_count_what_real_clients_did() {
    let addr = server().await;
    let url = format!("ws://{addr}/chat/lobby");
    let (mut a, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut b, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    // One message in, broadcast to the two members of the room.
    a.send(TMessage::text("hello")).await.unwrap();
    assert_eq!(next_text(&mut a).await, "hello");
    assert_eq!(next_text(&mut b).await, "hello");

    // A page of another site is refused (403) before the 101.
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected a 403, got {other:?}"),
    }
    // A GET that is no handshake at all.
    let refused = get(addr, "/chat/lobby", "").await;
    assert!(refused.starts_with("HTTP/1.1 4"), "{refused}");

    // A channels client: one join its pattern accepts, one no pattern matches.
    let socket_url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
    let (mut c, _) = tokio_tungstenite::connect_async(socket_url).await.unwrap();
    let joins = [
        json!(["1", "1", "room:lobby", "phx_join", {}]).to_string(),
        json!(["2", "2", "nowhere", "phx_join", {}]).to_string(),
    ];
    for join in &joins {
        c.send(TMessage::text(join.as_str())).await.unwrap();
    }
    within("both join replies", async {
        let mut replies = 0;
        while replies < 2 {
            let text = next_text(&mut c).await;
            replies += usize::from(text.contains("phx_reply"));
        }
    })
    .await;

    // a leaves with 1000, and the server has seen it end.
    let normal = CloseFrame {
        code: TCloseCode::Normal,
        reason: "bye".into(),
    };
    a.close(Some(normal)).await.unwrap();
    while a.next().await.is_some() {}
    let metrics = within("a's close to be counted", async {
        loop {
            let metrics = parse(&scrape(addr).await);
            if value(&metrics, "switchboard_connections", "") == 2.0 {
                return metrics;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let count = |name: &str, labels: &str| value(&metrics, name, labels);
    assert_eq!(count("switchboard_connections_accepted_total", ""), 3.0);
    assert_eq!(
        count("switchboard_connections_refused_total", "reason=origin"),
        1.0
    );
    assert_eq!(
        count(
            "switchboard_connections_refused_total",
            "reason=bad_handshake"
        ),
        1.0
    );
    assert_eq!(
        count("switchboard_connections_closed_total", "code=1000"),
        1.0
    );
    assert_eq!(count("switchboard_messages_received_total", ""), 3.0);
    let received: usize = "hello".len() + joins.iter().map(String::len).sum::<usize>();
    assert_eq!(
        count("switchboard_received_bytes_total", ""),
        received as f64
    );
    // "hello" to a and b, and the two join replies at least.
    assert!(count("switchboard_messages_sent_total", "") >= 4.0);
    assert!(count("switchboard_sent_bytes_total", "") >= 2.0 * 7.0);
    // The broadcast of "hello" reached two recipients (the presence diff, one), and
    // each write was timed.
    let two = count("switchboard_broadcast_recipients_bucket", "le=2.0")
        - count("switchboard_broadcast_recipients_bucket", "le=1.0");
    assert_eq!(two, 1.0);
    assert!(count("switchboard_broadcast_delivery_seconds_count", "") >= 2.0);
    // b in "lobby", c in its topic's room.
    assert_eq!(count("switchboard_rooms", ""), 2.0);
    assert_eq!(count("switchboard_room_members", ""), 2.0);
    assert_eq!(
        count(
            "switchboard_channel_joins_total",
            "pattern=room:*,result=ok"
        ),
        1.0
    );
    assert_eq!(
        count("switchboard_channel_joins_total", "pattern=,result=refused"),
        1.0
    );
    assert_eq!(count("switchboard_presence_entries", ""), 1.0);
    assert_eq!(count("switchboard_messages_dropped_total", ""), 0.0);
    assert_eq!(count("switchboard_queued_bytes", ""), 0.0);
    assert!(
        !metrics.contains_key("switchboard_broker_up"),
        "the in-memory broker reports no link"
    );
    drop((b, c));
}
