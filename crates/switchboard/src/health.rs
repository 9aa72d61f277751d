//! Liveness and readiness routes for probes (Kubernetes' `livenessProbe` and
//! `readinessProbe`, a load balancer's health check).

use crate::hub::Hub;
use axum::{
    http::StatusCode,
    routing::{MethodRouter, get},
};

/// A route that answers `200 ok` whenever the process serves requests: liveness.
///
/// ```no_run
/// # use switchboard::hub::{Hub, HubConfig};
/// let hub = Hub::new(HubConfig::default());
/// let app: axum::Router = axum::Router::new()
///     .route("/health", switchboard::health())
///     .route("/ready", switchboard::ready(hub.clone()));
/// ```
pub fn health<S: Clone + Send + Sync + 'static>() -> MethodRouter<S> {
    get(|| async { "ok" })
}

/// A route that answers `200 ready` while `hub` accepts connections and can deliver to
/// them ([`Hub::is_ready`]), and `503 Service Unavailable` otherwise, naming why:
/// `draining` once shutdown has begun, `broker not ready` while the broker's link is
/// down or its subscriptions are not restored. A load balancer that polls it sends no
/// new clients to a server that would silently deliver them nothing.
pub fn ready<S: Clone + Send + Sync + 'static>(hub: Hub) -> MethodRouter<S> {
    get(move || async move {
        if hub.is_draining() {
            (StatusCode::SERVICE_UNAVAILABLE, "draining")
        } else if !hub.is_broker_ready() {
            (StatusCode::SERVICE_UNAVAILABLE, "broker not ready")
        } else {
            (StatusCode::OK, "ready")
        }
    })
}
