//! The task of one connection: reads frames and runs the handler's callbacks in order,
//! while writing what other tasks queue for it.

use super::{Connection, ConnectionState, Handler, connection::Outbound};
use crate::{
    Error, WebSocket,
    ws::{Outbox, OutboxClose, WriteState},
};
use std::{sync::atomic::Ordering::Relaxed, task::Context};
use switchboard_proto::{CloseCode, Message};
use tokio::io::{AsyncRead, AsyncWrite};

/// Runs a registered connection until it ends, then reports the close exactly once and
/// removes the connection from the hub.
///
/// It borrows the socket: the caller's task keeps the one copy of it (a future keeps
/// room for every value it moves, so moving the socket into this future would hold it
/// twice for the connection's life).
pub(crate) async fn drive<S, H>(ws: &mut WebSocket<S>, conn: &Connection, handler: &H)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut outbox = HubOutbox::new(conn);
    // The callbacks that run once, or once in a long while, are boxed: a future holds
    // room for the largest state it can be in, and the task of an idle connection
    // should be the size of its wait for the next message, not of its `on_close`.
    ws.run_while(Box::pin(handler.on_open(conn)), &mut outbox)
        .await;
    if conn.state() == ConnectionState::Connecting {
        conn.set_state(ConnectionState::Open);
    }
    let (code, reason, error) = loop {
        let message = match ws.recv_with(&mut outbox).await {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                let (code, reason) = match (&error, ws.sent_close()) {
                    // We closed (a policy, a timeout, shutdown): report our code.
                    (Error::Aborted(frame), _) | (Error::CloseTimeout, Some(frame)) => {
                        (frame.code, frame.reason.to_string())
                    }
                    (Error::Protocol(e), _) => (e.close_code(), e.to_string()),
                    _ => (error.close_code(), String::new()),
                };
                let error =
                    (!matches!(error, Error::Aborted(_) | Error::CloseTimeout)).then_some(error);
                break (code, reason, error);
            }
            None => break (CloseCode::ABNORMAL, String::new(), None),
        };
        // A ping shows that the peer sends, not that it reads: it does not put off the
        // sweeper's ping, which a peer that never reads cannot answer.
        if !matches!(message, Message::Ping(_)) {
            let now = conn.hub().now_micros();
            conn.keepalive().last_seen.store(now, Relaxed);
        }
        match message {
            Message::Text(_) | Message::Binary(_) => {
                ws.run_while(handler.on_message(conn, message), &mut outbox)
                    .await;
            }
            Message::Ping(payload) => {
                ws.run_while(Box::pin(handler.on_ping(conn, &payload)), &mut outbox)
                    .await
            }
            Message::Pong(payload) => {
                record_pong(conn);
                ws.run_while(Box::pin(handler.on_pong(conn, &payload)), &mut outbox)
                    .await;
            }
            Message::Close(frame) => {
                conn.set_state(ConnectionState::Closing);
                break match (ws.sent_close(), frame) {
                    // We closed first and the peer answered: report our code.
                    (Some(ours), _) => (ours.code, ours.reason.to_string(), None),
                    (None, Some(theirs)) => (theirs.code, theirs.reason.to_string(), None),
                    (None, None) => (CloseCode::NO_STATUS, String::new(), None),
                };
            }
        }
    };
    Box::pin(end(
        ws,
        conn,
        handler,
        Ended {
            code,
            reason,
            error,
        },
    ))
    .await;
}

/// How a connection ended, as its callbacks hear it.
struct Ended {
    code: CloseCode,
    reason: String,
    error: Option<Error>,
}

/// Reports the end of a connection exactly once and removes it from the hub.
async fn end<S, H>(ws: &mut WebSocket<S>, conn: &Connection, handler: &H, ended: Ended)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    conn.set_state(ConnectionState::Closed);
    conn.outbound().closed = true;
    if let Some(error) = &ended.error {
        handler.on_error(conn, error).await;
    }
    handler.on_close(conn, ended.code, &ended.reason).await;
    conn.hub().unregister(conn.id());
    // Completes the close: waits (bounded) for the peer's end of stream, so that
    // dropping the socket does not reset it with our close frame in flight.
    let _ = ws.recv().await;
}

fn record_pong(conn: &Connection) {
    let keepalive = conn.keepalive();
    let now = conn.hub().now_micros();
    keepalive.last_pong.store(now, Relaxed);
    let sent = keepalive.ping_sent.swap(0, Relaxed);
    if sent != 0 {
        keepalive
            .rtt
            .store(now.saturating_sub(sent).max(1), Relaxed);
    }
}

/// The connection's shared queue, seen from its task.
struct HubOutbox<'a> {
    conn: &'a Connection,
    /// `WriteState::written_total` when last seen, to credit written bytes.
    written: usize,
}

impl<'a> HubOutbox<'a> {
    fn new(conn: &'a Connection) -> Self {
        Self { conn, written: 0 }
    }
}

impl Outbox for HubOutbox<'_> {
    fn poll_pull(&mut self, cx: &mut Context<'_>, write: &mut WriteState) -> Option<OutboxClose> {
        // Register for the next wake-up before looking at the queue, so that a frame
        // queued in between is not missed (a sender wakes after it pushes).
        self.conn.wake().register(cx.waker());
        self.written(write);
        let mut out = self.conn.outbound();
        let Outbound { frames, close, .. } = &mut *out;
        for frame in frames.drain(..) {
            write.push_encoded(frame);
        }
        let close = close.take().map(|close| *close);
        if close.is_some() {
            self.conn.set_state(ConnectionState::Closing);
        }
        close
    }

    fn written(&mut self, write: &WriteState) {
        let written = write.written_total.wrapping_sub(self.written);
        if written != 0 {
            self.written = write.written_total;
            let mut out = self.conn.outbound();
            out.buffered = out.buffered.saturating_sub(written);
        }
    }
}
