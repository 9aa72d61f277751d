//! A hub reached without axum (this suite runs with `--no-default-features`): a plain
//! hyper service registers its upgrades with `HubUpgrade`, a bare `TcpListener` accept
//! loop with `StreamUpgrade::register`. Each gets the axum route's rules: the origin
//! allow-list (403), the connection limit and shutdown (503 with `Retry-After`), the
//! hub's message size and compression, `on_open` before the 101, and the route
//! parameters, query and assigns the caller supplies.

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use std::{convert::Infallible, future::Future, net::SocketAddr, time::Duration};
use switchboard::{
    CloseCode, Compression, HubUpgrade, Message,
    hub::{Connection, Handler, Hub, HubConfig, Origins},
    proto::handshake::http1 as wire,
    upgrade::{AcceptConfig, AcceptError, ResponseBody, StreamUpgrade},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
    task::JoinHandle,
};
use tokio_tungstenite::{
    WebSocketStream, client_async,
    tungstenite::{self, Message as TMessage, client::IntoClientRequest},
};

/// How long any single step may take before the test counts as hung.
const STEP: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// What the service or the accept loop found out about the request: a value it puts
/// into the request's extensions, for the connection's assigns.
#[derive(Clone, Debug, PartialEq)]
struct User(String);

/// Which server registered the connection: an assign the caller adds itself.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Via(&'static str);

/// What [`Chat`] saw.
#[derive(Debug)]
enum Event {
    /// `on_open`: the connection, with the assign it read there.
    Open(Connection, Option<User>),
    Close(CloseCode),
}

/// Joins the room named by the route parameter in `on_open` and greets with what it
/// knows there (room, query, assign); echoes every message.
struct Chat(UnboundedSender<Event>);

impl Handler for Chat {
    async fn on_open(&self, conn: &Connection) {
        let room = conn.param("room").unwrap_or("none").to_owned();
        conn.join(&room);
        let user = conn.assigned::<User>();
        let name = user.as_ref().map_or("nobody", |User(name)| name);
        let greeting = conn.query("greeting").unwrap_or("hi");
        conn.send_text(format!("{greeting} {name} in {room}"));
        let _ = self.0.send(Event::Open(conn.clone(), user));
    }

    async fn on_message(&self, conn: &Connection, message: Message) {
        conn.send(message);
    }

    async fn on_close(&self, _conn: &Connection, code: CloseCode, _reason: &str) {
        let _ = self.0.send(Event::Close(code));
    }
}

/// A server of a hub, hyper's or the bare accept loop; dropping it stops accepting.
struct Server {
    addr: SocketAddr,
    hub: Hub,
    events: UnboundedReceiver<Event>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn open(&mut self) -> (Connection, Option<User>) {
        match within("on_open", self.events.recv()).await {
            Some(Event::Open(conn, user)) => (conn, user),
            other => panic!("expected on_open, got {other:?}"),
        }
    }

    async fn closed(&mut self) -> CloseCode {
        match within("on_close", self.events.recv()).await {
            Some(Event::Close(code)) => code,
            other => panic!("expected on_close, got {other:?}"),
        }
    }
}

/// The route both servers serve: `/chat/{room}`.
fn room_of(path: &str) -> Option<String> {
    path.strip_prefix("/chat/").map(str::to_owned)
}

/// A hyper 1.x server, no axum: its service registers `/chat/{room}` on the hub,
/// answers 404 to anything else, and gives a request with `?user=` a [`User`] in its
/// extensions, as a middleware would.
async fn hyper_server(config: HubConfig) -> Server {
    let hub = Hub::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, events) = unbounded_channel();
    let task = tokio::spawn({
        let hub = hub.clone();
        async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                let (hub, tx) = (hub.clone(), tx.clone());
                let service = service_fn(move |request| {
                    let (hub, tx) = (hub.clone(), tx.clone());
                    async move { Ok::<_, Infallible>(service(hub, tx, peer, request).await) }
                });
                tokio::spawn(
                    http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            }
        }
    });
    Server {
        addr,
        hub,
        events,
        task,
    }
}

