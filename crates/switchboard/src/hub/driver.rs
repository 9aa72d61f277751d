//! The task of one connection: reads frames and runs the handler's callbacks in order,
//! while writing what other tasks queue for it.

use super::{
    Closer, Connection, ConnectionState, Handler, RatePolicy, Registration, TokenBucket, catch,
    connection::Outbound,
    keepalive::TIMED_OUT,
    outgoing::{Queued, Stamp},
};
use crate::{
    Error, WebSocket,
    ws::{Compressor, Outbox, OutboxClose, WriteState},
};
use std::{
    collections::VecDeque,
    future::{Future, poll_fn},
    mem,
    pin::pin,
    sync::atomic::Ordering::Relaxed,
    task::Context,
};
use switchboard_proto::{CloseCode, CloseFrame, EncodedFrame, Message, Role};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Span;

/// Runs `on_open` of a registered connection, before its 101 is sent: what it sends
/// waits in the connection's queue until the socket is up. Returns whether it returned
/// (rather than panicked, which closes the connection with 1011).
pub(crate) async fn open<H: Handler>(conn: &Connection, handler: &H) -> bool {
    in_span(conn.span(), opening(conn, handler)).await
}

async fn opening<H: Handler>(conn: &Connection, handler: &H) -> bool {
    let healthy = catch(handler.on_open(conn)).await.is_ok();
    tracing::debug!(healthy, "connection opened");
    if !healthy {
        panicked(conn, "on_open");
    }
    // The peer's silence is counted from here: `on_open` was the server's time.
    conn.keepalive()
        .last_seen
        .store(conn.hub().now_micros(), Relaxed);
    if conn.state() == ConnectionState::Connecting {
        conn.set_state(ConnectionState::Open);
    }
    healthy
}

/// Ends a connection whose upgrade failed after `on_open` (the client left before its
/// 101): as one whose transport died, with 1006.
pub(crate) async fn abandon<H: Handler>(registration: &Registration, handler: &H) {
    let ended = Ended::peer(CloseCode::ABNORMAL, String::new());
    let span = registration.conn().span();
    in_span(span, report_end(registration, handler, &ended)).await;
}

/// Runs `future` in a connection's span, as `tracing::Instrument` does, borrowing the
/// span the connection holds: the events of its callbacks (the application's own
/// included) carry the connection's fields, and its task carries no copy of the span.
async fn in_span<F: Future>(span: &Span, future: F) -> F::Output {
    let mut future = pin!(future);
    poll_fn(|cx| span.in_scope(|| future.as_mut().poll(cx))).await
}

/// Runs an opened connection on its socket until it ends, then reports the close exactly
/// once and removes the connection from the hub. `healthy` is false when `on_open`
/// panicked: no other callback but the end's runs then.
///
/// It borrows the socket: the caller's task keeps the one copy of it (a future keeps
/// room for every value it moves, so moving the socket into this future would hold it
/// twice for the connection's life).
pub(crate) async fn drive<S, H>(
    ws: &mut WebSocket<S>,
    registration: &Registration,
    handler: &H,
    healthy: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let span = registration.conn().span();
    in_span(span, run(ws, registration, handler, healthy)).await;
}

