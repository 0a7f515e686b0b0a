//! Per-device capacity accounting. Capacity is reserved atomically before any copy, so
//! concurrent seals can never over-commit; a [`Reservation`] returns its bytes when dropped, so
//! every failure path gives them back.

// Through `crate::sync::atomics`, so that the loom model (`tests/loom_capacity.rs`) compiles
// this file against loom's atomics.
use crate::sync::atomics::{Arc, AtomicUsize, Ordering};

/// Capacity of one device, in bytes rounded to the allocation granularity.
#[derive(Debug)]
pub(crate) struct DeviceCapacity {
    total: usize,
    used: AtomicUsize,
}

impl DeviceCapacity {
    pub(crate) fn new(total: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            used: AtomicUsize::new(0),
        })
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub(crate) fn available(&self) -> usize {
        self.total.saturating_sub(self.used())
    }

    /// Reserves `bytes`, or returns the bytes available when they do not fit. (An associated
    /// function, not a method: loom's `Arc` cannot be a receiver.)
    pub(crate) fn try_reserve(this: &Arc<Self>, bytes: usize) -> Result<Reservation, usize> {
        let mut used = this.used.load(Ordering::Acquire);
        loop {
            let fits = used.checked_add(bytes).filter(|after| *after <= this.total);
            let Some(after) = fits else {
                return Err(this.total.saturating_sub(used));
            };
            match this
                .used
                .compare_exchange_weak(used, after, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(Reservation {
                        capacity: Arc::clone(this),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }
}

/// Bytes reserved on a device; returned when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    capacity: Arc<DeviceCapacity>,
    bytes: usize,
}

impl Reservation {
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Moves `bytes` of this reservation into a new one (a plan reserves a device's whole
    /// share at once, then hands each shard its part); `None` when fewer are held. The device's
    /// count does not change.
    pub(crate) fn split_off(&mut self, bytes: usize) -> Option<Reservation> {
        self.bytes = self.bytes.checked_sub(bytes)?;
        Some(Reservation {
            capacity: Arc::clone(&self.capacity),
            bytes,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Never underflows: only a reservation that added `bytes` subtracts them.
        let _ = self
            .capacity
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(self.bytes))
            });
    }
}
