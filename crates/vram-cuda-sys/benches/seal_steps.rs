//! Where a small seal's time goes: each step the CUDA backend takes to seal and verify a shard,
//! timed alone (median of 50) at 1 B (the fixed costs), 1 MiB and 256 MiB, beside the naive path (one pageable copy and
//! a single-thread SHA-256). `docs/perf.md` records the table.
//!
//! `cargo bench -p vram-cuda-sys --bench seal_steps` on a GPU machine; without one it says so.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_precision_loss,
    missing_docs,
    reason = "benchmark"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use vram_cuda_sys::Device;
use vram_cuda_sys::memory::DeviceBuffer;
use vram_cuda_sys::resident::Resident;
use vram_cuda_sys::staging_ring::StagingRing;
use vram_cuda_sys::tree_digest::{GpuDigest, TreeDigestEngine};
use vram_types::{DigestAlgorithm, GpuShare, LeafSize};

const MIB: usize = 1 << 20;

fn median(mut f: impl FnMut()) -> Duration {
    f();
    let mut t: Vec<Duration> = (0..50)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[t.len() / 2]
}

fn main() {
    let Ok(device) = Device::open(0) else {
        println!("seal_steps: no GPU (the CUDA driver or a device is missing); nothing measured");
        return;
    };
    let engine = TreeDigestEngine::new(&device).unwrap();
    let ring = StagingRing::with_defaults(&device);
    println!("| step | 1 B | 1 MiB | 256 MiB |\n|---|---|---|---|");
    let sizes = [1, MIB, 256 * MIB];
    let datas: Vec<Vec<u8>> = sizes.iter().map(|n| vec![0x5a; *n]).collect();
    let buffers: Vec<Arc<DeviceBuffer>> = datas
        .iter()
        .map(|d| {
            let b = DeviceBuffer::alloc(&device, d.len()).unwrap();
            ring.upload(&b, &d.as_slice(), None).unwrap();
            Arc::new(b)
        })
        .collect();
    let residents: Vec<Resident> = buffers
        .iter()
        .map(|b| Resident::Owned(Arc::clone(b)))
        .collect();
    let row = |name: &str, f: &mut dyn FnMut(usize)| {
        let cells: Vec<String> = (0..sizes.len())
            .map(|i| format!("{:.1} us", median(|| f(i)).as_secs_f64() * 1e6))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    row("cuMemAlloc + cuMemFree", &mut |i| {
        DeviceBuffer::alloc(&device, sizes[i])
            .unwrap()
            .free()
            .unwrap();
    });
    row("staging-ring upload", &mut |i| {
        ring.upload(&buffers[i], &datas[i].as_slice(), None)
            .unwrap();
    });
    row("pageable copy back (cuMemcpyDtoH)", &mut |i| {
        let mut out = vec![0u8; sizes[i]];
        buffers[i].read(0, &mut out).unwrap();
    });
    row("staging-ring read back (pinned slot)", &mut |i| {
        let mut out = vec![0u8; sizes[i]];
        ring.download(&residents[i], 0, &mut out).unwrap();
    });
    row("single-thread SHA-256 on the host", &mut |i| {
        std::hint::black_box(Sha256::digest(&datas[i]));
    });
    row("host tree digest (64 KiB leaves, parallel)", &mut |i| {
        std::hint::black_box(vram_seal::digest::digest(
            &datas[i],
            DigestAlgorithm::Sha256Tree(LeafSize::DEFAULT),
        ));
    });
    row("GPU BLAKE3 (whole GPU)", &mut |i| {
        engine
            .tree_root(&buffers[i], sizes[i], GpuDigest::Blake3, GpuShare::Full)
            .unwrap();
    });
    row("GPU SHA-256 tree, 64 KiB leaves", &mut |i| {
        engine
            .tree_root(
                &buffers[i],
                sizes[i],
                GpuDigest::Sha256Tree(LeafSize::DEFAULT),
                GpuShare::Full,
            )
            .unwrap();
    });
    row("memory pool trim", &mut |_| {
        device.trim_memory_pool().unwrap()
    });
}
