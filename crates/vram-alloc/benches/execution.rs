//! What each verified-execution mode adds to a request beside the engine's bare kernels, on a
//! GPU (`VRAM_TEST_GPU=1 cargo bench -p vram-alloc --features test-utils --bench execution`;
//! without a GPU it says so and exits 0). The engine's work is a 1024 × 1024 f32 GEMM on its own
//! high-priority stream reading the first 4 MiB of the sealed shard where it lies; shards of
//! 1 GiB and 16 GiB (sizes that do not fit the free VRAM are skipped). Medians of 20 requests.
#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    missing_docs,
    reason = "benchmark"
)]

use std::time::{Duration, Instant};

use vram_alloc::{EngineStream, ExecutionMode, VramManager, Weights};
use vram_cuda_sys::memory::DeviceBuffer;
use vram_cuda_sys::stream::{Stream, StreamPriority};
use vram_cuda_sys::testing::TestEngine;
use vram_types::VramConfig;

const N: u32 = 1024;
const REQUESTS: usize = 20;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::var("VRAM_TEST_GPU").map_or(true, |v| v != "1") {
        println!("execution bench skipped: needs a GPU (VRAM_TEST_GPU=1)");
        return;
    }
    let manager = VramManager::builder()
        .config(VramConfig {
            max_model_bytes: u64::MAX,
            ..VramConfig::default()
        })
        .build()
        .unwrap();
    let device = vram_cuda_sys::Device::open(0).unwrap();
    let engine = TestEngine::new(&device).unwrap();
    let stream = Stream::new(&device, StreamPriority::Highest).unwrap();
    let len = (N * N) as usize * 4;
    let b = DeviceBuffer::alloc(&device, len).unwrap();
    b.write(0, &vec![0u8; len]).unwrap();
    let c = DeviceBuffer::alloc(&device, len).unwrap();
    println!("| shard | bare kernels | Before | BeforeAndAfterOn | Pipelined |");
    println!("|---|---|---|---|---|");
    for gib in [1usize, 16] {
        let bytes = gib << 30;
        if manager.available_vram_on(0).unwrap() < bytes + (1 << 30) {
            println!("| {gib} GiB | skipped: does not fit the free VRAM | | | |");
            continue;
        }
        let data = vec![0x5au8; bytes];
        let shard = manager.seal_model(&data, 0).unwrap();
        drop(data);
        let on = EngineStream::of(&stream);
        let gemm = |w: &Weights<'_>| {
            engine
                .queue_sgemm(&stream, (w.device_buffer().unwrap(), &b, &c), N)
                .unwrap();
        };
        let time = |f: &dyn Fn()| {
            f(); // warm-up
            median(
                (0..REQUESTS)
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        stream.synchronize().unwrap();
                        t.elapsed()
                    })
                    .collect(),
            )
        };
        // The kernels alone, the weights lent once for all of them.
        let kernels = manager
            .execute(&shard, ExecutionMode::Before, |w| {
                gemm(w);
                stream.synchronize().unwrap();
                median(
                    (0..REQUESTS)
                        .map(|_| {
                            let t = Instant::now();
                            gemm(w);
                            stream.synchronize().unwrap();
                            t.elapsed()
                        })
                        .collect(),
                )
            })
            .unwrap();
        let mode = |m: ExecutionMode<'_>| time(&|| manager.execute(&shard, m, gemm).unwrap());
        let before = mode(ExecutionMode::Before);
        let after = mode(ExecutionMode::BeforeAndAfterOn(on));
        let pipelined = mode(ExecutionMode::Pipelined(on));
        let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3);
        let added = |d: Duration| format!("{} (+{})", ms(d), ms(d.saturating_sub(kernels)));
        println!(
            "| {gib} GiB | {} | {} | {} | {} |",
            ms(kernels),
            added(before),
            added(after),
            added(pipelined)
        );
    }
}
