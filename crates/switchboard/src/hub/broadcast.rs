//! Broadcasts: one message to many connections, encoded once.

use super::{Connection, ConnectionId, Envelope, Hub, Target, Unsent, outgoing::Outgoing};
use std::task::{Context, Poll, Waker};
use switchboard_broker::{Position, StreamError, StreamFuture};
use switchboard_proto::Message;

/// A broadcast being addressed: `hub.to(room).except(id).send(message)`.
#[derive(Debug)]
#[must_use = "a broadcast does nothing until sent"]
pub struct Broadcast<'a> {
    hub: &'a Hub,
    target: Target,
    except: Option<ConnectionId>,
}

/// What a broadcast did on this hub, recipient by recipient. A broadcast is
/// fire-and-forget: reading the report is optional, and each recipient that did not
/// take the message has counted it too, in its
/// [`dropped_messages`](super::Connection::dropped_messages) or
/// [`refused_messages`](super::Connection::refused_messages) and the hub's
/// [`HubMetrics`](super::HubMetrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastReport {
    /// Recipients the message was queued for.
    pub queued: usize,
    /// Recipients whose buffer policy dropped it.
    pub dropped: usize,
    /// Recipients already closing (or, for an intercepted channel event, closed
    /// because their `handle_out` panicked).
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
    ///
    /// The local recipients are those of the moment of the call: a connection that joins
    /// or leaves the room while the message is being queued for the others is not
    /// waited for, and counts as it was at that moment.
    ///
    /// To a room that keeps history ([`HubConfig::history`](super::HubConfig::history)),
    /// the message goes to the engine only, which numbers it and delivers it to every
    /// hub, this one included: the report is empty (the members get it when the
    /// engine hands it back), and [`Broadcast::publish`] says whether it was
    /// published. A send the engine refuses at once ([`StreamError::Unavailable`]:
    /// its link is down) reaches no member: it is counted in
    /// [`HubMetrics::stream_lost`](super::HubMetrics::stream_lost)
    /// (`switchboard_stream_lost_total`) and warned of once per outage; one the engine
    /// answers later is not awaited, so its failure shows only in the broker's
    /// counters (`switchboard_broker_lost_total`). (With a broker that keeps no
    /// history, which answers [`StreamError::Unsupported`], such a room is a plain
    /// one.)
    pub fn send(self, message: impl Into<Message>) -> BroadcastReport {
        let message = message.into();
        if !message.is_data() {
            return BroadcastReport::default();
        }
        let hub = self.hub;
        let envelope = self.into_envelope(message);
        if let Some(history) = hub.stream_history(&envelope.target) {
            // The engine publishes whether its answer is awaited or not; one that
            // keeps no history says so at once, and the room is then a plain one.
            let mut published = hub.broker().publish_stream(envelope.clone(), history);
            let answer = published
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
            match answer {
                Poll::Ready(Err(StreamError::Unsupported)) => {}
                Poll::Ready(Err(error @ StreamError::Unavailable(_))) => {
                    if let Target::Room(room) = &envelope.target {
                        hub.stream_send_failed(room, &error);
                    }
                    return BroadcastReport::default();
                }
                // Not lost for an outage (`Unconfirmed` may even have been delivered).
                Poll::Ready(Err(_)) => return BroadcastReport::default(),
                Poll::Ready(Ok(_)) => {
                    hub.stream_send_taken();
                    return BroadcastReport::default();
                }
                // Answered later (over a network): its failure shows there.
                Poll::Pending => return BroadcastReport::default(),
            }
        }
        deliver_and_publish(hub, envelope)
    }

    /// [`Broadcast::send`] outside the room's stream, even on a room that keeps
    /// history: to the members of the moment on this hub and, through the broker, on
    /// the others (which deliver an envelope without a position as it comes). Live
    /// only and at most once, with no position: for what a stream cannot carry
    /// (channels' binary broadcasts, whose frame has no field for a position).
    #[cfg(feature = "axum")]
    pub(crate) fn send_live(self, message: Message) -> BroadcastReport {
        if !message.is_data() {
            return BroadcastReport::default();
        }
        let hub = self.hub;
        let envelope = self.into_envelope(message);
        deliver_and_publish(hub, envelope)
    }
}

