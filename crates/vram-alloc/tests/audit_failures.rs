//! What the manager does when its audit trail fails: fail-closed by default (the unrecorded
//! operation is refused and undone; an unrefusable record stops the manager), or continue and
//! count. A panicking sink neither aborts nor skips a release. Every allocation is audited,
//! including one a failed seal gave back. The default in-memory sink stays bounded.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{MIB, model, names, rig, temp_path};
use vram_alloc::VramManager;
use vram_alloc::audit::{AuditError, AuditEvent, AuditRecord, AuditSink, InMemoryAuditSink};
use vram_alloc::backend::MockBackend;
use vram_seal::SealKey;
use vram_types::{AuditFailurePolicy, VramConfig, VramError};

/// A sink that fails (or panics) while `broken` is set, and records otherwise.
#[derive(Debug, Default)]
struct Flaky {
    broken: AtomicBool,
    panics: bool,
    kept: InMemoryAuditSink,
}

impl AuditSink for Flaky {
    fn record(&self, record: &AuditRecord) -> Result<(), AuditError> {
        if self.broken.load(Ordering::SeqCst) {
            if self.panics {
                panic!("sink panicked on {}", record.event.name());
            }
            return Err(AuditError::Encode("disk full (test)".into()));
        }
        self.kept.record(record)
    }
}

fn manager_with(
    sink: Arc<dyn AuditSink>,
    policy: AuditFailurePolicy,
) -> (VramManager, Arc<MockBackend>) {
    let mock = Arc::new(MockBackend::with_capacity(16 * MIB));
    let config = VramConfig {
        audit_failure_policy: policy,
        ..VramConfig::default()
    };
    let manager = VramManager::builder()
        .mock(mock.clone())
        .config(config)
        .audit_sink(sink)
        .build()
        .unwrap();
    (manager, mock)
}

#[test]
fn fail_closed_refuses_an_unrecorded_pass_and_recovers_when_the_sink_does() {
    let sink = Arc::new(Flaky::default());
    let (manager, _) = manager_with(sink.clone(), AuditFailurePolicy::FailClosed);
    let shard = manager.seal_model(&model(100, 1), 0).unwrap();
    sink.broken.store(true, Ordering::SeqCst);
    let e = manager.verify_sealed(&shard).unwrap_err();
    assert!(
        matches!(
            e,
            VramError::AuditFailed {
                event: "SealVerified",
                ..
            }
        ),
        "{e}"
    );
    let m = manager.metrics();
    assert_eq!((m.audit_failures, m.verifications_failed), (1, 1));
    assert!(
        m.prometheus_text().contains("vram_audit_failures_total 1"),
        "{}",
        m.prometheus_text()
    );
    // A refused pass stops nothing: once records can be stored, verification passes again.
    sink.broken.store(false, Ordering::SeqCst);
    manager.verify_sealed(&shard).unwrap();
    assert_eq!(
        names(&sink.kept.events()),
        ["VramSealed", "SealVerified"],
        "the refused pass left no record and no gap"
    );
}

