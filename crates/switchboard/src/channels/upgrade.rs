//! The upgrade route of a socket endpoint: the protocol version, the origin, the
//! application's `connect` callback (and the auth token phoenix.js hands it), then the
//! hub.
//!
//! Everything here runs before the 101, on the HTTP request. A wrong protocol version
//! or origin is a plain HTTP answer (403); a refusal of the application's `connect` is
//! a 101 and an immediate close with the refusal's code (3000 by default), because a
//! browser cannot see the status of a refused upgrade and would retry it as if the
//! server were down.

use super::{ConnectFn, ConnectInfo, TokenExpiry, handler::SocketHandler, state::ConnState};
use crate::{
    HubUpgrade,
    hub::Refusal,
    sync::lock,
    upgrade::{CONNECTION_CLOSE, refused},
};
use axum::{
    extract::{FromRequestParts, MatchedPath, Request},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get},
};
use base64::{
    Engine, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use http::{StatusCode, header, request::Parts};
use std::sync::{Arc, Mutex};

/// The subprotocol phoenix.js offers when it sends an auth token; a server that does
/// not select it fails the browser's handshake.
const SUBPROTOCOL: &str = "phoenix";
/// The prefix of the auth token's subprotocol (phoenix.js `AUTH_TOKEN_PREFIX`).
const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

/// The upgrade route: vsn, origin, the connect callback, then the hub.
pub(crate) fn route<S: Clone + Send + Sync + 'static>(
    handler: Arc<SocketHandler>,
    connect: Option<Arc<ConnectFn>>,
) -> MethodRouter<S> {
    get(move |request: Request| {
        let (handler, connect) = (handler.clone(), connect.clone());
        async move { upgrade(handler, connect, request).await }
    })
}

async fn upgrade(
    handler: Arc<SocketHandler>,
    connect: Option<Arc<ConnectFn>>,
    request: Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    let params: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    // Phoenix.Socket `negotiate_serializer`: only the V2 serializer (`~> 2.0.0`) is
    // offered here; phoenix.js sends `vsn=2.0.0`. A client that names no version is
    // taken to speak V2 too (Phoenix would assume 1.0.0, which has no arrays).
    if let Some((_, vsn)) = params.iter().find(|(k, _)| k == "vsn") {
        if !vsn.starts_with("2.") {
            handler
                .endpoint()
                .hub()
                .count_refusal(Refusal::BadHandshake);
            let body = format!("unsupported protocol version {vsn}: this endpoint speaks 2.x");
            refuse(
                &parts,
                Some(StatusCode::FORBIDDEN),
                "protocol version",
                &body,
            );
            return (StatusCode::FORBIDDEN, [CONNECTION_CLOSE], body).into_response();
        }
    }
    let mut upgrade = match HubUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade.protocols(&[SUBPROTOCOL]),
        Err(rejection) => {
            handler
                .endpoint()
                .hub()
                .count_refusal(Refusal::BadHandshake);
            return IntoResponse::into_response(rejection);
        }
    };
    let hub = handler.endpoint().hub().clone();
    // The origin is checked again when registering; checking it first keeps a
    // cross-site page from running the application's connect callback at all.
    if let Err(rejection) = upgrade.check_origin(&hub) {
        return IntoResponse::into_response(rejection);
    }
    if let Some(connect) = connect {
        // `connect` sees the request's assigns (what middleware inserted) and adds to
        // them; they are the connection's once it accepts.
        let assigns = Arc::new(Mutex::new(std::mem::take(upgrade.assigns_mut())));
        let info = ConnectInfo {
            auth_token: auth_token(&parts.headers),
            params,
            headers: parts.headers.clone(),
            assigns: assigns.clone(),
        };
        if let Err(refused) = connect(info).await {
            let closed = format!("close {}: {}", refused.code, refused.reason);
            refuse(&parts, None, "connect", &closed);
            hub.count_refusal(Refusal::Unauthorized);
            return upgrade
                .refuse(&hub, refused.code, refused.reason)
                .into_response();
        }
        // Taken, not unwrapped: the callback may have kept its `ConnectInfo`.
        *upgrade.assigns_mut() = std::mem::take(&mut *lock(&assigns));
    }
    let expiry = upgrade.assigns_mut().remove::<TokenExpiry>();
    let state = ConnState::new(expiry.map(|TokenExpiry(at)| at));
    upgrade.internal_mut().insert(Arc::new(state));
    upgrade.register_shared(&hub, handler).await.into_response()
}

/// Records a refusal of this route's own: answered with `status`, or (a `connect`
/// refusal) with a 101 and a close frame.
fn refuse(
    parts: &Parts,
    status: Option<StatusCode>,
    cause: &'static str,
    error: &dyn std::fmt::Display,
) {
    let remote = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0);
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or(parts.uri.path(), MatchedPath::as_str);
    refused(status, cause, remote, Some(route), error);
}

/// The token phoenix.js sends as the subprotocol `base64url.bearer.phx.<base64>`
/// (socket.js `transportConnect`, which encodes with `btoa` and strips the padding).
fn auth_token(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(AUTH_TOKEN_PREFIX))
        .and_then(decode_base64)
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// Decodes base64 in either alphabet (standard or URL-safe, even mixed), padding
/// optional.
fn decode_base64(input: &str) -> Option<Vec<u8>> {
    // The URL-safe alphabet differs from the standard one in two symbols only.
    let mut symbols: Vec<u8> = input
        .trim_end_matches('=')
        .bytes()
        .map(|c| match c {
            b'-' => b'+',
            b'_' => b'/',
            c => c,
        })
        .collect();
    // A lone last symbol holds 6 bits, less than a byte: it is checked and ignored, as
    // the hand-written decoder this replaced did (the crate calls it an invalid length).
    if symbols.len() % 4 == 1 {
        let last = symbols.pop()?;
        if !alphabet::STANDARD.as_str().as_bytes().contains(&last) {
            return None;
        }
    }
    LENIENT.decode(symbols).ok()
}

/// Base64 as a client may send it: no padding (phoenix.js strips it, and
/// [`decode_base64`] strips what is left), and the unused bits after the last byte
/// not required to be zero.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_in_both_alphabets() {
        assert_eq!(decode_base64("aGVsbG8").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_base64("+/8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_base64("a b"), None);
        assert_eq!(decode_base64("").as_deref(), Some(&[][..]));
    }

    #[test]
    fn auth_token_from_the_subprotocol_header() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("phoenix, base64url.bearer.phx.c2VjcmV0"),
        );
        assert_eq!(auth_token(&headers).as_deref(), Some("secret"));
        assert_eq!(auth_token(&http::HeaderMap::new()), None);
    }

    #[test]
    fn base64_as_lenient_as_the_old_decoder() {
        // Mixed alphabets, excess padding, and non-zero bits after the last byte.
        assert_eq!(decode_base64("-/8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode_base64("aGVsbG8===").as_deref(), Some(&b"hello"[..]));
        assert_eq!(decode_base64("aGVsbG9").as_deref(), Some(&b"hello"[..]));
        // A lone last symbol is ignored, but only if it is one.
        assert_eq!(decode_base64("YWJjZ").as_deref(), Some(&b"abc"[..]));
        assert_eq!(decode_base64("YWJj!"), None);
        assert_eq!(decode_base64("YQ=Jj"), None);
    }
}
