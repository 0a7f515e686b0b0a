//! The BLAKE3 kernels against the `blake3` crate (through `vram-seal`), bit for bit, at every
//! size that exercises the tree's shape, and single-bit flips of a 1 GiB shard. Every test needs
//! a GPU and is `#[ignore]`d (reported as ignored without one); on a GPU machine:
//! `VRAM_TEST_GPU=1 cargo test --release -p vram-cuda-sys --test blake3_digest --
//! --include-ignored --test-threads=1`.
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

mod common;
use common::{GIB, KIB, MIB, bytes, device, upload};

use std::time::Instant;

use vram_cuda_sys::memory::DeviceBuffer;
use vram_cuda_sys::resident::{ForeignRange, Resident};
use vram_cuda_sys::staging_ring::StagingRing;
use vram_cuda_sys::stream::{EngineStream, Stream, StreamPriority};
use vram_cuda_sys::tree_digest::{GpuDigest, TreeDigestEngine};
use vram_types::{DigestAlgorithm, GpuShare};

/// The `blake3` crate's hash (multi-threaded), as every CPU path of the workspace computes it.
fn reference(data: &[u8]) -> [u8; 32] {
    *vram_seal::digest::digest(data, DigestAlgorithm::Blake3).as_bytes()
}

/// Sizes that exercise the tree: empty, inside one block, one chunk exactly and around it, two
/// chunks, a ragged third, an odd chunk count, one fold group exactly (256 chunks) and one past
/// it, 1 MiB and 1 MiB + 1, and three fold launches (65,537 chunks). For the whole-GPU kernel,
/// whose blocks fold 128 chunks each: one block exactly (128 KiB), one chunk past it, and one
/// node past a full fold group (256 × 128 + 1 chunks).
const SHAPES: [usize; 20] = [
    0,
    1,
    64,
    65,
    1023,
    1024,
    1025,
    2048,
    3 * KIB + 1,
    255 * KIB,
    256 * KIB,
    256 * KIB + 1,
    300 * KIB + 77,
    MIB,
    MIB + 1,
    64 * MIB + KIB,
    5 * MIB + 3,
    128 * KIB,
    128 * KIB + 1,
    32 * MIB + KIB,
];

#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn blake3_matches_the_blake3_crate_at_every_shape_and_share() {
    let device = device();
    let engine = TreeDigestEngine::new(&device).unwrap();
    let ring = StagingRing::with_defaults(&device);
    let stream = Stream::new(&device, StreamPriority::Highest).unwrap();
    for n in SHAPES {
        let data = bytes(n, n as u64 + 3);
        let buffer = upload(&device, &ring, &data);
        let want = reference(&data);
        for share in [GpuShare::Full, GpuShare::bounded(0.05).unwrap()] {
            let got = engine
                .tree_root(&buffer, n, GpuDigest::Blake3, share)
                .unwrap();
            assert_eq!(got, want, "{n} bytes, {share:?}");
        }
        let range = Resident::foreign(&device, ForeignRange::leak(buffer)).unwrap();
        let queued = engine
            .queue_root_before(&range, n, GpuDigest::Blake3, EngineStream::of(&stream))
            .unwrap();
        assert_eq!(
            queued.wait().unwrap(),
            vec![want],
            "{n} bytes, queued ahead"
        );
    }
    println!(
        "{} shapes x (full, bounded, queued) match the blake3 crate",
        SHAPES.len()
    );
}

/// A model's tensors hashed in one launch sequence give each tensor's own BLAKE3: ranges of one
/// chunk, of one chunk group and of many fold groups, on the whole GPU (chunk groups) and a
/// bounded share (per-chunk kernel), in the waiting and the queued-ahead forms.
#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn many_ranges_at_once_match_each_ranges_own_blake3() {
    let device = device();
    let engine = TreeDigestEngine::new(&device).unwrap();
    let ring = StagingRing::with_defaults(&device);
    let lens = [
        1,
        1024,
        1025,
        2,
        300 * KIB + 77,
        17 * MIB + 5,
        63,
        256 * KIB,
        5,
        // One chunk group exactly, and one chunk past it (the whole-GPU form folds groups of
        // 128 chunks in shared memory).
        128 * KIB,
        128 * KIB + 1,
    ];
    let datas: Vec<Vec<u8>> = lens
        .iter()
        .enumerate()
        .map(|(i, n)| bytes(*n, (i * 977 + 5) as u64))
        .collect();
    let ranges: Vec<(Resident, usize)> = datas
        .iter()
        .map(|d| {
            let range = ForeignRange::leak(upload(&device, &ring, d));
            (Resident::foreign(&device, range).unwrap(), d.len())
        })
        .collect();
    let want: Vec<[u8; 32]> = datas.iter().map(|d| reference(d)).collect();
    for share in [GpuShare::Full, GpuShare::bounded(0.05).unwrap()] {
        let got = engine
            .tree_roots_of(&ranges, GpuDigest::Blake3, share, None)
            .unwrap();
        assert_eq!(got, want, "{share:?}");
    }
    let stream = Stream::new(&device, StreamPriority::Highest).unwrap();
    let queued = engine
        .queue_roots_before(&ranges, GpuDigest::Blake3, EngineStream::of(&stream))
        .unwrap();
    assert_eq!(queued.wait().unwrap(), want, "queued ahead");
}

#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn one_gib_matches_and_single_bit_flips_at_first_middle_and_last_byte_are_detected() {
    let device = device();
    let engine = TreeDigestEngine::new(&device).unwrap();
    let ring = StagingRing::with_defaults(&device);
    let data = bytes(GIB, 1);
    let buffer = upload(&device, &ring, &data);
    let want = reference(&data);
    let root = |b: &DeviceBuffer| {
        engine
            .tree_root(b, GIB, GpuDigest::Blake3, GpuShare::Full)
            .unwrap()
    };
    assert_eq!(root(&buffer), want);
    for (offset, bit) in [(0, 0), (GIB / 2 + 12_345, 3), (GIB - 1, 7)] {
        let original = data[offset];
        buffer.write(offset, &[original ^ (1 << bit)]).unwrap();
        let mut flipped = data[offset..=offset].to_vec();
        flipped[0] ^= 1 << bit;
        let got = root(&buffer);
        assert_ne!(
            got, want,
            "flip of bit {bit} at byte {offset} went unnoticed"
        );
        // And the GPU's digest of the changed bytes is the crate's digest of them.
        let mut changed = data.clone();
        changed[offset] = flipped[0];
        assert_eq!(got, reference(&changed), "flip at byte {offset}");
        buffer.write(offset, &[original]).unwrap();
    }
    assert_eq!(root(&buffer), want);
}

#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn sixteen_gib_matches_the_blake3_crate() {
    let device = device();
    let (free, _) = device.memory_info().unwrap();
    let n = 16 * GIB;
    assert!(free > n + GIB, "needs 17 GiB of free VRAM, {free} free");
    let engine = TreeDigestEngine::new(&device).unwrap();
    let ring = StagingRing::with_defaults(&device);
    let data = bytes(n, 16);
    let buffer = upload(&device, &ring, &data);
    let want = reference(&data);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let got = engine
            .tree_root(&buffer, n, GpuDigest::Blake3, GpuShare::Full)
            .unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(got, want, "16 GiB");
    }
    println!(
        "16 GiB BLAKE3 on the GPU: {:.2} ms = {:.0} GB/s (best of 3)",
        best * 1e3,
        n as f64 / best / 1e9
    );
}
