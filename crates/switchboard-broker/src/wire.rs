//! Envelopes as bytes between hubs: one format for every engine that carries them
//! (Redis channels, NATS subjects), so that none invents its own.
//!
//! ```text
//! version u8 = 3: an envelope | 4: a stream's message, positioned
//! origin  u64: the publishing hub's node id
//! then, in version 3, the publisher's stamp (see [`Stamp`]):
//! epoch   u32: the publisher's counter for this channel
//! seq     u64: the envelope's number on this channel in that epoch, from 1
//! or, in version 4, the message's position in its room's stream, written by the
//! engine that numbers the stream (Redis's publish script):
//! offset  u64
//! epoch   u64: the stream's epoch
//! then, in both:
//! target  u8: 0 all | 1 room, then u32 length and the name | 2 connection, then an id
//!         | 3 node, then a u64 node id | 4 nodes
//! except  u8: 0 none | 1, then an id
//! kind    u8: 1 text | 2 binary
//! payload the rest
//!
//! id      u64 node id, then u64 sequence
//! ```
//!
//! Integers are big-endian. Every hub on one prefix must speak the same version: a hub
//! that reads another version drops the envelope and counts it, rather than guess.
//! Version 1 carried 64-bit connection ids with a 24-bit node in their high bits;
//! version 2 had no epoch and sequence.
//!
//! A stream's message carries no stamp: its offset, one more per message of the stream
//! whoever published it, shows a gap better than a publisher's numbering does, and the
//! receiving hub fills it from the stream rather than only count it. Taking no number
//! from the publisher's counter also keeps that counter gapless on a channel where
//! both kinds go.

use crate::{ConnectionId, Envelope, Epoch, NodeId, Position, Stamp, Target};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use switchboard_proto::Message;

const VERSION: u8 = 3;

/// A stream's message: a position where version 3 has a stamp.
const VERSION_POSITIONED: u8 = 4;

/// Where the epoch starts: after the version and the origin.
const STAMP_AT: usize = 1 + 8;

/// Why an envelope could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
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

/// The envelope in wire form, with a zero stamp for [`stamp`] to fill in: encoding
/// happens before the publisher takes its lock, stamping under it.
pub fn encode(envelope: &Envelope) -> Result<BytesMut, WireError> {
    let (kind, payload) = kind_and_payload(&envelope.message)?;
    let mut out = BytesMut::with_capacity(48 + payload.len());
    out.put_u8(VERSION);
    out.put_u64(envelope.origin.to_bits());
    out.put_u32(0);
    out.put_u64(0);
    put_route(&mut out, envelope, kind);
    out.put_slice(&payload);
    Ok(out)
}

/// A stream's message in the parts an engine puts its position between
/// (`head`, position, `route`, `payload`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamParts {
    /// The version and the origin.
    pub head: Bytes,
    /// The target, the except and the kind.
    pub route: Bytes,
    /// Whether the message is text (else binary): what a store that keeps the
    /// payload alone must note beside it.
    pub text: bool,
    /// The message's payload.
    pub payload: Bytes,
}

/// A stream's message, to be positioned by the engine (version 4).
pub fn encode_stream(envelope: &Envelope) -> Result<StreamParts, WireError> {
    let (kind, payload) = kind_and_payload(&envelope.message)?;
    let mut head = BytesMut::with_capacity(9);
    head.put_u8(VERSION_POSITIONED);
    head.put_u64(envelope.origin.to_bits());
    let mut route = BytesMut::with_capacity(32);
    put_route(&mut route, envelope, kind);
    Ok(StreamParts {
        head: head.freeze(),
        route: route.freeze(),
        text: kind == 1,
        payload,
    })
}

impl StreamParts {
    /// The envelope of this message at `position`, as a store that numbers it sends it
    /// (`head`, offset, epoch, `route`, payload; Redis's publish script writes the
    /// same): for an engine that must send it again where the store did not.
    pub fn at(&self, position: Position) -> Bytes {
        let mut wire =
            BytesMut::with_capacity(self.head.len() + 16 + self.route.len() + self.payload.len());
        wire.put_slice(&self.head);
        wire.put_u64(position.offset);
        wire.put_u64(position.epoch.as_u64());
        wire.put_slice(&self.route);
        wire.put_slice(&self.payload);
        wire.freeze()
    }
}

/// The kind byte and the payload; only text and binary cross between hubs.
fn kind_and_payload(message: &Message) -> Result<(u8, Bytes), WireError> {
    match message {
        Message::Text(text) => Ok((1, text.as_bytes().clone())),
        Message::Binary(data) => Ok((2, data.clone())),
        _ => Err(WireError::NotData),
    }
}

