//! The group seal of a tensor-parallel model (`.specs/group-seal.md`): one MAC over the model id,
//! the shard count and every shard's (index, device, byte count, digest algorithm, digest), so
//! that a missing, duplicated, swapped, reordered or foreign shard fails verification even when
//! each shard's own seal still holds.
//!
//! Encoding, all integers big-endian (the primitives of [`crate::encoding`]):
//!
//! | field | bytes |
//! |---|---|
//! | magic | `VRAMGRUP` (8 bytes; differs from the shard seal's `VRAMSEAL` and from statements) |
//! | format version | `u8` = 1 |
//! | model id | `u32` length ‖ UTF-8 |
//! | shard count | `u64` |
//! | each shard, by index 0..count | `u64` index ‖ `u32` device ‖ `u64` bytes ‖ `u32` length ‖ algorithm id ‖ `u32` length ‖ digest |
//!
//! A group is composed from shard seals by any process that holds the key
//! ([`group_from_shards`]): each per-GPU worker hands over its sealed shard (public fields and
//! seal, for example a serialized `SealedShard`), the composer checks every shard seal and the
//! indices, then seals the group:
//!
//! ```
//! use vram_seal::group::{compute_group_seal, group_from_shards, verify_group_seal};
//! use vram_seal::{SealKey, compute_signature};
//! use vram_types::{DigestAlgorithm, SealedFields, VramError};
//!
//! let key = SealKey::derive(b"worker-api-token-from-the-orchestrator", "node-1")?;
//! // What the worker process of GPU `i` sealed and sends (its shard's public fields and seal).
//! let from_worker = |i: u32| -> Result<_, VramError> {
//!     let fields = SealedFields {
//!         shard_id: format!("llama:tp{i}"),
//!         gpu_device: i,
//!         vram_bytes: 1 << 30,
//!         digest_algorithm: DigestAlgorithm::default(),
//!         digest: format!("{i:064x}"),
//!         sealed_at: None,
//!         shard_index: Some(i as usize),
//!         total_shards: Some(2),
//!     };
//!     let seal = compute_signature(&key, &fields)?;
//!     Ok((fields, seal))
//! };
//! let received = vec![from_worker(1)?, from_worker(0)?]; // in any order
//! let group = group_from_shards(&key, "llama", &received)?; // checks every shard seal
//! let group_seal = compute_group_seal(&key, &group)?;
//! verify_group_seal(&key, &group, &group_seal)?;
//! # Ok::<(), VramError>(())
//! ```

use vram_types::validation::ShardId;
use vram_types::{DigestAlgorithm, SealFailure, SealSignature, SealedFields, VramError};

use crate::encoding::{put_str, take, take_str, take_u32, take_u64};
use crate::key::SealKey;
use crate::signature::{hmac_sha256, verify_hmac_sha256, verify_signature};

/// The magic prefix of a group encoding.
pub const GROUP_MAGIC: &[u8; 8] = b"VRAMGRUP";
/// The current group format version.
pub const GROUP_FORMAT_VERSION: u8 = 1;

/// One shard of a group, as the group seal covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Tensor-parallel index, `0..count`.
    pub shard_index: usize,
    /// CUDA device index the shard lives on.
    pub gpu_device: u32,
    /// Shard length in bytes.
    pub vram_bytes: usize,
    /// How the shard's digest was computed.
    pub digest_algorithm: DigestAlgorithm,
    /// The shard's digest, 64 lowercase hex characters.
    pub digest: String,
}

/// What a group seal covers: a model id and its shards, in index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFields {
    /// The model's id (validated like a shard id).
    pub model_id: String,
    /// Every shard, `members[i].shard_index == i`.
    pub members: Vec<GroupMember>,
}

fn invalid(reason: impl Into<String>) -> VramError {
    VramError::invalid_input("group", reason)
}

/// Encodes a group canonically.
///
/// # Errors
/// [`VramError::InvalidInput`] for an invalid model id, no shards, shards not in index order
/// `0..count` (a missing or duplicated index), a digest that is not 64 lowercase hex characters,
/// or a field too long to encode.
pub fn encode_group(fields: &GroupFields) -> Result<Vec<u8>, VramError> {
    ShardId::new(&fields.model_id)?;
    if fields.members.is_empty() {
        return Err(invalid("no shards"));
    }
    let too_long = || invalid("a field is too long to encode");
    let mut out = Vec::new();
    out.extend_from_slice(GROUP_MAGIC);
    out.push(GROUP_FORMAT_VERSION);
    put_str(&mut out, &fields.model_id).ok_or_else(too_long)?;
    let count = u64::try_from(fields.members.len()).map_err(|_| too_long())?;
    out.extend_from_slice(&count.to_be_bytes());
    for (position, m) in fields.members.iter().enumerate() {
        if m.shard_index != position {
            return Err(invalid(format!(
                "shard index {} at position {position}: shards must be in index order 0..{count}, each once",
                m.shard_index
            )));
        }
        let hex_digest = m.digest.len() == 64
            && m.digest
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex_digest {
            return Err(invalid(format!(
                "shard {position}: digest is not 64 lowercase hex characters"
            )));
        }
        out.extend_from_slice(
            &u64::try_from(m.shard_index)
                .map_err(|_| too_long())?
                .to_be_bytes(),
        );
        out.extend_from_slice(&m.gpu_device.to_be_bytes());
        out.extend_from_slice(
            &u64::try_from(m.vram_bytes)
                .map_err(|_| too_long())?
                .to_be_bytes(),
        );
        put_str(&mut out, &m.digest_algorithm.to_string()).ok_or_else(too_long)?;
        put_str(&mut out, &m.digest).ok_or_else(too_long)?;
    }
    Ok(out)
}

