//! Which side of the connection we are, and the limits we enforce on the peer.

/// The side of the connection this endpoint plays; it decides who masks (RFC 6455 §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Accepts connections: receives masked frames, sends unmasked ones.
    Server,
    /// Opens connections: sends masked frames, receives unmasked ones.
    Client,
}

/// Limits on what the peer may send. They are on by default: without them one peer could
/// make us allocate whatever length a frame header claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest frame payload accepted; a longer one closes with 1009.
    ///
    /// Default 16 MiB: a single frame is held whole before it is delivered, so this bounds
    /// the read buffer; it is what tungstenite uses, and what Autobahn's largest
    /// single-frame cases (9.1.6, 9.2.6) need.
    pub max_frame_size: usize,
    /// The longest message accepted, after reassembly (and after decompression, where
    /// negotiated); a longer one closes with 1009.
    ///
    /// Default 64 MiB: large enough for file-sized payloads, small enough that a hostile
    /// peer cannot exhaust memory with one message.
    pub max_message_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_size: 16 << 20,
            max_message_size: 64 << 20,
        }
    }
}

impl Limits {
    /// One limit for both: the largest message, which also bounds any single frame.
    pub fn with_max_message_size(max: usize) -> Self {
        Self {
            max_frame_size: max,
            max_message_size: max,
        }
    }
}
