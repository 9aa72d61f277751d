//! Broadcasts: one message to many connections, encoded once.

use super::{ConnectionId, Envelope, Hub, SendError, Target, outgoing::Outgoing};
use switchboard_proto::Message;

/// A broadcast being addressed: `hub.to(room).except(id).send(message)`.
#[derive(Debug)]
#[must_use = "a broadcast does nothing until sent"]
pub struct Broadcast<'a> {
    hub: &'a Hub,
    target: Target,
    except: Option<ConnectionId>,
}

/// What a broadcast did on this hub.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastReport {
    /// Recipients the message was queued for.
    pub queued: usize,
    /// Recipients whose buffer policy dropped it.
    pub dropped: usize,
    /// Recipients already closing.
    pub closed: usize,
}

impl<'a> Broadcast<'a> {
    pub(crate) fn new(hub: &'a Hub, target: Target) -> Self {
        Self {
            hub,
            target,
            except: None,
        }
    }

    /// Leaves out one connection (typically the sender).
    pub fn except(mut self, id: ConnectionId) -> Self {
        self.except = Some(id);
        self
    }

    /// Sends a text message.
    pub fn send_text(self, text: impl Into<switchboard_proto::Utf8Bytes>) -> BroadcastReport {
        self.send(Message::Text(text.into()))
    }

    /// Sends a binary message.
    pub fn send_binary(self, data: impl Into<bytes::Bytes>) -> BroadcastReport {
        self.send(Message::Binary(data.into()))
    }

    /// Sends a message to the local recipients and hands it to the broker for the
    /// others. Control messages are not broadcast: the report is empty.
    pub fn send(self, message: impl Into<Message>) -> BroadcastReport {
        let message = message.into();
        if !message.is_data() {
            return BroadcastReport::default();
        }
        let envelope = Envelope {
            origin: self.hub.node(),
            target: self.target,
            except: self.except,
            message,
        };
        let report = deliver_local(self.hub, &envelope);
        if !envelope.is_local_to(self.hub.node()) {
            self.hub.broker().publish(envelope);
        }
        report
    }
}

/// Queues an envelope's message for the matching connections of `hub`. The frame is
/// encoded (and compressed without context) once, and every recipient's queue shares
/// its bytes.
pub(crate) fn deliver_local(hub: &Hub, envelope: &Envelope) -> BroadcastReport {
    let frame = Outgoing::new(envelope.message.clone());
    let mut report = BroadcastReport::default();
    let registry = hub.read();
    let except = envelope.except;
    match &envelope.target {
        Target::All => {
            for (id, conn) in &registry.connections {
                if Some(*id) != except {
                    report.count(conn.enqueue(&frame));
                }
            }
        }
        Target::Room(room) => {
            for (id, conn) in registry.rooms.get(room.as_str()).into_iter().flatten() {
                if Some(*id) != except {
                    report.count(conn.enqueue(&frame));
                }
            }
        }
        Target::Connection(id) => {
            if let Some(conn) = registry.connections.get(id) {
                report.count(conn.enqueue(&frame));
            }
        }
    }
    report
}

impl BroadcastReport {
    pub(crate) fn count(&mut self, result: Result<(), SendError>) {
        match result {
            Ok(()) => self.queued += 1,
            Err(SendError::Dropped) => self.dropped += 1,
            Err(_) => self.closed += 1,
        }
    }
}
