//! Connection and node ids: unique across the hubs of a deployment, written as short
//! URL-safe strings, and serialized as strings.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::{fmt, str::FromStr};

/// A hub's name among the hubs of a deployment: 64 random bits, drawn when the hub
/// starts.
///
/// Hubs tell their own broadcasts from the others' by this id, so two hubs with the
/// same one would drop each other's messages: with 64 random bits, a deployment of a
/// thousand hubs has about one chance in 4·10¹³ of drawing one id twice.
///
/// Written as 16 lowercase hex digits, e.g. `9f3c0a1b2c3d4e5f`; this form is stable
/// and [`FromStr`] reads it back. It serializes as that string.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(u64);

/// A connection's id, unique across the hubs of a deployment: the [`NodeId`] of the
/// hub that holds the connection, and the connection's number on that hub (counted
/// from 1).
///
/// Written as the node id, a `-` and the number in lowercase hex without leading
/// zeros, e.g. `9f3c0a1b2c3d4e5f-2a`: short, URL-safe, and stable, so that it can be
/// logged, put in a URL and parsed back ([`FromStr`] accepts exactly this form).
///
/// # Precision: why a string
///
/// An id holds 128 bits, and even one of its 64-bit halves is beyond 2⁵³, the
/// largest integer a JavaScript number holds exactly: a browser that read an id as a
/// JSON number would get a different id, silently. So an id serializes as its string,
/// with serde, and deserializes only from one:
///
/// ```
/// use switchboard_broker::{ConnectionId, NodeId};
///
/// let id = ConnectionId::new(NodeId::from_bits(0x9f3c_0a1b_2c3d_4e5f), 42);
/// assert_eq!(id.to_string(), "9f3c0a1b2c3d4e5f-2a");
/// assert_eq!(serde_json::to_string(&id)?, r#""9f3c0a1b2c3d4e5f-2a""#);
/// assert_eq!(serde_json::from_str::<ConnectionId>(r#""9f3c0a1b2c3d4e5f-2a""#)?, id);
/// assert_eq!("9f3c0a1b2c3d4e5f-2a".parse::<ConnectionId>()?, id);
///
/// // A JavaScript number is an f64: a 64-bit value beyond 2⁵³ comes out changed.
/// let node = 0x9f3c_0a1b_2c3d_4e5f_u64;
/// assert_ne!(node as f64 as u64, node);
/// // So numbers are refused.
/// assert!(serde_json::from_str::<ConnectionId>("11474151305823600223").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// In JavaScript, treat ids as opaque strings: compare them, use them as map keys,
/// send them back as they came.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId {
    node: NodeId,
    sequence: u64,
}

/// A string that is not an id in its written form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: expected {form}")]
pub struct ParseIdError {
    what: &'static str,
    form: &'static str,
}

const NODE_DIGITS: usize = 16;

impl NodeId {
    /// A fresh node id: 64 random bits.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The node id with these bits. For brokers reading ids off their wire (see
    /// [`NodeId::to_bits`]) and for tests; a hub draws its own with
    /// [`NodeId::random`].
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The 64 bits, for brokers writing ids to their wire.
    pub const fn to_bits(self) -> u64 {
        self.0
    }

    fn parse(s: &str) -> Option<Self> {
        if s.len() != NODE_DIGITS || !s.bytes().all(is_hex_digit) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Self)
    }
}

impl ConnectionId {
    /// The id of connection number `sequence` of the hub `node`. Hubs number their
    /// own connections; brokers rebuild ids they read off their wire.
    pub const fn new(node: NodeId, sequence: u64) -> Self {
        Self { node, sequence }
    }

    /// The node id of the hub that holds this connection: where a message for it goes.
    pub const fn node(self) -> NodeId {
        self.node
    }

    /// The connection's number on its hub.
    pub const fn sequence(self) -> u64 {
        self.sequence
    }

    fn parse(s: &str) -> Option<Self> {
        let (node, sequence) = s.split_once('-')?;
        // One written form per id: no leading zeros, no sign, lowercase only.
        let canonical = !sequence.is_empty()
            && sequence.len() <= 16
            && sequence.bytes().all(is_hex_digit)
            && (sequence == "0" || !sequence.starts_with('0'));
        if !canonical {
            return None;
        }
        let sequence = u64::from_str_radix(sequence, 16).ok()?;
        Some(Self::new(NodeId::parse(node)?, sequence))
    }
}

fn is_hex_digit(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'f')
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:x}", self.node, self.sequence)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({self})")
    }
}

impl FromStr for NodeId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or(ParseIdError {
            what: "node id",
            form: "16 lowercase hex digits",
        })
    }
}

