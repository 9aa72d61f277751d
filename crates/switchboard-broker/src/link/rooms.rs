//! The room subscriptions a hub asks its link for.

use crate::sync::lock;
use std::{collections::HashMap, sync::Mutex};
use tokio::sync::{Notify, futures::Notified};

/// The room subscriptions the hub asked for and the link has not applied yet: the
/// latest wish per room (`true`: subscribe). A map rather than a queue, so that it is
/// bounded by the hub's rooms however fast members come and go, and nothing in it is
/// ever dropped: a hub whose subscription was dropped would stop hearing its room.
#[derive(Debug, Default)]
pub struct RoomChanges {
    wanted: Mutex<HashMap<String, bool>>,
    changed: Notify,
}

impl RoomChanges {
    /// Notes that the hub wants (`true`) or no longer wants `room`, and wakes the link.
    pub fn want(&self, room: &str, subscribed: bool) {
        lock(&self.wanted).insert(room.to_owned(), subscribed);
        self.changed.notify_one();
    }

    /// The wishes noted since the last take.
    pub fn take(&self) -> HashMap<String, bool> {
        std::mem::take(&mut *lock(&self.wanted))
    }

    /// Resolves once a wish was noted (at once if one was noted since the last wake).
    pub fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_latest_wish_per_room_wins_and_wakes_the_link() {
        let changes = RoomChanges::default();
        changes.want("a", true);
        changes.want("b", true);
        changes.want("a", false);
        // The wish made before anyone waited still wakes the link.
        changes.changed().await;
        let taken = changes.take();
        assert_eq!(
            taken,
            HashMap::from([("a".into(), false), ("b".into(), true)])
        );
        assert!(changes.take().is_empty());
    }
}
