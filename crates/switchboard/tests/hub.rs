//! The hub over real TCP, seen by independent clients (tokio-tungstenite, and raw
//! sockets where a client must misbehave): registration and the rejections before the
//! 101, the handler's callbacks, the connection handle, rooms and broadcast, and
//! graceful shutdown.
//!
//! Every server records what its handler saw on a channel ([`Event`]), so that each test
//! checks the server's side (codes passed to `on_close`, the order of callbacks) as well
//! as what the client received.

mod common;

use axum::{Router, extract::Request, middleware::Next, response::IntoResponse, routing::get};
use common::{
    STEP, assert_eof, handshake_request, http_exchange,
    hub::{Client, HubServer, connect, raw_connect, serve, try_connect},
    listen, within,
};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use std::{
    collections::{HashSet, VecDeque},
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use switchboard::{
    CloseCode, HubUpgrade, Message,
    hub::{
        BroadcastReport, Connection, ConnectionId, ConnectionState, Handler, Hub, HubConfig,
        NodeId, Origins, SendError,
    },
};
use tokio::{
    io::AsyncWriteExt,
    net::TcpStream,
    sync::{
        Semaphore,
        mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
    },
    task::JoinHandle,
};
use tokio_tungstenite::tungstenite::{
    self, Message as TMessage,
    protocol::{CloseFrame as TCloseFrame, frame::coding::CloseCode as TCloseCode},
};

// ---------------------------------------------------------------------------------------
// The probe handler and its server
// ---------------------------------------------------------------------------------------

/// Something the probe handler saw, with the connection's state at that moment.
#[derive(Clone, Debug)]
enum Event {
    Open(Connection, ConnectionState),
    Message(ConnectionId, Message, ConnectionState),
    /// `on_message` got `block` and waits for a permit of the gate.
    Blocked(ConnectionId),
    Ping(ConnectionId, Vec<u8>),
    Pong(ConnectionId, Vec<u8>),
    Error(ConnectionId, String),
    Close(ConnectionId, CloseCode, String, ConnectionState),
}

impl Event {
    fn id(&self) -> ConnectionId {
        match self {
            Self::Open(conn, _) => conn.id(),
            Self::Message(id, ..)
            | Self::Blocked(id)
            | Self::Ping(id, _)
            | Self::Pong(id, _)
            | Self::Error(id, _)
            | Self::Close(id, ..) => *id,
        }
    }
}

/// Records every callback. Joins the room named by the route's `{room}` on open, and
/// obeys text commands: `block` (wait for the gate), `join R`, `leave R`, `echo T`,
/// `close CODE REASON`.
#[derive(Clone)]
struct Probe {
    events: UnboundedSender<Event>,
    gate: Arc<Semaphore>,
}

impl Probe {
    fn emit(&self, event: Event) {
        // The test may have stopped listening: nobody to tell is not an error here.
        let _ = self.events.send(event);
    }
}

impl Handler for Probe {
    async fn on_open(&self, conn: &Connection) {
        if let Some(room) = conn.param("room") {
            conn.join(room);
        }
        self.emit(Event::Open(conn.clone(), conn.state()));
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        if let Message::Text(text) = &message {
            let (command, arg) = text.split_once(' ').unwrap_or((text, ""));
            match command {
                "block" => {
                    self.emit(Event::Blocked(conn.id()));
                    self.gate.acquire().await.unwrap().forget();
                }
                "join" => {
                    conn.join(arg);
                }
                "leave" => {
                    conn.leave(arg);
                }
                "echo" => conn.send_text(arg),
                "close" => {
                    let (code, reason) = arg.split_once(' ').unwrap_or((arg, ""));
                    conn.close(CloseCode(code.parse().unwrap()), reason)
                        .unwrap();
                }
                _ => {}
            }
        }
        self.emit(Event::Message(conn.id(), message, conn.state()));
    }

    async fn on_close(&self, conn: &Connection, code: CloseCode, reason: &str) {
        self.emit(Event::Close(
            conn.id(),
            code,
            reason.to_owned(),
            conn.state(),
        ));
    }

    async fn on_error(&self, conn: &Connection, error: &switchboard::Error) {
        self.emit(Event::Error(conn.id(), error.to_string()));
    }

    async fn on_ping(&self, conn: &Connection, payload: &[u8]) {
        self.emit(Event::Ping(conn.id(), payload.to_vec()));
    }

    async fn on_pong(&self, conn: &Connection, payload: &[u8]) {
        self.emit(Event::Pong(conn.id(), payload.to_vec()));
    }
}

/// The probe's events: waited for by predicate, and all kept in order in `log`.
struct Events {
    rx: UnboundedReceiver<Event>,
    /// Received, not yet returned by `wait`.
    pending: VecDeque<Event>,
    /// Everything received, in order.
    log: Vec<Event>,
    /// The probe's gate: each permit added lets one `block` go on.
    gate: Arc<Semaphore>,
}

/// A probe, and the events it reports with its gate.
fn probe() -> (Probe, Events) {
    let (tx, rx) = unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let probe = Probe {
        events: tx,
        gate: gate.clone(),
    };
    let events = Events {
        rx,
        pending: VecDeque::new(),
        log: Vec::new(),
        gate,
    };
    (probe, events)
}

impl Events {
    /// The first event not yet returned that matches `pred`, waiting up to `STEP`.
    async fn wait(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).unwrap();
        }
        loop {
            let event = within(what, self.rx.recv()).await.expect("probe alive");
            self.log.push(event.clone());
            if pred(&event) {
                return event;
            }
            self.pending.push_back(event);
        }
    }

    /// The next connection opened.
    async fn open(&mut self) -> Connection {
        match self.wait("on_open", |e| matches!(e, Event::Open(..))).await {
            Event::Open(conn, _) => conn,
            _ => unreachable!(),
        }
    }

    /// The `on_close` of `id`: its code and reason.
    async fn close(&mut self, id: ConnectionId) -> (CloseCode, String) {
        match self
            .wait("on_close", |e| matches!(e, Event::Close(i, ..) if *i == id))
            .await
        {
            Event::Close(_, code, reason, _) => (code, reason),
            _ => unreachable!(),
        }
    }

    /// Takes what arrived without waiting, so that `log` is complete up to now.
    fn drain(&mut self) {
        while let Ok(event) = self.rx.try_recv() {
            self.log.push(event.clone());
            self.pending.push_back(event);
        }
    }

    /// The events of one connection, in order.
    fn of(&self, id: ConnectionId) -> Vec<&Event> {
        self.log.iter().filter(|e| e.id() == id).collect()
    }

    /// How many times `on_close` ran for `id`.
    fn closes(&self, id: ConnectionId) -> usize {
        self.of(id)
            .iter()
            .filter(|e| matches!(e, Event::Close(..)))
            .count()
    }
}

