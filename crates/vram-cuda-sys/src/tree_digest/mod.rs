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

use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::result;
use cudarc::driver::sys::{CUdeviceptr, CUfunction};
use vram_types::{GpuShare, LeafSize};

mod layout;
mod step;
use layout::RangeLayout;
pub use step::{
    Finished, STEP_JOB_LEAVES, STEP_JOB_RANGES, STEP_JOB_SHA256_LEAVES, STEP_SLICE_BYTES, StepLane,
    job_fits,
};

use crate::device::Device;
use crate::error::{CudaError, CudaStatus};
use crate::memory::{DeviceBuffer, PinnedBuffer};
use crate::module::Module;
use crate::resident::Resident;
use crate::stream::{EngineStream, Event, Stream, StreamPriority};

/// PTX of `kernels/sha256_tree.cu` (`cargo xtask ptx` regenerates it).
pub const SHA256_TREE_PTX: &str = include_str!("../../kernels/sha256_tree.ptx");
/// PTX of `kernels/blake3_tree.cu` (`cargo xtask ptx` regenerates it).
pub const BLAKE3_TREE_PTX: &str = include_str!("../../kernels/blake3_tree.ptx");

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

/// The four kernels of one algorithm, in the module that holds them.
struct Kernels {
    module: Module,
    leaves: CUfunction,
    fold: CUfunction,
    range_leaves: CUfunction,
    range_fold: CUfunction,
}

impl Kernels {
    /// Loads `ptx` and finds its leaf, fold, range-leaf and range-fold kernels, in that order.
    fn load(device: &Arc<Device>, ptx: &str, names: [&str; 4]) -> Result<Self, CudaError> {
        let module = Module::load_ptx(device, ptx)?;
        let [leaves, fold, range_leaves, range_fold] = names;
        Ok(Self {
            leaves: module.function(leaves)?,
            fold: module.function(fold)?,
            range_leaves: module.function(range_leaves)?,
            range_fold: module.function(range_fold)?,
            module,
        })
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
    multiprocessors: u32,
    bounded_slice_bytes: u64,
    full_lane: Mutex<Lane>,
    bounded_lane: Mutex<Lane>,
    /// Streams and pinned memory for digests queued ahead of an engine's work, reused.
    ahead: Arc<Mutex<Vec<Lane>>>,
}

/// A stream and the pinned memory its digests' tables and roots pass through. Never pageable
/// host memory: a copy between device memory and pageable memory is staged by the driver and
/// waits for (and holds back) work on the legacy default stream, PyTorch's (`docs/perf.md`:
/// an engine's tiny kernels 28x slower beside one 32-byte copy per digest).
struct Lane {
    stream: Arc<Stream>,
    host: Option<PinnedBuffer>,
}

/// Smallest pinned memory a lane keeps: the tables and roots of a model of about 1,000 tensors.
const LANE_HOST_BYTES: usize = 128 * 1024;

impl Lane {
    fn new(device: &Arc<Device>) -> Result<Self, CudaError> {
        Ok(Self {
            stream: Arc::new(Stream::new(device, StreamPriority::Lowest)?),
            host: None,
        })
    }

