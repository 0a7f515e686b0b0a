//! Models sealed in place: every tensor an engine holds on one device becomes a shard sealed
//! where it lies, all tensors hashed in one launch sequence, and the model digest
//! (`.specs/model-digest.md`) binds every tensor's name, dtype, shape, length and digest, so it
//! can be compared with `vramctl digest --tensors` of the model's file. A model is verified as
//! one unit: one launch sequence over every tensor, one audit record naming the model.

use std::sync::Arc;

use vram_seal::ShardDigest;
use vram_seal::model::{TensorEntry, encode_model, model_digest};
use vram_types::validation::{ShardId, validate_gpu_device, validate_model_size};
use vram_types::{GpuShare, SealedShard, VramError};

use super::VramManager;
use super::seal::{Placed, Uploaded, validate_in_place};
use super::seal_options::SealOptions;
use super::shared::{Claim, Shared};
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
    /// Seals a model an engine already holds, where it lies: every tensor's range is checked
    /// like [`Self::seal_in_place`] checks one, all are hashed on the GPU in one launch sequence
    /// (a model of hundreds of tensors costs about what one range of the same size costs), and
    /// each becomes a shard sealed in place. The model digest covers every tensor's name,
    /// dtype, shape, length and digest; with `expected` (from `vramctl digest --tensors` of the
    /// model's file) a model whose digest differs is refused and nothing stays sealed. All or
    /// nothing: a tensor that fails releases every other. Each tensor's `VramSealed` record
    /// names the model as its group.
    ///
    /// # Safety (of the ranges)
    /// Each range was made with the `unsafe`
    /// [`ForeignRange::device`](vram_cuda_sys::resident::ForeignRange::device): the engine
    /// keeps every tensor allocated until the model is dropped.
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] / [`VramError::InvalidDevice`] for a bad model id, no
    /// tensors, a name given twice, tensors on several devices, a total over the model-size
    /// limit or a range this backend cannot read (nothing audited);
    /// [`VramError::PolicyViolation`] for a range that is not plain device memory (recorded; the
    /// manager keeps running); [`VramError::AlreadySealed`] when a tensor's id is live;
    /// [`VramError::UnexpectedDigest`] when the model digest is not `expected`; CUDA errors;
    /// [`VramError::AuditFailed`]; [`VramError::Stopped`].
    pub fn seal_model_in_place(
        &self,
        model_id: &str,
        tensors: Vec<EngineTensor>,
        expected: Option<&ShardDigest>,
    ) -> Result<SealedModel, VramError> {
        let shared = &self.shared;
        shared.ensure_running()?;
        let request = ModelRequest::validate(shared, model_id, tensors)?;
        let device = request.device;
        let result = request.seal(shared, expected);
        shared.metrics().count_seal(device, result.is_ok());
        shared.refresh_capacity_metrics(device);
        tracing::debug!(
            gpu_device = device,
            model_id,
            ok = result.is_ok(),
            "model sealed in place"
        );
        result
    }

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

/// A model's tensors that passed every check that needs no device, in name order, each with
/// its shard id.
struct ModelRequest {
    model_id: String,
    device: u32,
    tensors: Vec<(EngineTensor, SealOptions)>,
}

impl ModelRequest {
    fn validate(
        shared: &Shared,
        model_id: &str,
        mut tensors: Vec<EngineTensor>,
    ) -> Result<Self, VramError> {
        ShardId::new(model_id)?;
        tensors.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let device = tensors
            .first()
            .map(|t| t.range.device_ordinal())
            .ok_or_else(|| VramError::invalid_input("model", "no tensors"))?;
        validate_gpu_device(device, shared.backend().device_count())?;
        if let Some(t) = tensors.iter().find(|t| t.range.device_ordinal() != device) {
            return Err(VramError::invalid_input(
                "model",
                format!(
                    "tensor {:?} is on device {}, the model on device {device}: seal one model per device",
                    t.name,
                    t.range.device_ordinal()
                ),
            ));
        }
        let total = tensors
            .iter()
            .map(|t| t.range.len())
            .fold(0usize, usize::saturating_add);
        validate_model_size(total, shared.config().max_model_bytes)?;
        // The encoding's own checks (names given twice, fields too large) before anything is
        // claimed: the digests are not known yet, and do not change what it accepts.
        let algorithm = shared.config().digest_algorithm;
        encode_model(&entries(&tensors, algorithm, |_| {
            ShardDigest::from_bytes([0; 32])
        }))?;
        let tensors = tensors
            .into_iter()
            .enumerate()
            .map(|(index, t)| {
                let options =
                    SealOptions::new().shard_id(tensor_shard_id(model_id, &t.name, index));
                validate_in_place(shared, &t.range, &options)?;
                Ok((t, options))
            })
            .collect::<Result<Vec<_>, VramError>>()?;
        Ok(Self {
            model_id: model_id.to_owned(),
            device,
            tensors,
        })
    }