/// A hub served on 127.0.0.1:0 with `serve_with_shutdown`, with its probe's events.
type TestServer = HubServer<Events>;

/// The default routes: `/chat/{room}` and `/ws` with `switchboard::ws`.
fn default_routes(hub: &Hub, probe: Probe) -> Router {
    Router::new()
        .route("/chat/{room}", switchboard::ws(hub.clone(), probe.clone()))
        .route("/ws", switchboard::ws(hub.clone(), probe))
}

async fn start(config: HubConfig) -> TestServer {
    start_with(config, default_routes).await
}

async fn start_with(config: HubConfig, routes: impl FnOnce(&Hub, Probe) -> Router) -> TestServer {
    let hub = Hub::new(config);
    let (probe, events) = probe();
    let app = routes(&hub, probe);
    serve(hub, app, events).await
}

/// The default routes of `hub` served with plain `axum::serve`, which knows nothing of the
/// hub (it keeps accepting while the hub drains); with `connect_info`, as
/// `into_make_service_with_connect_info`. Returns the address, the probe's events and the
/// server's task.
async fn serve_with_axum(
    hub: &Hub,
    connect_info: bool,
) -> (SocketAddr, Events, JoinHandle<io::Result<()>>) {
    let (probe, events) = probe();
    let app = default_routes(hub, probe);
    let (listener, addr) = listen().await;
    let served = if connect_info {
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        })
    } else {
        tokio::spawn(async move { axum::serve(listener, app).await })
    };
    (addr, events, served)
}

