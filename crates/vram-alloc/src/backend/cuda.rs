//! The CUDA backend: shards in real device memory (`cuMemAlloc`), uploaded through a bounded
//! ring of pinned staging slots filled by several threads, and digested where they lie: BLAKE3
//! at every size and SHA-256 tree digests of shards of [`GPU_DIGEST_MIN_LEAVES`] leaves or more
//! by the kernels in VRAM, the rest (flat SHA-256, which is serial, and small SHA-256 tree
//! shards, where a kernel's latency exceeds a read-back) on the CPU as the bytes are read back
//! out of VRAM ([`ResidentBytes`]; `docs/adr/0004-digest-of-resident-bytes.md`).

use std::sync::{Arc, OnceLock};

use vram_cuda_sys::memory::DeviceBuffer;
use vram_cuda_sys::resident::{ForeignRange, Resident};
use vram_cuda_sys::staging_ring::StagingRing;
use vram_cuda_sys::tree_digest::{GpuDigest, StepLane, TreeDigestEngine};
use vram_cuda_sys::{CudaError, Device, Driver};
use vram_seal::ShardDigest;
use vram_seal::digest::tree::{finalize_root, leaf_count};
use vram_types::{
    AllocationFacts, BackendKind, DeviceFacts, DigestAlgorithm, DigestKind, GpuShare, ShardSource,
    VramError,
};

use super::steps::{CudaSteps, StepDigests, gpu_digest};
use super::{
    Backend, BufferId, BufferTable, CUDA_ALLOCATION_GRANULARITY, ChunkObserver, DigestOrder,
    EngineStream, LentMemory, MemoryInfo, PendingDigest, Ready, ResidentBytes, device_at,
    one_device,
};

/// Fewest leaves for which the SHA-256 kernels digest a shard. One thread hashes one leaf, at
/// about 30 MB/s when the GPU is not full (a dependency chain of 64 rounds per 64-byte block),
/// so a kernel takes at least a leaf's worth of that (about 2 ms at 64 KiB leaves) however small
/// the shard; below this many leaves a read-back hashed on the CPU cores is quicker
/// (`docs/perf.md`). BLAKE3 has no such floor (a thread hashes one 1 KiB chunk), so its kernels
/// digest every size.
pub(crate) const GPU_DIGEST_MIN_LEAVES: u64 = 64;

/// What a CUDA call was for, so that its error becomes the right [`VramError`].
#[derive(Debug, Clone, Copy)]
enum Call {
    /// An allocation of this many bytes.
    Allocate { bytes: usize },
    /// Releasing an allocation.
    Free,
    /// Anything else (a copy, a query, a launch).
    Other,
}

/// The one place a CUDA error of `vram-cuda-sys` becomes the workspace's [`VramError`]: the
/// sys crate says what went wrong (the driver's status, out of memory, a range or device it
/// refused before calling the driver), this backend knows what the call was for.
fn vram_error(e: CudaError, call: Call) -> VramError {
    let refused = |device, operation, why: String| VramError::CudaOperationFailed {
        device,
        operation,
        cuda_error: format!("{why} (refused before calling the driver)"),
        code: None,
    };
    match e {
        CudaError::Driver {
            device,
            operation,
            status,
        } => {
            let (cuda_error, code) = (status.to_string(), Some(status.code()));
            match call {
                Call::Allocate { bytes } => VramError::CudaAllocationFailed {
                    device,
                    bytes,
                    cuda_error,
                    code,
                },
                Call::Free => VramError::CudaDeallocationFailed {
                    device,
                    cuda_error,
                    code,
                },
                Call::Other => VramError::CudaOperationFailed {
                    device,
                    operation,
                    cuda_error,
                    code,
                },
            }
        }
        CudaError::OutOfMemory {
            device,
            requested,
            free,
        } => VramError::InsufficientVram {
            needed: requested,
            available: free,
            device,
        },
        CudaError::OutOfRange { device, operation } => {
            refused(device, operation, "range outside the allocation".into())
        }
        CudaError::WrongDevice {
            device,
            found,
            operation,
        } => refused(device, operation, format!("the buffer is on GPU {found}")),
        CudaError::NoGpu { reason } => VramError::NoGpu { reason },
        CudaError::DriverTooOld { found, required } => VramError::DriverTooOld { found, required },
        CudaError::InvalidDevice {
            device,
            device_count,
        } => VramError::InvalidDevice {
            device,
            device_count,
        },
        CudaError::InvalidArgument { what, reason } => VramError::InvalidInput {
            field: what,
            reason,
        },
        CudaError::HostMemory { bytes } => VramError::HostMemoryExhausted { needed: bytes },
        CudaError::SourceRead { offset, reason } => VramError::SourceReadFailed { offset, reason },
        CudaError::Unreachable(what) => VramError::Unreachable(what),
    }
}

