//! The receive side: bytes in, messages out (RFC 6455 §5, §6.2).
//!
//! The decoder owns its read buffer: the caller reads into the room it lends
//! ([`Decoder::read_buf`]) and hands the bytes back ([`Decoder::feed`]), which joins them
//! to the buffer without a copy. It consumes a frame's header as soon as the header is
//! complete, and unmasks and validates payload bytes in place as they arrive, but takes
//! a payload out of the buffer only when the frame is complete. So an unfragmented
//! message is handed out without a copy, invalid UTF-8 fails the connection as soon as
//! its bytes are read, and no one but the decoder can change bytes it has validated.
//!
//! With permessage-deflate negotiated ([`Decoder::with_deflate`]), a message whose first
//! frame has RSV1 set is inflated frame by frame as each frame completes, its text
//! validated on the inflated bytes, and its inflated size held to the message limit as
//! it grows.

use crate::{
    close::{CloseCode, CloseError, CloseFrame},
    config::{Limits, Role},
    deflate::{DeflateParams, InflateError, Inflater},
    frame::{FrameHeader, HeaderError, MAX_CONTROL_PAYLOAD, OpCode},
    mask::apply_mask,
    message::Message,
    utf8::{Utf8Bytes, Utf8Error, Utf8Validator},
};
use bytes::{Buf, Bytes, BytesMut};

/// A violation of the protocol by the peer. The connection must be failed with
/// [`ProtocolError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The frame header is malformed.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// "MUST be 0 unless an extension is negotiated that defines meanings for non-zero
    /// values" (§5.2).
    #[error("reserved bits set without a negotiated extension")]
    NonZeroReservedBits,
    /// RSV1 on a control frame under permessage-deflate: "An endpoint MUST NOT set the
    /// "Per-Message Compressed" bit of control frames and non-first fragments of a data
    /// message. An endpoint receiving such a frame MUST _Fail the WebSocket Connection_"
    /// (RFC 7692 §6.1).
    #[error("compressed control frame")]
    CompressedControlFrame,
    /// RSV1 on a continuation frame under permessage-deflate; the same rule (RFC 7692
    /// §6.1).
    #[error("compressed bit on a continuation frame")]
    CompressedContinuation,
    /// A compressed message that is not a raw DEFLATE stream (RFC 7692 §7.2.2); closes
    /// with 1007, its data being inconsistent with the message.
    #[error("compressed message does not inflate")]
    InvalidCompressedData,
    /// "The server MUST close the connection upon receiving a frame that is not masked"
    /// (§5.1).
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// "A client MUST close a connection if it detects a masked frame" (§5.1).
    #[error("server frame is masked")]
    MaskedFrame,
    /// "Control frames themselves MUST NOT be fragmented" (§5.5).
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// "All control frames MUST have a payload length of 125 bytes or less" (§5.5).
    #[error("control frame payload of {0} bytes")]
    ControlFrameTooLong(u64),
    /// A continuation frame with no fragmented message to continue (§5.4).
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is unfinished: "the
    /// fragments of one message MUST NOT be interleaved between the fragments of another"
    /// (§5.4).
    #[error("new message before the fragmented one finished")]
    ExpectedContinuation,
    /// Text that is not UTF-8 (§8.1); closes with 1007.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// An invalid close frame payload (§5.5.1, §7.4).
    #[error(transparent)]
    InvalidClose(#[from] CloseError),
    /// A frame longer than [`Limits::max_frame_size`]; closes with 1009.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The length the header announced.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A message longer than [`Limits::max_message_size`]; closes with 1009.
    #[error("message exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// The limit.
        max: usize,
    },
}

