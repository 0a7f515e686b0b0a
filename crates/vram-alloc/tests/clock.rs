//! Seal ages and clock jumps, with an injected clock: the age is measured on the monotonic
//! clock, so a wall clock stepped back (before the seal, before 1970) or years ahead neither
//! panics nor expires a seal early nor keeps an old one alive; records carry the wall time as
//! it was.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use vram_alloc::audit::InMemoryAuditSink;
use vram_alloc::backend::MockBackend;
use vram_alloc::{ManualClock, VramManager};
use vram_seal::SealKey;
use vram_types::{VramConfig, VramError};

const DAY: Duration = Duration::from_secs(86_400);

fn manager_at(
    clock: &Arc<ManualClock>,
    max_age: Duration,
) -> (VramManager, Arc<InMemoryAuditSink>) {
    let audit = Arc::new(InMemoryAuditSink::new());
    let manager = VramManager::builder()
        .mock(Arc::new(MockBackend::with_capacity(64 << 20)))
        .config(VramConfig {
            max_seal_age: Some(max_age),
            ..VramConfig::default()
        })
        .seal_key(SealKey::from_bytes(&[0x5e; 32]).unwrap())
        .audit_sink(audit.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    (manager, audit)
}

#[test]
fn wall_clock_steps_neither_expire_nor_extend_a_seal() {
    let start = UNIX_EPOCH + 20_000 * DAY; // 2024-10-03
    let clock = Arc::new(ManualClock::new(start));
    let (manager, audit) = manager_at(&clock, Duration::from_secs(60));
    let shard = manager.seal_model_with_id("s", b"weights", 0).unwrap();
    assert_eq!(shard.sealed_at, start, "the seal records the wall time");

    // Back before the seal, back before 1970, and ten years ahead: the seal is as old as it is.
    for wall in [start - DAY, UNIX_EPOCH - DAY, start + 3650 * DAY] {
        clock.set_wall(wall);
        manager.verify_sealed(&shard).unwrap();
    }
    // Records carry the wall time as it was.
    let last = audit.records().pop().unwrap();
    assert_eq!(
        last.timestamp_ms,
        (start + 3650 * DAY)
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    );

    // Real time passing expires it, whatever the wall clock says.
    clock.set_wall(start);
    clock.advance(Duration::from_secs(60));
    manager.verify_sealed(&shard).unwrap();
    clock.set_wall(start - DAY);
    clock.advance(Duration::from_secs(1));
    match manager.verify_sealed(&shard) {
        Err(VramError::SealExpired {
            age_secs,
            max_age_secs,
            ..
        }) => {
            assert_eq!((age_secs, max_age_secs), (61, 60));
        }
        other => panic!("expected SealExpired, got {other:?}"),
    }
}

#[test]
fn a_wall_clock_before_1970_refuses_the_seal_clearly_and_holds_nothing() {
    let clock = Arc::new(ManualClock::new(UNIX_EPOCH - 365 * DAY));
    let (manager, audit) = manager_at(&clock, Duration::from_secs(3600));
    let refused = manager
        .seal_model_with_id("early", b"weights", 0)
        .unwrap_err();
    assert!(
        matches!(
            refused,
            VramError::InvalidInput {
                field: "system clock",
                ..
            }
        ),
        "{refused}"
    );
    // The refusal is recorded, stamped with the earliest time a record can hold (1970).
    let records = audit.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].event.name(), "SealAborted");
    assert_eq!(records[0].timestamp_ms, 0);
    let json = serde_json::to_value(&records[0]).unwrap();
    assert_eq!(json["time"], "1970-01-01T00:00:00.000Z");
    assert!(
        json["reason"].as_str().unwrap().contains("set the clock"),
        "{json}"
    );
    assert!(
        !manager.is_stopped(),
        "a wrong clock is not a security failure"
    );
    assert_eq!(
        manager.used_vram(),
        0,
        "nothing is held after the early seal is dropped"
    );
}
