//! Residency: whether an allocation is plain device memory of its device covering the shard.
//! The one place the manager asks the backend about an allocation, applies
//! `vram_policy::rules::allocation_problem` to the answer, and acts on a violation (a critical
//! `PolicyViolation` record with the device's ECC state, then a stop). Sealing, verification
//! and the policy report all come here.

use std::sync::Arc;

use vram_policy::rules;
use vram_types::{BackendKind, SealedShard, VramError};

use super::resident_allocation::ResidentAllocation;
use super::shared::Shared;
use crate::audit::AuditEvent;
use crate::backend::{Backend, BufferId};

/// The shard's allocation, if this manager made it.
pub(super) fn owned<'a>(
    shared: &Arc<Shared>,
    shard: &'a SealedShard,
) -> Result<&'a ResidentAllocation, VramError> {
    shard
        .allocation()
        .and_then(|a| a.as_any().downcast_ref::<ResidentAllocation>())
        .filter(|r| r.is_owned_by(shared))
        .ok_or_else(|| VramError::NotSealed {
            shard_id: shard.shard_id.clone(),
        })
}

/// What is wrong with the allocation, if anything: not device memory, managed, on another
/// device, or not covering `len` bytes. The mock's simulated memory passes on the mock only.
///
/// # Errors
/// The backend's error when the driver cannot be asked.
pub(super) fn problem(
    shared: &Shared,
    buffer: BufferId,
    device: u32,
    len: usize,
) -> Result<Option<String>, VramError> {
    problem_on(shared.backend(), buffer, device, len)
}

/// [`problem`] on any backend (a digest with no manager checks its ranges the same way).
///
/// # Errors
/// The backend's error when the driver cannot be asked.
pub(crate) fn problem_on(
    backend: &dyn Backend,
    buffer: BufferId,
    device: u32,
    len: usize,
) -> Result<Option<String>, VramError> {
    let facts = backend.allocation_facts(buffer, len)?;
    let allow_simulated = backend.kind() == BackendKind::Mock;
    Ok(rules::allocation_problem(&facts, device, allow_simulated))
}

/// Records a policy violation on `device` (critical, with the device's ECC state).
pub(super) fn record_violation(shared: &Shared, correlation_id: &str, device: u32, reason: String) {
    shared.record_or_stop(
        correlation_id,
        AuditEvent::PolicyViolation {
            gpu_device: device,
            reason,
            ecc_enabled: shared.ecc_enabled(device),
        },
    );
}

/// The allocation must be plain device memory of `device` covering the whole shard; otherwise
/// the violation is recorded, the manager stops, and the error says why.
///
/// # Errors
/// [`VramError::PolicyViolation`]; the backend's error when the driver cannot be asked.
pub(super) fn check(
    shared: &Shared,
    buffer: BufferId,
    device: u32,
    len: usize,
    correlation_id: &str,
) -> Result<(), VramError> {
    let Some(reason) = problem(shared, buffer, device, len)? else {
        return Ok(());
    };
    record_violation(shared, correlation_id, device, reason.clone());
    let error = VramError::PolicyViolation { device, reason };
    shared.stop_on(&error);
    Err(error)
}
