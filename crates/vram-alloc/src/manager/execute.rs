//! Verified execution: an inference engine computes on a sealed shard's bytes where they lie,
//! inside a scope that verified them first and, in the checked modes, verifies them again after
//! the engine's work, withholding the engine's result when they changed
//! (`docs/adr/0009-verified-execution.md`). The scope is guard-shaped at its core
//! ([`ModelExecution`]: begin → lent weights → finish, `docs/adr/0012-engine-ordered-checks.md`),
//! so an engine that cannot hand over a closure (a Python `with` block, a forward hook) drives
//! the same checks; the closure forms are built on it.
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
use crate::backend::{DigestOrder, EngineStream, PendingDigest};
use crate::metrics::ExecutionResult;

/// What an execution checks around the engine's work, and how the checks are ordered with it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum ExecutionMode<'e> {
    /// Verified, then lent: the engine starts only on bytes that hash to the sealed digest.
    /// Proves the bytes were intact when the engine was handed them.
    Before,
    /// [`ExecutionMode::Before`] with the check ordered after the work queued so far on the
    /// engine's stream (its digest waits on the GPU for an event recorded there): the bytes
    /// checked are the ones the engine's next kernels read, even with a write to them still
    /// queued.
    BeforeOn(EngineStream<'e>),
    /// Verified, lent, and verified again once the closure has returned: for an engine whose
    /// work is finished when its closure returns (a host engine, a synchronised stream, the
    /// mock). Proves the bytes were also intact after the engine's work; otherwise the result
    /// is withheld.
    BeforeAndAfter,
    /// Verified, lent, and verified again after the work the closure queued on the engine's
    /// stream: each digest waits on the GPU for an event recorded there (the first for the work
    /// queued before the execution began, the second for the engine's), never a device-wide
    /// sync. Proves as [`ExecutionMode::BeforeAndAfter`] for a GPU engine that returns before
    /// its kernels finish.
    BeforeAndAfterOn(EngineStream<'e>),
    /// The verification's digest is queued on the GPU ahead of the engine's work (after the
    /// work queued on the engine's stream before the execution began): the engine's stream
    /// waits for it there, so its kernels start right after it with no host round trip.
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
        let execution = Core::begin(
            &self.shared,
            shard.shard_id.clone(),
            shard.gpu_device,
            vec![shard.clone()],
            mode,
        )?;
        let weights = execution
            .lent_shard(shard)
            .map_err(|e| execution.refuse(e))?;
        let value = engine(&weights);
        drop(weights);
        execution.finish()?;
        Ok(value)
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
        let execution = self.begin_model_execution(model, mode)?;
        let weights = execution.weights().map_err(|e| execution.core.refuse(e))?;
        let value = engine(&weights);
        drop(weights);
        execution.finish()?;
        Ok(value)
    }

    /// The guard-shaped form of [`Self::execute_model`], for an engine that cannot hand over
    /// a closure (a `with` block, a pair of forward hooks): the model is checked as `mode`
    /// says before this returns (or, pipelined, queued ahead of the engine's work), the engine
    /// computes on [`ModelExecution::weights`] (or on the tensors it holds), and
    /// [`ModelExecution::finish`] runs the check after the engine's work and gives the verdict.
    /// Its result must not be served before `finish` returns `Ok`.
    ///
    /// ```
    /// # use vram_alloc::{EngineTensor, ExecutionMode, VramManager};
    /// # use vram_alloc::backend::MockBackend;
    /// # use std::sync::Arc;
    /// # let mock = Arc::new(MockBackend::with_capacity(64 << 20));
    /// # let manager = VramManager::builder().mock(mock.clone()).build()?;
    /// # let range = mock.engine_memory(0, &[1u8; 64])?;
    /// # let tensor = EngineTensor { name: "w".into(), dtype: "U8".into(), shape: vec![64], range };
    /// let model = manager.seal_model_in_place("m", vec![tensor], None)?;
    /// let execution = manager.begin_model_execution(&model, ExecutionMode::BeforeAndAfter)?;
    /// // ... the engine's forward pass on the tensors it holds ...
    /// execution.finish()?; // Err(ModifiedDuringExecution) if a tensor changed meanwhile
    /// # Ok::<(), vram_types::VramError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Self::execute_model`] before the engine's work (nothing is lent).
    pub fn begin_model_execution<'e>(
        &self,
        model: &SealedModel,
        mode: ExecutionMode<'e>,
    ) -> Result<ModelExecution<'e>, VramError> {
        let core = Core::begin(
            &self.shared,
            model.model_id().to_owned(),
            model.gpu_device(),
            model.tensors().iter().map(|t| t.shard().clone()).collect(),
            mode,
        )?;
        Ok(ModelExecution {
            core,
            names: model
                .tensors()
                .iter()
                .map(|t| t.name().to_owned())
                .collect(),
        })
    }
}

/// A verified execution of a sealed model in progress ([`VramManager::begin_model_execution`]).
/// It holds the model's shards, so none is released before the execution ends. Dropped without
/// [`Self::finish`], the checks after the engine's work do not run and the execution is not
/// counted: an engine whose result is served must finish it.
pub struct ModelExecution<'e> {
    core: Core<'e>,
    /// The tensors' names, in the shards' order.
    names: Vec<String>,
}

impl std::fmt::Debug for ModelExecution<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelExecution")
            .field("model_id", &self.core.id)
            .field("device", &self.core.device)
            .field("tensors", &self.names.len())
            .finish_non_exhaustive()
    }
}

