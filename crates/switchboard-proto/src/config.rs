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
///
/// Start from [`Limits::default`] and change what you need, one method per limit:
///
/// ```
/// use bytes::BytesMut;
/// use switchboard_proto::{Decoder, Frame, Limits, ProtocolError, Role};
///
/// let limits = Limits::default().max_frame_size(4 << 10).max_message_size(16 << 10);
/// assert_eq!(limits.max_message_size, 16 << 10);
///
/// let mut decoder = Decoder::new(Role::Client, limits);
/// let mut wire = BytesMut::new();
/// Frame::binary(vec![0; 5 << 10]).write_to(&mut wire);
/// decoder.feed(wire);
/// assert!(matches!(decoder.decode(), Err(ProtocolError::FrameTooLarge { .. })));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Sets [`Limits::max_frame_size`]. A frame longer than
    /// [`Limits::max_message_size`] is refused too (as a message too large, also 1009),
    /// so a frame limit above the message limit has no effect.
    pub fn max_frame_size(mut self, max: usize) -> Self {
        self.max_frame_size = max;
        self
    }

    /// Sets [`Limits::max_message_size`]: it bounds every frame of the message too.
    pub fn max_message_size(mut self, max: usize) -> Self {
        self.max_message_size = max;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builder_method_sets_its_field() {
        // Values other than the defaults, so that a method that sets nothing fails.
        let limits = Limits::default().max_frame_size(100).max_message_size(200);
        // Exhaustive: a new field does not compile here until it has a method and a check.
        let Limits {
            max_frame_size,
            max_message_size,
        } = limits;
        assert_eq!(max_frame_size, 100);
        assert_eq!(max_message_size, 200);
    }
}
