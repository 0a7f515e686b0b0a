//! The CUDA backend on a real GPU. Every test is `#[ignore]`d (reported as ignored, never as
//! passed, where there is no GPU); on a GPU machine: `VRAM_TEST_GPU=1 cargo test --release
//! -p vram-alloc --features test-utils --test gpu -- --include-ignored --test-threads=1`.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    missing_docs,
    reason = "tests"
)]

use std::sync::Arc;
use std::time::Instant;

use vram_alloc::VramManager;
use vram_alloc::audit::{AuditEvent, InMemoryAuditSink, Severity};
use vram_policy::rules::allocation_problem;
use vram_types::{BackendKind, DigestAlgorithm, VramConfig, VramError};

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
const GRANULE: usize = 2 * MIB;
const IGNORE: &str = "needs a GPU";

fn gpu(config: VramConfig) -> (VramManager, Arc<InMemoryAuditSink>) {
    assert!(
        std::env::var("VRAM_TEST_GPU").is_ok_and(|v| v == "1"),
        "{IGNORE}: set VRAM_TEST_GPU=1"
    );
    let audit = Arc::new(InMemoryAuditSink::new());
    let m = VramManager::builder()
        .config(config)
        .audit_sink(audit.clone())
        .build()
        .unwrap();
    assert_eq!(m.backend_kind(), BackendKind::Cuda);
    (m, audit)
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes()[..(len - out.len()).min(8)]);
    }
    out
}

/// Free memory of device 0 as the driver reports it now (`cuMemGetInfo`).
fn device_free() -> usize {
    vram_cuda_sys::Device::open(0)
        .unwrap()
        .memory_info()
        .unwrap()
        .0
}

#[test]
#[ignore = "needs a GPU: VRAM_TEST_GPU=1, --include-ignored"]
fn seal_and_verify_1_byte_1_mib_plus_1_and_1_gib_with_cpu_equal_digests() {
    let (m, audit) = gpu(VramConfig::default());
    let facts = m.device_facts(0).unwrap();
    println!(
        "device 0: {} ({} bytes), ECC {:?}, driver {:?}",
        facts.name, facts.total_memory, facts.ecc_enabled, facts.driver_version
    );
    assert!(
        audit
            .events()
            .iter()
            .any(|e| matches!(e, AuditEvent::DeviceAccepted { gpu_device: 0, .. }))
    );
    for (i, len) in [1, MIB + 1, GIB].into_iter().enumerate() {
        let data = bytes(len, i as u64 + 1);
        let t = Instant::now();
        let shard = m.seal_model(&data, 0).unwrap();
        let seal_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        m.verify_sealed(&shard).unwrap();
        let verify_s = t.elapsed().as_secs_f64();
        let cpu = vram_seal::digest(&data, shard.digest_algorithm()).to_hex();
        assert_eq!(
            shard.digest, cpu,
            "digest of VRAM bytes == CPU digest ({len} bytes)"
        );
        assert_eq!(
            allocation_problem(&m.allocation_facts(&shard).unwrap(), 0, false),
            None
        );
        println!(
            "len {len}: seal {:.3} s ({:.2} GB/s), verify {:.3} s ({:.2} GB/s)",
            seal_s,
            len as f64 / seal_s / 1e9,
            verify_s,
            len as f64 / verify_s / 1e9
        );
    }
    // The flat algorithm, as `sha256sum` prints it.
    let (flat, _) = gpu(VramConfig {
        digest_algorithm: DigestAlgorithm::Sha256,
        ..VramConfig::default()
    });
    let data = bytes(MIB + 1, 9);
    let shard = flat.seal_model(&data, 0).unwrap();
    flat.verify_sealed(&shard).unwrap();
    assert_eq!(
        shard.digest,
        vram_seal::digest(&data, DigestAlgorithm::Sha256).to_hex()
    );
}

/// BLAKE3 through the manager on the GPU: the sealed digest is the `blake3` crate's at every
/// shape the tree has (computed in VRAM by the kernels, no read-back), a changed byte fails
/// verification, and the end-to-end `verify_sealed` latency is printed (best of 20).
#[test]
#[ignore = "needs a GPU: VRAM_TEST_GPU=1, --include-ignored"]
fn blake3_shards_seal_and_verify_in_vram_with_the_standard_digest() {
    let (m, audit) = gpu(VramConfig {
        digest_algorithm: DigestAlgorithm::Blake3,
        ..VramConfig::default()
    });
    for (i, len) in [1, 1024, 1025, MIB, MIB + 1, 256 * MIB, GIB]
        .into_iter()
        .enumerate()
    {
        let data = bytes(len, i as u64 + 40);
        let t = Instant::now();
        let shard = m.seal_model(&data, 0).unwrap();
        let seal_s = t.elapsed().as_secs_f64();
        assert_eq!(shard.digest_algorithm(), DigestAlgorithm::Blake3);
        assert_eq!(
            shard.digest,
            blake3::hash(&data).to_hex().to_string(),
            "{len} bytes"
        );
        let mut best = f64::MAX;
        for _ in 0..20 {
            let t = Instant::now();
            m.verify_sealed(&shard).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "blake3 len {len}: seal {:.3} ms ({:.2} GB/s), verify_sealed best of 20 {:.1} us ({:.1} GB/s)",
            seal_s * 1e3,
            len as f64 / seal_s / 1e9,
            best * 1e6,
            len as f64 / best / 1e9
        );
    }
    let shard = m.seal_model(&bytes(3 * MIB + 7, 77), 0).unwrap();
    m.corrupt_byte_for_tests(&shard, 3 * MIB + 6).unwrap();
    assert!(matches!(
        m.verify_sealed(&shard).unwrap_err(),
        VramError::IntegrityViolation { .. }
    ));
    let last = audit.records().pop().unwrap();
    assert_eq!(last.event.name(), "SealVerificationFailed");
}

