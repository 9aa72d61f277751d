//! Frames: the header, the opcode, and a whole frame ready for the wire (RFC 6455 §5).

mod header;
mod opcode;

pub use header::{EncodedHeader, FrameHeader, HeaderError, MAX_HEADER_LEN};
pub use opcode::OpCode;

use crate::{
    close::{CloseCode, CloseFrame},
    mask::apply_mask,
    utf8::Utf8Bytes,
};
use bytes::{BufMut, Bytes, BytesMut};

/// "All control frames MUST have a payload length of 125 bytes or less" (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// One frame: a header and its payload, kept unmasked in memory.
///
/// The header's `payload_len` always equals the payload's length: the fields are
/// private, every constructor derives the length from the payload, and the methods that
/// change the header leave the length alone. A frame cannot be put together from a
/// header and an unrelated payload:
///
/// ```compile_fail
/// use bytes::Bytes;
/// use switchboard_proto::{Frame, FrameHeader, OpCode};
///
/// let lying = Frame { header: FrameHeader::new(OpCode::Text, 5), payload: Bytes::new() };
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    header: FrameHeader,
    payload: Bytes,
}

impl Frame {
    /// A final frame of `opcode` carrying `payload`.
    pub fn new(opcode: OpCode, payload: Bytes) -> Self {
        Self {
            header: FrameHeader::new(opcode, payload.len() as u64),
            payload,
        }
    }

    /// A text frame.
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        Self::new(OpCode::Text, text.into().into_bytes())
    }

    /// A binary frame.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Self::new(OpCode::Binary, data.into())
    }

    /// A ping; its payload must not exceed [`MAX_CONTROL_PAYLOAD`].
    pub fn ping(data: impl Into<Bytes>) -> Self {
        Self::new(OpCode::Ping, data.into())
    }

    /// A pong; its payload must not exceed [`MAX_CONTROL_PAYLOAD`].
    pub fn pong(data: impl Into<Bytes>) -> Self {
        Self::new(OpCode::Pong, data.into())
    }

    /// A close frame with a code and a reason (cut to fit, see [`CloseFrame::new`]).
    pub fn close(code: CloseCode, reason: impl Into<Utf8Bytes>) -> Self {
        Self::close_with(Some(&CloseFrame::new(code, reason)))
    }

    /// A close frame, empty when `close` is `None`.
    pub fn close_with(close: Option<&CloseFrame>) -> Self {
        Self::new(
            OpCode::Close,
            close.map(CloseFrame::encode).unwrap_or_default(),
        )
    }

    /// The header; its `payload_len` is the payload's length.
    pub fn header(&self) -> &FrameHeader {
        &self.header
    }

    /// The unmasked payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The same frame with its RSV1 bit set as given: the "Per-Message Compressed" bit
    /// of permessage-deflate (RFC 7692 §6).
    pub fn with_rsv1(mut self, rsv1: bool) -> Self {
        self.header.rsv1 = rsv1;
        self
    }

    /// The same frame with its FIN bit set as given: a fragment of a longer message.
    pub fn with_fin(mut self, fin: bool) -> Self {
        self.header.fin = fin;
        self
    }

    /// The same frame, to be masked with `key` on the wire (what a client sends).
    pub fn masked(mut self, key: [u8; 4]) -> Self {
        self.header.mask = Some(key);
        self
    }

    /// The frame as it goes on the wire: the header inline and the payload moved, not
    /// copied; a payload to be masked is masked in place when nothing else shares it.
    pub fn encode(self) -> EncodedFrame {
        let payload = match self.header.mask {
            None => self.payload,
            Some(key) => {
                let mut masked = self
                    .payload
                    .try_into_mut()
                    .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                apply_mask(&mut masked, key, 0);
                masked.freeze()
            }
        };
        EncodedFrame {
            head: self.header.encode(),
            payload,
        }
    }

    /// Appends the encoded frame to `dst` as one contiguous run of bytes.
    pub fn write_to(self, dst: &mut BytesMut) {
        let encoded = self.encode();
        dst.reserve(encoded.len());
        dst.put_slice(encoded.head.as_bytes());
        dst.put_slice(&encoded.payload);
    }
}

/// A frame in wire form: a header and a payload to be written one after the other,
/// e.g. with a vectored write. Cloning it shares the payload.
#[derive(Clone, Debug)]
pub struct EncodedFrame {
    /// The encoded header.
    pub head: EncodedHeader,
    /// The payload, already masked if the header says so.
    pub payload: Bytes,
}

impl EncodedFrame {
    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.as_bytes().len() + self.payload.len()
    }

    /// Never true: a frame has at least a two-byte header.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_constructor_and_builder_keeps_the_length_of_the_payload() {
        let frames = [
            Frame::new(OpCode::Binary, Bytes::from_static(b"abc")),
            Frame::text("κόσμε"),
            Frame::binary(vec![0u8; 70_000]),
            Frame::ping("p"),
            Frame::pong(Bytes::new()),
            Frame::close(CloseCode::NORMAL, "x".repeat(500)),
            Frame::close_with(None),
            Frame::text("fragment")
                .with_fin(false)
                .with_rsv1(true)
                .masked([1, 2, 3, 4]),
        ];
        for frame in frames {
            assert_eq!(frame.header().payload_len, frame.payload().len() as u64);
            let (header, _) = FrameHeader::parse(frame.clone().encode().head.as_bytes())
                .unwrap()
                .unwrap();
            assert_eq!(&header, frame.header());
        }
    }
}
