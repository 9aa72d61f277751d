//! The four-bit frame opcode (RFC 6455 §5.2, §11.8).

use std::fmt;

/// What a frame carries.
///
/// Only the six opcodes RFC 6455 defines exist here: a reserved opcode on the wire is a
/// protocol error, not a value ("If an unknown opcode is received, the receiving endpoint
/// MUST _Fail the WebSocket Connection_", §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// `0x0`: a later fragment of a fragmented message.
    Continuation,
    /// `0x1`: the first (or only) frame of a UTF-8 text message.
    Text,
    /// `0x2`: the first (or only) frame of a binary message.
    Binary,
    /// `0x8`: the close handshake.
    Close,
    /// `0x9`: a keepalive probe; the peer answers with a pong.
    Ping,
    /// `0xA`: the answer to a ping, or an unsolicited heartbeat.
    Pong,
}

impl OpCode {
    /// Decodes the low four bits of the first header byte; `None` for the ten reserved values.
    pub const fn from_u8(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// "Control frames are identified by opcodes where the most significant bit of the
    /// opcode is 1" (RFC 6455 §5.5).
    pub const fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

impl fmt::Display for OpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_defined_opcode_and_rejects_reserved_ones() {
        for bits in 0..16u8 {
            match OpCode::from_u8(bits) {
                Some(op) => assert_eq!(op.as_u8(), bits),
                None => assert!(matches!(bits, 0x3..=0x7 | 0xB..=0xF)),
            }
        }
        assert!(OpCode::Ping.is_control());
        assert!(!OpCode::Continuation.is_control());
    }
}
