//! Verifying a model sealed in place against one shard of the same total size, on a GPU
//! (`VRAM_TEST_GPU=1 cargo bench -p vram-alloc --features test-utils --bench model`; without a
//! GPU it says so and exits 0). The model is 300 tensors of uneven sizes (0.2x to 1.8x the mean)
//! totalling 14 GiB, each its own allocation, as an engine holds them; the baseline is one
//! 14 GiB range, and the tensors verified one by one. Medians of 10 verifications.
#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    missing_docs,
    reason = "benchmark"
)]

use std::time::{Duration, Instant};

use vram_alloc::{EngineTensor, ForeignRange, SealOptions, VramManager};
use vram_cuda_sys::memory::DeviceBuffer;
use vram_types::VramConfig;

const TENSORS: usize = 300;
const TOTAL: usize = 14 << 30;
const RUNS: usize = 10;

fn median(mut f: impl FnMut() -> Duration, runs: usize) -> Duration {
    let mut v: Vec<Duration> = (0..runs).map(|_| f()).collect();
    v.sort();
    v[v.len() / 2]
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn main() {
    if std::env::var("VRAM_TEST_GPU").map_or(true, |v| v != "1") {
        println!("model bench skipped: needs a GPU (VRAM_TEST_GPU=1)");
        return;
    }
    let device = vram_cuda_sys::Device::open(0).unwrap();
    let (free, _) = device.memory_info().unwrap();
    if free < 2 * TOTAL + (2 << 30) {
        println!(
            "model bench skipped: needs {} GiB free",
            ((2 * TOTAL) >> 30) + 2
        );
        return;
    }
    let manager = VramManager::builder()
        .config(VramConfig {
            max_model_bytes: u64::MAX,
            ..VramConfig::default()
        })
        .build()
        .unwrap();
    // Uneven sizes, deterministic: weights 0.2..1.8 of the mean, multiples of 256 bytes.
    let weights: Vec<f64> = (0..TENSORS)
        .map(|i| 0.2 + 1.6 * ((i * 7919) % TENSORS) as f64 / TENSORS as f64)
        .collect();
    let sum: f64 = weights.iter().sum();
    let tensors: Vec<EngineTensor> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let len = ((w / sum * TOTAL as f64) as usize) / 256 * 256;
            // Contents do not matter for timing: what was sealed is what is verified.
            let buffer = DeviceBuffer::alloc(&device, len).unwrap();
            EngineTensor {
                name: format!("model.layers.{i}.weight"),
                dtype: "BF16".into(),
                shape: vec![len as u64 / 2],
                range: ForeignRange::leak(buffer),
            }
        })
        .collect();
    let total: usize = tensors.iter().map(|t| t.range.len()).sum();
    let mut model = None;
    let seal_model = timed(|| {
        model = Some(manager.seal_model_in_place("bench", tensors, None).unwrap());
    });
    let model = model.unwrap();
    let one = ForeignRange::leak(DeviceBuffer::alloc(&device, total).unwrap());
    let mut shard = None;
    let seal_one = timed(|| {
        shard = Some(manager.seal_in_place(one, &SealOptions::new()).unwrap());
    });
    let shard = shard.unwrap();
    manager.verify_model(&model).unwrap();
    manager.verify_sealed(&shard).unwrap();
    let verify_model = median(|| timed(|| manager.verify_model(&model).unwrap()), RUNS);
    let verify_one = median(|| timed(|| manager.verify_sealed(&shard).unwrap()), RUNS);
    let one_by_one = median(
        || {
            timed(|| {
                for t in model.tensors() {
                    manager.verify_sealed(t.shard()).unwrap();
                }
            })
        },
        3,
    );
    let gb = |d: Duration| total as f64 / d.as_secs_f64() / 1e9;
    println!(
        "{TENSORS} tensors, {:.2} GiB in all ({}):",
        total as f64 / f64::from(1u32 << 30),
        manager
            .device_facts(0)
            .map_or_else(|_| "GPU".into(), |f| f.name)
    );
    println!("| what | time | GB/s |");
    println!("|---|---|---|");
    println!(
        "| verify_model (one launch sequence) | {:.2} ms | {:.0} |",
        verify_model.as_secs_f64() * 1e3,
        gb(verify_model)
    );
    println!(
        "| verify_sealed, one range of the same size | {:.2} ms | {:.0} |",
        verify_one.as_secs_f64() * 1e3,
        gb(verify_one)
    );
    println!(
        "| verify_sealed of each tensor in turn | {:.2} ms | {:.0} |",
        one_by_one.as_secs_f64() * 1e3,
        gb(one_by_one)
    );
    println!(
        "| seal_model_in_place | {:.2} ms | |",
        seal_model.as_secs_f64() * 1e3
    );
    println!(
        "| seal_in_place, one range | {:.2} ms | |",
        seal_one.as_secs_f64() * 1e3
    );
    println!(
        "model / one range: {:.3}x (target at most 1.2x)",
        verify_model.as_secs_f64() / verify_one.as_secs_f64()
    );
}
