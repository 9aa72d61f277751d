//! Serving an axum router with a hub, and shutting both down gracefully.
//!
//! axum's own graceful shutdown does not see upgraded connections (tokio-rs/axum#3003):
//! they outlive the HTTP connection they came from. Here the hub drains them.

use crate::hub::Hub;
use axum::{Router, extract::ConnectInfo};
use http::Request;
use hyper::{
    body::Incoming,
    server::conn::http1,
    service::{Service, service_fn},
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use std::{future::Future, io, pin::pin};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::task::TaskTracker;

/// Serves `router` on `listener` until Ctrl-C or SIGTERM, then shuts down gracefully:
/// stops accepting, lets HTTP requests in flight finish, sends 1001 to every WebSocket
/// of `hub`, and waits for their close handshakes up to the hub's `close_timeout`.
///
/// Request heads must arrive within the hub's `handshake_timeout`.
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
    let http_connections = TaskTracker::new();
    let (stop, stopping) = watch::channel(());
    let mut signal = pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Running out of file descriptors is transient: keep serving.
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        // The peer's address as axum's `ConnectInfo`: a hub connection has it from its
        // registration on, before the upgraded socket could tell it.
        let service = service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            service.call(request)
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(hub.config().handshake_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stopping = stopping.clone();
        http_connections.spawn(async move {
            let mut connection = pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stopping.changed() => {
                    // Finish the request in flight, accept no more on this connection.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "http connection ended with an error");
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
    Ok(())
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
