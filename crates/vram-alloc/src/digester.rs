//! Digests of memory an engine holds, with no manager: the same kernels a seal uses, where the
//! bytes lie (no host copy), many ranges in one launch sequence, ordered on the GPU after the
//! work queued on the engine's stream. Nothing is sealed, reserved, audited or counted: a
//! sender digests what it sends, a receiver what arrived, and they compare.
//!
//! A range must be plain device memory of its device (the pointer-attribute check a seal
//! makes); anything else is refused as bad input, and nothing is read from it.

use std::sync::Arc;

use vram_seal::ShardDigest;
use vram_seal::model::{TensorEntry, model_digest};
use vram_types::validation::validate_gpu_device;
use vram_types::{DigestAlgorithm, GpuShare, VramError};

use crate::EngineTensor;
use crate::backend::{
    Backend, BufferId, CudaBackend, DigestOrder, EngineStream, ForeignRange, MockBackend,
    PendingDigest,
};
use crate::manager::allocation_check;

/// Digests of device ranges and of a model's tensors, computed where they lie.
/// `Send + Sync`: keep one per process and share it.
#[derive(Debug, Clone)]
pub struct RangeDigester {
    backend: Arc<dyn Backend>,
}

/// Every tensor's digest and the model digest over them (`.specs/model-digest.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDigests {
    /// Each tensor's name and digest, names in byte order.
    pub tensors: Vec<(String, ShardDigest)>,
    /// The model digest: what `vramctl digest --tensors` prints for the same tensors saved as
    /// a safetensors file.
    pub model: ShardDigest,
}

impl RangeDigester {
    /// Every GPU of the machine, through the CUDA driver (loaded at run time).
    ///
    /// # Errors
    /// [`VramError::NoGpu`] without a driver or GPU; [`VramError::DriverTooOld`]; CUDA errors
    /// while opening a device.
    pub fn cuda() -> Result<Self, VramError> {
        Ok(Self {
            backend: Arc::new(CudaBackend::open()?),
        })
    }

    /// On a manager's backend (an update names the tensor that differs).
    pub(crate) fn on(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    /// The mock backend's memory (tests, the demo): ranges made by
    /// [`MockBackend::engine_memory`] or [`MockBackend::engine_host_tensor`].
    #[must_use]
    pub fn mock(backend: Arc<MockBackend>) -> Self {
        Self { backend }
    }

    /// The digest of each range, in order, computed where it lies: all of one device's ranges
    /// in one launch sequence, after the work queued so far on `after` (an engine's stream;
    /// `None`: the bytes are already final). Flat `sha256` has no kernel: its bytes are read
    /// back and hashed on the host.
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] for ranges on several devices or memory that is not plain
    /// device memory of its device (nothing read); [`VramError::InvalidDevice`]; CUDA errors.
    pub fn digest(
        &self,
        ranges: &[ForeignRange],
        algorithm: DigestAlgorithm,
        after: Option<EngineStream<'_>>,
    ) -> Result<Vec<ShardDigest>, VramError> {
        let Some(adopted) = self.adopt(ranges)? else {
            return Ok(Vec::new());
        };
        let order = after.map_or(DigestOrder::Now, DigestOrder::After);
        let digests = self
            .backend
            .digest(&adopted.buffers, algorithm, GpuShare::Full, order)?;
        with_empties(ranges, algorithm, digests)
    }

    /// [`Self::digest`] queued on the GPU, not waited for: after the work queued so far on
    /// `after` (an engine's stream), which then waits on the GPU for the digests (its kernels
    /// queued next start after them). The host goes on, taking the next tensors while these
    /// are hashed, and [`QueuedDigests::wait`] gives the digests. The ranges must stay
    /// allocated until then.
    ///
    /// # Errors
    /// As [`Self::digest`].
    pub fn queue(
        &self,
        ranges: &[ForeignRange],
        algorithm: DigestAlgorithm,
        after: EngineStream<'_>,
    ) -> Result<QueuedDigests, VramError> {
        let adopted = self.adopt(ranges)?;
        let pending = match &adopted {
            Some(adopted) => Some(self.backend.digest_before(
                &adopted.buffers,
                algorithm,
                after,
            )?),
            None => None,
        };
        Ok(QueuedDigests {
            pending,
            _adopted: adopted,
            ranges: ranges.to_vec(),
            algorithm,
        })
    }

