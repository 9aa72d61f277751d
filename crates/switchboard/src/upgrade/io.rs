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
/// When the HTTP server ran on a plain `TcpStream` (axum's `serve`, or hyper over
/// `TokioIo<TcpStream>`), this is that stream itself, with no indirection on the hot
/// path; otherwise it is hyper's boxed upgraded IO.
#[derive(Debug)]
pub struct Upgraded(Inner);

#[derive(Debug)]
enum Inner {
    Tcp(TcpStream),
    Other(TokioIo<::hyper::upgrade::Upgraded>),
}

impl Upgraded {
    pub(crate) fn from_hyper(upgraded: ::hyper::upgrade::Upgraded) -> (Self, bytes::Bytes) {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            // The bytes hyper read past the request (a pipelined first frame) come back
            // here and must be decoded before anything read from the socket.
            Ok(parts) => (Self(Inner::Tcp(parts.io.into_inner())), parts.read_buf),
            Err(upgraded) => (
                Self(Inner::Other(TokioIo::new(upgraded))),
                bytes::Bytes::new(),
            ),
        }
    }

    /// The peer's address, when the transport is TCP.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match &self.0 {
            Inner::Tcp(tcp) => tcp.peer_addr().ok(),
            Inner::Other(_) => None,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match &mut $self.get_mut().0 {
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
        match &self.0 {
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
