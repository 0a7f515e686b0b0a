//! The one pre-flight of every seal, and its execution. A plan takes parts (a source to upload
//! or a range already in VRAM, a device, its [`SealOptions`]) as one of three sets: independent
//! shards, a tensor-parallel group, or a model's tensors sealed in place. Before a byte is
//! copied it checks every id, size and device, claims the ids, and reserves each device's whole
//! share (against the manager's accounting and the device's free memory; parts sealed in place
//! take no capacity). Executing it seals the parts in order ([`steps`](super::steps)), each
//! checked against its expected digest on the resident bytes, with one story for failure: the
//! first part that fails stops the plan, everything the plan placed is released, and the error
//! names the part. A set's shards are audited as sealed only once the whole set is (group
//! seal or model digest), and a set whose records cannot all be stored is released.

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vram_seal::ShardDigest;
use vram_seal::group::compute_group_seal;
use vram_seal::model::{TensorEntry, encode_model, model_digest};
use vram_types::validation::{ShardId, validate_gpu_device, validate_model_size};
use vram_types::{DigestAlgorithm, GpuShare, SealedShard, ShardSource, VramError};

use super::super::group::SealedGroup;
use super::super::model::{EngineTensor, SealedModel, SealedTensor};
use super::super::seal_options::SealOptions;
use super::super::shared::{Claim, Shared};
use super::ids;
use super::preflight::{self, Checked};
use super::steps::{self, PartRequest, Placed, Sealed, Source};
use crate::audit::AuditEvent;
use crate::backend::DigestOrder;
use crate::capacity::Reservation;

/// One shard to seal: its bytes, its device and what its seal must check.
#[derive(Clone)]
pub struct SealPart<'a> {
    /// The shard's bytes (`&bytes`, or a [`FileSource`](vram_types::FileSource)).
    pub source: &'a dyn ShardSource,
    /// The CUDA device it is sealed on.
    pub gpu_device: u32,
    /// Its id, expected digest, cross-check. In a group the plan names the shards
    /// (`<model_id>:tp<i>`), so a part there must leave the id and the tensor-parallel
    /// position unset.
    pub options: SealOptions,
}

impl<'a> SealPart<'a> {
    /// A part with default options (an id derived from the digest, no extra checks).
    #[must_use]
    pub fn new(source: &'a dyn ShardSource, gpu_device: u32) -> Self {
        Self {
            source,
            gpu_device,
            options: SealOptions::new(),
        }
    }

    /// The same part with `options`.
    #[must_use]
    pub fn with_options(mut self, options: SealOptions) -> Self {
        self.options = options;
        self
    }
}

impl fmt::Debug for SealPart<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealPart")
            .field("bytes", &self.source.len())
            .field("gpu_device", &self.gpu_device)
            .field("options", &self.options)
            .finish()
    }
}

/// Why a plan was refused or failed, and which part it was about (the caller knows the part by
/// its position: a file, a manifest line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Part `part` (0-based, in the order given) was refused or failed to seal. Everything the
    /// plan had placed is released.
    #[error("part {part}: {error}")]
    Part {
        /// Its position in the plan.
        part: usize,
        /// What went wrong.
        error: VramError,
    },
    /// Two parts would be one shard.
    #[error("parts {first} and {second} would both be shard {shard_id:?}; give each shard once")]
    SameShardId {
        /// The first part with the id.
        first: usize,
        /// The second.
        second: usize,
        /// The id.
        shard_id: String,
    },
    /// The plan as a whole: no parts, a bad model id, a device its parts do not fit on
    /// ([`VramError::InsufficientVram`] with the device's whole share as `needed`), a stopped
    /// manager.
    #[error(transparent)]
    Plan(VramError),
}

impl PlanError {
    /// The part the error is about, if it is about one.
    #[must_use]
    pub fn part(&self) -> Option<usize> {
        match self {
            Self::Part { part, .. } => Some(*part),
            Self::SameShardId { second, .. } => Some(*second),
            Self::Plan(_) => None,
        }
    }
}

