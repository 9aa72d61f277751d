//! TLS (feature `tls`) on real sockets, with certificates made here (rcgen): our client
//! against `serve_tls` and against a bare stream's `TlsConfig::accept`, certificates the
//! client must refuse, and the opening handshake's bounds (deadline, pending slots,
//! shutdown) with the TLS handshake inside them.

use axum::Router;
use std::{io, net::SocketAddr, sync::Arc, time::Duration};
use switchboard::{
    CloseCode, Message,
    client::{self, ClientConfig, ConnectError},
    hub::{Connection, Handler, Hub, HubConfig},
    tls::{Certificate, Roots, TlsConfig},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
    time::{Instant, timeout},
};
use tokio_rustls::{
    TlsConnector,
    rustls::{self, RootCertStore, pki_types::ServerName},
};

/// Any single step of a test.
const STEP: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: no result within {STEP:?}"),
    }
}

struct Echo;

impl Handler for Echo {
    async fn on_message(&self, conn: &Connection, message: Message) {
        conn.send(message);
    }
}

/// A self-signed certificate for `names`: the server's configuration, and the root a
/// client must trust for it.
fn certificate(names: &[&str]) -> (TlsConfig, Vec<Certificate>) {
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let made = rcgen::generate_simple_self_signed(names).unwrap();
    let pem = made.cert.pem();
    let tls =
        TlsConfig::from_pem(pem.as_bytes(), made.signing_key.serialize_pem().as_bytes()).unwrap();
    (tls, Certificate::from_pem(pem.as_bytes()).unwrap())
}

/// `serve_tls` with an echo route at `/ws`, until dropped or stopped.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<io::Result<()>>,
}

impl Server {
    async fn start(config: HubConfig, tls: TlsConfig) -> Self {
        let hub = Hub::new(config);
        let app = Router::new().route("/ws", switchboard::ws(hub.clone(), Echo));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let signal = async {
                let _ = stopped.await;
            };
            switchboard::serve_tls_with_shutdown(listener, app, &hub, tls, signal).await
        });
        Self {
            addr,
            stop: Some(stop),
            served,
        }
    }

    fn url(&self) -> String {
        format!("wss://localhost:{}/ws", self.addr.port())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.served.abort();
    }
}

fn trusting(roots: &[Certificate]) -> ClientConfig {
    ClientConfig::default().roots(Roots::Only(roots.to_vec()))
}

/// Connects to `url`, trusting `roots`, and checks that a message goes both ways.
async fn echoes(url: &str, roots: &[Certificate]) {
    let (mut ws, _) = within("connect", client::connect_with(url, &trusting(roots)))
        .await
        .unwrap();
    assert!(ws.get_ref().is_tls());
    ws.send(Message::text("over tls")).await.unwrap();
    let echoed = within("echo", ws.recv()).await.unwrap().unwrap();
    assert_eq!(echoed, Message::text("over tls"));
    ws.send(Message::binary(vec![7; 60_000])).await.unwrap();
    let echoed = within("echo", ws.recv()).await.unwrap().unwrap();
    assert_eq!(echoed, Message::binary(vec![7; 60_000]));
}

/// Waits for the end of `tcp`'s stream (or a reset) and says when it came.
async fn closed(tcp: &mut TcpStream) -> Instant {
    let mut buf = [0; 64];
    loop {
        match within("the end of the stream", tcp.read(&mut buf)).await {
            Ok(0) => return Instant::now(),
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => return Instant::now(),
            Ok(_) => {}
            Err(error) => panic!("reading: {error}"),
        }
    }
}

#[tokio::test]
async fn our_client_talks_to_serve_tls_over_wss() {
    let (tls, root) = certificate(&["localhost", "127.0.0.1"]);
    let server = Server::start(HubConfig::default(), tls).await;
    echoes(&server.url(), &root).await;
    // An IP address is checked against the certificate's IP addresses.
    echoes(&format!("wss://{}/ws", server.addr), &root).await;
}

#[tokio::test]
async fn the_client_refuses_a_certificate_it_does_not_trust_or_that_names_another_host() {
    let (tls, root) = certificate(&["other.example"]);
    let server = Server::start(HubConfig::default(), tls).await;
    // Mozilla's roots do not know a self-signed certificate.
    let error = within("connect", client::connect(&server.url()))
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::Tls(_)), "{error:?}");
    // Trusted, but not for `localhost`.
    let error = within(
        "connect",
        client::connect_with(&server.url(), &trusting(&root)),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, ConnectError::Tls(_)), "{error:?}");
    // A root made for the same name, but not the server's.
    let (_, another) = certificate(&["localhost"]);
    let error = within(
        "connect",
        client::connect_with(&server.url(), &trusting(&another)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, ConnectError::Tls(_)),
        "another root: {error:?}"
    );
}

