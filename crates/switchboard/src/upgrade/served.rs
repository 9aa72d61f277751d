//! The stream of a connection [`crate::serve`] accepted (TCP, or TLS over TCP), until
//! its first request head arrives.

use super::{AcceptError, raw};
use crate::hub::{Hub, Refusal};
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering::Relaxed},
    },
    task::{Context, Poll},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// A stream accepted by [`crate::serve`]: until its first request head has
/// arrived, it answers 408 itself at the handshake deadline, as [`super::accept`] does
/// (hyper's own header timeout closes without a word). After the upgrade a
/// [`TcpStream`] is bare again.
#[derive(Debug)]
pub(crate) struct ServedStream<S> {
    io: S,
    /// Dropped once the first head arrived or the deadline passed.
    first_head: Option<FirstHead>,
}

#[derive(Debug)]
struct FirstHead {
    deadline: Pin<Box<Sleep>>,
    arrived: HeadSignal,
    /// The client's address, for the log of a refusal (TLS hides the TCP stream's).
    peer: SocketAddr,
    /// Counts the timeout.
    hub: Hub,
}

/// Set by the service when it receives a request: the first head is complete, and
/// whether a request asked for an upgrade.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeadSignal(Arc<AtomicU8>);

impl HeadSignal {
    const ARRIVED: u8 = 1;
    const UPGRADE: u8 = 2;

    /// A request head arrived; `upgrade` when it asks for an upgrade.
    pub(crate) fn arrived(&self, upgrade: bool) {
        let upgrade = if upgrade { Self::UPGRADE } else { 0 };
        self.0.fetch_or(Self::ARRIVED | upgrade, Relaxed);
    }

    /// Whether the first request head has arrived.
    pub(crate) fn has_arrived(&self) -> bool {
        self.0.load(Relaxed) & Self::ARRIVED != 0
    }

    /// Whether a request asked for an upgrade: the connection ends with its answer.
    pub(crate) fn upgrading(&self) -> bool {
        self.0.load(Relaxed) & Self::UPGRADE != 0
    }
}

impl<S: AsyncWrite + Unpin> ServedStream<S> {
    /// `io` from `peer` (a connection of `hub`), whose first request head must arrive by
    /// `deadline`, as `arrived` tells.
    pub(crate) fn new(
        io: S,
        peer: SocketAddr,
        deadline: Instant,
        arrived: HeadSignal,
        hub: &Hub,
    ) -> Self {
        let first_head = FirstHead {
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            arrived,
            peer,
            hub: hub.clone(),
        };
        Self {
            io,
            first_head: Some(first_head),
        }
    }

    /// The stream itself, once upgraded.
    pub(crate) fn into_inner(self) -> S {
        self.io
    }

    /// Whether the first head is overdue; then the client has been answered 408 and
    /// the stream shut down for writing.
    fn head_overdue(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(first_head) = &mut self.first_head else {
            return false;
        };
        if first_head.arrived.has_arrived() {
            self.first_head = None;
            return false;
        }
        if first_head.deadline.as_mut().poll(cx).is_pending() {
            return false;
        }
        let peer = first_head.peer;
        first_head.hub.count_refusal(Refusal::HandshakeTimeout);
        self.first_head = None;
        let error = AcceptError::Timeout;
        super::refused(
            error.status(),
            "handshake timeout",
            Some(peer),
            None,
            &error,
        );
        // Nothing was written on this connection yet, so the small answer fits in the
        // socket's send buffer (or TLS's): no need to wait for it.
        if let Some(answer) = raw::refusal(&error) {
            let _ = Pin::new(&mut self.io).poll_write(cx, &answer);
        }
        let _ = Pin::new(&mut self.io).poll_shutdown(cx);
        true
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.head_overdue(cx) {
            // The end of the stream: hyper ends the connection, answering nothing more.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ServedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
