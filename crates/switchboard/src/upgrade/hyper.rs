//! Upgrading a request received by hyper 1.x.

use super::{ResponseBody, Upgraded};
use crate::{WebSocket, WebSocketConfig};
use bytes::BytesMut;
use http::{Request, Response, StatusCode, request::Parts};
use hyper::upgrade::OnUpgrade;
use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, ready},
};
use switchboard_proto::{
    Role,
    deflate::DeflateParams,
    handshake::{HandshakeError, ServerHandshake},
};

/// Why a request cannot be upgraded; answer it with [`Rejection::into_response`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The request is not a valid WebSocket handshake.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The HTTP server gave no way to take over the connection (e.g. HTTP/2, or a
    /// request not received by hyper).
    #[error("connection cannot be upgraded")]
    NotUpgradable,
}

impl Rejection {
    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Handshake(e) => e.status(),
            Self::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
        }
    }

    /// Records the refusal, before the response is made.
    fn record(&self, remote: Option<SocketAddr>, route: &str) {
        super::refused(Some(self.status()), "handshake", remote, Some(route), self);
    }

    /// The response to send: the status, the headers the RFC asks for (e.g.
    /// `Sec-WebSocket-Version: 13` with 426), `Connection: close`, and the reason as
    /// text.
    pub fn into_response(self) -> Response<ResponseBody> {
        let head = match &self {
            Self::Handshake(e) => e.response(),
            Self::NotUpgradable => {
                let mut response = Response::new(());
                *response.status_mut() = self.status();
                response
            }
        };
        let (mut parts, ()) = head.into_parts();
        parts.headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let (name, value) = super::CONNECTION_CLOSE;
        parts.headers.insert(name, value);
        Response::from_parts(parts, self.to_string().into())
    }
}

/// The peer's address as axum's `ConnectInfo` tells it: axum's `serve` hands hyper a
/// wrapped stream, so the upgraded stream cannot tell the peer's address, but
/// `ConnectInfo` can, when the app is served with it.
fn connect_info(parts: &Parts) -> Option<SocketAddr> {
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(peer)) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*peer);
    }
    let _ = parts;
    None
}

/// A validated upgrade request whose answer has not been sent yet: choose a
/// subprotocol or settings, then take the 101 response and the future connection.
#[derive(Debug)]
pub struct Upgrade {
    handshake: ServerHandshake,
    on_upgrade: OnUpgrade,
    config: WebSocketConfig,
    peer: Option<SocketAddr>,
}

impl Upgrade {
    /// Validates the handshake in `request` and takes hyper's upgrade handle from it.
    pub fn from_request<B>(request: &mut Request<B>) -> Result<Self, Rejection> {
        let upgrade = ServerHandshake::from_request(request)
            .map_err(Rejection::from)
            .and_then(|handshake| {
                Self::new(handshake, request.extensions_mut().remove::<OnUpgrade>())
            });
        upgrade.inspect_err(|rejection| rejection.record(None, request.uri().path()))
    }

    /// Like [`Upgrade::from_request`], for a request already split into parts.
    pub fn from_parts(parts: &mut Parts) -> Result<Self, Rejection> {
        let peer = connect_info(parts);
        let upgrade = ServerHandshake::from_parts(parts)
            .map_err(Rejection::from)
            .and_then(|handshake| Self::new(handshake, parts.extensions.remove::<OnUpgrade>()))
            .inspect_err(|rejection| rejection.record(peer, parts.uri.path()))?;
        Ok(match peer {
            Some(peer) => upgrade.peer_addr(peer),
            None => upgrade,
        })
    }

    fn new(handshake: ServerHandshake, on_upgrade: Option<OnUpgrade>) -> Result<Self, Rejection> {
        Ok(Self {
            handshake,
            on_upgrade: on_upgrade.ok_or(Rejection::NotUpgradable)?,
            config: WebSocketConfig::default(),
            peer: None,
        })
    }

