//! The callbacks an application implements.

use super::Connection;
use crate::Error;
use std::future::Future;
use switchboard_proto::{CloseCode, Message};

/// What happens on a connection, as callbacks. Every method has a no-op default.
///
/// Callbacks of one connection run one at a time, in the order of events; a slow
/// callback delays only its own connection (its outbound messages keep flowing).
///
/// ```
/// use switchboard::{Message, hub::{Connection, Handler}};
///
/// struct Echo;
///
/// impl Handler for Echo {
///     async fn on_message(&self, conn: &Connection, message: Message) {
///         let _ = conn.send(message);
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The connection is open and registered: it can join rooms and send.
    fn on_open(&self, conn: &Connection) -> impl Future<Output = ()> + Send {
        let _ = conn;
        async {}
    }

    /// A text or binary message arrived.
    fn on_message(&self, conn: &Connection, message: Message) -> impl Future<Output = ()> + Send {
        let _ = (conn, message);
        async {}
    }

    /// The connection ended; called exactly once. `code` is the peer's when it closed,
    /// ours when we closed it (e.g. a pong timeout, a policy, shutdown), 1006 when the
    /// transport ended without a close frame, 1005 when the peer's close had no code.
    fn on_close(
        &self,
        conn: &Connection,
        code: CloseCode,
        reason: &str,
    ) -> impl Future<Output = ()> + Send {
        let _ = (conn, code, reason);
        async {}
    }

    /// The connection failed (protocol violation by the peer, transport error); followed
    /// by [`Handler::on_close`].
    fn on_error(&self, conn: &Connection, error: &Error) -> impl Future<Output = ()> + Send {
        let _ = (conn, error);
        async {}
    }

    /// A ping arrived; the pong has already been queued.
    fn on_ping(&self, conn: &Connection, payload: &[u8]) -> impl Future<Output = ()> + Send {
        let _ = (conn, payload);
        async {}
    }

    /// A pong arrived.
    fn on_pong(&self, conn: &Connection, payload: &[u8]) -> impl Future<Output = ()> + Send {
        let _ = (conn, payload);
        async {}
    }
}
