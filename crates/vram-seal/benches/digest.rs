//! Digest and seal speed: flat SHA-256 (the baseline), the tree digest on one thread and in
//! parallel, and HMAC seal and verify. Figures go to `docs/perf.md`.
//!
//! `cargo bench -p vram-seal --bench digest` (set `VRAM_BENCH_MIB` to change the 64 MiB input).
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    reason = "bench"
)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vram_seal::SealKey;
use vram_seal::digest::{digest, digest_serial};
use vram_seal::signature::{compute_signature, verify_signature};
use vram_types::{DigestAlgorithm, SealedFields};

fn input() -> Vec<u8> {
    let mib: usize = std::env::var("VRAM_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    (0..mib << 20).map(|i| (i % 251) as u8).collect()
}

fn digests(c: &mut Criterion) {
    let data = input();
    let tree = DigestAlgorithm::default();
    let mut g = c.benchmark_group("digest");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("flat_sha256_1_thread", |b| {
        b.iter(|| digest_serial(black_box(&data), DigestAlgorithm::Sha256))
    });
    g.bench_function("tree_64k_1_thread", |b| {
        b.iter(|| digest_serial(black_box(&data), tree))
    });
    g.bench_function("tree_64k_parallel", |b| {
        b.iter(|| digest(black_box(&data), tree))
    });
    g.finish();
}

fn seals(c: &mut Criterion) {
    let key = SealKey::derive(b"bench-worker-token-0123456789", "bench-worker").unwrap();
    let fields = SealedFields {
        shard_id: "llama-3-70b:tp@3".into(),
        gpu_device: 3,
        vram_bytes: 17_179_869_184,
        digest_algorithm: DigestAlgorithm::default(),
        digest: "5a2513f1e8da90c9b3aec147a7716313394b631b089d0151112199ef6da38fef".into(),
        sealed_at: Some(SystemTime::now()),
        shard_index: Some(3),
        total_shards: Some(8),
    };
    let sig = compute_signature(&key, &fields).unwrap();
    let mut g = c.benchmark_group("seal");
    g.bench_function("hmac_seal", |b| {
        b.iter(|| compute_signature(&key, black_box(&fields)))
    });
    g.bench_function("hmac_verify", |b| {
        b.iter(|| verify_signature(&key, black_box(&fields), black_box(&sig)))
    });
    g.finish();
}

criterion_group!(benches, digests, seals);
criterion_main!(benches);