async fn run<S, H>(ws: &mut WebSocket<S>, registration: &Registration, handler: &H, healthy: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let conn = registration.conn();
    let mut outbox = HubOutbox::new(conn);
    // Set when a callback panicked, or the client went over its rate with
    // `RatePolicy::Close`: the handler hears nothing more but the end.
    let mut broken = !healthy;
    let rate = conn.hub().config().max_message_rate;
    let mut bucket = TokenBucket::new(rate, conn.hub().now_micros());
    let ended = loop {
        let message = match ws.recv_with(&mut outbox).await {
            Some(Ok(message)) => message,
            Some(Err(error)) => break failed(conn, error, ws.sent_close()),
            None => break Ended::peer(CloseCode::ABNORMAL, String::new()),
        };
        tracing::trace!(opcode = ?message.opcode(), len = message.len(), "message received");
        // A ping shows that the peer sends, not that it reads: it does not put off the
        // sweeper's ping, which a peer that never reads cannot answer.
        let now = conn.hub().now_micros();
        if !matches!(message, Message::Ping(_)) {
            conn.keepalive().last_seen.store(now, Relaxed);
        }
        let called = match message {
            Message::Close(frame) => {
                conn.set_state(ConnectionState::Closing);
                break match (ws.sent_close(), frame) {
                    // We closed first and the peer answered: report our code.
                    (Some(ours), _) => Ended::ours(conn, ours),
                    (None, Some(theirs)) => Ended::peer(theirs.code, theirs.reason.to_string()),
                    (None, None) => Ended::peer(CloseCode::NO_STATUS, String::new()),
                };
            }
            // A handler that panicked hears nothing more but its `on_close`: the
            // connection is closing with 1011.
            _ if broken => continue,
            Message::Text(_) | Message::Binary(_) if !bucket.take(rate, now) => {
                broken = over_rate(conn);
                continue;
            }
            Message::Text(_) | Message::Binary(_) => {
                if let Some(instruments) = conn.hub().instruments() {
                    instruments.received(message.len());
                }
                ws.run_while(catch(handler.on_message(conn, message)), &mut outbox)
                    .await
                    .map_err(|_| "on_message")
            }
            // The callbacks that run once in a long while are boxed: a future holds
            // room for the largest state it can be in, and the task of an idle
            // connection should be the size of its wait for the next message.
            Message::Ping(payload) => ws
                .run_while(
                    catch(Box::pin(handler.on_ping(conn, &payload))),
                    &mut outbox,
                )
                .await
                .map_err(|_| "on_ping"),
            Message::Pong(payload) => {
                record_pong(conn);
                ws.run_while(
                    catch(Box::pin(handler.on_pong(conn, &payload))),
                    &mut outbox,
                )
                .await
                .map_err(|_| "on_pong")
            }
        };
        if let Err(callback) = called {
            broken = true;
            panicked(conn, callback);
        }
    };
    Box::pin(end(ws, registration, handler, ended)).await;
}

/// How a connection that failed ended.
fn failed(conn: &Connection, error: Error, sent_close: Option<&CloseFrame>) -> Ended {
    match (&error, sent_close) {
        // We closed (a policy, a timeout, shutdown): report our code.
        (Error::Aborted(frame), _) | (Error::CloseTimeout, Some(frame)) => Ended::ours(conn, frame),
        // The peer broke the protocol, and the hub closed for it.
        (Error::Protocol(e), _) => Ended {
            code: e.close_code(),
            reason: e.to_string(),
            error: Some(error),
            closed_by: Closer::Hub,
        },
        // The transport failed.
        _ => Ended {
            code: error.close_code(),
            reason: String::new(),
            error: Some(error),
            closed_by: Closer::Peer,
        },
    }
}

/// A callback panicked: its handler can no longer be trusted with this connection.
/// The panic hook has printed the panic itself; this says which connection it ended
/// (the event is in the connection's span).
fn panicked(conn: &Connection, callback: &'static str) {
    tracing::error!(
        parent: conn.span(),
        callback,
        "handler panicked: closing the connection with 1011"
    );
    // "1011 indicates that a server is terminating the connection because it encountered
    // an unexpected condition that prevented it from fulfilling the request."
    // (RFC 6455 §7.4.1) Nothing to do when the connection is closing already.
    conn.close_for(CloseCode::INTERNAL_ERROR, "internal error");
}