impl ProtocolError {
    /// The status code to close the connection with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::InvalidUtf8
            | Self::InvalidCompressedData
            | Self::InvalidClose(CloseError::InvalidReason(_)) => CloseCode::INVALID_DATA,
            Self::FrameTooLarge { .. } | Self::MessageTooLarge { .. } => CloseCode::MESSAGE_TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

impl From<Utf8Error> for ProtocolError {
    fn from(_: Utf8Error) -> Self {
        Self::InvalidUtf8
    }
}

/// Turns received bytes into messages.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    limits: Limits,
    /// Bytes received and not yet handed out: the payload of the frame in progress
    /// (unmasked and validated up to its `seen`, which never exceeds the length), then
    /// bytes not looked at yet. Only the decoder writes to it: what it validated stays
    /// valid.
    buf: BytesMut,
    /// The frame whose header has been consumed and whose payload is arriving.
    frame: Option<InFrame>,
    /// The fragmented message being reassembled, if any (boxed: most messages come
    /// whole, and every connection carries the field).
    fragments: Option<Box<Fragments>>,
    /// Validates the text message in progress, fragment after fragment.
    utf8: Utf8Validator,
    /// Inflates compressed messages, when permessage-deflate was negotiated (boxed: most
    /// connections never compress, and each one's decoder should stay small).
    inflater: Option<Box<Inflater>>,
}

/// Of the frame's header, what the payload still needs (every connection's decoder
/// holds one of these, so it keeps no more).
#[derive(Debug)]
struct InFrame {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    /// The payload length, known to fit the limits.
    len: usize,
    /// Payload bytes at the front of the buffer already unmasked (and validated).
    seen: usize,
    /// Whether the payload is text to validate as it arrives (compressed text is
    /// validated once inflated).
    text: bool,
    /// Whether the frame belongs to a compressed message.
    compressed: bool,
}

#[derive(Debug)]
struct Fragments {
    opcode: OpCode,
    data: Reassembly,
}

/// A fragmented message's bytes so far.
#[derive(Debug)]
enum Reassembly {
    /// The payloads as received.
    Plain(BytesMut),
    /// A compressed message's payloads, inflated.
    Inflated(Vec<u8>),
}

impl Decoder {
    /// A decoder for the given side of the connection.
    pub fn new(role: Role, limits: Limits) -> Self {
        Self {
            role,
            limits,
            buf: BytesMut::new(),
            frame: None,
            fragments: None,
            utf8: Utf8Validator::new(),
            inflater: None,
        }
    }

