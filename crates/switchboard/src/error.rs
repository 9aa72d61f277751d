//! Errors of the WebSocket layer.

use std::io;
use switchboard_proto::{CloseCode, CloseFrame, ProtocolError};

/// Why a WebSocket operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed.
    #[error("transport failed")]
    Io(#[from] io::Error),
    /// The peer broke the protocol; the connection was closed with
    /// [`ProtocolError::close_code`].
    #[error("peer broke the protocol")]
    Protocol(#[from] ProtocolError),
    /// The transport ended without a close frame (reported as 1006, RFC 6455 §7.1.5).
    #[error("connection closed without a close frame")]
    AbnormalClosure,
    /// We sent a close frame and the peer did not answer within the close timeout.
    #[error("peer did not answer the close frame in time")]
    CloseTimeout,
    /// The close handshake has started or finished: nothing more can be sent.
    #[error("connection is closed")]
    Closed,
    /// We ended the connection without waiting for the close handshake (the peer is
    /// unresponsive or too slow), after sending this close frame if the socket took it.
    #[error("connection aborted: {} {}", .0.code, .0.reason)]
    Aborted(CloseFrame),
    /// A ping, pong or close payload longer than 125 bytes (RFC 6455 §5.5).
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlFrameTooLong(usize),
}

impl Error {
    /// The close code that describes this failure to the application.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::Protocol(e) => e.close_code(),
            Self::Aborted(frame) => frame.code,
            Self::Closed => CloseCode::NORMAL,
            Self::ControlFrameTooLong(_) => CloseCode::INTERNAL_ERROR,
            Self::Io(_) | Self::AbnormalClosure | Self::CloseTimeout => CloseCode::ABNORMAL,
        }
    }
}