#[tokio::test]
async fn a_plain_client_on_the_tls_port_is_not_upgraded() {
    let (tls, _) = certificate(&["localhost"]);
    let server = Server::start(HubConfig::default(), tls).await;
    let plain = format!("ws://localhost:{}/ws", server.addr.port());
    let result = within("connect", client::connect(&plain)).await;
    assert!(result.is_err(), "a plaintext handshake was upgraded");
}

#[tokio::test]
async fn a_client_that_never_says_hello_is_cut_at_the_handshake_timeout_and_holds_up_no_one() {
    let handshake_timeout = Duration::from_millis(1500);
    let (tls, root) = certificate(&["localhost"]);
    let config = HubConfig::default().handshake_timeout(handshake_timeout);
    let server = Server::start(config, tls).await;
    // TCP connected, then not a byte: no ClientHello.
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    echoes(&server.url(), &root).await;
    // Another client was served while the silent one still held its connection.
    let mut byte = [0; 1];
    let still_open = silent.try_read(&mut byte);
    assert!(
        matches!(&still_open, Err(error) if error.kind() == io::ErrorKind::WouldBlock),
        "the silent client was cut before another was served: {still_open:?}"
    );
    let cut = closed(&mut silent).await - started;
    assert!(
        cut >= handshake_timeout - Duration::from_millis(20),
        "cut after {cut:?}"
    );
}

#[tokio::test]
async fn a_tls_handshake_holds_a_pending_handshake_slot() {
    let handshake_timeout = Duration::from_millis(600);
    let (tls, root) = certificate(&["localhost"]);
    let config = HubConfig::default()
        .handshake_timeout(handshake_timeout)
        .max_pending_handshakes(1);
    let server = Server::start(config, tls).await;
    let started = Instant::now();
    let _silent = TcpStream::connect(server.addr).await.unwrap();
    // The silent client holds the only slot until its deadline: the next one is
    // accepted only then.
    echoes(&server.url(), &root).await;
    let waited = started.elapsed();
    assert!(
        waited >= handshake_timeout - Duration::from_millis(20),
        "served after {waited:?}, while the only slot was taken"
    );
}

/// A raw TLS connection to `server` trusting `root`, for what our client never sends.
async fn raw_tls(
    addr: SocketAddr,
    root: &[Certificate],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut store = RootCertStore::empty();
    for certificate in root {
        store.add(certificate.der().to_vec().into()).unwrap();
    }
    // The provider `switchboard::tls` runs on (see why there).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    within(
        "tls handshake",
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_head_that_does_not_follow_the_tls_handshake_is_answered_408_over_tls() {
    let handshake_timeout = Duration::from_millis(400);
    let (tls, root) = certificate(&["localhost"]);
    let config = HubConfig::default().handshake_timeout(handshake_timeout);
    let server = Server::start(config, tls).await;
    let started = Instant::now();
    let mut stream = raw_tls(server.addr, &root).await;
    let (_, session) = stream.get_ref();
    assert_eq!(session.alpn_protocol(), None, "the client offered no ALPN");
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgr")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // The answer, then close_notify: the end of the stream.
    within("the 408", stream.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.ends_with("handshake timed out"), "{answer}");
    assert!(started.elapsed() >= handshake_timeout - Duration::from_millis(20));
}

#[tokio::test]
async fn shutdown_closes_wss_sockets_with_1001_and_returns() {
    let (tls, root) = certificate(&["localhost"]);
    let mut server = Server::start(HubConfig::default(), tls).await;
    let (mut ws, _) = within(
        "connect",
        client::connect_with(&server.url(), &trusting(&root)),
    )
    .await
    .unwrap();
    // Open means registered: the shutdown below must find the socket.
    ws.send(Message::text("here")).await.unwrap();
    within("echo", ws.recv()).await.unwrap().unwrap();
    let _ = server.stop.take().unwrap().send(());
    let close = within("the close frame", ws.recv()).await.unwrap().unwrap();
    let Message::Close(Some(frame)) = close else {
        panic!("expected a close frame, got {close:?}");
    };
    assert_eq!(frame.code, CloseCode::GOING_AWAY);
    // Answer it, so the server's close handshake completes.
    let _ = ws.close(CloseCode::GOING_AWAY, "").await;
    within("serve returns", &mut server.served)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_bare_stream_upgrades_over_tls_config_accept() {
    let (tls, root) = certificate(&["localhost"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let stream = tls.accept(tcp).await.unwrap();
        assert_eq!(stream.server_name(), Some("localhost"));
        let mut ws = switchboard::upgrade::accept(stream).await.unwrap();
        while let Some(Ok(message)) = ws.recv().await {
            if message.is_data() {
                ws.send(message).await.unwrap();
            }
        }
    });
    echoes(&format!("wss://localhost:{}/", addr.port()), &root).await;
    within("the server's end", server).await.unwrap();
}