/// A data message came over the client's rate: it is dropped and counted, and with
/// [`RatePolicy::Close`] the connection is closed with 1008. Returns whether it is
/// closing. The first drop of a connection is logged, not each: a flood would flood
/// the log too.
fn over_rate(conn: &Connection) -> bool {
    let dropped = conn.count_rate_limited();
    let close = conn.hub().config().rate_policy == RatePolicy::Close;
    if close || dropped == 1 {
        tracing::debug!(close, "message rate exceeded");
    }
    if close {
        // "1008 indicates that an endpoint is terminating the connection because it has
        // received a message that violates its policy." (RFC 6455 §7.4.1)
        conn.close_for(CloseCode::POLICY_VIOLATION, "message rate exceeded");
    }
    close
}

/// How a connection ended, as its callbacks hear it.
struct Ended {
    code: CloseCode,
    reason: String,
    error: Option<Error>,
    closed_by: Closer,
}

impl Ended {
    /// The peer closed with `code`, or its transport ended (1006).
    fn peer(code: CloseCode, reason: String) -> Self {
        Self {
            code,
            reason,
            error: None,
            closed_by: Closer::Peer,
        }
    }

    /// We closed with `frame`, for whoever asked for it.
    fn ours(conn: &Connection, frame: &CloseFrame) -> Self {
        Self {
            code: frame.code,
            reason: frame.reason.to_string(),
            error: None,
            closed_by: conn.outbound().closed_by,
        }
    }
}

/// Reports the end of a connection exactly once, removes it from the hub, and
/// completes the close.
async fn end<S, H>(ws: &mut WebSocket<S>, registration: &Registration, handler: &H, ended: Ended)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    report_end(registration, handler, &ended).await;
    // Completes the close: waits (bounded) for the peer's end of stream, so that
    // dropping the socket does not reset it with our close frame in flight.
    let _ = ws.recv().await;
}

/// Runs the end's callbacks, then removes the connection from the hub: its rooms are
/// still its own during `on_close`.
async fn report_end<H: Handler>(registration: &Registration, handler: &H, ended: &Ended) {
    let conn = registration.conn();
    conn.set_closed();
    tracing::debug!(
        code = ended.code.as_u16(),
        reason = %ended.reason,
        closed_by = ended.closed_by.as_str(),
        error = ended.error.as_ref().map(tracing::field::display),
        "connection closed"
    );
    if let Some(instruments) = conn.hub().instruments() {
        instruments.closed(ended.code);
    }
    if let Some(error) = &ended.error {
        if catch(handler.on_error(conn, error)).await.is_err() {
            panicked(conn, "on_error");
        }
    }
    if catch(handler.on_close(conn, ended.code, &ended.reason))
        .await
        .is_err()
    {
        panicked(conn, "on_close");
    }
    registration.unregister();
}

fn record_pong(conn: &Connection) {
    let keepalive = conn.keepalive();
    let now = conn.hub().now_micros();
    keepalive.last_pong.store(now, Relaxed);
    let sent = keepalive.ping_sent.swap(0, Relaxed);
    if sent != 0 && sent != TIMED_OUT {
        keepalive
            .rtt
            .store(now.saturating_sub(sent).max(1), Relaxed);
    }
}

/// The connection's shared queue, seen from its task.
struct HubOutbox<'a> {
    conn: &'a Connection,
    /// `WriteState::outbox_written_total` when last seen, to credit the bytes written
    /// of the frames taken from the queue (and only those: automatic pongs and close
    /// frames were never charged).
    written: usize,
    /// The connection's compression context, for an agreement with context takeover;
    /// made with the first message it compresses.
    compressor: Option<Box<Compressor>>,
    /// Bytes of the frames handed to `WriteState` (wrapping, as `written`).
    pushed: usize,
    /// The timed broadcast frames handed to `WriteState` and not yet written whole:
    /// where each ends in `pushed`'s count, and its [`Stamp`]. Empty with metrics off.
    timed: VecDeque<(usize, Stamp)>,
}

impl<'a> HubOutbox<'a> {
    fn new(conn: &'a Connection) -> Self {
        Self {
            conn,
            written: 0,
            compressor: None,
            pushed: 0,
            timed: VecDeque::new(),
        }
    }