impl FromStr for ConnectionId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or(ParseIdError {
            what: "connection id",
            form: "a node id, '-', and 1 to 16 lowercase hex digits without leading zeros",
        })
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Serialize for ConnectionId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromString::<Self>::new("a node id string"))
    }
}

impl<'de> Deserialize<'de> for ConnectionId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromString::<Self>::new("a connection id string"))
    }
}

/// Deserializes an id from its string, and from nothing else (see the precision note
/// on [`ConnectionId`]).
struct FromString<T> {
    expecting: &'static str,
    id: std::marker::PhantomData<T>,
}

impl<T> FromString<T> {
    fn new(expecting: &'static str) -> Self {
        Self {
            expecting,
            id: std::marker::PhantomData,
        }
    }
}

impl<T: FromStr> de::Visitor<'_> for FromString<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        s.parse()
            .map_err(|_| E::invalid_value(de::Unexpected::Str(s), &self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: NodeId = NodeId::from_bits(0x9f3c_0a1b_2c3d_4e5f);

    #[test]
    fn ids_round_trip_through_their_written_form() {
        let nodes = [NodeId::from_bits(0), NODE, NodeId::from_bits(u64::MAX)];
        for node in nodes {
            assert_eq!(node.to_string().parse::<NodeId>(), Ok(node));
            for sequence in [0, 1, 0x2a, 0x10, u64::MAX] {
                let id = ConnectionId::new(node, sequence);
                assert_eq!(id.to_string().parse::<ConnectionId>(), Ok(id), "{id}");
            }
        }
        assert_eq!(NodeId::from_bits(1).to_string(), "0000000000000001");
        assert_eq!(
            ConnectionId::new(NodeId::from_bits(u64::MAX), u64::MAX).to_string(),
            "ffffffffffffffff-ffffffffffffffff"
        );
        assert_eq!(ConnectionId::new(NODE, 1).node(), NODE);
        assert_eq!(ConnectionId::new(NODE, 7).sequence(), 7);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "-",
            "9f3c0a1b2c3d4e5f",
            "9f3c0a1b2c3d4e5f-",
            "-2a",
            "9f3c0a1b2c3d4e5-2a",
            "09f3c0a1b2c3d4e5f-2a",
            "9F3C0A1B2C3D4E5F-2a",
            "9f3c0a1b2c3d4e5f-2A",
            "9f3c0a1b2c3d4e5f-02a",
            "9f3c0a1b2c3d4e5f-+2a",
            "+f3c0a1b2c3d4e5f-2a",
            "9f3c0a1b2c3d4e5f-2a-1",
            "9f3c0a1b2c3d4e5f-10000000000000000",
            "9f3c0a1b2c3d4e5g-2a",
            " 9f3c0a1b2c3d4e5f-2a",
            "9f3c0a1b2c3d4e5f-2a ",
            "12345",
            "9f3c0a1b2c3dκ-2a",
        ] {
            assert!(bad.parse::<ConnectionId>().is_err(), "{bad:?} accepted");
        }
        for bad in [
            "",
            "9f3c0a1b2c3d4e5",
            "9F3C0A1B2C3D4E5F",
            "+f3c0a1b2c3d4e5f",
        ] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad:?} accepted");
        }
        let error = "x".parse::<ConnectionId>().unwrap_err().to_string();
        assert!(
            error.starts_with("invalid connection id: expected"),
            "{error}"
        );
    }

    #[test]
    fn ids_serialize_as_json_strings_and_deserialize_only_from_them() {
        let id = ConnectionId::new(NODE, 0x2a);
        let json = serde_json::to_value(id).unwrap();
        assert_eq!(json, serde_json::json!("9f3c0a1b2c3d4e5f-2a"));
        assert_eq!(serde_json::from_value::<ConnectionId>(json).unwrap(), id);
        assert_eq!(
            serde_json::to_value(NODE).unwrap(),
            serde_json::json!("9f3c0a1b2c3d4e5f")
        );
        for refused in ["11474151305823600223", "[1, 2]", r#""nope""#, "null"] {
            assert!(
                serde_json::from_str::<ConnectionId>(refused).is_err(),
                "{refused} accepted"
            );
        }
        assert_eq!(
            serde_json::from_str::<NodeId>(r#""9f3c0a1b2c3d4e5f""#).unwrap(),
            NODE
        );
    }

    #[test]
    fn node_ids_use_all_64_bits() {
        // Each bit is set in some of 64 random ids and clear in some: a scheme that
        // fixes any bit (24 random bits, say) fails this; chance alone, once in 2⁵⁷.
        let nodes: Vec<u64> = (0..64).map(|_| NodeId::random().to_bits()).collect();
        let any = nodes.iter().fold(0, |acc, n| acc | n);
        let all = nodes.iter().fold(u64::MAX, |acc, n| acc & n);
        assert_eq!((any, all), (u64::MAX, 0));
    }
}