/// The target, the except and the kind: what follows the stamp or the position.
fn put_route(out: &mut BytesMut, envelope: &Envelope, kind: u8) {
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
            put_id(out, *id);
        }
        Target::Node(node) => {
            out.put_u8(3);
            out.put_u64(node.to_bits());
        }
        Target::Nodes => out.put_u8(4),
    }
    match envelope.except {
        None => out.put_u8(0),
        Some(id) => {
            out.put_u8(1);
            put_id(out, id);
        }
    }
    out.put_u8(kind);
}

/// Writes `stamp` into an envelope [`encode`] made; [`WireError::Truncated`] for bytes
/// too short to hold one, which [`encode`] never makes.
pub fn stamp(wire: &mut BytesMut, stamp: Stamp) -> Result<(), WireError> {
    let mut at = wire
        .get_mut(STAMP_AT..STAMP_AT + 12)
        .ok_or(WireError::Truncated)?;
    at.put_u32(stamp.epoch);
    at.put_u64(stamp.sequence);
    Ok(())
}

/// An envelope from its wire form, with its publisher's stamp (version 3) or with its
/// position (version 4, `None` stamp); never panics on malformed input.
pub fn decode(mut bytes: Bytes) -> Result<(Envelope, Option<Stamp>), WireError> {
    let version = take_u8(&mut bytes)?;
    if version != VERSION && version != VERSION_POSITIONED {
        return Err(WireError::Unknown("version", version));
    }
    let origin = NodeId::from_bits(take_u64(&mut bytes)?);
    let (stamp, position) = if version == VERSION {
        let stamp = Stamp {
            epoch: take_u32(&mut bytes)?,
            sequence: take_u64(&mut bytes)?,
        };
        (Some(stamp), None)
    } else {
        let offset = take_u64(&mut bytes)?;
        let epoch = Epoch::from_u64(take_u64(&mut bytes)?);
        (None, Some(Position::new(offset, epoch)))
    };
    decode_route(origin, position, bytes).map(|envelope| (envelope, stamp))
}

/// A stream's message as a store kept it, without its position (what [`encode_stored`]
/// made), at `position`: for an engine whose store numbers the messages itself
/// (JetStream's sequence) and hands the number beside them. Never panics on malformed
/// input.
pub fn decode_stored(mut bytes: Bytes, position: Position) -> Result<Envelope, WireError> {
    let version = take_u8(&mut bytes)?;
    if version != VERSION_POSITIONED {
        return Err(WireError::Unknown("version", version));
    }
    let origin = NodeId::from_bits(take_u64(&mut bytes)?);
    decode_route(origin, Some(position), bytes)
}

/// A stream's message without its position: the version 4 layout with the position
/// left out (`head`, `route`, `payload` of [`encode_stream`]), for a store that numbers
/// it itself; [`decode_stored`] reads it back.
pub fn encode_stored(envelope: &Envelope) -> Result<Bytes, WireError> {
    let parts = encode_stream(envelope)?;
    let mut out =
        BytesMut::with_capacity(parts.head.len() + parts.route.len() + parts.payload.len());
    out.put_slice(&parts.head);
    out.put_slice(&parts.route);
    out.put_slice(&parts.payload);
    Ok(out.freeze())
}

/// What follows the stamp or the position: the target, the except and the message.
fn decode_route(
    origin: NodeId,
    position: Option<Position>,
    mut bytes: Bytes,
) -> Result<Envelope, WireError> {
    let target = match take_u8(&mut bytes)? {
        0 if position.is_none() => Target::All,
        1 => {
            let len = usize::try_from(take_u32(&mut bytes)?).map_err(|_| WireError::Truncated)?;
            let name = take(&mut bytes, len)?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| WireError::InvalidUtf8)?;
            Target::Room(name)
        }
        2 if position.is_none() => Target::Connection(take_id(&mut bytes)?),
        3 if position.is_none() => Target::Node(NodeId::from_bits(take_u64(&mut bytes)?)),
        4 if position.is_none() => Target::Nodes,
        // Only a room has a stream.
        other => return Err(WireError::Unknown("target", other)),
    };
    let except = match take_u8(&mut bytes)? {
        0 => None,
        1 => Some(take_id(&mut bytes)?),
        other => return Err(WireError::Unknown("except", other)),
    };
    let message = match take_u8(&mut bytes)? {
        1 => Message::Text(bytes.try_into().map_err(|_| WireError::InvalidUtf8)?),
        2 => Message::Binary(bytes),
        other => return Err(WireError::Unknown("kind", other)),
    };
    Ok(Envelope {
        origin,
        target,
        except,
        message,
        position,
    })
}

fn put_id(out: &mut BytesMut, id: ConnectionId) {
    out.put_u64(id.node().to_bits());
    out.put_u64(id.sequence());
}

