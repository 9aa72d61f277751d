//! A data message on its way to one or many connections, encoded once per form its
//! recipients need.
//!
//! Without permessage-deflate every recipient gets the same frame. With it, a
//! connection that agreed to `server_no_context_takeover` (what [`Compression::Shared`]
//! negotiates) takes a frame compressed on its own, so one compression serves every such
//! recipient with the same window; a connection with context takeover compresses in its
//! own context, in the order its messages are queued.

use crate::{Compression, ws::Compressor};
use std::cell::OnceCell;
use switchboard_proto::{
    EncodedFrame, Message, Role,
    deflate::{DeflateParams, Deflater},
};

/// Windows a server may agree to compress with: 8 to 15 bits.
const WINDOWS: usize = 8;

/// A text or binary message and the encodings made of it so far.
#[derive(Debug)]
pub(crate) struct Outgoing {
    message: Message,
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
            plain: OnceCell::new(),
            shared: Default::default(),
        }
    }

    /// The uncompressed frame's length: what a recipient's buffer is charged before the
    /// message is compressed for it (compression is decided only for accepted messages,
    /// since a compressor with context cannot take back what it compressed).
    pub(crate) fn plain_len(&self) -> usize {
        self.plain().len()
    }

    /// The frame for a connection with the agreement `deflate`; `dedicated` is that
    /// connection's compressor, made on first use, for agreements with context takeover.
    pub(crate) fn frame_for(
        &self,
        deflate: Option<&DeflateParams>,
        compression: &Compression,
        dedicated: &mut Option<Box<Compressor>>,
    ) -> EncodedFrame {
        let (level, threshold) = compression.level_and_threshold();
        let payload = self.payload();
        match deflate {
            Some(params) if payload.len() >= threshold => {
                if params.server_no_context_takeover {
                    self.shared(params.server_max_window_bits, level)
                } else {
                    dedicated
                        .get_or_insert_with(|| {
                            Box::new(compression.compressor(params, Role::Server))
                        })
                        .frame(self.message.clone())
                        .encode()
                }
            }
            _ => self.plain().clone(),
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

    #[test]
    fn recipients_without_context_share_one_compressed_frame_per_window() {
        let message = Outgoing::new(Message::text("chat ".repeat(1000)));
        let compression = Compression::shared();
        let frame =
            |params: Option<&DeflateParams>| message.frame_for(params, &compression, &mut None);
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
    fn recipients_with_context_compress_in_their_own() {
        let compression = Compression::dedicated();
        let params = DeflateParams::default();
        let mut context = None;
        let first = Outgoing::new(Message::text("status update ".repeat(200)));
        let again = Outgoing::new(Message::text("status update ".repeat(200)));
        let one = first.frame_for(Some(&params), &compression, &mut context);
        let two = again.frame_for(Some(&params), &compression, &mut context);
        assert!(context.is_some());
        // The second refers back to the first through the kept window.
        assert!(two.len() < one.len(), "{} then {}", one.len(), two.len());
        let small = Outgoing::new(Message::text("hi"));
        let frame = small.frame_for(Some(&params), &compression, &mut context);
        assert_eq!(frame.len(), small.plain_len(), "under the threshold: plain");
    }
}
