//! Close codes and close frames (RFC 6455 §5.5.1, §7.4).

use crate::utf8::{Utf8Bytes, Utf8Error};
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// A close status code.
///
/// An open newtype rather than an enum, so that any code a peer may legitimately send
/// (application codes 3000–4999 included) round-trips unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: "normal closure, meaning that the purpose for which the connection was
    /// established has been fulfilled."
    pub const NORMAL: Self = Self(1000);
    /// 1001: "an endpoint is going away, such as a server going down or a browser having
    /// navigated away from a page."
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: "terminating the connection due to a protocol error."
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: "it has received a type of data it cannot accept."
    pub const UNSUPPORTED: Self = Self(1003);
    /// 1005: no status code was present. Reported locally, never sent.
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: the connection closed without a close frame. Reported locally, never sent.
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: "data within a message that was not consistent with the type of the message
    /// (e.g., non-UTF-8 data within a text message)."
    pub const INVALID_DATA: Self = Self(1007);
    /// 1008: "a message that violates its policy."
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// 1009: "a message that is too big for it to process."
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// 1010: the client expected the server to negotiate an extension it did not.
    pub const EXTENSION_REQUIRED: Self = Self(1010);
    /// 1011: "an unexpected condition that prevented it from fulfilling the request."
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1012: the service is restarting (IANA registry).
    pub const SERVICE_RESTART: Self = Self(1012);
    /// 1013: try again later, e.g. the server is overloaded (IANA registry).
    pub const TRY_AGAIN_LATER: Self = Self(1013);
    /// 1014: a gateway got an invalid answer upstream (IANA registry).
    pub const BAD_GATEWAY: Self = Self(1014);
    /// 1015: the TLS handshake failed. Reported locally, never sent.
    pub const TLS_HANDSHAKE: Self = Self(1015);

    /// 3000: the client is not authorized (IANA registry, "Unauthorized"): its
    /// credentials are missing or were refused, and trying again with the same ones is
    /// futile. switchboard's servers close with it when a channels `connect` refuses,
    /// and its JS client stops reconnecting on it. Browsers never see the HTTP status of
    /// a refused upgrade (a 401 or 403 looks like 1006, a dead server), so a server
    /// that must say "not authorized" accepts and closes with this code.
    pub const UNAUTHORIZED: Self = Self(3000);
    /// 3003: the client is known but not allowed (IANA registry, "Forbidden"); like
    /// [`CloseCode::UNAUTHORIZED`], switchboard's JS client stops reconnecting on it.
    pub const FORBIDDEN: Self = Self(3003);
    /// 4401: the client's token has expired; it may reconnect with a fresh one.
    /// switchboard's JS client asks the application for a new token, then reconnects.
    ///
    /// From the private-use range (4000–4999, RFC 6455 §7.4.2): no registered code
    /// means "expired", and the number echoes the HTTP answer to an expired bearer token,
    /// 401 with `error="invalid_token"` (RFC 6750 §3.1). Applications should not give
    /// 4401 another meaning.
    pub const TOKEN_EXPIRED: Self = Self(4401);

    /// Whether this code may appear in a close frame on the wire.
    ///
    /// 1005, 1006 and 1015 "MUST NOT be set as a status code in a Close control frame by
    /// an endpoint" (§7.4.1); below 1000 is "not used"; 1004 and 1016–2999 are reserved
    /// for future versions of the protocol and extensions (§7.4.2); 3000–4999 belong to
    /// libraries, frameworks and applications; 5000 and above do not exist.
    pub const fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// The code as a number, e.g. `1000` for [`CloseCode::NORMAL`].
    pub const fn as_u16(self) -> u16 {
        self.0
    }
}

/// Every `u16` is a code, as the type is open: [`CloseCode::is_sendable`] says which may
/// go on the wire.
impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        Self(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({})", self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The longest reason a close frame can carry: control payloads are at most 125 bytes
/// (§5.5), two of which are the code.
pub const MAX_REASON_LEN: usize = 123;

/// A close frame's status code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// Why the connection is closing.
    pub code: CloseCode,
    /// Free text for humans, not for machines (§7.1.6).
    pub reason: Utf8Bytes,
}

/// Why a received close frame's payload is invalid. All fail the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseError {
    /// A payload of one byte cannot hold the two-byte code (§5.5.1).
    #[error("close payload of one byte")]
    Truncated,
    /// The code is one that must never be sent (see [`CloseCode::is_sendable`]).
    #[error("close code {0} may not be sent")]
    InvalidCode(CloseCode),
    /// "the body of a Close frame ... MUST be UTF-8" (§5.5.1).
    #[error("close reason is not UTF-8")]
    InvalidReason(#[from] Utf8Error),
}

impl CloseFrame {
    /// A close frame; the reason is cut to [`MAX_REASON_LEN`] bytes at a character
    /// boundary, so that a close can always be sent.
    pub fn new(code: CloseCode, reason: impl Into<Utf8Bytes>) -> Self {
        let reason: Utf8Bytes = reason.into();
        let reason = if reason.len() <= MAX_REASON_LEN {
            reason
        } else {
            let mut end = MAX_REASON_LEN;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            Utf8Bytes::from_validated(reason.as_bytes().slice(..end))
        };
        Self { code, reason }
    }

    /// Parses a received close payload: `Ok(None)` for an empty one (no status, reported
    /// to the application as 1005).
    pub fn parse(payload: Bytes) -> Result<Option<Self>, CloseError> {
        match *payload {
            [] => Ok(None),
            [_] => Err(CloseError::Truncated),
            [high, low, ..] => {
                let code = CloseCode(u16::from_be_bytes([high, low]));
                if !code.is_sendable() {
                    return Err(CloseError::InvalidCode(code));
                }
                let reason = Utf8Bytes::try_from_bytes(payload.slice(2..))?;
                Ok(Some(Self { code, reason }))
            }
        }
    }

    /// The close payload: the code in network byte order, then the reason.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(2 + self.reason.len());
        out.put_u16(self.code.0);
        out.put_slice(self.reason.as_bytes());
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendable_codes_follow_section_7_4() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert!(CloseCode(code).is_sendable(), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(code).is_sendable(), "{code}");
        }
    }

    #[test]
    fn converts_to_and_from_u16() {
        for number in [1000, 1011, 3000, 4321, 4999] {
            let code = CloseCode::from(number);
            assert_eq!(u16::from(code), number);
            assert_eq!(code.as_u16(), number);
        }
        assert_eq!(CloseCode::from(1001), CloseCode::GOING_AWAY);
        assert_eq!(CloseCode::POLICY_VIOLATION.as_u16(), 1008);
    }

    #[test]
    fn parses_and_encodes() {
        let frame = CloseFrame::new(CloseCode(4321), "bye");
        assert_eq!(CloseFrame::parse(frame.encode()), Ok(Some(frame)));
        assert_eq!(CloseFrame::parse(Bytes::new()), Ok(None));
        assert_eq!(
            CloseFrame::parse(Bytes::from_static(&[3])),
            Err(CloseError::Truncated)
        );
        assert_eq!(
            CloseFrame::parse(Bytes::from_static(&[0x03, 0xED])),
            Err(CloseError::InvalidCode(CloseCode::NO_STATUS))
        );
        assert_eq!(
            CloseFrame::parse(Bytes::from_static(&[0x03, 0xE8, 0xFF])),
            Err(CloseError::InvalidReason(Utf8Error))
        );
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        let frame = CloseFrame::new(CloseCode::NORMAL, "é".repeat(100));
        assert_eq!(frame.reason.len(), 122);
        assert!(frame.encode().len() <= 125);
    }
}
