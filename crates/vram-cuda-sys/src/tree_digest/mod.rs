//! Tree digests of bytes already in VRAM: the `sha256-tree-L` root and the standard BLAKE3 hash.
//! A leaf kernel hashes every leaf (every 1 KiB chunk for BLAKE3) where it lies, a fold kernel
//! reduces nodes level by level on the GPU (two to one for SHA-256, up to 256 to one in shared
//! memory for BLAKE3, whose whole-GPU chunk kernel already folds each block's 128 chunks), and
//! only the 32-byte root comes back to the host. The kernels
//! (`kernels/sha256_tree.cu`, `kernels/blake3_tree.cu`, PTX committed beside them) are checked bit
//! for bit against `vram-seal`'s CPU implementations by the GPU tests.
//!
//! Everything runs on streams of the lowest priority and waits on them only, never on the whole
//! context, so an inference engine's kernels on its own streams are scheduled first.
//!
//! Rooms: this file is the engine's face (digests of one or many ranges, waited for on the
//! host); `kernels.rs` loads the PTX; `lane.rs` holds the pinned memory and device scratch a digest
//! passes through; `launch.rs` is each algorithm's launch sequence; `bounded.rs` slices launches
//! for a bounded share of the GPU; `order.rs` queues digests on the GPU after an engine's work
//! and before its next kernels; `step.rs` is the step scrubber's lane; `layout.rs` the range
//! table of many ranges; `span.rs` what a digest can read.

use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::sys::CUfunction;
use vram_types::{GpuShare, LeafSize};

mod bounded;
mod kernels;
mod lane;
mod launch;
mod layout;
mod order;
mod span;
mod step;

use kernels::Kernels;
pub use kernels::{BLAKE3_TREE_PTX, SHA256_TREE_PTX};
use lane::Lane;
use launch::Target;
pub use launch::block_size;
pub use order::PendingRoots;
use span::Span;
pub use step::{
    Finished, STEP_JOB_LEAVES, STEP_JOB_RANGES, STEP_JOB_SHA256_LEAVES, STEP_SLICE_BYTES, StepLane,
    job_fits,
};

use crate::device::Device;
use crate::error::CudaError;
use crate::memory::DeviceBuffer;
use crate::resident::Resident;
use crate::stream::{EngineStream, Event};

/// What the kernels compute: a tree digest whose leaves hash independently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuDigest {
    /// The root of the `sha256-tree-L` tree (`vram_seal::digest::tree::finalize_root` frames it
    /// into the digest).
    Sha256Tree(LeafSize),
    /// The standard BLAKE3 hash (unkeyed, 32 bytes): the root is the digest.
    Blake3,
}

/// BLAKE3's chunk: the unit one thread hashes.
const BLAKE3_CHUNK_BYTES: u64 = 1024;
/// Nodes one BLAKE3 fold launch reduces to one (`FOLD_FAN_IN` in the kernel).
const BLAKE3_FOLD_FAN_IN: u64 = 256;
/// How many more bytes a bounded BLAKE3 launch hashes per thread than a SHA-256 slice.
const BLAKE3_BOUNDED_FACTOR: u64 = 2;
/// Most chunks one block of `blake3_chunk_groups` folds to one node (its launch bound).
const BLAKE3_GROUP_CHUNKS: u64 = 128;

impl GpuDigest {
    /// Bytes of one leaf (one thread's unit of work).
    fn unit_bytes(self) -> u64 {
        match self {
            Self::Sha256Tree(leaf) => u64::from(leaf.get()),
            Self::Blake3 => BLAKE3_CHUNK_BYTES,
        }
    }

    /// Nodes one fold launch reduces to one.
    fn fan_in(self) -> u64 {
        match self {
            Self::Sha256Tree(_) => 2,
            Self::Blake3 => BLAKE3_FOLD_FAN_IN,
        }
    }

    /// Leaves of a range of `len` bytes (at least one: an empty range hashes as one empty leaf).
    #[must_use]
    pub fn leaves(self, len: u64) -> u64 {
        len.div_ceil(self.unit_bytes()).max(1)
    }
}

