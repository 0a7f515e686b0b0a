//! The digest kernels against `vram-seal`'s CPU implementation, bit for bit, and the staging
//! ring's uploads. Every test needs a GPU and is `#[ignore]`d (reported as ignored without one);
//! on a GPU machine: `VRAM_TEST_GPU=1 cargo test --release -p vram-cuda-sys --test tree_digest
//! -- --include-ignored --test-threads=1`.
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
use common::{GIB, MIB, bytes, device, upload};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use vram_cuda_sys::memory::DeviceBuffer;
use vram_cuda_sys::staging_ring::StagingRing;
use vram_cuda_sys::tree_digest::{GpuDigest, TreeDigestEngine};
use vram_seal::digest::tree::{leaf_digests, root_from_leaf_digests};
use vram_types::{GpuShare, LeafSize, MAX_LEAF_BYTES, MIN_LEAF_BYTES};

fn cpu_root(data: &[u8], leaf: LeafSize) -> [u8; 32] {
    root_from_leaf_digests(&leaf_digests(data, leaf)).unwrap()
}

#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn kernels_match_the_cpu_digest_at_every_leaf_size_and_shape() {
    let device = device();
    let engine = TreeDigestEngine::new(&device).unwrap();
    let ring = StagingRing::with_defaults(&device);
    let mut shapes = 0;
    let mut leaf = MIN_LEAF_BYTES as usize;
    while leaf <= MAX_LEAF_BYTES as usize {
        let l = LeafSize::new(leaf as u64).unwrap();
        // 1 byte, one leaf - 1, one leaf, one leaf + 1, a ragged last leaf, an odd leaf count.
        for n in [1, leaf - 1, leaf, leaf + 1, 3 * leaf + 77, 5 * leaf] {
            let data = bytes(n, (leaf + n) as u64);
            let buffer = upload(&device, &ring, &data);
            let want = cpu_root(&data, l);
            for share in [GpuShare::Full, GpuShare::bounded(0.05).unwrap()] {
                let got = engine
                    .tree_root(&buffer, n, GpuDigest::Sha256Tree(l), share)
                    .unwrap();
                assert_eq!(got, want, "leaf {leaf}, {n} bytes, {share:?}");
            }
            shapes += 1;
        }
        leaf *= 2;
    }
    println!("{shapes} shapes x (full, bounded) match the CPU digest");
}

/// Many ranges hashed in one launch sequence give each range's own root: ranges of one leaf and
/// of many, ragged and exact, with the whole GPU and a bounded share (sliced launches), through
/// the waiting and the queued-ahead forms.
#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn many_ranges_at_once_match_each_ranges_own_root() {
    use vram_cuda_sys::resident::{ForeignRange, Resident};
    use vram_cuda_sys::stream::{EngineStream, Stream, StreamPriority};

    let device = device();
    let engine = TreeDigestEngine::new(&device).unwrap();
    let ring = StagingRing::with_defaults(&device);
    for leaf in [4096usize, 65536] {
        let l = LeafSize::new(leaf as u64).unwrap();
        let lens = [
            1,
            63,
            leaf - 1,
            leaf,
            leaf + 1,
            3 * leaf + 77,
            17 * leaf - 9,
            2,
            100 * leaf,
            5,
        ];
        let datas: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, n)| bytes(*n, (i * 131 + leaf) as u64))
            .collect();
        let ranges: Vec<(Resident, usize)> = datas
            .iter()
            .map(|d| {
                let range = ForeignRange::leak(upload(&device, &ring, d));
                (Resident::foreign(&device, range).unwrap(), d.len())
            })
            .collect();
        let want: Vec<[u8; 32]> = datas.iter().map(|d| cpu_root(d, l)).collect();
        for share in [GpuShare::Full, GpuShare::bounded(0.05).unwrap()] {
            let got = engine
                .tree_roots_of(&ranges, GpuDigest::Sha256Tree(l), share, None)
                .unwrap();
            assert_eq!(got, want, "leaf {leaf}, {share:?}");
        }
        let stream = Stream::new(&device, StreamPriority::Highest).unwrap();
        let queued = engine
            .queue_roots_before(&ranges, GpuDigest::Sha256Tree(l), EngineStream::of(&stream))
            .unwrap();
        assert_eq!(queued.wait().unwrap(), want, "leaf {leaf}, queued ahead");
        // A range that starts off a 16-byte boundary is refused before any launch.
        let buffer = upload(&device, &ring, &datas[6]);
        let off = ForeignRange::leak(buffer).shifted_for_tests(8);
        assert!(Resident::foreign(&device, off).is_err());
    }
    assert!(
        engine
            .tree_roots_of(&[], GpuDigest::Blake3, GpuShare::Full, None)
            .is_err()
    );
}

