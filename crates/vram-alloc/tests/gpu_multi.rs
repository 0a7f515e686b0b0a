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
