//! One store of assigns per connection: what an axum middleware inserted into the
//! upgrade request is read in the hub handler's `on_open`, in the channels `connect`
//! callback and in every channel's `join`; what `connect` assigns reaches every channel;
//! a channel's own assigns layer over the connection's.

use axum::{Router, extract::Request, middleware::Next, response::Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::{future::Future, net::SocketAddr, time::Duration};
use switchboard::{
    Message,
    channels::{Channel, Channels, HandleIn, Payload, Refused, Reply, Socket},
    hub::{Assigns, Connection, Handler, Hub, HubConfig},
};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{self, Message as TMessage},
};

const STEP: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Who the middleware authenticated.
#[derive(Clone, Debug, PartialEq)]
struct User(String);

/// What the channels `connect` callback assigned.
#[derive(Clone, Debug)]
struct Token(String);

/// What a channel assigned on its own socket.
#[derive(Clone, Debug)]
struct Nick(String);

/// What a channel assigned on its connection, for every channel.
#[derive(Clone, Debug)]
struct Shared(String);

/// What `on_open` assigned, read back by `on_message`.
#[derive(Clone, Debug)]
struct Greeted(u32);

/// The middleware: `?user=NAME` authenticates NAME (into the request's extensions).
async fn authenticate(mut request: Request, next: Next) -> Response {
    let user = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("user="))
        .map(|name| User(name.to_owned()));
    if let Some(user) = user {
        request.extensions_mut().insert(user);
    }
    next.run(request).await
}

async fn serve(hub: &Hub, app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hub = hub.clone();
    tokio::spawn(async move {
        let _ = switchboard::serve_with_shutdown(listener, app, &hub, std::future::pending()).await;
    });
    addr
}

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(url: &str) -> Result<Client, tungstenite::Error> {
    Ok(within("connect", connect_async(url)).await?.0)
}

