//! An async WebSocket over any byte stream.
//!
//! [`WebSocket`] drives the sans-IO protocol of [`switchboard_proto`] over a tokio
//! `AsyncRead + AsyncWrite`: it answers pings, runs the close handshake, fails the
//! connection with the right code when the peer breaks the protocol, and batches queued
//! frames into one vectored write.

mod compression;
mod read;
mod split;
mod write;

pub use compression::Compression;
pub use split::{WsReader, WsWriter};

use crate::Error;
use bytes::{Bytes, BytesMut};
pub(crate) use compression::Compressor;
use read::ReadState;
use std::{
    future::{Future, poll_fn},
    pin::Pin,
    task::{Context, Poll, Waker},
    time::Duration,
};
use switchboard_proto::{
    CloseCode, CloseFrame, Limits, Message, Role, Utf8Bytes, deflate::DeflateParams,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    time::{Instant, Sleep, sleep, sleep_until, timeout, timeout_at},
};
pub(crate) use write::WriteState;
use write::{CloseState, Reaction};

/// A source of frames queued by other tasks (the hub's per-connection queue), polled by
/// the connection while it waits for the peer.
pub(crate) trait Outbox {
    /// Registers the task for a wake-up on new frames, then moves queued frames into
    /// `write`; returns a command to close, if one was queued.
    fn poll_pull(&mut self, cx: &mut Context<'_>, write: &mut WriteState) -> Option<OutboxClose>;

    /// Called after each write attempt, so that the outbox can account for the bytes
    /// of its frames that left (`WriteState::outbox_written_total`) without waiting
    /// for the next pull.
    fn written(&mut self, write: &WriteState) {
        let _ = write;
    }
}

/// A close requested through an [`Outbox`].
#[derive(Debug)]
pub(crate) enum OutboxClose {
    /// Send the close frame after the queued frames; wait for the peer's answer.
    Graceful(CloseFrame),
    /// Send the close frame if the socket takes it now, and end at once.
    Abort(CloseFrame),
}

/// The close frame we sent, and how long the peer has to answer it.
#[derive(Debug)]
struct SentClose {
    /// `None` for a close frame without a body.
    frame: Option<CloseFrame>,
    deadline: Instant,
    /// The timer for `deadline`, created when first polled.
    timer: Option<Pin<Box<Sleep>>>,
}

/// The clock of [`WebSocketConfig::idle_timeout`]. It ticks every half of the limit
/// rather than being moved on every read (a read only sets a flag, see
/// `ReadState::take_heard`): a tick finds the peer heard since the last one, or pings
/// it, or, pinged and still silent, ends the connection. So a silent peer is pinged
/// after between half and all of the limit, and the connection ends after between one
/// and one and a half times the limit.
#[derive(Debug)]
struct Idle {
    limit: Duration,
    /// The peer was pinged for its silence.
    pinged: bool,
    timer: Pin<Box<Sleep>>,
    /// The waker the timer was last polled with, while it is armed.
    armed_for: Option<Waker>,
}

/// What a tick of the idle clock calls for.
#[derive(Debug)]
enum Silence {
    /// The peer was heard: nothing.
    Heard,
    /// Silent for a tick: ping the peer.
    Ping,
    /// Silent for a tick after the ping: end the connection.
    Over,
}

impl Idle {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            pinged: false,
            timer: Box::pin(sleep(limit / 2)),
            armed_for: None,
        }
    }

    /// Polls the timer, unless it is armed to wake this very task and has not fired:
    /// polling it on every wait (tokio's bookkeeping and the waker's registration)
    /// cost more than the rest of a message's echo path.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let armed = self.armed_for.as_ref();
        if !self.timer.is_elapsed() && armed.is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let polled = self.timer.as_mut().poll(cx);
        self.armed_for = polled.is_pending().then(|| cx.waker().clone());
        polled
    }

    /// Judges a tick, `heard` telling whether the peer sent anything since the last
    /// one, and sets the next.
    fn tick(&mut self, heard: bool) -> Silence {
        let silence = match (heard, self.pinged) {
            (true, _) => Silence::Heard,
            (false, false) => Silence::Ping,
            (false, true) => Silence::Over,
        };
        self.pinged = matches!(silence, Silence::Ping);
        let next = Instant::now() + self.limit / 2;
        self.timer.as_mut().reset(next);
        self.armed_for = None;
        silence
    }
}

