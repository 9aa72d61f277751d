//! Arrivals on their way to the hub.

use crate::{
    Envelope, Inbox,
    link::{Counter, Counters},
};
use tokio::sync::mpsc::Receiver;

/// Hands arrived envelopes to the hub, off the tasks that talk to the server (so
/// that a slow hub holds up the arrivals' queue, not the link), counting each as
/// received, until the hub is gone.
pub async fn deliver(mut arrived: Receiver<Envelope>, inbox: Inbox, counters: Counters) {
    while let Some(envelope) = arrived.recv().await {
        counters.count(Counter::Received);
        if !inbox.deliver(&envelope) {
            return;
        }
    }
}

/// An envelope on its way to the delivery queue, whose number the receiver has
/// already seen: dropped with it (the link dropped its reader), it counts as missed,
/// since no gap would. Forget it once the envelope is queued.
#[derive(Debug)]
pub struct Undelivered<'a>(&'a Counters);

impl<'a> Undelivered<'a> {
    /// An envelope counted in `counters` as missed unless this is forgotten.
    pub fn new(counters: &'a Counters) -> Self {
        Self(counters)
    }
}

impl Drop for Undelivered<'_> {
    fn drop(&mut self) {
        self.0.count(Counter::Missed);
    }
}
