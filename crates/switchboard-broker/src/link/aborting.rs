//! Tasks that go with their owner.

use tokio::task::JoinHandle;

/// A task aborted when its handle is dropped: a connection's or a subscription's
/// reader goes with the link that holds it. The handle is public, to await the task.
#[derive(Debug)]
pub struct Aborting<T>(pub JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
