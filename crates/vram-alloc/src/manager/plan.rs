//! Seal plans: the one pre-flight of every seal. A plan takes parts (a source, a device, its
//! [`SealOptions`]), independent or as a tensor-parallel group, and before a byte is copied it
//! checks every id, size and device, claims the ids, reserves each device's whole share
//! (against the manager's accounting and the device's free memory). Executing it seals the
//! parts in order, each checked against its expected digest on the resident bytes (never on a
//! separate read of the source, which could differ from what was uploaded), with one story for
//! failure:
//! the first part that fails stops the plan, everything the plan placed is released, and the
//! error names the part.
//!
//! `seal_model`, `seal_from_source` and `seal_model_group` are one-line plans; a caller with
//! several files (`vramctl seal`) builds one plan for all of them.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vram_seal::group::compute_group_seal;
use vram_types::validation::{ShardId, validate_gpu_device, validate_model_size};
use vram_types::{SealedShard, ShardSource, VramError};

use super::VramManager;
use super::group::SealedGroup;
use super::seal::{self, PartRequest, Sealed};
use super::seal_options::SealOptions;
use super::shared::{Claim, Shared};
use crate::audit::AuditEvent;
use crate::backend::round_up;
use crate::capacity::{DeviceCapacity, Reservation};

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

/// A part that passed the plan: its length, its claimed id (unless derived from the digest
/// at seal time) and its share of the device's reservation.
struct Planned<'a> {
    part: SealPart<'a>,
    len: usize,
    claim: Option<Claim>,
    reservation: Reservation,
}

/// Seals checked, claimed and reserved, not yet placed. Dropping it gives everything back.
#[must_use = "a plan holds capacity until it is executed or dropped"]
pub struct SealPlan<'a> {
    shared: Arc<Shared>,
    parts: Vec<Planned<'a>>,
    /// The model id of a tensor-parallel group.
    group: Option<String>,
}

impl fmt::Debug for SealPlan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealPlan")
            .field("parts", &self.parts.len())
            .field("group", &self.group)
            .field("reserved_bytes", &self.reserved_bytes())
            .finish()
    }
}

/// A tensor-parallel group's plan: executes to a [`SealedGroup`].
#[derive(Debug)]
#[must_use = "a plan holds capacity until it is executed or dropped"]
pub struct GroupPlan<'a>(SealPlan<'a>);

impl VramManager {
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
        SealPlan::new(&self.shared, parts, None)
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
        ShardId::new(model_id).map_err(PlanError::Plan)?;
        if parts.is_empty() {
            return Err(PlanError::Plan(VramError::invalid_input(
                "group", "no parts",
            )));
        }
        SealPlan::new(&self.shared, parts, Some(model_id)).map(GroupPlan)
    }
}

impl<'a> SealPlan<'a> {
    fn new(
        shared: &Arc<Shared>,
        parts: Vec<SealPart<'a>>,
        group: Option<&str>,
    ) -> Result<Self, PlanError> {
        shared.ensure_running().map_err(PlanError::Plan)?;
        let count = parts.len();
        // Cheap checks of every part first: rejected input reserves and audits nothing.
        let mut checked = Vec::with_capacity(count);
        for (index, mut part) in parts.into_iter().enumerate() {
            if let Some(model_id) = group {
                if part.options.shard_id.is_some() || part.options.tensor_parallel.is_some() {
                    return Err(PlanError::Part {
                        part: index,
                        error: VramError::invalid_input(
                            "group part",
                            "sets its own shard id or tensor-parallel position; a group names its shards <model_id>:tp<i>",
                        ),
                    });
                }
                part.options = part
                    .options
                    .shard_id(format!("{model_id}:tp{index}"))
                    .tensor_parallel(index, count);
            }
            let (len, footprint) =
                validate(shared, &part).map_err(|error| PlanError::Part { part: index, error })?;
            checked.push(Checked {
                part,
                len,
                footprint,
            });
        }
        distinct_ids(&checked)?;
        let mut claims = Vec::with_capacity(count);
        for (index, Checked { part, .. }) in checked.iter().enumerate() {
            let claim = part
                .options
                .shard_id
                .as_deref()
                .map(|id| shared.claim(id))
                .transpose()
                .map_err(|error| PlanError::Part { part: index, error })?;
            claims.push(claim);
        }
        let mut reservations = reserve(shared, &checked)?;
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
            let reservation = reservations
                .get_mut(&part.gpu_device)
                .and_then(|r| r.split_off(footprint))
                .ok_or(PlanError::Plan(VramError::Unreachable(
                    "a device's reservation covers its parts",
                )))?;
            parts.push(Planned {
                part,
                len,
                claim,
                reservation,
            });
        }
        let plan = Self {
            shared: Arc::clone(shared),
            parts,
            group: group.map(str::to_owned),
        };
        Ok(plan)
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
            .map(|p| p.reservation.bytes())
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