/// [`vram_error`] of a call that is neither an allocation nor a release.
pub(crate) fn other(e: CudaError) -> VramError {
    vram_error(e, Call::Other)
}

/// One device with its staging ring and (loaded on first use) digest kernels.
struct DeviceLane {
    device: Arc<Device>,
    ring: StagingRing,
    kernels: OnceLock<Option<Arc<TreeDigestEngine>>>,
}

impl DeviceLane {
    /// The digest kernels, or `None` when the driver refused them (logged once; the CPU path
    /// is used instead).
    fn kernels(&self) -> Option<&Arc<TreeDigestEngine>> {
        self.kernels
            .get_or_init(|| match TreeDigestEngine::new(&self.device) {
                Ok(engine) => Some(Arc::new(engine)),
                Err(e) => {
                    tracing::warn!(gpu_device = self.device.ordinal(), error = %e,
                        "GPU digest kernels unavailable; digests are computed on the CPU");
                    None
                }
            })
            .as_ref()
    }
}

/// Every CUDA device of the machine.
pub(crate) struct CudaBackend {
    lanes: Vec<DeviceLane>,
    buffers: Arc<BufferTable<Resident>>,
}

impl std::fmt::Debug for CudaBackend {
    /// Device count and live allocations only: never a pointer.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("devices", &self.lanes.len())
            .field("live_allocations", &self.buffers.len())
            .finish()
    }
}

impl CudaBackend {
    /// The facts of every GPU, without building a manager (for `vramctl doctor`).
    ///
    /// # Errors
    /// As [`CudaBackend::open`].
    pub(crate) fn probe() -> Result<Vec<DeviceFacts>, VramError> {
        let backend = Self::open()?;
        (0..backend.device_count())
            .map(|d| backend.device_facts(d))
            .collect()
    }

    /// Opens every device the driver reports.
    ///
    /// # Errors
    /// [`VramError::NoGpu`] without a driver or GPU; [`VramError::DriverTooOld`];
    /// CUDA errors while creating contexts.
    pub(crate) fn open() -> Result<Self, VramError> {
        let count = Driver::get().map_err(other)?.device_count();
        let lanes = (0..count)
            .map(|ordinal| {
                let device = Device::open(ordinal).map_err(other)?;
                Ok(DeviceLane {
                    ring: StagingRing::with_defaults(&device),
                    device,
                    kernels: OnceLock::new(),
                })
            })
            .collect::<Result<Vec<_>, VramError>>()?;
        Ok(Self {
            lanes,
            buffers: Arc::default(),
        })
    }

    fn lane(&self, device: u32) -> Result<&DeviceLane, VramError> {
        device_at(&self.lanes, device)
    }

    fn device(&self, device: u32) -> Result<&Arc<Device>, VramError> {
        Ok(&self.lane(device)?.device)
    }

    fn buffer(&self, id: BufferId) -> Result<Arc<Resident>, VramError> {
        self.buffers.get(id)
    }

    /// The buffers' memory with each length, all on one device.
    fn resident(&self, buffers: &[(BufferId, usize)]) -> Result<Vec<(Resident, usize)>, VramError> {
        let memory = buffers
            .iter()
            .map(|(id, len)| Ok((Resident::clone(&*self.buffer(*id)?), *len)))
            .collect::<Result<Vec<_>, VramError>>()?;
        one_device(memory.iter().map(|(b, _)| b.device().ordinal()))?;
        Ok(memory)
    }

    /// The digest kernels and what they compute when the GPU digests these buffers (one
    /// device): BLAKE3 always, a SHA-256 tree of at least [`GPU_DIGEST_MIN_LEAVES`] leaves in
    /// all (many small tensors hashed together fill the GPU like one large shard), kernels
    /// loaded.
    fn kernels_for(
        &self,
        memory: &[(Resident, usize)],
        algorithm: DigestAlgorithm,
        share: GpuShare,
    ) -> Result<Option<(&TreeDigestEngine, GpuDigest)>, VramError> {
        let Some((first, _)) = memory.first() else {
            return Ok(None);
        };
        let digest = match algorithm.kind() {
            DigestKind::Sha256 => return Ok(None),
            DigestKind::Blake3 => GpuDigest::Blake3,
            DigestKind::Sha256Tree(leaf) => {
                let leaves = memory
                    .iter()
                    .map(|(_, len)| leaf_count(total_of(*len), leaf))
                    .fold(0u64, u64::saturating_add);
                // A background (bounded) digest is never read back: its latency does not
                // matter, and the copies of a read-back run beside the engine.
                if leaves < GPU_DIGEST_MIN_LEAVES && share == GpuShare::Full {
                    return Ok(None);
                }
                GpuDigest::Sha256Tree(leaf)
            }
        };
        Ok(self
            .lane(first.device().ordinal())?
            .kernels()
            .map(|k| (&**k, digest)))
    }

