//! Digests ordered on the GPU after an engine's work and ahead of its next kernels, with no host
//! round trip: [`TreeDigestEngine::queue_root_before`] and the [`PendingRoots`] it returns.

use std::sync::{Arc, Mutex};

use vram_types::GpuShare;

use super::lane::Scratch;
use super::{GpuDigest, Lane, Target, TreeDigestEngine, lock};
use crate::device::Device;
use crate::error::CudaError;
use crate::resident::Resident;
use crate::stream::{EngineStream, Event};

impl TreeDigestEngine {
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

    pub(super) fn queue_before(
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
