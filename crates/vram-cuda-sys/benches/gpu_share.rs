//! GPU figures of the digest kernels, printed as tables (`docs/perf.md` records them):
//!
//! 1. where the GPU digest overtakes the CPU read-back path, by shard size;
//! 2. kernel throughput by shard and leaf size, whole GPU and bounded share;
//! 3. what verification costs a concurrent compute-bound workload: a GEMM loop on a
//!    high-priority stream of the same process, alone, next to a whole-GPU verify loop, and next
//!    to bounded-share verify loops.
//!
//! `cargo bench -p vram-cuda-sys --bench gpu_share` on a GPU machine; without a GPU it says so.
#![allow(
    unsafe_code,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    missing_docs,
    reason = "benchmark"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vram_cuda_sys::Device;
use vram_cuda_sys::memory::{DeviceBuffer, Staging};
use vram_cuda_sys::module::{KernelArg, Module};
use vram_cuda_sys::staging_ring::StagingRing;
use vram_cuda_sys::stream::{Stream, StreamPriority};
use vram_cuda_sys::tree_digest::TreeDigestEngine;
use vram_seal::digest::DigestHasher;
use vram_types::{DigestAlgorithm, GpuShare, LeafSize};

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
const GEMM_PTX: &str = include_str!("../kernels/load_gemm.ptx");
const GEMM_N: u32 = 4096;