    /// Inverts the byte at `offset` of the buffer with a raw copy, behind the manager's back
    /// (simulated VRAM corruption; test builds only).
    #[cfg(feature = "test-utils")]
    pub(crate) fn flip_byte(
        &self,
        buffer: BufferId,
        offset: usize,
        mask: u8,
    ) -> Result<(), VramError> {
        let b = self.buffer(buffer)?;
        let mut byte = [0u8; 1];
        b.read(offset, &mut byte).map_err(other)?;
        b.write(offset, &byte.map(|v| v ^ mask)).map_err(other)
    }
}

impl Backend for CudaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn device_count(&self) -> u32 {
        u32::try_from(self.lanes.len()).unwrap_or(u32::MAX)
    }

    fn device_facts(&self, device: u32) -> Result<DeviceFacts, VramError> {
        self.device(device)?.facts().map_err(other)
    }

    fn memory_info(&self, device: u32) -> Result<MemoryInfo, VramError> {
        let (free, total) = self.device(device)?.memory_info().map_err(other)?;
        Ok(MemoryInfo { free, total })
    }

    fn granularity(&self) -> usize {
        CUDA_ALLOCATION_GRANULARITY
    }

    fn allocate(&self, device: u32, bytes: usize) -> Result<BufferId, VramError> {
        let buffer = DeviceBuffer::alloc(self.device(device)?, bytes)
            .map_err(|e| vram_error(e, Call::Allocate { bytes }))?;
        Ok(self.buffers.insert(Resident::Owned(Arc::new(buffer))))
    }

    fn adopt(&self, range: ForeignRange) -> Result<BufferId, VramError> {
        let device = self.device(range.device_ordinal())?;
        let resident = Resident::foreign(device, range).map_err(other)?;
        Ok(self.buffers.insert(resident))
    }

    fn upload(
        &self,
        buffer: BufferId,
        source: &dyn ShardSource,
        observe: Option<ChunkObserver<'_>>,
    ) -> Result<(), VramError> {
        let b = self.buffer(buffer)?;
        let owned = b.owned().ok_or(VramError::Unreachable(
            "uploading into an engine's range sealed in place",
        ))?;
        self.lane(b.device().ordinal())?
            .ring
            .upload(owned, source, observe)
            .map_err(other)
    }

    fn digest(
        &self,
        buffers: &[(BufferId, usize)],
        algorithm: DigestAlgorithm,
        share: GpuShare,
        order: DigestOrder<'_>,
    ) -> Result<Vec<ShardDigest>, VramError> {
        let memory = self.resident(buffers)?;
        match self.kernels_for(&memory, algorithm, share)? {
            Some((engine, digest)) => {
                let after = match order {
                    DigestOrder::Now => None,
                    DigestOrder::After(s) => Some(s),
                };
                let roots = match memory.as_slice() {
                    // One shard: the single-range kernel, with no table to upload.
                    [(b, len)] => engine
                        .tree_root_of(b, *len, digest, share, after)
                        .map(|root| vec![root]),
                    _ => engine.tree_roots_of(&memory, digest, share, after),
                }
                .map_err(other)?;
                Ok(finalized(digest, &memory, &roots))
            }
            None => {
                if let (DigestOrder::After(engine), Some((b, _))) = (order, memory.first()) {
                    engine.wait_on_host(b.device()).map_err(other)?;
                }
                buffers
                    .iter()
                    .map(|(id, len)| ResidentBytes::new(self, *id, *len).digest(algorithm))
                    .collect()
            }
        }
    }

    fn digest_before(
        &self,
        buffers: &[(BufferId, usize)],
        algorithm: DigestAlgorithm,
        engine: EngineStream<'_>,
    ) -> Result<Box<dyn PendingDigest>, VramError> {
        let memory = self.resident(buffers)?;
        match self.kernels_for(&memory, algorithm, GpuShare::Full)? {
            Some((kernels, digest)) => {
                let pending = match memory.as_slice() {
                    [(b, len)] => kernels.queue_root_before(b, *len, digest, engine),
                    _ => kernels.queue_roots_before(&memory, digest, engine),
                }
                .map_err(other)?;
                Ok(Box::new(QueuedRoots {
                    pending,
                    digest,
                    lens: memory.iter().map(|(_, len)| *len).collect(),
                }))
            }
            // Too few bytes for a launch: read back and hashed on the host now, after the host
            // has waited for the work the engine queued so far (a write queued before must be
            // seen: reading at once raced it, found by the GPU suite).
            None => {
                if let Some((b, _)) = memory.first() {
                    engine.wait_on_host(b.device()).map_err(other)?;
                }
                Ok(Box::new(Ready(
                    buffers
                        .iter()
                        .map(|(id, len)| ResidentBytes::new(self, *id, *len).digest(algorithm))
                        .collect::<Result<_, _>>()?,
                )))
            }
        }
    }

    fn step_digests(
        &self,
        device: u32,
        algorithm: DigestAlgorithm,
    ) -> Result<Box<dyn StepDigests>, VramError> {
        let digest = gpu_digest(algorithm).ok_or_else(|| {
            VramError::invalid_input(
                "digest algorithm",
                format!("{algorithm} has no GPU kernel to spread over steps: use a tree digest or BLAKE3"),
            )
        })?;
        let kernels = self.lane(device)?.kernels().ok_or_else(|| {
            VramError::invalid_input(
                "step scrubber",
                "the GPU digest kernels could not be loaded on this device",
            )
        })?;
        let lane = StepLane::new(Arc::clone(kernels), digest).map_err(other)?;
        Ok(Box::new(CudaSteps::new(lane, Arc::clone(&self.buffers))))
    }

    fn read(&self, buffer: BufferId, offset: usize, dst: &mut [u8]) -> Result<(), VramError> {
        let b = self.buffer(buffer)?;
        self.lane(b.device().ordinal())?
            .ring
            .download(&b, offset, dst)
            .map_err(other)
    }

    fn lend(&self, buffer: BufferId) -> Result<Box<dyn LentMemory>, VramError> {
        let b = self.buffer(buffer)?;
        let address = b.lending_address().map_err(other)?;
        Ok(Box::new(LentDevice { buffer: b, address }))
    }

    fn allocation_facts(&self, buffer: BufferId, len: usize) -> Result<AllocationFacts, VramError> {
        self.buffer(buffer)?.facts(len).map_err(other)
    }

    #[cfg(feature = "test-utils")]
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn free(&self, buffer: BufferId) -> Result<(), VramError> {
        let b = self.buffers.remove(buffer).ok_or(VramError::Unreachable(
            "freeing a buffer id this backend does not hold",
        ))?;
        match Arc::try_unwrap(b).map(|r| match r {
            Resident::Owned(buffer) => Arc::try_unwrap(buffer).ok(),
            // An engine's range sealed in place is never freed here: it is the engine's.
            Resident::Foreign { .. } => None,
        }) {
            Ok(Some(owned)) => owned.free().map_err(|e| vram_error(e, Call::Free)),
            // A transfer or a lent view still holds it (cannot happen: the allocation is only
            // freed when its last shard handle is gone); dropping the last reference frees it.
            Ok(None) | Err(_) => Ok(()),
        }
    }
}

