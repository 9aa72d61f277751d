//! Registering connections with a hub from axum routes: the extractor form of
//! [`HubUpgrade`] and the [`ws`] route, over the registration every way in shares
//! (`upgrade/hub.rs`).

use crate::{
    HubRejection, HubUpgrade,
    hub::{Assigns, Handler, Hub, Refusal},
    upgrade::{
        Upgrade,
        hub::{PendingSlot, request_assigns},
    },
};
use axum::{
    extract::{ConnectInfo, FromRequestParts, MatchedPath, OriginalUri, RawPathParams},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get},
};
use http::{Extensions, request::Parts};
use std::{net::SocketAddr, sync::Arc};

/// A route that upgrades every request and registers the connection with `hub`, with
/// `handler` for its callbacks.
///
/// ```no_run
/// # use switchboard::hub::{Handler, Hub, HubConfig};
/// # struct Chat;
/// # impl Handler for Chat {}
/// let hub = Hub::new(HubConfig::default());
/// let app: axum::Router = axum::Router::new().route("/chat/{room}", switchboard::ws(hub.clone(), Chat));
/// ```
///
/// In a handler that must do work first, extract a [`HubUpgrade`]:
///
/// ```no_run
/// use axum::{response::IntoResponse, routing::get};
/// use switchboard::{CloseCode, HubUpgrade, hub::{Handler, Hub, HubConfig}};
/// # struct Chat;
/// # impl Handler for Chat {}
///
/// let hub = Hub::new(HubConfig::default());
/// let app: axum::Router = axum::Router::new().route(
///     "/chat",
///     get(move |upgrade: HubUpgrade, uri: axum::http::Uri| async move {
///         if uri.query() != Some("token=ok") {
///             // 101, then close 3000: a browser sees the code, not a 401's 1006.
///             return upgrade.refuse(&hub, CloseCode::UNAUTHORIZED, "unauthorized").into_response();
///         }
///         // Answers 101 once `Chat::on_open` has run.
///         upgrade.register(&hub, Chat).await.into_response()
///     }),
/// );
/// ```
pub fn ws<H: Handler, S: Clone + Send + Sync + 'static>(hub: Hub, handler: H) -> MethodRouter<S> {
    let handler = Arc::new(handler);
    get(
        move |upgrade: Result<HubUpgrade, HubRejection>| async move {
            match upgrade {
                Ok(upgrade) => upgrade.register_shared(&hub, handler).await.into_response(),
                Err(rejection) => {
                    hub.count_refusal(Refusal::BadHandshake);
                    IntoResponse::into_response(rejection)
                }
            }
        },
    )
}

impl IntoResponse for HubRejection {
    fn into_response(self) -> Response {
        HubRejection::into_response(self).into_response()
    }
}

/// The extractor: the route's parameters, the query, and the request's extensions but
/// axum's own (the application's assigns).
impl<S: Send + Sync> FromRequestParts<S> for HubUpgrade {
    type Rejection = HubRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let upgrade = Upgrade::from_parts(parts)?;
        let pending = PendingSlot::take(&mut parts.extensions);
        let raw_params = RawPathParams::from_request_parts(parts, state).await.ok();
        let routed = raw_params.is_some();
        let params = raw_params
            .iter()
            .flat_map(|params| params.iter())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let assigns = assigns(&parts.extensions, routed);
        // The route's pattern names the endpoint whatever its parameters are.
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map_or(parts.uri.path(), MatchedPath::as_str);
        Ok(HubUpgrade::new(
            upgrade, parts, route, params, assigns, pending,
        ))
    }
}

/// The request's extensions, when the application put some there: its assigns.
///
/// axum's routing adds entries of its own to every request (the path parameters, which
/// a connection has as [`Connection::param`](crate::hub::Connection::param), the matched
/// path, the original URI, the peer's address); a request with nothing else gets an
/// empty set rather than a copy of those, which would cost every connection a table.
/// Counting only entries it can see, this can only err towards copying.
fn assigns(extensions: &Extensions, routed: bool) -> Assigns {
    let routing = [
        // `RawPathParams` is found exactly when axum stored the route's parameters.
        routed,
        extensions.get::<MatchedPath>().is_some(),
        extensions.get::<OriginalUri>().is_some(),
        extensions.get::<ConnectInfo<SocketAddr>>().is_some(),
    ];
    let routing = routing.into_iter().filter(|&present| present).count();
    if extensions.len() > routing {
        request_assigns(extensions)
    } else {
        Assigns::new()
    }
}
