//! Upgrading from an axum route (feature `axum`).
//!
//! ```no_run
//! use axum::{Router, response::Response, routing::get};
//! use switchboard::axum::WebSocketUpgrade;
//!
//! async fn echo(upgrade: WebSocketUpgrade) -> Response {
//!     upgrade.on_upgrade(|mut ws| async move {
//!         while let Some(Ok(message)) = ws.recv().await {
//!             if message.is_data() && ws.send(message).await.is_err() {
//!                 break;
//!             }
//!         }
//!     })
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new().route("/ws", get(echo));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

use crate::{
    WebSocket, WebSocketConfig,
    upgrade::{Rejection, Upgrade, Upgraded},
};
use axum::{
    extract::FromRequestParts,
    response::{IntoResponse, Response},
};
use http::request::Parts;
use std::future::Future;

/// Extracts a WebSocket upgrade request; the handler answers with
/// [`WebSocketUpgrade::on_upgrade`].
///
/// A request that is not a valid handshake is rejected before the handler runs, with
/// the status the RFC asks for (400, 405, 426), see [`WebSocketUpgradeRejection`].
#[derive(Debug)]
pub struct WebSocketUpgrade {
    upgrade: Upgrade,
}

/// Why an axum request could not be upgraded: an HTTP response.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct WebSocketUpgradeRejection(#[from] pub Rejection);

impl IntoResponse for WebSocketUpgradeRejection {
    fn into_response(self) -> Response {
        self.0.into_response().into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = WebSocketUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            upgrade: Upgrade::from_parts(parts)?,
        })
    }
}

impl WebSocketUpgrade {
    /// The subprotocols the client offered, in its order of preference.
    pub fn offered_protocols(&self) -> impl Iterator<Item = &str> {
        self.upgrade.offered_protocols()
    }

    /// Selects the first offered protocol that is in `supported`.
    pub fn protocols(self, supported: &[&str]) -> Self {
        Self {
            upgrade: self.upgrade.protocols(supported),
        }
    }

    /// The selected protocol, if any.
    pub fn selected_protocol(&self) -> Option<&str> {
        self.upgrade.selected_protocol()
    }

    /// The connection's settings.
    pub fn config(self, config: WebSocketConfig) -> Self {
        Self {
            upgrade: self.upgrade.config(config),
        }
    }

    /// Answers 101 and runs `callback` on the connection once it is established.
    pub fn on_upgrade<F, Fut>(self, callback: F) -> Response
    where
        F: FnOnce(WebSocket<Upgraded>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (response, connection) = self.upgrade.into_parts();
        tokio::spawn(async move {
            match connection.await {
                Ok(ws) => callback(ws).await,
                Err(error) => {
                    tracing::debug!(
                        error = &error as &dyn std::error::Error,
                        "websocket upgrade failed"
                    );
                }
            }
        });
        response.into_response()
    }
}