    /// At least `bytes` of the lane's pinned memory (grown, rarely, when too small; the old
    /// memory's last copy finished before the lane was taken).
    fn host(&mut self, bytes: usize) -> Result<&mut [u8], CudaError> {
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
    fn roots(
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

impl std::fmt::Debug for TreeDigestEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeDigestEngine")
            .field("device", &self.device.ordinal())
            .field("multiprocessors", &self.multiprocessors)
            .finish_non_exhaustive()
    }
}

/// A stream-ordered device allocation for the leaf states (`cuMemAllocAsync`): neither its
/// allocation nor its release synchronises the device. Kept until the host has waited for the
/// digest: memory freed before a synchronisation goes back to the driver at it (the pool's
/// release threshold), and the next digest maps it again, ~65 us on an H200 (`docs/perf.md`).
struct Scratch {
    stream: Arc<Stream>,
    ptr: CUdeviceptr,
}

impl Scratch {
    fn alloc(stream: &Arc<Stream>, bytes: u64) -> Result<Self, CudaError> {
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

    fn at(&self, byte_offset: u64) -> u64 {
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

/// Threads per block for a launch over `leaves` leaves: whole blocks of 128 when there are
/// leaves enough to fill the GPU, otherwise small blocks so the leaves spread over every warp
/// scheduler of every SM. (With few leaves each thread is latency-bound: a warp per scheduler
/// with a few active lanes outruns one full warp per SM.)
#[must_use]
pub fn block_size(leaves: u64, multiprocessors: u32) -> u32 {
    let schedulers = u64::from(multiprocessors.max(1)).saturating_mul(SCHEDULERS_PER_SM);
    if leaves >= schedulers.saturating_mul(32) {
        MAX_BLOCK
    } else {
        u32::try_from(leaves.div_ceil(schedulers).clamp(1, 32)).unwrap_or(32)
    }
}

fn grid_for(threads: u64, block: u32) -> Result<u32, CudaError> {
    u32::try_from(threads.div_ceil(u64::from(block.max(1)))).map_err(|_| {
        CudaError::InvalidArgument {
            what: "digest launch",
            reason: "more than 2^32 blocks".into(),
        }
    })
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

    /// Queues the digest of `buffer`'s first `len` bytes ahead of an engine's work, for the
    /// pipelined execution: on a stream of its own (from a pool), after the work queued so far
    /// on the engine's stream, and the engine's stream waits on the GPU until the digest is
    /// done, so the engine's kernels queued next start right after it with no host round trip.
    /// [`PendingRoots::wait`] gives the root.
    ///
    /// # Errors
    /// As [`Self::tree_root`]; [`CudaError::HostMemory`] when the root's pinned slot cannot be
    /// had; [`CudaError::WrongDevice`] for a stream of another device.
    pub fn queue_root_before(
        &self,
        buffer: &Resident,
        len: usize,
        digest: GpuDigest,
        engine: EngineStream<'_>,
    ) -> Result<PendingRoots, CudaError> {
        self.queue_before(
            Target::One(buffer, len),
            vec![buffer.clone()],
            digest,
            engine,
        )
    }

    /// [`Self::queue_root_before`] for many ranges at once, as [`Self::tree_roots_of`] hashes
    /// them.
    ///
    /// # Errors
    /// As [`Self::queue_root_before`] and [`Self::tree_roots_of`].
    pub fn queue_roots_before(
        &self,
        ranges: &[(Resident, usize)],
        digest: GpuDigest,
        engine: EngineStream<'_>,
    ) -> Result<PendingRoots, CudaError> {
        let kept = ranges.iter().map(|(memory, _)| memory.clone()).collect();
        self.queue_before(Target::Many(ranges), kept, digest, engine)
    }

    fn queue_before(
        &self,
        target: Target<'_>,
        memory: Vec<Resident>,
        digest: GpuDigest,
        engine: EngineStream<'_>,
    ) -> Result<PendingRoots, CudaError> {
        // A lane of the pool (a stream and its pinned memory), made when none is free.
        let taken = lock(&self.ahead).pop();
        let mut lane = match taken {
            Some(lane) => lane,
            None => Lane::new(&self.device)?,
        };
        let stream = Arc::clone(&lane.stream);
        // After the work the engine queued before: the bytes hashed are the ones its next
        // kernels read.
        let mut prior = Event::new(&self.device)?;
        prior.record_on(engine)?;
        stream.wait_for(&prior)?;
        let (scratch, roots) =
            self.queue_roots(&stream, target, digest, GpuShare::Full, &mut lane)?;
        let mut done = Event::new(&self.device)?;
        done.record(&stream)?;
        done.hold(engine)?;
        Ok(PendingRoots {
            scratch: Some(scratch),
            lane: Some(lane),
            pool: Arc::clone(&self.ahead),
            roots,
            digest,
            device: Arc::clone(&self.device),
            memory,
        })
    }

    /// Checks every range, then queues the leaves, the fold and the copy of every root into
    /// the `lane`'s pinned memory (its range table first, for many ranges; then 32 bytes a
    /// root, device word order) on `stream`. Returns the scratch, which the caller drops after
    /// it has waited for the stream, and where in the lane's memory the roots are.
    fn queue_roots(
        &self,
        stream: &Arc<Stream>,
        target: Target<'_>,
        digest: GpuDigest,
        share: GpuShare,
        lane: &mut Lane,
    ) -> Result<(Scratch, std::ops::Range<usize>), CudaError> {
        let out_of_host =
            || CudaError::Unreachable("a lane's pinned memory holds its table and roots");
        match target {
            Target::One(buffer, len) => {
                let roots = lane.host(32)?.get_mut(..32).ok_or_else(out_of_host)?;
                let (data, total) = self.checked(buffer, len)?;
                let leaves = digest.leaves(total);
                if let (GpuDigest::Blake3, GpuShare::Full) = (digest, share) {
                    return Ok((self.queue_blake3_groups(stream, data, total, roots)?, 0..32));
                }
                // Region A holds a state per leaf; region B, the first fold's output, is the
                // fold's other side.
                let first_fold = leaves.div_ceil(digest.fan_in());
                let scratch = Scratch::alloc(
                    stream,
                    leaves
                        .saturating_add(first_fold)
                        .saturating_mul(DIGEST_BYTES),
                )?;
                let (a, b) = (
                    scratch.at(0),
                    scratch.at(leaves.saturating_mul(DIGEST_BYTES)),
                );
                let source = LeafSource::One { data, total };
                self.queue_leaves(stream, digest, share, source, leaves, a)?;
                let root_at = self.fold(stream, digest, leaves, a, b)?;
                self.copy_roots(stream, root_at, roots)?;
                Ok((scratch, 0..32))
            }
            Target::Many(ranges) => {
                if ranges.is_empty() {
                    return Err(CudaError::InvalidArgument {
                        what: "tree digest",
                        reason: "no ranges to hash".into(),
                    });
                }
                let spans = ranges
                    .iter()
                    .map(|(memory, len)| self.checked(memory, *len))
                    .collect::<Result<Vec<_>, _>>()?;
                let layout = RangeLayout::new(&spans, digest);
                let table_bytes = layout.table_bytes();
                let leaves = layout.total(0);
                let scratch = Scratch::alloc(
                    stream,
                    table_bytes
                        .saturating_add(leaves.saturating_mul(DIGEST_BYTES))
                        .saturating_add(layout.total(1).saturating_mul(DIGEST_BYTES)),
                )?;
                let table = scratch.at(0);
                let a = scratch.at(table_bytes);
                let b = scratch.at(table_bytes.saturating_add(leaves.saturating_mul(DIGEST_BYTES)));
                let roots_at = usize::try_from(roots_offset(table_bytes)).unwrap_or(usize::MAX);
                let roots_end = roots_at.saturating_add(ranges.len().saturating_mul(32));
                let host = lane.host(roots_end)?;
                let (pinned_table, rest) = host
                    .split_at_mut_checked(roots_at)
                    .ok_or_else(out_of_host)?;
                self.upload_table(stream, table, &layout, pinned_table)?;
                let roots = rest
                    .get_mut(..roots_end.saturating_sub(roots_at))
                    .ok_or_else(out_of_host)?;
                let source = LeafSource::Ranges {
                    ptrs: table,
                    lens: table.saturating_add(layout.ranges().saturating_mul(8)),
                    offs: table.saturating_add(layout.offsets_byte(0)),
                    ranges: layout.ranges(),
                };
                self.queue_leaves(stream, digest, share, source, leaves, a)?;
                let roots_from = self.fold_ranges(stream, digest, &layout, table, a, b)?;
                self.copy_roots(stream, roots_from, roots)?;
                Ok((scratch, roots_at..roots_end))
            }
        }
    }

    /// BLAKE3 of one range on the whole GPU: the chunk-group kernel folds each block's chunks
    /// in shared memory (one node per [`BLAKE3_GROUP_CHUNKS`] chunks comes out), then the fold
    /// launches; the scratch is a 128th of the per-chunk states, with no round trip through it.
    fn queue_blake3_groups(
        &self,
        stream: &Arc<Stream>,
        data: u64,
        total: u64,
        roots: &mut [u8],
    ) -> Result<Scratch, CudaError> {
        let chunks = GpuDigest::Blake3.leaves(total);
        // A power of two, so that each block's chunks are an aligned subtree.
        let block = chunks.next_power_of_two().clamp(1, BLAKE3_GROUP_CHUNKS);
        let groups = chunks.div_ceil(block);
        let scratch = Scratch::alloc(
            stream,
            groups
                .saturating_add(groups.div_ceil(BLAKE3_FOLD_FAN_IN))
                .saturating_mul(DIGEST_BYTES),
        )?;
        let (a, b) = (
            scratch.at(0),
            scratch.at(groups.saturating_mul(DIGEST_BYTES)),
        );
        let grid = grid_for(groups, 1)?;
        let block = u32::try_from(block).unwrap_or(MAX_BLOCK);
        // SAFETY: `blake3_chunk_groups` takes (u8*, u64, u64, u32*), a function of the BLAKE3
        // module; the range was checked (`checked`) and stays allocated until the caller has
        // synchronised the stream; `a` holds one node per block, inside the live scratch.
        unsafe {
            self.blake3.module.launch_raw(
                self.blake3_groups,
                (grid, 1),
                block,
                &[data, total, chunks, a],
                stream.raw(),
            )
        }?;
        let root_at = self.fold(stream, GpuDigest::Blake3, groups, a, b)?;
        self.copy_roots(stream, root_at, roots)?;
        Ok(scratch)
    }

    /// The address and length of a range the kernels may read: on this device, inside its
    /// memory, aligned for the kernels' loads.
    fn checked(&self, buffer: &dyn Span, len: usize) -> Result<(u64, u64), CudaError> {
        let ordinal = self.device.ordinal();
        if buffer.ordinal() != ordinal {
            return Err(CudaError::WrongDevice {
                device: ordinal,
                found: buffer.ordinal(),
                operation: "tree digest",
            });
        }
        if len > buffer.span_len() {
            return Err(CudaError::OutOfRange {
                device: ordinal,
                operation: "tree digest",
            });
        }
        let data = buffer.address()?;
        if data % KERNEL_ALIGNMENT != 0 {
            return Err(CudaError::InvalidArgument {
                what: "tree digest",
                reason: format!("a range must start on a {KERNEL_ALIGNMENT}-byte boundary"),
            });
        }
        Ok((data, u64::try_from(len).unwrap_or(u64::MAX)))
    }

    fn kernels(&self, digest: GpuDigest) -> &Kernels {
        match digest {
            GpuDigest::Sha256Tree(_) => &self.sha256,
            GpuDigest::Blake3 => &self.blake3,
        }
    }

    /// Queues the leaf launches (the whole GPU or a bounded share of it).
    fn queue_leaves(
        &self,
        stream: &Stream,
        digest: GpuDigest,
        share: GpuShare,
        source: LeafSource,
        leaves: u64,
        state: u64,
    ) -> Result<(), CudaError> {
        match share {
            GpuShare::Full => {
                let block = block_size(leaves, self.multiprocessors);
                let work = match digest {
                    GpuDigest::Sha256Tree(leaf) => LeafWork::Slice {
                        leaf: u64::from(leaf.get()),
                        begin: 0,
                        len: u64::from(leaf.get()),
                    },
                    GpuDigest::Blake3 => LeafWork::Chunks { per_thread: 1 },
                };
                self.launch_leaves(stream, digest, block, source, (0, leaves), work, state)
            }
            GpuShare::Bounded { sm_fraction } => {
                self.hash_leaves_bounded(stream, digest, source, leaves, sm_fraction, state)
            }
        }
    }

    /// Queues the copy of `roots.len() / 32` root states at `from` into `roots`, pinned memory
    /// (see [`Lane`]).
    fn copy_roots(&self, stream: &Stream, from: u64, roots: &mut [u8]) -> Result<(), CudaError> {
        // SAFETY: `from` points at `roots.len() / 32` node states inside the live scratch
        // allocation, written by work queued before on this stream; `roots` is pinned host
        // memory the caller keeps alive, and untouched, until it has synchronised the stream.
        unsafe { result::memcpy_dtoh_async(roots, from, stream.raw()) }
            .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "cuMemcpyDtoHAsync"))
    }

    /// Queues the copy of `layout`'s range table to `to` (device memory of its size) through
    /// `pinned`, pinned memory at least as long, which the caller leaves untouched until the
    /// copy has run (see [`Lane`]).
    fn upload_table(
        &self,
        stream: &Stream,
        to: u64,
        layout: &RangeLayout,
        pinned: &mut [u8],
    ) -> Result<(), CudaError> {
        let len = usize::try_from(layout.table_bytes()).unwrap_or(usize::MAX);
        let pinned = pinned.get_mut(..len).ok_or(CudaError::Unreachable(
            "pinned memory holds the range table",
        ))?;
        for (out, word) in pinned.chunks_exact_mut(8).zip(layout.table()) {
            out.copy_from_slice(&word.to_ne_bytes());
        }
        self.device.bind()?;
        // SAFETY: `to` holds the table's bytes (the caller's scratch, sized for it); `pinned`
        // is pinned memory the caller keeps alive and untouched until the copy has run.
        unsafe { result::memcpy_htod_async(to, &*pinned, stream.raw()) }
            .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "cuMemcpyHtoDAsync"))
    }

