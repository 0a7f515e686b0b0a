//! VramManager on the mock backend: the seal and verify paths, every failure path leaving
//! nothing behind, release exactly once, policy checks per allocation, and metrics.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::time::Duration;

use common::{MIB, model, names, rig, rig_with};
use vram_alloc::audit::AuditEvent;
use vram_alloc::backend::MockBackend;
use vram_types::{
    AllocationFacts, DeviceFacts, MemoryType, SealFailure, SealSignature, SealedShard, VramConfig,
    VramError,
};

#[test]
fn seal_then_verify_succeeds_and_is_audited() {
    let r = rig(10 * MIB);
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
    assert_eq!(r.manager.available_vram(), 8 * MIB);
}

#[test]
fn model_at_exact_capacity_fits() {
    let r = rig(10 * MIB);
    let shard = r.manager.seal_model(&model(10 * MIB, 2), 0).unwrap();
    assert_eq!(r.manager.available_vram(), 0);
    r.manager.verify_sealed(&shard).unwrap();
}

#[test]
fn insufficient_vram_names_needed_and_available_and_leaks_nothing() {
    let r = rig(10 * MIB);
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
    assert_eq!(r.mock.live_allocations(), 1);
    assert_eq!(
        names(&r.audit.events()),
        ["VramSealed", "VramAllocationFailed"]
    );
}

