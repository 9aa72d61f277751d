//! The write side: a queue of encoded frames, flushed with vectored writes.

use super::compression::Compressor;
use crate::Error;
use bytes::Bytes;
use std::{
    cell::RefCell,
    collections::VecDeque,
    future::poll_fn,
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};
use switchboard_proto::{
    CloseFrame, EncodedFrame, Frame, Message, Role, deflate::DeflateParams,
    frame::MAX_CONTROL_PAYLOAD,
};
use tokio::io::AsyncWrite;

/// How many buffers one `writev` takes; Linux accepts 1024, but beyond a few dozen
/// frames the syscall is no longer the cost.
const MAX_IOV: usize = 64;

/// Up to this many bytes in several pieces are copied together and written with one
/// `write` rather than `writev`: for a small frame the copy costs less than the kernel's
/// handling of a second piece. Larger batches (a broadcast's shared payloads) go as they
/// are, without copying.
const COALESCE: usize = 2 << 10;

thread_local! {
    /// Where small pieces are copied together; one per thread, as a thread writes one
    /// socket at a time.
    static COALESCED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What has been sent and received of the close handshake (RFC 6455 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseState {
    /// Messages flow both ways.
    Open,
    /// We sent a close frame and wait for the peer's.
    Sent,
    /// The handshake is complete, or the connection failed.
    Done,
}

/// Who queued a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// An [`Outbox`](super::Outbox) (`push_encoded`): its owner accounts for the bytes.
    Outbox,
    /// The WebSocket itself: its automatic pongs and close frames, and what is sent
    /// through it directly.
    Socket,
}

/// Frames waiting to be written, and the close handshake's progress.
#[derive(Debug)]
pub(crate) struct WriteState {
    role: Role,
    queue: VecDeque<(EncodedFrame, Source)>,
    /// Bytes of the front frame already written.
    written: usize,
    /// Bytes queued and not yet written: decides between copying and `writev` without
    /// walking the queue.
    unwritten_len: usize,
    /// Bytes written since the start (wrapping) of the frames an outbox queued, for the
    /// outbox's accounting: it was charged for those, and for nothing the WebSocket
    /// queued on its own, however many pongs a peer asks for.
    pub(crate) outbox_written_total: usize,
    /// Frames taken off the front of the queue since the start (wrapping): with
    /// `pong_at`, finds the queued pong.
    popped: usize,
    /// The position (counted like `popped`) of the last pong queued, which may still be
    /// waiting in the queue.
    pong_at: Option<usize>,
    pub(crate) close: CloseState,
    /// Compresses data messages, when permessage-deflate was negotiated (boxed, to keep
    /// connections without it small).
    deflate: Option<Box<Compressor>>,
}

/// What the connection must do after a received message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reaction {
    /// Nothing beyond delivering it.
    None,
    /// A pong was queued: flush it.
    Flush,
    /// The close handshake is complete: flush, then end the connection.
    Finish,
}

impl WriteState {
    pub(crate) fn new(role: Role) -> Self {
        Self {
            role,
            queue: VecDeque::new(),
            written: 0,
            unwritten_len: 0,
            outbox_written_total: 0,
            popped: 0,
            pong_at: None,
            close: CloseState::Open,
            deflate: None,
        }
    }

    /// Compresses data messages from now on (permessage-deflate was negotiated).
    pub(crate) fn set_deflate(&mut self, compressor: Compressor) {
        self.deflate = Some(Box::new(compressor));
    }

    /// The permessage-deflate agreement in force, if any.
    pub(crate) fn deflate_params(&self) -> Option<DeflateParams> {
        self.deflate.as_ref().map(|compressor| compressor.params())
    }

