//! The read side: a buffer and the protocol decoder.

use crate::Error;
use bytes::BytesMut;
use std::{
    cell::Cell,
    future::poll_fn,
    pin::Pin,
    task::{Context, Poll},
};
use switchboard_proto::{Decoder, Limits, Message, Role, deflate::DeflateParams};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::poll_read_buf;

/// The smallest read: a 16 KiB message and its header arrive in one syscall. Only a
/// connection in the middle of reading holds a buffer (see [`SPARE`]), so the size costs
/// no idle memory.
const MIN_READ: usize = (16 << 10) + 16;

/// The largest buffer a thread keeps spare: one that grew for a large message is freed.
const MAX_SPARE: usize = 64 << 10;

thread_local! {
    /// A read buffer between uses. A connection that waits for its peer with nothing
    /// half-read holds no buffer (an idle connection would otherwise keep 4 KiB for
    /// nothing): it parks its empty buffer here and takes this one, or a new one, when
    /// it reads again. One per thread, as the thread reads one socket at a time.
    static SPARE: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// Reads bytes into the decoder's buffer and decodes messages.
#[derive(Debug)]
pub(crate) struct ReadState {
    decoder: Decoder,
    /// Bytes arrived since [`ReadState::take_heard`] last looked.
    heard: bool,
}

impl ReadState {
    pub(crate) fn new(role: Role, limits: Limits, buffered: BytesMut) -> Self {
        let mut decoder = Decoder::new(role, limits);
        // What the handshake left unread, if anything; its buffer otherwise goes.
        if !buffered.is_empty() {
            decoder.feed(buffered);
        }
        Self {
            decoder,
            heard: false,
        }
    }

    /// The limits the decoder applies.
    pub(crate) fn limits(&self) -> Limits {
        self.decoder.limits()
    }

    /// Inflates compressed messages from now on; called before anything is decoded.
    pub(crate) fn set_deflate(&mut self, role: Role, params: &DeflateParams) {
        let limits = self.limits();
        let decoder = std::mem::replace(&mut self.decoder, Decoder::new(role, limits));
        self.decoder = decoder.with_deflate(params);
    }

    /// The next message, or `None` when the transport ended.
    ///
    /// Cancel-safe: the decoder keeps everything read so far.
    pub(crate) async fn next<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
    ) -> Result<Option<Message>, Error> {
        poll_fn(|cx| self.poll_next(cx, io)).await
    }

    /// Polls for the next message; see [`ReadState::next`].
    pub(crate) fn poll_next<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut R,
    ) -> Poll<Result<Option<Message>, Error>> {
        loop {
            if let Some(message) = self.decoder.decode()? {
                return Poll::Ready(Ok(Some(message)));
            }
            if !self.decoder.has_buffer() {
                if let Some(spare) = SPARE.take() {
                    self.decoder.feed(spare);
                }
            }
            // Reserving what the frame in progress still needs (already checked against
            // the limits) lets a large frame arrive without repeated reallocation.
            let want = self.decoder.bytes_wanted().max(MIN_READ);
            let read = self
                .decoder
                .read_with(want, |buf| poll_read_buf(Pin::new(&mut *io), cx, buf));
            match read {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(_)) => self.heard = true,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => {
                    self.park_buffer();
                    return Poll::Pending;
                }
            }
        }
    }

    /// Whether bytes arrived since the last call.
    pub(crate) fn take_heard(&mut self) -> bool {
        std::mem::take(&mut self.heard)
    }

    /// Gives an empty buffer to the thread's spare while the peer is silent; the spare
    /// keeps the larger of the two, up to [`MAX_SPARE`].
    fn park_buffer(&mut self) {
        let Some(buf) = self.decoder.take_buffer() else {
            return;
        };
        if buf.capacity() == 0 {
            return;
        }
        // `try_with`: a connection dropped while its thread exits finds no spare.
        let _ = SPARE.try_with(|slot| {
            let spare = slot.take();
            let keep_spare = buf.capacity() > MAX_SPARE
                || spare
                    .as_ref()
                    .is_some_and(|s| s.capacity() >= buf.capacity());
            slot.set(if keep_spare { spare } else { Some(buf) });
        });
    }

    /// Reads and discards until the peer closes its side, so that our close frame is not
    /// destroyed by a reset (closing a socket with unread data sends RST).
    pub(crate) async fn drain<R: AsyncRead + Unpin>(&mut self, io: &mut R) {
        let mut buf = self.decoder.read_buf(MIN_READ);
        loop {
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => buf.clear(),
            }
        }
    }
}

impl Drop for ReadState {
    /// A closed connection's buffer goes to the spare, for the next one to read with:
    /// connections that come and go do not allocate and free one each.
    fn drop(&mut self) {
        self.park_buffer();
    }
}
