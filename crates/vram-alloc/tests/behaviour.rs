//! The manager's behaviour, one source for both backends: every test here runs on the mock
//! backend (`<name>::mock`, in CI) and on a real GPU (`<name>::cuda`, `#[ignore]`d: on a GPU
//! machine `VRAM_TEST_GPU=1 cargo test --release -p vram-alloc --features test-utils --test
//! behaviour -- --include-ignored --test-threads=1`). Tests that need the mock's fault
//! injection are in `manager_behaviour.rs`; GPU-only facts (pointer attributes, free memory) in
//! `gpu.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "tests"
)]

#[macro_use]
mod common;

use std::time::Duration;

use common::{MIB, On, keep_going, model, names, rig_on};
use vram_alloc::audit::AuditEvent;
use vram_types::{SealFailure, SealSignature, SealedShard, VramConfig, VramError};

on_both_backends! {
    seal_then_verify_succeeds_and_is_audited
    model_at_exact_capacity_fits
    insufficient_vram_names_needed_and_available_and_leaks_nothing
    rejected_input_changes_nothing_and_is_not_audited
    oversized_model_is_rejected_before_allocation
    the_same_id_or_the_same_bytes_cannot_be_sealed_twice_while_live
    corruption_in_vram_fails_verification_with_a_critical_event_and_stops_the_worker
    the_worker_can_be_configured_to_keep_going_after_a_failure
    changed_fields_and_forged_seals_fail_the_seal_check
    vram_is_released_once_when_the_last_clone_drops
    expired_seals_fail_when_a_limit_is_set
    seals_without_time_are_deterministic
    foreign_shards_with_made_up_devices_do_not_grow_the_metrics
    tensor_parallel_shards_with_identical_bytes_on_one_device_do_not_collide
}

fn seal_then_verify_succeeds_and_is_audited(on: On) {
    let r = rig_on(on, 10 * MIB, VramConfig::default());
    let bytes = model(MIB, 1);
    let shard = r.manager.seal_model_with_id("llama-0", &bytes, 0).unwrap();
    assert_eq!(shard.shard_id, "llama-0");
    assert_eq!((shard.gpu_device, shard.vram_bytes), (0, MIB));
    assert_eq!(
        shard.digest,
        vram_seal::digest(&bytes, shard.digest_algorithm()).to_hex()
    );
    assert_eq!(shard.digest.len(), 64);
    r.manager.verify_sealed(&shard).unwrap();
    assert_eq!(names(&r.audit.events()), ["VramSealed", "SealVerified"]);
    assert_eq!(
        r.manager.used_vram(),
        2 * MIB,
        "1 MiB takes one 2 MiB granule"
    );
    assert_eq!(r.manager.available_vram_on(0).unwrap(), 8 * MIB);
}

fn model_at_exact_capacity_fits(on: On) {
    let r = rig_on(on, 10 * MIB, VramConfig::default());
    let shard = r.manager.seal_model(&model(10 * MIB, 2), 0).unwrap();
    assert_eq!(r.manager.available_vram_on(0).unwrap(), 0);
    r.manager.verify_sealed(&shard).unwrap();
}

fn insufficient_vram_names_needed_and_available_and_leaks_nothing(on: On) {
    let r = rig_on(on, 10 * MIB, VramConfig::default());
    let _held = r.manager.seal_model(&model(5 * MIB, 3), 0).unwrap(); // takes 6 MiB
    let err = r.manager.seal_model(&model(5 * MIB, 4), 0).unwrap_err();
    assert_eq!(
        err,
        VramError::InsufficientVram {
            needed: 6 * MIB,
            available: 4 * MIB,
            device: 0
        }
    );
    assert!(err.is_retriable());
    assert_eq!(r.manager.used_vram(), 6 * MIB);
    r.assert_live_allocations(1);
    assert_eq!(
        names(&r.audit.events()),
        ["VramSealed", "VramAllocationFailed"]
    );
}

fn rejected_input_changes_nothing_and_is_not_audited(on: On) {
    let r = rig_on(on, 10 * MIB, VramConfig::default());
    let cases: Vec<(Option<&str>, Vec<u8>, u32)> = vec![
        (Some("../etc/passwd"), model(10, 0), 0),
        (Some("a\0b"), model(10, 0), 0),
        (Some(""), model(10, 0), 0),
        (Some("ok"), vec![], 0),
        (Some("ok"), model(10, 0), 99),
    ];
    for (id, bytes, device) in cases {
        let err = match id {
            Some(id) => r.manager.seal_model_with_id(id, &bytes, device),
            None => r.manager.seal_model(&bytes, device),
        }
        .unwrap_err();
        assert!(
            matches!(
                err,
                VramError::InvalidInput { .. } | VramError::InvalidDevice { .. }
            ),
            "{err:?}"
        );
    }
    assert!(matches!(
        r.manager.seal_model_shard(&model(10, 0), 0, 2, 2),
        Err(VramError::InvalidInput { .. })
    ));
    assert!(r.audit.events().is_empty());
    assert_eq!(r.manager.used_vram(), 0);
    r.assert_live_allocations(0);
    assert_eq!(
        r.manager.metrics().seals_failed,
        0,
        "rejected input never reached a device"
    );
}

