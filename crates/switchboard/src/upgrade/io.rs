//! The stream an upgraded HTTP connection becomes.

use hyper_util::rt::TokioIo;
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// The transport of a connection upgraded from HTTP.
///
/// When hyper ran directly on `TokioIo<TcpStream>`, this is that stream itself, with no
/// indirection on the hot path; otherwise (axum's `serve`, whose hyper-util builder wraps
/// the stream to sniff the HTTP version) it is hyper's boxed upgraded IO.
#[derive(Debug)]
pub struct Upgraded {
    inner: Inner,
    /// The peer's address when the stream cannot tell it (e.g. axum's `ConnectInfo`).
    peer: Option<SocketAddr>,
}

#[derive(Debug)]
enum Inner {
    Tcp(TcpStream),
    Other(TokioIo<::hyper::upgrade::Upgraded>),
}

impl Upgraded {
    pub(crate) fn from_hyper(
        upgraded: ::hyper::upgrade::Upgraded,
        peer: Option<SocketAddr>,
    ) -> (Self, bytes::Bytes) {
        let (inner, buffered) = match upgraded.downcast::<TokioIo<TcpStream>>() {
            // The bytes hyper read past the request (a pipelined first frame) come back
            // here and must be decoded before anything read from the socket.
            Ok(parts) => (Inner::Tcp(parts.io.into_inner()), parts.read_buf),
            Err(upgraded) => (Inner::Other(TokioIo::new(upgraded)), bytes::Bytes::new()),
        };
        (Self { inner, peer }, buffered)
    }

    /// The peer's address: the TCP stream's, or the one given with
    /// [`Upgrade::peer_addr`](super::Upgrade::peer_addr) (under axum, its `ConnectInfo`).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match &self.inner {
            Inner::Tcp(tcp) => tcp.peer_addr().ok().or(self.peer),
            Inner::Other(_) => self.peer,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match &mut $self.get_mut().inner {
            Inner::Tcp($io) => {
                let $io = Pin::new($io);
                $e
            }
            Inner::Other($io) => {
                let $io = Pin::new($io);
                $e
            }
        }
    };
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Tcp(io) => io.is_write_vectored(),
            Inner::Other(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}
