//! Serving an axum router with a hub, and shutting both down gracefully.
//!
//! axum's own graceful shutdown does not see upgraded connections (tokio-rs/axum#3003):
//! they outlive the HTTP connection they came from. Here the hub drains them.

use crate::{
    HubRejection,
    hub::{Hub, Refusal},
    sync::lock,
    upgrade::{HeadSignal, PendingSlot, ServedStream, refused},
};
use axum::{
    Router,
    extract::ConnectInfo,
    response::{IntoResponse, Response},
};
use http::{Request, StatusCode};
use hyper::{body::Incoming, server::conn::http1, service::Service};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{Arc, Mutex},
    time::Duration,
};
use switchboard_proto::handshake::http1::{MAX_HEAD_LEN, MAX_HEADERS};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::Instant,
};
use tokio_util::task::TaskTracker;

/// Serves `router` on `listener` until Ctrl-C or SIGTERM, then shuts down gracefully:
/// stops accepting, lets HTTP requests in flight finish, sends the hub's
/// [`shutdown_close`](crate::hub::HubConfig::shutdown_close) (1001, or 1012 for a
/// restart) to every WebSocket of `hub`, and waits for their close handshakes up to the
/// hub's `close_timeout`; HTTP connections still busy then are closed when it returns.
///
/// The limits of [`accept`](crate::upgrade::accept) hold here too: a request head over
/// [`MAX_HEAD_LEN`] (32 KiB) or with more than [`MAX_HEADERS`] (64) header lines is
/// answered 431, and one that does not arrive within the
/// hub's [`handshake_timeout`](crate::hub::HubConfig::handshake_timeout) is answered
/// 408 (a later request on a kept-alive connection is closed without an answer). At most
/// [`max_pending_handshakes`](crate::hub::HubConfig::max_pending_handshakes)
/// connections are held before their first request head arrives, or, for an upgrade,
/// before the hub admits it (the application's work before registering, such as a
/// channels `connect`); the next ones wait in the listen backlog. Then an upgrade
/// counts toward the hub's `max_connections` (and its client's address toward
/// `max_connections_per_ip`), and a plain HTTP connection toward
/// [`max_http_connections`](crate::hub::HubConfig::max_http_connections) for as long as
/// it stays open (past it: 503 and close).
///
/// Plain TCP: for `https://` and `wss://`, see `serve_tls` (feature `tls`), or
/// terminate TLS in a reverse proxy.
pub async fn serve(listener: TcpListener, router: Router, hub: &Hub) -> io::Result<()> {
    serve_with_shutdown(listener, router, hub, shutdown_signal()).await
}

/// [`serve`], shutting down when `signal` completes instead of on Ctrl-C or SIGTERM.
pub async fn serve_with_shutdown(
    listener: TcpListener,
    router: Router,
    hub: &Hub,
    signal: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_on(listener, router, hub, None, signal).await
}

/// [`serve`] over TLS: `https://` pages and `wss://` sockets, with the same graceful
/// shutdown and limits.
///
/// The TLS handshake is part of the opening handshake: it holds one of the
/// [`max_pending_handshakes`](crate::hub::HubConfig::max_pending_handshakes), and it and
/// the first request head together must arrive within the
/// [`handshake_timeout`](crate::hub::HubConfig::handshake_timeout), so a client that
/// connects and never says hello is dropped then, as one that never sends its request
/// is.
///
/// ```no_run
/// use switchboard::{hub::{Hub, HubConfig}, tls::TlsConfig};
///
/// # async fn run(app: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
/// let hub = Hub::new(HubConfig::default());
/// let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
/// switchboard::serve_tls(listener, app, &hub, tls).await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "tls")]
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    hub: &Hub,
    tls: crate::tls::TlsConfig,
) -> io::Result<()> {
    serve_tls_with_shutdown(listener, router, hub, tls, shutdown_signal()).await
}

/// [`serve_tls`], shutting down when `signal` completes instead of on Ctrl-C or SIGTERM.
#[cfg(feature = "tls")]
pub async fn serve_tls_with_shutdown(
    listener: TcpListener,
    router: Router,
    hub: &Hub,
    tls: crate::tls::TlsConfig,
    signal: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_on(listener, router, hub, Some(tls), signal).await
}

