//! The public entry points of sealing, one line each: every one is a plan
//! ([`plan`](super::plan)), so every seal takes the same pre-flight, steps and failure story.

use std::sync::Arc;

use vram_seal::ShardDigest;
use vram_types::{SealedShard, ShardSource, VramError};

use super::super::group::{GroupPart, SealedGroup};
use super::super::model::{EngineTensor, SealedModel};
use super::super::seal_options::SealOptions;
use super::super::shared::Shared;
use super::super::{VramManager, step};
use super::plan::{self, GroupPlan, Part, PlanError, SealPart, SealPlan};
use super::steps::Source;
use crate::backend::ForeignRange;

impl VramManager {
    /// Seals `model_bytes` on `gpu_device` under an id derived from its digest
    /// (`shard-<16 hex>-gpu<N>`), so sealing the same bytes twice on one device fails.
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] / [`VramError::InvalidDevice`] for rejected input (nothing
    /// reserved, nothing audited); [`VramError::InsufficientVram`]; [`VramError::AlreadySealed`];
    /// [`VramError::CudaAllocationFailed`] and other CUDA errors; [`VramError::PolicyViolation`]
    /// when the allocation is not device memory; [`VramError::Stopped`] after a security failure.
    pub fn seal_model(
        &self,
        model_bytes: &[u8],
        gpu_device: u32,
    ) -> Result<SealedShard, VramError> {
        self.seal_from_source(&model_bytes, gpu_device, &SealOptions::new())
    }

    /// Seals `model_bytes` on `gpu_device` under the caller's `shard_id`.
    ///
    /// # Errors
    /// As [`Self::seal_model`]; an invalid id is [`VramError::InvalidInput`], an id already live
    /// is [`VramError::AlreadySealed`].
    pub fn seal_model_with_id(
        &self,
        shard_id: &str,
        model_bytes: &[u8],
        gpu_device: u32,
    ) -> Result<SealedShard, VramError> {
        let options = SealOptions::new().shard_id(shard_id);
        self.seal_from_source(&model_bytes, gpu_device, &options)
    }

    /// Seals one tensor-parallel shard (`shard_index` of `total_shards`); both are sealed, and the
    /// generated id carries them (`shard-<16 hex>-gpu<N>-tp<i>of<n>`), so shards of one model
    /// with identical bytes on one device do not collide.
    ///
    /// # Errors
    /// As [`Self::seal_model`]; `shard_index >= total_shards` is [`VramError::InvalidInput`].
    pub fn seal_model_shard(
        &self,
        model_bytes: &[u8],
        gpu_device: u32,
        shard_index: usize,
        total_shards: usize,
    ) -> Result<SealedShard, VramError> {
        let options = SealOptions::new().tensor_parallel(shard_index, total_shards);
        self.seal_from_source(&model_bytes, gpu_device, &options)
    }

    /// Seals the bytes of `source` (a [`FileSource`](vram_types::FileSource), or `&bytes`) on
    /// `gpu_device`: a plan of one part ([`Self::plan_seal`]). The bytes go from the source
    /// through a bounded ring of pinned staging buffers straight to VRAM, so host memory stays
    /// bounded whatever the shard's size, and the digest is computed from the bytes in VRAM.
    /// `options` can name the shard, require an expected digest and cross-check the host bytes.
    ///
    /// # Errors
    /// As [`Self::seal_model`]; [`VramError::SourceReadFailed`] when the source cannot be read;
    /// [`VramError::UnexpectedDigest`] when an expected digest does not match;
    /// [`VramError::UploadMismatch`] when the cross-check finds the host bytes differ. Nothing
    /// stays allocated or reserved after an error.
    pub fn seal_from_source(
        &self,
        source: &dyn ShardSource,
        gpu_device: u32,
        options: &SealOptions,
    ) -> Result<SealedShard, VramError> {
        let part = SealPart {
            source,
            gpu_device,
            options: options.clone(),
        };
        one(step("plan", || self.plan_seal(vec![part]))?.execute()?)
    }

    /// Seals memory an inference engine already holds, where it lies: `range` is checked like
    /// the manager's own allocations (device memory of its device's context, not managed, not
    /// host memory, inside one allocation), hashed on the GPU with no copy, and sealed. The
    /// manager never frees it (dropping the shard only forgets it) and does not count it
    /// against its capacity; the engine keeps it allocated until the shard is released (the
    /// promise of the `unsafe` [`ForeignRange::device`](vram_cuda_sys::resident::ForeignRange::device)).
    /// Verified and lent like any shard ([`Self::verify_sealed`], [`Self::execute`]).
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] / [`VramError::InvalidDevice`] for a bad id, device or
    /// length, or a range this backend cannot read (nothing audited);
    /// [`VramError::PolicyViolation`] for memory that is not plain device memory of the device
    /// inside one allocation (recorded as a policy violation; the manager keeps running: the
    /// caller's range was refused, nothing was sealed); [`VramError::AlreadySealed`];
    /// [`VramError::UnexpectedDigest`]; CUDA errors; [`VramError::Stopped`].
    pub fn seal_in_place(
        &self,
        range: ForeignRange,
        options: &SealOptions,
    ) -> Result<SealedShard, VramError> {
        let part = Part {
            source: Source::InPlace(range),
            gpu_device: range.device_ordinal(),
            options: options.clone(),
        };
        one(plan::each(&self.shared, vec![part])?.execute()?)
    }

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
        let model = seal_model_set(&self.shared, model_id, tensors, expected)?;
        // A new model under this id: a hold left by a model of that id released without
        // `release_model` does not carry over.
        self.shared.unhold(model_id);
        Ok(model)
    }

    /// Seals a tensor-parallel model: part `i` becomes shard `i` of `parts.len()` (id
    /// `<model_id>:tp<i>`) on its device, and one group seal binds them all
    /// ([`Self::plan_group`]). All or nothing: the capacity of every device is reserved before
    /// any copy (each device against its own accounting and free memory), and if any shard
    /// fails, every shard already placed is released and no shard is audited as sealed. Each
    /// shard's `VramSealed` record names the group.
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] / [`VramError::InvalidDevice`] for an invalid model id, no
    /// parts, a bad device or size (nothing reserved, nothing audited);
    /// [`VramError::InsufficientVram`] naming the first device the group does not fit on; any
    /// error of [`Self::seal_from_source`] for a part (everything placed is released).
    pub fn seal_model_group(
        &self,
        model_id: &str,
        parts: &[GroupPart<'_>],
    ) -> Result<SealedGroup, VramError> {
        let parts = parts
            .iter()
            .map(|p| SealPart::new(p.source, p.gpu_device))
            .collect();
        Ok(self.plan_group(model_id, parts)?.execute()?)
    }

    /// Plans independent seals: every part is checked (id, size, device), its id claimed, the
    /// capacity of every device reserved and every expected digest in another algorithm than
    /// the manager's checked on its source, before anything is placed. Nothing is audited
    /// unless a device lacks room (one `VramAllocationFailed` record for it).
    ///
    /// # Errors
    /// [`PlanError::Part`] for a part with a bad id, device or size (nothing reserved, nothing
    /// audited), an id already live ([`VramError::AlreadySealed`]), a source that cannot be
    /// read or whose digest differs ([`VramError::UnexpectedDigest`]);
    /// [`PlanError::SameShardId`]; [`PlanError::Plan`] with [`VramError::InsufficientVram`]
    /// naming the first device the parts do not fit on, or [`VramError::Stopped`].
    pub fn plan_seal<'a>(&self, parts: Vec<SealPart<'a>>) -> Result<SealPlan<'a>, PlanError> {
        plan::each(&self.shared, parts.into_iter().map(Part::from).collect())
    }

    /// Plans a tensor-parallel group: part `i` becomes shard `i` of `parts.len()` (id
    /// `<model_id>:tp<i>`) on its device, all or nothing, bound by one group seal when it
    /// executes. Checked, claimed and reserved as [`Self::plan_seal`].
    ///
    /// # Errors
    /// As [`Self::plan_seal`]; [`PlanError::Plan`] with [`VramError::InvalidInput`] for a bad
    /// model id or no parts; [`PlanError::Part`] for a part that sets its own id or
    /// tensor-parallel position.
    pub fn plan_group<'a>(
        &self,
        model_id: &str,
        parts: Vec<SealPart<'a>>,
    ) -> Result<GroupPlan<'a>, PlanError> {
        plan::group(
            &self.shared,
            model_id,
            parts.into_iter().map(Part::from).collect(),
        )
    }
}

/// The shard of a plan of one part.
fn one(mut shards: Vec<SealedShard>) -> Result<SealedShard, VramError> {
    shards
        .pop()
        .ok_or(VramError::Unreachable("a plan of one part seals one shard"))
}

/// A model's tensors sealed in place as one set (the plan of `seal_model_in_place`, and of an
/// accepted update).
pub(in crate::manager) fn seal_model_set(
    shared: &Arc<Shared>,
    model_id: &str,
    tensors: Vec<EngineTensor>,
    expected: Option<&ShardDigest>,
) -> Result<SealedModel, VramError> {
    Ok(plan::model(shared, model_id, tensors, expected)?.execute_model()?)
}