    /// The same decoder, inflating messages compressed under the permessage-deflate
    /// agreement `params` (RFC 7692): RSV1 becomes allowed on the first frame of a data
    /// message, and marks it compressed.
    pub fn with_deflate(mut self, params: &DeflateParams) -> Self {
        self.inflater = Some(Box::new(Inflater::new(params, self.role)));
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Room for the next read: an empty buffer with space for at least `additional`
    /// bytes, which continues the decoder's own. Read into it and hand it to
    /// [`Decoder::feed`]: the bytes then join the buffered ones without a copy.
    pub fn read_buf(&mut self, additional: usize) -> BytesMut {
        // Between messages nothing is validated yet: the whole buffer is lent, which
        // spares the split (and the shared state it needs) on the common path.
        if self.buf.is_empty() {
            let mut buf = std::mem::take(&mut self.buf);
            buf.reserve(additional);
            return buf;
        }
        self.buf.reserve(additional);
        self.buf.split_off(self.buf.len())
    }

    /// [`Decoder::read_buf`] and [`Decoder::feed`] around a synchronous `read` (a
    /// poll), which appends to the buffer it is given: without moving the buffer in
    /// and out when nothing is validated in it, the common case between messages.
    pub fn read_with<T>(&mut self, additional: usize, read: impl FnOnce(&mut BytesMut) -> T) -> T {
        if self.buf.is_empty() {
            self.buf.reserve(additional);
            return read(&mut self.buf);
        }
        let mut buf = self.read_buf(additional);
        let output = read(&mut buf);
        self.feed(buf);
        output
    }

    /// Appends received bytes: without a copy when they were read into
    /// [`Decoder::read_buf`], or when nothing is buffered.
    pub fn feed(&mut self, bytes: BytesMut) {
        self.buf.unsplit(bytes);
    }

    /// How many received bytes the decoder holds, not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether the decoder holds a read buffer (it holds none after
    /// [`Decoder::take_buffer`] until it is fed or lends room again).
    pub fn has_buffer(&self) -> bool {
        self.buf.capacity() > 0
    }

    /// The read buffer, if it holds no bytes, to reuse elsewhere while the peer is
    /// silent: an idle connection then keeps no buffer. [`Decoder::feed`] takes one
    /// back; [`Decoder::read_buf`] starts a new one otherwise.
    pub fn take_buffer(&mut self) -> Option<BytesMut> {
        self.buf.is_empty().then(|| std::mem::take(&mut self.buf))
    }

    /// Decodes the next message from the bytes fed so far.
    ///
    /// Returns `Ok(None)` when it needs more bytes: feed them and call again. A
    /// non-final fragment is absorbed and decoding goes on with the next frame.
    #[inline]
    pub fn decode(&mut self) -> Result<Option<Message>, ProtocolError> {
        // The call between messages, before the next read, finds nothing: answered
        // here, inlined into the caller. (No frame waits on zero bytes: a frame whose
        // payload is complete is finished in the call that reads its header.)
        if self.buf.is_empty() {
            return Ok(None);
        }
        self.decode_frames()
    }

    /// [`Decoder::decode`] with at least one byte to work on.
    fn decode_frames(&mut self) -> Result<Option<Message>, ProtocolError> {
        loop {
            let frame = match &mut self.frame {
                Some(frame) => frame,
                None => {
                    let Some((header, header_len)) = FrameHeader::parse(&self.buf)? else {
                        return Ok(None);
                    };
                    let frame = self.admit(header)?;
                    self.buf.advance(header_len);
                    self.frame.insert(frame)
                }
            };
            let available = self.buf.len().min(frame.len);
            if let Some(fresh) = self.buf.get_mut(frame.seen..available) {
                if let Some(key) = frame.mask {
                    apply_mask(fresh, key, frame.seen);
                }
                if frame.text {
                    self.utf8.feed(fresh)?;
                }
                frame.seen = available;
            }
            if frame.seen < frame.len {
                return Ok(None);
            }
            let (opcode, fin, compressed) = (frame.opcode, frame.fin, frame.compressed);
            let payload = take_payload(&mut self.buf, frame.len);
            self.frame = None;
            if let Some(message) = self.complete(opcode, fin, payload, compressed)? {
                return Ok(Some(message));
            }
        }
    }

    /// How many more bytes the frame in progress needs, beyond those already buffered:
    /// a hint for sizing the next read.
    pub fn bytes_wanted(&self) -> usize {
        self.frame
            .as_ref()
            .map_or(0, |frame| frame.len.saturating_sub(self.buf.len()))
    }

    /// Checks a header against the rules that do not need the payload.
    fn admit(&self, header: FrameHeader) -> Result<InFrame, ProtocolError> {
        // RSV1 is permessage-deflate's "Per-Message Compressed" bit (RFC 7692 §6); no
        // extension here defines the other two.
        if header.rsv2 || header.rsv3 || (header.rsv1 && self.inflater.is_none()) {
            return Err(ProtocolError::NonZeroReservedBits);
        }
        match (self.role, header.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        // A compressed message is held to the limit on its inflated size, as it inflates.
        // Only a continuation adds to the message: control frames "MAY be injected in the
        // middle of a fragmented message" (RFC 6455 §5.4) and are no part of it.
        let buffered = match self.fragments.as_deref() {
            Some(Fragments {
                data: Reassembly::Plain(data),
                ..
            }) if header.opcode == OpCode::Continuation => data.len(),
            _ => 0,
        };
        let mut compressed = header.rsv1;
        let text = match header.opcode {
            op if op.is_control() => {
                // "An endpoint MUST NOT set the "Per-Message Compressed" bit of control
                // frames and non-first fragments of a data message. An endpoint receiving
                // such a frame MUST _Fail the WebSocket Connection_" (RFC 7692 §6.1).
                if header.rsv1 {
                    return Err(ProtocolError::CompressedControlFrame);
                }
                if !header.fin {
                    return Err(ProtocolError::FragmentedControlFrame);
                }
                if header.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(ProtocolError::ControlFrameTooLong(header.payload_len));
                }
                false
            }
            OpCode::Continuation => match &self.fragments {
                None => return Err(ProtocolError::UnexpectedContinuation),
                // The same rule of RFC 7692 §6.1 for non-first fragments.
                Some(_) if header.rsv1 => return Err(ProtocolError::CompressedContinuation),
                Some(fragments) => {
                    compressed = matches!(fragments.data, Reassembly::Inflated(_));
                    fragments.opcode == OpCode::Text
                }
            },
            data => {
                if self.fragments.is_some() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                data == OpCode::Text
            }
        };
        let len = self.check_size(header.payload_len, buffered)?;
        Ok(InFrame {
            opcode: header.opcode,
            fin: header.fin,
            mask: header.mask,
            len,
            seen: 0,
            text: text && !compressed,
            compressed,
        })
    }

    /// Applies the frame and message limits before a byte of the payload is buffered.
    fn check_size(&self, payload_len: u64, buffered: usize) -> Result<usize, ProtocolError> {
        let Limits {
            max_frame_size,
            max_message_size,
        } = self.limits;
        let len = usize::try_from(payload_len)
            .ok()
            .filter(|&len| len <= max_frame_size)
            .ok_or(ProtocolError::FrameTooLarge {
                len: payload_len,
                max: max_frame_size,
            })?;
        if buffered.saturating_add(len) > max_message_size {
            return Err(ProtocolError::MessageTooLarge {
                max: max_message_size,
            });
        }
        Ok(len)
    }

    /// Handles a complete frame; returns a message when one is finished.
    fn complete(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: Bytes,
        compressed: bool,
    ) -> Result<Option<Message>, ProtocolError> {
        let opcode = match opcode {
            OpCode::Ping => return Ok(Some(Message::Ping(payload))),
            OpCode::Pong => return Ok(Some(Message::Pong(payload))),
            OpCode::Close => return Ok(Some(Message::Close(CloseFrame::parse(payload)?))),
            OpCode::Continuation => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                match &mut fragments.data {
                    Reassembly::Plain(data) => data.extend_from_slice(&payload),
                    Reassembly::Inflated(data) => {
                        let text = fragments.opcode == OpCode::Text;
                        let (inflater, utf8) = (&mut self.inflater, &mut self.utf8);
                        let max = self.limits.max_message_size;
                        let end = if fin { End::Last } else { End::More };
                        inflate(inflater, utf8, max, &payload, end, text, data)?;
                    }
                }
                if !fin {
                    return Ok(None);
                }
                let Some(Fragments { opcode, data }) = self.fragments.take().map(|f| *f) else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                let data = match data {
                    Reassembly::Plain(data) => data.freeze(),
                    Reassembly::Inflated(data) => Bytes::from(data),
                };
                return self.finish(opcode, data).map(Some);
            }
            data => data,
        };
        if compressed {
            let mut data = Vec::new();
            let max = self.limits.max_message_size;
            let text = opcode == OpCode::Text;
            let (inflater, utf8) = (&mut self.inflater, &mut self.utf8);
            let end = if fin { End::Only } else { End::More };
            inflate(inflater, utf8, max, &payload, end, text, &mut data)?;
            if fin {
                return self.finish(opcode, Bytes::from(data)).map(Some);
            }
            self.fragments = Some(Box::new(Fragments {
                opcode,
                data: Reassembly::Inflated(data),
            }));
            return Ok(None);
        }
        if fin {
            return self.finish(opcode, payload).map(Some);
        }
        self.fragments = Some(Box::new(Fragments {
            opcode,
            data: Reassembly::Plain(BytesMut::from(&payload[..])),
        }));
        Ok(None)
    }