impl From<PlanError> for VramError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Part { error, .. } | PlanError::Plan(error) => error,
            PlanError::SameShardId { shard_id, .. } => VramError::invalid_input(
                "shard id",
                format!("{shard_id:?} is given to two parts of one plan; give each shard once"),
            ),
        }
    }
}

/// What a plan reports as it executes; the caller's observer may stop it after any step
/// (`ControlFlow::Break`): everything placed is then released and the plan returns `None`.
#[derive(Debug)]
#[non_exhaustive]
pub enum PlanStep<'s> {
    /// Part `part` is sealed.
    Sealed {
        /// The part.
        part: usize,
        /// Its shard.
        shard: &'s SealedShard,
        /// How long placing and sealing it took.
        took: Duration,
    },
}

/// One part of any plan: a [`SealPart`] to upload, or a range sealed in place.
pub(super) struct Part<'a> {
    pub(super) source: Source<'a>,
    pub(super) gpu_device: u32,
    pub(super) options: SealOptions,
}

impl<'a> From<SealPart<'a>> for Part<'a> {
    fn from(p: SealPart<'a>) -> Self {
        Self {
            source: Source::Upload(p.source),
            gpu_device: p.gpu_device,
            options: p.options,
        }
    }
}

/// What the parts of a plan are together.
pub(super) enum Set {
    /// Independent shards.
    Each,
    /// A tensor-parallel group: part `i` is shard `i` of `n` (`<model_id>:tp<i>`), bound by one
    /// group seal.
    Group(String),
    /// An engine's tensors sealed in place, bound by the model digest.
    Model(ModelSet),
}

impl Set {
    /// The id a set's `VramSealed` records name.
    fn id(&self) -> Option<&str> {
        match self {
            Self::Each => None,
            Self::Group(id) => Some(id),
            Self::Model(m) => Some(&m.model_id),
        }
    }
}

/// A model's name, device, tensors (in name order, part `i` is tensor `i`) and expected digest.
pub(super) struct ModelSet {
    model_id: String,
    device: u32,
    tensors: Vec<EngineTensor>,
    expected: Option<ShardDigest>,
}

/// A part that passed the plan: its length, its claimed id (unless derived from the digest
/// at seal time) and its share of the device's reservation (none in place).
struct Planned<'a> {
    part: Part<'a>,
    len: usize,
    claim: Option<Claim>,
    reservation: Option<Reservation>,
}

/// Seals checked, claimed and reserved, not yet placed. Dropping it gives everything back.
#[must_use = "a plan holds capacity until it is executed or dropped"]
pub struct SealPlan<'a> {
    shared: Arc<Shared>,
    parts: Vec<Planned<'a>>,
    set: Set,
}

impl fmt::Debug for SealPlan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealPlan")
            .field("parts", &self.parts.len())
            .field("set", &self.set.id())
            .field("reserved_bytes", &self.reserved_bytes())
            .finish()
    }
}

/// A tensor-parallel group's plan: executes to a [`SealedGroup`].
#[derive(Debug)]
#[must_use = "a plan holds capacity until it is executed or dropped"]
pub struct GroupPlan<'a>(SealPlan<'a>);

/// Plans independent parts (uploads or ranges in place).
pub(super) fn each<'a>(
    shared: &Arc<Shared>,
    parts: Vec<Part<'a>>,
) -> Result<SealPlan<'a>, PlanError> {
    SealPlan::new(shared, parts, Set::Each)
}

/// Plans a tensor-parallel group.
pub(super) fn group<'a>(
    shared: &Arc<Shared>,
    model_id: &str,
    parts: Vec<Part<'a>>,
) -> Result<GroupPlan<'a>, PlanError> {
    ShardId::new(model_id).map_err(PlanError::Plan)?;
    if parts.is_empty() {
        return Err(PlanError::Plan(VramError::invalid_input(
            "group", "no parts",
        )));
    }
    SealPlan::new(shared, parts, Set::Group(model_id.to_owned())).map(GroupPlan)
}

