//! The in-memory audit trail (the builder's default) keeps a bounded window: its memory
//! stays flat under a million events. Alone in its test binary, so that the process's resident
//! memory is this test's.
#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    missing_docs,
    reason = "tests"
)]

mod common;

use common::{MIB, rig};
use vram_alloc::audit::{AuditEvent, AuditRecord, AuditSink, InMemoryAuditSink};

#[test]
fn the_default_in_memory_trail_stays_bounded_under_a_million_events() {
    let sink = InMemoryAuditSink::with_capacity(1000);
    let record = AuditRecord {
        timestamp_ms: 0,
        worker_id: "w".into(),
        correlation_id: "c".into(),
        severity: vram_alloc::audit::Severity::Info,
        event: AuditEvent::SealVerified {
            shard_id: "shard".into(),
            gpu_device: 0,
        },
    };
    let rss = || {
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|pages| pages * 4096)
    };
    for _ in 0..10_000 {
        sink.record(&record).unwrap();
    }
    let before = rss();
    for _ in 0..1_000_000 {
        sink.record(&record).unwrap();
    }
    assert_eq!(sink.records().len(), 1000);
    assert_eq!(sink.evicted(), 1_010_000 - 1000);
    if let (Some(before), Some(after)) = (before, rss()) {
        // Unbounded, a million records of ~100 bytes each would add ~100 MB.
        assert!(
            after.saturating_sub(before) < 8 * MIB as u64,
            "resident memory grew {} bytes",
            after - before
        );
    }
    // The builder's default trail is bounded the same way.
    let r = rig(MIB);
    assert!(r.audit.capacity() > 0);
    let none = InMemoryAuditSink::with_capacity(0);
    none.record(&record).unwrap();
    assert!(none.records().is_empty());
    assert_eq!(none.evicted(), 1);
}
