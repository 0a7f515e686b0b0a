//! VramManager on the mock backend, where a test needs what only the mock has: injected faults
//! at every step (nothing left behind), a failed release, simulated device and allocation
//! facts, several devices, and the mock's own counts. The behaviour that holds on any backend is
//! in `behaviour.rs`, run on the mock and on a GPU from one source.
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

use common::{MIB, model, names, rig, rig_with};
use vram_alloc::audit::AuditEvent;
use vram_alloc::backend::MockBackend;
use vram_types::{AllocationFacts, DeviceFacts, MemoryType, SealedShard, VramConfig, VramError};

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
    let mock = r.mock.clone();
    let shard = r.manager.seal_model(&model(MIB, 1), 0).unwrap();
    drop(r); // the manager with it
    assert_eq!(mock.live_allocations(), 1);
    drop(shard);
    assert_eq!(mock.live_allocations(), 0);
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
        // The violation, then the allocation the refused seal gave back.
        assert_eq!(names(&r.audit.events()), ["PolicyViolation", "SealAborted"]);
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
