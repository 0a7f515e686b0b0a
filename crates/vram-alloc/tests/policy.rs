//! The VRAM-only policy on the mock backend: enforcement on each bad device fact and on a
//! non-device allocation, the stop that follows, and attestations that verify only unchanged.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    reason = "tests"
)]

use std::sync::Arc;

use vram_alloc::VramManager;
use vram_alloc::audit::{AuditEvent, InMemoryAuditSink, Severity};
use vram_alloc::backend::MockBackend;
use vram_policy::verify_attestation;
use vram_seal::SealKey;
use vram_types::{AllocationFacts, DeviceFacts, MemoryType, VramConfig, VramError};

const MIB: usize = 1 << 20;
const KEY: [u8; 32] = [0x33; 32];

fn manager(mock: Arc<MockBackend>, config: VramConfig) -> (VramManager, Arc<InMemoryAuditSink>) {
    let audit = Arc::new(InMemoryAuditSink::new());
    let m = VramManager::builder()
        .mock(mock)
        .config(config)
        .seal_key(SealKey::from_bytes(&KEY).unwrap())
        .audit_sink(audit.clone())
        .build()
        .unwrap();
    (m, audit)
}

#[test]
fn a_discrete_gpu_passes_and_stays_usable() {
    let (m, audit) = manager(
        Arc::new(MockBackend::with_capacity(8 * MIB)),
        VramConfig::default(),
    );
    m.enforce_vram_only_policy().unwrap();
    assert!(m.is_vram_only());
    assert!(audit.events().is_empty());
    m.seal_model(&[1; 100], 0).unwrap();
}

#[test]
fn each_bad_device_fact_is_a_critical_violation_that_stops_sealing() {
    let good = DeviceFacts::discrete(0, "gpu", 8 * MIB);
    for (facts, needle) in [
        (
            DeviceFacts {
                integrated: true,
                ..good.clone()
            },
            "integrated",
        ),
        (
            DeviceFacts {
                pageable_memory_access: true,
                ..good.clone()
            },
            "pageable",
        ),
        (
            DeviceFacts {
                unified_addressing: false,
                ..good.clone()
            },
            "unified addressing",
        ),
    ] {
        let mock = Arc::new(MockBackend::builder().device_with_facts(facts).build());
        let (m, audit) = manager(mock, VramConfig::default());
        assert!(!m.is_vram_only());
        let err = m.enforce_vram_only_policy().unwrap_err();
        let VramError::PolicyViolation { device: 0, reason } = &err else {
            panic!("{err:?}")
        };
        assert!(reason.contains(needle), "{reason}");
        let records = audit.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].severity, Severity::Critical);
        assert!(matches!(
            records[0].event,
            AuditEvent::PolicyViolation {
                ecc_enabled: Some(true),
                ..
            }
        ));
        assert_eq!(
            m.seal_model(&[1; 10], 0).unwrap_err(),
            VramError::Stopped,
            "worker stops"
        );
        assert_eq!(
            m.enforce_vram_only_policy().unwrap_err(),
            VramError::Stopped
        );
    }
}

#[test]
fn pageable_access_can_be_allowed_explicitly() {
    let facts = DeviceFacts {
        pageable_memory_access: true,
        ..DeviceFacts::discrete(0, "gh200", 8 * MIB)
    };
    let mock = Arc::new(MockBackend::builder().device_with_facts(facts).build());
    let (m, _) = manager(
        mock,
        VramConfig {
            allow_pageable_memory_access: true,
            ..VramConfig::default()
        },
    );
    m.enforce_vram_only_policy().unwrap();
}

#[test]
fn unified_memory_appearing_on_a_device_later_is_caught_at_the_next_check() {
    let mock = Arc::new(MockBackend::with_capacity(8 * MIB));
    let (m, _) = manager(mock.clone(), VramConfig::default());
    m.enforce_vram_only_policy().unwrap();
    mock.set_device_facts(
        0,
        DeviceFacts {
            integrated: true,
            ..DeviceFacts::discrete(0, "x", 8 * MIB)
        },
    )
    .unwrap();
    assert!(m.enforce_vram_only_policy().is_err());
    assert!(m.is_stopped());
}

#[test]
fn attestation_verifies_and_any_change_breaks_it() {
    let (m, _) = manager(
        Arc::new(MockBackend::with_capacity(8 * MIB)),
        VramConfig::default(),
    );
    let shard = m
        .seal_model_with_id("attested", &vec![5; 3 * MIB], 0)
        .unwrap();
    let nonce = b"request-42";
    let att = m.attest_vram_residency(&shard, nonce).unwrap();
    let key = SealKey::from_bytes(&KEY).unwrap();
    verify_attestation(&key, &att, nonce).unwrap();
    assert_eq!(att.shard_id, "attested");
    assert_eq!(
        (att.backend.as_str(), att.simulated),
        ("mock", true),
        "the mock never claims real VRAM"
    );
    assert_eq!(att.memory_type, MemoryType::Simulated.as_str());
    assert!(!att.is_managed && att.covers_shard);
    assert_eq!(att.checks_passed.len(), 5);

    assert!(
        verify_attestation(&key, &att, b"other nonce").is_err(),
        "replay"
    );
    let other_key = SealKey::from_bytes(&[0x34; 32]).unwrap();
    assert!(verify_attestation(&other_key, &att, nonce).is_err());
    let mut forged = att.clone();
    forged.simulated = false;
    assert!(matches!(
        verify_attestation(&key, &forged, nonce),
        Err(VramError::SealVerificationFailed { .. })
    ));
    let mut forged = att.clone();
    forged.checks_passed.pop();
    assert!(verify_attestation(&key, &forged, nonce).is_err());
    // It survives a JSON round trip (it is what the Ready endpoint returns).
    let json = serde_json::to_string(&att).unwrap();
    verify_attestation(&key, &serde_json::from_str(&json).unwrap(), nonce).unwrap();
}

#[test]
fn no_attestation_for_a_corrupted_or_misplaced_shard() {
    let mock = Arc::new(MockBackend::with_capacity(8 * MIB));
    let (m, _) = manager(
        mock.clone(),
        VramConfig {
            stop_on_verification_failure: false,
            ..VramConfig::default()
        },
    );
    let shard = m.seal_model(&[9; 1000], 0).unwrap();
    m.corrupt_byte_for_tests(&shard, 999).unwrap();
    assert!(matches!(
        m.attest_vram_residency(&shard, b"n"),
        Err(VramError::IntegrityViolation { .. })
    ));
    assert!(matches!(
        m.attest_vram_residency(&shard, &[0; 300]),
        Err(VramError::InvalidInput { .. })
    ));

    let (m2, _) = manager(
        Arc::new(MockBackend::with_capacity(8 * MIB)),
        VramConfig::default(),
    );
    assert!(matches!(
        m2.attest_vram_residency(&shard, b"n"),
        Err(VramError::NotSealed { .. })
    ));
}

#[test]
fn a_managed_allocation_is_refused_at_seal_and_the_policy_then_reports_a_stopped_worker() {
    let mock = Arc::new(MockBackend::with_capacity(8 * MIB));
    let (m, audit) = manager(mock.clone(), VramConfig::default());
    mock.next_allocation_reports(AllocationFacts::new(MemoryType::Device, true, 0, true));
    assert!(matches!(
        m.seal_model(&[1; 10], 0),
        Err(VramError::PolicyViolation { .. })
    ));
    assert_eq!(audit.events()[0].severity(), Severity::Critical);
    assert!(!m.is_vram_only());
}