/// Plans a model an engine holds: its tensors in name order, one device, a total within the
/// model-size limit, names the model digest can encode; tensor `i` becomes shard
/// `<model_id>:<name>` sealed in place.
pub(super) fn model(
    shared: &Arc<Shared>,
    model_id: &str,
    mut tensors: Vec<EngineTensor>,
    expected: Option<&ShardDigest>,
) -> Result<SealPlan<'static>, PlanError> {
    shared.ensure_running().map_err(PlanError::Plan)?;
    ShardId::new(model_id).map_err(PlanError::Plan)?;
    tensors.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let device = tensors
        .first()
        .map(|t| t.range.device_ordinal())
        .ok_or_else(|| PlanError::Plan(VramError::invalid_input("model", "no tensors")))?;
    validate_gpu_device(device, shared.backend().device_count()).map_err(PlanError::Plan)?;
    if let Some(t) = tensors.iter().find(|t| t.range.device_ordinal() != device) {
        return Err(PlanError::Plan(VramError::invalid_input(
            "model",
            format!(
                "tensor {:?} is on device {}, the model on device {device}: seal one model per device",
                t.name,
                t.range.device_ordinal()
            ),
        )));
    }
    let total = tensors
        .iter()
        .map(|t| t.range.len())
        .fold(0usize, usize::saturating_add);
    validate_model_size(total, shared.config().max_model_bytes).map_err(PlanError::Plan)?;
    // The encoding's own checks (names given twice, fields too large) before anything is
    // claimed: the digests are not known yet, and do not change what it accepts.
    let algorithm = shared.config().digest_algorithm;
    encode_model(&entries(&tensors, algorithm, |_| {
        ShardDigest::from_bytes([0; 32])
    }))
    .map_err(PlanError::Plan)?;
    let parts = tensors
        .iter()
        .enumerate()
        .map(|(index, t)| Part {
            source: Source::InPlace(t.range),
            gpu_device: device,
            options: SealOptions::new().shard_id(ids::model_tensor(model_id, &t.name, index)),
        })
        .collect();
    let set = Set::Model(ModelSet {
        model_id: model_id.to_owned(),
        device,
        tensors,
        expected: expected.cloned(),
    });
    SealPlan::new(shared, parts, set)
}

impl<'a> SealPlan<'a> {
    fn new(shared: &Arc<Shared>, parts: Vec<Part<'a>>, set: Set) -> Result<Self, PlanError> {
        shared.ensure_running().map_err(PlanError::Plan)?;
        let count = parts.len();
        let checked = preflight::check(shared, parts, &set)?;
        let claims = preflight::claim(shared, &checked)?;
        let mut reservations = preflight::reserve(shared, &checked)?;
        let mut parts = Vec::with_capacity(count);
        for (
            Checked {
                part,
                len,
                footprint,
            },
            claim,
        ) in checked.into_iter().zip(claims)
        {
            let reservation = footprint
                .map(|bytes| {
                    reservations
                        .get_mut(&part.gpu_device)
                        .and_then(|r| r.split_off(bytes))
                        .ok_or(PlanError::Plan(VramError::Unreachable(
                            "a device's reservation covers its parts",
                        )))
                })
                .transpose()?;
            parts.push(Planned {
                part,
                len,
                claim,
                reservation,
            });
        }
        Ok(Self {
            shared: Arc::clone(shared),
            parts,
            set,
        })
    }

    /// Number of parts.
    #[must_use]
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether the plan has no parts (an independent plan may be empty).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Device bytes the plan holds reserved, granularity included.
    #[must_use]
    pub fn reserved_bytes(&self) -> usize {
        self.parts
            .iter()
            .filter_map(|p| p.reservation.as_ref())
            .map(Reservation::bytes)
            .fold(0, usize::saturating_add)
    }

    /// Seals every part, in order. On an error everything the plan placed is released.
    ///
    /// # Errors
    /// As [`Self::execute_with`].
    pub fn execute(self) -> Result<Vec<SealedShard>, PlanError> {
        self.execute_with(|_| ControlFlow::Continue(()))
            .map(Option::unwrap_or_default)
    }

