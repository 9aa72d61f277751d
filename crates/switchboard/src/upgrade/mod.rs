//! Server side of the opening handshake, three ways, all on
//! [`switchboard_proto::handshake`]:
//!
//! - from a hyper 1.x service: [`upgrade`] (or [`Upgrade`] to choose a subprotocol);
//! - from an axum route: [`crate::axum::WebSocketUpgrade`] (feature `axum`);
//! - on a bare stream without an HTTP server: [`accept`] (or [`StreamUpgrade`] to
//!   look at the request first).
//!
//! Each way can also register the connection on a [`Hub`](crate::hub::Hub), with the
//! same checks and semantics: [`crate::HubUpgrade`] from a hyper service (or an axum
//! handler; [`crate::ws()`] makes the route), [`StreamUpgrade::register`] on a bare
//! stream.

mod body;
pub(crate) mod hub;
mod hyper;
mod io;
mod raw;
#[cfg(feature = "axum")]
mod served;

pub use self::hyper::{Rejection, Upgrade, UpgradeFut, upgrade};
pub use body::ResponseBody;
#[cfg(feature = "axum")]
pub(crate) use hub::PendingSlot;
pub use io::Upgraded;
pub use raw::{AcceptConfig, AcceptError, StreamUpgrade, accept, accept_with};
#[cfg(feature = "axum")]
pub(crate) use served::{HeadSignal, ServedStream};

/// The header of every refusal of an upgrade: "A server that sends a "close" connection
/// option MUST initiate closure of the connection after it sends the response"
/// (RFC 9112 §9.6). The client gets its answer and the server its socket back at once,
/// instead of holding the connection open for a request that is not coming.
pub(crate) const CONNECTION_CLOSE: (http::HeaderName, http::HeaderValue) = (
    http::header::CONNECTION,
    http::HeaderValue::from_static("close"),
);

/// Records a request refused before its 101, with the status it was answered with
/// (none when nobody was left to answer) and why: `cause` names the rule (`origin`,
/// `full`, `draining`, `handshake`, …), `error` says what exactly failed (for a bad
/// handshake, which check).
pub(crate) fn refused(
    status: Option<http::StatusCode>,
    cause: &'static str,
    remote: Option<std::net::SocketAddr>,
    route: Option<&str>,
    error: &dyn std::fmt::Display,
) {
    tracing::debug!(
        status = status.map(|status| status.as_u16()),
        cause,
        remote = remote.map(tracing::field::display),
        route,
        %error,
        "upgrade refused"
    );
}
