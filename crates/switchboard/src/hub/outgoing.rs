//! A data message on its way to one or many connections, encoded once per form its
//! recipients need.
//!
//! Without permessage-deflate every recipient gets the same frame. With it, a
//! connection that agreed to `server_no_context_takeover` (what [`Compression::Shared`]
//! negotiates) takes a frame compressed on its own, so one compression serves every such
//! recipient with the same window; a connection with context takeover is queued the
//! message itself, which its own task compresses in its own context, in the order of its
//! queue: no lock of the hub or of the queue is held meanwhile.

use crate::Compression;
use std::cell::OnceCell;
use switchboard_proto::{
    EncodedFrame, Message,
    deflate::{DeflateParams, Deflater},
};

/// Windows a server may agree to compress with: 8 to 15 bits.
const WINDOWS: usize = 8;

/// What a connection's queue holds.
#[derive(Debug)]
pub(crate) enum Queued {
    /// A frame ready for the wire.
    Frame(EncodedFrame),
    /// A data message for the connection's own compression context, charged to its
    /// buffer at `charged` bytes (its uncompressed frame) until compressed.
    Dedicated { message: Message, charged: usize },
}

impl Queued {
    /// The bytes charged to the connection's buffer for it.
    pub(crate) fn charged(&self) -> usize {
        match self {
            Self::Frame(frame) => frame.len(),
            Self::Dedicated { charged, .. } => *charged,
        }
    }
}

/// When a queued frame's broadcast happened, in microseconds of the hub's clock
/// (`Hub::now_micros`); 0 when it is not timed (metrics off, or not a broadcast).
pub(crate) type Stamp = u64;

/// A text or binary message and the encodings made of it so far.
#[derive(Debug)]
pub(crate) struct Outgoing {
    message: Message,
    /// Carried into every recipient's queue, for the delivery histogram.
    stamp: Stamp,
    plain: OnceCell<EncodedFrame>,
    /// Compressed without context, by window bits − 8; `None` inside when zlib failed
    /// (the plain frame goes instead).
    shared: [OnceCell<Option<EncodedFrame>>; WINDOWS],
}

impl Outgoing {
    /// `message` must be a data message (text or binary).
    pub(crate) fn new(message: Message) -> Self {
        debug_assert!(message.is_data());
        Self {
            message,
            stamp: 0,
            plain: OnceCell::new(),
            shared: Default::default(),
        }
    }

    /// Times the message's delivery from `stamp` (see [`Stamp`]).
    pub(crate) fn stamped(mut self, stamp: Stamp) -> Self {
        self.stamp = stamp;
        self
    }

    /// See [`Stamp`].
    pub(crate) fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// The message, handed back to a sender whose connection did not take it.
    pub(crate) fn into_message(self) -> Message {
        self.message
    }

    /// The uncompressed frame's length: what a recipient's buffer is charged before the
    /// message is compressed for it (compression is decided only for accepted messages,
    /// since a compressor with context cannot take back what it compressed).
    pub(crate) fn plain_len(&self) -> usize {
        self.plain().len()
    }

    /// What to queue for a connection with the agreement `deflate`: a frame, or with
    /// context takeover the message, for the connection's task to compress.
    pub(crate) fn queued_for(
        &self,
        deflate: Option<&DeflateParams>,
        compression: &Compression,
    ) -> Queued {
        let (level, threshold) = compression.level_and_threshold();
        match deflate {
            Some(params) if self.payload().len() >= threshold => {
                if params.server_no_context_takeover {
                    Queued::Frame(self.shared(params.server_max_window_bits, level))
                } else {
                    Queued::Dedicated {
                        message: self.message.clone(),
                        charged: self.plain_len(),
                    }
                }
            }
            _ => Queued::Frame(self.plain().clone()),
        }
    }

    fn plain(&self) -> &EncodedFrame {
        self.plain
            .get_or_init(|| self.message.clone().into_frame().encode())
    }

    fn shared(&self, window_bits: u8, level: u32) -> EncodedFrame {
        let slot = usize::from(window_bits.clamp(8, 15) - 8);
        let compressed = self.shared.get(slot).and_then(|cell| {
            cell.get_or_init(|| {
                Deflater::with_window(window_bits, true, level)
                    .frame(self.message.opcode(), self.payload())
                    .ok()
                    .map(|frame| frame.encode())
            })
            .clone()
        });
        compressed.unwrap_or_else(|| self.plain().clone())
    }

    fn payload(&self) -> &[u8] {
        match &self.message {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(data) => data,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_params(window_bits: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: true,
            server_max_window_bits: window_bits,
            ..DeflateParams::default()
        }
    }

    fn frame(queued: Queued) -> EncodedFrame {
        match queued {
            Queued::Frame(frame) => frame,
            Queued::Dedicated { .. } => panic!("queued for compression: {queued:?}"),
        }
    }

    #[test]
    fn recipients_without_context_share_one_compressed_frame_per_window() {
        let message = Outgoing::new(Message::text("chat ".repeat(1000)));
        let compression = Compression::shared();
        let frame =
            |params: Option<&DeflateParams>| frame(message.queued_for(params, &compression));
        let (a, b) = (
            frame(Some(&shared_params(15))),
            frame(Some(&shared_params(15))),
        );
        assert!(a.len() < 200, "compressed: {}", a.len());
        assert_eq!(a.payload.as_ptr(), b.payload.as_ptr(), "compressed once");
        let narrow = frame(Some(&shared_params(10)));
        assert_ne!(
            narrow.payload.as_ptr(),
            a.payload.as_ptr(),
            "own window, own frame"
        );
        let (plain, plain_again) = (frame(None), frame(None));
        assert_eq!(plain.len(), message.plain_len());
        assert_eq!(plain.payload.as_ptr(), plain_again.payload.as_ptr());
    }

    #[test]
    fn recipients_with_context_get_the_message_charged_uncompressed() {
        let compression = Compression::dedicated();
        let params = DeflateParams::default();
        let text = Message::text("status update ".repeat(200));
        let message = Outgoing::new(text.clone());
        let queued = message.queued_for(Some(&params), &compression);
        assert_eq!(queued.charged(), message.plain_len());
        match queued {
            Queued::Dedicated { message, .. } => assert_eq!(message, text),
            Queued::Frame(frame) => panic!("compressed by the sender: {frame:?}"),
        }
        let small = Outgoing::new(Message::text("hi"));
        let plain = frame(small.queued_for(Some(&params), &compression));
        assert_eq!(plain.len(), small.plain_len(), "under the threshold: plain");
    }
}