fn oversized_model_is_rejected_before_allocation(on: On) {
    let r = rig_on(
        on,
        64 * MIB,
        VramConfig {
            max_model_bytes: MIB as u64,
            ..VramConfig::default()
        },
    );
    let err = r.manager.seal_model(&model(MIB + 1, 0), 0).unwrap_err();
    assert!(err.to_string().contains("maximum"), "{err}");
    r.assert_live_allocations(0);
}

fn the_same_id_or_the_same_bytes_cannot_be_sealed_twice_while_live(on: On) {
    let r = rig_on(on, 16 * MIB, VramConfig::default());
    let bytes = model(MIB, 5);
    let a = r.manager.seal_model_with_id("s", &bytes, 0).unwrap();
    assert_eq!(
        r.manager
            .seal_model_with_id("s", &model(10, 1), 0)
            .unwrap_err(),
        VramError::AlreadySealed {
            shard_id: "s".into()
        }
    );
    let b = r.manager.seal_model(&bytes, 0).unwrap();
    assert!(b.shard_id.starts_with("shard-") && b.shard_id.ends_with("-gpu0"));
    assert!(matches!(
        r.manager.seal_model(&bytes, 0),
        Err(VramError::AlreadySealed { .. })
    ));
    r.assert_live_allocations(2);
    drop(a);
    r.manager.seal_model_with_id("s", &model(10, 1), 0).unwrap();
}

