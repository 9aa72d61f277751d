//! The callbacks an application implements.

use super::Connection;
use crate::Error;
use std::{
    future::{Future, poll_fn},
    panic::{AssertUnwindSafe, catch_unwind},
    pin::pin,
    task::Poll,
};
use switchboard_proto::{CloseCode, Message};

/// What happens on a connection, as callbacks. Every method has a no-op default.
///
/// Callbacks of one connection run one at a time, in the order of events; a slow
/// callback delays only its own connection (its outbound messages keep flowing).
///
/// A callback that panics ends its own connection only: the connection is closed with
/// 1011 (internal error), the panic is logged, no further `on_message`, `on_ping` or
/// `on_pong` runs for it, [`Handler::on_close`] still runs, and its slot, registry entry
/// and room memberships are released (a panic in `on_close` itself is logged too).
///
/// ```
/// use switchboard::{Message, hub::{Connection, Handler}};
///
/// struct Echo;
///
/// impl Handler for Echo {
///     async fn on_message(&self, conn: &Connection, message: Message) {
///         conn.send(message);
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// The connection is registered: it can join rooms, set metadata and send.
    ///
    /// It runs before the client gets its 101 (open means ready): when the client sees
    /// the connection open, what `on_open` did has happened, and a message published to
    /// one of its rooms from then on reaches it. What it sends waits in the connection's
    /// queue until the socket is up. Keep it short: the client waits for its 101
    /// meanwhile, as in uWebSockets and Phoenix (slow work can go to a spawned task). If
    /// the client is gone by the time the 101 would leave, [`Handler::on_close`] follows
    /// with 1006.
    ///
    /// To turn the client away here (its credentials, say), close it with
    /// [`CloseCode::UNAUTHORIZED`]: the 101 leaves with the close frame right behind,
    /// which a browser can read, unlike an HTTP refusal. (Before registering,
    /// [`HubUpgrade::refuse`](crate::HubUpgrade::refuse) does the same without a
    /// connection.)
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

/// A callback panicked.
#[derive(Debug)]
pub(crate) struct Panicked;

/// Runs a callback's future, turning a panic into `Err`, so that an application's bug
/// ends the one connection or channel it happened in (as a crashed process does in
/// Phoenix) rather than unwinding through the task that owns the socket and the slot.
pub(crate) async fn catch<T>(future: impl Future<Output = T>) -> Result<T, Panicked> {
    let mut future = pin!(future);
    poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(Panicked)),
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn catch_turns_a_panic_into_an_error() {
        assert!(catch(async { 1 }).await.is_ok());
        let panicked = catch(async {
            tokio::task::yield_now().await;
            panic!("callback bug");
        })
        .await;
        assert!(panicked.is_err());
    }
}