async fn service(
    hub: Hub,
    tx: UnboundedSender<Event>,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Response<ResponseBody> {
    let Some(room) = room_of(request.uri().path()) else {
        let mut response = Response::new(ResponseBody::from("not found"));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    };
    if let Some(user) = user_of(request.uri()) {
        request.extensions_mut().insert(user);
    }
    match HubUpgrade::from_request(&mut request) {
        Ok(upgrade) => {
            upgrade
                .param("room", room)
                .assign(Via("hyper"))
                .peer_addr(peer)
                .register(&hub, Chat(tx))
                .await
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// The `user` query parameter, as the [`User`] a middleware would have authenticated.
fn user_of(uri: &http::Uri) -> Option<User> {
    let query = uri.query()?;
    let name = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("user="))?;
    Some(User(name.to_owned()))
}

/// A bare `TcpListener` accept loop, no HTTP server: each stream's handshake is read
/// with `StreamUpgrade::read`, routed by its path, given a [`User`] for `?user=`, and
/// registered on the hub.
async fn stream_server(config: HubConfig) -> Server {
    let hub = Hub::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, events) = unbounded_channel();
    let task = tokio::spawn({
        let hub = hub.clone();
        async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                let (hub, tx) = (hub.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(upgrade) = StreamUpgrade::read(stream, &AcceptConfig::default()).await
                    else {
                        return;
                    };
                    let uri = upgrade.request().uri();
                    let room = room_of(uri.path()).unwrap_or_default();
                    let user = user_of(uri);
                    let upgrade = match user {
                        Some(user) => upgrade.assign(user),
                        None => upgrade,
                    };
                    match upgrade
                        .param("room", room)
                        .assign(Via("stream"))
                        .peer_addr(peer)
                        .register(&hub, Chat(tx))
                        .await
                    {
                        Ok(()) | Err(AcceptError::Origin | AcceptError::Full) => {}
                        Err(error) => panic!("registration failed: {error}"),
                    }
                });
            }
        }
    });
    Server {
        addr,
        hub,
        events,
        task,
    }
}

type Client = WebSocketStream<TcpStream>;

/// Opens a WebSocket on `path` with tokio-tungstenite, with an `Origin` header when
/// given; returns it with its local address.
async fn try_connect(
    addr: SocketAddr,
    path: &str,
    origin: Option<&str>,
) -> Result<(Client, SocketAddr), tungstenite::Error> {
    let headers: &[_] = match origin {
        Some(origin) => &[("origin", origin)],
        None => &[],
    };
    try_connect_with(addr, path, headers).await
}

/// Opens a WebSocket on `path` with `headers` added to the request.
async fn try_connect_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Result<(Client, SocketAddr), tungstenite::Error> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    for &(name, value) in headers {
        let value = HeaderValue::from_str(value).unwrap();
        request.headers_mut().insert(name, value);
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let (client, _) = within("handshake", client_async(request, tcp)).await?;
    Ok((client, local))
}

async fn connect(addr: SocketAddr, path: &str) -> Client {
    try_connect(addr, path, None).await.unwrap().0
}

/// The HTTP response that refused a connection.
async fn refused(
    addr: SocketAddr,
    path: &str,
    origin: Option<&str>,
) -> tungstenite::http::Response<Option<Vec<u8>>> {
    match try_connect(addr, path, origin).await {
        Err(tungstenite::Error::Http(response)) => response,
        Ok(_) => panic!("{path} was accepted"),
        Err(error) => panic!("{path}: {error}"),
    }
}