/// Without the `tls` feature nothing can be made to stand for a [`TlsConfig`].
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
enum TlsConfig {}

#[cfg(feature = "tls")]
use crate::tls::TlsConfig;

/// The accept loop of [`serve_with_shutdown`] and [`serve_tls_with_shutdown`].
async fn serve_on(
    listener: TcpListener,
    router: Router,
    hub: &Hub,
    tls: Option<TlsConfig>,
    signal: impl Future<Output = ()>,
) -> io::Result<()> {
    tracing::info!(
        local = listener.local_addr().ok().map(tracing::field::display),
        node = %hub.node(),
        "serving"
    );
    let http_connections = TaskTracker::new();
    let (stop, stopping) = watch::channel(());
    let pending = Arc::new(Semaphore::new(hub.config().max_pending_handshakes));
    let plain = Arc::new(Semaphore::new(hub.config().max_http_connections));
    let mut signal = pin!(signal);
    loop {
        let (stream, peer, slot) = tokio::select! {
            accepted = accept(&listener, &pending) => accepted,
            () = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        let timeout = hub.config().handshake_timeout;
        // The opening handshake's deadline runs from the accept, TLS handshake included.
        let deadline = Instant::now() + timeout;
        let service = Served {
            service: TowerToHyperService::new(router.clone()),
            head: HeadSignal::default(),
            peer,
            plain: plain.clone(),
            slots: Mutex::new(Slots {
                pending: Some(slot),
                plain: None,
            }),
        };
        let mut stopping = stopping.clone();
        let tls = tls.clone();
        let hub = hub.clone();
        http_connections.spawn(async move {
            let result = match tls {
                None => connection(stream, service, &hub, deadline, timeout, &mut stopping).await,
                Some(tls) => {
                    let handshake = tokio::time::timeout_at(deadline, handshake(&tls, stream));
                    // Too slow, failed, or the server stops: nothing was in flight.
                    let stream = tokio::select! {
                        stream = handshake => match stream {
                            Ok(Some(stream)) => stream,
                            Ok(None) => return,
                            Err(_) => {
                                hub.count_refusal(Refusal::HandshakeTimeout);
                                return;
                            }
                        },
                        _ = stopping.changed() => return,
                    };
                    connection(stream, service, &hub, deadline, timeout, &mut stopping).await
                }
            };
            match result {
                // hyper answered 431 itself.
                Err(error) if error.is_parse_too_large() => {
                    let status = Some(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
                    refused(status, "head too large", Some(peer), None, &error);
                }
                Err(error) => tracing::debug!(%error, "http connection ended with an error"),
                Ok(()) => {}
            }
        });
    }
    drop(listener);
    let _ = stop.send(());
    http_connections.close();
    let deadline = hub.config().close_timeout;
    tokio::join!(hub.shutdown(deadline), async {
        let _ = tokio::time::timeout(deadline, http_connections.wait()).await;
    });
    // Ends the connections still busy (see above).
    drop(stop);
    Ok(())
}

/// The server's side of the TLS handshake on `tcp`; `None` when it failed.
#[cfg(feature = "tls")]
async fn handshake(tls: &TlsConfig, tcp: TcpStream) -> Option<crate::tls::TlsStream<TcpStream>> {
    match tls.accept(tcp).await {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::debug!(%error, "tls handshake failed");
            None
        }
    }
}

#[cfg(not(feature = "tls"))]
async fn handshake(tls: &TlsConfig, _: TcpStream) -> Option<TcpStream> {
    match *tls {}
}

/// Serves one connection (its TLS handshake done, if any) until it ends, or until
/// `stopping` says the server stops (see [`serve`] for what happens then).
async fn connection<S>(
    stream: S,
    service: Served,
    hub: &Hub,
    deadline: Instant,
    timeout: Duration,
    stopping: &mut watch::Receiver<()>,
) -> hyper::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head = service.head.clone();
    let stream = ServedStream::new(stream, service.peer, deadline, head.clone(), hub);
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        // For the later requests of a kept-alive connection; the first one's
        // deadline is the stream's, which answers 408.
        .header_read_timeout(timeout)
        .max_header_size(MAX_HEAD_LEN)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        _ = stopping.changed() => {
            // A client still sending its first request head has nothing in
            // flight (and an upgrade would be refused now): let it go rather
            // than hold the shutdown until its deadline.
            if !head.has_arrived() {
                return Ok(());
            }
            // An upgrade under way (its `on_open` may still run) ends with its
            // 101, which must not also say `Connection: close`, as hyper's would
            // once shut down gracefully; its socket then gets the hub's shutdown close.
            if !head.upgrading() {
                // Finish the request in flight; accept no more.
                connection.as_mut().graceful_shutdown();
            }
            tokio::select! {
                result = connection => result,
                // `serve` returned, past its deadline: the connection ends
                // with it rather than outlive the server.
                _ = stopping.changed() => Ok(()),
            }
        }
    }
}