impl Broadcast<'_> {
    /// The envelope of this broadcast, from this hub, without a position.
    fn into_envelope(self, message: Message) -> Envelope {
        Envelope {
            origin: self.hub.node(),
            target: self.target,
            except: self.except,
            message,
            position: None,
        }
    }
}

/// Delivers `envelope` on this hub and hands it to the broker for the others.
fn deliver_and_publish(hub: &Hub, envelope: Envelope) -> BroadcastReport {
    let report = deliver_local(hub, &envelope);
    // A send to one of this hub's connections has no recipient elsewhere.
    let local = matches!(envelope.target, Target::Connection(id) if id.node() == hub.node());
    if !local {
        hub.broker().publish(envelope);
    }
    report
}

impl Broadcast<'_> {
    /// Publishes a message to a room that keeps history
    /// ([`HubConfig::history`](super::HubConfig::history)): resolves to the position
    /// the engine gave it once numbered and kept (every member, on every hub, gets it
    /// in that order), or why it was not published ([`StreamError::Unavailable`]: the
    /// engine's link is down), or that its outcome is unknown
    /// ([`StreamError::Unconfirmed`]: sent, but the link failed before the answer; it
    /// may have been delivered). Dropping the future does not cancel the publish.
    ///
    /// [`StreamError::NoHistory`] for a room without history or a broadcast to all;
    /// [`StreamError::NotData`] for a control message.
    ///
    /// ```
    /// use switchboard::hub::{History, Hub, HubConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let hub = Hub::new(HubConfig::default().history("news", History::default()));
    /// let position = hub.to("news").publish("hello").await.unwrap();
    /// assert_eq!(position.offset, 1);
    /// assert!(hub.to("lobby").publish("hello").await.is_err());
    /// # }
    /// ```
    pub fn publish(self, message: impl Into<Message>) -> StreamFuture<Position> {
        let message = message.into();
        if !message.is_data() {
            return Box::pin(std::future::ready(Err(StreamError::NotData)));
        }
        let hub = self.hub;
        let envelope = self.into_envelope(message);
        match hub.stream_history(&envelope.target) {
            Some(history) => hub.broker().publish_stream(envelope, history),
            None => Box::pin(std::future::ready(Err(StreamError::NoHistory))),
        }
    }
}

/// Queues an envelope's message for the matching connections of `hub`. The frame is
/// encoded (and compressed without context) once, and every recipient's queue shares
/// its bytes. The registry is locked only to take the recipients' snapshot: joins,
/// leaves and registrations go on during the fan-out, which is ordered after them or
/// before them as a whole by the moment of that snapshot.
pub(crate) fn deliver_local(hub: &Hub, envelope: &Envelope) -> BroadcastReport {
    let mut report = BroadcastReport::default();
    let recipients = match &envelope.target {
        Target::All => hub.read().connections.snapshot(),
        Target::Room(room) => match hub.read().rooms.get(room.as_str()) {
            Some(members) => members.snapshot(),
            None => return report,
        },
        Target::Connection(id) => {
            if let Some(conn) = hub.connection(*id) {
                report.count(conn.enqueue(&frame(hub, envelope)));
            }
            return report;
        }
        // For the hubs themselves, not their connections (see `cluster`).
        Target::Node(_) | Target::Nodes => return report,
    };
    fan_out(hub, envelope, &recipients)
}

fn frame(hub: &Hub, envelope: &Envelope) -> Outgoing {
    let frame = Outgoing::new(envelope.message.clone());
    match hub.instruments() {
        Some(_) => frame.stamped(hub.now_micros()),
        None => frame,
    }
}