async fn next_text(client: &mut Client) -> String {
    match within("message", client.next()).await {
        Some(Ok(TMessage::Text(text))) => text.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// A server of either kind, the same checks: what reaches `on_open` (route parameter,
/// query, assign, address), open means ready, the exchange, and `on_close`.
async fn registers_and_exchanges(mut server: Server, via: Via) {
    let (mut client, local) = try_connect(server.addr, "/chat/lobby?user=ann&greeting=hello", None)
        .await
        .unwrap();
    // Open means ready: once the client has its 101, `on_open` has joined the room.
    assert_eq!(server.hub.room_size("lobby"), 1);
    let (conn, user) = server.open().await;
    assert_eq!(
        user,
        Some(User("ann".into())),
        "the assign, read in on_open"
    );
    assert_eq!(conn.assigned::<Via>(), Some(via));
    assert_eq!(conn.param("room"), Some("lobby"));
    assert_eq!(conn.query("user"), Some("ann"));
    assert_eq!(conn.remote_addr(), Some(local));
    assert_eq!(next_text(&mut client).await, "hello ann in lobby");

    client.send(TMessage::text("echo me")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "echo me");
    conn.hub().to("lobby").send_text("to the room");
    assert_eq!(next_text(&mut client).await, "to the room");

    client.close(None).await.unwrap();
    assert_eq!(server.closed().await, CloseCode::NO_STATUS);
    assert_eq!(server.hub.connection_count(), 0);
    assert_eq!(server.hub.room_size("lobby"), 0);
}

/// Completes a close the server started: reading on flushes tokio-tungstenite's
/// answer, and dropping the client ends the stream the server waits for.
async fn close_handshake(mut client: Client) {
    while within("end of the close handshake", client.next())
        .await
        .is_some()
    {}
}

fn origins_config() -> HubConfig {
    HubConfig::default().allowed_origins(Origins::List(vec!["https://chat.example".into()]))
}

/// A foreign origin is refused with 403 before `on_open`; a listed one is let in.
async fn refuses_a_foreign_origin(mut server: Server) {
    let refusal = refused(server.addr, "/chat/a", Some("https://evil.example")).await;
    assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
    assert_eq!(server.hub.connection_count(), 0);
    assert!(
        server.events.try_recv().is_err(),
        "on_open ran for a refused origin"
    );

    let (mut client, _) = try_connect(server.addr, "/chat/a", Some("https://chat.example"))
        .await
        .unwrap();
    server.open().await;
    assert_eq!(next_text(&mut client).await, "hi nobody in a");
}

fn one_connection() -> HubConfig {
    HubConfig::default().max_connections(1)
}

/// Past `max_connections`, and once the hub is shutting down, 503 with `Retry-After`.
async fn refuses_past_the_limit_and_while_draining(mut server: Server) {
    let mut first = connect(server.addr, "/chat/a").await;
    server.open().await;
    let refusal = refused(server.addr, "/chat/a", None).await;
    assert_eq!(refusal.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refusal.headers()["retry-after"], "5");
    assert_eq!(server.hub.connection_count(), 1);

    // Shutdown sends 1001, the client answers, and its slot is free: refused all the
    // same, as the hub is draining.
    let hub = server.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown(STEP).await });
    match within("1001", first.next()).await {
        Some(Ok(TMessage::Text(_))) => {}
        other => panic!("expected the greeting, got {other:?}"),
    }
    match within("1001", first.next()).await {
        Some(Ok(TMessage::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    close_handshake(first).await;
    within("shutdown", shutdown).await.unwrap();
    assert_eq!(server.closed().await, CloseCode::GOING_AWAY);
    let refusal = refused(server.addr, "/chat/a", None).await;
    assert_eq!(refusal.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refusal.headers()["retry-after"], "5");
}

fn two_per_ip() -> HubConfig {
    HubConfig::default().max_connections_per_ip(2)
}

/// Past `max_connections_per_ip` from one address, 429 with `Retry-After`, before
/// `on_open`; a connection that ends gives its address's slot back.
async fn refuses_past_the_per_ip_limit(mut server: Server) {
    let mut first = connect(server.addr, "/chat/a").await;
    server.open().await;
    let _second = connect(server.addr, "/chat/a").await;
    server.open().await;
    let refusal = refused(server.addr, "/chat/a", None).await;
    assert_eq!(refusal.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refusal.headers()["retry-after"], "5");
    assert_eq!(server.hub.connection_count(), 2);
    assert!(
        server.events.try_recv().is_err(),
        "on_open ran for a refusal"
    );

    first.close(None).await.unwrap();
    close_handshake(first).await;
    assert_eq!(server.closed().await, CloseCode::NO_STATUS);
    within("a free slot", async {
        while try_connect(server.addr, "/chat/a", None).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    server.open().await;
}

fn behind_a_proxy() -> HubConfig {
    HubConfig::default()
        .max_connections_per_ip(1)
        .trusted_proxies(["127.0.0.1".parse().unwrap()])
}

/// The peer (127.0.0.1) is a trusted proxy: the client is the address it appended to
/// `X-Forwarded-For`, reported and counted; what the client wrote before it is not.
async fn reads_the_client_from_a_trusted_proxy(mut server: Server) {
    let xff = |list| [("x-forwarded-for", list)];
    let _ann = try_connect_with(server.addr, "/chat/a", &xff("6.6.6.6, 203.0.113.5"))
        .await
        .unwrap();
    let (conn, _) = server.open().await;
    assert_eq!(conn.remote_addr(), Some("203.0.113.5:0".parse().unwrap()));
    let refusal = match try_connect_with(server.addr, "/chat/a", &xff("203.0.113.5")).await {
        Err(tungstenite::Error::Http(response)) => response,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refusal.status(), StatusCode::TOO_MANY_REQUESTS);
    let _bob = try_connect_with(server.addr, "/chat/a", &xff("203.0.113.6"))
        .await
        .unwrap();
    let (conn, _) = server.open().await;
    assert_eq!(conn.remote_addr(), Some("203.0.113.6:0".parse().unwrap()));
}

/// Nothing trusted: the header is the client's word, ignored; the peer is counted.
async fn ignores_the_proxy_header_of_an_untrusted_peer(mut server: Server) {
    let xff = [("x-forwarded-for", "203.0.113.5")];
    let (_client, local) = try_connect_with(server.addr, "/chat/a", &xff)
        .await
        .unwrap();
    let (conn, _) = server.open().await;
    assert_eq!(conn.remote_addr(), Some(local));
    let spoofed = [("x-forwarded-for", "203.0.113.6")];
    match try_connect_with(server.addr, "/chat/a", &spoofed).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn small_and_compressed() -> HubConfig {
    HubConfig::default()
        .max_message_size(1024)
        .compression(Compression::dedicated())
}

/// The hub's compression is negotiated in the 101 (the client's offer of
/// permessage-deflate is accepted), and its message size enforced (1009).
async fn applies_the_hubs_settings(mut server: Server) {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request = "GET /chat/z HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let response = loop {
        if let Some((response, _)) = wire::parse_response(&buf).unwrap() {
            break response;
        }
        let mut chunk = [0; 1024];
        let n = within("101", tcp.read(&mut chunk)).await.unwrap();
        assert_ne!(n, 0, "closed before the 101");
        buf.extend_from_slice(&chunk[..n]);
    };
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let extensions = response.headers()["sec-websocket-extensions"]
        .to_str()
        .unwrap();
    assert!(extensions.starts_with("permessage-deflate"), "{extensions}");
    let (conn, _) = server.open().await;
    assert!(conn.param("room") == Some("z"));
    drop(tcp);
    server.closed().await;

    // tokio-tungstenite offers no compression: the connection goes on without.
    let mut client = connect(server.addr, "/chat/z").await;
    server.open().await;
    assert_eq!(next_text(&mut client).await, "hi nobody in z");
    client.send(TMessage::text("x".repeat(2048))).await.unwrap();
    match within("1009", client.next()).await {
        Some(Ok(TMessage::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected a close frame, got {other:?}"),
    }
    close_handshake(client).await;
    assert_eq!(server.closed().await, CloseCode::MESSAGE_TOO_BIG);
}

#[tokio::test]
async fn hyper_service_registers_on_a_hub_and_exchanges_messages() {
    registers_and_exchanges(hyper_server(HubConfig::default()).await, Via("hyper")).await;
}

#[tokio::test]
async fn hyper_service_refuses_a_foreign_origin_with_403() {
    refuses_a_foreign_origin(hyper_server(origins_config()).await).await;
}

#[tokio::test]
async fn hyper_service_refuses_past_the_limit_and_while_draining_with_503() {
    refuses_past_the_limit_and_while_draining(hyper_server(one_connection()).await).await;
}

#[tokio::test]
async fn hyper_service_applies_the_hubs_compression_and_message_size() {
    applies_the_hubs_settings(hyper_server(small_and_compressed()).await).await;
}

#[tokio::test]
async fn hyper_service_answers_other_paths_itself() {
    let server = hyper_server(HubConfig::default()).await;
    let refusal = refused(server.addr, "/elsewhere", None).await;
    assert_eq!(refusal.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bare_stream_registers_on_a_hub_and_exchanges_messages() {
    registers_and_exchanges(stream_server(HubConfig::default()).await, Via("stream")).await;
}

#[tokio::test]
async fn bare_stream_refuses_a_foreign_origin_with_403() {
    refuses_a_foreign_origin(stream_server(origins_config()).await).await;
}

#[tokio::test]
async fn bare_stream_refuses_past_the_limit_and_while_draining_with_503() {
    refuses_past_the_limit_and_while_draining(stream_server(one_connection()).await).await;
}

#[tokio::test]
async fn bare_stream_applies_the_hubs_compression_and_message_size() {
    applies_the_hubs_settings(stream_server(small_and_compressed()).await).await;
}

#[tokio::test]
async fn hyper_service_refuses_past_the_per_ip_limit_with_429() {
    refuses_past_the_per_ip_limit(hyper_server(two_per_ip()).await).await;
}

#[tokio::test]
async fn bare_stream_refuses_past_the_per_ip_limit_with_429() {
    refuses_past_the_per_ip_limit(stream_server(two_per_ip()).await).await;
}

#[tokio::test]
async fn hyper_service_reads_the_client_from_a_trusted_proxy() {
    reads_the_client_from_a_trusted_proxy(hyper_server(behind_a_proxy()).await).await;
}

#[tokio::test]
async fn bare_stream_reads_the_client_from_a_trusted_proxy() {
    reads_the_client_from_a_trusted_proxy(stream_server(behind_a_proxy()).await).await;
}

#[tokio::test]
async fn hyper_service_ignores_the_proxy_header_of_an_untrusted_peer() {
    let config = HubConfig::default().max_connections_per_ip(1);
    ignores_the_proxy_header_of_an_untrusted_peer(hyper_server(config).await).await;
}

#[tokio::test]
async fn bare_stream_ignores_the_proxy_header_of_an_untrusted_peer() {
    let config = HubConfig::default().max_connections_per_ip(1);
    ignores_the_proxy_header_of_an_untrusted_peer(stream_server(config).await).await;
}
