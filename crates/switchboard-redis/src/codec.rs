//! Envelopes on a Redis channel: the shared wire format
//! ([`switchboard_broker::wire`]), and what a Redis stream keeps of a message.

pub(crate) use switchboard_broker::wire::{StreamParts, WireError, decode, encode_stream};
use switchboard_proto::Message;

/// What a stream keeps of a message: its payload, under a field that says its kind.
pub(crate) const TEXT_FIELD: &str = "t";
/// See [`TEXT_FIELD`].
pub(crate) const BINARY_FIELD: &str = "b";

/// The field a stream keeps `parts`' payload under.
pub(crate) fn field(parts: &StreamParts) -> &'static str {
    if parts.text { TEXT_FIELD } else { BINARY_FIELD }
}

/// The message a stream kept as `payload` under `field`; never panics on what Redis
/// returned.
pub(crate) fn stream_message(field: &[u8], payload: Vec<u8>) -> Result<Message, WireError> {
    match field {
        b"t" => String::from_utf8(payload)
            .map(Message::text)
            .map_err(|_| WireError::InvalidUtf8),
        b"b" => Ok(Message::binary(payload)),
        other => Err(WireError::Unknown(
            "field",
            other.first().copied().unwrap_or(0),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_broker::{Envelope, NodeId, Target};

    #[test]
    fn a_stream_keeps_text_and_binary_and_refuses_the_rest() {
        let envelope = |message| Envelope {
            origin: NodeId::from_bits(7),
            target: Target::Room("r".into()),
            except: None,
            message,
            position: None,
        };
        let text = encode_stream(&envelope(Message::text("hello"))).unwrap();
        assert_eq!(field(&text), TEXT_FIELD);
        let binary = encode_stream(&envelope(Message::binary(vec![1u8]))).unwrap();
        assert_eq!(field(&binary), BINARY_FIELD);
        assert_eq!(
            stream_message(b"t", b"hello".to_vec()),
            Ok(Message::text("hello"))
        );
        assert_eq!(
            stream_message(b"b", vec![0xFF]),
            Ok(Message::binary(vec![0xFFu8]))
        );
        assert_eq!(
            stream_message(b"t", vec![0xFF]),
            Err(WireError::InvalidUtf8)
        );
        assert_eq!(
            stream_message(b"x", Vec::new()),
            Err(WireError::Unknown("field", b'x'))
        );
        assert_eq!(
            stream_message(b"", Vec::new()),
            Err(WireError::Unknown("field", 0))
        );
    }
}
