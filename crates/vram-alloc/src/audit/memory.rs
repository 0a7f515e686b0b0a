//! [`InMemoryAuditSink`]: the latest records in a bounded ring, for tests and for a worker
//! with no audit file (the records also go to `tracing`). A worker verifying before every
//! request must not grow without bound, so the oldest records make room for new ones and are
//! counted.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::{AuditError, AuditEvent, AuditRecord, AuditSink};
use crate::sync::lock;

/// Records kept by [`InMemoryAuditSink::new`].
pub const DEFAULT_IN_MEMORY_RECORDS: usize = 4096;

#[derive(Debug)]
struct Ring {
    records: VecDeque<AuditRecord>,
    capacity: usize,
    evicted: u64,
}

/// Keeps the latest records in memory, at most a fixed number.
#[derive(Debug)]
pub struct InMemoryAuditSink {
    ring: Mutex<Ring>,
}

impl Default for InMemoryAuditSink {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_IN_MEMORY_RECORDS)
    }
}

impl InMemoryAuditSink {
    /// A sink keeping the latest [`DEFAULT_IN_MEMORY_RECORDS`] records.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink keeping the latest `capacity` records (0 keeps none: events go to `tracing`
    /// only).
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                records: VecDeque::new(),
                capacity,
                evicted: 0,
            }),
        }
    }

    /// A copy of the records kept, oldest first.
    #[must_use]
    pub fn records(&self) -> Vec<AuditRecord> {
        lock(&self.ring).records.iter().cloned().collect()
    }

    /// The events kept, without the envelope.
    #[must_use]
    pub fn events(&self) -> Vec<AuditEvent> {
        lock(&self.ring)
            .records
            .iter()
            .map(|r| r.event.clone())
            .collect()
    }

    /// Records pushed out of the window (or never kept, with capacity 0) so far.
    #[must_use]
    pub fn evicted(&self) -> u64 {
        lock(&self.ring).evicted
    }

    /// The most records kept.
    #[must_use]
    pub fn capacity(&self) -> usize {
        lock(&self.ring).capacity
    }

    /// Forgets every record kept.
    pub fn clear(&self) {
        lock(&self.ring).records.clear();
    }
}

impl AuditSink for InMemoryAuditSink {
    fn record(&self, record: &AuditRecord) -> Result<(), AuditError> {
        let mut ring = lock(&self.ring);
        if ring.capacity == 0 {
            ring.evicted = ring.evicted.saturating_add(1);
            return Ok(());
        }
        while ring.records.len() >= ring.capacity {
            ring.records.pop_front();
            ring.evicted = ring.evicted.saturating_add(1);
        }
        ring.records.push_back(record.clone());
        Ok(())
    }
}
