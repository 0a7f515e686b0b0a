//! GPU figures of the digest kernels, printed as tables (`docs/perf.md` records them):
//!
//! 1. where the GPU digest overtakes the CPU read-back path, by shard size;
//! 2. kernel throughput by shard and leaf size, whole GPU and bounded share;
//! 3. upload throughput of the staging ring by copy threads and slot size;
//! 4. what verification costs a concurrent compute-bound workload: a GEMM loop on a
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

use rayon::prelude::*;
use vram_cuda_sys::Device;
use vram_cuda_sys::memory::DeviceBuffer;
use vram_cuda_sys::module::{KernelArg, Module};
use vram_cuda_sys::staging_ring::StagingRing;
use vram_cuda_sys::stream::{Stream, StreamPriority};
use vram_cuda_sys::tree_digest::{GpuDigest, TreeDigestEngine};
use vram_seal::digest::DigestHasher;
use vram_types::{DigestAlgorithm, FileSource, GpuShare, LeafSize};

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

/// The CUDA backend's CPU path for small shards: pageable chunked reads, leaves hashed in
/// parallel.
fn cpu_digest(buffer: &DeviceBuffer, n: usize, leaf: LeafSize) {
    let mut hasher = DigestHasher::new(DigestAlgorithm::Sha256Tree(leaf));
    let mut chunk = vec![0u8; n.min(16 * MIB)];
    let mut offset = 0;
    while offset < n {
        let k = (n - offset).min(chunk.len());
        buffer.read(offset, &mut chunk[..k]).unwrap();
        hasher.update_parallel(&chunk[..k]);
        offset += k;
    }
    std::hint::black_box(hasher.finalize());
}

fn crossover(device: &Arc<Device>, engine: &TreeDigestEngine, ring: &StagingRing) {
    println!("\n| shard | leaf | leaves | GPU kernel digest | CPU read-back digest |");
    println!("|---|---|---|---|---|");
    for (n, leaf) in [
        (MIB, 65536),
        (4 * MIB, 65536),
        (16 * MIB, 65536),
        (64 * MIB, 65536),
        (16 * MIB, MIB),
        (256 * MIB, MIB),
        (MIB, 4096),
    ] {
        let l = LeafSize::new(leaf as u64).unwrap();
        let buffer = filled(device, ring, n);
        let gpu = best_of(10, || {
            engine
                .tree_root(&buffer, n, GpuDigest::Sha256Tree(l), GpuShare::Full)
                .unwrap()
        });
        let cpu = best_of(10, || cpu_digest(&buffer, n, l));
        println!(
            "| {} MiB | {} KiB | {} | {:.3} ms | {:.3} ms |",
            n / MIB,
            leaf / 1024,
            n / leaf,
            gpu.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3
        );
    }
}

