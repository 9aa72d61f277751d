//! The backplane between switchboard hubs, and nothing of the server stack: what a
//! broker crate depends on.
//!
//! A broker moves [`Envelope`]s between hubs (other processes or machines), so that
//! room broadcasts, broadcasts to all and sends to a [`ConnectionId`] reach
//! connections held by other hubs; each hub delivers what arrives in its [`Inbox`].
//! The [`Broker`] trait is small so that it maps onto any pub/sub system: Redis pub/sub
//! channels per room and per node, NATS subjects, or [`MemoryNetwork`] inside one
//! process.
//!
//! `switchboard` re-exports every item here from `switchboard::hub`; applications use
//! those paths, broker crates this crate.
//!
//! ```
//! use switchboard_broker::{Broker, Envelope, Inbox, MemoryNetwork, NodeId, Target};
//! use switchboard_proto::Message;
//!
//! let network = MemoryNetwork::new();
//! let (a, b) = (network.broker(), network.broker());
//! let (a_node, b_node) = (NodeId::random(), NodeId::random());
//! a.start(Inbox::new(a_node, |_| true));
//! b.start(Inbox::new(b_node, |envelope| {
//!     assert_eq!(envelope.message, Message::text("hello"));
//!     true
//! }));
//! b.subscribe("lobby");
//! a.publish(Envelope {
//!     origin: a_node,
//!     target: Target::Room("lobby".into()),
//!     except: None,
//!     message: Message::text("hello"),
//!     position: None,
//! });
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod backoff;
mod broker;
mod id;
#[cfg(feature = "link")]
pub mod link;
mod memory;
mod sequence;
mod stream;
mod sync;
pub mod wire;

pub use backoff::Backoff;
pub use broker::{Broker, BrokerMetrics, Envelope, Inbox, Target};
pub use id::{ConnectionId, NodeId, ParseIdError};
pub use memory::{DEFAULT_MAX_STREAMS, MemoryBroker, MemoryNetwork};
pub use sequence::{
    DEFAULT_MAX_CHANNELS, GapDetector, PUBLISHER_IDLE, RECEIVER_IDLE, Sequencer, Stamp,
};
pub use stream::{
    Epoch, History, ParseEpochError, Position, StreamEntry, StreamError, StreamFuture, StreamRead,
};
pub use sync::lock;
