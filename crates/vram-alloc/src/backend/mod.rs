//! What a GPU offers the manager, behind one crate-private trait: only this crate's backends
//! implement it, so no outside type can claim that host memory is VRAM. Buffers are named by
//! opaque ids; device pointers never leave a backend. Public here: the [`MockBackend`] a
//! manager can be built on (tests, demos, machines without a GPU by explicit choice).

mod cuda;
mod mock;
mod resident_bytes;
mod steps;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vram_seal::ShardDigest;
use vram_types::{
    AllocationFacts, BackendKind, DeviceFacts, DigestAlgorithm, GpuShare, ShardSource, VramError,
};

use crate::sync::lock;

pub(crate) use cuda::CudaBackend;
pub use mock::{HostTensor, MockBackend, MockBuilder};
pub(crate) use resident_bytes::ResidentBytes;
pub(crate) use steps::{StepDigests, gpu_digest as gpu_digest_of};
pub(crate) use vram_cuda_sys::tree_digest::job_fits;

/// Upload chunk size: the CUDA backend's staging slot, a multiple of every tree leaf size.
pub(crate) const UPLOAD_CHUNK_BYTES: usize = vram_cuda_sys::staging_ring::DEFAULT_SLOT_BYTES;

/// What each uploaded chunk is shown to: `(offset, bytes)`; one definition, the staging ring's.
pub(crate) use vram_cuda_sys::staging_ring::ChunkObserver;

/// An engine's memory, named for sealing in place.
pub(crate) use vram_cuda_sys::resident::ForeignRange;
/// An inference engine's stream, to order a digest after (or before) its work.
pub(crate) use vram_cuda_sys::stream::EngineStream;

/// When a digest reads the resident bytes, relative to an engine's work.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DigestOrder<'e> {
    /// Now (work on other streams is not waited for).
    Now,
    /// Once the work queued so far on the engine's stream is done.
    After(EngineStream<'e>),
}

/// A buffer lent for one execution ([`Backend::lend`]).
pub(crate) trait LentMemory: Send + Sync {
    /// The address of its first byte.
    fn address(&self) -> u64;

    /// Shows the bytes to `read` when they are host memory (the mock); false otherwise.
    fn read_host(&self, read: &mut dyn FnMut(&[u8])) -> bool;

    /// The device allocation, on the CUDA backend (test engines launch kernels on it).
    #[cfg(feature = "test-utils")]
    fn device_buffer(&self) -> Option<&vram_cuda_sys::memory::DeviceBuffer>;
}

/// Digests queued ahead of an engine's work ([`Backend::digest_before`]).
pub(crate) trait PendingDigest: Send {
    /// Waits for the digests, one per buffer in the order given.
    ///
    /// # Errors
    /// CUDA errors of the digest.
    fn wait(self: Box<Self>) -> Result<Vec<ShardDigest>, VramError>;
}

/// Digests that were computed at once.
pub(crate) struct Ready(pub(crate) Vec<ShardDigest>);

impl PendingDigest for Ready {
    fn wait(self: Box<Self>) -> Result<Vec<ShardDigest>, VramError> {
        Ok(self.0)
    }
}

/// The one device a multi-buffer digest's buffers are on (a launch sequence runs on one).
///
/// # Errors
/// [`VramError::InvalidInput`] for buffers of several devices.
pub(crate) fn one_device(devices: impl IntoIterator<Item = u32>) -> Result<Option<u32>, VramError> {
    let mut devices = devices.into_iter();
    let first = devices.next();
    if let Some(d) = first
        && devices.any(|other| other != d)
    {
        return Err(VramError::invalid_input(
            "digest",
            "buffers of several devices in one digest",
        ));
    }
    Ok(first)
}

/// `cuMemAlloc`'s granularity: every allocation takes a multiple of 2 MiB of device memory.
pub(crate) const CUDA_ALLOCATION_GRANULARITY: usize = 2 * 1024 * 1024;

/// Opaque name of one device allocation inside a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct BufferId(u64);

/// Free and total memory of a device, a snapshot (other processes change it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryInfo {
    /// Free bytes.
    pub(crate) free: usize,
    /// Total bytes.
    pub(crate) total: usize,
}