    fn finish(&mut self, opcode: OpCode, payload: Bytes) -> Result<Message, ProtocolError> {
        if opcode == OpCode::Text {
            self.utf8.finish()?;
            Ok(Message::Text(Utf8Bytes::from_validated(payload)))
        } else {
            Ok(Message::Binary(payload))
        }
    }
}

/// Payloads up to this size are copied out of the read buffer rather than split off it:
/// a small message the application keeps (a chat history) does not pin the whole
/// buffer, and the buffer, never shared, is reused in place by the next read. Above it,
/// the copy would cost more than the buffer it saves.
const COPY_OUT: usize = 4 << 10;

/// The first `len` bytes of `buf`, removed from it.
fn take_payload(buf: &mut BytesMut, len: usize) -> Bytes {
    if len > COPY_OUT {
        return buf.split_to(len).freeze();
    }
    let payload = Bytes::copy_from_slice(buf.get(..len).unwrap_or_default());
    buf.advance(len);
    payload
}

/// Where a frame of a compressed message stands in it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// More frames follow.
    More,
    /// The last of several frames.
    Last,
    /// The message's only frame.
    Only,
}

/// Inflates one frame of a compressed message into `data`, validating text as it
/// comes out, and the tail after the last frame.
fn inflate(
    inflater: &mut Option<Box<Inflater>>,
    utf8: &mut Utf8Validator,
    max: usize,
    payload: &[u8],
    end: End,
    text: bool,
    data: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let Some(inflater) = inflater.as_mut() else {
        // `admit` lets RSV1 through only with an inflater.
        return Err(ProtocolError::NonZeroReservedBits);
    };
    let start = data.len();
    let inflated = match end {
        End::Only => inflater.inflate_message(payload, data, max),
        End::More => inflater.inflate(payload, data, max),
        End::Last => inflater
            .inflate(payload, data, max)
            .and_then(|()| inflater.finish(data, max)),
    };
    inflated.map_err(|e| match e {
        InflateError::TooLarge => ProtocolError::MessageTooLarge { max },
        InflateError::Corrupt => ProtocolError::InvalidCompressedData,
    })?;
    if text {
        utf8.feed(data.get(start..).unwrap_or_default())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn wire(frames: &[Frame]) -> BytesMut {
        let mut out = BytesMut::new();
        for frame in frames {
            frame.clone().masked(KEY).write_to(&mut out);
        }
        out
    }

    fn server() -> Decoder {
        Decoder::new(Role::Server, Limits::default())
    }

    /// A server decoder that was fed `buf`.
    fn fed(buf: BytesMut) -> Decoder {
        let mut decoder = server();
        decoder.feed(buf);
        decoder
    }

    fn decode_all(decoder: &mut Decoder, buf: BytesMut) -> Result<Vec<Message>, ProtocolError> {
        decoder.feed(buf);
        let mut out = Vec::new();
        while let Some(message) = decoder.decode()? {
            out.push(message);
        }
        assert_eq!(decoder.buffered(), 0, "bytes left over");
        Ok(out)
    }

    #[test]
    fn validated_bytes_cannot_be_changed_into_invalid_text() {
        // Issue 13's reproduction, as far as the API lets it: half a text frame, then
        // invalid bytes and the rest of the frame. The caller can no longer reach the
        // half it fed (it used to clear it and put the invalid bytes in its place), so
        // the invalid bytes can only follow it, and are validated.
        let all = wire(&[Frame::text("hello world")]);
        let (half, rest) = all.split_at(6 + 5);
        let mut decoder = fed(BytesMut::from(half));
        assert_eq!(decoder.decode(), Ok(None));
        let mut more = decoder.read_buf(64);
        more.clear();
        more.extend_from_slice(b"\xfe\xfd\xfc\xfb\xfe");
        more.extend_from_slice(rest);
        decoder.feed(more);
        match decoder.decode() {
            Ok(Some(Message::Text(text))) => {
                assert!(
                    std::str::from_utf8(text.as_bytes()).is_ok(),
                    "{:?}",
                    text.as_bytes()
                );
            }
            other => assert_eq!(other, Err(ProtocolError::InvalidUtf8)),
        }
    }

    #[test]
    fn reads_join_the_buffer_without_a_copy() {
        let all = wire(&[Frame::binary(vec![5u8; 3 * COPY_OUT])]);
        let mut decoder = server();
        let mut start = None;
        for part in all.chunks(1000) {
            // Room for the whole frame at first, then for what it still needs.
            let want = match decoder.has_buffer() {
                false => all.len(),
                true => decoder.bytes_wanted(),
            };
            let mut buf = decoder.read_buf(want);
            let at = buf.as_ptr();
            buf.extend_from_slice(part);
            assert_eq!(buf.as_ptr(), at, "the room lent was enough");
            start.get_or_insert(at);
            decoder.feed(buf);
            if let Some(message) = decoder.decode().unwrap() {
                let Message::Binary(payload) = message else {
                    panic!("expected a binary message")
                };
                assert_eq!(payload, vec![5u8; 3 * COPY_OUT]);
                // The payload follows the 8-byte header in the one buffer read into.
                assert_eq!(Some(payload.as_ptr()), start.map(|p| p.wrapping_add(8)));
                return;
            }
        }
        panic!("no message");
    }

    #[test]
    fn decodes_a_single_masked_text_frame() {
        // RFC 6455 §5.7: a single-frame masked text message.
        let buf = BytesMut::from(
            &[
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
            ][..],
        );
        let mut decoder = fed(buf);
        assert_eq!(decoder.decode(), Ok(Some(Message::text("Hello"))));
        assert!(decoder.take_buffer().is_some());
    }

    #[test]
    fn reassembles_fragments_around_interleaved_control_frames() {
        let buf = wire(&[
            Frame::text("Hel").with_fin(false),
            Frame::ping("p"),
            Frame::new(OpCode::Continuation, Bytes::from_static(b"lo")).with_fin(false),
            Frame::pong(""),
            Frame::new(OpCode::Continuation, Bytes::from_static(b", world")),
        ]);
        let messages = decode_all(&mut server(), buf).unwrap();
        assert_eq!(
            messages,
            vec![
                Message::Ping(Bytes::from_static(b"p")),
                Message::Pong(Bytes::new()),
                Message::text("Hello, world"),
            ]
        );
    }

    #[test]
    fn byte_at_a_time_gives_the_same_messages() {
        let frames = [
            Frame::binary(vec![7u8; 300]).with_fin(false),
            Frame::new(OpCode::Continuation, Bytes::from(vec![8u8; 70_000])),
            Frame::text("κόσμε"),
            Frame::close(CloseCode::NORMAL, "done"),
        ];
        let all = wire(&frames);
        let mut decoder = server();
        let mut messages = Vec::new();
        for byte in all.iter() {
            let mut buf = decoder.read_buf(1);
            buf.extend_from_slice(&[*byte]);
            decoder.feed(buf);
            while let Some(m) = decoder.decode().unwrap() {
                messages.push(m);
            }
        }
        let mut expected = vec![0x07; 300];
        expected.extend(vec![0x08; 70_000]);
        assert_eq!(
            messages,
            vec![
                Message::Binary(expected.into()),
                Message::text("κόσμε"),
                Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "done"))),
            ]
        );
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_is_complete() {
        let mut all = wire(&[Frame::text(String::from_utf8(vec![b'a'; 1000]).unwrap())]);
        // Corrupt byte 10 of the payload (the header is 8 bytes: 2 + 2 length + 4 key).
        all[8 + 10] ^= KEY[10 % 4] ^ 0xFF;
        let buf = BytesMut::from(&all[..8 + 20]);
        assert_eq!(fed(buf).decode(), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn invalid_utf8_split_across_fragments_fails_at_the_fragment() {
        let buf = wire(&[
            Frame::new(OpCode::Text, Bytes::from_static(&[0xF0, 0x9F])).with_fin(false),
            Frame::new(OpCode::Continuation, Bytes::from_static(&[0x98, 0x41])),
        ]);
        assert_eq!(
            decode_all(&mut server(), buf),
            Err(ProtocolError::InvalidUtf8)
        );
        // The same sequence completed correctly is fine.
        let buf = wire(&[
            Frame::new(OpCode::Text, Bytes::from_static(&[0xF0, 0x9F])).with_fin(false),
            Frame::new(OpCode::Continuation, Bytes::from_static(&[0x98, 0x80])),
        ]);
        assert_eq!(
            decode_all(&mut server(), buf),
            Ok(vec![Message::text("😀")])
        );
    }

    #[test]
    fn each_rule_has_its_error_and_close_code() {
        let cases: Vec<(BytesMut, ProtocolError, u16)> = vec![
            (
                wire(&[Frame::new(OpCode::Continuation, Bytes::new())]),
                ProtocolError::UnexpectedContinuation,
                1002,
            ),
            (
                wire(&[Frame::text("a").with_fin(false), Frame::text("b")]),
                ProtocolError::ExpectedContinuation,
                1002,
            ),
            (
                wire(&[Frame::ping("").with_fin(false)]),
                ProtocolError::FragmentedControlFrame,
                1002,
            ),
            (
                wire(&[Frame::ping(vec![0u8; 126])]),
                ProtocolError::ControlFrameTooLong(126),
                1002,
            ),
            (
                BytesMut::from(&[0x81, 0x00][..]),
                ProtocolError::UnmaskedFrame,
                1002,
            ),
            (
                BytesMut::from(&[0xC1, 0x80, 0, 0, 0, 0][..]),
                ProtocolError::NonZeroReservedBits,
                1002,
            ),
            (
                BytesMut::from(&[0x85, 0x80, 0, 0, 0, 0][..]),
                ProtocolError::Header(HeaderError::ReservedOpCode(5)),
                1002,
            ),
            (
                wire(&[Frame::new(OpCode::Close, Bytes::from_static(&[0x03]))]),
                ProtocolError::InvalidClose(CloseError::Truncated),
                1002,
            ),
            (
                wire(&[Frame::new(
                    OpCode::Close,
                    Bytes::from_static(&[0x03, 0xE8, 0xC0]),
                )]),
                ProtocolError::InvalidClose(CloseError::InvalidReason(Utf8Error)),
                1007,
            ),
            (
                wire(&[Frame::new(OpCode::Close, Bytes::from_static(&[0x03, 0xEE]))]),
                ProtocolError::InvalidClose(CloseError::InvalidCode(CloseCode::ABNORMAL)),
                1002,
            ),
        ];
        for (buf, error, code) in cases {
            let got = decode_all(&mut server(), buf).unwrap_err();
            assert_eq!(got, error);
            assert_eq!(got.close_code(), CloseCode(code), "{got}");
        }
    }

    #[test]
    fn client_role_rejects_masked_frames_and_accepts_unmasked_ones() {
        let mut client = Decoder::new(Role::Client, Limits::default());
        let mut buf = BytesMut::new();
        Frame::text("hi").write_to(&mut buf);
        client.feed(buf);
        assert_eq!(client.decode(), Ok(Some(Message::text("hi"))));
        client.feed(wire(&[Frame::text("hi")]));
        assert_eq!(client.decode(), Err(ProtocolError::MaskedFrame));
    }

    #[test]
    fn limits_apply_before_the_payload_arrives() {
        let limits = Limits::default().max_frame_size(100).max_message_size(150);
        // Only the header of a 101-byte frame: rejected at once.
        let mut header_only = wire(&[Frame::binary(vec![0u8; 101])]);
        header_only.truncate(8);
        let mut decoder = Decoder::new(Role::Server, limits);
        decoder.feed(header_only);
        let err = decoder.decode().unwrap_err();
        assert_eq!(err, ProtocolError::FrameTooLarge { len: 101, max: 100 });
        assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);

        let buf = wire(&[
            Frame::binary(vec![0u8; 100]).with_fin(false),
            Frame::new(OpCode::Continuation, Bytes::from(vec![0u8; 51])),
        ]);
        assert_eq!(
            decode_all(&mut Decoder::new(Role::Server, limits), buf),
            Err(ProtocolError::MessageTooLarge { max: 150 })
        );
        let mut huge = BytesMut::from(&[0x82, 0xFF][..]);
        huge.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        huge.extend_from_slice(&KEY);
        assert!(matches!(
            fed(huge).decode(),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn large_payloads_are_views_into_the_read_buffer() {
        let buf = wire(&[Frame::binary(vec![1u8; COPY_OUT + 1])]);
        let range = buf.as_ptr_range();
        let Ok(Some(Message::Binary(payload))) = fed(buf).decode() else {
            panic!("expected a binary message");
        };
        assert!(
            range.contains(&payload.as_ptr()),
            "payload should share the buffer"
        );
    }

    #[test]
    fn small_payloads_are_copied_and_leave_the_buffer_unshared() {
        let buf = wire(&[Frame::binary(vec![1u8; COPY_OUT]), Frame::text("hi")]);
        let range = buf.as_ptr_range();
        let mut decoder = fed(buf);
        let Ok(Some(Message::Binary(payload))) = decoder.decode() else {
            panic!("expected a binary message");
        };
        assert!(
            !range.contains(&payload.as_ptr()),
            "payload should be a copy"
        );
        assert_eq!(payload, vec![1u8; COPY_OUT]);
        assert!(matches!(decoder.decode(), Ok(Some(Message::Text(t))) if t == "hi"));
        let mut buf = decoder.take_buffer().expect("an empty buffer");
        assert!(
            buf.try_reclaim(buf.capacity() + COPY_OUT),
            "buffer should be unshared"
        );
    }

    fn deflating(no_context_takeover: bool) -> (crate::deflate::Deflater, Decoder) {
        let params = DeflateParams {
            client_no_context_takeover: no_context_takeover,
            ..DeflateParams::default()
        };
        (
            crate::deflate::Deflater::new(&params, Role::Client, 6),
            server().with_deflate(&params),
        )
    }

    fn compressed_frame(
        deflater: &mut crate::deflate::Deflater,
        opcode: OpCode,
        payload: &[u8],
    ) -> Frame {
        deflater.frame(opcode, payload).unwrap()
    }

    #[test]
    fn inflates_compressed_messages_whole_and_fragmented() {
        for takeover in [true, false] {
            let (mut deflater, mut decoder) = deflating(!takeover);
            let text = "κόσμε ".repeat(1000);
            let whole = compressed_frame(&mut deflater, OpCode::Text, text.as_bytes());
            assert!(whole.payload().len() < 200);
            // The same message again, split over three frames, RSV1 on the first only.
            let again = compressed_frame(&mut deflater, OpCode::Text, text.as_bytes());
            let (a, rest) = again.payload().split_at(again.payload().len() / 3);
            let (b, c) = rest.split_at(rest.len() / 2);
            let first = Frame::new(OpCode::Text, Bytes::copy_from_slice(a))
                .with_fin(false)
                .with_rsv1(true);
            let plain = Frame::binary(vec![9u8; 10]);
            let buf = wire(&[
                whole,
                first,
                Frame::ping("in between"),
                Frame::new(OpCode::Continuation, Bytes::copy_from_slice(b)).with_fin(false),
                Frame::new(OpCode::Continuation, Bytes::copy_from_slice(c)),
                plain,
            ]);
            assert_eq!(
                decode_all(&mut decoder, buf).unwrap(),
                vec![
                    Message::text(text.clone()),
                    Message::Ping(Bytes::from_static(b"in between")),
                    Message::text(text.clone()),
                    Message::binary(vec![9u8; 10]),
                ]
            );
        }
    }

    #[test]
    fn rsv1_is_only_for_the_first_frame_of_a_data_message() {
        let (mut deflater, _) = deflating(false);
        let ping = Frame::ping("x").with_rsv1(true);
        let continuation =
            Frame::new(OpCode::Continuation, Bytes::from_static(b"x")).with_rsv1(true);
        let cases = [
            (wire(&[ping]), ProtocolError::CompressedControlFrame),
            (
                wire(&[Frame::text("a").with_fin(false), continuation]),
                ProtocolError::CompressedContinuation,
            ),
            (
                wire(&[compressed_frame(&mut deflater, OpCode::Text, &[0xff, 0xfe])]),
                ProtocolError::InvalidUtf8,
            ),
            (
                wire(&[Frame::binary(Bytes::from_static(&[0xff, 0xff, 0xff])).with_rsv1(true)]),
                ProtocolError::InvalidCompressedData,
            ),
        ];
        for (buf, error) in cases {
            let (_, mut decoder) = deflating(false);
            let got = decode_all(&mut decoder, buf).unwrap_err();
            assert_eq!(got, error);
            let code = if matches!(
                error,
                ProtocolError::InvalidUtf8 | ProtocolError::InvalidCompressedData
            ) {
                1007
            } else {
                1002
            };
            assert_eq!(got.close_code(), CloseCode(code));
        }
        // Without the extension, RSV1 stays a protocol error.
        let buf = wire(&[compressed_frame(&mut deflater, OpCode::Text, b"hi")]);
        assert_eq!(
            decode_all(&mut server(), buf),
            Err(ProtocolError::NonZeroReservedBits)
        );
    }

    #[test]
    fn the_message_limit_applies_to_the_inflated_size() {
        let (mut deflater, _) = deflating(true);
        // A kilobyte on the wire that would inflate to 16 MiB.
        let bomb = compressed_frame(&mut deflater, OpCode::Binary, &vec![0u8; 16 << 20]);
        assert!(bomb.payload().len() < 20_000, "{}", bomb.payload().len());
        let limits = Limits::default()
            .max_frame_size(1 << 20)
            .max_message_size(1 << 20);
        let params = DeflateParams::default();
        let mut decoder = Decoder::new(Role::Server, limits).with_deflate(&params);
        let err = decode_all(&mut decoder, wire(&[bomb])).unwrap_err();
        assert_eq!(err, ProtocolError::MessageTooLarge { max: 1 << 20 });
        assert_eq!(err.close_code(), CloseCode::MESSAGE_TOO_BIG);
    }
}