fn corruption_in_vram_fails_verification_with_a_critical_event_and_stops_the_worker(on: On) {
    let r = rig_on(on, 10 * MIB, VramConfig::default());
    let shard = r
        .manager
        .seal_model_with_id("m", &model(3 * MIB, 7), 0)
        .unwrap();
    r.manager
        .corrupt_byte_for_tests(&shard, 2 * MIB + 17)
        .unwrap();
    let err = r.manager.verify_sealed(&shard).unwrap_err();
    let VramError::IntegrityViolation {
        expected, actual, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(expected, &shard.digest);
    assert_ne!(actual, expected);
    let last = r.audit.records().pop().unwrap();
    assert_eq!(last.event.name(), "SealVerificationFailed");
    assert_eq!(last.severity, vram_alloc::audit::Severity::Critical);
    assert!(r.manager.is_stopped());
    assert_eq!(
        r.manager.seal_model(&model(10, 0), 0).unwrap_err(),
        VramError::Stopped
    );
    assert_eq!(
        r.manager.verify_sealed(&shard).unwrap_err(),
        VramError::Stopped
    );
    // Queries and drops still work.
    assert_eq!(r.manager.used_vram(), 4 * MIB);
    drop(shard);
    assert_eq!(r.manager.used_vram(), 0);
}

fn the_worker_can_be_configured_to_keep_going_after_a_failure(on: On) {
    let r = rig_on(on, 10 * MIB, keep_going());
    let shard = r.manager.seal_model(&model(100, 1), 0).unwrap();
    r.manager.corrupt_byte_for_tests(&shard, 0).unwrap();
    assert!(r.manager.verify_sealed(&shard).is_err());
    assert!(!r.manager.is_stopped());
    r.manager.corrupt_byte_for_tests(&shard, 0).unwrap(); // flip back
    r.manager.verify_sealed(&shard).unwrap();
}

fn changed_fields_and_forged_seals_fail_the_seal_check(on: On) {
    let r = rig_on(on, 10 * MIB, keep_going());
    let shard = r.manager.seal_model(&model(1000, 1), 0).unwrap();
    let expect_seal_failure = |s: &SealedShard, reason: SealFailure| {
        let e = r.manager.verify_sealed(s).unwrap_err();
        assert_eq!(
            e,
            VramError::SealVerificationFailed {
                shard_id: s.shard_id.clone(),
                reason
            }
        );
        e
    };
    // An edited field is named (the manager knows what it sealed)...
    let mut s = shard.clone();
    s.digest = "0".repeat(64);
    let e = expect_seal_failure(&s, SealFailure::FieldChanged("digest"));
    assert!(e.to_string().contains("digest_mismatch"), "{e}");
    let mut s = shard.clone();
    s.vram_bytes -= 1;
    expect_seal_failure(&s, SealFailure::FieldChanged("vram_bytes"));
    let mut s = shard.clone();
    s.sealed_at += Duration::from_nanos(1);
    expect_seal_failure(&s, SealFailure::FieldChanged("sealed_at"));
    // ...and a replaced seal over unchanged fields fails the MAC.
    let mut s = shard.clone();
    s.set_seal_signature_for_tests(SealSignature::from_bytes([0; 32]));
    expect_seal_failure(&s, SealFailure::SignatureMismatch);
    let audit = r.audit.events();
    assert!(
        audit.iter().any(|e| matches!(e, AuditEvent::SealVerificationFailed { reason, .. } if reason.contains("digest_mismatch"))),
        "the audit reason names the field"
    );
    r.manager.verify_sealed(&shard).unwrap();
}

fn vram_is_released_once_when_the_last_clone_drops(on: On) {
    let r = rig_on(on, 10 * MIB, VramConfig::default());
    let shard = r.manager.seal_model(&model(MIB, 1), 0).unwrap();
    let copies: Vec<_> = (0..5).map(|_| shard.clone()).collect();
    drop(shard);
    assert_eq!(r.manager.used_vram(), 2 * MIB);
    r.manager.verify_sealed(&copies[3]).unwrap();
    drop(copies);
    assert_eq!(r.manager.used_vram(), 0);
    r.assert_live_allocations(0);
    let deallocs: Vec<_> = r
        .audit
        .events()
        .into_iter()
        .filter(|e| matches!(e, AuditEvent::VramDeallocated { .. }))
        .collect();
    assert_eq!(deallocs.len(), 1);
    assert!(
        matches!(&deallocs[0], AuditEvent::VramDeallocated { freed_bytes, error: None, .. } if *freed_bytes == 2 * MIB)
    );
}

fn expired_seals_fail_when_a_limit_is_set(on: On) {
    let r = rig_on(
        on,
        10 * MIB,
        VramConfig {
            max_seal_age: Some(Duration::from_millis(400)),
            ..VramConfig::default()
        },
    );
    let shard = r.manager.seal_model(&model(100, 1), 0).unwrap();
    r.manager.verify_sealed(&shard).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(matches!(
        r.manager.verify_sealed(&shard),
        Err(VramError::SealExpired {
            max_age_secs: 0,
            ..
        })
    ));
    assert!(!r.manager.is_stopped(), "expiry is not tampering");
}

fn seals_without_time_are_deterministic(on: On) {
    let config = VramConfig {
        include_seal_time: false,
        ..VramConfig::default()
    };
    let a = rig_on(on, 10 * MIB, config.clone());
    let b = rig_on(on, 10 * MIB, config);
    let _filler = b.manager.seal_model(&model(3 * MIB, 9), 0).unwrap(); // other allocation order
    let sa = a.manager.seal_model(&model(MIB, 1), 0).unwrap();
    let sb = b.manager.seal_model(&model(MIB, 1), 0).unwrap();
    assert_eq!(sa.sealed_fields(), sb.sealed_fields());
    assert_eq!(
        sa.seal_signature(),
        sb.seal_signature(),
        "same key, same fields, same seal"
    );
}

fn foreign_shards_with_made_up_devices_do_not_grow_the_metrics(on: On) {
    let r = rig_on(on, 10 * MIB, VramConfig::default());
    let shard = r.manager.seal_model(&model(10, 3), 0).unwrap();
    for device in [7u32, 999, u32::MAX] {
        let mut foreign = shard.clone();
        foreign.gpu_device = device;
        assert!(r.manager.verify_sealed(&foreign).is_err());
    }
    let metrics = r.manager.metrics();
    let text = metrics.prometheus_text();
    assert!(
        !text.contains("gpu_device=\"7\"") && !text.contains("gpu_device=\"999\""),
        "{text}"
    );
    assert!(text.contains("gpu_device=\"0\""));
}

fn tensor_parallel_shards_with_identical_bytes_on_one_device_do_not_collide(on: On) {
    let r = rig_on(on, 16 * MIB, VramConfig::default());
    let bytes = model(MIB, 4);
    let a = r.manager.seal_model_shard(&bytes, 0, 0, 2).unwrap();
    let b = r.manager.seal_model_shard(&bytes, 0, 1, 2).unwrap();
    assert_ne!(a.shard_id, b.shard_id);
    assert!(a.shard_id.ends_with("-gpu0-tp0of2") && b.shard_id.ends_with("-gpu0-tp1of2"));
    assert_eq!((a.shard_index, b.shard_index), (Some(0), Some(1)));
    r.manager.verify_sealed(&a).unwrap();
    r.manager.verify_sealed(&b).unwrap();
    // The same index again is the same shard: refused while the first is live.
    assert!(matches!(
        r.manager.seal_model_shard(&bytes, 0, 1, 2),
        Err(VramError::AlreadySealed { .. })
    ));
}
