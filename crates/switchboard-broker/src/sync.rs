//! Locks that outlive a panic.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// The lock, even if a panic poisoned it: for state whose every critical section is
/// one update that a panic cannot leave half done (a map's insert, a counter's step),
/// so that one panicking task does not take every other user of the lock with it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
