//! Verification: the shard's allocation is ours → the seal MAC matches the fields → the seal is
//! fresh enough → the allocation is still device memory → the resident bytes hash to the
//! sealed digest. Every outcome is audited; a security failure can stop the manager.

use std::sync::Arc;
use std::time::Instant;

use vram_seal::{ShardDigest, verify_signature};
use vram_types::{DigestAlgorithm, GpuShare, SealFailure, SealedFields, SealedShard, VramError};

use vram_types::{AllocationFacts, ShardAllocation};

use super::allocation_check::{self, owned};
use super::resident_allocation::ResidentAllocation;
use super::shared::Shared;
use super::{VramManager, step};
use crate::audit::AuditEvent;
use crate::backend::{BufferId, DigestOrder};

impl VramManager {
    /// Verifies a shard: its seal, its freshness, that it is still in device memory, and that
    /// the bytes in VRAM still hash to the sealed digest. Call it before every inference request.
    ///
    /// # Errors
    /// [`VramError::NotSealed`] (not made by this manager, or released);
    /// [`VramError::SealVerificationFailed`] (fields or seal changed);
    /// [`VramError::SealExpired`]; [`VramError::PolicyViolation`];
    /// [`VramError::IntegrityViolation`] (bytes in VRAM changed); CUDA errors;
    /// [`VramError::Stopped`].
    pub fn verify_sealed(&self, shard: &SealedShard) -> Result<(), VramError> {
        verify(&self.shared, shard, GpuShare::Full)
    }

    /// Verifies a shard like [`Self::verify_sealed`], taking at most the configured background
    /// share of the GPU ([`VramConfig::background_gpu_share`](vram_types::VramConfig::background_gpu_share)):
    /// for re-verifying resident shards next to a running inference engine. Slower than a
    /// per-request check, and outcomes are audited and counted the same way.
    ///
    /// # Errors
    /// As [`Self::verify_sealed`].
    pub fn verify_sealed_background(&self, shard: &SealedShard) -> Result<(), VramError> {
        verify(
            &self.shared,
            shard,
            self.shared.config().background_gpu_share,
        )
    }

    /// What the driver reports now about a shard's allocation.
    ///
    /// # Errors
    /// [`VramError::NotSealed`] when the shard is not this manager's; CUDA errors.
    pub fn allocation_facts(&self, shard: &SealedShard) -> Result<AllocationFacts, VramError> {
        let resident = owned(&self.shared, shard)?;
        self.shared
            .backend()
            .allocation_facts(resident.buffer(), resident.len())
    }
}

/// The first field of `presented` that differs from `sealed`, by name.
fn changed_field(sealed: &SealedFields, presented: &SealedFields) -> Option<&'static str> {
    let differs = [
        ("shard_id", sealed.shard_id != presented.shard_id),
        ("gpu_device", sealed.gpu_device != presented.gpu_device),
        ("vram_bytes", sealed.vram_bytes != presented.vram_bytes),
        (
            "digest_algorithm",
            sealed.digest_algorithm != presented.digest_algorithm,
        ),
        ("digest", sealed.digest != presented.digest),
        ("sealed_at", sealed.sealed_at != presented.sealed_at),
        ("shard_index", sealed.shard_index != presented.shard_index),
        (
            "total_shards",
            sealed.total_shards != presented.total_shards,
        ),
    ];
    differs.into_iter().find(|(_, d)| *d).map(|(name, _)| name)
}

fn verify(shared: &Arc<Shared>, shard: &SealedShard, share: GpuShare) -> Result<(), VramError> {
    verify_ordered(
        shared,
        &Subject::shard(shard),
        share,
        DigestOrder::Now,
        Stage::Standalone,
    )
}

/// What one verification covers: one shard, or a model's tensors hashed together in one launch
/// sequence; it is audited and counted under one id (the shard's, or the model's).
pub(super) struct Subject<'a> {
    /// The id its audit record and metrics name.
    pub(super) id: &'a str,
    /// The device of every shard.
    pub(super) device: u32,
    /// The shards, checked in this order (the first that fails names the error).
    pub(super) shards: Vec<&'a SealedShard>,
    /// A pass is recorded in a scrubber's summary, not on its own (a failure always is).
    pub(super) summarized: bool,
}

impl<'a> Subject<'a> {
    pub(super) fn shard(shard: &'a SealedShard) -> Self {
        Self {
            id: &shard.shard_id,
            device: shard.gpu_device,
            shards: vec![shard],
            summarized: false,
        }
    }

    /// The same subject, its pass left to a scrubber's summary record.
    pub(super) fn summarized(mut self) -> Self {
        self.summarized = true;
        self
    }

