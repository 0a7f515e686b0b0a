//! What the GPU test suites of the digest kernels share: the device, seeded bytes, uploads.
#![allow(
    clippy::unwrap_used,
    clippy::arithmetic_side_effects,
    dead_code,
    reason = "tests; each suite uses a part"
)]

use std::sync::Arc;

use vram_cuda_sys::Device;
use vram_cuda_sys::memory::DeviceBuffer;
use vram_cuda_sys::staging_ring::StagingRing;

pub(crate) const KIB: usize = 1 << 10;
pub(crate) const MIB: usize = 1 << 20;
pub(crate) const GIB: usize = 1 << 30;

/// Device 0, after checking that GPU tests were asked for.
pub(crate) fn device() -> Arc<Device> {
    assert!(
        std::env::var("VRAM_TEST_GPU").is_ok_and(|v| v == "1"),
        "needs a GPU: set VRAM_TEST_GPU=1"
    );
    Device::open(0).unwrap()
}

/// Seeded pseudo-random bytes (xorshift64*).
pub(crate) fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A buffer holding `data` (at least 16 bytes, so that an empty shard has memory to point at).
pub(crate) fn upload(device: &Arc<Device>, ring: &StagingRing, data: &[u8]) -> DeviceBuffer {
    let buffer = DeviceBuffer::alloc(device, data.len().max(16)).unwrap();
    ring.upload(&buffer, &data, None).unwrap();
    buffer
}