fn take_id(bytes: &mut Bytes) -> Result<ConnectionId, WireError> {
    let node = NodeId::from_bits(take_u64(bytes)?);
    Ok(ConnectionId::new(node, take_u64(bytes)?))
}

fn take(bytes: &mut Bytes, len: usize) -> Result<Bytes, WireError> {
    if bytes.remaining() < len {
        return Err(WireError::Truncated);
    }
    Ok(bytes.split_to(len))
}

fn take_u8(bytes: &mut Bytes) -> Result<u8, WireError> {
    bytes.try_get_u8().map_err(|_| WireError::Truncated)
}

fn take_u32(bytes: &mut Bytes) -> Result<u32, WireError> {
    bytes.try_get_u32().map_err(|_| WireError::Truncated)
}

fn take_u64(bytes: &mut Bytes) -> Result<u64, WireError> {
    bytes.try_get_u64().map_err(|_| WireError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_message_at_a_position_decodes_with_it() {
        let position = Position::new(42, Epoch::from_u64(7));
        // Only a room's messages have a stream.
        let rooms = envelopes()
            .into_iter()
            .filter(|envelope| matches!(envelope.target, Target::Room(_)));
        let mut checked = 0;
        for envelope in rooms {
            let Ok(parts) = encode_stream(&envelope) else {
                continue;
            };
            checked += 1;
            let (decoded, stamp) = decode(parts.at(position)).unwrap();
            assert_eq!(stamp, None);
            assert_eq!(decoded.position, Some(position));
            assert_eq!(
                (decoded.target, decoded.except),
                (envelope.target, envelope.except)
            );
        }
        assert!(checked > 0, "a room's text or binary message among them");
    }

    fn id(node: u64, sequence: u64) -> ConnectionId {
        ConnectionId::new(NodeId::from_bits(node), sequence)
    }

    fn envelopes() -> Vec<Envelope> {
        vec![
            Envelope {
                origin: NodeId::from_bits(7),
                target: Target::All,
                except: None,
                message: Message::text("hello"),
                position: None,
            },
            Envelope {
                origin: NodeId::from_bits(u64::MAX),
                target: Target::Room("lobby/κόσμε".into()),
                except: Some(id(0x9f3c_0a1b_2c3d_4e5f, 9)),
                message: Message::binary(vec![0u8, 1, 2, 255]),
                position: None,
            },
            Envelope {
                origin: NodeId::from_bits(1),
                target: Target::Connection(id(3, u64::MAX)),
                except: None,
                message: Message::binary(Vec::new()),
                position: None,
            },
            Envelope {
                origin: NodeId::from_bits(2),
                target: Target::Node(NodeId::from_bits(u64::MAX - 1)),
                except: None,
                message: Message::text("{}"),
                position: None,
            },
            Envelope {
                origin: NodeId::from_bits(2),
                target: Target::Nodes,
                except: None,
                message: Message::text("{}"),
                position: None,
            },
        ]
    }

    /// The envelope in wire form, stamped.
    fn wire(envelope: &Envelope, with: Stamp) -> Bytes {
        let mut wire = encode(envelope).unwrap();
        stamp(&mut wire, with).unwrap();
        wire.freeze()
    }

    const STAMP: Stamp = Stamp {
        epoch: 0x0a0b_0c0d,
        sequence: 0x2a,
    };

    #[test]
    fn every_envelope_round_trips() {
        for envelope in envelopes() {
            let with = Stamp {
                epoch: u32::MAX,
                sequence: u64::MAX - 3,
            };
            assert_eq!(
                decode(wire(&envelope, with)).unwrap(),
                (envelope, Some(with))
            );
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let envelope = Envelope {
            origin: NodeId::from_bits(0x0102_0304_0506_0708),
            target: Target::Connection(id(0x1111_1111_1111_1111, 0x2a)),
            except: Some(id(0x2222_2222_2222_2222, 1)),
            message: Message::text("hi"),
            position: None,
        };
        let mut expected = vec![3, 1, 2, 3, 4, 5, 6, 7, 8];
        expected.extend([0x0a, 0x0b, 0x0c, 0x0d]);
        expected.extend(0x2a_u64.to_be_bytes());
        expected.push(2);
        expected.extend([0x11; 8]);
        expected.extend(0x2a_u64.to_be_bytes());
        expected.push(1);
        expected.extend([0x22; 8]);
        expected.extend(1_u64.to_be_bytes());
        expected.extend([1, b'h', b'i']);
        assert_eq!(wire(&envelope, STAMP), expected);
    }

    #[test]
    fn a_stamp_on_bytes_too_short_is_an_error_not_a_panic() {
        let full = encode(&envelopes()[0]).unwrap();
        for cut in 0..STAMP_AT + 12 {
            let mut short = BytesMut::from(&full[..cut]);
            assert_eq!(stamp(&mut short, STAMP), Err(WireError::Truncated), "{cut}");
        }
    }

    #[test]
    fn unknown_bytes_and_bad_text_are_refused() {
        let wire = wire(&envelopes()[0], STAMP);
        let mut other_version = wire.to_vec();
        other_version[0] = 2;
        assert_eq!(
            decode(other_version.into()),
            Err(WireError::Unknown("version", 2))
        );
        let mut bad_text = wire.to_vec();
        let last = bad_text.len() - 1;
        bad_text[last] = 0xFF;
        assert_eq!(decode(bad_text.into()), Err(WireError::InvalidUtf8));
        let ping = Envelope {
            message: Message::Ping(Bytes::new()),
            ..envelopes()[0].clone()
        };
        assert_eq!(encode(&ping).err(), Some(WireError::NotData));
    }

    /// A stream's message as the publish script makes it: the parts around the position.
    fn positioned(envelope: &Envelope, at: Position) -> Bytes {
        let parts = encode_stream(envelope).unwrap();
        let mut wire = BytesMut::new();
        wire.put_slice(&parts.head);
        wire.put_u64(at.offset);
        wire.put_u64(at.epoch.as_u64());
        wire.put_slice(&parts.route);
        wire.put_slice(&parts.payload);
        wire.freeze()
    }

    fn stream_envelopes() -> Vec<Envelope> {
        envelopes()
            .into_iter()
            .filter(|envelope| matches!(envelope.target, Target::Room(_)))
            .chain([Envelope {
                origin: NodeId::from_bits(5),
                target: Target::Room(String::new()),
                except: None,
                message: Message::text(""),
                position: None,
            }])
            .collect()
    }

    #[test]
    fn a_positioned_envelope_round_trips_without_a_stamp() {
        let at = Position::new(u64::MAX - 1, Epoch::from_u64(0x0123_4567_89ab_cdef));
        for envelope in stream_envelopes() {
            let expected = Envelope {
                position: Some(at),
                ..envelope.clone()
            };
            assert_eq!(decode(positioned(&envelope, at)).unwrap(), (expected, None));
        }
    }

    #[test]
    fn the_positioned_layout_is_the_documented_one() {
        let envelope = Envelope {
            origin: NodeId::from_bits(0x0102_0304_0506_0708),
            target: Target::Room("r".into()),
            except: None,
            message: Message::binary(vec![9u8]),
            position: None,
        };
        let at = Position::new(0x2a, Epoch::from_u64(0x1111_1111_1111_1111));
        let mut expected = vec![4, 1, 2, 3, 4, 5, 6, 7, 8];
        expected.extend(0x2a_u64.to_be_bytes());
        expected.extend([0x11; 8]);
        expected.extend([1, 0, 0, 0, 1, b'r', 0, 2, 9]);
        assert_eq!(positioned(&envelope, at), expected);
        let parts = encode_stream(&envelope).unwrap();
        assert_eq!((parts.text, &parts.payload[..]), (false, &[9u8][..]));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let at = Position::new(7, Epoch::from_u64(3));
        let stamped = envelopes().into_iter().map(|e| (wire(&e, STAMP), e));
        let positioned = stream_envelopes()
            .into_iter()
            .map(|e| (positioned(&e, at), e));
        for (wire, envelope) in stamped.chain(positioned) {
            // The payload may end anywhere, so only cuts inside the head must fail.
            let head = wire.len() - envelope.message.len();
            for cut in 0..head {
                assert_eq!(
                    decode(wire.slice(..cut)),
                    Err(WireError::Truncated),
                    "{cut}"
                );
            }
        }
    }

    #[test]
    fn a_position_on_anything_but_a_room_is_refused() {
        for envelope in envelopes() {
            if matches!(envelope.target, Target::Room(_)) {
                continue;
            }
            let wire = positioned(&envelope, Position::new(1, Epoch::from_u64(1)));
            assert!(
                matches!(decode(wire), Err(WireError::Unknown("target", _))),
                "{envelope:?}"
            );
        }
    }

    #[test]
    fn a_stored_message_reads_back_at_the_position_given() {
        let at = Position::new(9, Epoch::from_u64(0xfeed));
        for envelope in stream_envelopes() {
            let stored = encode_stored(&envelope).unwrap();
            let expected = Envelope {
                position: Some(at),
                ..envelope.clone()
            };
            assert_eq!(decode_stored(stored.clone(), at), Ok(expected));
            let head = stored.len() - envelope.message.len();
            for cut in 0..head {
                assert_eq!(
                    decode_stored(stored.slice(..cut), at),
                    Err(WireError::Truncated)
                );
            }
        }
        let stamped = wire(&envelopes()[1], STAMP);
        assert_eq!(
            decode_stored(stamped, at),
            Err(WireError::Unknown("version", 3))
        );
    }
}