#[test]
fn fail_closed_undoes_a_seal_it_cannot_record_and_stops_on_an_unrecorded_release() {
    let sink = Arc::new(Flaky::default());
    let (manager, mock) = manager_with(sink.clone(), AuditFailurePolicy::FailClosed);
    sink.broken.store(true, Ordering::SeqCst);
    let e = manager.seal_model(&model(MIB, 1), 0).unwrap_err();
    assert!(
        matches!(
            e,
            VramError::AuditFailed {
                event: "VramSealed",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(manager.used_vram(), 0, "the seal was undone");
    assert_eq!(mock.live_allocations(), 0);
    // Its release could not be recorded either: the manager stopped.
    sink.broken.store(false, Ordering::SeqCst);
    assert_eq!(
        manager.seal_model(&model(10, 2), 0).unwrap_err(),
        VramError::Stopped
    );
    assert!(sink.kept.events().is_empty());
}

#[test]
fn continue_counts_the_gap_and_keeps_working() {
    let sink = Arc::new(Flaky::default());
    let (manager, _) = manager_with(sink.clone(), AuditFailurePolicy::Continue);
    sink.broken.store(true, Ordering::SeqCst);
    let shard = manager.seal_model(&model(100, 1), 0).unwrap();
    manager.verify_sealed(&shard).unwrap();
    drop(shard);
    assert_eq!(manager.metrics().audit_failures, 3);
    assert_eq!(manager.used_vram(), 0);
    sink.broken.store(false, Ordering::SeqCst);
    manager.seal_model(&model(10, 2), 0).unwrap();
}

#[test]
fn a_panicking_sink_neither_aborts_nor_skips_the_release() {
    let sink = Arc::new(Flaky {
        panics: true,
        ..Flaky::default()
    });
    let (manager, mock) = manager_with(sink.clone(), AuditFailurePolicy::Continue);
    let shard = manager.seal_model(&model(MIB, 1), 0).unwrap();
    sink.broken.store(true, Ordering::SeqCst);
    manager.verify_sealed(&shard).unwrap();
    // The release's record panics inside `Drop`; the VRAM is returned all the same.
    drop(shard);
    assert_eq!(manager.used_vram(), 0);
    assert_eq!(mock.live_allocations(), 0);
    assert_eq!(manager.metrics().audit_failures, 2);
    // Fail-closed with a panicking sink: refused, undone, no abort.
    let (closed, mock) = manager_with(sink.clone(), AuditFailurePolicy::FailClosed);
    assert!(matches!(
        closed.seal_model(&model(10, 1), 0),
        Err(VramError::AuditFailed { .. })
    ));
    assert_eq!(mock.live_allocations(), 0);
}

#[test]
fn a_seal_that_fails_after_allocating_is_audited_with_its_reason() {
    let r = rig(16 * MIB);
    r.mock.fail_next_uploads(1);
    let e = r
        .manager
        .seal_from_source(
            &model(MIB, 1),
            0,
            &vram_alloc::SealOptions::new().shard_id("upload-fails"),
        )
        .unwrap_err();
    let events = r.audit.events();
    assert_eq!(names(&events), ["SealAborted"]);
    match &events[0] {
        AuditEvent::SealAborted {
            shard_id,
            gpu_device: 0,
            reserved_bytes,
            reason,
            security_failure: false,
        } => {
            assert_eq!(shard_id.as_deref(), Some("upload-fails"));
            assert!(*reserved_bytes >= MIB);
            assert_eq!(reason, &e.to_string());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.manager.used_vram(), 0);
    assert_eq!(r.mock.live_allocations(), 0);
    // A seal refused by the expected digest is a seal that failed after allocating, too.
    let wrong = vram_seal::digest(b"other", vram_types::DigestAlgorithm::default());
    r.manager
        .seal_from_source(
            &model(100, 2),
            0,
            &vram_alloc::SealOptions::new().expect_digest(wrong),
        )
        .unwrap_err();
    assert_eq!(names(&r.audit.events()), ["SealAborted", "SealAborted"]);
}

#[test]
fn a_full_log_file_fails_closed_through_the_manager() {
    let path = temp_path("fail-closed.jsonl");
    let key = SealKey::from_bytes(&[0x33; 32]).unwrap();
    let room = common::Room::default();
    let sink = Arc::new(common::sink_on_small_disk(
        &path,
        key.audit_signing_key().unwrap(),
        &room,
    ));
    let (manager, mock) = manager_with(sink.clone(), AuditFailurePolicy::FailClosed);
    let shard = manager.seal_model(&model(100, 1), 0).unwrap();
    room.set(Some(0));
    assert!(matches!(
        manager.verify_sealed(&shard),
        Err(VramError::AuditFailed { .. })
    ));
    drop(shard);
    assert_eq!(mock.live_allocations(), 0, "released although unrecorded");
    // The release could not be recorded: the manager stopped, even with room again.
    room.set(None);
    assert_eq!(
        manager.seal_model(&model(1, 1), 0).unwrap_err(),
        VramError::Stopped
    );
    drop(manager);
    drop(Arc::try_unwrap(sink).unwrap());
    // What was written still verifies: nothing torn, the close signed it.
    vram_alloc::audit::verify_audit_log(&path, &vram_alloc::audit::AuditVerifyOptions::default())
        .unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn bytes_that_reach_vram_changed_are_a_critical_abort_that_stops_the_manager() {
    // The copy path delivers other bytes than it was given: the cross-check catches it, the
    // abort is recorded as a security failure (critical), and the manager stops, because shards
    // sealed earlier without the cross-check came over the same path.
    let r = rig(16 * MIB);
    r.mock.garble_next_uploads(1);
    let e = r
        .manager
        .seal_from_source(
            &model(MIB, 7).as_slice(),
            0,
            &vram_alloc::SealOptions::new()
                .shard_id("garbled")
                .cross_check(true),
        )
        .unwrap_err();
    assert!(matches!(e, VramError::UploadMismatch { .. }), "{e:?}");
    assert!(e.is_security_critical());
    let records = r.audit.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(matches!(
        records[0].event,
        AuditEvent::SealAborted {
            security_failure: true,
            ..
        }
    ));
    assert_eq!(records[0].severity, vram_alloc::audit::Severity::Critical);
    assert!(r.manager.is_stopped());
    assert_eq!((r.manager.used_vram(), r.mock.live_allocations()), (0, 0));
    // A wrong file is no security failure: recorded as a warning, nothing stops.
    let r = rig(16 * MIB);
    let wrong = vram_alloc::SealOptions::new().expect_digest(vram_seal::digest(
        b"other",
        vram_types::DigestAlgorithm::default(),
    ));
    r.manager
        .seal_from_source(&model(MIB, 7).as_slice(), 0, &wrong)
        .unwrap_err();
    assert_eq!(
        r.audit.records()[0].severity,
        vram_alloc::audit::Severity::Warning
    );
    assert!(!r.manager.is_stopped());
}