/// Default bytes of each leaf a bounded-share launch hashes. Short launches hand the SMs back
/// often: next to a GEMM loop on an H100, 4 KiB slices cost it 0.2-0.4 % at 1/32 to 1/8 of the
/// SMs, 16 KiB slices 14 % at 1/8 and 34 % at 1/16 (`docs/perf.md`).
pub const BOUNDED_SLICE_BYTES: u64 = 4 * 1024;

/// Threads per block of whole-GPU launches (the kernels' launch bound).
const MAX_BLOCK: u32 = 128;
/// Warp schedulers per SM on every GPU this targets (Volta to Hopper).
const SCHEDULERS_PER_SM: u64 = 4;
const DIGEST_BYTES: u64 = 32;
/// The kernels read 16-byte words: every range they hash starts on a 16-byte boundary.
pub const KERNEL_ALIGNMENT: u64 = 16;

/// The digest kernels loaded on one device, with a stream for per-request digests and one for
/// bounded background digests (so a long background pass never delays a request's check).
pub struct TreeDigestEngine {
    device: Arc<Device>,
    sha256: Kernels,
    blake3: Kernels,
    /// `blake3_chunk_groups`, of `blake3`'s module: the whole-GPU chunk kernel of one range.
    blake3_groups: CUfunction,
    /// `blake3_range_chunk_groups`, of `blake3`'s module: the same over many ranges.
    blake3_range_groups: CUfunction,
    multiprocessors: u32,
    bounded_slice_bytes: u64,
    full_lane: Mutex<Lane>,
    bounded_lane: Mutex<Lane>,
    /// Streams and pinned memory for digests queued ahead of an engine's work, reused.
    ahead: Arc<Mutex<Vec<Lane>>>,
}

