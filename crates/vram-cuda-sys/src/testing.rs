//! Stand-in inference engines for tests and benchmarks (feature `test-utils` only): kernels that
//! compute with, or write into, device buffers on a stream of the caller's, behind calls that
//! check every size, so a test needs no `unsafe` to play an engine.

use std::sync::Arc;

use crate::device::Device;
use crate::error::CudaError;
use crate::memory::DeviceBuffer;
use crate::module::{KernelArg, Module};
use crate::stream::Stream;

/// PTX of `kernels/load_gemm.cu`: `sgemm_tiled(a, b, c, n)`, C = A · B for n × n f32 matrices.
const GEMM_PTX: &str = include_str!("../kernels/load_gemm.ptx");
/// Hand-written PTX: `xor_byte(ptr, offset, mask)`, `ptr[offset] ^= mask`.
const XOR_PTX: &str = include_str!("../tests/data/xor_byte.ptx");

/// A tiled f32 GEMM and a one-byte writer, loaded on one device.
pub struct TestEngine {
    device: Arc<Device>,
    gemm: Module,
    xor: Module,
}

crate::debug_without_pointers!(TestEngine {
    device: |e: &TestEngine| e.device.ordinal()
});

impl TestEngine {
    /// Loads the kernels on `device`.
    ///
    /// # Errors
    /// [`CudaError::Driver`] when the driver refuses the PTX.
    pub fn new(device: &Arc<Device>) -> Result<Self, CudaError> {
        Ok(Self {
            device: Arc::clone(device),
            gemm: Module::load_ptx(device, GEMM_PTX)?,
            xor: Module::load_ptx(device, XOR_PTX)?,
        })
    }

    /// Queues `c = a · b` on `stream` for `n × n` row-major f32 matrices (`n` a multiple of
    /// 64); returns without waiting.
    ///
    /// # Errors
    /// [`CudaError::InvalidArgument`] for an `n` that is 0 or not a multiple of 64, or a buffer
    /// shorter than `n · n · 4` bytes; [`CudaError::WrongDevice`]; [`CudaError::Driver`].
    pub fn queue_sgemm(
        &self,
        stream: &Stream,
        (a, b, c): (&DeviceBuffer, &DeviceBuffer, &DeviceBuffer),
        n: u32,
    ) -> Result<(), CudaError> {
        let bytes = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(n)?.checked_mul(4));
        let fits = |m: &DeviceBuffer| bytes.is_some_and(|b| m.len() >= b);
        if n == 0 || !n.is_multiple_of(64) || ![a, b, c].into_iter().all(fits) {
            return Err(CudaError::InvalidArgument {
                what: "sgemm",
                reason: format!("n = {n}: a multiple of 64 whose n·n f32 fit every buffer"),
            });
        }
        let args = [
            KernelArg::Buffer(a),
            KernelArg::Buffer(b),
            KernelArg::Buffer(c),
            KernelArg::U32(n),
        ];
        // SAFETY: `sgemm_tiled` takes (const float*, const float*, float*, u32) and reads and
        // writes n·n floats of each buffer, which hold at least that many (checked above); the
        // caller's borrows keep them alive while it synchronises the stream it owns.
        unsafe {
            self.gemm
                .launch_async(stream, "sgemm_tiled", (n / 64, n / 64), 256, &args)
        }
    }

    /// Queues `buffer[offset] ^= mask` on `stream` (a kernel that writes into weights).
    ///
    /// # Errors
    /// [`CudaError::OutOfRange`] for an offset outside the buffer; [`CudaError::WrongDevice`];
    /// [`CudaError::Driver`].
    pub fn queue_flip(
        &self,
        stream: &Stream,
        buffer: &DeviceBuffer,
        offset: usize,
        mask: u8,
    ) -> Result<(), CudaError> {
        if offset >= buffer.len() {
            return Err(CudaError::OutOfRange {
                device: self.device.ordinal(),
                operation: "xor_byte",
            });
        }
        let args = [
            KernelArg::Buffer(buffer),
            KernelArg::U64(u64::try_from(offset).unwrap_or(u64::MAX)),
            KernelArg::U32(u32::from(mask)),
        ];
        // SAFETY: `xor_byte` takes (u8*, u64, u32) and writes the one byte at `offset`, inside
        // the buffer (checked above), which the caller keeps alive while it waits for its stream.
        unsafe { self.xor.launch_async(stream, "xor_byte", (1, 1), 1, &args) }
    }
}