async fn next_text(client: &mut Client) -> String {
    match within("message", client.next()).await {
        Some(Ok(TMessage::Text(text))) => text.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Says in `on_open` who the middleware authenticated, and assigns there; answers each
/// message with what `on_open` assigned.
struct Greeter;

impl Handler for Greeter {
    async fn on_open(&self, conn: &Connection) {
        let user = conn.assigned::<User>();
        let name = user.map_or("nobody".to_owned(), |User(name)| name);
        conn.send_text(format!("hello {name}"));
        conn.assign(Greeted(1));
    }

    async fn on_message(&self, conn: &Connection, _message: Message) {
        // Borrowed in place, and changed there.
        let greeted = conn.with_assigns(|assigns| {
            let greeted = assigns.get_mut::<Greeted>().map(|g| {
                g.0 += 1;
                g.0
            });
            (greeted, assigns.get::<User>().map(|u| u.0.clone()))
        });
        conn.send_text(format!("{greeted:?}"));
    }
}

#[tokio::test]
async fn middleware_extensions_reach_on_open_and_on_open_assigns_reach_later_callbacks() {
    let hub = Hub::new(HubConfig::default());
    let app = Router::new()
        .route("/ws", switchboard::ws(hub.clone(), Greeter))
        .layer(axum::middleware::from_fn(authenticate));
    let addr = serve(&hub, app).await;

    let mut ann = connect(&format!("ws://{addr}/ws?user=ann")).await.unwrap();
    assert_eq!(next_text(&mut ann).await, "hello ann");
    ann.send(TMessage::text("again")).await.unwrap();
    assert_eq!(next_text(&mut ann).await, r#"(Some(2), Some("ann"))"#);
    ann.send(TMessage::text("again")).await.unwrap();
    assert_eq!(next_text(&mut ann).await, r#"(Some(3), Some("ann"))"#);

    let mut nobody = connect(&format!("ws://{addr}/ws")).await.unwrap();
    assert_eq!(next_text(&mut nobody).await, "hello nobody");
}

/// Answers each join and `whoami` with the assigns it sees; on join, assigns what the
/// payload asks for: `nick` on its own socket, `shared` on the connection, `as` (a
/// [`User`]) on its own socket, over the middleware's.
struct Room;

fn seen(socket: &Socket) -> Value {
    json!({
        "user": socket.assigned::<User>().map(|u| u.0),
        "token": socket.assigned::<Token>().map(|t| t.0),
        "nick": socket.assigned::<Nick>().map(|n| n.0),
        "shared": socket.assigned::<Shared>().map(|s| s.0),
    })
}

impl Channel for Room {
    async fn join(&self, _topic: &str, payload: Value, socket: &Socket) -> Result<Value, Value> {
        let reply = seen(socket);
        let field = |key| payload.get(key).and_then(Value::as_str).map(str::to_owned);
        if let Some(nick) = field("nick") {
            socket.assign(Nick(nick));
        }
        if let Some(shared) = field("shared") {
            socket.connection().assign(Shared(shared));
        }
        if let Some(name) = field("as") {
            socket.assign(User(name));
        }
        Ok(reply)
    }

    async fn handle_in(&self, _event: &str, _payload: Payload, socket: &Socket) -> HandleIn {
        Reply::ok(seen(socket)).into()
    }
}

/// A raw Phoenix V2 client: sends a message and returns the response of its reply.
async fn call(client: &mut Client, topic: &str, event: &str, payload: Value) -> Value {
    let message = json!(["1", "1", topic, event, payload]).to_string();
    client.send(TMessage::text(message)).await.unwrap();
    let reply: Value = serde_json::from_str(&next_text(client).await).unwrap();
    assert_eq!(reply[2], topic, "{reply}");
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    reply[4]["response"].clone()
}

#[tokio::test]
async fn middleware_extensions_reach_connect_and_every_channel() {
    let hub = Hub::new(HubConfig::default());
    let channels = Channels::new(hub.clone())
        .connect(|info| async move {
            // The middleware's assign is here; what is assigned here is the
            // connection's.
            let Some(User(name)) = info.assigned::<User>() else {
                return Err(Refused::new("who are you?"));
            };
            info.assign(Token(format!("token of {name}")));
            Ok(())
        })
        .channel("room:*", Room);
    let app = channels
        .into_router()
        .layer(axum::middleware::from_fn(authenticate));
    let addr = serve(&hub, app).await;
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");

    let mut refused = connect(&url).await.unwrap();
    match refused.next().await {
        Some(Ok(TMessage::Close(Some(frame)))) => assert_eq!(frame.reason, "who are you?"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let mut client = connect(&format!("{url}&user=ann")).await.unwrap();
    // The middleware's and connect's assigns, in a join; the join's own go to its
    // socket (`nick`) and to the connection (`shared`).
    let joined = call(
        &mut client,
        "room:a",
        "phx_join",
        json!({"nick": "a's nick", "shared": "for all"}),
    )
    .await;
    assert_eq!(
        joined,
        json!({"user": "ann", "token": "token of ann", "nick": null, "shared": null})
    );
    // Another channel of the socket: not the first one's own assigns, but what it
    // assigned on the connection.
    let joined = call(&mut client, "room:b", "phx_join", json!({})).await;
    assert_eq!(
        joined,
        json!({"user": "ann", "token": "token of ann", "nick": null, "shared": "for all"})
    );
    let seen_by_a = call(&mut client, "room:a", "whoami", json!({})).await;
    assert_eq!(
        seen_by_a,
        json!({"user": "ann", "token": "token of ann", "nick": "a's nick", "shared": "for all"})
    );

    // A channel's own assign shadows the connection's, for that channel only.
    call(&mut client, "room:c", "phx_join", json!({"as": "zed"})).await;
    assert_eq!(
        call(&mut client, "room:c", "whoami", json!({})).await["user"],
        "zed"
    );
    assert_eq!(
        call(&mut client, "room:b", "whoami", json!({})).await["user"],
        "ann"
    );

    // The hub connection under the socket holds the same store.
    let conn = hub.connections().pop().unwrap();
    assert_eq!(conn.assigned::<User>(), Some(User("ann".into())));
    assert_eq!(conn.assigned::<Token>().unwrap().0, "token of ann");
    assert_eq!(conn.assigned::<Shared>().unwrap().0, "for all");
    assert!(conn.assigned::<Nick>().is_none());
    // A value the connection gets later reaches the joined channels.
    conn.assign(Token("renewed".into()));
    assert_eq!(
        call(&mut client, "room:a", "whoami", json!({})).await["token"],
        "renewed"
    );

    // The store is the application's alone: clearing it leaves the socket's channels
    // joined and answering (their bookkeeping is kept elsewhere).
    conn.with_assigns(|assigns| *assigns = Assigns::new());
    assert!(conn.with_assigns(|assigns| assigns.is_empty()));
    assert_eq!(
        call(&mut client, "room:a", "whoami", json!({})).await,
        json!({"user": null, "token": null, "nick": "a's nick", "shared": null})
    );
}