/// A source of device memory: the CUDA driver or the mock.
pub(crate) trait Backend: Send + Sync + fmt::Debug {
    /// Which backend this is (recorded in attestations).
    fn kind(&self) -> BackendKind;

    /// Number of devices.
    fn device_count(&self) -> u32;

    /// Device attributes for the VRAM-only policy.
    ///
    /// # Errors
    /// [`VramError::InvalidDevice`] for an unknown device; CUDA errors on the real backend.
    fn device_facts(&self, device: u32) -> Result<DeviceFacts, VramError>;

    /// Free and total memory of a device.
    ///
    /// # Errors
    /// As [`Backend::device_facts`].
    fn memory_info(&self, device: u32) -> Result<MemoryInfo, VramError>;

    /// Allocation granularity in bytes: each allocation takes a multiple of it.
    fn granularity(&self) -> usize;

    /// Allocates `bytes` of device memory.
    ///
    /// # Errors
    /// [`VramError::InsufficientVram`] when the device is full, [`VramError::CudaAllocationFailed`]
    /// otherwise.
    fn allocate(&self, device: u32, bytes: usize) -> Result<BufferId, VramError>;

    /// Registers an engine's memory, to be sealed in place: never copied, never freed ([`Backend::free`]
    /// only forgets it). Checked like an allocation by the caller (`allocation_facts`).
    ///
    /// # Errors
    /// [`VramError::InvalidDevice`]; [`VramError::InvalidInput`] for a range this backend cannot
    /// read (mock memory on the CUDA backend, device memory on the mock).
    fn adopt(&self, range: ForeignRange) -> Result<BufferId, VramError>;

    /// Copies all of `source` to the start of the buffer, in chunks of [`UPLOAD_CHUNK_BYTES`]
    /// (the last may be shorter), showing each chunk to `observe` as it goes (in no particular
    /// order).
    ///
    /// # Errors
    /// [`VramError::CudaOperationFailed`] when the copy fails or does not fit;
    /// [`VramError::SourceReadFailed`] when the source cannot be read.
    fn upload(
        &self,
        buffer: BufferId,
        source: &dyn ShardSource,
        observe: Option<ChunkObserver<'_>>,
    ) -> Result<(), VramError>;

    /// Digests of `algorithm` on `device` spread over an engine's steps (the step scrubber).
    ///
    /// # Errors
    /// [`VramError::InvalidDevice`]; [`VramError::InvalidInput`] for an algorithm no kernel
    /// computes (flat SHA-256) or kernels that could not be loaded; CUDA errors.
    fn step_digests(
        &self,
        device: u32,
        algorithm: DigestAlgorithm,
    ) -> Result<Box<dyn StepDigests>, VramError>;

    /// Copies the resident bytes at `offset` into `dst` (a sealed file's header, read to find
    /// its tensor table: the table then describes the bytes in VRAM).
    ///
    /// # Errors
    /// [`VramError::CudaOperationFailed`] when the copy fails or the range is outside the
    /// buffer.
    fn read(&self, buffer: BufferId, offset: usize, dst: &mut [u8]) -> Result<(), VramError>;

    /// Digests of the first `len` resident bytes of each `(buffer, len)` (one shard, or a
    /// model's tensors, all on one device), computed from device memory in one launch sequence
    /// where the backend can, taking at most `share` of the GPU, at the point `order` names. One
    /// digest per buffer, in order.
    ///
    /// # Errors
    /// [`VramError::CudaOperationFailed`] when the bytes cannot be read or hashed;
    /// [`VramError::InvalidInput`] for buffers of several devices.
    fn digest(
        &self,
        buffers: &[(BufferId, usize)],
        algorithm: DigestAlgorithm,
        share: GpuShare,
        order: DigestOrder<'_>,
    ) -> Result<Vec<ShardDigest>, VramError>;

