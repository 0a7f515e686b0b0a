//! Lock helpers: a poisoned lock (a panic elsewhere while it was held) is recovered, never
//! turned into a second panic. Every structure behind these locks stays consistent between
//! statements, so the data is still valid.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}

/// The atomics of the capacity accounting; `tests/loom_capacity.rs` compiles `capacity.rs`
/// against loom's instead, to model-check every interleaving.
pub(crate) mod atomics {
    pub(crate) use std::sync::Arc;
    pub(crate) use std::sync::atomic::{AtomicUsize, Ordering};
}