    /// The client's address, for [`Upgraded::peer_addr`] when the upgraded stream cannot
    /// tell it (hyper over a wrapped stream, axum's `serve`).
    pub fn peer_addr(mut self, peer: SocketAddr) -> Self {
        self.peer = Some(peer);
        self
    }

    /// The peer's address, when known.
    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The subprotocols the client offered, in its order of preference.
    pub fn offered_protocols(&self) -> impl Iterator<Item = &str> {
        self.handshake.protocols()
    }

    /// Picks the first protocol the client offered that is in `supported`; none is
    /// selected (and the client decides whether to go on) when there is no match.
    pub fn protocols(mut self, supported: &[&str]) -> Self {
        self.handshake.select_protocol(supported);
        self
    }

    /// The protocol selected, if any.
    pub fn selected_protocol(&self) -> Option<&str> {
        self.handshake.protocol()
    }

    /// The connection's settings; their [`WebSocketConfig::compression`] decides what
    /// permessage-deflate offer is accepted.
    pub fn config(mut self, config: WebSocketConfig) -> Self {
        self.config = config;
        self
    }

    /// The 101 response to return from the service, and the connection it becomes once
    /// hyper has sent it.
    pub fn into_parts(mut self) -> (Response<ResponseBody>, UpgradeFut) {
        let deflate = self.config.compression.negotiate(&mut self.handshake);
        let (parts, ()) = self.handshake.response().into_parts();
        let response = Response::from_parts(parts, ResponseBody::default());
        let future = UpgradeFut {
            on_upgrade: self.on_upgrade,
            config: self.config,
            deflate,
            peer: self.peer,
        };
        (response, future)
    }
}

/// Validates the WebSocket handshake in `request`: returns the 101 response for the
/// service to return, and a future that resolves to the connection.
///
/// ```no_run
/// # use http::{Request, Response};
/// use switchboard::upgrade::ResponseBody;
///
/// async fn service(
///     mut request: Request<hyper::body::Incoming>,
/// ) -> Result<Response<ResponseBody>, hyper::Error> {
///     match switchboard::upgrade::upgrade(&mut request) {
///         Ok((response, connection)) => {
///             tokio::spawn(async move {
///                 let Ok(mut ws) = connection.await else { return };
///                 while let Some(Ok(message)) = ws.recv().await {
///                     if message.is_data() && ws.send(message).await.is_err() {
///                         break;
///                     }
///                 }
///             });
///             Ok(response)
///         }
///         Err(rejection) => Ok(rejection.into_response()),
///     }
/// }
/// ```
pub fn upgrade<B>(
    request: &mut Request<B>,
) -> Result<(Response<ResponseBody>, UpgradeFut), Rejection> {
    Ok(Upgrade::from_request(request)?.into_parts())
}

/// The connection an upgrade becomes, once the 101 has been sent.
#[derive(Debug)]
#[must_use = "the connection is lost unless the future is awaited"]
pub struct UpgradeFut {
    on_upgrade: OnUpgrade,
    config: WebSocketConfig,
    deflate: Option<DeflateParams>,
    peer: Option<SocketAddr>,
}

impl UpgradeFut {
    /// The permessage-deflate agreement the 101 carries.
    pub(crate) fn deflate(&self) -> Option<DeflateParams> {
        self.deflate
    }
}

impl Future for UpgradeFut {
    type Output = Result<WebSocket<Upgraded>, crate::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let upgraded =
            ready!(Pin::new(&mut self.on_upgrade).poll(cx)).map_err(std::io::Error::other)?;
        let (io, buffered) = Upgraded::from_hyper(upgraded, self.peer);
        let ws =
            WebSocket::from_partially_read(io, BytesMut::from(buffered), Role::Server, self.config);
        Poll::Ready(Ok(match self.deflate {
            Some(params) => ws.with_deflate(params),
            None => ws,
        }))
    }
}
