//! Locks that shrug off poisoning.
//!
//! A mutex is poisoned when a holder panics, and the panics this crate expects come
//! from application callbacks (a hub handler, a channel), which run outside every lock
//! held here. Each critical section is a few field updates that leave the data
//! consistent at every step, so a panic cannot leave it half-changed: the lock is
//! taken as if it were not poisoned, rather than one panic taking the hub down.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, poisoned or not.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-locks `lock`, poisoned or not.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write-locks `lock`, poisoned or not.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
