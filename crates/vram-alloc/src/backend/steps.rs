//! Digests spread over an engine's steps, for the step scrubber: the CUDA backend queues a
//! slice of a few shards' digest after each engine step and never waits
//! ([`vram_cuda_sys::tree_digest::StepLane`]); the mock, whose engine is the host, computes a
//! job's digests when it starts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use vram_cuda_sys::resident::Resident;
use vram_cuda_sys::tree_digest::{GpuDigest, StepLane};
use vram_seal::ShardDigest;
use vram_types::{DigestAlgorithm, GpuShare, VramError};

use super::{Backend, BufferId, BufferTable, DigestOrder, EngineStream};

/// One device's step digests of one algorithm (see the module docs). Jobs are collected in the
/// order they started.
pub(crate) trait StepDigests: Send {
    /// Begins a step: work queued from now on runs after the work queued so far on `engine`.
    ///
    /// # Errors
    /// CUDA errors.
    fn begin(&mut self, engine: Option<EngineStream<'_>>) -> Result<(), VramError>;

    /// Whether a job can start now.
    fn can_start(&self) -> bool;

    /// Starts a job over `buffers`, tagged `tag`.
    ///
    /// # Errors
    /// CUDA errors; [`VramError::InvalidInput`] for buffers that do not fit one job.
    fn start(
        &mut self,
        backend: &dyn Backend,
        tag: u64,
        buffers: &[(BufferId, usize)],
    ) -> Result<(), VramError>;

    /// Queues about `budget` bytes of the started jobs' hashing; returns the bytes queued.
    ///
    /// # Errors
    /// CUDA errors.
    fn advance(&mut self, budget: u64) -> Result<u64, VramError>;

    /// Ends the step.
    ///
    /// # Errors
    /// CUDA errors.
    fn end(&mut self) -> Result<(), VramError>;

    /// Bytes and GPU time of each ended step that has run since the last call.
    ///
    /// # Errors
    /// CUDA errors, a digest kernel's included.
    fn measured(&mut self) -> Result<Vec<(u64, Duration)>, VramError>;

    /// The digests of every finished job, with its tag; never waits.
    ///
    /// # Errors
    /// CUDA errors, a digest kernel's included.
    fn collect(&mut self) -> Result<Vec<(u64, Vec<ShardDigest>)>, VramError>;

    /// Waits for everything queued and returns what [`Self::collect`] then returns.
    ///
    /// # Errors
    /// As [`Self::collect`].
    fn drain(&mut self) -> Result<Vec<(u64, Vec<ShardDigest>)>, VramError>;
}

/// The CUDA backend's step digests: a [`StepLane`] over the backend's buffers.
pub(crate) struct CudaSteps {
    lane: StepLane,
    buffers: Arc<BufferTable<Resident>>,
    /// Each started job's lengths, by tag, to frame its roots into digests.
    lens: VecDeque<(u64, Vec<usize>)>,
}

impl CudaSteps {
    pub(crate) fn new(lane: StepLane, buffers: Arc<BufferTable<Resident>>) -> Self {
        Self {
            lane,
            buffers,
            lens: VecDeque::new(),
        }
    }

