//! The checks every plan makes before a byte is placed, in order: each part on its own (id,
//! device, size, what a source in place cannot do), no id given twice, the ids claimed, each
//! device's whole share reserved. Rejected input reserves and audits nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use vram_types::VramError;
use vram_types::validation::{ShardId, validate_gpu_device, validate_model_size};

use super::super::shared::{Claim, Shared};
use super::ids;
use super::plan::{Part, PlanError, Set};
use super::steps::Source;
use crate::audit::AuditEvent;
use crate::backend::round_up;
use crate::capacity::{DeviceCapacity, Reservation};

/// Checks every part on its own; a group's parts are named here (`<model_id>:tp<i>`).
pub(super) fn check<'a>(
    shared: &Shared,
    parts: Vec<Part<'a>>,
    set: &Set,
) -> Result<Vec<Checked<'a>>, PlanError> {
    let count = parts.len();
    let mut checked = Vec::with_capacity(count);
    for (index, mut part) in parts.into_iter().enumerate() {
        if let Set::Group(model_id) = set {
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
                .shard_id(ids::group_member(model_id, index))
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
    Ok(checked)
}

/// Claims every part's id (a part without one gets an id derived from its digest, claimed
/// when it is known).
pub(super) fn claim(
    shared: &Arc<Shared>,
    parts: &[Checked<'_>],
) -> Result<Vec<Option<Claim>>, PlanError> {
    parts
        .iter()
        .enumerate()
        .map(|(index, c)| {
            c.part
                .options
                .shard_id
                .as_deref()
                .map(|id| ids::claim(shared, id))
                .transpose()
                .map_err(|error| PlanError::Part { part: index, error })
        })
        .collect()
}

/// A part that passed its own checks, with its length and the device bytes it takes (`None`:
/// sealed in place, it takes none of the manager's).
pub(super) struct Checked<'a> {
    pub(super) part: Part<'a>,
    pub(super) len: usize,
    pub(super) footprint: Option<usize>,
}

/// Checks one part on its own; returns its length and the device bytes it takes (the
/// allocation granularity included).
fn validate(shared: &Shared, part: &Part<'_>) -> Result<(usize, Option<usize>), VramError> {
    let options = &part.options;
    if let Some(id) = &options.shard_id {
        ShardId::new(id)?;
    }
    validate_gpu_device(part.gpu_device, shared.backend().device_count())?;
    if let Some((index, total)) = options.tensor_parallel
        && (total == 0 || index >= total)
    {
        return Err(VramError::invalid_input(
            "shard index",
            format!("index {index} of {total} shards; need index < total and total > 0"),
        ));
    }
    match part.source {
        Source::Upload(source) => {
            let len = usize::try_from(source.len()).map_err(|_| {
                VramError::invalid_input(
                    "model size",
                    format!(
                        "{} bytes do not fit this host's address space",
                        source.len()
                    ),
                )
            })?;
            validate_model_size(len, shared.config().max_model_bytes)?;
            let footprint = round_up(len, shared.backend().granularity()).ok_or_else(|| {
                VramError::invalid_input("model size", format!("{len} bytes cannot be allocated"))
            })?;
            Ok((len, Some(footprint)))
        }
        Source::InPlace(range) => {
            validate_model_size(range.len(), shared.config().max_model_bytes)?;
            if options.cross_check {
                return Err(VramError::invalid_input(
                    "cross-check",
                    "a range sealed in place has no host bytes to compare",
                ));
            }
            if options
                .expected
                .is_some_and(|e| !e.is_resident(shared.config().digest_algorithm))
            {
                return Err(VramError::invalid_input(
                    "expected digest",
                    "in another algorithm than the manager's; a range sealed in place is hashed where it lies",
                ));
            }
            Ok((range.len(), None))
        }
    }
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

/// Reserves every device's whole share of the parts to upload, against the manager's
/// accounting and the device's free memory now (other processes count). A device that lacks
/// room is audited once (`VramAllocationFailed`) and refuses the plan; what was reserved on
/// other devices is given back.
pub(super) fn reserve(
    shared: &Shared,
    parts: &[Checked<'_>],
) -> Result<BTreeMap<u32, Reservation>, PlanError> {
    let mut needed: BTreeMap<u32, usize> = BTreeMap::new();
    for c in parts {
        if let Some(footprint) = c.footprint {
            let total = needed.entry(c.part.gpu_device).or_insert(0);
            *total = total.saturating_add(footprint);
        }
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
            for c in parts
                .iter()
                .filter(|c| c.part.gpu_device == device && c.footprint.is_some())
            {
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
