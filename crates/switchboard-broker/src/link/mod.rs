//! What every networked engine's link shares (feature `link`): the counters it keeps
//! and serves ([`BrokerStats`], written through [`Counters`]), the bounded queue of
//! publishes that numbers each envelope for its receivers ([`Outbox`]), the room
//! subscriptions the hub asks for ([`RoomChanges`]), and the task that hands arrivals
//! to the hub ([`deliver`]). An engine (Redis, NATS) adds only what talks to its
//! server, so that every engine sheds, loses and counts the same way.

mod aborting;
mod deliver;
mod outbox;
mod rooms;
mod stats;

pub use aborting::Aborting;
pub use deliver::{Undelivered, deliver};
pub use outbox::{AwaitsPosition, Outbox, Publish};
pub use rooms::RoomChanges;
pub use stats::{BrokerStats, Counter, Counters};

/// The default bound of an engine's queue of publishes waiting for its link: room for
/// a burst while the server answers a round trip, and a bound on what a stalled link
/// holds (this many envelopes, each at most the hub's message size).
pub const DEFAULT_MAX_PENDING_PUBLISHES: usize = 1024;

/// The default bound of an engine's queue of arrivals waiting for the hub: room for a
/// burst while the hub fans the previous envelopes out, and a bound on what a slow hub
/// holds (this many envelopes).
pub const DEFAULT_MAX_PENDING_DELIVERIES: usize = 1024;