    /// Everything but the digests, for every shard ([`check_fields`]); the buffers to hash.
    pub(super) fn checked_buffers(
        &self,
        shared: &Arc<Shared>,
        correlation_id: &str,
    ) -> Result<Vec<(BufferId, usize)>, VramError> {
        self.shards
            .iter()
            .map(|shard| {
                let resident = check_fields(shared, shard, correlation_id)?;
                Ok((resident.buffer(), shard.vram_bytes))
            })
            .collect()
    }

    /// The algorithm every shard was sealed with (a model's tensors share one).
    pub(super) fn algorithm(&self) -> Result<DigestAlgorithm, VramError> {
        let mut algorithms = self.shards.iter().map(|s| s.digest_algorithm());
        let first = algorithms
            .next()
            .ok_or(VramError::Unreachable("a subject has a shard"))?;
        if algorithms.any(|a| a != first) {
            return Err(VramError::invalid_input(
                "model",
                "tensors sealed with different digest algorithms",
            ));
        }
        Ok(first)
    }

    /// Each shard's digest against the sealed one; the first that differs names the error,
    /// unless the manager stopped vouching for the shards while they were hashed (an update was
    /// announced): then nothing failed, and the subject is refused as under update.
    pub(super) fn compare(
        &self,
        shared: &Shared,
        actual: &[ShardDigest],
        stage: Stage,
    ) -> Result<(), VramError> {
        if actual.len() != self.shards.len() {
            return Err(VramError::Unreachable("one digest per shard"));
        }
        self.shards
            .iter()
            .zip(actual)
            .try_for_each(|(shard, digest)| compare(shard, digest, stage))
            .map_err(|e| self.vouched(shared).err().unwrap_or(e))
    }

    /// Whether the manager vouches for every shard now (`Shared::vouches_for`): a shard of a
    /// model under update, or replaced by one, is refused before anything is read or audited.
    /// A shard that is not this manager's is left to the checks that record it.
    pub(super) fn vouched(&self, shared: &Shared) -> Result<(), VramError> {
        self.shards.iter().try_for_each(|shard| {
            match shard
                .allocation()
                .and_then(|a| a.as_any().downcast_ref::<ResidentAllocation>())
            {
                Some(resident) => shared.vouches_for(resident),
                None => Ok(()),
            }
        })
    }
}

/// What a verification is for: it names the error of changed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// On its own, or before an engine's work: [`VramError::IntegrityViolation`].
    Standalone,
    /// After an engine's work: [`VramError::ModifiedDuringExecution`].
    AfterExecution,
}

/// A whole verification, the digest read at the point `order` names.
pub(super) fn verify_ordered(
    shared: &Arc<Shared>,
    subject: &Subject<'_>,
    share: GpuShare,
    order: DigestOrder<'_>,
    stage: Stage,
) -> Result<(), VramError> {
    subject.vouched(shared)?;
    step("verify", || {
        audited(shared, subject, |correlation_id| {
            let buffers = step("check fields", || {
                subject.checked_buffers(shared, correlation_id)
            })?;
            let actual = step("digest", || {
                shared
                    .backend()
                    .digest(&buffers, subject.algorithm()?, share, order)
            })?;
            subject.compare(shared, &actual, stage)
        })
    })
}

/// Records `error` as a failed verification of `subject` (as [`audited`] does) and returns it.
pub(super) fn audit_failure(
    shared: &Arc<Shared>,
    subject: &Subject<'_>,
    error: VramError,
) -> VramError {
    match audited(shared, subject, |_| Err(error)) {
        Err(e) => e,
        Ok(()) => VramError::Unreachable("a failure is recorded as one"),
    }
}

