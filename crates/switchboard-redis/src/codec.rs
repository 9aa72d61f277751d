//! Envelopes as bytes on a Redis channel.
//!
//! ```text
//! version u8 = 1
//! origin  u64 (big-endian)
//! target  u8: 0 all | 1 room, then u32 length and the name | 2 connection, then u64 id
//! except  u8: 0 none | 1, then u64 id
//! kind    u8: 1 text | 2 binary
//! payload the rest
//! ```
//!
//! Every hub on one prefix must speak the same version: a hub that reads another
//! version drops the envelope and counts it, rather than guess.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use switchboard::{
    Message,
    hub::{Envelope, Target},
};

const VERSION: u8 = 1;

/// Why an envelope could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Only text and binary messages cross between hubs.
    #[error("only text and binary messages are published")]
    NotData,
    /// The bytes end before the envelope does.
    #[error("envelope truncated")]
    Truncated,
    /// A version, target or kind this hub does not know.
    #[error("unknown {0} byte {1}")]
    Unknown(&'static str, u8),
    /// A room name or a text payload that is not UTF-8.
    #[error("invalid UTF-8 in an envelope")]
    InvalidUtf8,
}

/// The envelope in wire form.
pub(crate) fn encode(envelope: &Envelope) -> Result<Bytes, CodecError> {
    let (kind, payload) = match &envelope.message {
        Message::Text(text) => (1, text.as_bytes().clone()),
        Message::Binary(data) => (2, data.clone()),
        _ => return Err(CodecError::NotData),
    };
    let mut out = BytesMut::with_capacity(32 + payload.len());
    out.put_u8(VERSION);
    out.put_u64(envelope.origin);
    match &envelope.target {
        Target::All => out.put_u8(0),
        Target::Room(room) => {
            out.put_u8(1);
            // Room names are bounded far below 4 GiB by every transport that carries
            // them; a longer one could not have been received.
            out.put_u32(u32::try_from(room.len()).unwrap_or(u32::MAX));
            out.put_slice(room.as_bytes());
        }
        Target::Connection(id) => {
            out.put_u8(2);
            out.put_u64(*id);
        }
    }
    match envelope.except {
        None => out.put_u8(0),
        Some(id) => {
            out.put_u8(1);
            out.put_u64(id);
        }
    }
    out.put_u8(kind);
    out.put_slice(&payload);
    Ok(out.freeze())
}

/// An envelope from its wire form; never panics on malformed input.
pub(crate) fn decode(mut bytes: Bytes) -> Result<Envelope, CodecError> {
    let version = take_u8(&mut bytes)?;
    if version != VERSION {
        return Err(CodecError::Unknown("version", version));
    }
    let origin = take_u64(&mut bytes)?;
    let target = match take_u8(&mut bytes)? {
        0 => Target::All,
        1 => {
            let len = usize::try_from(take_u32(&mut bytes)?).map_err(|_| CodecError::Truncated)?;
            let name = take(&mut bytes, len)?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| CodecError::InvalidUtf8)?;
            Target::Room(name)
        }
        2 => Target::Connection(take_u64(&mut bytes)?),
        other => return Err(CodecError::Unknown("target", other)),
    };
    let except = match take_u8(&mut bytes)? {
        0 => None,
        1 => Some(take_u64(&mut bytes)?),
        other => return Err(CodecError::Unknown("except", other)),
    };
    let message = match take_u8(&mut bytes)? {
        1 => Message::Text(bytes.try_into().map_err(|_| CodecError::InvalidUtf8)?),
        2 => Message::Binary(bytes),
        other => return Err(CodecError::Unknown("kind", other)),
    };
    Ok(Envelope {
        origin,
        target,
        except,
        message,
    })
}

fn take(bytes: &mut Bytes, len: usize) -> Result<Bytes, CodecError> {
    if bytes.remaining() < len {
        return Err(CodecError::Truncated);
    }
    Ok(bytes.split_to(len))
}

fn take_u8(bytes: &mut Bytes) -> Result<u8, CodecError> {
    bytes.try_get_u8().map_err(|_| CodecError::Truncated)
}

fn take_u32(bytes: &mut Bytes) -> Result<u32, CodecError> {
    bytes.try_get_u32().map_err(|_| CodecError::Truncated)
}

fn take_u64(bytes: &mut Bytes) -> Result<u64, CodecError> {
    bytes.try_get_u64().map_err(|_| CodecError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelopes() -> Vec<Envelope> {
        vec![
            Envelope {
                origin: 7,
                target: Target::All,
                except: None,
                message: Message::text("hello"),
            },
            Envelope {
                origin: 0xFF_FFFF,
                target: Target::Room("lobby/κόσμε".into()),
                except: Some(42 << 40 | 9),
                message: Message::binary(vec![0u8, 1, 2, 255]),
            },
            Envelope {
                origin: 1,
                target: Target::Connection(3 << 40 | 1),
                except: None,
                message: Message::binary(Vec::new()),
            },
        ]
    }

    #[test]
    fn every_envelope_round_trips() {
        for envelope in envelopes() {
            let wire = encode(&envelope).unwrap();
            assert_eq!(decode(wire).unwrap(), envelope);
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for envelope in envelopes() {
            let wire = encode(&envelope).unwrap();
            // The payload may end anywhere, so only cuts inside the head must fail.
            let head = wire.len() - envelope.message.len();
            for cut in 0..head {
                assert_eq!(
                    decode(wire.slice(..cut)),
                    Err(CodecError::Truncated),
                    "{cut}"
                );
            }
        }
    }

    #[test]
    fn unknown_bytes_and_bad_text_are_refused() {
        let wire = encode(&envelopes()[0]).unwrap();
        let mut other_version = wire.to_vec();
        other_version[0] = 2;
        assert_eq!(
            decode(other_version.into()),
            Err(CodecError::Unknown("version", 2))
        );
        let mut bad_text = wire.to_vec();
        let last = bad_text.len() - 1;
        bad_text[last] = 0xFF;
        assert_eq!(decode(bad_text.into()), Err(CodecError::InvalidUtf8));
        let ping = Envelope {
            message: Message::Ping(Bytes::new()),
            ..envelopes()[0].clone()
        };
        assert_eq!(encode(&ping), Err(CodecError::NotData));
    }
}