    /// Checks the expected digests that are checked on the host, then seals every part in
    /// order, showing each step to `observe`, which may stop the plan (`None`: everything
    /// placed is released). Each shard is audited as sealed when it is placed.
    ///
    /// # Errors
    /// [`PlanError::Part`] naming the first part that failed, with the error of
    /// [`VramManager::seal_from_source`] (everything the plan placed is released first);
    /// [`PlanError::Plan`] with [`VramError::Stopped`].
    pub fn execute_with(
        self,
        observe: impl FnMut(PlanStep<'_>) -> ControlFlow<()>,
    ) -> Result<Option<Vec<SealedShard>>, PlanError> {
        Ok(self
            .run(observe)?
            .map(|sealed| sealed.into_iter().map(|s| s.shard).collect()))
    }

    /// The host checks, then every part placed and sealed; `None` when `observe` stopped it.
    fn run(
        self,
        mut observe: impl FnMut(PlanStep<'_>) -> ControlFlow<()>,
    ) -> Result<Option<Vec<Sealed>>, PlanError> {
        let shared = &self.shared;
        shared.ensure_running().map_err(PlanError::Plan)?;
        let mut sealed: Vec<Sealed> = Vec::with_capacity(self.parts.len());
        for (index, planned) in self.parts.into_iter().enumerate() {
            let device = planned.part.gpu_device;
            let started = Instant::now();
            let request = PartRequest {
                source: planned.part.source,
                device,
                options: &planned.part.options,
                len: planned.len,
                claim: planned.claim,
                reservation: planned.reservation,
                group: self.group.as_deref(),
            };
            // On an error, `sealed` drops here: every shard placed so far is released.
            let shard = seal::seal_part(shared, request)
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
        let model_id = self.0.group.clone().unwrap_or_default();
        let Some(sealed) = self.0.run(observe)? else {
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
        // Fail-closed: a group whose records cannot all be stored is released (dropping
        // `group` on the error releases every shard, and those releases are recorded).
        for (correlation_id, event) in held_back {
            shared
                .record(&correlation_id, event)
                .map_err(PlanError::Plan)?;
        }
        Ok(Some(group))
    }
}

/// A part that passed its own checks, with its length and the device bytes it takes.
struct Checked<'a> {
    part: SealPart<'a>,
    len: usize,
    footprint: usize,
}

/// Checks one part on its own; returns its length and the device bytes it takes (the
/// allocation granularity included).
fn validate(shared: &Shared, part: &SealPart<'_>) -> Result<(usize, usize), VramError> {
    if let Some(id) = &part.options.shard_id {
        ShardId::new(id)?;
    }
    validate_gpu_device(part.gpu_device, shared.backend().device_count())?;
    let len = usize::try_from(part.source.len()).map_err(|_| {
        VramError::invalid_input(
            "model size",
            format!(
                "{} bytes do not fit this host's address space",
                part.source.len()
            ),
        )
    })?;
    validate_model_size(len, shared.config().max_model_bytes)?;
    if let Some((index, total)) = part.options.tensor_parallel
        && (total == 0 || index >= total)
    {
        return Err(VramError::invalid_input(
            "shard index",
            format!("index {index} of {total} shards; need index < total and total > 0"),
        ));
    }
    let footprint = round_up(len, shared.backend().granularity()).ok_or_else(|| {
        VramError::invalid_input("model size", format!("{len} bytes cannot be allocated"))
    })?;
    Ok((len, footprint))
}

/// Two parts that name one id are refused before any id is claimed.
fn distinct_ids(parts: &[Checked<'_>]) -> Result<(), PlanError> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, Checked { part, .. }) in parts.iter().enumerate() {
        if let Some(id) = part.options.shard_id.as_deref()
            && let Some(first) = seen.insert(id, index)
        {
            return Err(PlanError::SameShardId {
                first,
                second: index,
                shard_id: id.to_owned(),
            });
        }
    }
    Ok(())
}

/// Reserves every device's whole share, against the manager's accounting and the device's
/// free memory now (other processes count). A device that lacks room is audited once
/// (`VramAllocationFailed`) and refuses the plan; what was reserved on other devices is given
/// back.
fn reserve(
    shared: &Shared,
    parts: &[Checked<'_>],
) -> Result<BTreeMap<u32, Reservation>, PlanError> {
    let mut needed: BTreeMap<u32, usize> = BTreeMap::new();
    for Checked {
        part, footprint, ..
    } in parts
    {
        let total = needed.entry(part.gpu_device).or_insert(0);
        *total = total.saturating_add(*footprint);
    }
    let mut reserved = BTreeMap::new();
    for (&device, &bytes) in &needed {
        let refuse = |available: usize| {
            let correlation_id = shared.next_correlation_id();
            shared.record_or_stop(
                &correlation_id,
                AuditEvent::VramAllocationFailed {
                    gpu_device: device,
                    requested: bytes,
                    available,
                    reason: "insufficient VRAM".into(),
                },
            );
            tracing::warn!(
                gpu_device = device,
                requested = bytes,
                available,
                "insufficient VRAM"
            );
            for c in parts.iter().filter(|c| c.part.gpu_device == device) {
                shared.metrics().count_seal(c.part.gpu_device, false);
            }
            PlanError::Plan(VramError::InsufficientVram {
                needed: bytes,
                available,
                device,
            })
        };
        let capacity = shared.capacity(device).map_err(PlanError::Plan)?;
        let reservation = DeviceCapacity::try_reserve(capacity, bytes).map_err(refuse)?;
        let free = shared
            .backend()
            .memory_info(device)
            .map_err(PlanError::Plan)?
            .free;
        if free < bytes {
            drop(reservation);
            return Err(refuse(free));
        }
        reserved.insert(device, reservation);
    }
    Ok(reserved)
}