/// Decodes [`encode_group`]'s output; `None` for anything that is not exactly one canonical
/// encoding (a shard count larger than the input allows is refused before anything is
/// allocated for it).
#[must_use]
pub fn decode_group(input: &[u8]) -> Option<GroupFields> {
    let mut rest = input;
    let r = &mut rest;
    if take(r, 8)? != GROUP_MAGIC || *take(r, 1)?.first()? != GROUP_FORMAT_VERSION {
        return None;
    }
    let model_id = take_str(r)?;
    let count = take_u64(r)?;
    // Each shard takes at least 28 bytes.
    if count > u64::try_from(input.len() / 28).ok()? {
        return None;
    }
    let mut members = Vec::new();
    for _ in 0..count {
        members.push(GroupMember {
            shard_index: usize::try_from(take_u64(r)?).ok()?,
            gpu_device: take_u32(r)?,
            vram_bytes: usize::try_from(take_u64(r)?).ok()?,
            digest_algorithm: take_str(r)?.parse().ok()?,
            digest: take_str(r)?,
        });
    }
    let fields = GroupFields { model_id, members };
    (r.is_empty() && encode_group(&fields).ok()? == input).then_some(fields)
}

/// The group seal: HMAC-SHA256 under the seal key over [`encode_group`]'s bytes.
///
/// # Errors
/// As [`encode_group`].
pub fn compute_group_seal(key: &SealKey, fields: &GroupFields) -> Result<SealSignature, VramError> {
    hmac_sha256(key, &encode_group(fields)?)
}

/// Checks a group seal in constant time.
///
/// # Errors
/// [`VramError::SealVerificationFailed`] (named by the model id) when the seal does not match
/// the fields, or the fields do not encode (then [`SealFailure::MalformedFields`]).
pub fn verify_group_seal(
    key: &SealKey,
    fields: &GroupFields,
    seal: &SealSignature,
) -> Result<(), VramError> {
    let failed = |reason| VramError::SealVerificationFailed {
        shard_id: fields.model_id.clone(),
        reason,
    };
    let encoded = encode_group(fields).map_err(|_| failed(SealFailure::MalformedFields))?;
    verify_hmac_sha256(key, &encoded, seal.as_bytes())
        .map_err(|_| failed(SealFailure::SignatureMismatch))
}

/// The group of sealed shards, after checking each shard's own seal under `key` and that the
/// shards are exactly indices `0..n` of an `n`-shard model (in any order; the group lists them
/// by index). What a coordinator holding the key runs on the shards its per-GPU workers send.
///
/// # Errors
/// [`VramError::SealVerificationFailed`] for a shard whose seal does not hold;
/// [`VramError::InvalidInput`] for a shard without tensor-parallel fields, a shard count that
/// differs between shards or from the number given, or a missing or duplicated index.
pub fn group_from_shards(
    key: &SealKey,
    model_id: &str,
    shards: &[(SealedFields, SealSignature)],
) -> Result<GroupFields, VramError> {
    let count = shards.len();
    let mut members: Vec<Option<GroupMember>> = vec![None; count];
    for (fields, seal) in shards {
        verify_signature(key, fields, seal)?;
        let (Some(index), Some(total)) = (fields.shard_index, fields.total_shards) else {
            return Err(invalid(format!(
                "shard {:?} is not a tensor-parallel shard",
                fields.shard_id
            )));
        };
        if total != count {
            return Err(invalid(format!(
                "shard {:?} is one of {total}, {count} shards were given",
                fields.shard_id
            )));
        }
        let slot = members
            .get_mut(index)
            .ok_or_else(|| invalid(format!("shard index {index} of {count}")))?;
        if slot.is_some() {
            return Err(invalid(format!("shard index {index} given twice")));
        }
        *slot = Some(GroupMember {
            shard_index: index,
            gpu_device: fields.gpu_device,
            vram_bytes: fields.vram_bytes,
            digest_algorithm: fields.digest_algorithm,
            digest: fields.digest.clone(),
        });
    }
    let members = members
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| invalid("a shard index is missing"))?;
    let group = GroupFields {
        model_id: model_id.to_owned(),
        members,
    };
    encode_group(&group)?;
    Ok(group)
}
