//! The pipeline from the kernel to the subscribers: the ring-buffer reader and the inotify
//! watcher feed one [`hub::Hub`], which attributes events to containers, tallies them, counts
//! what went missing, and fans them out to bounded subscriber queues. Sinks (`crate::sinks`)
//! are subscribers like any other.
pub(crate) mod fanout;
pub(crate) mod fault;
pub(crate) mod hub;
pub(crate) mod inotify;
pub(crate) mod ring;
pub(crate) mod task;

use std::sync::{Mutex, MutexGuard};

/// Locks shared pipeline state. A panic elsewhere while holding the lock leaves plain data
/// behind (counters, names, queues): keep going rather than poison the guard.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