#[test]
fn rejected_input_changes_nothing_and_is_not_audited() {
    let r = rig(10 * MIB);
    let cases: Vec<(Option<&str>, Vec<u8>, u32)> = vec![
        (Some("../etc/passwd"), model(10, 0), 0),
        (Some("a\0b"), model(10, 0), 0),
        (Some(""), model(10, 0), 0),
        (Some("ok"), vec![], 0),
        (Some("ok"), model(10, 0), 1),
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
    assert_eq!(r.mock.live_allocations(), 0);
    assert_eq!(
        r.manager.metrics().seals_failed,
        0,
        "rejected input never reached a device"
    );
}

#[test]
fn oversized_model_is_rejected_before_allocation() {
    let r = rig_with(
        MockBackend::with_capacity(64 * MIB),
        VramConfig {
            max_model_bytes: MIB as u64,
            ..VramConfig::default()
        },
    );
    let err = r.manager.seal_model(&model(MIB + 1, 0), 0).unwrap_err();
    assert!(err.to_string().contains("maximum"), "{err}");
    assert_eq!(r.mock.live_allocations(), 0);
}

#[test]
fn the_same_id_or_the_same_bytes_cannot_be_sealed_twice_while_live() {
    let r = rig(16 * MIB);
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
    assert_eq!(
        r.mock.live_allocations(),
        2,
        "the refused duplicate was freed"
    );
    drop(a);
    r.manager.seal_model_with_id("s", &model(10, 1), 0).unwrap();
}

#[test]
fn a_fault_at_any_step_leaves_no_allocation_and_no_reservation() {
    for step in ["allocate", "upload", "digest"] {
        let r = rig(10 * MIB);
        match step {
            "allocate" => r.mock.fail_next_allocations(1),
            "upload" => r.mock.fail_next_uploads(1),
            _ => r.mock.fail_next_reads(1),
        }
        let err = r
            .manager
            .seal_model_with_id("x", &model(10, 0), 0)
            .unwrap_err();
        assert!(err.to_string().contains("injected fault"), "{step}: {err}");
        assert_eq!(r.manager.used_vram(), 0, "{step}");
        assert_eq!(r.mock.live_allocations(), 0, "{step}");
        assert_eq!(r.manager.metrics().seals_failed, 1, "{step}");
        // The id is free again, and the manager still works.
        let shard = r.manager.seal_model_with_id("x", &model(10, 0), 0).unwrap();
        r.manager.verify_sealed(&shard).unwrap();
    }
}

#[test]
fn a_failed_read_during_verification_is_an_error_not_a_pass() {
    let r = rig(10 * MIB);
    let shard = r.manager.seal_model(&model(10, 0), 0).unwrap();
    r.mock.fail_next_reads(1);
    assert!(matches!(
        r.manager.verify_sealed(&shard),
        Err(VramError::CudaOperationFailed { .. })
    ));
    assert_eq!(
        r.audit.events().last().unwrap().name(),
        "SealVerificationFailed"
    );
    r.manager.verify_sealed(&shard).unwrap();
}

#[test]
fn corruption_in_vram_fails_verification_with_a_critical_event_and_stops_the_worker() {
    let r = rig(10 * MIB);
    let shard = r
        .manager
        .seal_model_with_id("m", &model(3 * MIB, 7), 0)
        .unwrap();
    r.mock.corrupt_byte(&shard, 2 * MIB + 17).unwrap();
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

#[test]
fn the_worker_can_be_configured_to_keep_going_after_a_failure() {
    let r = rig_with(
        MockBackend::with_capacity(10 * MIB),
        VramConfig {
            stop_on_verification_failure: false,
            ..VramConfig::default()
        },
    );
    let shard = r.manager.seal_model(&model(100, 1), 0).unwrap();
    r.mock.corrupt_byte(&shard, 0).unwrap();
    assert!(r.manager.verify_sealed(&shard).is_err());
    assert!(!r.manager.is_stopped());
    r.mock.corrupt_byte(&shard, 0).unwrap(); // flip back
    r.manager.verify_sealed(&shard).unwrap();
}

#[test]
fn changed_fields_and_forged_seals_fail_the_seal_check() {
    let r = rig_with(
        MockBackend::with_capacity(10 * MIB),
        VramConfig {
            stop_on_verification_failure: false,
            ..VramConfig::default()
        },
    );
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

#[test]
fn shards_of_another_manager_or_without_vram_are_not_sealed() {
    let a = rig(10 * MIB);
    let b = rig(10 * MIB);
    let shard = a.manager.seal_model(&model(10, 0), 0).unwrap();
    assert!(matches!(
        b.manager.verify_sealed(&shard),
        Err(VramError::NotSealed { .. })
    ));
    let orphan = SealedShard::from_parts(
        shard.sealed_fields(),
        shard.sealed_at,
        *shard.seal_signature(),
        None,
    );
    assert!(matches!(
        a.manager.verify_sealed(&orphan),
        Err(VramError::NotSealed { .. })
    ));
    assert!(
        !a.manager.is_stopped(),
        "not evidence of tampering with VRAM"
    );
}

#[test]
fn vram_is_released_once_when_the_last_clone_drops() {
    let r = rig(10 * MIB);
    let shard = r.manager.seal_model(&model(MIB, 1), 0).unwrap();
    let copies: Vec<_> = (0..5).map(|_| shard.clone()).collect();
    drop(shard);
    assert_eq!(r.manager.used_vram(), 2 * MIB);
    r.manager.verify_sealed(&copies[3]).unwrap();
    drop(copies);
    assert_eq!(r.manager.used_vram(), 0);
    assert_eq!(r.mock.live_allocations(), 0);
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

#[test]
fn a_failed_release_is_audited_not_panicked_and_capacity_returns() {
    let r = rig(10 * MIB);
    let shard = r.manager.seal_model(&model(MIB, 1), 0).unwrap();
    r.mock.fail_next_frees(1);
    drop(shard);
    assert_eq!(r.manager.used_vram(), 0);
    let last = r.audit.events().pop().unwrap();
    assert!(
        matches!(last, AuditEvent::VramDeallocated { error: Some(ref e), .. } if e.contains("injected"))
    );
}

#[test]
fn shards_outlive_their_manager() {
    let r = rig(10 * MIB);
    let shard = r.manager.seal_model(&model(MIB, 1), 0).unwrap();
    drop(r.manager);
    assert_eq!(r.mock.live_allocations(), 1);
    drop(shard);
    assert_eq!(r.mock.live_allocations(), 0);
}

#[test]
fn expired_seals_fail_when_a_limit_is_set() {
    let r = rig_with(
        MockBackend::with_capacity(10 * MIB),
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

#[test]
fn seals_without_time_are_deterministic() {
    let config = VramConfig {
        include_seal_time: false,
        ..VramConfig::default()
    };
    let a = rig_with(MockBackend::with_capacity(10 * MIB), config.clone());
    let b = rig_with(MockBackend::with_capacity(10 * MIB), config);
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

#[test]
fn non_device_allocations_are_policy_violations() {
    for facts in [
        AllocationFacts::new(MemoryType::Device, true, 0, true),
        AllocationFacts::new(MemoryType::Host, false, 0, true),
        AllocationFacts::new(MemoryType::Unregistered, false, 0, false),
        AllocationFacts::new(MemoryType::Device, false, 1, true),
    ] {
        let r = rig(10 * MIB);
        r.mock.next_allocation_reports(facts);
        let err = r.manager.seal_model(&model(100, 1), 0).unwrap_err();
        assert!(
            matches!(err, VramError::PolicyViolation { device: 0, .. }),
            "{facts:?}: {err:?}"
        );
        assert_eq!(r.mock.live_allocations(), 0);
        assert_eq!(r.manager.used_vram(), 0);
        assert_eq!(names(&r.audit.events()), ["PolicyViolation"]);
        assert!(r.manager.is_stopped());
    }
}

#[test]
fn several_devices_are_accounted_separately() {
    let r = rig_with(
        MockBackend::builder()
            .device(8 * MIB)
            .device(4 * MIB)
            .build(),
        VramConfig::default(),
    );
    let a = r
        .manager
        .seal_model_shard(&model(3 * MIB, 1), 0, 0, 2)
        .unwrap();
    let b = r
        .manager
        .seal_model_shard(&model(3 * MIB, 2), 1, 1, 2)
        .unwrap();
    assert_eq!((a.shard_index, a.total_shards), (Some(0), Some(2)));
    assert_eq!(r.manager.used_vram_on(0).unwrap(), 4 * MIB);
    assert_eq!(r.manager.used_vram_on(1).unwrap(), 4 * MIB);
    assert_eq!(r.manager.available_vram_on(1).unwrap(), 0);
    assert_eq!(r.manager.total_vram(), 12 * MIB);
    assert!(r.manager.used_vram_on(2).is_err());
    r.manager.verify_sealed(&b).unwrap();
}

#[test]
fn memory_fraction_limits_capacity() {
    let r = rig_with(
        MockBackend::with_capacity(100 * MIB),
        VramConfig {
            memory_fraction: 0.5,
            ..VramConfig::default()
        },
    );
    assert_eq!(r.manager.total_vram(), 50 * MIB);
    let bad = vram_alloc::VramManager::builder()
        .mock(std::sync::Arc::new(MockBackend::with_capacity(MIB)))
        .config(VramConfig {
            memory_fraction: 1.5,
            ..VramConfig::default()
        })
        .build();
    assert!(matches!(bad, Err(VramError::InvalidInput { .. })));
}

#[test]
fn production_constructors_never_fall_back_to_the_mock() {
    assert!(matches!(
        vram_alloc::VramManager::new(),
        Err(VramError::NoGpu { .. })
    ));
    assert!(matches!(
        vram_alloc::VramManager::from_gpu_device(0),
        Err(VramError::NoGpu { .. })
    ));
    let integrated = DeviceFacts {
        integrated: true,
        ..DeviceFacts::discrete(0, "igpu", MIB)
    };
    // The mock still reports the facts it was given; deciding on them is the policy crate's job.
    let r = rig_with(
        MockBackend::builder().device_with_facts(integrated).build(),
        VramConfig::default(),
    );
    assert!(r.manager.device_facts(0).unwrap().integrated);
}

#[test]
fn metrics_follow_operations_and_render_as_prometheus_text() {
    let r = rig(10 * MIB);
    let shard = r.manager.seal_model(&model(MIB, 1), 0).unwrap();
    r.manager.verify_sealed(&shard).unwrap();
    let _ = r.manager.seal_model(&model(20 * MIB, 1), 0);
    let m = r.manager.metrics();
    assert_eq!(
        (m.seals_succeeded, m.seals_failed, m.verifications_succeeded),
        (1, 1, 1)
    );
    assert_eq!(m.devices[0].used_bytes, 2 * MIB);
    let text = m.prometheus_text();
    for line in [
        "vram_total_bytes{gpu_device=\"0\"} 10485760",
        "vram_used_bytes{gpu_device=\"0\"} 2097152",
        "vram_available_bytes{gpu_device=\"0\"} 8388608",
        "vram_seal_operations_total{gpu_device=\"0\",result=\"success\"} 1",
        "vram_seal_operations_total{gpu_device=\"0\",result=\"failure\"} 1",
        "vram_verify_operations_total{gpu_device=\"0\",result=\"success\"} 1",
        "vram_verify_duration_seconds_count{gpu_device=\"0\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    drop(shard);
    assert!(
        r.manager
            .metrics()
            .prometheus_text()
            .contains("vram_used_bytes{gpu_device=\"0\"} 0")
    );
}

#[test]
fn debug_output_shows_counts_never_bytes_keys_or_pointers() {
    let r = rig(256 * MIB);
    let shard = r.manager.seal_model(&model(64 * MIB, 0xAB), 0).unwrap();
    for text in [
        format!("{:?}", r.manager),
        format!("{:#?}", r.manager),
        format!("{:?}", r.mock),
        format!("{shard:?}"),
        format!("{:?}", vram_alloc::VramManager::builder()),
    ] {
        assert!(
            text.len() < 600,
            "{} bytes of Debug: {text:.200}",
            text.len()
        );
        assert!(!text.contains("0x"), "{text}");
        assert!(
            !text.contains("171, 171"),
            "model bytes in Debug: {text:.200}"
        );
    }
    let text = format!("{:?}", r.manager);
    for needle in [
        "backend: \"mock\"",
        "devices: 1",
        "live_shards: 1",
        "stopped: false",
    ] {
        assert!(text.contains(needle), "{text}");
    }
}

#[test]
fn foreign_shards_with_made_up_devices_do_not_grow_the_metrics() {
    let r = rig(10 * MIB);
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