/// The next connection, once a slot for it is free (see
/// [`HubConfig::max_pending_handshakes`](crate::hub::HubConfig::max_pending_handshakes)).
async fn accept(
    listener: &TcpListener,
    pending: &Arc<Semaphore>,
) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
    let slot = match pending.clone().acquire_owned().await {
        Ok(slot) => slot,
        // The semaphore is never closed.
        Err(_) => std::future::pending().await,
    };
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => return (stream, peer, slot),
            // Running out of file descriptors is transient: keep serving.
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The router as one connection sees it: it tells the connection's stream when the
/// first request head arrived, gives every request the peer's address as axum's
/// `ConnectInfo` (a hub connection has it from its registration on, before the upgraded
/// socket could tell it), and moves the connection from the pending handshakes to the
/// slot its kind of request holds.
struct Served {
    service: TowerToHyperService<Router>,
    head: HeadSignal,
    peer: SocketAddr,
    /// The slots of [`HubConfig::max_http_connections`](crate::hub::HubConfig::max_http_connections).
    plain: Arc<Semaphore>,
    slots: Mutex<Slots>,
}

/// The slots one connection holds.
struct Slots {
    /// Of the pending handshakes: given back when the first head of a plain request
    /// arrives, so that a slow request body does not keep handshakes waiting. An
    /// upgrade carries it on (see [`PendingSlot`]) until the hub admits it (then it
    /// holds a slot of the hub, `max_connections`, from before its `on_open`) or it is
    /// answered.
    pending: Option<OwnedSemaphorePermit>,
    /// Of the plain HTTP connections: taken by the first request that is not an
    /// upgrade, held while the connection stays open.
    plain: Option<OwnedSemaphorePermit>,
}

impl Served {
    /// Whether a plain request may go to the router: it needs a plain connection's
    /// slot, which the connection keeps.
    fn admit_plain(&self) -> bool {
        let mut slots = lock(&self.slots);
        drop(slots.pending.take());
        if slots.plain.is_some() {
            return true;
        }
        match self.plain.clone().try_acquire_owned() {
            Ok(slot) => slots.plain = Some(slot),
            Err(_) => return false,
        }
        true
    }

    /// Sends an upgrade request to the router with its pending handshake's slot, held
    /// until the hub admits it or the router answers.
    fn route_upgrade(
        &self,
        mut request: Request<Incoming>,
    ) -> <Self as Service<Request<Incoming>>>::Future {
        let pending = lock(&self.slots).pending.take().map(PendingSlot::new);
        if let Some(pending) = &pending {
            request.extensions_mut().insert(pending.clone());
        }
        let routed = self.service.call(request);
        Box::pin(async move {
            let response = routed.await;
            if let Some(pending) = pending {
                pending.release();
            }
            response
        })
    }
}

impl Service<Request<Incoming>> for Served {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let upgrade = request.headers().contains_key(http::header::UPGRADE);
        self.head.arrived(upgrade);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        if upgrade {
            return self.route_upgrade(request);
        }
        if !self.admit_plain() {
            let error = "too many http connections (max_http_connections)";
            let (status, route) = (Some(StatusCode::SERVICE_UNAVAILABLE), request.uri().path());
            refused(
                status,
                "http connections",
                Some(self.peer),
                Some(route),
                &error,
            );
            // 503 with `Retry-After`, and the connection closed (`Connection: close`).
            let full = IntoResponse::into_response(HubRejection::Full);
            return Box::pin(std::future::ready(Ok(full)));
        }
        Box::pin(self.service.call(request))
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
