//! Scaffolding shared by the hub suites (`hub`, `hub_backpressure`, `hub_keepalive`,
//! `hub_broker`): a hub's router served on real TCP at 127.0.0.1:0 with
//! `serve_with_shutdown`, and clients of it, on tokio-tungstenite or on a raw socket
//! where a client must misbehave.
//!
//! Each suite has its own handler, which reports what it saw on a channel: the server
//! keeps the receiving end as [`HubServer::events`], in whatever form the suite reads it.

use super::{RawReader, handshake_request, listen, read_response, within};
use axum::Router;
use bytes::BytesMut;
use http::{HeaderName, HeaderValue, StatusCode};
use std::{io, net::SocketAddr};
use switchboard::hub::{Handler, Hub, HubConfig};
use tokio::{
    io::AsyncWriteExt,
    net::TcpStream,
    sync::{
        mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel},
        oneshot,
    },
    task::JoinHandle,
};
use tokio_tungstenite::{
    WebSocketStream, client_async,
    tungstenite::{self, client::IntoClientRequest},
};

/// A tokio-tungstenite client of a hub.
pub(crate) type Client = WebSocketStream<TcpStream>;

/// A hub's router served on 127.0.0.1:0 with `serve_with_shutdown`; dropping it stops
/// serving.
pub(crate) struct HubServer<E> {
    pub(crate) addr: SocketAddr,
    pub(crate) hub: Hub,
    /// Where the suite's handler reports what it saw.
    pub(crate) events: E,
    /// Sending on it (or dropping it) starts the graceful shutdown.
    pub(crate) stop: Option<oneshot::Sender<()>>,
    /// The `serve_with_shutdown` task: it returns once the shutdown is over.
    pub(crate) served: JoinHandle<io::Result<()>>,
}

impl<E> Drop for HubServer<E> {
    fn drop(&mut self) {
        self.served.abort();
    }
}

/// Serves `app`, whose routes register with `hub`, until the server's `stop` is sent or
/// dropped.
pub(crate) async fn serve<E>(hub: Hub, app: Router, events: E) -> HubServer<E> {
    let (listener, addr) = listen().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn({
        let hub = hub.clone();
        async move {
            switchboard::serve_with_shutdown(listener, app, &hub, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    HubServer {
        addr,
        hub,
        events,
        stop: Some(stop),
        served,
    }
}

/// A hub with `config` serving the single route `/ws` with the handler that `handler`
/// makes of the sender of its events.
pub(crate) async fn serve_ws_route<T, H: Handler>(
    config: HubConfig,
    handler: impl FnOnce(UnboundedSender<T>) -> H,
) -> HubServer<UnboundedReceiver<T>> {
    let hub = Hub::new(config);
    let (tx, events) = unbounded_channel();
    let app = Router::new().route("/ws", switchboard::ws(hub.clone(), handler(tx)));
    serve(hub, app, events).await
}

/// Opens a WebSocket on `path` with tokio-tungstenite, with `headers` added to the
/// request; returns it with its local address.
pub(crate) async fn try_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, SocketAddr), tungstenite::Error> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let tcp = within("tcp connect", TcpStream::connect(addr))
        .await
        .unwrap();
    let local = tcp.local_addr().unwrap();
    let (client, _) = within("handshake", client_async(request, tcp)).await?;
    Ok((client, local))
}

/// Opens a WebSocket on `path` with tokio-tungstenite, failing the test if it is refused.
pub(crate) async fn connect(addr: SocketAddr, path: &str) -> Client {
    match try_connect(addr, path, &[]).await {
        Ok((client, _)) => client,
        Err(error) => panic!("connect {path}: {error}"),
    }
}

/// Sends a valid opening handshake for `path` on a raw socket and checks that the answer
/// is 101; returns whatever arrived after the response head.
pub(crate) async fn raw_handshake(tcp: &mut TcpStream, path: &str) -> BytesMut {
    tcp.write_all(handshake_request(path, "").as_bytes())
        .await
        .unwrap();
    let (response, rest) = read_response(tcp).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    rest
}

/// A raw client that completed the handshake on `path`, with a reader of what the server
/// sends.
pub(crate) async fn raw_connect(addr: SocketAddr, path: &str) -> (TcpStream, RawReader) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let rest = raw_handshake(&mut tcp, path).await;
    (tcp, RawReader::new(rest))
}
