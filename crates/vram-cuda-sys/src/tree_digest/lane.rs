//! Host and device memory a digest passes through: a lane (a stream and the pinned memory its
//! tables and roots go through), the device scratch of one launch sequence, and the roots
//! read back in each algorithm's byte order.

use std::sync::Arc;

use cudarc::driver::result;
use cudarc::driver::sys::CUdeviceptr;

use super::{GpuDigest, TreeDigestEngine};
use crate::device::Device;
use crate::error::{CudaError, CudaStatus};
use crate::memory::PinnedBuffer;
use crate::stream::{Stream, StreamPriority};

/// A stream and the pinned memory its digests' tables and roots pass through. Never pageable
/// host memory: a copy between device memory and pageable memory is staged by the driver and
/// waits for (and holds back) work on the legacy default stream, PyTorch's (`docs/perf.md`:
/// an engine's tiny kernels 28x slower beside one 32-byte copy per digest).
pub(super) struct Lane {
    pub(super) stream: Arc<Stream>,
    pub(super) host: Option<PinnedBuffer>,
}

/// Smallest pinned memory a lane keeps: the tables and roots of a model of about 1,000 tensors.
pub(super) const LANE_HOST_BYTES: usize = 128 * 1024;

impl Lane {
    pub(super) fn new(device: &Arc<Device>) -> Result<Self, CudaError> {
        Ok(Self {
            stream: Arc::new(Stream::new(device, StreamPriority::Lowest)?),
            host: None,
        })
    }

    /// At least `bytes` of the lane's pinned memory (grown, rarely, when too small; the old
    /// memory's last copy finished before the lane was taken).
    pub(super) fn host(&mut self, bytes: usize) -> Result<&mut [u8], CudaError> {
        if self
            .host
            .as_ref()
            .is_none_or(|h| h.as_slice().len() < bytes)
        {
            let len = bytes
                .max(LANE_HOST_BYTES)
                .checked_next_power_of_two()
                .unwrap_or(bytes);
            self.host = Some(PinnedBuffer::alloc(self.stream.device(), len)?);
        }
        self.host
            .as_mut()
            .map(PinnedBuffer::as_mut_slice)
            .ok_or(CudaError::Unreachable(
                "a lane's pinned memory was just made",
            ))
    }

    /// The roots a finished digest left in the lane's pinned memory, as digest bytes.
    pub(super) fn roots(
        &self,
        digest: GpuDigest,
        at: std::ops::Range<usize>,
    ) -> Result<Vec<[u8; 32]>, CudaError> {
        self.host
            .as_ref()
            .map(PinnedBuffer::as_slice)
            .and_then(|h| h.get(at))
            .map(|words| root_bytes(digest, words))
            .ok_or(CudaError::Unreachable(
                "the roots lie in the lane's pinned memory",
            ))
    }
}

// SAFETY: the CUfunction handles are driver handles valid on every thread for the module's
// lifetime (the modules are owned by the engine); launches go through the driver, which is
// thread-safe, and each lane's stream is used under its mutex.
unsafe impl Send for TreeDigestEngine {}
// SAFETY: as above.
unsafe impl Sync for TreeDigestEngine {}

/// A stream-ordered device allocation for the leaf states (`cuMemAllocAsync`): neither its
/// allocation nor its release synchronises the device. Kept until the host has waited for the
/// digest: memory freed before a synchronisation goes back to the driver at it (the pool's
/// release threshold), and the next digest maps it again, ~65 us on an H200 (`docs/perf.md`).
pub(super) struct Scratch {
    pub(super) stream: Arc<Stream>,
    pub(super) ptr: CUdeviceptr,
}

impl Scratch {
    pub(super) fn alloc(stream: &Arc<Stream>, bytes: u64) -> Result<Self, CudaError> {
        let ordinal = stream.device().ordinal();
        let bytes = usize::try_from(bytes).map_err(|_| CudaError::InvalidArgument {
            what: "digest scratch",
            reason: format!("{bytes} bytes do not fit this host's address space"),
        })?;
        stream.device().bind()?;
        // SAFETY: the stream is live and belongs to the current context; the memory is only
        // used by work queued on this stream and freed on it.
        let ptr = unsafe { result::malloc_async(stream.raw(), bytes) }.map_err(|e| {
            CudaStatus::from(e).allocating(ordinal, "cuMemAllocAsync", bytes, || {
                stream.device().memory_info().map_or(0, |(free, _)| free)
            })
        })?;
        Ok(Self {
            stream: Arc::clone(stream),
            ptr,
        })
    }

    pub(super) fn at(&self, byte_offset: u64) -> u64 {
        self.ptr.saturating_add(byte_offset)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.stream.device().bind().is_ok() {
            // SAFETY: `ptr` came from `cuMemAllocAsync` on this stream and is freed once, after
            // all work queued before on the stream (stream order).
            let freed = unsafe { result::free_async(self.ptr, self.stream.raw()) };
            crate::error::report_release("digest scratch", self.stream.device().ordinal(), freed);
        }
    }
}

/// The roots as the digests' bytes: the kernels leave eight 32-bit words per root in device
/// (little-endian) order; SHA-256 writes each big-endian, BLAKE3 little-endian (as they lie).
pub(super) fn root_bytes(digest: GpuDigest, words: &[u8]) -> Vec<[u8; 32]> {
    words
        .chunks_exact(32)
        .map(|node| {
            let mut root = [0u8; 32];
            for (out, word) in root.chunks_exact_mut(4).zip(node.chunks_exact(4)) {
                let word = u32::from_le_bytes(word.try_into().unwrap_or_default());
                out.copy_from_slice(&match digest {
                    GpuDigest::Sha256Tree(_) => word.to_be_bytes(),
                    GpuDigest::Blake3 => word.to_le_bytes(),
                });
            }
            root
        })
        .collect()
}

/// Where the roots start in pinned memory that holds a range table first: after the table,
/// 16-byte aligned.
pub(super) fn roots_offset(table_bytes: u64) -> u64 {
    table_bytes.div_ceil(16).saturating_mul(16)
}
