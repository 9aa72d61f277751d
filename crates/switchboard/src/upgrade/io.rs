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
/// When hyper ran directly on a TCP stream (`TokioIo<TcpStream>`, or
/// [`crate::serve`]'s), this is that stream itself, with no indirection on the hot
/// path; otherwise (TLS, or axum's `serve`, whose hyper-util builder wraps the stream to
/// sniff the HTTP version) it is hyper's boxed upgraded IO.
#[derive(Debug)]
pub struct Upgraded {
    inner: Inner,
}

/// A TCP stream (what hyper's server gives back), kept bare: every connection holds one.
#[derive(Debug)]
enum Inner {
    Tcp(TcpStream),
    Other(Box<OtherIo>),
}

/// Any other stream hyper served (TLS, a test transport), with the peer's address it
/// cannot tell (e.g. from axum's `ConnectInfo`).
#[derive(Debug)]
struct OtherIo {
    io: TokioIo<::hyper::upgrade::Upgraded>,
    peer: Option<SocketAddr>,
}

impl Upgraded {
    pub(crate) fn from_hyper(
        upgraded: ::hyper::upgrade::Upgraded,
        peer: Option<SocketAddr>,
    ) -> (Self, bytes::Bytes) {
        // The bytes hyper read past the request (a pipelined first frame) come back
        // with the stream and must be decoded before anything read from the socket.
        let (inner, buffered) = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (Inner::Tcp(parts.io.into_inner()), parts.read_buf),
            Err(upgraded) => match served(upgraded) {
                Ok((tcp, buffered)) => (Inner::Tcp(tcp), buffered),
                Err(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    (
                        Inner::Other(Box::new(OtherIo { io, peer })),
                        bytes::Bytes::new(),
                    )
                }
            },
        };
        (Self { inner }, buffered)
    }

    /// The peer's address: the TCP stream's (while it is connected), or the one given
    /// with [`Upgrade::peer_addr`](super::Upgrade::peer_addr) (under axum, its
    /// `ConnectInfo`) for other streams.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match &self.inner {
            Inner::Tcp(tcp) => tcp.peer_addr().ok(),
            Inner::Other(other) => other.peer,
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
            Inner::Other(other) => {
                let $io = Pin::new(&mut other.io);
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
            Inner::Other(other) => other.io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}

/// The TCP stream of a connection [`crate::serve`] accepted, with what hyper read past
/// the request.
#[cfg(feature = "axum")]
fn served(
    upgraded: ::hyper::upgrade::Upgraded,
) -> Result<(TcpStream, bytes::Bytes), ::hyper::upgrade::Upgraded> {
    let parts = upgraded.downcast::<TokioIo<super::ServedStream<TcpStream>>>()?;
    Ok((parts.io.into_inner().into_inner(), parts.read_buf))
}

/// Without axum there is no [`crate::serve`]: hyper served some other stream.
#[cfg(not(feature = "axum"))]
fn served(
    upgraded: ::hyper::upgrade::Upgraded,
) -> Result<(TcpStream, bytes::Bytes), ::hyper::upgrade::Upgraded> {
    Err(upgraded)
}
