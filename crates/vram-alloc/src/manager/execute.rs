//! Verified execution: an inference engine computes on a sealed shard's bytes where they lie,
//! inside a scope that verified them first and, in the checked modes, verifies them again after
//! the engine's work, withholding the engine's result when they changed
//! (`docs/adr/0009-verified-execution.md`).
//!
//! The engine gets the bytes' address only through the lending view (`lending.rs`), which
//! borrows the shard for the scope.

use std::sync::Arc;

use vram_types::{GpuShare, SealedShard, VramError};

use super::VramManager;
use super::lending::{ModelWeights, Weights, lend};
use super::model::SealedModel;
use super::shared::Shared;
use super::verify::{Stage, Subject, audit_failure, audited, verify_ordered};
use crate::backend::{DigestOrder, EngineStream};
use crate::metrics::ExecutionResult;

/// What an execution checks around the engine's work, and how the checks are ordered with it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum ExecutionMode<'e> {
    /// Verified, then lent: the engine starts only on bytes that hash to the sealed digest.
    /// Proves the bytes were intact when the engine was handed them.
    Before,
    /// Verified, lent, and verified again once the closure has returned: for an engine whose
    /// work is finished when its closure returns (a host engine, a synchronised stream, the
    /// mock). Proves the bytes were also intact after the engine's work; otherwise the result
    /// is withheld.
    BeforeAndAfter,
    /// Verified, lent, and verified again after the work the closure queued on the engine's
    /// stream: the library's digest waits on the GPU for an event recorded there (never a
    /// device-wide sync). Proves as [`ExecutionMode::BeforeAndAfter`] for a GPU engine that
    /// returns before its kernels finish.
    BeforeAndAfterOn(EngineStream<'e>),
    /// The verification's digest is queued on the GPU ahead of the engine's work: the engine's
    /// stream waits for it there, so its kernels start right after it with no host round trip.
    /// The digest after the engine's work is queued as in [`ExecutionMode::BeforeAndAfterOn`];
    /// the result is released only when both match. Proves the same as the checked mode, with
    /// the difference that the engine may already have computed on bytes the first digest then
    /// finds changed: that result is withheld too.
    Pipelined(EngineStream<'e>),
}

impl VramManager {
    /// Verifies `shard`, lends its memory to `engine` for the closure's duration, and, as `mode`
    /// says, verifies it again after the engine's work. The closure's value is returned only
    /// when every check passed. Each check is a verification like
    /// [`Self::verify_sealed`] (audited and counted the same way); the execution is counted in
    /// `vram_executions_total` by how it ended.
    ///
    /// ```
    /// use vram_alloc::{ExecutionMode, VramManager};
    ///
    /// let manager = VramManager::with_capacity(64 << 20); // mock: lends host memory
    /// let shard = manager.seal_model(&[1u8, 2, 3, 4], 0)?;
    /// let sum = manager.execute(&shard, ExecutionMode::BeforeAndAfter, |weights| {
    ///     // An engine launches its kernels with weights.device_ptr() and weights.len().
    ///     assert_eq!(weights.len(), 4);
    ///     10
    /// })?;
    /// assert_eq!(sum, 10);
    /// # Ok::<(), vram_types::VramError>(())
    /// ```
    ///
    /// # Errors
    /// Before the engine's work: any error of [`Self::verify_sealed`] (the closure never runs;
    /// in [`ExecutionMode::Pipelined`] the digest's mismatch is found after it ran, and its
    /// result is withheld). After it: [`VramError::ModifiedDuringExecution`] when the bytes
    /// changed during the execution (recorded as a critical failed verification; the manager
    /// stops as after any), or another error of [`Self::verify_sealed`].
    pub fn execute<R>(
        &self,
        shard: &SealedShard,
        mode: ExecutionMode<'_>,
        engine: impl FnOnce(&Weights<'_>) -> R,
    ) -> Result<R, VramError> {
        let shared = &self.shared;
        run(
            shared,
            &Subject::shard(shard),
            mode,
            || lend(shared, shard),
            engine,
        )
    }

    /// [`Self::execute`] for a model sealed in place ([`Self::seal_model_in_place`]): every
    /// tensor is checked before (and, as `mode` says, after) the engine's work, all in one
    /// launch sequence, and the closure gets every tensor's memory by name. Audited and counted
    /// as one verification of the model per check.
    ///
    /// # Errors
    /// As [`Self::execute`]; a tensor whose bytes changed names itself in the error.
    pub fn execute_model<R>(
        &self,
        model: &SealedModel,
        mode: ExecutionMode<'_>,
        engine: impl FnOnce(&ModelWeights<'_>) -> R,
    ) -> Result<R, VramError> {
        let shared = &self.shared;
        run(
            shared,
            &model.subject(),
            mode,
            || {
                let tensors = model
                    .tensors()
                    .iter()
                    .map(|t| Ok((t.name(), lend(shared, t.shard())?)))
                    .collect::<Result<_, VramError>>()?;
                Ok(ModelWeights::new(tensors))
            },
            engine,
        )
    }
}

/// One execution in `mode`, counted by how it ended.
fn run<V, R>(
    shared: &Arc<Shared>,
    subject: &Subject<'_>,
    mode: ExecutionMode<'_>,
    lend: impl FnOnce() -> Result<V, VramError>,
    engine: impl FnOnce(&V) -> R,
) -> Result<R, VramError> {
    let result = match mode {
        ExecutionMode::Before => checked(shared, subject, None, lend, engine),
        ExecutionMode::BeforeAndAfter => {
            checked(shared, subject, Some(DigestOrder::Now), lend, engine)
        }
        ExecutionMode::BeforeAndAfterOn(stream) => checked(
            shared,
            subject,
            Some(DigestOrder::After(stream)),
            lend,
            engine,
        ),
        ExecutionMode::Pipelined(stream) => pipelined(shared, subject, stream, lend, engine),
    };
    let (outcome, value) = match result {
        Ok(value) => (ExecutionResult::Passed, Ok(value)),
        Err((stage, e)) => (stage, Err(e)),
    };
    // Counted under the device only when that device exists (as verifications).
    if subject.device < shared.backend().device_count() {
        shared.metrics().count_execution(subject.device, outcome);
    }
    value
}

/// Why an execution did not release its result, and the error.
type Refused = (ExecutionResult, VramError);

/// Verified now, lent, and (with `after`) verified again at that point.
fn checked<V, R>(
    shared: &Arc<Shared>,
    subject: &Subject<'_>,
    after: Option<DigestOrder<'_>>,
    lend: impl FnOnce() -> Result<V, VramError>,
    engine: impl FnOnce(&V) -> R,
) -> Result<R, Refused> {
    let before = |e| (ExecutionResult::RefusedBefore, e);
    verify_ordered(
        shared,
        subject,
        GpuShare::Full,
        DigestOrder::Now,
        Stage::Standalone,
    )
    .map_err(before)?;
    let weights = lend().map_err(before)?;
    let value = engine(&weights);
    if let Some(order) = after {
        check_after(shared, subject, order)?;
    }
    Ok(value)
}

/// The first digest queued ahead of the engine's work, the second after it; both confirmed.
fn pipelined<V, R>(
    shared: &Arc<Shared>,
    subject: &Subject<'_>,
    stream: EngineStream<'_>,
    lend: impl FnOnce() -> Result<V, VramError>,
    engine: impl FnOnce(&V) -> R,
) -> Result<R, Refused> {
    let refuse = |e| (ExecutionResult::RefusedBefore, e);
    let queued = shared.ensure_running().and_then(|()| {
        let correlation_id = shared.next_correlation_id();
        let buffers = subject.checked_buffers(shared, &correlation_id)?;
        shared
            .backend()
            .digest_before(&buffers, subject.algorithm()?, stream)
    });
    let pending = match queued {
        Ok(pending) => pending,
        // Refused before anything was queued: audited as the failed verification it is.
        Err(e) => return Err(refuse(audit_failure(shared, subject, e))),
    };
    let weights = lend().map_err(refuse)?;
    let value = engine(&weights);
    let after = check_after(shared, subject, DigestOrder::After(stream));
    audited(shared, subject, |_| {
        subject.compare(&pending.wait()?, Stage::Standalone)
    })
    .map_err(refuse)?;
    after?;
    Ok(value)
}

/// The verification after the engine's work; bytes found changed are
/// [`VramError::ModifiedDuringExecution`].
fn check_after(
    shared: &Arc<Shared>,
    subject: &Subject<'_>,
    order: DigestOrder<'_>,
) -> Result<(), Refused> {
    verify_ordered(
        shared,
        subject,
        GpuShare::Full,
        order,
        Stage::AfterExecution,
    )
    .map_err(|e| (ExecutionResult::CaughtAfter, e))
}