    /// The digest of one buffer's first `len` bytes ([`Backend::digest`] of one).
    ///
    /// # Errors
    /// As [`Backend::digest`].
    fn digest_one(
        &self,
        buffer: BufferId,
        len: usize,
        algorithm: DigestAlgorithm,
        share: GpuShare,
        order: DigestOrder<'_>,
    ) -> Result<ShardDigest, VramError> {
        self.digest(&[(buffer, len)], algorithm, share, order)?
            .pop()
            .ok_or(VramError::Unreachable("one buffer has one digest"))
    }

    /// Queues the digests of [`Backend::digest`] ahead of the engine's work: the engine's
    /// stream waits on the GPU until they are done (where the backend can queue them;
    /// otherwise the host waits for the work the engine queued so far and computes them at
    /// once).
    ///
    /// # Errors
    /// As [`Backend::digest`].
    fn digest_before(
        &self,
        buffers: &[(BufferId, usize)],
        algorithm: DigestAlgorithm,
        engine: EngineStream<'_>,
    ) -> Result<Box<dyn PendingDigest>, VramError>;

    /// The buffer, lent to an engine for a verified execution: its address (device memory on
    /// the CUDA backend, host memory on the mock), valid while the lent value lives (it keeps
    /// the buffer alive).
    ///
    /// # Errors
    /// A buffer this backend does not hold.
    fn lend(&self, buffer: BufferId) -> Result<Box<dyn LentMemory>, VramError>;

    /// What the driver reports about the allocation (one pointer-attributes query).
    ///
    /// # Errors
    /// CUDA errors on the real backend; [`VramError::NotSealed`] for an unknown buffer.
    fn allocation_facts(&self, buffer: BufferId, len: usize) -> Result<AllocationFacts, VramError>;

    /// The backend as `Any`, for the test hooks only one backend has (test builds only).
    #[cfg(feature = "test-utils")]
    fn as_any(&self) -> &dyn std::any::Any;

    /// Frees the buffer.
    ///
    /// # Errors
    /// [`VramError::CudaDeallocationFailed`].
    fn free(&self, buffer: BufferId) -> Result<(), VramError>;
}

/// A backend's live buffers by id: the one place ids are issued and looked up.
#[derive(Debug)]
pub(crate) struct BufferTable<T> {
    buffers: Mutex<HashMap<u64, Arc<T>>>,
    next_id: AtomicU64,
}

impl<T> Default for BufferTable<T> {
    fn default() -> Self {
        Self {
            buffers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }
}

impl BufferId {
    /// The id as a number (a mock engine range carries it; it is no address).
    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    pub(crate) fn from_raw(id: u64) -> Self {
        Self(id)
    }
}

impl<T> BufferTable<T> {
    pub(crate) fn insert(&self, buffer: T) -> BufferId {
        self.insert_shared(Arc::new(buffer))
    }

    /// Registers a buffer another table (or owner) shares.
    pub(crate) fn insert_shared(&self, buffer: Arc<T>) -> BufferId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.buffers).insert(id, buffer);
        BufferId(id)
    }

    /// The buffer. Ids come only from this table and are used only by the manager that holds
    /// them, so an unknown id is a bug, reported as such.
    pub(crate) fn get(&self, id: BufferId) -> Result<Arc<T>, VramError> {
        lock(&self.buffers)
            .get(&id.0)
            .cloned()
            .ok_or(VramError::Unreachable(
                "a buffer id this backend does not hold",
            ))
    }

    pub(crate) fn remove(&self, id: BufferId) -> Option<Arc<T>> {
        lock(&self.buffers).remove(&id.0)
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.buffers).len()
    }
}

/// Device `device` of `devices`, or `InvalidDevice`.
pub(crate) fn device_at<T>(devices: &[T], device: u32) -> Result<&T, VramError> {
    usize::try_from(device)
        .ok()
        .and_then(|d| devices.get(d))
        .ok_or(VramError::InvalidDevice {
            device,
            device_count: u32::try_from(devices.len()).unwrap_or(u32::MAX),
        })
}

/// `bytes` rounded up to a multiple of `granularity` (`None` on overflow).
pub(crate) fn round_up(bytes: usize, granularity: usize) -> Option<usize> {
    let g = granularity.max(1);
    bytes.div_ceil(g).checked_mul(g)
}