/// Settings of one connection.
///
/// Start from [`WebSocketConfig::default`] and change what you need, one method per
/// setting:
///
/// ```
/// use std::time::Duration;
/// use switchboard::{Compression, Role, WebSocket, WebSocketConfig};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let config = WebSocketConfig::default()
///     .max_message_size(1 << 20)
///     .compression(Compression::shared())
///     .idle_timeout(Some(Duration::from_secs(30)));
/// let (stream, _peer) = tokio::io::duplex(4096);
/// let ws = WebSocket::from_raw_socket(stream, Role::Server, config);
/// assert_eq!(ws.config(), config);
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebSocketConfig {
    /// The longest frame payload accepted; a longer one closes with 1009.
    ///
    /// Default 16 MiB: a frame is held whole before it is delivered, so this bounds the
    /// read buffer; it is tungstenite's default, and what Autobahn's largest
    /// single-frame cases need.
    pub max_frame_size: usize,
    /// The longest message accepted, after reassembly (and after decompression, where
    /// negotiated); a longer one closes with 1009.
    ///
    /// Default 64 MiB: large enough for file-sized payloads, small enough that a hostile
    /// peer cannot exhaust memory with one message.
    pub max_message_size: usize,
    /// How long to wait for the peer's close frame after sending ours, and for the
    /// peer to close the transport after the handshake, before giving up.
    ///
    /// Default 5 s: long enough for a peer across the world, short enough that a
    /// vanished peer does not hold a socket.
    pub close_timeout: Duration,
    /// permessage-deflate: negotiated by the server upgrades and offered by the client
    /// when enabled.
    ///
    /// Default [`Compression::Disabled`]: compression costs CPU and memory on every
    /// connection, and pays off only for large, repetitive messages.
    pub compression: Compression,
    /// How many queued bytes may wait unwritten, for a peer that does not read them,
    /// before we stop reading from it: past this the connection reads nothing more
    /// (the peer's sends then stall in TCP) until the backlog drains below it. Close
    /// commands, the close timeout and [`WebSocketConfig::idle_timeout`] still apply
    /// meanwhile. (Like tungstenite's `max_write_buffer_size`, except that it pauses
    /// reading rather than failing the write.)
    ///
    /// Default 1 MiB, the hub's default for its own queue: a peer that makes us answer
    /// (pings, requests) without reading the answers cannot make us hold more for it.
    pub max_write_buffer_size: usize,
    /// How long the peer may stay silent (send nothing at all, not even the rest of a
    /// frame) before it is pinged, which every live peer answers ("Upon receipt of a
    /// Ping frame, an endpoint MUST send a Pong frame in response", RFC 6455 §5.5.2),
    /// and, still silent, the connection ends: it is closed with 1001 "idle timeout",
    /// without waiting for an answer from a peer that gives none, and `recv` reports
    /// [`Error::Aborted`]. The clock ticks every half of the limit rather than being
    /// moved on every read, so the ping leaves after between half and all of the
    /// limit of silence, and the connection ends after between one and one and a half
    /// times the limit. A peer
    /// that reads nothing of what we queue for it, while we hold back from reading it
    /// (see [`WebSocketConfig::max_write_buffer_size`]), counts as silent. It applies
    /// while [`WebSocket::recv`] waits; split halves do not apply it. `None` turns it
    /// off.
    ///
    /// Default 60 s, Phoenix's heartbeat timeout (uWebSockets' `idleTimeout` works the
    /// same way, pinging before it closes): a live peer answers a ping in far less, and
    /// a vanished peer, or one that stopped half-way through a frame, holds a socket no
    /// longer. The hub turns it off: its keepalive sweeper pings all its connections
    /// with one timer.
    pub idle_timeout: Option<Duration>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            max_frame_size: limits.max_frame_size,
            max_message_size: limits.max_message_size,
            close_timeout: Duration::from_secs(5),
            compression: Compression::Disabled,
            max_write_buffer_size: 1 << 20,
            idle_timeout: Some(Duration::from_secs(60)),
        }
    }
}

impl WebSocketConfig {
    /// Sets [`WebSocketConfig::max_frame_size`]. A frame longer than
    /// [`WebSocketConfig::max_message_size`] is refused too (also with 1009), so a frame
    /// limit above the message limit has no effect.
    pub fn max_frame_size(mut self, max: usize) -> Self {
        self.max_frame_size = max;
        self
    }

    /// Sets [`WebSocketConfig::max_message_size`]: it bounds every frame of the message
    /// too.
    pub fn max_message_size(mut self, max: usize) -> Self {
        self.max_message_size = max;
        self
    }