#[test]
#[ignore = "needs a GPU: VRAM_TEST_GPU=1, --include-ignored"]
fn a_byte_written_behind_the_managers_back_fails_verification() {
    let (m, audit) = gpu(VramConfig::default());
    let shard = m
        .seal_model_with_id("tampered", &bytes(64 * MIB + 3, 5), 0)
        .unwrap();
    m.verify_sealed(&shard).unwrap();
    m.corrupt_byte_for_tests(&shard, 40 * MIB + 1).unwrap(); // raw device-to-host, host-to-device copy
    let err = m.verify_sealed(&shard).unwrap_err();
    assert!(
        matches!(err, VramError::IntegrityViolation { .. }),
        "{err:?}"
    );
    let last = audit.records().pop().unwrap();
    assert_eq!(
        (last.event.name(), last.severity),
        ("SealVerificationFailed", Severity::Critical)
    );
    assert!(m.is_stopped());
}

#[test]
#[ignore = "needs a GPU: VRAM_TEST_GPU=1, --include-ignored"]
fn oversized_requests_fail_cleanly_and_free_memory_returns_after_drop() {
    // No model-size cap here: the requests must reach the capacity checks (an H200 has 140 GB).
    let (m, _) = gpu(VramConfig {
        max_model_bytes: u64::MAX,
        ..VramConfig::default()
    });
    // Lets the context settle its own allocations: the digest kernels' module, and every copy
    // lane of the staging ring (a 256 MiB upload uses them all).
    let warm = m.seal_model(&bytes(256 * MIB, 99), 0).unwrap();
    drop(warm);
    let start = device_free();
    // Larger than our capacity: refused by accounting. The bytes are zero pages never touched.
    let huge = vec![0u8; m.total_vram() + 1];
    let e = m.seal_model(&huge, 0).unwrap_err();
    assert!(matches!(e, VramError::InsufficientVram { .. }), "{e:?}");
    drop(huge);
    // Within our capacity but above the device's free memory: refused by the live check.
    let over_free = vec![0u8; start + 64 * MIB];
    if over_free.len() <= m.total_vram() {
        let e = m.seal_model(&over_free, 0).unwrap_err();
        assert!(
            matches!(e, VramError::InsufficientVram { available, .. } if available <= start),
            "{e:?}"
        );
    }
    drop(over_free);
    assert_eq!(m.used_vram(), 0);
    assert!(
        device_free().abs_diff(start) <= GRANULE,
        "a refused request leaked device memory"
    );

    let shards: Vec<_> = [1, MIB, MIB + 1, 100 * MIB, GIB]
        .into_iter()
        .enumerate()
        .map(|(i, len)| m.seal_model(&bytes(len, 100 + i as u64), 0).unwrap())
        .collect();
    let used = m.used_vram();
    let drop_in_free = start - device_free();
    println!("used_vram {used}, drop in cuMemGetInfo free {drop_in_free}");
    assert_eq!(used, 2 * MIB + 2 * MIB + 2 * MIB + 100 * MIB + GIB);
    assert!(
        used.abs_diff(drop_in_free) <= GRANULE,
        "used {used} vs device drop {drop_in_free}"
    );
    drop(shards);
    assert_eq!(m.used_vram(), 0);
    let end = device_free();
    assert!(
        end.abs_diff(start) <= GRANULE,
        "device memory not returned: free {start} before, {end} after"
    );
}

#[test]
#[ignore = "needs a GPU: VRAM_TEST_GPU=1, --include-ignored"]
fn four_threads_seal_and_verify_with_exact_accounting() {
    let (m, _) = gpu(VramConfig::default());
    let live = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let m = m.clone();
                s.spawn(move || {
                    let mut kept = Vec::new();
                    for i in 0..25u64 {
                        let len = 1 + ((t * 7919 + i * 104_729) as usize % (24 * MIB));
                        let shard = m
                            .seal_model_with_id(&format!("t{t}-{i}"), &bytes(len, t * 100 + i), 0)
                            .unwrap();
                        m.verify_sealed(&shard).unwrap();
                        if i % 3 == 0 {
                            kept.push(shard);
                        }
                    }
                    kept
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let expected: usize = live.iter().map(|s| m.vram_footprint(s.vram_bytes)).sum();
    assert_eq!(m.used_vram(), expected);
    assert_eq!(m.metrics().verifications_failed, 0);
    drop(live);
    assert_eq!(m.used_vram(), 0);
}

#[test]
#[ignore = "needs a GPU: VRAM_TEST_GPU=1, --include-ignored"]
fn debug_output_on_cuda_shows_counts_never_pointers() {
    let (m, _) = gpu(VramConfig::default());
    let shard = m.seal_model(&bytes(64 * MIB, 7), 0).unwrap();
    let text = format!("{m:?} {shard:?}");
    println!("{text}");
    assert!(text.len() < 600, "{text}");
    assert!(!text.contains("0x"), "{text}");
    assert!(
        text.contains("backend: \"cuda\"") && text.contains("live_shards: 1"),
        "{text}"
    );
}