    fn seal(
        self,
        shared: &Arc<Shared>,
        expected: Option<&ShardDigest>,
    ) -> Result<SealedModel, VramError> {
        let claims = self
            .tensors
            .iter()
            .map(|(_, options)| shared.claim(options.shard_id.as_deref().unwrap_or_default()))
            .collect::<Result<Vec<Claim>, VramError>>()?;
        let correlation_id = shared.next_correlation_id();
        let uploaded = self
            .tensors
            .iter()
            .map(|(t, _)| Placed::adopt(shared, t.range)?.in_place(&correlation_id))
            .collect::<Result<Vec<Uploaded<'_>>, VramError>>()?;
        let buffers = uploaded
            .iter()
            .map(Uploaded::buffer)
            .collect::<Result<Vec<_>, VramError>>()?;
        let algorithm = shared.config().digest_algorithm;
        let digests =
            shared
                .backend()
                .digest(&buffers, algorithm, GpuShare::Full, DigestOrder::Now)?;
        let digest = model_digest(&entries(&self.tensors, algorithm, |i| {
            digests
                .get(i)
                .cloned()
                .unwrap_or_else(|| ShardDigest::from_bytes([0; 32]))
        }))?;
        if let Some(expected) = expected
            && !expected.ct_eq(&digest)
        {
            return Err(VramError::UnexpectedDigest {
                expected: expected.to_hex(),
                actual: digest.to_hex(),
            });
        }
        let mut sealed = Vec::with_capacity(self.tensors.len());
        let mut held_back = Vec::with_capacity(self.tensors.len());
        for (((uploaded, digest), claim), (tensor, options)) in uploaded
            .into_iter()
            .zip(digests)
            .zip(claims)
            .zip(self.tensors)
        {
            let s = uploaded
                .digested(digest)
                .sign(&options, Some(claim))?
                .register(None, &correlation_id, Some(&self.model_id))?;
            held_back.extend(s.held_back);
            sealed.push(SealedTensor {
                name: tensor.name,
                dtype: tensor.dtype,
                shape: tensor.shape,
                shard: s.shard,
            });
        }
        let model = SealedModel {
            model_id: self.model_id,
            gpu_device: self.device,
            tensors: sealed,
            digest,
        };
        // Fail-closed: a model whose records cannot all be stored is released (dropping `model`
        // on the error forgets every tensor, and those releases are recorded).
        for (correlation_id, event) in held_back {
            shared.record(&correlation_id, event)?;
        }
        Ok(model)
    }
}

/// The model digest's entries for `tensors` (in name order), tensor `i`'s digest from `digest`.
fn entries(
    tensors: &[impl AsTensor],
    algorithm: vram_types::DigestAlgorithm,
    digest: impl Fn(usize) -> ShardDigest,
) -> Vec<TensorEntry> {
    tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let t = t.tensor();
            TensorEntry {
                name: t.name.clone(),
                dtype: t.dtype.clone(),
                shape: t.shape.clone(),
                bytes: u64::try_from(t.range.len()).unwrap_or(u64::MAX),
                algorithm,
                digest: digest(i),
            }
        })
        .collect()
}

/// A tensor, alone or with its seal options.
trait AsTensor {
    fn tensor(&self) -> &EngineTensor;
}

impl AsTensor for EngineTensor {
    fn tensor(&self) -> &EngineTensor {
        self
    }
}

impl AsTensor for (EngineTensor, SealOptions) {
    fn tensor(&self) -> &EngineTensor {
        &self.0
    }
}

/// `<model_id>:<name>` when that is a valid shard id, else `<model_id>:@<index>` (a name with
/// characters a shard id cannot hold, or too long). Two ids that collide are refused as
/// already sealed.
fn tensor_shard_id(model_id: &str, name: &str, index: usize) -> String {
    let by_name = format!("{model_id}:{name}");
    if ShardId::new(&by_name).is_ok() {
        by_name
    } else {
        format!("{model_id}:@{index}")
    }
}

#[cfg(test)]
mod tests {
    use super::tensor_shard_id;

    #[test]
    fn a_tensor_is_named_by_its_name_when_a_shard_id_can_hold_it() {
        assert_eq!(
            tensor_shard_id("llama", "model.layers.0.mlp.up_proj.weight", 3),
            "llama:model.layers.0.mlp.up_proj.weight"
        );
        assert_eq!(tensor_shard_id("llama", "a b", 3), "llama:@3");
        assert_eq!(tensor_shard_id("llama", &"x".repeat(300), 7), "llama:@7");
    }
}