fn config() -> HubConfig {
    // Tests that close connections should not wait the default 5 s for lingering.
    HubConfig::default().close_timeout(Duration::from_secs(2))
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// The status and headers of a refused upgrade.
async fn refused(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> http::Response<()> {
    match try_connect(addr, path, headers).await {
        Ok(_) => panic!("{path} {headers:?}: upgrade accepted, expected a refusal"),
        Err(tungstenite::Error::Http(response)) => response.map(|_| ()),
        Err(error) => panic!("{path} {headers:?}: {error}"),
    }
}

/// The next message the server sent (pings and pongs included).
async fn next(client: &mut Client) -> TMessage {
    within("client message", client.next())
        .await
        .expect("connection open")
        .unwrap()
}

/// The next text message, skipping keepalive pings.
async fn next_text(client: &mut Client) -> String {
    loop {
        match next(client).await {
            TMessage::Text(text) => return text.to_string(),
            TMessage::Ping(_) | TMessage::Pong(_) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Reads to the end of the connection, then hangs up; returns the close frame the
/// server sent. (The server waits for the client's end of stream after the close
/// handshake, up to `close_timeout`, before it reports `on_close`.)
async fn close_received(mut client: Client) -> Option<TCloseFrame> {
    let mut close = None;
    while let Some(message) = within("client end", client.next()).await {
        match message {
            Ok(TMessage::Close(frame)) => close = frame,
            Ok(TMessage::Ping(_) | TMessage::Pong(_)) => {}
            // Data sent before the close may still be on its way.
            Ok(TMessage::Text(_) | TMessage::Binary(_)) => {}
            Ok(other) => panic!("expected the close frame, got {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(error) => panic!("{error}"),
        }
    }
    close
}

fn close_code(frame: &TCloseFrame) -> u16 {
    u16::from(frame.code)
}

/// Reads in the background until the text `end`; returns the messages before it, texts
/// as they are and binaries as `binary [bytes]`.
fn collect_until_end(mut client: Client) -> JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut texts = Vec::new();
        loop {
            match next(&mut client).await {
                TMessage::Text(text) if text.as_str() == "end" => return texts,
                TMessage::Text(text) => texts.push(text.to_string()),
                TMessage::Binary(data) => texts.push(format!("binary {:?}", &data[..])),
                TMessage::Ping(_) | TMessage::Pong(_) => {}
                other => panic!("expected data, got {other:?}"),
            }
        }
    })
}

/// Polls `cond` until it holds, failing after `STEP`: for state that changes without an
/// event to await (the registry after a connection's task ends).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether `event` is the `on_message` of `id` with the text `text`.
fn is_text(event: &Event, id: ConnectionId, text: &str) -> bool {
    matches!(event, Event::Message(i, Message::Text(t), _) if *i == id && t == text)
}

/// Reads `client` to its end; checks that the close frame it received and the `on_close`
/// of `id` both carry `code` and `reason`.
async fn assert_closed_with(
    server: &mut TestServer,
    client: Client,
    id: ConnectionId,
    code: u16,
    reason: &str,
) {
    let frame = close_received(client).await.unwrap();
    assert_eq!((close_code(&frame), frame.reason.as_str()), (code, reason));
    assert_eq!(
        server.events.close(id).await,
        (CloseCode(code), reason.to_owned())
    );
}

fn close_frame(code: u16, reason: &str) -> TMessage {
    TMessage::Close(Some(TCloseFrame {
        code: TCloseCode::from(code),
        reason: reason.into(),
    }))
}

// ---------------------------------------------------------------------------------------
// 1. Registration
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
struct User {
    name: String,
}

/// Middleware that authenticates from the `token` query and puts the user in the
/// request's extensions, for the connection's assigns.
async fn authenticate(mut request: Request, next: Next) -> axum::response::Response {
    let query = request.uri().query().unwrap_or_default().to_owned();
    if query.contains("token=secret") {
        request.extensions_mut().insert(User {
            name: "alice".into(),
        });
    }
    next.run(request).await
}

#[tokio::test]
async fn route_carries_params_query_assigns_and_remote_addr() {
    let mut server = start_with(config(), |hub, probe| {
        Router::new()
            .route("/chat/{room}", switchboard::ws(hub.clone(), probe))
            .layer(axum::middleware::from_fn(authenticate))
    })
    .await;

    let (mut client, local) = try_connect(
        server.addr,
        "/chat/lobby%201?token=secret&greeting=hello%20world",
        &[],
    )
    .await
    .unwrap();
    let conn = server.events.open().await;
    assert_eq!(conn.param("room"), Some("lobby 1"));
    assert_eq!(conn.query("token"), Some("secret"));
    assert_eq!(conn.query("greeting"), Some("hello world"));
    assert_eq!(conn.query("missing"), None);
    assert_eq!(conn.param("missing"), None);
    assert_eq!(
        conn.assigned::<User>(),
        Some(User {
            name: "alice".into()
        })
    );
    assert_eq!(conn.assigned::<String>(), None);
    assert_eq!(conn.remote_addr(), Some(local));
    assert!(conn.in_room("lobby 1"));

    // Without the token the middleware inserts nothing.
    let _anonymous = connect(server.addr, "/chat/x").await;
    let anonymous = server.events.open().await;
    assert_eq!(anonymous.assigned::<User>(), None);
    assert_eq!(anonymous.query("token"), None);

    client.send(TMessage::text("echo hi")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "hi");
}

/// Under plain `axum::serve` (hyper's auto HTTP/1–HTTP/2 builder wraps the socket), the
/// address still reaches the connection: from the socket, or from `ConnectInfo`.
#[tokio::test]
async fn remote_addr_is_known_under_axum_serve() {
    let hub = Hub::new(config());
    let (addr, mut events, served) = serve_with_axum(&hub, true).await;
    let (_client, local) = try_connect(addr, "/ws", &[]).await.unwrap();
    let conn = events.open().await;
    assert_eq!(conn.remote_addr(), Some(local));
    served.abort();
}

#[tokio::test]
async fn extractor_registers_after_the_application_decides() {
    // The extractor form: authenticate before registering, refuse with 401 otherwise.
    let mut server = start_with(config(), |hub, probe| {
        let hub = hub.clone();
        Router::new().route(
            "/rooms/{room}",
            get(move |upgrade: HubUpgrade, uri: http::Uri| {
                let (hub, probe) = (hub.clone(), probe.clone());
                async move {
                    if uri.query() != Some("token=ok") {
                        return StatusCode::UNAUTHORIZED.into_response();
                    }
                    upgrade.register(&hub, probe).await.into_response()
                }
            }),
        )
    })
    .await;

    let refusal = refused(server.addr, "/rooms/a?token=bad", &[]).await;
    assert_eq!(refusal.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(server.hub.connection_count(), 0);

    let mut client = connect(server.addr, "/rooms/a?token=ok").await;
    let conn = server.events.open().await;
    assert_eq!(conn.param("room"), Some("a"));
    assert_eq!(server.hub.room_size("a"), 1);
    assert_eq!(server.hub.connection(conn.id()).unwrap().id(), conn.id());
    client.send(TMessage::text("echo extracted")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "extracted");
}

#[tokio::test]
async fn refuse_answers_101_then_closes_with_the_code_a_browser_can_read() {
    // A 401 before the upgrade reaches a page as 1006; a close code after the 101 does
    // not.
    let server = start_with(config(), |hub, probe| {
        let hub = hub.clone();
        Router::new().route(
            "/rooms/{room}",
            get(move |upgrade: HubUpgrade, uri: http::Uri| {
                let (hub, probe) = (hub.clone(), probe.clone());
                async move {
                    match uri.query() {
                        Some("token=ok") => upgrade.register(&hub, probe).await.into_response(),
                        Some("token=old") => upgrade
                            .refuse(&hub, CloseCode::TOKEN_EXPIRED, "token expired")
                            .into_response(),
                        _ => upgrade
                            .protocols(&["phoenix"])
                            .refuse(&hub, CloseCode::UNAUTHORIZED, "unauthorized")
                            .into_response(),
                    }
                }
            }),
        )
    })
    .await;
    let protocols = [("sec-websocket-protocol", "phoenix")];
    // tokio-tungstenite, like a browser, fails a 101 that selects none of its
    // protocols: the refusal keeps the selection.
    let (client, _) = try_connect(server.addr, "/rooms/a?token=bad", &protocols)
        .await
        .unwrap();
    let frame = close_received(client).await.unwrap();
    assert_eq!(
        (close_code(&frame), frame.reason.as_str()),
        (3000, "unauthorized")
    );
    let client = connect(server.addr, "/rooms/a?token=old").await;
    let frame = close_received(client).await.unwrap();
    assert_eq!(
        (close_code(&frame), frame.reason.as_str()),
        (4401, "token expired")
    );
    // Nothing was registered for them.
    assert_eq!(server.hub.connection_count(), 0);
}

/// Refuses in `on_open` what the route let through: the other way for a [`Handler`].
struct Gate;

impl Handler for Gate {
    async fn on_open(&self, conn: &Connection) {
        if conn.query("token") != Some("ok") {
            let _ = conn.close(CloseCode::UNAUTHORIZED, "unauthorized");
        }
    }
}

#[tokio::test]
async fn a_handler_refuses_in_on_open_by_closing_before_the_101() {
    let hub = Hub::new(config());
    let app = Router::new().route("/ws", switchboard::ws(hub.clone(), Gate));
    let server = serve(hub, app, ()).await;
    let refused = connect(server.addr, "/ws?token=bad").await;
    let frame = close_received(refused).await.unwrap();
    assert_eq!(
        (close_code(&frame), frame.reason.as_str()),
        (3000, "unauthorized")
    );
    let mut allowed = connect(server.addr, "/ws?token=ok").await;
    allowed.send(TMessage::text("hi")).await.unwrap();
    eventually("the refused one gone", || {
        server.hub.connection_count() == 1
    })
    .await;
}

#[tokio::test]
async fn foreign_origin_is_refused_with_403_by_default() {
    let mut server = start(config()).await;
    let addr = server.addr;
    let refusal = refused(addr, "/ws", &[("origin", "http://evil.example")]).await;
    assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
    // Same host and port as the Host header: allowed; no Origin (not a browser): allowed.
    let same = format!("http://{addr}");
    let _same = try_connect(addr, "/ws", &[("origin", &same)])
        .await
        .unwrap();
    server.events.open().await;
    let _no_origin = try_connect(addr, "/ws", &[]).await.unwrap();
    server.events.open().await;
    // Same host, other port: another origin.
    let other_port = format!("http://127.0.0.1:{}", addr.port() ^ 1);
    let refusal = refused(addr, "/ws", &[("origin", &other_port)]).await;
    assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
    assert_eq!(server.hub.connection_count(), 2);
}

#[tokio::test]
async fn origin_list_allows_exactly_its_origins() {
    let config = config().allowed_origins(Origins::List(vec!["https://good.example".into()]));
    let mut server = start(config).await;
    let addr = server.addr;
    let _good = try_connect(addr, "/ws", &[("origin", "https://good.example")])
        .await
        .unwrap();
    server.events.open().await;
    for origin in ["https://evil.example", &format!("http://{addr}")] {
        let refusal = refused(addr, "/ws", &[("origin", origin)]).await;
        assert_eq!(refusal.status(), StatusCode::FORBIDDEN, "{origin}");
    }
    assert_eq!(server.hub.connection_count(), 1);
}

#[tokio::test]
async fn origin_list_can_keep_same_origin() {
    let config =
        config().allowed_origins(Origins::SameOriginAnd(vec!["https://good.example".into()]));
    let mut server = start(config).await;
    let addr = server.addr;
    for origin in ["https://good.example", &format!("http://{addr}")] {
        let _client = try_connect(addr, "/ws", &[("origin", origin)])
            .await
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        server.events.open().await;
    }
    let refusal = refused(addr, "/ws", &[("origin", "https://evil.example")]).await;
    assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_full_hub_answers_503_with_retry_after_until_a_slot_frees() {
    let config = config().max_connections(1);
    let mut server = start(config).await;
    let mut first = connect(server.addr, "/ws").await;
    let conn = server.events.open().await;

    let refusal = refused(server.addr, "/ws", &[]).await;
    assert_eq!(refusal.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry: u64 = refusal.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0);
    assert_eq!(server.hub.connection_count(), 1);

    // The slot comes back when the first connection ends.
    first.close(None).await.unwrap();
    close_received(first).await;
    server.events.close(conn.id()).await;
    let deadline = Instant::now() + STEP;
    loop {
        match try_connect(server.addr, "/ws", &[]).await {
            Ok(_) => break,
            Err(tungstenite::Error::Http(r)) if r.status() == 503 => {
                assert!(Instant::now() < deadline, "the slot was never released");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(error) => panic!("{error}"),
        }
    }
    server.events.open().await;
}

#[tokio::test]
async fn malformed_handshakes_are_refused_before_the_upgrade() {
    let server = start(config()).await;
    let no_key = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                  Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let (response, _, _) = http_exchange(server.addr, no_key.as_bytes()).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let old_version = handshake_request("/ws", "").replace("Version: 13", "Version: 8");
    let (response, _, _) = http_exchange(server.addr, old_version.as_bytes()).await;
    assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(response.headers()["sec-websocket-version"], "13");

    let plain_get = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let (response, _, _) = http_exchange(server.addr, plain_get.as_bytes()).await;
    assert!(
        matches!(response.status().as_u16(), 400 | 426),
        "{}",
        response.status()
    );
    assert_eq!(server.hub.connection_count(), 0);
    assert_eq!(server.hub.metrics().connections, 0);
}

#[tokio::test]
async fn a_draining_hub_refuses_upgrades_with_503() {
    // Served by plain `axum::serve`, which keeps accepting while the hub drains.
    let hub = Hub::new(config());
    let (addr, _events, served) = serve_with_axum(&hub, false).await;
    within(
        "shutdown of an idle hub",
        hub.shutdown(Duration::from_secs(1)),
    )
    .await;
    assert!(hub.is_draining());
    let refusal = refused(addr, "/ws", &[]).await;
    assert_eq!(refusal.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refusal.headers().contains_key("retry-after"));
    served.abort();
}

// ---------------------------------------------------------------------------------------
// 2. Handler callbacks
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callbacks_of_each_connection_run_in_order() {
    const CLIENTS: u16 = 5;
    const MESSAGES: usize = 30;
    let mut server = start(config()).await;
    let addr = server.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(async move {
                let mut client = connect(addr, &format!("/chat/r{i}")).await;
                for n in 0..MESSAGES {
                    client
                        .send(TMessage::text(format!("{i}:{n}")))
                        .await
                        .unwrap();
                }
                client
                    .send(close_frame(4001 + i, &format!("bye {i}")))
                    .await
                    .unwrap();
                close_received(client).await
            })
        })
        .collect();
    for client in clients {
        let echoed = within("client", client).await.unwrap().unwrap();
        assert!((4001..4001 + CLIENTS).contains(&close_code(&echoed)));
    }
    let mut ids = Vec::new();
    for _ in 0..CLIENTS {
        ids.push(server.events.open().await.id());
    }
    for &id in &ids {
        server.events.close(id).await;
    }
    server.events.drain();
    for id in ids {
        let events = server.events.of(id);
        assert!(
            matches!(
                events.first(),
                Some(Event::Open(_, ConnectionState::Connecting))
            ),
            "{events:?}"
        );
        let Some(Event::Message(_, Message::Text(first), _)) = events.get(1) else {
            panic!("{events:?}")
        };
        let i: u16 = first.split_once(':').unwrap().0.parse().unwrap();
        let texts: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::Message(_, Message::Text(t), state) => {
                    assert_eq!(*state, ConnectionState::Open);
                    Some(t.to_string())
                }
                _ => None,
            })
            .collect();
        let expected: Vec<String> = (0..MESSAGES).map(|n| format!("{i}:{n}")).collect();
        assert_eq!(texts, expected);
        match events.last() {
            Some(Event::Close(_, code, reason, state)) => {
                assert_eq!(*code, CloseCode(4001 + i));
                assert_eq!(reason, &format!("bye {i}"));
                assert_eq!(*state, ConnectionState::Closed);
            }
            other => panic!("last event {other:?}"),
        }
        assert_eq!(events.len(), 2 + MESSAGES, "{events:?}");
        assert_eq!(server.events.closes(id), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_callback_delays_only_its_own_connection() {
    let mut server = start(config()).await;
    let mut slow = connect(server.addr, "/chat/room").await;
    let slow_conn = server.events.open().await;
    let mut fast = connect(server.addr, "/chat/room").await;
    let fast_conn = server.events.open().await;

    slow.send(TMessage::text("block")).await.unwrap();
    slow.send(TMessage::text("after block")).await.unwrap();
    server
        .events
        .wait(
            "slow blocked",
            |e| matches!(e, Event::Blocked(id) if *id == slow_conn.id()),
        )
        .await;

    // While the slow connection's callback waits, the other connection is served...
    for n in 0..10 {
        fast.send(TMessage::text(format!("echo {n}")))
            .await
            .unwrap();
        assert_eq!(next_text(&mut fast).await, n.to_string());
    }
    // ...and messages sent to the slow one, by others and by the hub, reach its client.
    fast.send(TMessage::text("echo to-self")).await.unwrap();
    let report = server
        .hub
        .to("room")
        .except(fast_conn.id())
        .send_text("to the slow one");
    assert_eq!(report.queued, 1);
    assert_eq!(next_text(&mut slow).await, "to the slow one");
    slow_conn.send_text("direct");
    assert_eq!(next_text(&mut slow).await, "direct");
    assert_eq!(next_text(&mut fast).await, "to-self");

    // The slow connection's own next message waits for its callback.
    server.events.drain();
    assert!(
        !server
            .events
            .log
            .iter()
            .any(|e| is_text(e, slow_conn.id(), "after block")),
        "a later message of the blocked connection ran before the callback ended"
    );
    server.events.gate.add_permits(1);
    server
        .events
        .wait("slow resumes", |e| {
            is_text(e, slow_conn.id(), "after block")
        })
        .await;
}

#[tokio::test]
async fn client_dropping_tcp_reports_1006_once() {
    let mut server = start(config()).await;
    let client = connect(server.addr, "/chat/r").await;
    let conn = server.events.open().await;
    drop(client);
    let (code, _) = server.events.close(conn.id()).await;
    assert_eq!(code, CloseCode::ABNORMAL);
    eventually("unregistered", || {
        server.hub.connection(conn.id()).is_none()
    })
    .await;
    assert_eq!(server.hub.room_size("r"), 0);
    server.events.drain();
    assert_eq!(server.events.closes(conn.id()), 1);
    assert_eq!(conn.state(), ConnectionState::Closed);
}

#[tokio::test]
async fn client_close_reports_the_clients_code_and_reason() {
    let mut server = start(config()).await;
    let mut client = connect(server.addr, "/ws").await;
    let conn = server.events.open().await;
    client.send(close_frame(4321, "client bye")).await.unwrap();
    let echoed = close_received(client).await.unwrap();
    assert_eq!(close_code(&echoed), 4321);
    let (code, reason) = server.events.close(conn.id()).await;
    assert_eq!((code, reason.as_str()), (CloseCode(4321), "client bye"));
    eventually("unregistered", || server.hub.connection_count() == 0).await;
    server.events.drain();
    assert_eq!(server.events.closes(conn.id()), 1);
    assert!(
        !server
            .events
            .of(conn.id())
            .iter()
            .any(|e| matches!(e, Event::Error(..))),
        "a clean close is not an error"
    );
}

#[tokio::test]
async fn server_close_reports_our_code_and_the_client_receives_it() {
    let mut server = start(config()).await;

    // From inside a callback.
    let mut client = connect(server.addr, "/ws").await;
    let conn = server.events.open().await;
    client.send(TMessage::text("close 4000 bye")).await.unwrap();
    assert_closed_with(&mut server, client, conn.id(), 4000, "bye").await;

    // From another task, through the handle.
    let client = connect(server.addr, "/ws").await;
    let conn = server.events.open().await;
    let handle = conn.clone();
    tokio::spawn(async move { handle.close(CloseCode(4002), "from a task") })
        .await
        .unwrap()
        .unwrap();
    assert_closed_with(&mut server, client, conn.id(), 4002, "from a task").await;
    server.events.drain();
    assert_eq!(server.events.closes(conn.id()), 1);
}

#[tokio::test]
async fn protocol_violation_reports_on_error_then_1002() {
    let mut server = start(config()).await;
    let (mut tcp, mut reader) = raw_connect(server.addr, "/ws").await;
    let conn = server.events.open().await;
    // An unmasked text frame: "The server MUST close the connection upon receiving a
    // frame that is not masked" (RFC 6455 §5.1).
    tcp.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    match reader.message(&mut tcp).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::PROTOCOL_ERROR),
        other => panic!("expected a close frame, got {other:?}"),
    }
    drop(tcp);
    let (code, _) = server.events.close(conn.id()).await;
    assert_eq!(code, CloseCode::PROTOCOL_ERROR);
    server.events.drain();
    let events = server.events.of(conn.id());
    let error = events
        .iter()
        .position(|e| matches!(e, Event::Error(_, error) if error == "peer broke the protocol"));
    let close = events.iter().position(|e| matches!(e, Event::Close(..)));
    assert!(
        matches!((error, close), (Some(e), Some(c)) if e < c),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::Message(..))),
        "the bad frame must not reach on_message"
    );
    assert_eq!(server.events.closes(conn.id()), 1);
}

#[tokio::test]
async fn a_message_over_max_message_size_closes_with_1009() {
    let config = config().max_message_size(1024);
    let mut server = start(config).await;
    let mut client = connect(server.addr, "/ws").await;
    let conn = server.events.open().await;
    client.send(TMessage::text("x".repeat(1024))).await.unwrap();
    server
        .events
        .wait(
            "message at the limit",
            |e| matches!(e, Event::Message(_, m, _) if m.len() == 1024),
        )
        .await;
    client.send(TMessage::text("x".repeat(1025))).await.unwrap();
    let frame = close_received(client).await.unwrap();
    assert_eq!(close_code(&frame), 1009);
    let (code, _) = server.events.close(conn.id()).await;
    assert_eq!(code, CloseCode::MESSAGE_TOO_BIG);
    server.events.drain();
    let events = server.events.of(conn.id());
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Message(_, m, _) if m.len() > 1024)),
        "the oversized message reached on_message"
    );
    assert!(events.iter().any(|e| matches!(e, Event::Error(..))));
}