    /// Queues the leaf kernel of `digest` over leaves `first..first + count`, as much of each
    /// as `work` says.
    #[allow(clippy::too_many_arguments, reason = "the kernel's parameter list")]
    fn launch_leaves(
        &self,
        stream: &Stream,
        digest: GpuDigest,
        block: u32,
        source: LeafSource,
        (first, count): (u64, u64),
        work: LeafWork,
        state: u64,
    ) -> Result<(), CudaError> {
        let kernels = self.kernels(digest);
        let threads = match work {
            LeafWork::Slice { .. } => count,
            LeafWork::Chunks { per_thread } => count.div_ceil(per_thread.max(1)),
        };
        let grid = grid_for(threads, block)?;
        // The bytes are checked to lie inside memory the caller keeps alive until the stream is
        // synchronised (`checked`); the table and `state` (8 words per leaf) are scratch, freed
        // in stream order after.
        let (function, args) = match (source, work) {
            (LeafSource::One { data, total }, LeafWork::Slice { leaf, begin, len }) => (
                kernels.leaves,
                vec![data, total, leaf, first, count, begin, len, state],
            ),
            (
                LeafSource::Ranges {
                    ptrs,
                    lens,
                    offs,
                    ranges,
                },
                LeafWork::Slice { leaf, begin, len },
            ) => (
                kernels.range_leaves,
                vec![
                    ptrs, lens, offs, ranges, leaf, first, count, begin, len, state,
                ],
            ),
            (LeafSource::One { data, total }, LeafWork::Chunks { per_thread }) => (
                kernels.leaves,
                vec![data, total, first, count, per_thread, state],
            ),
            (
                LeafSource::Ranges {
                    ptrs,
                    lens,
                    offs,
                    ranges,
                },
                LeafWork::Chunks { per_thread },
            ) => (
                kernels.range_leaves,
                vec![ptrs, lens, offs, ranges, first, count, per_thread, state],
            ),
        };
        // SAFETY: the parameter lists match the kernels': `sha256_leaves` (u8*, u64 x6, u32*),
        // `sha256_range_leaves` (u64* x3, u64 x6, u32*), `blake3_chunks` (u8*, u64 x4, u32*),
        // `blake3_range_chunks` (u64* x3, u64 x4, u32*), each function of `kernels.module`. A
        // range table holds `ranges` addresses and lengths and `ranges + 1` offsets, each
        // address with its length checked; all the memory stays allocated until the queued work
        // is done (see above).
        unsafe {
            kernels
                .module
                .launch_raw(function, (grid, 1), block, &args, stream.raw())
        }
    }

