//! The host side of a digest with no manager (`RangeDigester::digest_model`), on a GPU
//! (`VRAM_TEST_GPU=1 cargo bench -p vram-alloc --features test-utils --bench digester`; without a
//! GPU it says so and exits 0): N ranges of 1 KiB, so that the GPU's share is a few
//! microseconds and the time is the call's per-range cost (taking, checking and tabling each
//! range, the model digest over the entries). Each range its own allocation (the pointer check
//! asks the driver about each), then all N in one allocation. Medians of 21 calls.
#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    missing_docs,
    reason = "benchmark"
)]

use std::time::{Duration, Instant};

use vram_alloc::{EngineTensor, ForeignRange, RangeDigester};
use vram_cuda_sys::memory::DeviceBuffer;
use vram_types::DigestAlgorithm;

const RUNS: usize = 21;

fn median(mut f: impl FnMut() -> Duration) -> Duration {
    let mut v: Vec<Duration> = (0..RUNS).map(|_| f()).collect();
    v.sort();
    v[v.len() / 2]
}

fn tensors(ranges: impl Iterator<Item = ForeignRange>) -> Vec<EngineTensor> {
    ranges
        .enumerate()
        .map(|(i, range)| EngineTensor {
            name: format!("model.layers.{i}.weight"),
            dtype: "BF16".into(),
            shape: vec![512],
            range,
        })
        .collect()
}

fn main() {
    if std::env::var("VRAM_TEST_GPU").map_or(true, |v| v != "1") {
        println!("digester bench skipped: needs a GPU (VRAM_TEST_GPU=1)");
        return;
    }
    let device = vram_cuda_sys::Device::open(0).unwrap();
    let digester = RangeDigester::cuda().unwrap();
    println!("| ranges of 1 KiB | allocations | digest_model | per range | digest only |");
    println!("|---|---|---|---|---|");
    for n in [300usize, 1000] {
        let separate = tensors(
            (0..n).map(|_| ForeignRange::leak(DeviceBuffer::alloc(&device, 1024).unwrap())),
        );
        let one = DeviceBuffer::alloc(&device, n * 1024).unwrap();
        let base = one.lending_address().unwrap();
        let shared =
            tensors((0..n as u64).map(|i| ForeignRange::held_by_binding(0, base + i * 1024, 1024)));
        for (tensors, allocations) in [(&separate, n), (&shared, 1)] {
            let ranges: Vec<ForeignRange> = tensors.iter().map(|t| t.range).collect();
            let time = |f: &dyn Fn()| {
                f();
                median(|| {
                    let t = Instant::now();
                    f();
                    t.elapsed()
                })
            };
            let model = time(&|| {
                digester
                    .digest_model(tensors, DigestAlgorithm::Blake3, None)
                    .unwrap();
            });
            let digest = time(&|| {
                digester
                    .digest(&ranges, DigestAlgorithm::Blake3, None)
                    .unwrap();
            });
            println!(
                "| {n} | {allocations} | {:.3} ms | {:.2} us | {:.3} ms |",
                model.as_secs_f64() * 1e3,
                model.as_secs_f64() * 1e6 / n as f64,
                digest.as_secs_f64() * 1e3
            );
        }
        drop(one);
    }
}
