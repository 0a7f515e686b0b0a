//! BLAKE3 as a manager's digest algorithm: every path that seals and verifies speaks it (one
//! shard, background verification, a tensor-parallel group, execution, cross-check), the
//! sealed digest is the standard BLAKE3 of the bytes, and a changed byte is caught.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    missing_docs,
    reason = "tests"
)]

use std::sync::Arc;

use vram_alloc::backend::MockBackend;
use vram_alloc::{ExecutionMode, GroupPart, SealOptions, VramManager};
use vram_seal::SealKey;
use vram_types::{DigestAlgorithm, ShardSource, VramConfig, VramError};

fn manager() -> VramManager {
    VramManager::builder()
        .mock(Arc::new(
            MockBackend::builder()
                .device(64 << 20)
                .device(64 << 20)
                .build(),
        ))
        .config(VramConfig {
            digest_algorithm: DigestAlgorithm::Blake3,
            ..VramConfig::default()
        })
        .seal_key(SealKey::derive(b"blake3-test-worker-token", "w").unwrap())
        .build()
        .unwrap()
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| u8::try_from(i % 251).unwrap()).collect()
}

#[test]
fn a_blake3_shard_carries_the_standard_blake3_and_catches_a_changed_byte() {
    let m = manager();
    let bytes = pattern(1_048_577);
    let options = SealOptions::new().shard_id("b3").cross_check(true);
    let shard = m.seal_from_source(&bytes.as_slice(), 0, &options).unwrap();
    assert_eq!(shard.digest_algorithm(), DigestAlgorithm::Blake3);
    // The reference vector `blake3-mib-plus-one` (the BLAKE3 team's binding).
    let want = include_str!("../../vram-seal/tests/data/digest_vectors.txt")
        .lines()
        .find_map(|l| l.strip_prefix("blake3-mib-plus-one pattern:1048577 blake3 "))
        .unwrap();
    assert_eq!(shard.digest, want);
    m.verify_sealed(&shard).unwrap();
    m.verify_sealed_background(&shard).unwrap();
    let lent = m
        .execute(&shard, ExecutionMode::BeforeAndAfter, |w| w.len())
        .unwrap();
    assert_eq!(lent, bytes.len());
    m.corrupt_byte_for_tests(&shard, 1_048_576).unwrap();
    assert!(matches!(
        m.verify_sealed(&shard),
        Err(VramError::IntegrityViolation { .. })
    ));
}

#[test]
fn a_blake3_group_seals_and_verifies_across_devices() {
    let m = manager();
    let (a, b) = (pattern(3000), pattern(70_000));
    let group = m
        .seal_model_group(
            "b3-model",
            &[
                GroupPart {
                    source: &a.as_slice() as &dyn ShardSource,
                    gpu_device: 0,
                },
                GroupPart {
                    source: &b.as_slice() as &dyn ShardSource,
                    gpu_device: 1,
                },
            ],
        )
        .unwrap();
    assert!(
        group
            .shards
            .iter()
            .all(|s| s.digest_algorithm() == DigestAlgorithm::Blake3)
    );
    m.verify_group(&group).unwrap();
    m.corrupt_byte_for_tests(&group.shards[1], 69_999).unwrap();
    assert!(m.verify_group(&group).is_err());
}

#[test]
fn a_blake3_expectation_is_checked_on_the_sealed_bytes_in_a_tree_manager() {
    // The default manager seals in the SHA-256 tree; a BLAKE3 expectation (a b3sum line, a
    // model-signing manifest) is computed from the resident bytes.
    let m = VramManager::with_capacity(64 << 20);
    let bytes = pattern(5000);
    let b3 = vram_seal::digest(&bytes, DigestAlgorithm::Blake3);
    let ok = SealOptions::new()
        .shard_id("ok")
        .expect_digest_in(DigestAlgorithm::Blake3, b3);
    let shard = m.seal_from_source(&bytes.as_slice(), 0, &ok).unwrap();
    assert_eq!(shard.digest_algorithm(), DigestAlgorithm::default());
    let wrong = SealOptions::new().shard_id("wrong").expect_digest_in(
        DigestAlgorithm::Blake3,
        vram_seal::digest(b"other", DigestAlgorithm::Blake3),
    );
    assert!(matches!(
        m.seal_from_source(&bytes.as_slice(), 0, &wrong),
        Err(VramError::UnexpectedDigest { .. })
    ));
    assert_eq!(m.used_vram(), m.vram_footprint(bytes.len()));
}
