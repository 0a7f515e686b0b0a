//! Models sealed in place (sealed by the planner, `seal/plan.rs`): every tensor an engine holds
//! on one device becomes a shard sealed where it lies, all tensors hashed in one launch
//! sequence, and the model digest (`.specs/model-digest.md`) binds every tensor's name, dtype,
//! shape, length and digest, so it can be compared with `vramctl digest --tensors` of the model's file. A model is verified as
//! one unit: one launch sequence over every tensor, one audit record naming the model.

use vram_seal::ShardDigest;
use vram_seal::model::TensorEntry;
use vram_types::{DigestAlgorithm, GpuShare, SealedShard, VramError};

use super::VramManager;
use super::verify::{Stage, Subject, verify_ordered};
use crate::backend::{DigestOrder, ForeignRange};

/// One tensor an engine holds, to be sealed in place as part of a model: its name, element
/// type and shape as the model's file names them (they enter the model digest), and its device
/// memory.
#[derive(Debug, Clone)]
pub struct EngineTensor {
    /// The tensor's name (unique in the model).
    pub name: String,
    /// Its element type as the file names it (`BF16`, `F32`, `Q4_K`, ...).
    pub dtype: String,
    /// Its shape, in the file's order.
    pub shape: Vec<u64>,
    /// Its device memory (every byte of the tensor, contiguous).
    pub range: ForeignRange,
}

impl EngineTensor {
    /// The tensor's entry in the model digest, with its digest in `algorithm`.
    pub(crate) fn entry(&self, algorithm: DigestAlgorithm, digest: ShardDigest) -> TensorEntry {
        TensorEntry {
            name: self.name.clone(),
            dtype: self.dtype.clone(),
            shape: self.shape.clone(),
            bytes: u64::try_from(self.range.len()).unwrap_or(u64::MAX),
            algorithm,
            digest,
        }
    }
}

/// One tensor of a sealed model: what the model digest covers, and the shard sealed over its
/// memory.
#[derive(Debug, Clone)]
pub struct SealedTensor {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    shard: SealedShard,
}

impl SealedTensor {
    /// A tensor and the shard sealed over it.
    pub(super) fn new(tensor: EngineTensor, shard: SealedShard) -> Self {
        Self {
            name: tensor.name,
            dtype: tensor.dtype,
            shape: tensor.shape,
            shard,
        }
    }

    /// The tensor's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its element type.
    #[must_use]
    pub fn dtype(&self) -> &str {
        &self.dtype
    }

    /// Its shape.
    #[must_use]
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The shard sealed over its memory (id `<model_id>:<name>`, or `<model_id>:@<index>` for
    /// a name a shard id cannot hold), with the tensor's digest.
    #[must_use]
    pub fn shard(&self) -> &SealedShard {
        &self.shard
    }
}

/// A model an engine holds, sealed in place ([`VramManager::seal_model_in_place`]): its tensors
/// in name order (byte-wise), each a shard, and the model digest over all of them. Only the
/// manager makes one. Dropping it forgets every tensor (the memory stays the engine's).
#[derive(Debug, Clone)]
pub struct SealedModel {
    model_id: String,
    gpu_device: u32,
    tensors: Vec<SealedTensor>,
    digest: ShardDigest,
}

impl SealedModel {
    /// A model whose tensors are sealed (the plan makes it, `seal/plan.rs`).
    pub(super) fn new(
        model_id: String,
        gpu_device: u32,
        tensors: Vec<SealedTensor>,
        digest: ShardDigest,
    ) -> Self {
        Self {
            model_id,
            gpu_device,
            tensors,
            digest,
        }
    }

    /// The model's id.
    #[must_use]
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The CUDA device its tensors are on.
    #[must_use]
    pub fn gpu_device(&self) -> u32 {
        self.gpu_device
    }

    /// The tensors, names in byte order.
    #[must_use]
    pub fn tensors(&self) -> &[SealedTensor] {
        &self.tensors
    }

    /// The tensor named `name`.
    #[must_use]
    pub fn tensor(&self, name: &str) -> Option<&SealedTensor> {
        self.tensors
            .binary_search_by(|t| t.name.as_bytes().cmp(name.as_bytes()))
            .ok()
            .and_then(|i| self.tensors.get(i))
    }

    /// The model digest (`.specs/model-digest.md`): what `vramctl digest --tensors` prints for
    /// the model's file, as `vram-model-v1:HEX`.
    #[must_use]
    pub fn digest(&self) -> &ShardDigest {
        &self.digest
    }

    /// Bytes of every tensor together.
    #[must_use]
    pub fn total_bytes(&self) -> usize {
        self.tensors
            .iter()
            .map(|t| t.shard.vram_bytes)
            .fold(0, usize::saturating_add)
    }

    /// The model as one verification: every tensor, audited under the model's id.
    pub(super) fn subject(&self) -> Subject<'_> {
        Subject {
            id: &self.model_id,
            device: self.gpu_device,
            shards: self.tensors.iter().map(|t| &t.shard).collect(),
            summarized: false,
        }
    }
}

impl VramManager {
    /// Verifies a model sealed in place: every tensor's seal, freshness and residency, then
    /// every tensor's bytes, all hashed in one launch sequence. Audited and counted as one
    /// verification named by the model's id.
    ///
    /// # Errors
    /// As [`Self::verify_sealed`], for the first tensor (in name order) that fails; its shard
    /// id names the tensor.
    pub fn verify_model(&self, model: &SealedModel) -> Result<(), VramError> {
        verify_ordered(
            &self.shared,
            &model.subject(),
            GpuShare::Full,
            DigestOrder::Now,
            Stage::Standalone,
        )
    }

    /// [`Self::verify_model`] at the configured background share of the GPU.
    ///
    /// # Errors
    /// As [`Self::verify_model`].
    pub fn verify_model_background(&self, model: &SealedModel) -> Result<(), VramError> {
        verify_ordered(
            &self.shared,
            &model.subject(),
            self.shared.config().background_gpu_share,
            DigestOrder::Now,
            Stage::Standalone,
        )
    }
}
