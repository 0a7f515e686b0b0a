//! Tensor-parallel models sealed as one group: all-or-nothing placement across devices, one
//! group seal over every shard (`.specs/group-seal.md`), and verification of every shard in
//! parallel, one thread per device.

use std::collections::BTreeMap;

use vram_seal::group::{GroupFields, GroupMember, verify_group_seal};
use vram_types::{SealSignature, SealedShard, ShardSource, VramError};

use super::VramManager;
use crate::audit::AuditEvent;

/// One part of a tensor-parallel model: its bytes and the GPU it goes to. Part `i` of a group
/// becomes shard `i` of `n`.
#[derive(Clone, Copy)]
pub struct GroupPart<'a> {
    /// The part's bytes (`&bytes`, or a [`FileSource`](vram_types::FileSource)).
    pub source: &'a dyn ShardSource,
    /// The CUDA device it is sealed on.
    pub gpu_device: u32,
}

impl std::fmt::Debug for GroupPart<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupPart")
            .field("bytes", &self.source.len())
            .field("gpu_device", &self.gpu_device)
            .finish()
    }
}

/// A tensor-parallel model sealed as one group: its shards, in index order, and the group seal
/// that binds them. Dropping it releases every shard (unless clones of them live on).
#[derive(Debug, Clone)]
pub struct SealedGroup {
    /// The model's id; shard `i` is `<model_id>:tp<i>`.
    pub model_id: String,
    /// The shards, shard `i` at position `i`.
    pub shards: Vec<SealedShard>,
    seal: SealSignature,
}

impl SealedGroup {
    /// A group not yet sealed (the plan seals it once every shard is placed).
    pub(super) fn unsigned(model_id: String, shards: Vec<SealedShard>) -> Self {
        Self {
            model_id,
            shards,
            seal: SealSignature::from_bytes([0; 32]),
        }
    }

    pub(super) fn set_seal(&mut self, seal: SealSignature) {
        self.seal = seal;
    }

    /// The group seal.
    #[must_use]
    pub fn group_seal(&self) -> &SealSignature {
        &self.seal
    }

    /// What the group seal covers, as the shards now say.
    pub(super) fn fields(&self) -> GroupFields {
        GroupFields {
            model_id: self.model_id.clone(),
            members: self
                .shards
                .iter()
                .map(|s| GroupMember {
                    // A shard without an index cannot be in a group: it fails the encoding.
                    shard_index: s.shard_index.unwrap_or(usize::MAX),
                    gpu_device: s.gpu_device,
                    vram_bytes: s.vram_bytes,
                    digest_algorithm: s.digest_algorithm(),
                    digest: s.digest.clone(),
                })
                .collect(),
        }
    }
}

impl VramManager {
    /// Verifies a sealed group: the group seal over every shard as presented (a missing,
    /// duplicated, reordered, swapped or foreign shard fails it), then every shard with
    /// [`Self::verify_sealed`], in parallel with one thread per device. Every shard is checked
    /// and audited even after one fails; what a failure does to the manager follows
    /// `stop_on_verification_failure`.
    ///
    /// # Errors
    /// [`VramError::SealVerificationFailed`] (named by the model id) when the group seal does
    /// not match the shards; otherwise the error of the lowest-index shard that failed, which
    /// names that shard.
    pub fn verify_group(&self, group: &SealedGroup) -> Result<(), VramError> {
        let shared = &self.shared;
        shared.ensure_running()?;
        if let Err(e) = verify_group_seal(shared.key(), &group.fields(), &group.seal) {
            let correlation_id = shared.next_correlation_id();
            if let Some(first) = group.shards.first() {
                shared.record_or_stop(
                    &correlation_id,
                    AuditEvent::SealVerificationFailed {
                        shard_id: group.model_id.clone(),
                        gpu_device: first.gpu_device,
                        reason: format!("group seal: {e}"),
                    },
                );
            }
            shared.stop_on(&e);
            return Err(e);
        }
        let mut by_device: BTreeMap<u32, Vec<(usize, &SealedShard)>> = BTreeMap::new();
        for (position, shard) in group.shards.iter().enumerate() {
            by_device
                .entry(shard.gpu_device)
                .or_default()
                .push((position, shard));
        }
        let mut failures: Vec<(usize, VramError)> = std::thread::scope(|scope| {
            let workers: Vec<_> = by_device
                .values()
                .map(|shards| {
                    scope.spawn(move || {
                        shards
                            .iter()
                            .filter_map(|(position, shard)| {
                                self.verify_sealed(shard).err().map(|e| (*position, e))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| {
                    w.join().unwrap_or_else(|_| {
                        vec![(0, VramError::Unreachable("a verification thread panicked"))]
                    })
                })
                .collect()
        });
        failures.sort_by_key(|(position, _)| *position);
        match failures.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}