fn best_of<T>(reps: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

fn filled(device: &Arc<Device>, ring: &StagingRing, n: usize) -> DeviceBuffer {
    let mut data = vec![0u8; n];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let buffer = DeviceBuffer::alloc(device, n).unwrap();
    ring.upload(&buffer, &data.as_slice(), None).unwrap();
    buffer
}

fn cpu_digest(buffer: &DeviceBuffer, n: usize, leaf: LeafSize) {
    let mut staging = Staging::new(buffer.device(), n).unwrap();
    let mut hasher = DigestHasher::new(DigestAlgorithm::Sha256Tree(leaf));
    buffer
        .read_back(n, &mut staging, |c| {
            hasher.update_parallel(c);
            Ok(())
        })
        .unwrap();
    std::hint::black_box(hasher.finalize());
}

fn crossover(device: &Arc<Device>, engine: &TreeDigestEngine, ring: &StagingRing) {
    println!("\n| shard | GPU kernel digest | CPU read-back digest |");
    println!("|---|---|---|");
    let leaf = LeafSize::DEFAULT;
    for n in [MIB, 4 * MIB, 8 * MIB, 16 * MIB, 64 * MIB, 256 * MIB] {
        let buffer = filled(device, ring, n);
        let gpu = best_of(10, || {
            engine.tree_root(&buffer, n, leaf, GpuShare::Full).unwrap()
        });
        let cpu = best_of(10, || cpu_digest(&buffer, n, leaf));
        println!(
            "| {} MiB | {:.3} ms | {:.3} ms |",
            n / MIB,
            gpu.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3
        );
    }
}

fn kernel_table(engine: &TreeDigestEngine, big: &DeviceBuffer, big_len: usize) {
    println!("\n| shard | leaf | share | GB/s (best of 3) |");
    println!("|---|---|---|---|");
    for (n, leaf) in [
        (big_len, 64 * 1024),
        (big_len, 256 * 1024),
        (big_len, MIB),
        (4 * GIB, MIB),
        (4 * GIB, 64 * 1024),
        (GIB, 64 * 1024),
    ] {
        let l = LeafSize::new(leaf as u64).unwrap();
        for share in [GpuShare::Full, GpuShare::BACKGROUND] {
            if share != GpuShare::Full && n != big_len {
                continue;
            }
            let t = best_of(3, || engine.tree_root(big, n, l, share).unwrap());
            println!(
                "| {} MiB | {} KiB | {share:?} | {:.0} |",
                n / MIB,
                leaf / 1024,
                n as f64 / t.as_secs_f64() / 1e9
            );
        }
    }
}

struct Gemm {
    module: Module,
    stream: Stream,
    a: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
}

impl Gemm {
    fn new(device: &Arc<Device>, ring: &StagingRing) -> Self {
        let bytes = (GEMM_N as usize).pow(2) * 4;
        let ones: Vec<u8> = (0..bytes / 4)
            .flat_map(|i| ((i % 7) as f32 * 0.25).to_le_bytes())
            .collect();
        let a = DeviceBuffer::alloc(device, bytes).unwrap();
        let b = DeviceBuffer::alloc(device, bytes).unwrap();
        ring.upload(&a, &ones.as_slice(), None).unwrap();
        ring.upload(&b, &ones.as_slice(), None).unwrap();
        Self {
            module: Module::load_ptx(device, GEMM_PTX).unwrap(),
            stream: Stream::new(device, StreamPriority::Highest).unwrap(),
            c: DeviceBuffer::alloc(device, bytes).unwrap(),
            a,
            b,
        }
    }

    /// TFLOP/s over `reps` GEMMs queued back to back.
    fn run(&self, reps: u32) -> f64 {
        let t = Instant::now();
        for _ in 0..reps {
            let args = [
                KernelArg::Buffer(&self.a),
                KernelArg::Buffer(&self.b),
                KernelArg::Buffer(&self.c),
                KernelArg::U32(GEMM_N),
            ];
            // SAFETY: sgemm_tiled(const float*, const float*, float*, u32) over n x n buffers
            // that live until the stream is synchronised below.
            unsafe {
                self.module.launch_async(
                    &self.stream,
                    "sgemm_tiled",
                    (GEMM_N / 64, GEMM_N / 64),
                    256,
                    &args,
                )
            }
            .unwrap();
        }
        self.stream.synchronize().unwrap();
        f64::from(reps) * 2.0 * f64::from(GEMM_N).powi(3) / t.elapsed().as_secs_f64() / 1e12
    }
}

fn interference(engine: &TreeDigestEngine, gemm: &Gemm, big: &DeviceBuffer, big_len: usize) {
    println!(
        "\n| GEMM loop (FP32 {GEMM_N}^3, high-priority stream) | GEMM TFLOP/s | GEMM cost | verify GB/s meanwhile |"
    );
    println!("|---|---|---|---|");
    gemm.run(5);
    let t = Instant::now();
    let alone_rate = gemm.run(20);
    let reps = ((20.0 * 2.0 / t.elapsed().as_secs_f64()) as u32).max(20); // about 2 s
    let alone = gemm.run(reps).max(alone_rate);
    println!("| alone | {alone:.1} | - | - |");
    let leaf = LeafSize::DEFAULT;
    let shares = [
        ("whole-GPU verify loop", GpuShare::Full),
        (
            "bounded verify, 1/8 of the SMs",
            GpuShare::bounded(0.125).unwrap(),
        ),
        ("bounded verify, 1/16 (default)", GpuShare::BACKGROUND),
        (
            "bounded verify, 1/32",
            GpuShare::bounded(1.0 / 32.0).unwrap(),
        ),
    ];
    for (label, share) in shares {
        let stop = AtomicBool::new(false);
        let hashed = AtomicU64::new(0);
        let (rate, elapsed) = std::thread::scope(|s| {
            let started = Instant::now();
            s.spawn(|| {
                while !stop.load(Ordering::Acquire) {
                    engine.tree_root(big, big_len, leaf, share).unwrap();
                    hashed.fetch_add(big_len as u64, Ordering::Relaxed);
                }
            });
            std::thread::sleep(Duration::from_millis(200));
            let rate = gemm.run(reps);
            stop.store(true, Ordering::Release);
            (rate, started.elapsed())
        });
        let gbs = hashed.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64() / 1e9;
        println!(
            "| + {label} | {rate:.1} | {:.1} % | {gbs:.0} |",
            (alone / rate - 1.0) * 100.0
        );
    }
}

fn main() {
    let device = match Device::open(0) {
        Ok(d) => d,
        Err(e) => {
            println!("gpu_share: no GPU ({e}); nothing measured");
            return;
        }
    };
    let engine = TreeDigestEngine::new(&device).unwrap();
    let ring = StagingRing::with_defaults(&device);
    let (free, _) = device.memory_info().unwrap();
    let big_len = (16 * GIB).min(free.saturating_sub(4 * GIB) / GIB * GIB);
    println!(
        "device 0: {} SMs, {} GiB free; shards of up to {} GiB",
        device.multiprocessor_count().unwrap(),
        free / GIB,
        big_len / GIB
    );
    crossover(&device, &engine, &ring);
    let big = filled(&device, &ring, big_len);
    kernel_table(&engine, &big, big_len);
    let gemm = Gemm::new(&device, &ring);
    interference(&engine, &gemm, &big, big_len);
}