impl std::fmt::Debug for TreeDigestEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeDigestEngine")
            .field("device", &self.device.ordinal())
            .field("multiprocessors", &self.multiprocessors)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TreeDigestEngine {
    /// Loads both algorithms' kernels on `device` and makes its two lowest-priority streams.
    ///
    /// # Errors
    /// [`CudaError::Driver`] when the driver refuses the PTX (for example a driver
    /// older than the PTX version) or a stream cannot be made.
    pub fn new(device: &Arc<Device>) -> Result<Self, CudaError> {
        let blake3 = Kernels::load(
            device,
            BLAKE3_TREE_PTX,
            [
                "blake3_chunks",
                "blake3_fold",
                "blake3_range_chunks",
                "blake3_range_fold",
            ],
        )?;
        Ok(Self {
            device: Arc::clone(device),
            sha256: Kernels::load(
                device,
                SHA256_TREE_PTX,
                [
                    "sha256_leaves",
                    "sha256_fold_level",
                    "sha256_range_leaves",
                    "sha256_range_fold_level",
                ],
            )?,
            blake3_groups: blake3.module.function("blake3_chunk_groups")?,
            blake3_range_groups: blake3.module.function("blake3_range_chunk_groups")?,
            blake3,
            multiprocessors: device.multiprocessor_count()?,
            bounded_slice_bytes: BOUNDED_SLICE_BYTES,
            full_lane: Mutex::new(Lane::new(device)?),
            bounded_lane: Mutex::new(Lane::new(device)?),
            ahead: Arc::default(),
        })
    }

    /// Sets how many bytes of each leaf one bounded-share launch hashes (rounded down to a
    /// multiple of 64, at least 64; default [`BOUNDED_SLICE_BYTES`]). Shorter slices hand the
    /// SMs back sooner, at the cost of more launches.
    #[must_use]
    pub fn with_bounded_slice_bytes(mut self, bytes: u64) -> Self {
        self.bounded_slice_bytes = (bytes & !63).max(64);
        self
    }

    /// The root of `digest` over the first `len` bytes of `buffer`: for the SHA-256 tree the
    /// value `vram_seal::digest::tree::root_from_leaf_digests` gives for the same bytes, for
    /// BLAKE3 the standard BLAKE3 hash.
    ///
    /// # Errors
    /// [`CudaError::OutOfRange`] when `len` exceeds the buffer; [`CudaError::WrongDevice`] for a
    /// buffer of another device; [`CudaError::Driver`] when a launch or copy fails;
    /// [`CudaError::OutOfMemory`] when the leaf states (32 bytes a leaf or BLAKE3 chunk, and a
    /// fold's output beside them: half as much again for SHA-256, a 256th for BLAKE3; on the
    /// whole GPU BLAKE3 keeps 32 bytes per 128 chunks) do not fit.
    pub fn tree_root(
        &self,
        buffer: &DeviceBuffer,
        len: usize,
        digest: GpuDigest,
        share: GpuShare,
    ) -> Result<[u8; 32], CudaError> {
        self.tree_root_ordered(buffer, len, digest, share, None)
    }

    /// [`Self::tree_root`] of resident memory (an own buffer or an engine's range sealed in
    /// place), now or, with `after`, once the work queued so far on the engine's stream is done
    /// (the digest's stream waits on the GPU for an event recorded there; the host waits only
    /// for the digest).
    ///
    /// # Errors
    /// As [`Self::tree_root`]; [`CudaError::WrongDevice`] for a stream of another device.
    pub fn tree_root_of(
        &self,
        memory: &Resident,
        len: usize,
        digest: GpuDigest,
        share: GpuShare,
        after: Option<EngineStream<'_>>,
    ) -> Result<[u8; 32], CudaError> {
        self.tree_root_ordered(memory, len, digest, share, after)
    }

    /// The tree roots of many ranges at once (a model's tensors, each `(memory, len)`): one
    /// leaf launch over every range's leaves, one fold launch per tree level, one copy of every
    /// root, so a model of hundreds of tensors costs about what one range of the same total size
    /// costs. Root `i` is what [`Self::tree_root_of`] gives for range `i`. With `after`, as
    /// there.
    ///
    /// # Errors
    /// As [`Self::tree_root_of`], for any range; [`CudaError::InvalidArgument`] for no ranges.
    pub fn tree_roots_of(
        &self,
        ranges: &[(Resident, usize)],
        digest: GpuDigest,
        share: GpuShare,
        after: Option<EngineStream<'_>>,
    ) -> Result<Vec<[u8; 32]>, CudaError> {
        self.roots_ordered(Target::Many(ranges), digest, share, after)
    }

    fn tree_root_ordered(
        &self,
        buffer: &dyn Span,
        len: usize,
        digest: GpuDigest,
        share: GpuShare,
        after: Option<EngineStream<'_>>,
    ) -> Result<[u8; 32], CudaError> {
        self.roots_ordered(Target::One(buffer, len), digest, share, after)?
            .first()
            .copied()
            .ok_or(CudaError::Unreachable("one range has one root"))
    }

    fn roots_ordered(
        &self,
        target: Target<'_>,
        digest: GpuDigest,
        share: GpuShare,
        after: Option<EngineStream<'_>>,
    ) -> Result<Vec<[u8; 32]>, CudaError> {
        let lane = match share {
            GpuShare::Full => &self.full_lane,
            GpuShare::Bounded { .. } => &self.bounded_lane,
        };
        let mut lane = lock(lane);
        let stream = Arc::clone(&lane.stream);
        if let Some(engine) = after {
            let mut engine_done = Event::new(&self.device)?;
            engine_done.record_on(engine)?;
            stream.wait_for(&engine_done)?;
        }
        let queued = self.queue_roots(&stream, target, digest, share, &mut lane);
        // Waited for on every path: no queued kernel may outlive this call and read `buffer`
        // after the caller frees it, even when a later launch failed. The wait spins: a
        // blocking-sync wait made a host-bound Python engine beside it 1.8x slower
        // (`docs/perf.md`).
        let waited = stream.synchronize();
        // The scratch goes after the wait (see `Scratch`).
        let (scratch, roots) = queued?;
        drop(scratch);
        waited?;
        self.device.trim_memory_pool()?;
        lane.roots(digest, roots)
    }
}