    /// The non-empty ranges registered with the backend and checked, all on one device; `None`
    /// for no ranges.
    fn adopt(&self, ranges: &[ForeignRange]) -> Result<Option<Adopted>, VramError> {
        let Some(first) = ranges.first() else {
            return Ok(None);
        };
        let device = first.device_ordinal();
        validate_gpu_device(device, self.backend.device_count())?;
        if let Some(other) = ranges.iter().find(|r| r.device_ordinal() != device) {
            return Err(VramError::invalid_input(
                "ranges",
                format!(
                    "on devices {device} and {}: digest each device's ranges apart",
                    other.device_ordinal()
                ),
            ));
        }
        // Empty ranges hold nothing to read: their digest is the empty input's.
        let adopted = Adopted::new(&self.backend, ranges.iter().filter(|r| !r.is_empty()))?;
        adopted.check(device)?;
        Ok(Some(adopted))
    }

    /// Every tensor's digest and the model digest, as [`Self::digest`] computes them. Empty
    /// tensors are left out of the model digest (as `vramctl digest --tensors` leaves them
    /// out) and of `tensors`.
    ///
    /// # Errors
    /// As [`Self::digest`]; [`VramError::InvalidInput`] for a name given twice or no tensor with
    /// bytes.
    pub fn digest_model(
        &self,
        tensors: &[EngineTensor],
        algorithm: DigestAlgorithm,
        after: Option<EngineStream<'_>>,
    ) -> Result<ModelDigests, VramError> {
        let mut held: Vec<&EngineTensor> = tensors.iter().filter(|t| !t.range.is_empty()).collect();
        if held.is_empty() {
            return Err(VramError::invalid_input(
                "tensors",
                "no tensor with bytes: empty tensors are left out of the model digest",
            ));
        }
        held.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let ranges: Vec<ForeignRange> = held.iter().map(|t| t.range).collect();
        let digests = self.digest(&ranges, algorithm, after)?;
        let entries: Vec<TensorEntry> = held
            .iter()
            .zip(&digests)
            .map(|(t, d)| t.entry(algorithm, *d))
            .collect();
        let model = model_digest(&entries)?;
        Ok(ModelDigests {
            tensors: held.iter().map(|t| t.name.clone()).zip(digests).collect(),
            model,
        })
    }
}

/// Digests queued by [`RangeDigester::queue`]; dropped without [`Self::wait`], they are still
/// waited for before the ranges are forgotten.
pub struct QueuedDigests {
    pending: Option<Box<dyn PendingDigest>>,
    /// Forgotten after `pending` (field order): the digests read these ranges.
    _adopted: Option<Adopted>,
    ranges: Vec<ForeignRange>,
    algorithm: DigestAlgorithm,
}

impl std::fmt::Debug for QueuedDigests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedDigests")
            .field("ranges", &self.ranges.len())
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl QueuedDigests {
    /// Waits for the digests: one per range, in the order given to [`RangeDigester::queue`].
    ///
    /// # Errors
    /// CUDA errors of the digest.
    pub fn wait(mut self) -> Result<Vec<ShardDigest>, VramError> {
        let digests = match self.pending.take() {
            Some(pending) => pending.wait()?,
            None => Vec::new(),
        };
        with_empties(&self.ranges, self.algorithm, digests)
    }
}

/// One digest per range: the empty input's for an empty range, else the next of `digests`
/// (those of the non-empty ranges, in order).
fn with_empties(
    ranges: &[ForeignRange],
    algorithm: DigestAlgorithm,
    digests: Vec<ShardDigest>,
) -> Result<Vec<ShardDigest>, VramError> {
    let mut gpu = digests.into_iter();
    ranges
        .iter()
        .map(|r| {
            if r.is_empty() {
                Ok(vram_seal::digest::digest(&[], algorithm))
            } else {
                gpu.next()
                    .ok_or(VramError::Unreachable("one digest per non-empty range"))
            }
        })
        .collect()
}

/// Ranges registered with the backend for one digest, forgotten on drop (never freed: they
/// are the engine's).
struct Adopted {
    backend: Arc<dyn Backend>,
    buffers: Vec<(BufferId, usize)>,
}

impl Adopted {
    fn new<'r>(
        backend: &Arc<dyn Backend>,
        ranges: impl Iterator<Item = &'r ForeignRange>,
    ) -> Result<Self, VramError> {
        let mut adopted = Self {
            backend: Arc::clone(backend),
            buffers: Vec::new(),
        };
        for range in ranges {
            let buffer = backend.adopt(*range)?;
            adopted.buffers.push((buffer, range.len()));
        }
        Ok(adopted)
    }

    /// Every range is plain device memory of `device` covering its length.
    fn check(&self, device: u32) -> Result<(), VramError> {
        for &(buffer, len) in &self.buffers {
            if let Some(reason) = allocation_check::problem_on(&*self.backend, buffer, device, len)?
            {
                return Err(VramError::invalid_input(
                    "range",
                    format!("not digested: {reason}"),
                ));
            }
        }
        Ok(())
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        for &(buffer, _) in &self.buffers {
            if let Err(e) = self.backend.free(buffer) {
                tracing::error!(error = %e, "forgetting an adopted range failed");
            }
        }
    }
}
