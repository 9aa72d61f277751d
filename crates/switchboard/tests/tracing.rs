//! The hub's events, as a `tracing` subscriber sees them: each test serves a hub with
//! `serve`, drives real clients (tokio-tungstenite) through one story, and checks the
//! events it left, with the fields of the connection's span.
//!
//! Each test runs on a current-thread runtime of its own, under a subscriber set as the
//! thread's default: every task of the test (the server's included) runs on that thread,
//! and no other test's events reach it.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    fmt,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use switchboard::{
    CloseCode, Message,
    channels::{Channel, Channels, Socket},
    hub::{BufferPolicy, Connection, Handler, Hub, HubConfig, Origins},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::{sleep, timeout},
};
use tokio_tungstenite::{
    WebSocketStream, client_async, connect_async,
    tungstenite::{
        self,
        client::IntoClientRequest,
        http::HeaderValue,
        protocol::{CloseFrame, frame::coding::CloseCode as ClientCloseCode},
    },
};
use tracing::{
    Level, Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{Layer, layer::Context, prelude::*, registry::LookupSpan};

/// How long a step may take before the test counts it as hung.
const STEP: Duration = Duration::from_secs(10);

/// The route every test serves; the span's `route` is this pattern, not the path.
const ROUTE: &str = "/chat/{room}";

#[test]
fn open_and_close_are_recorded_in_the_connection_span() {
    let events = traced(|events| async move {
        let (hub, addr) = serve(HubConfig::default()).await;
        let (mut client, local) = connect(addr, None).await.unwrap();
        let id = welcome(&mut client).await;

        let opened = events.wait(|e| e.message() == "connection opened").await;
        assert_eq!(opened.level, Level::DEBUG);
        let span = opened.connection().expect("in the connection's span");
        assert_eq!(span.get("id"), Some(&id));
        assert_eq!(span.get("remote"), Some(&local.to_string()));
        assert_eq!(span.get("route").map(String::as_str), Some(ROUTE));
        assert_eq!(span.get("node"), Some(&hub.node().to_string()));

        let bye = CloseFrame {
            code: ClientCloseCode::Normal,
            reason: "bye".into(),
        };
        client.close(Some(bye)).await.unwrap();
        drain(&mut client).await;
        let closed = events.wait(|e| e.closed_of(&id)).await;
        assert_eq!(closed.level, Level::DEBUG);
        assert_eq!(closed.field("code"), Some("1000"));
        assert_eq!(closed.field("reason"), Some("bye"));
        assert_eq!(closed.field("closed_by"), Some("peer"));
        assert_eq!(closed.connection(), Some(span));

        // The application closes the next one.
        let (mut client, _) = connect(addr, None).await.unwrap();
        let id = welcome(&mut client).await;
        client.send(text("quit")).await.unwrap();
        drain(&mut client).await;
        let closed = events.wait(|e| e.closed_of(&id)).await;
        assert_eq!(closed.field("code"), Some("1000"));
        assert_eq!(closed.field("reason"), Some("server says bye"));
        assert_eq!(closed.field("closed_by"), Some("server"));
    });
    // Steady state is quiet at `info`: nothing per connection above `debug` (the two
    // lines `serve` writes when it starts are not a connection's).
    let loud: Vec<_> = events
        .all()
        .into_iter()
        .filter(|e| e.level <= Level::INFO && e.connection().is_some())
        .collect();
    assert!(loud.is_empty(), "per-connection events at info: {loud:?}");
}

#[test]
fn an_origin_refusal_is_recorded_with_403_and_its_cause() {
    traced(|events| async move {
        let config = HubConfig::default()
            .allowed_origins(Origins::List(vec!["https://good.example".into()]));
        let (_hub, addr) = serve(config).await;
        let refusal = connect(addr, Some("https://evil.example"))
            .await
            .unwrap_err();
        assert_eq!(status(refusal), 403);
        let refused = events.wait(|e| e.message() == "upgrade refused").await;
        assert_eq!(refused.level, Level::DEBUG);
        assert_eq!(refused.field("status"), Some("403"));
        assert_eq!(refused.field("cause"), Some("origin"));
        assert_eq!(refused.field("route"), Some(ROUTE));
        assert!(refused.field("error").unwrap().contains("evil.example"));
        // The remote address is the client's: one of this machine's ports.
        assert!(refused.field("remote").unwrap().starts_with("127.0.0.1:"));
    });
}

#[test]
fn a_full_hub_refusal_is_recorded_with_503_and_its_cause() {
    traced(|events| async move {
        let (_hub, addr) = serve(HubConfig::default().max_connections(1)).await;
        let (mut first, _) = connect(addr, None).await.unwrap();
        welcome(&mut first).await;
        let refusal = connect(addr, None).await.unwrap_err();
        assert_eq!(status(refusal), 503);
        let refused = events.wait(|e| e.message() == "upgrade refused").await;
        assert_eq!(refused.field("status"), Some("503"));
        assert_eq!(refused.field("cause"), Some("full"));
        assert_eq!(refused.field("route"), Some(ROUTE));
    });
}

#[test]
fn a_bad_handshake_is_recorded_with_the_check_that_failed() {
    traced(|events| async move {
        let (_hub, addr) = serve(HubConfig::default()).await;
        // A plain GET, no `Upgrade`: 426.
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /chat/lobby HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        within("the refusal", tcp.read_to_end(&mut answer))
            .await
            .unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 426"), "{answer:?}");
        let refused = events.wait(|e| e.message() == "upgrade refused").await;
        assert_eq!(refused.field("status"), Some("426"));
        assert_eq!(refused.field("cause"), Some("handshake"));
        assert_eq!(refused.field("error"), Some("no upgrade header"));
    });
}

#[test]
fn a_pong_timeout_is_recorded_once_and_closes_with_1001_by_the_hub() {
    traced(|events| async move {
        let config = HubConfig::default()
            .ping_interval(Duration::from_millis(30))
            .pong_timeout(Duration::from_millis(60));
        let (_hub, addr) = serve(config).await;
        // Read the welcome, then never again: the hub's pings go unanswered.
        let (mut client, _) = connect(addr, None).await.unwrap();
        let id = welcome(&mut client).await;
        let closed = events.wait(|e| e.closed_of(&id)).await;
        assert_eq!(closed.field("code"), Some("1001"));
        assert_eq!(closed.field("reason"), Some("pong timeout"));
        assert_eq!(closed.field("closed_by"), Some("hub"));
        let timeouts: Vec<_> = events
            .all()
            .into_iter()
            .filter(|e| e.message().starts_with("pong timeout") && e.of(&id))
            .collect();
        assert_eq!(timeouts.len(), 1, "{timeouts:?}");
        assert_eq!(timeouts[0].level, Level::DEBUG);
        drop(client);
    });
}

#[test]
fn a_handler_panic_is_an_error_in_the_connection_span() {
    traced(|events| async move {
        let (_hub, addr) = serve(HubConfig::default()).await;
        let (mut client, local) = connect(addr, None).await.unwrap();
        let id = welcome(&mut client).await;
        client.send(text("panic")).await.unwrap();
        let panicked = events
            .wait(|e| e.message().starts_with("handler panicked"))
            .await;
        assert_eq!(panicked.level, Level::ERROR);
        assert_eq!(panicked.field("callback"), Some("on_message"));
        let span = panicked.connection().expect("in the connection's span");
        assert_eq!(span.get("id"), Some(&id));
        assert_eq!(span.get("remote"), Some(&local.to_string()));
        drain(&mut client).await;
        let closed = events.wait(|e| e.closed_of(&id)).await;
        assert_eq!(closed.field("code"), Some("1011"));
        assert_eq!(closed.field("closed_by"), Some("hub"));
    });
}

#[test]
fn an_event_of_the_application_in_on_message_carries_the_connection_fields() {
    traced(|events| async move {
        let (hub, addr) = serve(HubConfig::default()).await;
        let (mut client, local) = connect(addr, None).await.unwrap();
        let id = welcome(&mut client).await;
        client.send(text("hello")).await.unwrap();
        let event = events
            .wait(|e| e.message() == "the application's event")
            .await;
        assert_eq!(event.level, Level::INFO);
        assert_eq!(event.field("said"), Some("hello"));
        let span = event.connection().expect("in the connection's span");
        assert_eq!(span.get("id"), Some(&id));
        assert_eq!(span.get("remote"), Some(&local.to_string()));
        assert_eq!(span.get("route").map(String::as_str), Some(ROUTE));
        assert_eq!(span.get("node"), Some(&hub.node().to_string()));
        // Each message is traced, cheaply, at `trace`.
        let received = events.wait(|e| e.message() == "message received").await;
        assert_eq!(received.level, Level::TRACE);
        assert_eq!(received.field("len"), Some("5"));
    });
}

#[test]
fn a_slow_consumer_is_recorded_at_its_first_drop_only() {
    traced(|events| async move {
        let config = HubConfig::default().max_buffered_bytes(1024);
        let (hub, addr) = serve(config).await;
        let (mut client, _) = connect(addr, None).await.unwrap();
        let id = welcome(&mut client).await;
        client.send(text("flood")).await.unwrap();
        let dropped = events
            .wait(|e| e.message().starts_with("slow consumer"))
            .await;
        assert_eq!(dropped.level, Level::DEBUG);
        assert_eq!(dropped.field("policy"), Some("DropNewest"));
        assert!(dropped.of(&id));
        // The flood is over once the application says so.
        events.wait(|e| e.field("said") == Some("flood")).await;
        let conn = hub.connections().pop().unwrap();
        assert!(conn.dropped_messages() > 1, "{}", conn.dropped_messages());
        let count = |events: &Events| {
            let all = events.all().into_iter();
            all.filter(|e| e.message().starts_with("slow consumer"))
                .count()
        };
        assert_eq!(count(&events), 1);
    });
}

#[test]
fn the_buffer_policy_close_is_recorded_as_1008_by_the_hub() {
    traced(|events| async move {
        let config = HubConfig::default()
            .max_buffered_bytes(1024)
            .buffer_policy(BufferPolicy::Close);
        let (_hub, addr) = serve(config).await;
        let (mut client, _) = connect(addr, None).await.unwrap();
        let id = welcome(&mut client).await;
        client.send(text("flood")).await.unwrap();
        let closed = events.wait(|e| e.closed_of(&id)).await;
        assert_eq!(closed.field("code"), Some("1008"));
        assert_eq!(closed.field("reason"), Some("slow consumer"));
        assert_eq!(closed.field("closed_by"), Some("hub"));
    });
}

#[test]
fn channel_joins_refusals_and_leaves_are_debug_events_of_the_connection() {
    traced(|events| async move {
        let hub = Hub::new(HubConfig::default());
        let channels = Channels::new(hub.clone()).channel("room:*", Lobby);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app: axum::Router = channels.into_router();
        tokio::spawn(async move {
            let never = std::future::pending();
            let _ = switchboard::serve_with_shutdown(listener, app, &hub, never).await;
        });
        let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
        let (mut client, _) = within("connect", connect_async(url)).await.unwrap();
        for message in [
            r#"["1","1","room:lobby","phx_join",{}]"#,
            r#"["2","2","room:closed","phx_join",{}]"#,
            r#"["1","3","room:lobby","phx_leave",{}]"#,
        ] {
            client.send(text(message)).await.unwrap();
            within("the reply", client.next()).await.unwrap().unwrap();
        }
        let joined = events.wait(|e| e.message() == "channel joined").await;
        let refused = events.wait(|e| e.message() == "channel join refused").await;
        let left = events.wait(|e| e.message() == "channel left").await;
        assert_eq!(joined.field("topic"), Some("room:lobby"));
        assert_eq!(refused.field("topic"), Some("room:closed"));
        assert!(refused.field("reason").unwrap().contains("closed"));
        assert_eq!(left.field("topic"), Some("room:lobby"));
        assert_eq!(left.field("reason"), Some("Left"));
        for event in [&joined, &refused, &left] {
            assert_eq!(event.level, Level::DEBUG);
            let span = event.connection().expect("in the connection's span");
            let route = span.get("route").map(String::as_str);
            assert_eq!(route, Some("/socket/websocket"));
        }
    });
}

/// A channel that refuses `room:closed` and lets anyone join any other room.
struct Lobby;

impl Channel for Lobby {
    async fn join(&self, topic: &str, _payload: Value, _socket: &Socket) -> Result<Value, Value> {
        match topic {
            "room:closed" => Err(json!({ "reason": "closed" })),
            _ => Ok(json!({})),
        }
    }
}

/// What the tests' connections do: `on_open` sends the connection's id; a message
/// `quit` closes, `panic` panics, `flood` sends more than the buffer holds, anything
/// else is logged by the application (`flood` too, once it is done).
struct Probe;

impl Handler for Probe {
    async fn on_open(&self, conn: &Connection) {
        conn.send_text(conn.id().to_string());
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        let Message::Text(text) = message else { return };
        match text.as_str() {
            "quit" => conn.close(CloseCode::NORMAL, "server says bye").unwrap(),
            "panic" => panic!("the probe panics on purpose"),
            said => {
                if said == "flood" {
                    // Queued within one callback, faster than any socket drains them.
                    for _ in 0..100 {
                        conn.send_text("x".repeat(200));
                    }
                }
                tracing::info!(said, "the application's event");
            }
        }
    }
}

/// Serves `Probe` on [`ROUTE`] on a hub of `config`, at 127.0.0.1 on a free port.
async fn serve(config: HubConfig) -> (Hub, SocketAddr) {
    let hub = Hub::new(config);
    let app = axum::Router::new().route(ROUTE, switchboard::ws(hub.clone(), Probe));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = hub.clone();
    tokio::spawn(async move {
        let never = std::future::pending();
        let _ = switchboard::serve_with_shutdown(listener, app, &served, never).await;
    });
    (hub, addr)
}

type Client = WebSocketStream<TcpStream>;

/// Opens `/chat/lobby`, with an `Origin` when given; the client with its own address.
async fn connect(
    addr: SocketAddr,
    origin: Option<&str>,
) -> Result<(Client, SocketAddr), tungstenite::Error> {
    let mut request = format!("ws://{addr}/chat/lobby")
        .into_client_request()
        .unwrap();
    if let Some(origin) = origin {
        let origin = HeaderValue::from_str(origin).unwrap();
        request.headers_mut().insert("origin", origin);
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let (client, _) = within("the handshake", client_async(request, tcp)).await?;
    Ok((client, local))
}

/// The connection's id, which `Probe` sends first.
async fn welcome(client: &mut Client) -> String {
    match within("the welcome", client.next()).await {
        Some(Ok(tungstenite::Message::Text(id))) => id.to_string(),
        other => panic!("expected the connection's id, got {other:?}"),
    }
}

/// Reads until the connection ends (the close handshake completes).
async fn drain(client: &mut Client) {
    within("the end of the connection", async {
        while let Some(Ok(_)) = client.next().await {}
    })
    .await;
}

fn text(text: &str) -> tungstenite::Message {
    tungstenite::Message::text(text)
}

/// The status of a refused handshake.
fn status(error: tungstenite::Error) -> u16 {
    match error {
        tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Runs `test` on a current-thread runtime under a subscriber that captures every
/// event (every level); returns what it captured.
fn traced<F: Future<Output = ()>>(test: impl FnOnce(Events) -> F) -> Events {
    let events = Events::default();
    let subscriber = tracing_subscriber::registry().with(events.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(test(events.clone()));
    events
}

/// A field's value as text: strings as they are, the rest as `Debug` shows them
/// (`%value` fields as `Display` does).
#[derive(Debug, Default, Clone, PartialEq)]
struct Fields(HashMap<&'static str, String>);

impl Fields {
    fn get(&self, name: &str) -> Option<&String> {
        self.0.get(name)
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

/// One event, with the fields of the spans it is in.
#[derive(Debug, Clone)]
struct Captured {
    level: Level,
    fields: Fields,
    /// Root first: `(name, fields)`.
    spans: Vec<(&'static str, Fields)>,
}

impl Captured {
    fn message(&self) -> &str {
        self.field("message").unwrap_or_default()
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// The fields of the connection span the event is in.
    fn connection(&self) -> Option<&Fields> {
        let mut spans = self.spans.iter();
        spans
            .find(|(name, _)| *name == "connection")
            .map(|(_, f)| f)
    }

    /// Whether the event is in the span of connection `id`.
    fn of(&self, id: &str) -> bool {
        self.connection()
            .and_then(|span| span.get("id"))
            .map(String::as_str)
            == Some(id)
    }

    fn closed_of(&self, id: &str) -> bool {
        self.message() == "connection closed" && self.of(id)
    }
}

/// A layer that keeps every event.
#[derive(Debug, Default, Clone)]
struct Events(Arc<Mutex<Vec<Captured>>>);

impl Events {
    fn all(&self) -> Vec<Captured> {
        self.0.lock().unwrap().clone()
    }

    /// The first event that matches, once it has happened.
    async fn wait(&self, matches: impl Fn(&Captured) -> bool) -> Captured {
        within("the event", async {
            loop {
                if let Some(event) = self.all().into_iter().find(&matches) {
                    return event;
                }
                sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Events {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let spans = ctx
            .event_scope(event)
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .map(|span| {
                let fields = span.extensions().get::<Fields>().cloned();
                (span.name(), fields.unwrap_or_default())
            })
            .collect();
        let level = *event.metadata().level();
        self.0.lock().unwrap().push(Captured {
            level,
            fields,
            spans,
        });
    }
}