    /// At most `sm_fraction` of the SMs busy at a time: groups of leaves as many as that many
    /// blocks hold, each launch hashing `bounded_slice_bytes` per thread (a slice of every
    /// SHA-256 leaf, whole BLAKE3 chunks).
    fn hash_leaves_bounded(
        &self,
        stream: &Stream,
        digest: GpuDigest,
        source: LeafSource,
        leaves: u64,
        sm_fraction: f32,
        state: u64,
    ) -> Result<(), CudaError> {
        let blocks = bounded_blocks(self.multiprocessors, sm_fraction);
        let threads = u64::from(blocks).saturating_mul(u64::from(MAX_BLOCK));
        let (per_launch, per_thread) = match digest {
            GpuDigest::Sha256Tree(_) => (threads, 1),
            GpuDigest::Blake3 => {
                // A BLAKE3 chunk costs about 2.6x less GPU time than a KiB of SHA-256 (1.93
                // against 0.75 TB/s on an H100, `docs/perf.md`): twice the slice in chunks keeps
                // a launch no longer than a SHA-256 slice, so it costs an engine no more and
                // verifies twice the bytes (measured beside a GEMM: 2.0-2.1x at the same cost).
                let per_thread = (self
                    .bounded_slice_bytes
                    .saturating_mul(BLAKE3_BOUNDED_FACTOR)
                    / BLAKE3_CHUNK_BYTES)
                    .max(1);
                (threads.saturating_mul(per_thread), per_thread)
            }
        };
        let mut first = 0u64;
        while first < leaves {
            let count = per_launch.min(leaves.saturating_sub(first));
            // One block per SM at most: small groups use small blocks, like whole-GPU launches.
            let block = block_size(count.div_ceil(per_thread), blocks).min(MAX_BLOCK);
            match digest {
                GpuDigest::Sha256Tree(leaf) => {
                    let leaf = u64::from(leaf.get());
                    let mut begin = 0u64;
                    while begin < leaf {
                        let work = LeafWork::Slice {
                            leaf,
                            begin,
                            len: self.bounded_slice_bytes,
                        };
                        self.launch_leaves(
                            stream,
                            digest,
                            block,
                            source,
                            (first, count),
                            work,
                            state,
                        )?;
                        begin = begin.saturating_add(self.bounded_slice_bytes);
                    }
                }
                GpuDigest::Blake3 => {
                    let work = LeafWork::Chunks { per_thread };
                    self.launch_leaves(stream, digest, block, source, (first, count), work, state)?;
                }
            }
            first = first.saturating_add(count);
        }
        Ok(())
    }

