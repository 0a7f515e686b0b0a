//! Per-device capacity accounting. Capacity is reserved atomically before any copy, so
//! concurrent seals can never over-commit; a [`Reservation`] returns its bytes when dropped, so
//! every failure path gives them back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

    /// Reserves `bytes`, or returns the bytes available when they do not fit.
    pub(crate) fn try_reserve(self: &Arc<Self>, bytes: usize) -> Result<Reservation, usize> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let fits = used.checked_add(bytes).filter(|after| *after <= self.total);
            let Some(after) = fits else {
                return Err(self.total.saturating_sub(used));
            };
            match self
                .used
                .compare_exchange_weak(used, after, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(Reservation {
                        capacity: Arc::clone(self),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_up_to_exact_capacity_and_release() {
        let cap = DeviceCapacity::new(10);
        let a = cap.try_reserve(6).unwrap();
        assert_eq!(cap.try_reserve(5).unwrap_err(), 4);
        let b = cap.try_reserve(4).unwrap();
        assert_eq!(cap.available(), 0);
        drop(a);
        assert_eq!(cap.used(), 4);
        drop(b);
        assert_eq!(cap.used(), 0);
        assert_eq!(cap.try_reserve(usize::MAX).unwrap_err(), 10);
    }

    #[test]
    fn concurrent_reservations_never_over_commit() {
        let cap = DeviceCapacity::new(1000);
        let held: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..100)
                            .filter_map(|_| cap.try_reserve(3).ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(held.len(), 333);
        assert_eq!(cap.used(), 999);
        drop(held);
        assert_eq!(cap.used(), 0);
    }
}
