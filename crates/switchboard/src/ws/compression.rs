//! permessage-deflate settings (RFC 7692), and the compressor a connection sends with.

use switchboard_proto::{
    Message, OpCode, Role,
    deflate::{DeflateConfig, DeflateParams, Deflater},
    frame::Frame,
    handshake::ServerHandshake,
};

/// Whether and how a connection compresses messages with permessage-deflate (RFC 7692).
///
/// A server negotiates it with every client that offers it (browsers do); a client
/// offers it and uses it if the server agrees. Incoming compressed messages are inflated
/// in every mode that negotiates, with the message limit applied to the inflated size.
///
/// ```
/// use switchboard::{Compression, WebSocketConfig};
///
/// let config = WebSocketConfig::default().compression(Compression::dedicated());
/// # let _ = config;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// No compression: the extension is neither offered nor accepted. The default:
    /// compression costs CPU and memory on every connection, and helps only with
    /// compressible messages of some size.
    #[default]
    Disabled,
    /// Each connection keeps its own compression contexts across messages ("context
    /// takeover"), the best ratio for chatty connections with repetitive messages.
    ///
    /// Memory per connection is bounded by `window_bits`: our compressor's window, and
    /// the window asked of the peer's compressor (which bounds our inflater) when the
    /// peer allows it. Each side's state is allocated with the first compressed message.
    Dedicated {
        /// LZ77 window as a power of two, 9 to 15 (512 B to 32 KiB).
        window_bits: u8,
        /// zlib level: 1 fastest, 9 smallest.
        level: u32,
        /// Messages shorter than this many bytes are sent uncompressed.
        threshold: usize,
    },
    /// No context is kept between messages (`server_no_context_takeover` and
    /// `client_no_context_takeover` are negotiated), so an idle connection holds no
    /// compression state, and one compressed frame is valid for every connection in
    /// this mode: a broadcast is compressed once.
    Shared {
        /// zlib level: 1 fastest, 9 smallest.
        level: u32,
        /// Messages shorter than this many bytes are sent uncompressed.
        threshold: usize,
    },
}

impl Compression {
    /// Below this size a message is not worth compressing: deflate's framing eats the
    /// gain and the CPU is spent for nothing. 1 KiB, as Node's `ws` does.
    pub const DEFAULT_THRESHOLD: usize = 1024;

    /// [`Compression::Dedicated`] with a 4 KiB window (12 bits, as Python's `websockets`
    /// chooses for memory), zlib's default level 6, and the default threshold.
    pub const fn dedicated() -> Self {
        Self::Dedicated {
            window_bits: 12,
            level: Deflater::DEFAULT_LEVEL,
            threshold: Self::DEFAULT_THRESHOLD,
        }
    }

    /// [`Compression::Shared`] with zlib's default level 6 and the default threshold.
    pub const fn shared() -> Self {
        Self::Shared {
            level: Deflater::DEFAULT_LEVEL,
            threshold: Self::DEFAULT_THRESHOLD,
        }
    }

    /// What to negotiate, or `None` when disabled.
    pub fn deflate_config(&self) -> Option<DeflateConfig> {
        match *self {
            Self::Disabled => None,
            Self::Dedicated { window_bits, .. } => Some(
                DeflateConfig::default()
                    .max_window_bits(window_bits)
                    .peer_max_window_bits(window_bits),
            ),
            Self::Shared { .. } => Some(
                DeflateConfig::default()
                    .no_context_takeover(true)
                    .peer_no_context_takeover(true),
            ),
        }
    }

    /// Negotiates on a server's handshake; the agreement, if the client offered
    /// something acceptable.
    pub(crate) fn negotiate(&self, handshake: &mut ServerHandshake) -> Option<DeflateParams> {
        handshake.negotiate_deflate(&self.deflate_config()?)
    }

    /// The zlib level and the size threshold messages are compressed with; for
    /// agreements made elsewhere (compression disabled here), the defaults.
    pub(crate) fn level_and_threshold(&self) -> (u32, usize) {
        match *self {
            Self::Dedicated {
                level, threshold, ..
            }
            | Self::Shared { level, threshold } => (level, threshold),
            Self::Disabled => (Deflater::DEFAULT_LEVEL, Self::DEFAULT_THRESHOLD),
        }
    }

    /// The compressor for a connection that agreed to `params`. A connection whose
    /// agreement was made elsewhere (compression disabled here) compresses at the
    /// default level above the default threshold.
    pub(crate) fn compressor(&self, params: &DeflateParams, role: Role) -> Compressor {
        let (level, threshold) = self.level_and_threshold();
        Compressor {
            deflater: Deflater::new(params, role, level),
            threshold,
            params: *params,
        }
    }
}

/// Turns outgoing data messages into compressed frames, past the threshold.
#[derive(Debug)]
pub(crate) struct Compressor {
    deflater: Deflater,
    threshold: usize,
    /// The agreement the deflater follows.
    params: DeflateParams,
}

impl Compressor {
    /// The agreement in force.
    pub(crate) fn params(&self) -> DeflateParams {
        self.params
    }

    /// The frame that carries `message`: compressed with RSV1 set when it is a data
    /// message of at least the threshold, as sent otherwise. Control frames are never
    /// compressed: "An endpoint MUST NOT set the "Per-Message Compressed" bit of control
    /// frames" (RFC 7692 §6.1).
    pub(crate) fn frame(&mut self, message: Message) -> Frame {
        let (opcode, payload) = match &message {
            Message::Text(text) => (OpCode::Text, text.as_bytes()),
            Message::Binary(data) => (OpCode::Binary, data),
            _ => return message.into_frame(),
        };
        if payload.len() < self.threshold {
            return message.into_frame();
        }
        // A message that fails to compress (zlib out of memory) still goes, as it is.
        self.deflater
            .frame(opcode, payload)
            .unwrap_or_else(|_| message.into_frame())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_negotiate_what_they_promise() {
        assert_eq!(Compression::Disabled.deflate_config(), None);
        let dedicated = Compression::dedicated().deflate_config().unwrap();
        assert_eq!(
            (dedicated.max_window_bits, dedicated.no_context_takeover),
            (12, false)
        );
        let shared = Compression::shared().deflate_config().unwrap();
        assert!(shared.no_context_takeover && shared.peer_no_context_takeover);
    }

    #[test]
    fn only_data_messages_past_the_threshold_are_compressed() {
        let mut compressor =
            Compression::shared().compressor(&DeflateParams::default(), Role::Server);
        let big = "x".repeat(2000);
        let frame = compressor.frame(Message::text(big.clone()));
        assert!(frame.header().rsv1 && frame.payload().len() < 100);
        let small = compressor.frame(Message::text("hello"));
        assert!(!small.header().rsv1);
        assert_eq!(&small.payload()[..], b"hello");
        let ping = compressor.frame(Message::Ping(big.as_bytes()[..100].to_vec().into()));
        assert!(!ping.header().rsv1);
    }
}