    /// Hands a frame to the socket's write queue, recording it when the hub records
    /// metrics.
    fn push(&mut self, write: &mut WriteState, frame: EncodedFrame, stamp: Stamp) {
        if let Some(instruments) = self.conn.hub().instruments() {
            self.pushed = self.pushed.wrapping_add(frame.len());
            // Control frames (pings, pongs, closes) have the opcode's high bit set
            // (RFC 6455 §5.2); they are not messages.
            if frame.head.as_bytes().first().is_some_and(|b| b & 0x08 == 0) {
                instruments.sent(frame.len());
            }
            if stamp != 0 {
                self.timed.push_back((self.pushed, stamp));
            }
        }
        write.push_encoded(frame);
    }

    /// Records the delivery of the timed frames written whole by now, `written` bytes
    /// of this outbox's frames in all (wrapping).
    fn delivered(&mut self, written: usize) {
        let Some(instruments) = self.conn.hub().instruments() else {
            return;
        };
        let now = self.conn.hub().now_micros();
        // Wrapping counts: a frame ending at `end` is written when `written` has
        // reached it, i.e. less than half the counter's range lies between them.
        while let Some(&(end, stamp)) = self.timed.front() {
            if written.wrapping_sub(end) > usize::MAX / 2 {
                break;
            }
            self.timed.pop_front();
            instruments.delivered(now.saturating_sub(stamp));
        }
    }

    /// Compresses messages taken from the queue, in its order, with no lock held; then
    /// charges the buffer what they take on the wire instead of their uncompressed size.
    fn compress(&mut self, pulled: VecDeque<(Queued, Stamp)>, write: &mut WriteState) {
        let (mut charged, mut encoded) = (0, 0);
        for (queued, stamp) in pulled {
            charged += queued.charged();
            let frame = self.encode(queued);
            encoded += frame.len();
            self.push(write, frame, stamp);
        }
        let mut out = self.conn.outbound();
        out.buffered = (out.buffered + encoded).saturating_sub(charged);
    }

    fn encode(&mut self, queued: Queued) -> EncodedFrame {
        match (queued, self.conn.deflate()) {
            (Queued::Frame(frame), _) => frame,
            (Queued::Dedicated { message, .. }, Some(params)) => {
                let compression = &self.conn.hub().config().compression;
                self.compressor
                    .get_or_insert_with(|| Box::new(compression.compressor(params, Role::Server)))
                    .frame(message)
                    .encode()
            }
            // Not queued without an agreement; sent as it is if it were.
            (Queued::Dedicated { message, .. }, None) => message.into_frame().encode(),
        }
    }
}

impl Outbox for HubOutbox<'_> {
    fn poll_pull(&mut self, cx: &mut Context<'_>, write: &mut WriteState) -> Option<OutboxClose> {
        // Register for the next wake-up before looking at the queue, so that a frame
        // queued in between is not missed (a sender wakes after it pushes).
        let conn = self.conn;
        conn.wake().register(cx.waker());
        self.written(write);
        let mut out = conn.outbound();
        let Outbound { frames, close, .. } = &mut *out;
        let close = close.take().map(|close| *close);
        if close.is_some() {
            conn.set_state(ConnectionState::Closing);
        }
        if frames
            .iter()
            .any(|(queued, _)| matches!(queued, Queued::Dedicated { .. }))
        {
            // Compression leaves the queue's lock: senders are not held up by zlib.
            let pulled = mem::take(frames);
            drop(out);
            self.compress(pulled, write);
        } else {
            for (queued, stamp) in frames.drain(..) {
                let frame = self.encode(queued);
                self.push(write, frame, stamp);
            }
        }
        close
    }

    fn written(&mut self, write: &WriteState) {
        let written = write.outbox_written_total.wrapping_sub(self.written);
        if written != 0 {
            self.written = write.outbox_written_total;
            let mut out = self.conn.outbound();
            out.buffered = out.buffered.saturating_sub(written);
            drop(out);
            if !self.timed.is_empty() {
                self.delivered(self.written);
            }
        }
    }
}
