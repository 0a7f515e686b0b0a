//! The `sha256-tree-L` digest of bytes already in VRAM: a leaf kernel hashes every leaf where it
//! lies, a fold kernel pairs nodes level by level on the GPU, and only the 32-byte root comes
//! back to the host. The kernels (`kernels/sha256_tree.cu`, PTX committed beside it) are
//! checked bit for bit against `vram-seal`'s CPU implementation by the GPU tests.
//!
//! Everything runs on streams of the lowest priority and waits on them only, never on the whole
//! context, so an inference engine's kernels on its own streams are scheduled first.

use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::result;
use cudarc::driver::sys::{CUdeviceptr, CUfunction};
use vram_types::{GpuShare, LeafSize};

use crate::device::Device;
use crate::error::{CudaError, CudaStatus};
use crate::memory::{DeviceBuffer, PinnedBuffer};
use crate::module::Module;
use crate::resident::Resident;
use crate::stream::{EngineStream, Event, Stream, StreamPriority};

/// PTX of `kernels/sha256_tree.cu` (`cargo xtask ptx` regenerates it).
pub const SHA256_TREE_PTX: &str = include_str!("../kernels/sha256_tree.ptx");

/// Default bytes of each leaf a bounded-share launch hashes. Short launches hand the SMs back
/// often: next to a GEMM loop on an H100, 4 KiB slices cost it 0.2-0.4 % at 1/32 to 1/8 of the
/// SMs, 16 KiB slices 14 % at 1/8 and 34 % at 1/16 (`docs/perf.md`).
pub const BOUNDED_SLICE_BYTES: u64 = 4 * 1024;

/// Threads per block of whole-GPU launches (the kernels' launch bound).
const MAX_BLOCK: u32 = 128;
/// Warp schedulers per SM on every GPU this targets (Volta to Hopper).
const SCHEDULERS_PER_SM: u64 = 4;
const DIGEST_BYTES: u64 = 32;

/// The digest kernels loaded on one device, with a stream for per-request digests and one for
/// bounded background digests (so a long background pass never delays a request's check).
pub struct TreeDigestEngine {
    device: Arc<Device>,
    module: Module,
    leaves: CUfunction,
    fold: CUfunction,
    multiprocessors: u32,
    bounded_slice_bytes: u64,
    full_lane: Mutex<Stream>,
    bounded_lane: Mutex<Stream>,
}

// SAFETY: the CUfunction handles are driver handles valid on every thread for the module's
// lifetime (the module is owned by the engine); launches go through the driver, which is
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
/// allocation nor its release synchronises the device.
struct Scratch<'s> {
    stream: &'s Stream,
    ptr: CUdeviceptr,
}

impl<'s> Scratch<'s> {
    fn alloc(stream: &'s Stream, bytes: u64) -> Result<Self, CudaError> {
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
        Ok(Self { stream, ptr })
    }

    fn at(&self, byte_offset: u64) -> u64 {
        self.ptr.saturating_add(byte_offset)
    }
}

impl Drop for Scratch<'_> {
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