impl ModelExecution<'_> {
    /// Every tensor's memory by name, lent for the execution.
    ///
    /// # Errors
    /// [`VramError::NotSealed`] when a tensor is not the manager's (cannot happen once the
    /// checks before passed).
    pub fn weights(&self) -> Result<ModelWeights<'_>, VramError> {
        let tensors = self
            .names
            .iter()
            .zip(&self.core.shards)
            .map(|(name, shard)| Ok((name.as_str(), lend(&self.core.shared, shard)?)))
            .collect::<Result<_, VramError>>()?;
        Ok(ModelWeights::new(tensors))
    }

    /// Runs the checks after the engine's work as the mode says (and, pipelined, reads the
    /// check queued ahead of it), and counts the execution by how it ended.
    ///
    /// # Errors
    /// [`VramError::ModifiedDuringExecution`] naming the first tensor whose bytes changed
    /// during the execution; in [`ExecutionMode::Pipelined`], the first check's error when it
    /// found the bytes changed before the engine's work; another error of
    /// [`VramManager::verify_sealed`].
    pub fn finish(self) -> Result<(), VramError> {
        self.core.finish()
    }
}

/// One execution's checks, split at the engine's work.
struct Core<'e> {
    shared: Arc<Shared>,
    id: String,
    device: u32,
    /// Held for the execution: no shard is released while an engine computes on it.
    shards: Vec<SealedShard>,
    mode: ExecutionMode<'e>,
    /// Pipelined: the first digest, queued ahead of the engine's work.
    pending: Option<Box<dyn PendingDigest>>,
}

impl<'e> Core<'e> {
    /// The checks before the engine's work, as `mode` says; a refusal is counted.
    fn begin(
        shared: &Arc<Shared>,
        id: String,
        device: u32,
        shards: Vec<SealedShard>,
        mode: ExecutionMode<'e>,
    ) -> Result<Self, VramError> {
        let mut core = Self {
            shared: Arc::clone(shared),
            id,
            device,
            shards,
            mode,
            pending: None,
        };
        let before = match mode {
            ExecutionMode::Before | ExecutionMode::BeforeAndAfter => Some(DigestOrder::Now),
            ExecutionMode::BeforeOn(stream) | ExecutionMode::BeforeAndAfterOn(stream) => {
                Some(DigestOrder::After(stream))
            }
            ExecutionMode::Pipelined(stream) => {
                core.pending = Some(core.queue_ahead(stream).map_err(|e| core.refuse(e))?);
                None
            }
        };
        if let Some(order) = before {
            let checked = verify_ordered(
                shared,
                &core.subject(),
                GpuShare::Full,
                order,
                Stage::Standalone,
            );
            checked.map_err(|e| core.refuse(e))?;
        }
        Ok(core)
    }

    fn subject(&self) -> Subject<'_> {
        Subject {
            id: &self.id,
            device: self.device,
            shards: self.shards.iter().collect(),
            summarized: false,
        }
    }

    /// The single shard's lending view (a shard execution).
    fn lent_shard<'s>(&self, shard: &'s SealedShard) -> Result<Weights<'s>, VramError> {
        lend(&self.shared, shard)
    }

    /// The pipelined first digest, queued ahead of the engine's work; refused before anything
    /// was queued, it is audited as the failed verification it is.
    fn queue_ahead(&self, stream: EngineStream<'_>) -> Result<Box<dyn PendingDigest>, VramError> {
        let subject = self.subject();
        subject.vouched(&self.shared)?;
        let queued = self.shared.ensure_running().and_then(|()| {
            let correlation_id = self.shared.next_correlation_id();
            let buffers = subject.checked_buffers(&self.shared, &correlation_id)?;
            self.shared
                .backend()
                .digest_before(&buffers, subject.algorithm()?, stream)
        });
        queued.map_err(|e| audit_failure(&self.shared, &subject, e))
    }

    /// Counts the execution as refused before the engine's work and returns `e`.
    fn refuse(&self, e: VramError) -> VramError {
        self.count(ExecutionResult::RefusedBefore);
        e
    }

    fn count(&self, outcome: ExecutionResult) {
        // Counted under the device only when that device exists (as verifications).
        if self.device < self.shared.backend().device_count() {
            self.shared.metrics().count_execution(self.device, outcome);
        }
    }

    /// The checks after the engine's work; the execution counted by how it ended.
    fn finish(mut self) -> Result<(), VramError> {
        // Pipelined: the check queued ahead of the engine's work is read first (a failure there
        // is a refusal before; read after the second check, a stop that check caused would
        // hide which check failed).
        if let Some(pending) = self.pending.take() {
            let subject = self.subject();
            let first = audited(&self.shared, &subject, |_| {
                subject.compare(&self.shared, &pending.wait()?, Stage::Standalone)
            });
            if let Err(e) = first {
                return Err(self.refuse(e));
            }
        }
        let after = match self.mode {
            ExecutionMode::Before | ExecutionMode::BeforeOn(_) => None,
            ExecutionMode::BeforeAndAfter => Some(DigestOrder::Now),
            ExecutionMode::BeforeAndAfterOn(stream) | ExecutionMode::Pipelined(stream) => {
                Some(DigestOrder::After(stream))
            }
        };
        let checked_after = after.map_or(Ok(()), |order| {
            verify_ordered(
                &self.shared,
                &self.subject(),
                GpuShare::Full,
                order,
                Stage::AfterExecution,
            )
        });
        match checked_after {
            Ok(()) => {
                self.count(ExecutionResult::Passed);
                Ok(())
            }
            Err(e) => {
                self.count(ExecutionResult::CaughtAfter);
                Err(e)
            }
        }
    }
}