    /// Queues a message; closing messages move the close handshake forward.
    pub(crate) fn push(&mut self, message: Message) -> Result<(), Error> {
        if self.close != CloseState::Open {
            return Err(Error::Closed);
        }
        match &message {
            Message::Ping(p) | Message::Pong(p) if p.len() > MAX_CONTROL_PAYLOAD => {
                return Err(Error::ControlFrameTooLong(p.len()));
            }
            Message::Close(_) => self.close = CloseState::Sent,
            _ => {}
        }
        let frame = match &mut self.deflate {
            Some(compressor) => compressor.frame(message),
            None => message.into_frame(),
        };
        self.push_frame(frame);
        Ok(())
    }

    /// Queues a close frame to fail the connection, unless one was already sent.
    pub(crate) fn push_failure_close(&mut self, close: &CloseFrame) {
        if self.close == CloseState::Open {
            self.push_frame(Frame::close_with(Some(close)));
        }
        self.close = CloseState::Done;
    }

    /// Applies the protocol's automatic answers to a received message: a pong for a
    /// ping, a close for a close.
    pub(crate) fn react(&mut self, message: &Message) -> Reaction {
        match (message, self.close) {
            // "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in
            // response, unless it already received a Close frame. It SHOULD respond
            // with Pong frame as soon as is practical." (RFC 6455 §5.5.2)
            (Message::Ping(payload), CloseState::Open) => {
                self.push_pong(payload.clone());
                Reaction::Flush
            }
            // "If an endpoint receives a Close frame and did not previously send a Close
            // frame, the endpoint MUST send a Close frame in response. ... the endpoint
            // typically echos the status code it received." (§5.5.1)
            (Message::Close(close), CloseState::Open) => {
                self.push_frame(Frame::close_with(close.as_ref()));
                self.close = CloseState::Done;
                Reaction::Finish
            }
            (Message::Close(_), CloseState::Sent) => {
                self.close = CloseState::Done;
                Reaction::Finish
            }
            _ => Reaction::None,
        }
    }

    /// Queues the answer to a ping, in place of an earlier answer still waiting whole
    /// in the queue: "If an endpoint receives a Ping frame and has not yet sent Pong
    /// frame(s) in response to previous Ping frame(s), the endpoint MAY elect to send a
    /// Pong frame for only the most recently processed Ping frame." (RFC 6455 §5.5.3)
    /// So a peer that pings without reading costs one queued pong, not one per ping.
    fn push_pong(&mut self, payload: Bytes) {
        let pong = self.encode(Frame::pong(payload));
        if let Some((waiting, _)) = self.waiting_pong().and_then(|i| self.queue.get_mut(i)) {
            self.unwritten_len = self.unwritten_len - waiting.len() + pong.len();
            *waiting = pong;
            return;
        }
        self.pong_at = Some(self.popped.wrapping_add(self.queue.len()));
        self.enqueue(pong, Source::Socket);
    }

    /// Where the last pong queued is in the queue, if none of it has been written yet.
    fn waiting_pong(&self) -> Option<usize> {
        // Past the end of the queue (wrapped below zero) when it has been written.
        let index = self.pong_at?.wrapping_sub(self.popped);
        (index < self.queue.len() && (index > 0 || self.written == 0)).then_some(index)
    }

    fn push_frame(&mut self, frame: Frame) {
        let frame = self.encode(frame);
        self.enqueue(frame, Source::Socket);
    }

    fn encode(&self, frame: Frame) -> EncodedFrame {
        match self.role {
            Role::Server => frame,
            // "A client MUST mask all frames that it sends to the server" with a key
            // "derived from a strong source of entropy" (§5.3).
            Role::Client => frame.masked(rand::random()),
        }
        .encode()
    }

