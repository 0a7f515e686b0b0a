//! Tensor-parallel models sealed as one group: all-or-nothing placement across devices, one
//! group seal over every shard (`.specs/group-seal.md`), and verification of every shard in
//! parallel, one thread per device.

use std::collections::BTreeMap;

use vram_seal::group::{GroupFields, GroupMember, compute_group_seal, verify_group_seal};
use vram_types::validation::{ShardId, validate_gpu_device, validate_model_size};
use vram_types::{SealSignature, SealedShard, ShardSource, VramError};

use super::seal::{self, SealRequest};
use super::{SealOptions, VramManager};
use crate::audit::AuditEvent;
use crate::backend::round_up;

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
    /// The group seal.
    #[must_use]
    pub fn group_seal(&self) -> &SealSignature {
        &self.seal
    }

    /// What the group seal covers, as the shards now say.
    fn fields(&self) -> GroupFields {
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
    /// Seals a tensor-parallel model: part `i` becomes shard `i` of `parts.len()` (id
    /// `<model_id>:tp<i>`) on its device, and one group seal binds them all. All or nothing: the
    /// capacity of every device is checked before any copy (each device against its own
    /// accounting and free memory), and if any shard fails, every shard already placed is
    /// released and no shard is audited as sealed. Each shard's `VramSealed` record names the
    /// group.
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
        let shared = &self.shared;
        shared.ensure_running()?;
        ShardId::new(model_id)?;
        if parts.is_empty() {
            return Err(VramError::invalid_input("group", "no parts"));
        }
        let mut needed: BTreeMap<u32, usize> = BTreeMap::new();
        for part in parts {
            validate_gpu_device(part.gpu_device, self.device_count())?;
            let len = usize::try_from(part.source.len()).map_err(|_| {
                VramError::invalid_input("model size", "larger than this host's address space")
            })?;
            validate_model_size(len, shared.config.max_model_bytes)?;
            let footprint = round_up(len, shared.backend.granularity())
                .ok_or_else(|| VramError::invalid_input("model size", "cannot be allocated"))?;
            let total = needed.entry(part.gpu_device).or_insert(0);
            *total = total.saturating_add(footprint);
        }
        // Like a multi-GPU loader taking the minimum across ranks: every device must hold its
        // share before anything is copied.
        for (&device, &bytes) in &needed {
            let available = shared
                .capacity(device)?
                .available()
                .min(shared.backend.memory_info(device)?.free);
            if bytes > available {
                return Err(VramError::InsufficientVram {
                    needed: bytes,
                    available,
                    device,
                });
            }
        }
        let count = parts.len();
        let mut shards = Vec::with_capacity(count);
        let mut held_back = Vec::with_capacity(count);
        for (index, part) in parts.iter().enumerate() {
            let options = SealOptions::new()
                .shard_id(format!("{model_id}:tp{index}"))
                .tensor_parallel(index, count);
            let request = SealRequest {
                source: part.source,
                device: part.gpu_device,
                options: &options,
                group: Some(model_id),
            };
            // On an error, `shards` drops here: every shard placed so far is released.
            let sealed = seal::seal(shared, &request)?;
            shards.push(sealed.shard);
            held_back.extend(sealed.held_back);
        }
        let mut group = SealedGroup {
            model_id: model_id.to_owned(),
            shards,
            seal: SealSignature::from_bytes([0; 32]),
        };
        group.seal = compute_group_seal(&shared.key, &group.fields())?;
        // Fail-closed: a group whose records cannot all be stored is released (dropping
        // `group` on the error releases every shard, and those releases are recorded).
        for (correlation_id, event) in held_back {
            shared.record(&correlation_id, event)?;
        }
        Ok(group)
    }

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
        if let Err(e) = verify_group_seal(&shared.key, &group.fields(), &group.seal) {
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
            if shared.config.stop_on_verification_failure {
                shared.stop(&e.to_string());
            }
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
