//! Updates of a model sealed in place: weights that move (an RL refit written in place, a wake
//! from sleep into new storage, a GPU-to-GPU load) are sealed again only when they arrive as
//! sent. The state machine (`docs/adr/0015-model-updates.md`):
//!
//! - **sealed** → [`VramManager::begin_update`] → **updating**: from the announcement on, no
//!   verification, window or scrubber pass vouches for the model (`ModelUpdating`, nothing
//!   audited as failed, nothing stopped); the engine may rewrite or free the tensors.
//! - **updating** → [`VramManager::update_model`] with the sender's digest: the tensors are
//!   hashed where they lie; equal → **sealed** again (a new [`SealedModel`], the old one
//!   superseded); different → **refused** (`UpdateRefused` naming the first tensor that differs,
//!   audited as critical), which only a good update or [`VramManager::release_model`] ends.
//! - With [`UpdateExpectation::TrustNewBytes`] the bytes are sealed as they are, audited as
//!   trusted (a warning).

use std::collections::BTreeMap;

use vram_seal::ShardDigest;
use vram_types::VramError;

use super::VramManager;
use super::allocation_check::owned;
use super::model::{EngineTensor, SealedModel};
use super::seal::seal_model_set;
use crate::RangeDigester;
use crate::audit::AuditEvent;

/// What an update's bytes must hash to.
#[derive(Debug, Clone)]
pub enum UpdateExpectation {
    /// The sender's model digest, and each tensor's digest when it sent them (to name the first
    /// tensor that differs; without them, a tensor is named by its digest before the update,
    /// which names the changed one when the update should bring back the same bytes).
    Digest {
        /// The model digest (`vram-model-v1`).
        model: ShardDigest,
        /// Each tensor's digest, by name.
        tensors: Option<BTreeMap<String, ShardDigest>>,
    },
    /// No digest: the caller vouches for the new bytes itself (audited as trusted).
    TrustNewBytes,
}

