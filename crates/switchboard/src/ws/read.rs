//! The read side: a buffer and the protocol decoder.

use crate::Error;
use bytes::BytesMut;
use std::{
    future::poll_fn,
    pin::Pin,
    task::{Context, Poll, ready},
};
use switchboard_proto::{Decoder, Limits, Message, Role, deflate::DeflateParams};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::poll_read_buf;

/// The smallest read: large enough that small messages arrive in one syscall.
const MIN_READ: usize = 4096;

/// Reads bytes and decodes messages.
#[derive(Debug)]
pub(crate) struct ReadState {
    buf: BytesMut,
    decoder: Decoder,
}

impl ReadState {
    pub(crate) fn new(role: Role, limits: Limits, buffered: BytesMut) -> Self {
        Self {
            buf: buffered,
            decoder: Decoder::new(role, limits),
        }
    }

    /// Inflates compressed messages from now on; called before anything is decoded.
    pub(crate) fn set_deflate(&mut self, role: Role, params: &DeflateParams) {
        self.decoder = Decoder::new(role, self.decoder.limits()).with_deflate(params);
    }

    /// The next message, or `None` when the transport ended.
    ///
    /// Cancel-safe: the buffer and the decoder keep everything read so far.
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
            if let Some(message) = self.decoder.decode(&mut self.buf)? {
                return Poll::Ready(Ok(Some(message)));
            }
            // Reserving what the frame in progress still needs (already checked against
            // the limits) lets a large frame arrive without repeated reallocation.
            let want = self.decoder.bytes_wanted(self.buf.len()).max(MIN_READ);
            self.buf.reserve(want);
            if ready!(poll_read_buf(Pin::new(&mut *io), cx, &mut self.buf))? == 0 {
                return Poll::Ready(Ok(None));
            }
        }
    }

    /// Reads and discards until the peer closes its side, so that our close frame is not
    /// destroyed by a reset (closing a socket with unread data sends RST).
    pub(crate) async fn drain<R: AsyncRead + Unpin>(&mut self, io: &mut R) {
        self.buf.clear();
        loop {
            self.buf.reserve(MIN_READ);
            match io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => self.buf.clear(),
            }
        }
    }
}
