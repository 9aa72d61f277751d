//! Broadcasts of intercepted events (Phoenix `intercept`): instead of the hub's shared
//! fan-out, each subscriber's channel is asked, in [`Channel::handle_out`], whether and
//! what to deliver.
//!
//! It is kept apart from the fast path (`Endpoint::broadcast` hands every other event
//! to the hub as one shared frame) because it costs a call per subscriber and runs on
//! the broadcaster's task.
//!
//! [`Channel::handle_out`]: super::Channel::handle_out

use super::{Out, Payload, protocol, state::ConnState};
use crate::{
    CloseCode, Message,
    hub::{BroadcastReport, ConnectionId, Hub, Outgoing},
};
use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
};

/// Delivers a broadcast of an intercepted event to the subscribers of `room` on this
/// hub, asking each subscriber's channel whether and what to deliver.
pub(crate) fn deliver_intercepted(
    hub: &Hub,
    except: Option<ConnectionId>,
    room: &str,
    topic: &str,
    event: &str,
    payload: &Payload,
    message: Message,
) -> BroadcastReport {
    let frame = Outgoing::new(message);
    let mut report = BroadcastReport::default();
    for conn in hub.room_members(room) {
        if Some(conn.id()) == except {
            continue;
        }
        let joined = conn
            .internal::<Arc<ConnState>>()
            .and_then(|state| state.get(topic));
        let out = match &joined {
            Some(joined) if joined.channel.intercepts(event) => {
                let (channel, socket) = (&joined.channel, &joined.socket);
                match catch_unwind(AssertUnwindSafe(|| {
                    channel.handle_out(event, payload, socket)
                })) {
                    Ok(out) => out,
                    // The broadcaster goes on with the other subscribers; the socket
                    // this message was for would miss it, so it is closed as a hub
                    // connection whose callback panicked is (phoenix.js reconnects
                    // and rejoins), not left to miss it silently.
                    Err(_) => {
                        tracing::error!(
                            parent: conn.span(),
                            topic,
                            event,
                            "handle_out panicked: closing the socket with 1011"
                        );
                        conn.close_for(CloseCode::INTERNAL_ERROR, "handle_out panicked");
                        report.closed += 1;
                        continue;
                    }
                }
            }
            _ => Out::Deliver,
        };
        let result = match out {
            Out::Deliver => conn.enqueue(&frame),
            Out::Replace(payload) => {
                let join_ref = joined.as_ref().and_then(|j| j.socket.join_ref());
                match protocol::encode_push(join_ref, topic, event, &payload) {
                    Ok(message) => conn.enqueue(&Outgoing::new(message)),
                    Err(error) => {
                        tracing::warn!(%error, topic, event, "handle_out payload could not be encoded");
                        continue;
                    }
                }
            }
            Out::Drop => continue,
        };
        report.count(result);
    }
    report
}