#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn one_gib_matches_and_every_single_bit_flip_is_detected() {
    let device = device();
    let engine = TreeDigestEngine::new(&device).unwrap();
    let ring = StagingRing::with_defaults(&device);
    let leaf = LeafSize::DEFAULT;
    let data = bytes(GIB, 1);
    let buffer = upload(&device, &ring, &data);
    let want = cpu_root(&data, leaf);
    assert_eq!(
        engine
            .tree_root(&buffer, GIB, GpuDigest::Sha256Tree(leaf), GpuShare::Full)
            .unwrap(),
        want
    );
    for (offset, bit) in [(0, 0), (GIB / 2 + 12_345, 3), (GIB - 1, 7)] {
        let original = data[offset];
        buffer.write(offset, &[original ^ (1 << bit)]).unwrap();
        let got = engine
            .tree_root(&buffer, GIB, GpuDigest::Sha256Tree(leaf), GpuShare::Full)
            .unwrap();
        assert_ne!(
            got, want,
            "flip of bit {bit} at byte {offset} went unnoticed"
        );
        buffer.write(offset, &[original]).unwrap();
    }
    assert_eq!(
        engine
            .tree_root(&buffer, GIB, GpuDigest::Sha256Tree(leaf), GpuShare::Full)
            .unwrap(),
        want
    );
}

#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn sixteen_gib_matches_the_cpu_digest() {
    let device = device();
    let (free, _) = device.memory_info().unwrap();
    let n = 16 * GIB;
    assert!(free > n + GIB, "needs 17 GiB of free VRAM, {free} free");
    let engine = TreeDigestEngine::new(&device).unwrap();
    let ring = StagingRing::with_defaults(&device);
    let data = bytes(n, 16);
    let t = Instant::now();
    let buffer = upload(&device, &ring, &data);
    let up = t.elapsed();
    for leaf in [64 * 1024, MIB] {
        let l = LeafSize::new(leaf as u64).unwrap();
        let want = cpu_root(&data, l);
        let t = Instant::now();
        let got = engine
            .tree_root(&buffer, n, GpuDigest::Sha256Tree(l), GpuShare::Full)
            .unwrap();
        let took = t.elapsed();
        assert_eq!(got, want, "16 GiB at {leaf}-byte leaves");
        println!(
            "16 GiB, {leaf}-byte leaves: GPU digest {:.1} ms = {:.0} GB/s (upload {:.0} GB/s)",
            took.as_secs_f64() * 1e3,
            n as f64 / took.as_secs_f64() / 1e9,
            n as f64 / up.as_secs_f64() / 1e9
        );
    }
}

#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn the_ring_shows_every_chunk_once_and_reuses_a_bounded_pool() {
    let device = device();
    let ring = StagingRing::new(&device, MIB, 4, 2);
    let data = bytes(10 * MIB + 3, 5);
    let seen = AtomicU64::new(0);
    let observe = |offset: u64, chunk: &[u8]| {
        let at = offset as usize;
        assert_eq!(chunk, &data[at..at + chunk.len()]);
        seen.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    };
    let buffer = DeviceBuffer::alloc(&device, data.len()).unwrap();
    ring.upload(&buffer, &data.as_slice(), Some(&observe))
        .unwrap();
    assert_eq!(seen.load(Ordering::Relaxed), data.len() as u64);
    let mut back = vec![0u8; data.len()];
    buffer.read(0, &mut back).unwrap();
    assert_eq!(back, data);
    assert!(
        ring.pinned_slots() <= 4,
        "{} slots kept",
        ring.pinned_slots()
    );
    let longer = bytes(data.len() + 1, 6);
    assert!(ring.upload(&buffer, &longer.as_slice(), None).is_err());
}