fn lock(m: &Mutex<Stream>) -> std::sync::MutexGuard<'_, Stream> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TreeDigestEngine {
    /// Loads the kernels on `device` and makes its two lowest-priority streams.
    ///
    /// # Errors
    /// [`CudaError::Driver`] when the driver refuses the PTX (for example a driver
    /// older than the PTX version) or a stream cannot be made.
    pub fn new(device: &Arc<Device>) -> Result<Self, CudaError> {
        let module = Module::load_ptx(device, SHA256_TREE_PTX)?;
        let leaves = module.function("sha256_leaves")?;
        let fold = module.function("sha256_fold_level")?;
        Ok(Self {
            device: Arc::clone(device),
            leaves,
            fold,
            multiprocessors: device.multiprocessor_count()?,
            bounded_slice_bytes: BOUNDED_SLICE_BYTES,
            full_lane: Mutex::new(Stream::new(device, StreamPriority::Lowest)?),
            bounded_lane: Mutex::new(Stream::new(device, StreamPriority::Lowest)?),
            module,
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

    /// The tree root over the first `len` bytes of `buffer` with `leaf`-byte leaves: the value
    /// `vram_seal::digest::tree::root_from_leaf_digests` gives for the same bytes.
    ///
    /// # Errors
    /// [`CudaError::OutOfRange`] when `len` exceeds the buffer; [`CudaError::WrongDevice`] for a
    /// buffer of another device; [`CudaError::Driver`] when a launch or copy fails;
    /// [`CudaError::OutOfMemory`] when the leaf states (32 bytes a leaf, and half as much again
    /// for the fold) do not fit.
    pub fn tree_root(
        &self,
        buffer: &DeviceBuffer,
        len: usize,
        leaf: LeafSize,
        share: GpuShare,
    ) -> Result<[u8; 32], CudaError> {
        self.tree_root_ordered(buffer, len, leaf, share, None)
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
        leaf: LeafSize,
        share: GpuShare,
        after: Option<EngineStream<'_>>,
    ) -> Result<[u8; 32], CudaError> {
        self.tree_root_ordered(memory, len, leaf, share, after)
    }

    fn tree_root_ordered(
        &self,
        buffer: &dyn Span,
        len: usize,
        leaf: LeafSize,
        share: GpuShare,
        after: Option<EngineStream<'_>>,
    ) -> Result<[u8; 32], CudaError> {
        let lane = match share {
            GpuShare::Full => &self.full_lane,
            GpuShare::Bounded { .. } => &self.bounded_lane,
        };
        let stream = lock(lane);
        if let Some(engine) = after {
            let mut engine_done = Event::new(&self.device)?;
            engine_done.record_on(engine)?;
            stream.wait_for(&engine_done)?;
        }
        let mut root = [0u8; 32];
        let queued = self.queue_root(&stream, buffer, len, leaf, share, &mut root);
        // Waited for on every path: no queued kernel may outlive this call and read `buffer`
        // after the caller frees it, even when a later launch failed.
        let waited = stream.synchronize();
        queued?;
        waited?;
        self.device.trim_memory_pool()?;
        Ok(root_bytes(root))
    }

    /// Queues the digest of `buffer`'s first `len` bytes ahead of an engine's work, for the
    /// pipelined execution: on a stream of its own, and the engine's stream waits on the GPU
    /// until the digest is done, so the engine's kernels queued next start right after it with
    /// no host round trip. [`PendingRoot::wait`] gives the root.
    ///
    /// # Errors
    /// As [`Self::tree_root`]; [`CudaError::HostMemory`] when the root's pinned slot cannot be
    /// had; [`CudaError::WrongDevice`] for a stream of another device.
    pub fn queue_root_before(
        &self,
        buffer: &Resident,
        len: usize,
        leaf: LeafSize,
        engine: EngineStream<'_>,
    ) -> Result<PendingRoot, CudaError> {
        // Pinned, so that the copy of the root does not make the host wait for the digest.
        let mut out = PinnedBuffer::alloc(&self.device, 32)?;
        let stream = Stream::new(&self.device, StreamPriority::Lowest)?;
        let slot: &mut [u8; 32] = out
            .as_mut_slice()
            .try_into()
            .map_err(|_| CudaError::Unreachable("a 32-byte pinned slot"))?;
        self.queue_root(&stream, buffer, len, leaf, GpuShare::Full, slot)?;
        let mut done = Event::new(&self.device)?;
        done.record(&stream)?;
        done.hold(engine)?;
        // Kept in the pending root: dropping an event waits for it on the host, which would
        // put back the round trip this form exists to remove.
        Ok(PendingRoot {
            stream,
            _done: done,
            out,
            device: Arc::clone(&self.device),
            _memory: buffer.clone(),
        })
    }

    /// Checks the range, then queues the leaves, the fold and the copy of the root into `root`
    /// (device word order) on `stream`; the scratch is freed in stream order. The caller waits
    /// for the stream before reading `root` or freeing `buffer`.
    fn queue_root(
        &self,
        stream: &Stream,
        buffer: &dyn Span,
        len: usize,
        leaf: LeafSize,
        share: GpuShare,
        root: &mut [u8; 32],
    ) -> Result<(), CudaError> {
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
        let total = u64::try_from(len).unwrap_or(u64::MAX);
        let leaf_bytes = u64::from(leaf.get());
        let leaves = total.div_ceil(leaf_bytes).max(1);
        // Region A holds a state per leaf; region B, half as many, is the fold's other side.
        let half = leaves.div_ceil(2);
        let scratch = Scratch::alloc(
            stream,
            leaves.saturating_add(half).saturating_mul(DIGEST_BYTES),
        )?;
        let (a, b) = (
            scratch.at(0),
            scratch.at(leaves.saturating_mul(DIGEST_BYTES)),
        );
        let data = buffer.address()?;
        // Freed in stream order after the queued work (dropped at the end of this call), so the
        // pool hands the memory back to the device at the caller's wait.
        self.queue_digest(stream, share, data, total, leaf_bytes, leaves, (a, b), root)
    }

    /// Queues the leaf launches, the fold and the copy of the root into `root`; the caller
    /// waits for the stream.
    #[allow(clippy::too_many_arguments, reason = "the digest's parameters")]
    fn queue_digest(
        &self,
        stream: &Stream,
        share: GpuShare,
        data: u64,
        total: u64,
        leaf_bytes: u64,
        leaves: u64,
        (a, b): (u64, u64),
        root: &mut [u8; 32],
    ) -> Result<(), CudaError> {
        match share {
            GpuShare::Full => {
                let block = block_size(leaves, self.multiprocessors);
                let whole = (0, leaf_bytes);
                self.launch_leaves(
                    stream,
                    block,
                    data,
                    total,
                    leaf_bytes,
                    (0, leaves),
                    whole,
                    a,
                )?;
            }
            GpuShare::Bounded { sm_fraction } => {
                self.hash_leaves_bounded(stream, data, total, leaf_bytes, leaves, sm_fraction, a)?;
            }
        }
        let root_at = self.fold(stream, leaves, a, b)?;
        // SAFETY: `root_at` points at 8 words inside the live scratch allocation, written by
        // work queued before on this stream; `root` is host memory of exactly 32 bytes that
        // the caller keeps alive until it has synchronised the stream.
        unsafe { result::memcpy_dtoh_async(root.as_mut_slice(), root_at, stream.raw()) }
            .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "cuMemcpyDtoHAsync"))
    }

    /// Queues the leaf kernel over leaves `first..first + count`, bytes `begin..begin + slice`
    /// of each.
    #[allow(clippy::too_many_arguments, reason = "the kernel's parameter list")]
    fn launch_leaves(
        &self,
        stream: &Stream,
        block: u32,
        data: u64,
        total: u64,
        leaf: u64,
        (first, count): (u64, u64),
        (begin, slice): (u64, u64),
        state: u64,
    ) -> Result<(), CudaError> {
        let grid = grid_for(count, block)?;
        let args = [data, total, leaf, first, count, begin, slice, state];
        // `data` has `total` bytes (checked by the caller, who keeps it alive until the stream is
        // synchronised); `state` has 8 words per leaf (scratch, freed in stream order after).
        // SAFETY: `sha256_leaves` takes (u8*, u64 x6, u32*) in this order; the memory it touches
        // stays allocated until the queued work is done (see above).
        unsafe {
            self.module
                .launch_raw(self.leaves, (grid, 1), block, &args, stream.raw())
        }
    }

    /// At most `sm_fraction` of the SMs busy at a time: groups of leaves as many as that many
    /// blocks hold, each group in slices of `bounded_slice_bytes` per leaf.
    #[allow(clippy::too_many_arguments, reason = "the kernel's parameter list")]
    fn hash_leaves_bounded(
        &self,
        stream: &Stream,
        data: u64,
        total: u64,
        leaf: u64,
        leaves: u64,
        sm_fraction: f32,
        state: u64,
    ) -> Result<(), CudaError> {
        let blocks = bounded_blocks(self.multiprocessors, sm_fraction);
        let per_launch = u64::from(blocks).saturating_mul(u64::from(MAX_BLOCK));
        let mut first = 0u64;
        while first < leaves {
            let count = per_launch.min(leaves.saturating_sub(first));
            // One block per SM at most: small groups use small blocks, like whole-GPU launches.
            let block = block_size(count, blocks).min(MAX_BLOCK);
            let mut begin = 0u64;
            while begin < leaf {
                self.launch_leaves(
                    stream,
                    block,
                    data,
                    total,
                    leaf,
                    (first, count),
                    (begin, self.bounded_slice_bytes),
                    state,
                )?;
                begin = begin.saturating_add(self.bounded_slice_bytes);
            }
            first = first.saturating_add(count);
        }
        Ok(())
    }

    /// Folds `leaves` node states at `a` level by level (ping-pong with `b`); returns where the
    /// root ends up.
    fn fold(&self, stream: &Stream, leaves: u64, a: u64, b: u64) -> Result<u64, CudaError> {
        let (mut from, mut to, mut n) = (a, b, leaves);
        while n > 1 {
            let out = n.div_ceil(2);
            let grid = grid_for(out, MAX_BLOCK)?;
            // SAFETY: `sha256_fold_level` takes (u32*, u32*, u64); `from` holds `n` node states
            // and `to` room for `ceil(n/2)` (region B is sized for the first level, region A for
            // every later one), both inside the live scratch allocation.
            unsafe {
                self.module.launch_raw(
                    self.fold,
                    (grid, 1),
                    MAX_BLOCK,
                    &[from, to, n],
                    stream.raw(),
                )
            }?;
            (from, to, n) = (to, from, out);
        }
        Ok(from)
    }
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

/// The root as the digest's bytes: the kernels leave eight 32-bit words in device (little-endian)
/// order; SHA-256 writes each big-endian.
fn root_bytes(words: [u8; 32]) -> [u8; 32] {
    let mut root = [0u8; 32];
    for (out, word) in root.chunks_exact_mut(4).zip(words.chunks_exact(4)) {
        let word: [u8; 4] = word.try_into().unwrap_or_default();
        out.copy_from_slice(&u32::from_le_bytes(word).to_be_bytes());
    }
    root
}

/// A digest queued ahead of an engine's work ([`TreeDigestEngine::queue_root_before`]); it
/// keeps the buffer it reads alive. Dropped without [`Self::wait`], it still waits for its
/// stream before the buffer can go.
pub struct PendingRoot {
    // Dropped first: the stream waits for its work before the event, the root's slot and the
    // buffer go.
    stream: Stream,
    _done: Event,
    out: PinnedBuffer,
    device: Arc<Device>,
    _memory: Resident,
}

impl std::fmt::Debug for PendingRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRoot")
            .field("device", &self.device.ordinal())
            .finish_non_exhaustive()
    }
}

impl PendingRoot {
    /// Waits for the digest (its own stream only) and returns the root.
    ///
    /// # Errors
    /// [`CudaError::Driver`], including an error of a digest kernel.
    pub fn wait(self) -> Result<[u8; 32], CudaError> {
        self.stream.synchronize()?;
        self.device.trim_memory_pool()?;
        let words: [u8; 32] = self
            .out
            .as_slice()
            .try_into()
            .map_err(|_| CudaError::Unreachable("a 32-byte pinned slot"))?;
        Ok(root_bytes(words))
    }
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