/// Upload throughput of the staging ring by copy threads and slot size, from pageable memory
/// and from a file in the page cache (`/dev/shm`).
fn upload_table(device: &Arc<Device>, big: &DeviceBuffer, big_len: usize) {
    let mut data = vec![0u8; big_len];
    data.par_chunks_mut(MIB)
        .enumerate()
        .for_each(|(i, c)| c.fill(i as u8 ^ 0x5a));
    let file = std::path::Path::new("/dev/shm/vram-bench-upload.bin");
    let file_len = (8 * GIB).min(big_len);
    let file_ok = std::fs::write(file, &data[..file_len]).is_ok();
    println!(
        "\n| copy threads | slot | from memory GB/s ({} GiB) | from a cached file GB/s ({} GiB) |",
        big_len / GIB,
        file_len / GIB
    );
    println!("|---|---|---|---|");
    for threads in [4, 8, 12, 16] {
        for slot in [16 * MIB, 64 * MIB] {
            let ring = StagingRing::new(device, slot, 2 * threads, threads);
            ring.upload(big, &&data[..slot], None).unwrap(); // pins the slots
            let t = best_of(2, || ring.upload(big, &data.as_slice(), None).unwrap());
            let from_file = if file_ok {
                let source = FileSource::new(std::fs::File::open(file).unwrap()).unwrap();
                let f = best_of(2, || ring.upload(big, &source, None).unwrap());
                format!("{:.1}", file_len as f64 / f.as_secs_f64() / 1e9)
            } else {
                "-".into()
            };
            println!(
                "| {threads} | {} MiB | {:.1} | {from_file} |",
                slot / MIB,
                big_len as f64 / t.as_secs_f64() / 1e9
            );
        }
    }
    let _ = std::fs::remove_file(file);
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
            let t = best_of(3, || {
                engine
                    .tree_root(big, n, GpuDigest::Sha256Tree(l), share)
                    .unwrap()
            });
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

fn interference(device: &Arc<Device>, gemm: &Gemm, big: &DeviceBuffer, big_len: usize) {
    gemm.run(5);
    let t = Instant::now();
    gemm.run(20);
    let reps = ((20.0 * 1.5 / t.elapsed().as_secs_f64()) as u32).max(20); // about 1.5 s a run
    let leaf = LeafSize::DEFAULT;
    let shares = [
        ("whole-GPU verify loop", GpuShare::Full, 0),
        (
            "bounded 1/8, 16 KiB slices",
            GpuShare::bounded(0.125).unwrap(),
            16384,
        ),
        (
            "bounded 1/16, 16 KiB slices",
            GpuShare::bounded(0.0625).unwrap(),
            16384,
        ),
        (
            "bounded 1/32, 16 KiB slices",
            GpuShare::bounded(1.0 / 32.0).unwrap(),
            16384,
        ),
        (
            "bounded 1/8, 4 KiB slices",
            GpuShare::bounded(0.125).unwrap(),
            4096,
        ),
        (
            "bounded 1/16, 4 KiB slices",
            GpuShare::bounded(0.0625).unwrap(),
            4096,
        ),
        (
            "bounded 1/32, 4 KiB slices",
            GpuShare::bounded(1.0 / 32.0).unwrap(),
            4096,
        ),
        (
            "bounded 1/16, 64 KiB slices",
            GpuShare::bounded(0.0625).unwrap(),
            65536,
        ),
    ];
    println!(
        "\n| GEMM loop (FP32 {GEMM_N}^3, high-priority stream) | GEMM TFLOP/s alone | GEMM TFLOP/s with | GEMM cost (median of 3, interleaved) | verify GB/s meanwhile |"
    );
    println!("|---|---|---|---|---|");
    for (label, share, slice) in shares {
        let engine = TreeDigestEngine::new(device)
            .unwrap()
            .with_bounded_slice_bytes(slice);
        let engine = &engine;
        let mut costs = Vec::new();
        let (mut alone_sum, mut with_sum, mut gbs_sum) = (0.0, 0.0, 0.0);
        for _ in 0..3 {
            let alone = gemm.run(reps);
            let stop = AtomicBool::new(false);
            let hashed = AtomicU64::new(0);
            let (with, elapsed) = std::thread::scope(|s| {
                let started = Instant::now();
                s.spawn(|| {
                    while !stop.load(Ordering::Acquire) {
                        engine
                            .tree_root(big, big_len, GpuDigest::Sha256Tree(leaf), share)
                            .unwrap();
                        hashed.fetch_add(big_len as u64, Ordering::Relaxed);
                    }
                });
                std::thread::sleep(Duration::from_millis(100));
                let rate = gemm.run(reps);
                stop.store(true, Ordering::Release);
                (rate, started.elapsed())
            });
            costs.push((alone / with - 1.0) * 100.0);
            alone_sum += alone;
            with_sum += with;
            gbs_sum += hashed.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64() / 1e9;
        }
        costs.sort_by(f64::total_cmp);
        println!(
            "| + {label} | {:.1} | {:.1} | {:.1} % ({:.1} .. {:.1}) | {:.0} |",
            alone_sum / 3.0,
            with_sum / 3.0,
            costs[1],
            costs[0],
            costs[2],
            gbs_sum / 3.0
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
    upload_table(&device, &big, big_len);
    let gemm = Gemm::new(&device, &ring);
    interference(&device, &gemm, &big, big_len);
}