    /// Seals every part in order, showing each step to `observe`, which may stop the plan
    /// (`None`: everything placed is released). Each shard is audited as sealed when it is
    /// placed.
    ///
    /// # Errors
    /// [`PlanError::Part`] naming the first part that failed, with the error of
    /// [`VramManager::seal_from_source`](super::super::VramManager::seal_from_source)
    /// (everything the plan placed is released first); [`PlanError::Plan`] with
    /// [`VramError::Stopped`].
    pub fn execute_with(
        self,
        observe: impl FnMut(PlanStep<'_>) -> ControlFlow<()>,
    ) -> Result<Option<Vec<SealedShard>>, PlanError> {
        Ok(self
            .run_each(observe)?
            .map(|sealed| sealed.into_iter().map(|s| s.shard).collect()))
    }

    /// Every part through every step, one part after the other; `None` when `observe` stopped
    /// it.
    fn run_each(
        self,
        mut observe: impl FnMut(PlanStep<'_>) -> ControlFlow<()>,
    ) -> Result<Option<Vec<Sealed>>, PlanError> {
        let shared = &self.shared;
        shared.ensure_running().map_err(PlanError::Plan)?;
        let set = self.set.id();
        let mut sealed: Vec<Sealed> = Vec::with_capacity(self.parts.len());
        for (index, planned) in self.parts.into_iter().enumerate() {
            let started = Instant::now();
            let request = PartRequest {
                source: planned.part.source,
                device: planned.part.gpu_device,
                options: &planned.part.options,
                len: planned.len,
                claim: planned.claim,
                reservation: planned.reservation,
                set,
            };
            // On an error, `sealed` drops here: every shard placed so far is released.
            let shard = steps::seal_part(shared, request)
                .map_err(|error| PlanError::Part { part: index, error })?;
            let step = PlanStep::Sealed {
                part: index,
                shard: &shard.shard,
                took: started.elapsed(),
            };
            let flow = observe(step);
            sealed.push(shard);
            if flow.is_break() {
                return Ok(None);
            }
        }
        Ok(Some(sealed))
    }

    /// A model's plan: every tensor placed and checked, all digested in one launch sequence,
    /// the model digest compared with the expected one before any tensor is signed, then every
    /// tensor signed and registered, and the model's records stored (or the model released).
    pub(super) fn execute_model(self) -> Result<SealedModel, PlanError> {
        let shared = &self.shared;
        shared.ensure_running().map_err(PlanError::Plan)?;
        let Set::Model(model) = self.set else {
            return Err(PlanError::Plan(VramError::Unreachable(
                "a model plan is made by plan::model",
            )));
        };
        let device = model.device;
        let result = run_batched(shared, self.parts, model);
        shared.metrics().count_seal(device, result.is_ok());
        shared.refresh_capacity_metrics(device);
        result
    }
}

/// The batched steps of a model's plan (see [`SealPlan::execute_model`]).
fn run_batched(
    shared: &Arc<Shared>,
    parts: Vec<Planned<'_>>,
    model: ModelSet,
) -> Result<SealedModel, PlanError> {
    let correlation_id = shared.next_correlation_id();
    let part_error = |part| move |error| PlanError::Part { part, error };
    let mut uploaded = Vec::with_capacity(parts.len());
    for (index, p) in parts.iter().enumerate() {
        let placed = Placed::new(
            shared,
            p.part.source,
            p.part.gpu_device,
            p.len,
            p.reservation.as_ref(),
            &correlation_id,
        )
        .and_then(|placed| placed.fill(p.part.source, &p.part.options, &correlation_id))
        .map_err(part_error(index))?;
        uploaded.push(placed);
    }
    let buffers = uploaded
        .iter()
        .map(steps::Uploaded::buffer)
        .collect::<Result<Vec<_>, VramError>>()
        .map_err(PlanError::Plan)?;
    let algorithm = shared.config().digest_algorithm;
    let digests = shared
        .backend()
        .digest(&buffers, algorithm, GpuShare::Full, DigestOrder::Now)
        .map_err(PlanError::Plan)?;
    let digest = model_digest(&entries(&model.tensors, algorithm, |i| {
        digests
            .get(i)
            .cloned()
            .unwrap_or_else(|| ShardDigest::from_bytes([0; 32]))
    }))
    .map_err(PlanError::Plan)?;
    if let Some(expected) = &model.expected
        && !expected.ct_eq(&digest)
    {
        return Err(PlanError::Plan(VramError::UnexpectedDigest {
            expected: expected.to_hex(),
            actual: digest.to_hex(),
        }));
    }
    let mut sealed = Vec::with_capacity(parts.len());
    for (index, ((uploaded, digest), planned)) in
        uploaded.into_iter().zip(digests).zip(parts).enumerate()
    {
        let options = &planned.part.options;
        let s = uploaded
            .digested(digest)
            .check(options)
            .and_then(|d| d.sign(options, planned.claim))
            .and_then(|s| s.register(planned.reservation, &correlation_id, Some(&model.model_id)))
            .map_err(part_error(index))?;
        sealed.push(s);
    }
    let mut held_back = Vec::with_capacity(sealed.len());
    let tensors = sealed
        .into_iter()
        .zip(model.tensors)
        .map(|(s, t)| {
            held_back.extend(s.held_back);
            SealedTensor::new(t, s.shard)
        })
        .collect();
    let sealed_model = SealedModel::new(model.model_id, model.device, tensors, digest);
    commit_held_back(shared, held_back)?;
    Ok(sealed_model)
}

impl GroupPlan<'_> {
    /// Number of parts.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the group has no parts (never: a group plan is refused without parts).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Device bytes the plan holds reserved, granularity included.
    #[must_use]
    pub fn reserved_bytes(&self) -> usize {
        self.0.reserved_bytes()
    }

    /// Seals every part and binds them with one group seal: all or nothing.
    ///
    /// # Errors
    /// As [`Self::execute_with`].
    pub fn execute(self) -> Result<SealedGroup, PlanError> {
        self.execute_with(|_| ControlFlow::Continue(()))?
            .ok_or(PlanError::Plan(VramError::Unreachable(
                "a plan that is never stopped runs to the end",
            )))
    }

    /// As [`SealPlan::execute_with`], then one group seal over every shard. No shard is
    /// audited as sealed until the whole group is placed and sealed; each `VramSealed` record
    /// names the group.
    ///
    /// # Errors
    /// As [`SealPlan::execute_with`]; [`PlanError::Plan`] with [`VramError::AuditFailed`] when
    /// the records cannot be stored (the group is released).
    pub fn execute_with(
        self,
        observe: impl FnMut(PlanStep<'_>) -> ControlFlow<()>,
    ) -> Result<Option<SealedGroup>, PlanError> {
        let shared = Arc::clone(&self.0.shared);
        let model_id = self.0.set.id().unwrap_or_default().to_owned();
        let Some(sealed) = self.0.run_each(observe)? else {
            return Ok(None);
        };
        let mut shards = Vec::with_capacity(sealed.len());
        let mut held_back = Vec::with_capacity(sealed.len());
        for s in sealed {
            shards.push(s.shard);
            held_back.extend(s.held_back);
        }
        let mut group = SealedGroup::unsigned(model_id, shards);
        let seal = compute_group_seal(shared.key(), &group.fields()).map_err(PlanError::Plan)?;
        group.set_seal(seal);
        commit_held_back(&shared, held_back)?;
        Ok(Some(group))
    }
}

/// A set's epilogue, fail-closed: its `VramSealed` records, held back until the whole set was
/// sealed, are stored; if one cannot be, the error goes back and the caller's set (dropped on
/// the error) releases every shard, and those releases are recorded.
fn commit_held_back(
    shared: &Shared,
    held_back: Vec<(String, AuditEvent)>,
) -> Result<(), PlanError> {
    for (correlation_id, event) in held_back {
        shared
            .record(&correlation_id, event)
            .map_err(PlanError::Plan)?;
    }
    Ok(())
}

/// The model digest's entries for `tensors` (in name order), tensor `i`'s digest from `digest`.
fn entries(
    tensors: &[EngineTensor],
    algorithm: DigestAlgorithm,
    digest: impl Fn(usize) -> ShardDigest,
) -> Vec<TensorEntry> {
    tensors
        .iter()
        .enumerate()
        .map(|(i, t)| t.entry(algorithm, digest(i)))
        .collect()
}