/// Tree digests queued ahead of an engine's work, finished into the shards' digests.
struct QueuedRoots {
    pending: vram_cuda_sys::tree_digest::PendingRoots,
    digest: GpuDigest,
    lens: Vec<usize>,
}

impl PendingDigest for QueuedRoots {
    fn wait(self: Box<Self>) -> Result<Vec<ShardDigest>, VramError> {
        let roots = self.pending.wait().map_err(other)?;
        Ok(self
            .lens
            .iter()
            .zip(&roots)
            .map(|(len, root)| shard_digest(self.digest, total_of(*len), root))
            .collect())
    }
}

fn total_of(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// Each range's digest from its root.
fn finalized(
    digest: GpuDigest,
    memory: &[(Resident, usize)],
    roots: &[[u8; 32]],
) -> Vec<ShardDigest> {
    memory
        .iter()
        .zip(roots)
        .map(|((_, len), root)| shard_digest(digest, total_of(*len), root))
        .collect()
}

/// A shard's digest from the kernels' root: the SHA-256 tree frames it with the leaf size and
/// length; BLAKE3's root is the digest.
pub(crate) fn shard_digest(digest: GpuDigest, total_len: u64, root: &[u8; 32]) -> ShardDigest {
    match digest {
        GpuDigest::Sha256Tree(leaf) => finalize_root(leaf, total_len, root),
        GpuDigest::Blake3 => ShardDigest::from_bytes(*root),
    }
}

/// A device allocation lent to an engine; keeps it alive.
struct LentDevice {
    #[cfg_attr(
        not(feature = "test-utils"),
        allow(dead_code, reason = "keeps the buffer alive")
    )]
    buffer: Arc<Resident>,
    address: u64,
}

impl LentMemory for LentDevice {
    fn address(&self) -> u64 {
        self.address
    }

    fn read_host(&self, _read: &mut dyn FnMut(&[u8])) -> bool {
        false
    }

    #[cfg(feature = "test-utils")]
    fn device_buffer(&self) -> Option<&DeviceBuffer> {
        self.buffer.owned()
    }
}
