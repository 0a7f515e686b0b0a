//! Two GPUs of one host: tensor-parallel shards sealed on each device land in that device's
//! memory (pointer check, per-device accounting, per-device free memory), corruption on one
//! device is caught without touching the other. `#[ignore]`d; run on a machine with at least two
//! GPUs with `VRAM_TEST_GPU=1 --include-ignored`.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "tests"
)]

use vram_alloc::VramManager;
use vram_policy::rules::allocation_problem;
use vram_types::{VramConfig, VramError};

const MIB: usize = 1 << 20;

fn free(device: u32) -> usize {
    vram_cuda_sys::Device::open(device)
        .unwrap()
        .memory_info()
        .unwrap()
        .0
}

#[test]
#[ignore = "needs two GPUs: VRAM_TEST_GPU=1, --include-ignored"]
fn tensor_parallel_shards_live_on_their_own_devices() {
    assert!(
        std::env::var("VRAM_TEST_GPU").is_ok_and(|v| v == "1"),
        "set VRAM_TEST_GPU=1"
    );
    let m = VramManager::builder()
        .config(VramConfig {
            stop_on_verification_failure: false,
            ..VramConfig::default()
        })
        .build()
        .unwrap();
    assert!(
        m.device_count() >= 2,
        "needs two GPUs, found {}",
        m.device_count()
    );
    warm_up(&m);
    let (free0, free1) = (free(0), free(1));
    let halves: Vec<Vec<u8>> = (0..2u8)
        .map(|h| (0..256 * MIB).map(|i| (i as u8) ^ h).collect())
        .collect();
    let shards: Vec<_> = (0..2u32)
        .map(|d| {
            m.seal_model_shard(&halves[d as usize], d, d as usize, 2)
                .unwrap()
        })
        .collect();
    for (d, s) in shards.iter().enumerate() {
        let facts = m.allocation_facts(s).unwrap();
        println!("shard {} on GPU {}: {facts:?}", s.shard_id, s.gpu_device);
        assert_eq!(facts.device_ordinal, d as u32);
        assert_eq!(allocation_problem(&facts, d as u32, false), None);
        assert_eq!(m.used_vram_on(d as u32).unwrap(), 256 * MIB);
        m.verify_sealed(s).unwrap();
    }
    let (drop0, drop1) = (free0 - free(0), free1 - free(1));
    println!("free memory dropped by {drop0} on GPU 0 and {drop1} on GPU 1");
    assert!(drop0.abs_diff(256 * MIB) <= 2 * MIB && drop1.abs_diff(256 * MIB) <= 2 * MIB);

    m.corrupt_byte_for_tests(&shards[1], 12345).unwrap();
    assert!(matches!(
        m.verify_sealed(&shards[1]),
        Err(VramError::IntegrityViolation { .. })
    ));
    m.verify_sealed(&shards[0]).unwrap();
    assert!(
        matches!(m.seal_model(&[1], 2), Err(VramError::InvalidDevice { .. }))
            || m.device_count() > 2
    );
    drop(shards);
    assert_eq!(m.used_vram(), 0);
    assert!(free(0).abs_diff(free0) <= 2 * MIB && free(1).abs_diff(free1) <= 2 * MIB);
}

/// Makes the digest kernels' module and every copy lane of both devices exist, so that free
/// memory read afterwards moves only with shards (a 256 MiB part uses all the lanes).
fn warm_up(m: &VramManager) {
    let warm: Vec<Vec<u8>> = (0..2u8).map(|h| vec![h ^ 0x5a; 256 * MIB]).collect();
    let parts: Vec<_> = warm
        .iter()
        .zip([0u32, 1])
        .map(|(d, gpu_device)| vram_alloc::GroupPart {
            source: d,
            gpu_device,
        })
        .collect();
    let group = m.seal_model_group("warm", &parts).unwrap();
    m.verify_group(&group).unwrap();
}

/// Best of `n` wall times of `f`.
fn best_of(n: usize, mut f: impl FnMut()) -> std::time::Duration {
    (0..n)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

#[test]
#[ignore = "needs two GPUs: VRAM_TEST_GPU=1, --include-ignored"]
fn a_group_across_two_gpus_verifies_in_parallel_and_reports_only_the_corrupted_shard() {
    assert!(
        std::env::var("VRAM_TEST_GPU").is_ok_and(|v| v == "1"),
        "set VRAM_TEST_GPU=1"
    );
    let audit = std::sync::Arc::new(vram_alloc::audit::InMemoryAuditSink::new());
    let m = VramManager::builder()
        .config(VramConfig {
            stop_on_verification_failure: false,
            ..VramConfig::default()
        })
        .audit_sink(audit.clone())
        .build()
        .unwrap();
    assert!(m.device_count() >= 2, "needs two GPUs");
    warm_up(&m);
    let (free0, free1) = (free(0), free(1));
    let part = 8 * 1024 * MIB;
    let data: Vec<Vec<u8>> = (0..2u8)
        .map(|h| (0..part).map(|i| (i as u8).wrapping_mul(31) ^ h).collect())
        .collect();
    let parts = |devices: [u32; 2]| -> Vec<vram_alloc::GroupPart<'_>> {
        data.iter()
            .zip(devices)
            .map(|(d, gpu_device)| vram_alloc::GroupPart {
                source: d,
                gpu_device,
            })
            .collect()
    };

    // The same 16 GiB as one group on one GPU, then across two: verification per device runs
    // in parallel, so two GPUs should take about half the time.
    let one = m.seal_model_group("on-one", &parts([0, 0])).unwrap();
    let t_one = best_of(5, || m.verify_group(&one).unwrap());
    drop(one);
    let two = m.seal_model_group("on-two", &parts([0, 1])).unwrap();
    let t_two = best_of(5, || m.verify_group(&two).unwrap());
    println!(
        "verify_group of 2 x 8 GiB: one GPU {:.1} ms, two GPUs {:.1} ms ({:.2}x)",
        t_one.as_secs_f64() * 1e3,
        t_two.as_secs_f64() * 1e3,
        t_one.as_secs_f64() / t_two.as_secs_f64()
    );
    assert!(t_two < t_one, "two GPUs were not faster than one");

    // Corrupt the shard on GPU 1: only it is reported, the one on GPU 0 still verifies.
    audit.clear();
    m.corrupt_byte_for_tests(&two.shards[1], 12_345).unwrap();
    let e = m.verify_group(&two).unwrap_err();
    assert!(
        matches!(e, VramError::IntegrityViolation { ref shard_id, .. } if shard_id == "on-two:tp1"),
        "{e:?}"
    );
    let events = audit.events();
    let verified: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            vram_alloc::audit::AuditEvent::SealVerified { shard_id, .. } => Some(shard_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(verified, ["on-two:tp0"]);
    drop(two);
    assert_eq!(m.used_vram(), 0);
    assert!(
        free(0).abs_diff(free0) <= 2 * MIB,
        "GPU 0 memory not returned"
    );
    assert!(
        free(1).abs_diff(free1) <= 2 * MIB,
        "GPU 1 memory not returned"
    );
}
