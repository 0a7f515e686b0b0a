//! GPU tests of the step lane (`tree_digest::StepLane`): digests spread over many small steps,
//! each queued after an engine stream's work, equal to the one-launch digest of the same ranges
//! for both algorithms; jobs of many ranges, a range longer than a slot, and budgets from one
//! launch unit to a whole job.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::sync::Arc;

use common::{KIB, MIB, bytes, device, upload};
use vram_cuda_sys::resident::{ForeignRange, Resident};
use vram_cuda_sys::staging_ring::StagingRing;
use vram_cuda_sys::stream::{EngineStream, Stream, StreamPriority};
use vram_cuda_sys::tree_digest::{GpuDigest, STEP_JOB_LEAVES, StepLane, TreeDigestEngine};
use vram_types::{GpuShare, LeafSize};

/// Steps the lane over `ranges` (one job, or one job per range when they do not fit one) with
/// `budget` bytes a step until every job is collected; returns the roots in range order.
fn stepped(
    lane: &mut StepLane,
    ranges: &[(Resident, usize)],
    budget: u64,
    engine: &Stream,
) -> Vec<[u8; 32]> {
    let lens: Vec<usize> = ranges.iter().map(|(_, l)| *l).collect();
    let jobs: Vec<Vec<(Resident, usize)>> = if lane.fits(&lens) {
        vec![ranges.to_vec()]
    } else {
        ranges.iter().map(|r| vec![r.clone()]).collect()
    };
    let mut roots: Vec<Option<Vec<[u8; 32]>>> = vec![None; jobs.len()];
    let mut next = 0usize;
    let mut steps = 0u64;
    while roots.iter().any(Option::is_none) {
        lane.begin(Some(EngineStream::of(engine))).unwrap();
        while next < jobs.len() && lane.can_start() {
            lane.start(next as u64, &jobs[next]).unwrap();
            next += 1;
        }
        lane.advance(budget).unwrap();
        lane.end().unwrap();
        for (tag, r) in lane.collect().unwrap() {
            roots[tag as usize] = Some(r);
        }
        steps += 1;
        assert!(steps < 1_000_000, "the lane never finished");
        if steps.is_multiple_of(64) {
            engine.synchronize().unwrap();
        }
    }
    let measured = lane.measured().unwrap();
    assert!(
        measured.iter().all(|(b, _)| *b > 0),
        "a measured step with no bytes"
    );
    roots.into_iter().flat_map(Option::unwrap).collect()
}

#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn stepped_digests_equal_the_one_launch_digest_for_both_algorithms() {
    let device = device();
    let engine = Arc::new(TreeDigestEngine::new(&device).unwrap());
    let ring = StagingRing::with_defaults(&device);
    let lens = [
        1,
        63,
        1024,
        1025,
        4096 + 1,
        65536,
        65536 * 3 + 7,
        2 * MIB + 5,
        13 * KIB,
        5,
    ];
    let datas: Vec<Vec<u8>> = lens
        .iter()
        .enumerate()
        .map(|(i, n)| bytes(*n, 7 + i as u64))
        .collect();
    let ranges: Vec<(Resident, usize)> = datas
        .iter()
        .map(|d| {
            let range = ForeignRange::leak(upload(&device, &ring, d));
            (Resident::foreign(&device, range).unwrap(), d.len())
        })
        .collect();
    let engine_stream = Stream::new(&device, StreamPriority::Highest).unwrap();
    for digest in [
        GpuDigest::Blake3,
        GpuDigest::Sha256Tree(LeafSize::new(4096).unwrap()),
        GpuDigest::Sha256Tree(LeafSize::DEFAULT),
    ] {
        let want = engine
            .tree_roots_of(&ranges, digest, GpuShare::Full, None)
            .unwrap();
        for budget in [1, 64 * KIB as u64, 512 * KIB as u64, 1 << 40] {
            let mut lane = StepLane::new(Arc::clone(&engine), digest).unwrap();
            let got = stepped(&mut lane, &ranges, budget, &engine_stream);
            assert_eq!(got, want, "{digest:?}, budget {budget}");
        }
    }
}

#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn a_range_longer_than_a_slot_is_a_job_of_its_own_and_a_flip_shows() {
    let device = device();
    let engine = Arc::new(TreeDigestEngine::new(&device).unwrap());
    let ring = StagingRing::with_defaults(&device);
    // More BLAKE3 chunks than a slot's scratch holds.
    let n = (STEP_JOB_LEAVES as usize + 3) * KIB;
    let mut data = bytes(n, 99);
    let buffer = upload(&device, &ring, &data);
    let range = ForeignRange::leak(buffer);
    let ranges = vec![(Resident::foreign(&device, range).unwrap(), n)];
    let engine_stream = Stream::new(&device, StreamPriority::Highest).unwrap();
    for digest in [GpuDigest::Blake3, GpuDigest::Sha256Tree(LeafSize::DEFAULT)] {
        let want = engine
            .tree_roots_of(&ranges, digest, GpuShare::Full, None)
            .unwrap();
        let mut lane = StepLane::new(Arc::clone(&engine), digest).unwrap();
        assert_eq!(
            stepped(&mut lane, &ranges, 64 * MIB as u64, &engine_stream),
            want,
            "{digest:?}"
        );
    }
    // One byte changed: the stepped digest differs.
    data[n / 2] ^= 1;
    let changed = upload(&device, &ring, &data);
    let ranges2 = vec![(
        Resident::foreign(&device, ForeignRange::leak(changed)).unwrap(),
        n,
    )];
    let mut lane = StepLane::new(Arc::clone(&engine), GpuDigest::Blake3).unwrap();
    let a = stepped(&mut lane, &ranges, 64 * MIB as u64, &engine_stream);
    let b = stepped(&mut lane, &ranges2, 64 * MIB as u64, &engine_stream);
    assert_ne!(a, b);
    let drained = lane.drain().unwrap();
    assert!(drained.is_empty());
}