    /// Writes every queued frame, batching as many as fit in one vectored write.
    ///
    /// Cancel-safe: progress is recorded after each completed write.
    pub(crate) async fn flush<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx, io)).await
    }

    /// Polls [`WriteState::flush`].
    pub(crate) fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut W,
    ) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let n = ready!(self.poll_write_some(cx, &mut *io))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        Pin::new(io).poll_flush(cx)
    }

    /// Whether frames wait to be written.
    pub(crate) fn has_pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Bytes queued and not yet written.
    pub(crate) fn unwritten_len(&self) -> usize {
        self.unwritten_len
    }

    /// Queues a frame from an outbox, already encoded (e.g. one broadcast to many);
    /// its bytes count in `outbox_written_total` as they are written.
    pub(crate) fn push_encoded(&mut self, frame: EncodedFrame) {
        self.enqueue(frame, Source::Outbox);
    }

    fn enqueue(&mut self, frame: EncodedFrame, source: Source) {
        self.unwritten_len += frame.len();
        self.queue.push_back((frame, source));
    }

    /// One write of the unwritten bytes: up to [`COALESCE`] of them copied together and
    /// written with `write`, more with a `writev` of the pieces as they are.
    fn poll_write_some<W: AsyncWrite + Unpin>(
        &self,
        cx: &mut Context<'_>,
        io: &mut W,
    ) -> Poll<io::Result<usize>> {
        if self.unwritten_len <= COALESCE {
            return COALESCED.with_borrow_mut(|buf| {
                buf.clear();
                self.each_unwritten(|part| {
                    buf.extend_from_slice(part);
                    true
                });
                Pin::new(io).poll_write(cx, buf)
            });
        }
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut count = 0;
        self.each_unwritten(|part| {
            let Some(slot) = slices.get_mut(count) else {
                return false;
            };
            *slot = IoSlice::new(part);
            count += 1;
            true
        });
        let slices = slices.get(..count).unwrap_or_default();
        Pin::new(io).poll_write_vectored(cx, slices)
    }

    /// Calls `f` with each piece of the queued bytes not yet written, front first, as
    /// they are stored, until it returns `false`. (A loop rather than an iterator: the
    /// flush of a single small frame spent more on a flattening iterator than on
    /// copying its bytes.)
    fn each_unwritten<'a>(&'a self, mut f: impl FnMut(&'a [u8]) -> bool) {
        let mut skip = self.written;
        for (frame, _) in &self.queue {
            for part in [frame.head.as_bytes(), &frame.payload[..]] {
                match part.get(skip..) {
                    Some(rest) if !rest.is_empty() => {
                        if !f(rest) {
                            return;
                        }
                        skip = 0;
                    }
                    _ => skip -= skip.min(part.len()),
                }
            }
        }
    }

    /// Records that `n` more bytes were written, front first.
    fn advance(&mut self, mut n: usize) {
        self.unwritten_len = self.unwritten_len.saturating_sub(n);
        while let Some((front, source)) = self.queue.front() {
            let taken = n.min(front.len() - self.written);
            if *source == Source::Outbox {
                self.outbox_written_total = self.outbox_written_total.wrapping_add(taken);
            }
            self.written += taken;
            n -= taken;
            if self.written < front.len() {
                break;
            }
            self.written = 0;
            self.queue.pop_front();
            self.popped = self.popped.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WriteState;
    use bytes::Bytes;
    use switchboard_proto::{Message, Role};
    use tokio::{
        io::AsyncReadExt,
        net::{TcpListener, TcpStream},
    };

    /// The outbox is charged for its frames only: the pongs and close frames that the
    /// WebSocket queues on its own, between and after them, must not be credited to it.
    #[tokio::test]
    async fn only_the_outboxs_frames_count_as_its_bytes_written() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let frame = |len| {
            Message::Binary(Bytes::from(vec![1; len]))
                .into_frame()
                .encode()
        };
        let (first, second) = (frame(100), frame(1000));
        let charged = first.len() + second.len();
        let mut write = WriteState::new(Role::Server);
        write.push_encoded(first);
        write.react(&Message::Ping(Bytes::from_static(&[2; 125])));
        write.push_encoded(second);
        write.react(&Message::Close(None));
        write.flush(&mut server).await.unwrap();
        drop(server);
        let mut wire = Vec::new();
        client.read_to_end(&mut wire).await.unwrap();
        assert_eq!(
            wire.len(),
            charged + 127 + 2,
            "a pong and a close were written too"
        );
        assert_eq!(write.outbox_written_total, charged);
    }
}