    /// Sets [`WebSocketConfig::close_timeout`].
    pub fn close_timeout(mut self, close_timeout: Duration) -> Self {
        self.close_timeout = close_timeout;
        self
    }

    /// Sets [`WebSocketConfig::compression`].
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Sets [`WebSocketConfig::max_write_buffer_size`].
    pub fn max_write_buffer_size(mut self, max: usize) -> Self {
        self.max_write_buffer_size = max;
        self
    }

    /// Sets [`WebSocketConfig::idle_timeout`]; `None` turns it off.
    pub fn idle_timeout(mut self, idle_timeout: Option<Duration>) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// The limits the decoder enforces on the peer.
    fn limits(&self) -> Limits {
        Limits::default()
            .max_frame_size(self.max_frame_size)
            .max_message_size(self.max_message_size)
    }
}

/// A WebSocket connection over the stream `S`, after the opening handshake.
#[derive(Debug)]
pub struct WebSocket<S> {
    io: S,
    read: ReadState,
    write: WriteState,
    role: Role,
    /// Of the [`WebSocketConfig`], what the decoder does not hold already (its limits):
    /// every connection carries these fields.
    close_timeout: Duration,
    compression: Compression,
    max_write_buffer_size: usize,
    /// The idle clock, unless the limit is off (boxed: the hub's connections go
    /// without).
    idle: Option<Box<Idle>>,
    /// Our close frame and the deadline for the peer's answer, once we sent it (boxed:
    /// every connection carries the field, only a closing one fills it).
    sent_close: Option<Box<SentClose>>,
    /// A close command taken from the outbox while a callback ran, not yet applied.
    pending_close: Option<Box<OutboxClose>>,
    /// `recv` has reported the end of the connection.
    finished: bool,
    /// The close handshake is done but the peer's end of stream has not been read yet:
    /// the next `recv` waits for it (see [`WebSocket::linger`]).
    linger_pending: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Wraps a stream on which the opening handshake is already done.
    pub fn from_raw_socket(io: S, role: Role, config: WebSocketConfig) -> Self {
        Self::from_partially_read(io, BytesMut::new(), role, config)
    }

    /// Like [`WebSocket::from_raw_socket`], with bytes that were read past the handshake
    /// (the peer's first frames may arrive in the same packet as its handshake).
    pub fn from_partially_read(
        io: S,
        buffered: BytesMut,
        role: Role,
        config: WebSocketConfig,
    ) -> Self {
        Self {
            io,
            read: ReadState::new(role, config.limits(), buffered),
            write: WriteState::new(role),
            role,
            close_timeout: config.close_timeout,
            compression: config.compression,
            max_write_buffer_size: config.max_write_buffer_size,
            idle: config.idle_timeout.map(|limit| Box::new(Idle::new(limit))),
            sent_close: None,
            pending_close: None,
            finished: false,
            linger_pending: false,
        }
    }

    /// The same connection, running the permessage-deflate agreement `params` made in
    /// its opening handshake: compressed messages are inflated, and data messages past
    /// the threshold of [`WebSocketConfig::compression`] compressed. The upgrades and the
    /// client call it; call it yourself, right after construction, only after
    /// negotiating with [`switchboard_proto::handshake`] on your own.
    pub fn with_deflate(mut self, params: DeflateParams) -> Self {
        self.read.set_deflate(self.role, &params);
        self.write
            .set_deflate(self.compression.compressor(&params, self.role));
        self
    }

    /// The permessage-deflate agreement in force, if the handshake made one.
    pub fn deflate(&self) -> Option<DeflateParams> {
        self.write.deflate_params()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Which side of the connection this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The settings in force.
    pub fn config(&self) -> WebSocketConfig {
        let limits = self.read.limits();
        WebSocketConfig::default()
            .max_frame_size(limits.max_frame_size)
            .max_message_size(limits.max_message_size)
            .close_timeout(self.close_timeout)
            .compression(self.compression)
            .max_write_buffer_size(self.max_write_buffer_size)
            .idle_timeout(self.idle.as_ref().map(|idle| idle.limit))
    }

    /// Bytes queued and not yet written to the stream (the browser API's
    /// `bufferedAmount`).
    pub fn buffered_amount(&self) -> usize {
        self.write.unwritten_len()
    }

    /// Receives the next message.
    ///
    /// Pings are answered and close frames echoed before they are returned. `None`
    /// after the connection has ended; the call that ends it returns either the peer's
    /// `Message::Close` or an error saying why it ended ([`Error::close_code`]).
    ///
    /// Cancel-safe: dropping the future loses no received data.
    pub fn recv(&mut self) -> impl Future<Output = Option<Result<Message, Error>>> + '_ {
        // Not an `async fn`: one wrapping future less in every connection's task.
        self.recv_inner(None)
    }