impl VramManager {
    /// Announces an update of `model`: until [`Self::update_model`] accepts one, nothing
    /// vouches for its tensors (a verification, window or scrubber pass is refused with
    /// [`VramError::ModelUpdating`], audited as nothing and stopping nothing), so the engine may
    /// rewrite the tensors in place or free them (sleep). Announcing twice is allowed.
    ///
    /// # Errors
    /// [`VramError::NotSealed`] for a model this manager did not seal (or released);
    /// [`VramError::AuditFailed`] when the announcement cannot be recorded (nothing changed);
    /// [`VramError::Stopped`].
    pub fn begin_update(&self, model: &SealedModel) -> Result<(), VramError> {
        let shared = &self.shared;
        shared.ensure_running()?;
        for t in model.tensors() {
            owned(shared, t.shard())?;
        }
        let model_id = model.model_id();
        if shared.hold(model_id) {
            let recorded = shared.record(
                &shared.next_correlation_id(),
                AuditEvent::ModelUpdateStarted {
                    model_id: model_id.to_owned(),
                    gpu_device: model.gpu_device(),
                    digest: model.digest().to_hex(),
                },
            );
            if let Err(e) = recorded {
                shared.unhold(model_id);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Seals an announced update: `tensors` (the model's new storage, or its old ranges when
    /// the engine rewrote them in place) are hashed where they lie, and sealed again as the
    /// model when their model digest is `expect`'s (or the caller trusts them). The returned
    /// model replaces `model`, whose tensors are no longer vouched for (`NotSealed`).
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] when no update was announced ([`Self::begin_update`] comes
    /// first: before it, a tensor being rewritten is a changed weight); [`VramError::UpdateRefused`]
    /// when the digest differs (nothing sealed; the model stays refused, audited as critical);
    /// any error of [`Self::seal_model_in_place`] (the model stays refused); [`VramError::Stopped`].
    pub fn update_model(
        &self,
        model: &SealedModel,
        tensors: Vec<EngineTensor>,
        expect: &UpdateExpectation,
    ) -> Result<SealedModel, VramError> {
        let shared = &self.shared;
        shared.ensure_running()?;
        let model_id = model.model_id();
        if !shared.is_held(model_id) {
            return Err(VramError::invalid_input(
                "update",
                format!(
                    "model {model_id:?}: announce the update (begin_update) before the engine rewrites or frees its tensors"
                ),
            ));
        }
        // The old tensors are vouched for no more, and their ids are free for the new seal.
        for t in model.tensors() {
            if let Ok(resident) = owned(shared, t.shard()) {
                shared.forget_superseded(resident);
            }
        }
        let expected = match expect {
            UpdateExpectation::Digest { model, .. } => Some(model),
            UpdateExpectation::TrustNewBytes => None,
        };
        let refused = |found: Option<String>, tensor: Option<String>, reason: String| {
            shared.record_or_stop(
                &shared.next_correlation_id(),
                AuditEvent::ModelUpdateRefused {
                    model_id: model_id.to_owned(),
                    gpu_device: model.gpu_device(),
                    old_digest: model.digest().to_hex(),
                    expected: expected.map(ShardDigest::to_hex),
                    found,
                    tensor,
                    reason,
                },
            );
            shared.metrics().count_update(model.gpu_device(), "refused");
        };
        match seal_model_set(shared, model_id, tensors.clone(), expected) {
            Ok(updated) => {
                shared.unhold(model_id);
                let expected_from = if expected.is_some() {
                    "sender"
                } else {
                    "trusted"
                };
                shared.record_or_stop(
                    &shared.next_correlation_id(),
                    AuditEvent::ModelUpdated {
                        model_id: model_id.to_owned(),
                        gpu_device: model.gpu_device(),
                        old_digest: model.digest().to_hex(),
                        digest: updated.digest().to_hex(),
                        expected_from: expected_from.to_owned(),
                    },
                );
                shared
                    .metrics()
                    .count_update(model.gpu_device(), expected_from);
                tracing::info!(model_id, digest = %updated.digest(), expected_from, "model updated");
                Ok(updated)
            }
            Err(VramError::UnexpectedDigest { expected, actual }) => {
                let tensor = self.first_differing(model, &tensors, expect);
                refused(
                    Some(actual.clone()),
                    tensor.clone(),
                    "the tensors do not hash to the sender's model digest".to_owned(),
                );
                Err(VramError::UpdateRefused {
                    model_id: model_id.to_owned(),
                    expected,
                    found: actual,
                    tensor,
                })
            }
            Err(e) => {
                refused(None, None, e.to_string());
                Err(e)
            }
        }
    }

    /// Releases a model: its tensors are forgotten (the memory stays the engine's) once the
    /// last handle is dropped, and a hold for an update ends.
    pub fn release_model(&self, model: SealedModel) {
        self.shared.unhold(model.model_id());
        drop(model);
    }

    /// The first tensor (in name order) whose digest differs from the sender's, or from its
    /// digest before the update when the sender gave only a model digest.
    fn first_differing(
        &self,
        model: &SealedModel,
        tensors: &[EngineTensor],
        expect: &UpdateExpectation,
    ) -> Option<String> {
        let algorithm = self.shared.config().digest_algorithm;
        let found = RangeDigester::on(self.shared.backend_arc())
            .digest_model(tensors, algorithm, None)
            .ok()?;
        let sent = match expect {
            UpdateExpectation::Digest {
                tensors: Some(sent),
                ..
            } => sent.clone(),
            _ => model
                .tensors()
                .iter()
                .filter_map(|t| {
                    ShardDigest::from_hex(&t.shard().digest)
                        .ok()
                        .map(|d| (t.name().to_owned(), d))
                })
                .collect(),
        };
        found
            .tensors
            .into_iter()
            .find(|(name, digest)| sent.get(name) != Some(digest))
            .map(|(name, _)| name)
    }
}