#[tokio::test]
async fn pings_from_the_client_reach_on_ping_and_are_answered() {
    let mut server = start(config()).await;
    let mut client = connect(server.addr, "/ws").await;
    let conn = server.events.open().await;
    client
        .send(TMessage::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    match next(&mut client).await {
        TMessage::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected the pong, got {other:?}"),
    }
    let ping = server
        .events
        .wait(
            "on_ping",
            |e| matches!(e, Event::Ping(id, _) if *id == conn.id()),
        )
        .await;
    assert!(matches!(ping, Event::Ping(_, p) if p == b"are you there"));
}

// ---------------------------------------------------------------------------------------
// 3. The connection handle
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn ids_are_unique_and_name_the_hub() {
    let mut server = start(config()).await;
    let mut clients = Vec::new();
    let mut ids = HashSet::new();
    for _ in 0..20 {
        clients.push(connect(server.addr, "/ws").await);
        let conn = server.events.open().await;
        assert_eq!(conn.id().node(), server.hub.node());
        assert!(ids.insert(conn.id()), "duplicate id {}", conn.id());
    }
    assert_eq!(server.hub.connection_count(), 20);
    let mut listed: Vec<_> = server.hub.connections().iter().map(|c| c.id()).collect();
    listed.sort_unstable();
    let mut expected: Vec<_> = ids.into_iter().collect();
    expected.sort_unstable();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn state_moves_from_connecting_to_open_to_closed() {
    let mut server = start(config()).await;
    let mut client = connect(server.addr, "/ws").await;
    let opened = server
        .events
        .wait("open", |e| matches!(e, Event::Open(..)))
        .await;
    let Event::Open(conn, in_on_open) = opened else {
        unreachable!()
    };
    assert_eq!(in_on_open, ConnectionState::Connecting);
    client.send(TMessage::text("hello")).await.unwrap();
    let message = server
        .events
        .wait("message", |e| matches!(e, Event::Message(..)))
        .await;
    assert!(matches!(
        message,
        Event::Message(_, _, ConnectionState::Open)
    ));
    assert_eq!(conn.state(), ConnectionState::Open);

    conn.close(CloseCode::NORMAL, "").unwrap();
    // The close is under way until the client answers it.
    eventually("closing", || conn.state() != ConnectionState::Open).await;
    assert_eq!(
        conn.try_send("too late"),
        Err(SendError::Closed(Message::text("too late")))
    );
    assert_eq!(
        conn.send_ping(&b"p"[..]),
        Err(SendError::Closed(Message::Ping(b"p"[..].into())))
    );
    assert!(matches!(
        conn.close(CloseCode::NORMAL, ""),
        Err(SendError::Closed(Message::Close(Some(_))))
    ));
    close_received(client).await;
    let closed = server
        .events
        .wait("close", |e| matches!(e, Event::Close(..)))
        .await;
    assert!(matches!(
        closed,
        Event::Close(_, _, _, ConnectionState::Closed)
    ));
    assert_eq!(conn.state(), ConnectionState::Closed);
    let refused = conn.refused_messages();
    assert_eq!(refused, 3, "every refusal while closing is counted");
    // Fire-and-forget sends are refused and counted the same way.
    conn.send_text("after the end");
    conn.send_binary(&b"x"[..]);
    assert_eq!(conn.refused_messages(), refused + 2);
    let error = conn
        .try_send(Message::binary(&b"retry me"[..]))
        .unwrap_err();
    assert_eq!(error.to_string(), "connection is closed");
    assert_eq!(error.into_message(), Message::binary(&b"retry me"[..]));
    assert_eq!(
        conn.send_pong(&b""[..]),
        Err(SendError::Closed(Message::Pong(Default::default())))
    );
    assert_eq!(conn.refused_messages(), refused + 4);
    assert_eq!(server.hub.metrics().refused_messages, refused + 4);
    assert_eq!(conn.dropped_messages(), 0, "refusals are not drops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_work_from_other_tasks_and_threads() {
    let mut server = start(config()).await;
    let mut client = connect(server.addr, "/ws").await;
    let conn = server.events.open().await;

    let handle = conn.clone();
    tokio::spawn(async move {
        handle.send_text("from a task");
        handle.send_binary(vec![1, 2, 3]);
        handle.send_ping(&b"ping!"[..]).unwrap();
    })
    .await
    .unwrap();
    let handle = conn.clone();
    std::thread::spawn(move || {
        handle.send_text("from a thread");
        handle.send_pong(&b"unsolicited"[..]).unwrap();
        handle.try_send(Message::binary(vec![4])).unwrap();
        assert_eq!(
            handle.send_ping(vec![0; 126]),
            Err(SendError::ControlFrameTooLong(Message::Ping(
                vec![0; 126].into()
            )))
        );
    })
    .join()
    .unwrap();

    assert_eq!(next(&mut client).await, TMessage::text("from a task"));
    assert_eq!(next(&mut client).await, TMessage::binary(vec![1, 2, 3]));
    assert_eq!(
        next(&mut client).await,
        TMessage::Ping(b"ping!".to_vec().into())
    );
    assert_eq!(next(&mut client).await, TMessage::text("from a thread"));
    assert_eq!(
        next(&mut client).await,
        TMessage::Pong(b"unsolicited".to_vec().into())
    );
    assert_eq!(next(&mut client).await, TMessage::binary(vec![4]));
    // tungstenite answered the ping while reading: the server's on_pong sees it.
    let pong = server
        .events
        .wait("on_pong", |e| matches!(e, Event::Pong(..)))
        .await;
    assert!(matches!(pong, Event::Pong(_, p) if p == b"ping!"));

    // A close reason over 123 bytes (a payload over 125, RFC 6455 §5.5) is refused,
    // not cut: the connection stays open, and the frame comes back whole.
    let long = "é".repeat(62);
    match conn.close(CloseCode::NORMAL, long.as_str()) {
        Err(SendError::ControlFrameTooLong(Message::Close(Some(frame)))) => {
            assert_eq!(frame.reason.as_str(), long);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(conn.state(), ConnectionState::Open);
    assert_eq!(conn.refused_messages(), 2, "both oversized control frames");
    conn.send_text("still open");
    assert_eq!(next(&mut client).await, TMessage::text("still open"));

    let handle = conn.clone();
    std::thread::spawn(move || handle.close(CloseCode(4444), "thread closes"))
        .join()
        .unwrap()
        .unwrap();
    assert_closed_with(&mut server, client, conn.id(), 4444, "thread closes").await;
}

#[tokio::test]
async fn metadata_entries_list_every_pair_in_the_order_set() {
    let mut server = start(config()).await;
    let _client = connect(server.addr, "/ws").await;
    let conn = server.events.open().await;
    assert!(conn.metadata_entries().is_empty());
    for (key, value) in [("name", "alice"), ("role", "admin"), ("team", "red")] {
        conn.set_metadata(key, value);
    }
    conn.set_metadata("role", "owner");
    conn.remove_metadata("name");
    let pairs = |entries: Vec<(String, String)>| {
        entries
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(pairs(conn.metadata_entries()), ["role=owner", "team=red"]);
}

#[tokio::test]
async fn metadata_rooms_and_buffered_amount() {
    let mut server = start(config()).await;
    let _client = connect(server.addr, "/chat/first").await;
    let conn = server.events.open().await;

    assert_eq!(conn.metadata("name"), None);
    conn.set_metadata("name", "alice");
    conn.set_metadata("role", "admin");
    conn.set_metadata("name", "bob");
    assert_eq!(conn.metadata("name").as_deref(), Some("bob"));
    assert_eq!(conn.remove_metadata("name").as_deref(), Some("bob"));
    assert_eq!(conn.remove_metadata("name"), None);
    assert_eq!(conn.metadata("name"), None);
    assert_eq!(conn.metadata("role").as_deref(), Some("admin"));
    // Another handle of the same connection sees the same metadata.
    let again = server.hub.connection(conn.id()).unwrap();
    assert_eq!(again.metadata("role").as_deref(), Some("admin"));

    conn.join("second");
    conn.join("second");
    let mut rooms = conn.rooms();
    rooms.sort();
    assert_eq!(rooms, ["first", "second"]);
    assert!(conn.in_room("first") && conn.in_room("second"));
    assert!(!conn.in_room("third"));
    conn.leave("first");
    conn.leave("never joined");
    assert_eq!(conn.rooms(), ["second"]);
    assert!(!conn.in_room("first"));
}

/// `buffered_amount` is what is queued and not yet written: once the client has read
/// everything, nothing is buffered.
#[tokio::test]
async fn buffered_amount_returns_to_zero_once_written() {
    let mut server = start(config()).await;
    let mut client = connect(server.addr, "/ws").await;
    let conn = server.events.open().await;
    assert_eq!(conn.buffered_amount(), 0);
    for n in 0..10 {
        conn.send_text(format!("message {n}"));
    }
    for n in 0..10 {
        assert_eq!(next_text(&mut client).await, format!("message {n}"));
    }
    // Everything was written before the client could read it; the count must follow
    // without another send to wake the connection.
    let deadline = Instant::now() + Duration::from_secs(2);
    while conn.buffered_amount() != 0 {
        assert!(
            Instant::now() < deadline,
            "{} bytes still counted as buffered after the client read everything",
            conn.buffered_amount()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(conn.dropped_messages(), 0);
}

// ---------------------------------------------------------------------------------------
// 4. Rooms and broadcast
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn rooms_broadcasts_and_reports() {
    let mut server = start(config()).await;
    let addr = server.addr;
    let a = connect(addr, "/chat/red").await;
    let conn_a = server.events.open().await;
    let b = connect(addr, "/chat/red").await;
    let conn_b = server.events.open().await;
    let mut c = connect(addr, "/chat/blue").await;
    let conn_c = server.events.open().await;
    let hub = &server.hub;

    assert_eq!(hub.connection_count(), 3);
    assert_eq!(hub.room_size("red"), 2);
    assert_eq!(hub.room_size("blue"), 1);
    assert_eq!(hub.room_size("green"), 0);
    let mut rooms = hub.rooms();
    rooms.sort();
    assert_eq!(rooms, ["blue", "red"]);
    let mut red: Vec<_> = hub.room_members("red").iter().map(|c| c.id()).collect();
    red.sort_unstable();
    let mut expected = vec![conn_a.id(), conn_b.id()];
    expected.sort_unstable();
    assert_eq!(red, expected);
    assert!(hub.room_members("green").is_empty());
    assert_eq!(hub.metrics().rooms, 2);
    assert_eq!(hub.metrics().connections, 3);

    let queued = |n| BroadcastReport {
        queued: n,
        ..BroadcastReport::default()
    };
    assert_eq!(hub.to("red").send_text("1 red"), queued(2));
    assert_eq!(
        hub.to("red").except(conn_a.id()).send_text("2 red but a"),
        queued(1)
    );
    assert_eq!(hub.to("green").send_text("nobody"), queued(0));
    assert_eq!(hub.broadcast(Message::text("3 all")), queued(3));
    assert_eq!(
        hub.broadcast_except(Message::text("4 all but b"), conn_b.id()),
        queued(2)
    );
    assert_eq!(hub.send_to(conn_c.id(), "5 c only"), queued(1));
    assert_eq!(hub.all().send_binary(vec![6]), queued(3));
    // Control messages are not broadcast.
    assert_eq!(
        hub.to("red").send(Message::Ping(Default::default())),
        queued(0)
    );
    // A member that joins by message gets the room's next broadcasts.
    c.send(TMessage::text("join red")).await.unwrap();
    server
        .events
        .wait("c joined", |e| is_text(e, conn_c.id(), "join red"))
        .await;
    assert_eq!(hub.room_size("red"), 3);
    assert_eq!(hub.to("red").send_text("7 red"), queued(3));
    c.send(TMessage::text("leave red")).await.unwrap();
    server
        .events
        .wait("c left", |e| is_text(e, conn_c.id(), "leave red"))
        .await;
    assert_eq!(hub.to("red").send_text("8 red"), queued(2));
    hub.broadcast(Message::text("end"));

    let a = collect_until_end(a);
    let b = collect_until_end(b);
    let c = collect_until_end(c);
    assert_eq!(
        within("a", a).await.unwrap(),
        [
            "1 red",
            "3 all",
            "4 all but b",
            "binary [6]",
            "7 red",
            "8 red"
        ]
    );
    assert_eq!(
        within("b", b).await.unwrap(),
        [
            "1 red",
            "2 red but a",
            "3 all",
            "binary [6]",
            "7 red",
            "8 red"
        ]
    );
    assert_eq!(
        within("c", c).await.unwrap(),
        ["3 all", "4 all but b", "5 c only", "binary [6]", "7 red"]
    );
    assert!(hub.connection(conn_a.id()).is_some());
    // Numbers start at 1; the same number on another node is another connection.
    assert!(hub.connection(ConnectionId::new(hub.node(), 0)).is_none());
    let elsewhere = ConnectionId::new(NodeId::random(), conn_a.id().sequence());
    assert!(hub.connection(elsewhere).is_none());
}

#[tokio::test]
async fn broadcast_report_counts_closing_connections() {
    let mut server = start(config()).await;
    // The client is never read, so the server's close handshake stays under way.
    let _closing_client = connect(server.addr, "/chat/r").await;
    let closing = server.events.open().await;
    let mut open_client = connect(server.addr, "/chat/r").await;
    server.events.open().await;
    closing.close(CloseCode::NORMAL, "").unwrap();
    assert!(server.hub.connection(closing.id()).is_some());
    let report = server.hub.to("r").send_text("hello");
    assert_eq!(
        report,
        BroadcastReport {
            queued: 1,
            dropped: 0,
            closed: 1
        }
    );
    assert_eq!(next_text(&mut open_client).await, "hello");
}

#[tokio::test]
async fn rooms_are_removed_when_empty_and_left_on_close() {
    let mut server = start(config().max_rooms_per_connection(10_000)).await;
    let mut client = connect(server.addr, "/ws").await;
    let conn = server.events.open().await;
    let hub = &server.hub;
    for i in 0..10_000 {
        let room = format!("room-{i}");
        conn.join(&room);
        assert_eq!(hub.room_size(&room), 1);
        conn.leave(&room);
    }
    assert!(hub.rooms().is_empty());
    assert_eq!(hub.metrics().rooms, 0);
    assert!(conn.rooms().is_empty());

    // Joined rooms are all left when the connection ends.
    for i in 0..10_000 {
        conn.join(&format!("room-{i}"));
    }
    assert_eq!(hub.rooms().len(), 10_000);
    assert_eq!(conn.rooms().len(), 10_000);
    client.close(None).await.unwrap();
    close_received(client).await;
    server.events.close(conn.id()).await;
    eventually("left every room", || hub.connection_count() == 0).await;
    assert!(hub.rooms().is_empty());
    assert_eq!(hub.room_size("room-0"), 0);
    assert!(conn.rooms().is_empty());
}

/// Joins, leaves and broadcasts from many tasks at once, with real clients counting what
/// they receive: members for the whole time get every broadcast exactly once and in
/// each sender's order; members who came and went get no duplicate and nothing out of
/// order; the registry ends consistent with the membership.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_joins_leaves_and_broadcasts_lose_and_duplicate_nothing() {
    const STAYERS: usize = 4;
    const CHURNERS: usize = 6;
    const TRANSIENTS: usize = 6;
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 300;
    let mut server = start(config()).await;
    let addr = server.addr;
    let hub = server.hub.clone();

    let mut stayers = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..STAYERS {
        readers.push(collect_until_end(connect(addr, "/chat/main").await));
        stayers.push(server.events.open().await);
    }
    let mut churners = Vec::new();
    let mut churn_readers = Vec::new();
    for _ in 0..CHURNERS {
        churn_readers.push(collect_until_end(connect(addr, "/ws").await));
        churners.push(server.events.open().await);
    }

    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0..PER_SENDER {
                let report = hub.to("main").send_text(format!("{s}:{seq}"));
                assert_eq!(report.dropped, 0);
                assert!(report.queued >= STAYERS, "{report:?}");
                if seq % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for (i, conn) in churners.iter().enumerate() {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let side = format!("side-{i}");
            for _ in 0..200 {
                conn.join("main");
                conn.join(&side);
                tokio::task::yield_now().await;
                conn.leave("main");
                conn.leave(&side);
            }
            if i % 2 == 0 {
                conn.join("main");
            }
        }));
    }
    for (i, conn) in stayers.iter().enumerate() {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..200 {
                let room = format!("extra-{i}-{}", k % 7);
                conn.join(&room);
                tokio::task::yield_now().await;
                conn.leave(&room);
            }
        }));
    }
    // Connections that join and go away (leave-all on close) while all this runs.
    for _ in 0..TRANSIENTS {
        tasks.push(tokio::spawn(async move {
            let mut client = connect(addr, "/chat/main").await;
            client.close(None).await.unwrap();
            close_received(client).await;
        }));
    }
    for task in tasks {
        within("task", task).await.unwrap();
    }
    eventually("transients gone", || {
        hub.connection_count() == STAYERS + CHURNERS
    })
    .await;
    // Membership now that every task is done (before the clients hang up).
    let expected: HashSet<ConnectionId> = stayers
        .iter()
        .map(Connection::id)
        .chain(churners.iter().step_by(2).map(Connection::id))
        .collect();
    let members: HashSet<ConnectionId> = hub.room_members("main").iter().map(|c| c.id()).collect();
    assert_eq!(members, expected);
    assert_eq!(hub.room_size("main"), expected.len());
    for conn in stayers.iter().chain(&churners) {
        assert_eq!(conn.in_room("main"), expected.contains(&conn.id()));
        assert_eq!(
            conn.rooms().len(),
            usize::from(expected.contains(&conn.id()))
        );
    }
    assert_eq!(hub.rooms(), ["main"]);
    let report = hub.broadcast(Message::text("end"));
    assert_eq!(report.queued, STAYERS + CHURNERS);

    let in_order = |texts: &[String], s: usize| -> Vec<usize> {
        texts
            .iter()
            .filter_map(|t| t.split_once(':'))
            .filter(|(sender, _)| sender.parse::<usize>().unwrap() == s)
            .map(|(_, seq)| seq.parse().unwrap())
            .collect()
    };
    for reader in readers {
        let texts = within("stayer", reader).await.unwrap();
        assert_eq!(texts.len(), SENDERS * PER_SENDER);
        for s in 0..SENDERS {
            assert_eq!(
                in_order(&texts, s),
                (0..PER_SENDER).collect::<Vec<_>>(),
                "sender {s}"
            );
        }
    }
    for reader in churn_readers {
        let texts = within("churner", reader).await.unwrap();
        for s in 0..SENDERS {
            let seqs = in_order(&texts, s);
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "sender {s}: duplicated or reordered {seqs:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 7. Graceful shutdown
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_sends_1001_to_every_client_and_stops_accepting() {
    let mut server = start(config()).await;
    let addr = server.addr;
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let client = connect(addr, &format!("/chat/r{i}")).await;
        ids.push(server.events.open().await.id());
        clients.push(tokio::spawn(async move { close_received(client).await }));
    }
    server.stop.take().unwrap().send(()).unwrap();
    for client in clients {
        let frame = within("client", client).await.unwrap().unwrap();
        assert_eq!(close_code(&frame), 1001);
    }
    within("serve_with_shutdown returns", &mut server.served)
        .await
        .unwrap()
        .unwrap();
    for id in ids {
        assert_eq!(server.events.close(id).await.0, CloseCode::GOING_AWAY);
    }
    assert!(server.hub.is_draining());
    assert_eq!(server.hub.connection_count(), 0);
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the listener still accepts");
}

#[tokio::test]
async fn shutdown_for_a_restart_sends_1012_with_the_reconnect_window() {
    let config = config()
        .shutdown_close(CloseCode::SERVICE_RESTART)
        .reconnect_window(Duration::from_secs(1)..Duration::from_secs(10));
    let mut server = start(config).await;
    let client = connect(server.addr, "/ws").await;
    let id = server.events.open().await.id();
    let client = tokio::spawn(close_received(client));
    server.stop.take().unwrap().send(()).unwrap();
    let frame = within("client", client).await.unwrap().unwrap();
    let reason = "server restarting; retry in 1-10s";
    assert_eq!((close_code(&frame), frame.reason.as_str()), (1012, reason));
    assert_eq!(
        server.events.close(id).await,
        (CloseCode::SERVICE_RESTART, reason.to_owned())
    );
}

/// The status and body of `GET path`.
async fn http_get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let (response, body, _) = within(path, http_exchange(addr, request.as_bytes())).await;
    (response.status(), String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn ready_turns_503_once_shutdown_begins_while_health_stays_200() {
    let config = config().close_timeout(Duration::from_secs(5));
    let server = start_with(config, |hub, probe| {
        default_routes(hub, probe)
            .route("/health", switchboard::health())
            .route("/ready", switchboard::ready(hub.clone()))
    })
    .await;
    let addr = server.addr;
    assert!(server.hub.is_ready());
    assert_eq!(
        http_get(addr, "/ready").await,
        (StatusCode::OK, "ready".into())
    );
    // A client that never answers the close keeps the hub draining, and `serve` (whose
    // own signal has not come) keeps answering plain requests meanwhile.
    let (_silent, _reader) = raw_connect(addr, "/ws").await;
    let hub = server.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown(Duration::from_secs(5)).await });
    within("draining", async {
        while !server.hub.is_draining() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(!server.hub.is_ready());
    assert_eq!(
        http_get(addr, "/ready").await,
        (StatusCode::SERVICE_UNAVAILABLE, "draining".into())
    );
    assert_eq!(
        http_get(addr, "/health").await,
        (StatusCode::OK, "ok".into())
    );
    shutdown.abort();
}

#[tokio::test]
async fn shutdown_cuts_a_client_that_never_answers_after_close_timeout() {
    let config = config().close_timeout(Duration::from_millis(300));
    let mut server = start(config).await;
    let (mut silent, mut reader) = raw_connect(server.addr, "/ws").await;
    let silent_conn = server.events.open().await;
    let polite = connect(server.addr, "/ws").await;
    let polite_conn = server.events.open().await;
    let polite = tokio::spawn(async move { close_received(polite).await });

    let started = Instant::now();
    server.stop.take().unwrap().send(()).unwrap();
    assert_eq!(
        close_code(&within("polite", polite).await.unwrap().unwrap()),
        1001
    );
    assert_eq!(
        server.events.close(polite_conn.id()).await.0,
        CloseCode::GOING_AWAY
    );
    within("serve_with_shutdown returns", &mut server.served)
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "returned after {took:?}, before the close timeout"
    );
    assert!(took < Duration::from_secs(3), "returned after {took:?}");
    assert_eq!(
        server.events.close(silent_conn.id()).await.0,
        CloseCode::GOING_AWAY
    );
    // The silent client got the close frame, then the server closed the socket.
    match reader.message(&mut silent).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::GOING_AWAY),
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert_eof(&mut silent).await;
}