    /// Like [`WebSocket::recv`], also taking frames and close commands from `outbox`
    /// and writing them while waiting for the peer.
    pub(crate) fn recv_with<'a>(
        &'a mut self,
        outbox: &'a mut (dyn Outbox + Send),
    ) -> impl Future<Output = Option<Result<Message, Error>>> + 'a {
        self.recv_inner(Some(outbox))
    }

    async fn recv_inner(
        &mut self,
        mut outbox: Option<&mut (dyn Outbox + Send)>,
    ) -> Option<Result<Message, Error>> {
        if self.finished {
            if std::mem::take(&mut self.linger_pending) {
                Box::pin(self.await_peer_eof()).await;
            }
            return None;
        }
        let message = match poll_fn(|cx| self.poll_next(cx, &mut outbox)).await {
            Ok(Some(message)) => message,
            // Bound by value, so that nothing of the poll's result outlives this line
            // into the await below (and into the size of every `recv` future).
            ended => {
                let error = ended.err().unwrap_or(Error::AbnormalClosure);
                return Some(Err(self.fail_boxed(error).await));
            }
        };
        match self.write.react(&message) {
            Reaction::None => Some(Ok(message)),
            // A pong was queued: it leaves now if the socket takes it, or else with the
            // next call, which writes what is pending before it reads. (Not awaited here:
            // an await with the message alive would make every `recv` future hold room
            // for a message.)
            Reaction::Flush => match self.try_flush() {
                Ok(()) => Some(Ok(message)),
                Err(e) => {
                    drop(message);
                    Some(Err(self.fail_boxed(e.into()).await))
                }
            },
            Reaction::Finish => Some(Ok(Box::pin(self.finish_with(message)).await)),
        }
    }

    /// Writes what is queued as far as the socket takes it without waiting.
    fn try_flush(&mut self) -> std::io::Result<()> {
        let mut cx = Context::from_waker(Waker::noop());
        match self.write.poll_flush(&mut cx, &mut self.io) {
            Poll::Ready(result) => result,
            Poll::Pending => Ok(()),
        }
    }

    /// [`WebSocket::finish`], then gives back the message that ended the connection.
    async fn finish_with(&mut self, message: Message) -> Message {
        self.finish().await;
        message
    }

    /// Polls for the next message while writing queued frames and enforcing the close
    /// deadline.
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &mut Option<&mut (dyn Outbox + Send)>,
    ) -> Poll<Result<Option<Message>, Error>> {
        // Always poll the outbox, even with a close pending: polling registers the wake-up.
        let pulled = match outbox {
            Some(outbox) => outbox.poll_pull(cx, &mut self.write),
            None => None,
        };
        let command = match (self.pending_close.take().map(|close| *close), pulled) {
            (_, Some(abort @ OutboxClose::Abort(_))) => Some(abort),
            (pending, pulled) => pending.or(pulled),
        };
        {
            match command {
                Some(OutboxClose::Graceful(frame)) => {
                    let _ = self.feed(Message::Close(Some(frame)));
                }
                Some(OutboxClose::Abort(frame)) => return Poll::Ready(Err(Error::Aborted(frame))),
                None => {}
            }
        }
        if self.write.has_pending() {
            let flushed = self.write.poll_flush(cx, &mut self.io);
            if let Some(outbox) = outbox {
                outbox.written(&self.write);
            }
            if let Poll::Ready(Err(e)) = flushed {
                return Poll::Ready(Err(e.into()));
            }
        }
        if let Some(sent) = &mut self.sent_close {
            let deadline = sent.deadline;
            let timer = sent
                .timer
                .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Error::CloseTimeout));
            }
        }
        if self.write.unwritten_len() > self.max_write_buffer_size {
            // Backpressure: the flush above waits for the socket to take more, and its
            // wake-up resumes reading once it has.
            return self.poll_idle(cx).map(Err);
        }
        match self.read.poll_next(cx, &mut self.io) {
            // Checked after the read, which has taken in whatever the peer sent: a
            // caller slow to call again does not make a talking peer look silent.
            Poll::Pending => self.poll_idle(cx).map(Err),
            done => done,
        }
    }

    /// Runs the idle clock while the peer is silent: ready with the error that ends
    /// the connection when the peer stayed silent after a ping.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        let Some(idle) = &mut self.idle else {
            return Poll::Pending;
        };
        while idle.poll_timer(cx).is_ready() {
            // Once we closed, the close timeout is the limit.
            if self.sent_close.is_some() {
                return Poll::Pending;
            }
            match idle.tick(self.read.take_heard()) {
                Silence::Heard => {}
                Silence::Ping => {
                    if self.write.push(Message::Ping(Bytes::new())).is_ok() {
                        // An error shows again on the next flush, which reports it.
                        let _ = self.write.poll_flush(cx, &mut self.io);
                    }
                }
                Silence::Over => {
                    let frame = CloseFrame::new(CloseCode::GOING_AWAY, "idle timeout");
                    return Poll::Ready(Error::Aborted(frame));
                }
            }
        }
        Poll::Pending
    }

    /// Runs `work` to completion while writing frames from `outbox`, so that a slow
    /// callback does not hold back what others send to this connection. Reading waits.
    pub(crate) async fn run_while<T>(
        &mut self,
        work: impl Future<Output = T>,
        outbox: &mut (dyn Outbox + Send),
    ) -> T {
        let mut work = std::pin::pin!(work);
        let mut write_failed = false;
        poll_fn(|cx| {
            if let Poll::Ready(value) = work.as_mut().poll(cx) {
                return Poll::Ready(value);
            }
            if !write_failed {
                // Close commands wait for the next receive, which applies them in order.
                if let Some(close) = outbox.poll_pull(cx, &mut self.write) {
                    self.pending_close = Some(Box::new(close));
                }
                if self.write.has_pending() {
                    write_failed =
                        matches!(self.write.poll_flush(cx, &mut self.io), Poll::Ready(Err(_)));
                    outbox.written(&self.write);
                }
            }
            Poll::Pending
        })
        .await
    }

    /// The close frame we sent, if any: the code an application reports when it closed.
    pub(crate) fn sent_close(&self) -> Option<&CloseFrame> {
        self.sent_close.as_ref()?.frame.as_ref()
    }

    /// Sends a message and waits until it is written.
    ///
    /// Sending `Message::Close` starts the close handshake: keep calling
    /// [`WebSocket::recv`] to receive the peer's answer, or use [`WebSocket::close`].
    pub async fn send(&mut self, message: impl Into<Message>) -> Result<(), Error> {
        self.feed(message)?;
        self.flush().await
    }

    /// Queues a message without writing it: queued messages leave together, in one
    /// vectored write, on the next [`WebSocket::flush`] or [`WebSocket::send`].
    pub fn feed(&mut self, message: impl Into<Message>) -> Result<(), Error> {
        let message = message.into();
        let close = match &message {
            Message::Close(frame) => Some(frame.clone()),
            _ => None,
        };
        self.write.push(message)?;
        if let Some(frame) = close {
            self.sent_close = Some(Box::new(SentClose {
                frame,
                deadline: Instant::now() + self.close_timeout,
                timer: None,
            }));
        }
        Ok(())
    }

    /// Writes every queued message.
    ///
    /// Once our close frame is queued, the close timeout bounds the wait: a peer that
    /// stopped reading does not hold the connection ([`Error::CloseTimeout`]).
    pub async fn flush(&mut self) -> Result<(), Error> {
        let flushed = match self.sent_close.as_ref().map(|sent| sent.deadline) {
            None => self.write.flush(&mut self.io).await.map_err(Error::from),
            // Boxed: only a closing connection needs the timer.
            Some(deadline) => {
                match Box::pin(timeout_at(deadline, self.write.flush(&mut self.io))).await {
                    Ok(flushed) => flushed.map_err(Error::from),
                    Err(_) => Err(Error::CloseTimeout),
                }
            }
        };
        match flushed {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail_boxed(e).await),
        }
    }

    /// Runs the close handshake: sends a close frame, discards incoming messages until
    /// the peer's close frame arrives (or the close timeout passes), then closes the
    /// transport.
    pub async fn close(
        &mut self,
        code: CloseCode,
        reason: impl Into<Utf8Bytes>,
    ) -> Result<(), Error> {
        self.send(Message::Close(Some(CloseFrame::new(code, reason))))
            .await?;
        while let Some(next) = self.recv().await {
            next?;
        }
        Ok(())
    }

    /// Splits the connection into halves that can be used from different tasks.
    pub fn split(self) -> (WsReader<S>, WsWriter<S>) {
        split::split(self)
    }

    /// [`WebSocket::fail`] on the heap: the cold path's timers and futures would
    /// otherwise be part of every `recv` and `send` future, hence of every connection's
    /// task for its whole life.
    fn fail_boxed(&mut self, error: Error) -> Pin<Box<impl Future<Output = Error> + '_>> {
        Box::pin(self.fail(error))
    }

    /// Ends the connection after a failure; returns the error for the caller to report.
    async fn fail(&mut self, error: Error) -> Error {
        self.finished = true;
        match &error {
            // "_Fail the WebSocket Connection_ ... the endpoint SHOULD send a Close frame
            // with an appropriate status code" (RFC 6455 §7.1.7).
            Error::Protocol(e) => {
                self.write
                    .push_failure_close(&CloseFrame::new(e.close_code(), e.to_string()));
                if self.flush_closing().await {
                    self.linger().await;
                }
            }
            Error::CloseTimeout => {
                self.write.close = CloseState::Done;
                self.shutdown().await;
            }
            // The peer is gone or cannot keep up: one attempt to hand over the close
            // frame, without waiting.
            Error::Aborted(frame) => {
                self.write.push_failure_close(frame);
                let _ = poll_fn(|cx| Poll::Ready(self.write.poll_flush(cx, &mut self.io))).await;
                self.shutdown().await;
            }
            _ => self.write.close = CloseState::Done,
        }
        error
    }

    /// Completes the close handshake after the peer's close frame: our answer is
    /// flushed and a server shuts its side at once, so the application learns of the
    /// close without waiting for the peer; the next `recv` waits for the peer's end of
    /// stream.
    async fn finish(&mut self) {
        self.finished = true;
        if self.flush_closing().await {
            if self.role == Role::Server {
                self.shutdown().await;
            }
            self.linger_pending = true;
        }
    }

    /// Writes what is queued after a close, within the close timeout: the peer may have
    /// stopped reading, and must not hold the connection. Whether all of it was written.
    async fn flush_closing(&mut self) -> bool {
        let flush = self.write.flush(&mut self.io);
        matches!(timeout(self.close_timeout, flush).await, Ok(Ok(())))
    }

    /// Shuts our side of the transport, within the close timeout (a TLS stream first
    /// writes its own closing message, which a peer that does not read can block).
    async fn shutdown(&mut self) {
        let _ = timeout(self.close_timeout, self.io.shutdown()).await;
    }

    /// Closes the transport after the close handshake.
    ///
    /// "The underlying TCP connection, in most normal cases, SHOULD be closed first by
    /// the server" (RFC 6455 §7.1.1): a server shuts its side at once, a client waits for
    /// the server to. Either then reads until the peer's end of stream, because closing a
    /// socket with unread bytes resets it and can destroy our close frame in flight.
    async fn linger(&mut self) {
        if self.role == Role::Server {
            self.shutdown().await;
        }
        self.await_peer_eof().await;
    }

    /// Reads until the peer's end of stream (bounded by the close timeout); a client
    /// then shuts its side.
    async fn await_peer_eof(&mut self) {
        let _ = timeout(self.close_timeout, self.read.drain(&mut self.io)).await;
        if self.role == Role::Client {
            self.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builder_method_sets_its_field() {
        // Values other than the defaults, so that a method that sets nothing fails.
        let config = WebSocketConfig::default()
            .max_frame_size(100)
            .max_message_size(200)
            .close_timeout(Duration::from_secs(1))
            .compression(Compression::shared())
            .max_write_buffer_size(300)
            .idle_timeout(None);
        // Exhaustive: a new field does not compile here until it has a method and a check.
        let WebSocketConfig {
            max_frame_size,
            max_message_size,
            close_timeout,
            compression,
            max_write_buffer_size,
            idle_timeout,
        } = config;
        assert_eq!(max_frame_size, 100);
        assert_eq!(max_message_size, 200);
        assert_eq!(close_timeout, Duration::from_secs(1));
        assert_eq!(compression, Compression::shared());
        assert_eq!(max_write_buffer_size, 300);
        assert_eq!(idle_timeout, None);
    }

    #[tokio::test]
    async fn a_connection_reports_the_config_it_was_built_with() {
        let config = WebSocketConfig::default()
            .max_frame_size(100)
            .max_message_size(200)
            .idle_timeout(Some(Duration::from_secs(7)));
        let (stream, _peer) = tokio::io::duplex(64);
        let ws = WebSocket::from_raw_socket(stream, Role::Server, config);
        assert_eq!(ws.config(), config);
    }
}