    fn finished(
        &mut self,
        roots: Vec<(u64, Vec<[u8; 32]>)>,
    ) -> Result<Vec<(u64, Vec<ShardDigest>)>, VramError> {
        let digest = self.lane.digest();
        roots
            .into_iter()
            .map(|(tag, roots)| {
                let Some((_, lens)) = self.lens.pop_front().filter(|(t, _)| *t == tag) else {
                    return Err(VramError::Unreachable("step jobs finish in start order"));
                };
                let digests = lens
                    .iter()
                    .zip(&roots)
                    .map(|(len, root)| super::cuda::shard_digest(digest, total_of(*len), root))
                    .collect();
                Ok((tag, digests))
            })
            .collect()
    }
}

fn total_of(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

impl StepDigests for CudaSteps {
    fn begin(&mut self, engine: Option<EngineStream<'_>>) -> Result<(), VramError> {
        self.lane.begin(engine).map_err(super::cuda::other)
    }

    fn can_start(&self) -> bool {
        self.lane.can_start()
    }

    fn start(
        &mut self,
        _backend: &dyn Backend,
        tag: u64,
        buffers: &[(BufferId, usize)],
    ) -> Result<(), VramError> {
        let ranges = buffers
            .iter()
            .map(|(id, len)| Ok((Resident::clone(&*self.buffers.get(*id)?), *len)))
            .collect::<Result<Vec<_>, VramError>>()?;
        self.lane.start(tag, &ranges).map_err(super::cuda::other)?;
        self.lens
            .push_back((tag, buffers.iter().map(|(_, len)| *len).collect()));
        Ok(())
    }

    fn advance(&mut self, budget: u64) -> Result<u64, VramError> {
        self.lane.advance(budget).map_err(super::cuda::other)
    }

    fn end(&mut self) -> Result<(), VramError> {
        self.lane.end().map_err(super::cuda::other)
    }

    fn measured(&mut self) -> Result<Vec<(u64, Duration)>, VramError> {
        self.lane.measured().map_err(super::cuda::other)
    }

    fn collect(&mut self) -> Result<Vec<(u64, Vec<ShardDigest>)>, VramError> {
        let roots = self.lane.collect().map_err(super::cuda::other)?;
        self.finished(roots)
    }

    fn drain(&mut self) -> Result<Vec<(u64, Vec<ShardDigest>)>, VramError> {
        let roots = self.lane.drain().map_err(super::cuda::other)?;
        let finished = self.finished(roots);
        self.lens.clear();
        finished
    }
}

/// The GPU digest a step lane computes for `algorithm`, if any (flat SHA-256 is serial: no
/// kernel hashes it).
pub(crate) fn gpu_digest(algorithm: DigestAlgorithm) -> Option<GpuDigest> {
    match algorithm.kind() {
        vram_types::DigestKind::Sha256 => None,
        vram_types::DigestKind::Sha256Tree(leaf) => Some(GpuDigest::Sha256Tree(leaf)),
        vram_types::DigestKind::Blake3 => Some(GpuDigest::Blake3),
    }
}

/// The mock's step digests: a job's digests are computed on the host when it starts (the
/// mock's engine is the host: there is no GPU time to spread).
pub(crate) struct MockSteps {
    algorithm: DigestAlgorithm,
    done: VecDeque<(u64, Vec<ShardDigest>)>,
    /// Bytes hashed at `start` and not yet reported by `advance` (the host hashes a job whole;
    /// the steps report its bytes as a GPU's would, within their budgets).
    unreported: u64,
}

impl MockSteps {
    pub(crate) fn new(algorithm: DigestAlgorithm) -> Self {
        Self {
            algorithm,
            done: VecDeque::new(),
            unreported: 0,
        }
    }
}

impl StepDigests for MockSteps {
    fn begin(&mut self, _engine: Option<EngineStream<'_>>) -> Result<(), VramError> {
        Ok(())
    }

    fn can_start(&self) -> bool {
        self.done.len() < 2
    }

    fn start(
        &mut self,
        backend: &dyn Backend,
        tag: u64,
        buffers: &[(BufferId, usize)],
    ) -> Result<(), VramError> {
        let digests = backend.digest(buffers, self.algorithm, GpuShare::Full, DigestOrder::Now)?;
        self.done.push_back((tag, digests));
        let bytes: usize = buffers.iter().map(|(_, len)| *len).sum();
        self.unreported = self
            .unreported
            .saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX));
        Ok(())
    }

    fn advance(&mut self, budget: u64) -> Result<u64, VramError> {
        let n = self.unreported.min(budget.max(1));
        self.unreported = self.unreported.saturating_sub(n);
        Ok(n)
    }

    fn end(&mut self) -> Result<(), VramError> {
        Ok(())
    }

    fn measured(&mut self) -> Result<Vec<(u64, Duration)>, VramError> {
        Ok(Vec::new())
    }

    fn collect(&mut self) -> Result<Vec<(u64, Vec<ShardDigest>)>, VramError> {
        Ok(self.done.drain(..).collect())
    }

    fn drain(&mut self) -> Result<Vec<(u64, Vec<ShardDigest>)>, VramError> {
        self.collect()
    }
}
