//! Server side of the opening handshake, three ways, all on
//! [`switchboard_proto::handshake`]:
//!
//! - from a hyper 1.x service: [`upgrade`] (or [`Upgrade`] to choose a subprotocol);
//! - from an axum route: [`crate::axum::WebSocketUpgrade`] (feature `axum`);
//! - on a bare stream without an HTTP server: [`accept`].

mod body;
mod hyper;
mod io;
mod raw;

pub use self::hyper::{Rejection, Upgrade, UpgradeFut, upgrade};
pub use body::ResponseBody;
pub use io::Upgraded;
pub(crate) use io::{HeadSignal, ServedTcp};
pub use raw::{AcceptConfig, AcceptError, accept, accept_with};

/// The header of every refusal of an upgrade: "A server that sends a "close" connection
/// option MUST initiate closure of the connection after it sends the response"
/// (RFC 9112 §9.6). The client gets its answer and the server its socket back at once,
/// instead of holding the connection open for a request that is not coming.
pub(crate) const CONNECTION_CLOSE: (http::HeaderName, http::HeaderValue) = (
    http::header::CONNECTION,
    http::HeaderValue::from_static("close"),
);