/// Queues an envelope's message for `recipients` (a snapshot of the registry), but
/// the one it leaves out.
pub(crate) fn fan_out(
    hub: &Hub,
    envelope: &Envelope,
    recipients: &[Connection],
) -> BroadcastReport {
    let frame = frame(hub, envelope);
    let mut report = BroadcastReport::default();
    for conn in recipients {
        if Some(conn.id()) != envelope.except {
            report.count(conn.enqueue(&frame));
        }
    }
    if let Some(instruments) = hub.instruments() {
        instruments.fanout(report.queued + report.dropped + report.closed);
    }
    report
}

impl BroadcastReport {
    pub(crate) fn count(&mut self, result: Result<(), Unsent>) {
        match result {
            Ok(()) => self.queued += 1,
            Err(Unsent::Dropped) => self.dropped += 1,
            Err(Unsent::Closed) => self.closed += 1,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use crate::{
        hub::{ConnectionState, Hub, HubConfig, Registration, RequestInfo},
        sync::lock,
    };
    use std::{
        sync::{Arc, Mutex, mpsc},
        task::{Wake, Waker},
        thread,
        time::Duration,
    };

    /// A bound only for a failure, which would otherwise wait for ever.
    const FAILED: Duration = Duration::from_secs(5);

    /// A connection task's waker that, woken by a fan-out, tells the test and holds the
    /// fan-out until released: any work done for one recipient during a fan-out
    /// (compression for it, once) stalls the same way.
    struct Stall {
        entered: mpsc::Sender<()>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl Wake for Stall {
        fn wake(self: Arc<Self>) {
            let _ = self.entered.send(());
            // Released by the test, after it has waited for the changes.
            let _ = lock(&self.release).recv_timeout(2 * FAILED);
        }
    }

    /// Runs `fan_out` over a hub whose three connections are in "room", stalls it at the
    /// second one, and checks that registrations, joins and leaves go on meanwhile.
    pub(in crate::hub) fn assert_registry_free_during(
        config: HubConfig,
        fan_out: impl FnOnce(&Hub) + Send + 'static,
    ) {
        let hub = Hub::new(config);
        let members: Vec<Registration> = (0..3).map(|_| admitted(&hub)).collect();
        for member in &members {
            member.conn().join("room");
        }
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let stall = Stall {
            entered: entered_tx,
            release: Mutex::new(release_rx),
        };
        members[1]
            .conn()
            .wake()
            .register(&Waker::from(Arc::new(stall)));
        let fanning_out = thread::spawn({
            let hub = hub.clone();
            move || fan_out(&hub)
        });
        entered
            .recv_timeout(FAILED)
            .expect("the fan-out reached the member");
        let (done_tx, done) = mpsc::channel();
        let changer = thread::spawn({
            let hub = hub.clone();
            move || {
                let newcomer = admitted(&hub);
                newcomer.conn().join("room");
                newcomer.conn().join("another");
                newcomer.conn().leave("room");
                drop(newcomer);
                let _ = done_tx.send(());
            }
        });
        let changed = done.recv_timeout(FAILED);
        let _ = release.send(());
        fanning_out.join().unwrap();
        changer.join().unwrap();
        assert!(
            changed.is_ok(),
            "the registry stayed locked during the fan-out"
        );
        assert_eq!(hub.room_size("room"), 3);
        assert_eq!(hub.room_size("another"), 0);
    }

    /// A connection registered in a slot of its own and opened, as an upgrade does.
    pub(in crate::hub) fn admitted(hub: &Hub) -> Registration {
        assert!(hub.admit(None).is_ok(), "a free slot");
        let registration = hub.register(RequestInfo::default(), "/");
        registration.conn().set_state(ConnectionState::Open);
        registration
    }

    // Tokio's: registering starts the hub's keepalive task.
    #[tokio::test]
    async fn the_registry_is_free_while_a_room_broadcast_fans_out() {
        assert_registry_free_during(HubConfig::default(), |hub| {
            assert_eq!(hub.to("room").send_text("hello").queued, 3);
        });
    }

    #[tokio::test]
    async fn the_registry_is_free_while_a_broadcast_to_all_fans_out() {
        assert_registry_free_during(HubConfig::default(), |hub| {
            assert_eq!(hub.broadcast("hello").queued, 3);
        });
    }
}