/// One verification, audited and counted: `check` (given the operation's correlation id)
/// decides; a pass is recorded (fail-closed: a pass that cannot be recorded is not a pass), a
/// failure is recorded as critical and stops the manager when it is a security failure.
pub(super) fn audited(
    shared: &Arc<Shared>,
    subject: &Subject<'_>,
    check: impl FnOnce(&str) -> Result<(), VramError>,
) -> Result<(), VramError> {
    let (id, device) = (subject.id, subject.device);
    shared.ensure_running()?;
    let started = Instant::now();
    let correlation_id = shared.next_correlation_id();
    let checked = check(&correlation_id);
    let result = match checked {
        Ok(()) => {
            // Passed: the id is the one this manager validated and sealed.
            tracing::info!(shard_id = %id, result = "pass", "seal verified");
            // Fail-closed: a pass that cannot be recorded is not a pass. A scrubber's passes
            // are recorded in its summaries instead (`summary.rs`).
            step("record", || {
                if subject.summarized {
                    return Ok(());
                }
                shared.record(
                    &correlation_id,
                    AuditEvent::SealVerified {
                        shard_id: id.to_owned(),
                        gpu_device: device,
                    },
                )
            })
            .inspect(|()| {
                shared
                    .metrics()
                    .set_last_verified(id, shared.clock().wall());
                let now = shared.clock().monotonic();
                for shard in &subject.shards {
                    if let Ok(resident) = owned(shared, shard) {
                        resident.mark_verified(now);
                    }
                }
            })
        }
        // Not a failure: the manager stopped vouching for the subject while it was checked.
        Err(e @ VramError::ModelUpdating { .. }) => Err(e),
        Err(e) => {
            record_failure(shared, &correlation_id, id, device, &e);
            Err(e)
        }
    };
    // Counted under the shard's device only when that device exists: a caller's made-up device
    // numbers must not grow the metrics' label set.
    if device < shared.backend().device_count() {
        shared
            .metrics()
            .count_verify(device, result.is_ok(), started.elapsed());
    }
    result
}

/// A failed verification of `id` on `device`, however it was found (a caller's check, a
/// scrubber's): logged, recorded as critical (a record that cannot be stored stops the
/// manager), and, for a security failure, the manager stops. The one place that rule lives.
pub(super) fn record_failure(
    shared: &Shared,
    correlation_id: &str,
    id: &str,
    device: u32,
    e: &VramError,
) {
    // The caller's id, possibly edited (line breaks, terminal escapes): escaped.
    tracing::error!(shard_id = ?id, result = "fail", error = %e, "seal verification failed");
    shared.record_or_stop(
        correlation_id,
        AuditEvent::SealVerificationFailed {
            shard_id: id.to_owned(),
            gpu_device: device,
            reason: e.to_string(),
        },
    );
    if e.is_security_critical() {
        shared.stop_on(e);
    }
}

/// Everything but the digest: the allocation is this manager's, no sealed field was edited, the
/// seal matches the fields, the seal is fresh enough, the allocation is still device memory.
/// Returns the allocation.
pub(super) fn check_fields<'s>(
    shared: &Arc<Shared>,
    shard: &'s SealedShard,
    correlation_id: &str,
) -> Result<&'s ResidentAllocation, VramError> {
    let resident = owned(shared, shard)?;
    let fields = shard.sealed_fields();
    // The manager knows what it sealed: an edited field is named, before the MAC is computed.
    if let Some(field) = changed_field(resident.sealed(), &fields) {
        return Err(VramError::SealVerificationFailed {
            shard_id: shard.shard_id.clone(),
            reason: SealFailure::FieldChanged(field),
        });
    }
    // Same fields: the seal itself must still match them (a replaced signature fails here).
    verify_signature(shared.key(), &fields, shard.seal_signature())?;
    // The age is measured on the monotonic clock from the moment this manager sealed it: a
    // wall clock stepped back or forward neither expires the seal early nor extends it.
    if let Some(max) = shared.config().max_seal_age {
        let age = resident.age();
        if age > max {
            return Err(VramError::SealExpired {
                shard_id: shard.shard_id.clone(),
                age_secs: age.as_secs(),
                max_age_secs: max.as_secs(),
            });
        }
    }
    allocation_check::check(
        shared,
        resident.buffer(),
        shard.gpu_device,
        shard.vram_bytes,
        correlation_id,
    )?;
    Ok(resident)
}

/// The digest of the resident bytes against the sealed one.
pub(super) fn compare(
    shard: &SealedShard,
    actual: &ShardDigest,
    stage: Stage,
) -> Result<(), VramError> {
    compare_at(&shard.shard_id, &shard.digest, actual, stage)
}

/// [`compare`] of a shard known by its id and sealed digest (hex), on its own.
pub(super) fn compare_digest(
    shard_id: &str,
    sealed: &str,
    actual: &ShardDigest,
) -> Result<(), VramError> {
    compare_at(shard_id, sealed, actual, Stage::Standalone)
}

fn compare_at(
    shard_id: &str,
    sealed: &str,
    actual: &ShardDigest,
    stage: Stage,
) -> Result<(), VramError> {
    let expected = ShardDigest::from_hex(sealed)?;
    if actual.ct_eq(&expected) {
        return Ok(());
    }
    let (shard_id, expected, actual) = (shard_id.to_owned(), sealed.to_owned(), actual.to_hex());
    Err(match stage {
        Stage::Standalone => VramError::IntegrityViolation {
            shard_id,
            expected,
            actual,
        },
        Stage::AfterExecution => VramError::ModifiedDuringExecution {
            shard_id,
            expected,
            actual,
        },
    })
}
