//! A connection split into a reading half and a writing half, for separate tasks.
//!
//! The writer half sits behind an async mutex because the reader needs it too: the
//! protocol obliges the reader to answer pings and close frames.

use super::{
    WebSocket,
    read::ReadState,
    write::{CloseState, Reaction, WriteState},
};
use crate::Error;
use std::{sync::Arc, time::Duration};
use switchboard_proto::{CloseCode, CloseFrame, Message, Role, Utf8Bytes};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf},
    sync::Mutex,
    time::{Instant, timeout, timeout_at},
};

/// The receiving half of a split [`WebSocket`].
#[derive(Debug)]
pub struct WsReader<S> {
    io: ReadHalf<S>,
    read: ReadState,
    writer: Arc<Mutex<WriterInner<S>>>,
    role: Role,
    close_timeout: Duration,
    finished: bool,
    /// See `WebSocket::linger_pending`: the next `recv` waits for the peer's end of stream.
    linger_pending: bool,
}

/// The sending half of a split [`WebSocket`]; clone it to send from several tasks.
#[derive(Debug)]
pub struct WsWriter<S> {
    inner: Arc<Mutex<WriterInner<S>>>,
}

impl<S> Clone for WsWriter<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct WriterInner<S> {
    io: WriteHalf<S>,
    write: WriteState,
    close_deadline: Option<Instant>,
    close_timeout: Duration,
}

pub(super) fn split<S: AsyncRead + AsyncWrite>(ws: WebSocket<S>) -> (WsReader<S>, WsWriter<S>) {
    let WebSocket {
        io,
        read,
        write,
        role,
        close_timeout,
        sent_close,
        finished,
        ..
    } = ws;
    let close_deadline = sent_close.map(|sent| sent.deadline);
    let (read_io, write_io) = tokio::io::split(io);
    let inner = Arc::new(Mutex::new(WriterInner {
        io: write_io,
        write,
        close_deadline,
        close_timeout,
    }));
    let reader = WsReader {
        io: read_io,
        read,
        writer: inner.clone(),
        role,
        close_timeout,
        finished,
        linger_pending: false,
    };
    (reader, WsWriter { inner })
}

impl<S: AsyncRead + AsyncWrite> WsReader<S> {
    /// Receives the next message; see [`WebSocket::recv`].
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        if self.finished {
            if std::mem::take(&mut self.linger_pending) {
                self.await_peer_eof().await;
            }
            return None;
        }
        let deadline = self.writer.lock().await.close_deadline;
        let next = match deadline {
            None => self.read.next(&mut self.io).await,
            Some(deadline) => timeout_at(deadline, self.read.next(&mut self.io))
                .await
                .unwrap_or(Err(Error::CloseTimeout)),
        };
        let message = match next {
            Ok(Some(message)) => message,
            Ok(None) => return Some(Err(self.fail(Error::AbnormalClosure).await)),
            Err(error) => return Some(Err(self.fail(error).await)),
        };
        let mut guard = self.writer.lock().await;
        let WriterInner { io, write, .. } = &mut *guard;
        let reaction = write.react(&message);
        let flushed = match reaction {
            Reaction::None => Ok(()),
            Reaction::Flush => write.flush(io).await,
            // As in `WebSocket::finish`: bounded, the peer may have stopped reading.
            Reaction::Finish => flush_within(self.close_timeout, write, io).await,
        };
        drop(guard);
        if reaction == Reaction::Finish {
            // As in `WebSocket::finish`: report the close now, wait for the peer later.
            self.finished = true;
            if flushed.is_ok() {
                if self.role == Role::Server {
                    let _ = self.writer.lock().await.io.shutdown().await;
                }
                self.linger_pending = true;
            }
        }
        Some(match flushed {
            Ok(()) => Ok(message),
            Err(e) => Err(self.fail(e.into()).await),
        })
    }

    async fn fail(&mut self, error: Error) -> Error {
        self.finished = true;
        let mut guard = self.writer.lock().await;
        let WriterInner { io, write, .. } = &mut *guard;
        match &error {
            // "_Fail the WebSocket Connection_" (RFC 6455 §7.1.7), as in WebSocket::fail.
            Error::Protocol(e) => {
                write.push_failure_close(&CloseFrame::new(e.close_code(), e.to_string()));
                let flushed = flush_within(self.close_timeout, write, io).await;
                drop(guard);
                if flushed.is_ok() {
                    self.linger().await;
                }
            }
            Error::CloseTimeout => {
                write.close = CloseState::Done;
                let _ = io.shutdown().await;
            }
            _ => write.close = CloseState::Done,
        }
        error
    }

    /// See `WebSocket::linger`: who closes the transport first depends on the role.
    async fn linger(&mut self) {
        if self.role == Role::Server {
            let _ = self.writer.lock().await.io.shutdown().await;
        }
        self.await_peer_eof().await;
    }

    async fn await_peer_eof(&mut self) {
        let _ = timeout(self.close_timeout, self.read.drain(&mut self.io)).await;
        if self.role == Role::Client {
            let _ = self.writer.lock().await.io.shutdown().await;
        }
    }
}

impl<S: AsyncRead + AsyncWrite> WsWriter<S> {
    /// Sends a message and waits until it is written; see [`WebSocket::send`].
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), Error> {
        let message = message.into();
        let closing = matches!(message, Message::Close(_));
        let mut inner = self.inner.lock().await;
        inner.write.push(message)?;
        if closing {
            inner.close_deadline = Some(Instant::now() + inner.close_timeout);
        }
        let WriterInner {
            io,
            write,
            close_deadline,
            ..
        } = &mut *inner;
        match close_deadline {
            None => Ok(write.flush(io).await?),
            // Once our close frame is queued, the close timeout bounds the wait.
            Some(deadline) => match timeout_at(*deadline, write.flush(io)).await {
                Ok(flushed) => Ok(flushed?),
                Err(_) => Err(Error::CloseTimeout),
            },
        }
    }

    /// Sends a close frame. The reader half receives the peer's answer and then ends.
    pub async fn close(&self, code: CloseCode, reason: impl Into<Utf8Bytes>) -> Result<(), Error> {
        self.send(Message::Close(Some(CloseFrame::new(code, reason))))
            .await
    }
}

/// Flushes after a close, within `limit`: the peer may have stopped reading.
async fn flush_within<S: AsyncWrite>(
    limit: Duration,
    write: &mut WriteState,
    io: &mut WriteHalf<S>,
) -> std::io::Result<()> {
    timeout(limit, write.flush(io))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