    /// Folds `leaves` node states at `a` level by level (ping-pong with `b`); returns where the
    /// root ends up.
    fn fold(
        &self,
        stream: &Stream,
        digest: GpuDigest,
        leaves: u64,
        a: u64,
        b: u64,
    ) -> Result<u64, CudaError> {
        let kernels = self.kernels(digest);
        let (mut from, mut to, mut n) = (a, b, leaves);
        while n > 1 {
            let out = n.div_ceil(digest.fan_in());
            let (grid, block) = fold_geometry(digest, out)?;
            // SAFETY: `sha256_fold_level` and `blake3_fold` take (u32*, u32*, u64); `from` holds
            // `n` node states and `to` room for `ceil(n / fan_in)` (region B is sized for the
            // first fold, region A for every later one), both inside the live scratch
            // allocation.
            unsafe {
                kernels.module.launch_raw(
                    kernels.fold,
                    (grid, 1),
                    block,
                    &[from, to, n],
                    stream.raw(),
                )
            }?;
            (from, to, n) = (to, from, out);
        }
        Ok(from)
    }

    /// Folds every range's tree, all ranges in one launch per fold (ping-pong between `a`, the
    /// leaves, and `b`); returns where the roots end up, one per range in range order (at the
    /// last level every range has one node, at offsets 0..ranges).
    fn fold_ranges(
        &self,
        stream: &Stream,
        digest: GpuDigest,
        layout: &RangeLayout,
        table: u64,
        a: u64,
        b: u64,
    ) -> Result<u64, CudaError> {
        let kernels = self.kernels(digest);
        let (mut from, mut to) = (a, b);
        for level in 1..layout.levels() {
            let n_out = layout.total(level);
            let (grid, block) = fold_geometry(digest, n_out)?;
            let in_offs = table.saturating_add(layout.offsets_byte(level.saturating_sub(1)));
            let out_offs = table.saturating_add(layout.offsets_byte(level));
            // SAFETY: `sha256_range_fold_level` and `blake3_range_fold` take (u32*, u32*, u64*,
            // u64*, u64, u64); `from` holds the level above's nodes and `to` room for this
            // level's (region B is sized for level 1, the largest after the leaves; region A for
            // the leaves), and both offset tables lie in the uploaded table, all inside the live
            // scratch allocation.
            unsafe {
                kernels.module.launch_raw(
                    kernels.range_fold,
                    (grid, 1),
                    block,
                    &[from, to, in_offs, out_offs, layout.ranges(), n_out],
                    stream.raw(),
                )
            }?;
            (from, to) = (to, from);
        }
        Ok(from)
    }
}

/// Grid and block of a fold launch making `out` nodes: a thread per node for SHA-256, a block
/// of `MAX_BLOCK` threads per node (its group of up to 256 in shared memory) for BLAKE3.
fn fold_geometry(digest: GpuDigest, out: u64) -> Result<(u32, u32), CudaError> {
    match digest {
        GpuDigest::Sha256Tree(_) => Ok((grid_for(out, MAX_BLOCK)?, MAX_BLOCK)),
        GpuDigest::Blake3 => Ok((grid_for(out, 1)?, MAX_BLOCK)),
    }
}

/// How much of each leaf one leaf launch hashes.
#[derive(Clone, Copy)]
enum LeafWork {
    /// SHA-256: bytes `begin..begin + len` of every `leaf`-byte leaf, the chaining state kept
    /// between slices.
    Slice { leaf: u64, begin: u64, len: u64 },
    /// BLAKE3: whole chunks, `per_thread` of them per thread.
    Chunks { per_thread: u64 },
}

/// Where a leaf launch finds its bytes: one range, or a table of many in scratch memory.
#[derive(Clone, Copy)]
enum LeafSource {
    /// `total` bytes at `data`.
    One { data: u64, total: u64 },
    /// `ranges` ranges: device addresses of their addresses, lengths and leaf offsets.
    Ranges {
        ptrs: u64,
        lens: u64,
        offs: u64,
        ranges: u64,
    },
}

/// What one digest launch sequence reads.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// The first `len` bytes of one span.
    One(&'a dyn Span, usize),
    /// Many ranges, each `(memory, len)`.
    Many(&'a [(Resident, usize)]),
}

/// Memory the kernels read: a device, a length and the address of its first byte.
trait Span {
    fn ordinal(&self) -> u32;
    fn span_len(&self) -> usize;
    fn address(&self) -> Result<u64, CudaError>;
}

impl Span for DeviceBuffer {
    fn ordinal(&self) -> u32 {
        self.device().ordinal()
    }

    fn span_len(&self) -> usize {
        self.len()
    }

    fn address(&self) -> Result<u64, CudaError> {
        self.device_address()
    }
}

impl Span for Resident {
    fn ordinal(&self) -> u32 {
        self.device().ordinal()
    }

    fn span_len(&self) -> usize {
        self.len()
    }

    fn address(&self) -> Result<u64, CudaError> {
        self.lending_address()
    }
}

/// The roots as the digests' bytes: the kernels leave eight 32-bit words per root in device
/// (little-endian) order; SHA-256 writes each big-endian, BLAKE3 little-endian (as they lie).
fn root_bytes(digest: GpuDigest, words: &[u8]) -> Vec<[u8; 32]> {
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

/// Digests queued ahead of an engine's work ([`TreeDigestEngine::queue_root_before`],
/// [`TreeDigestEngine::queue_roots_before`]); they keep the memory they read alive. Dropped
/// without [`Self::wait`], they still wait for their stream before the memory can go.
pub struct PendingRoots {
    /// Freed in stream order after the digest, before the lane goes back to the pool.
    scratch: Option<Scratch>,
    /// The stream and pinned memory the digest runs on; back to `pool` once waited for.
    lane: Option<Lane>,
    pool: Arc<Mutex<Vec<Lane>>>,
    /// Where the roots lie in the lane's pinned memory.
    roots: std::ops::Range<usize>,
    digest: GpuDigest,
    device: Arc<Device>,
    memory: Vec<Resident>,
}

impl std::fmt::Debug for PendingRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRoots")
            .field("device", &self.device.ordinal())
            .field("roots", &self.memory.len())
            .finish_non_exhaustive()
    }
}

impl PendingRoots {
    /// Waits for the digests (their own stream only) and returns the roots, in the order the
    /// ranges were given.
    ///
    /// # Errors
    /// [`CudaError::Driver`], including an error of a digest kernel.
    pub fn wait(mut self) -> Result<Vec<[u8; 32]>, CudaError> {
        let lane = self
            .lane
            .take()
            .ok_or(CudaError::Unreachable("a pending digest has its lane"))?;
        let waited = lane.stream.synchronize();
        // The scratch goes after the wait (see `Scratch`).
        drop(self.scratch.take());
        waited?;
        self.device.trim_memory_pool()?;
        let roots = lane.roots(self.digest, self.roots.clone());
        lock(&self.pool).push(lane);
        roots
    }
}

impl Drop for PendingRoots {
    /// Not waited for: the lane's stream is waited for before the memory read can go, and the
    /// lane goes back to the pool.
    fn drop(&mut self) {
        if let Some(lane) = self.lane.take() {
            let drained = lane.stream.synchronize();
            drop(self.scratch.take());
            if drained.is_ok() {
                lock(&self.pool).push(lane);
            }
        }
    }
}

/// Where the roots start in pinned memory that holds a range table first: after the table,
/// 16-byte aligned.
fn roots_offset(table_bytes: u64) -> u64 {
    table_bytes.div_ceil(16).saturating_mul(16)
}

/// Blocks a bounded launch may use: `sm_fraction` of the SMs, at least one.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "a fraction in (0, 1] of a small SM count"
)]
fn bounded_blocks(multiprocessors: u32, sm_fraction: f32) -> u32 {
    let fraction = if sm_fraction.is_finite() {
        sm_fraction.clamp(0.0, 1.0)
    } else {
        1.0
    };
    ((multiprocessors as f32 * fraction).floor() as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_leaves_spread_over_every_scheduler_many_fill_blocks() {
        assert_eq!(block_size(262_144, 132), 128);
        assert_eq!(block_size(16_896, 132), 128);
        assert_eq!(block_size(16_384, 132), 32);
        assert_eq!(block_size(4096, 132), 8);
        assert_eq!(block_size(16, 132), 1);
        assert_eq!(block_size(1, 0), 1);
    }

    #[test]
    fn a_bounded_share_takes_a_fraction_of_the_sms_and_at_least_one() {
        assert_eq!(bounded_blocks(132, 0.0625), 8);
        assert_eq!(bounded_blocks(132, 1.0), 132);
        assert_eq!(bounded_blocks(132, 0.001), 1);
        assert_eq!(bounded_blocks(132, f32::NAN), 132);
    }
}
