//! The seal: HMAC-SHA256 over a canonical encoding of every sealed field.
//!
//! Encoding (`.specs/seal.md`), all integers big-endian:
//!
//! | field | bytes |
//! |---|---|
//! | magic | `VRAMSEAL` (8 bytes) |
//! | format version | `u8` = 1 |
//! | shard id | `u32` length ‖ UTF-8 |
//! | GPU device | `u32` |
//! | byte count | `u64` |
//! | digest algorithm id | `u32` length ‖ ASCII |
//! | digest | `u32` length ‖ ASCII (64 lowercase hex) |
//! | seal time | `0x00`, or `0x01` ‖ `u64` seconds ‖ `u32` nanoseconds since the Unix epoch |
//! | shard index | `0x00`, or `0x01` ‖ `u64` |
//! | shard count | `0x00`, or `0x01` ‖ `u64` |
//!
//! Every field is fixed-size or length-prefixed and the order is fixed, so the encoding is
//! injective: [`decode_sealed_fields`] recovers the fields from the bytes, and rejects trailing
//! data. Verification uses `Mac::verify_slice` (constant time).

use std::time::{Duration, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use vram_types::{SealFailure, SealSignature, SealedFields, VramError};

use crate::encoding::{put_str, take, take_flag, take_str, take_u32, take_u64};
use crate::key::SealKey;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The magic prefix of the encoding.
pub const SEAL_MAGIC: &[u8; 8] = b"VRAMSEAL";
/// The current format version.
pub const SEAL_FORMAT_VERSION: u8 = 1;

/// Encodes the sealed fields canonically.
///
/// # Errors
/// [`VramError::SealVerificationFailed`] with [`SealFailure::MalformedFields`] when a field
/// cannot be encoded: a seal time before 1970, or a string longer than 4 GiB.
pub fn encode_sealed_fields(fields: &SealedFields) -> Result<Vec<u8>, VramError> {
    let malformed = || VramError::SealVerificationFailed {
        shard_id: fields.shard_id.clone(),
        reason: SealFailure::MalformedFields,
    };
    let algorithm = fields.digest_algorithm.to_string();
    let mut out = Vec::with_capacity(
        64usize
            .saturating_add(fields.shard_id.len())
            .saturating_add(fields.digest.len()),
    );
    out.extend_from_slice(SEAL_MAGIC);
    out.push(SEAL_FORMAT_VERSION);
    put_str(&mut out, &fields.shard_id).ok_or_else(malformed)?;
    out.extend_from_slice(&fields.gpu_device.to_be_bytes());
    out.extend_from_slice(
        &u64::try_from(fields.vram_bytes)
            .map_err(|_| malformed())?
            .to_be_bytes(),
    );
    put_str(&mut out, &algorithm).ok_or_else(malformed)?;
    put_str(&mut out, &fields.digest).ok_or_else(malformed)?;
    match fields.sealed_at {
        None => out.push(0),
        Some(t) => {
            let since = t.duration_since(UNIX_EPOCH).map_err(|_| malformed())?;
            out.push(1);
            out.extend_from_slice(&since.as_secs().to_be_bytes());
            out.extend_from_slice(&since.subsec_nanos().to_be_bytes());
        }
    }
    for n in [fields.shard_index, fields.total_shards] {
        match n {
            None => out.push(0),
            Some(n) => {
                out.push(1);
                out.extend_from_slice(&u64::try_from(n).map_err(|_| malformed())?.to_be_bytes());
            }
        }
    }
    Ok(out)
}

/// Decodes [`encode_sealed_fields`]' output: proof that the encoding is injective, and a tool
/// for auditors. Returns `None` for anything that is not exactly one canonical encoding.
#[must_use]
pub fn decode_sealed_fields(input: &[u8]) -> Option<SealedFields> {
    let mut rest = input;
    let r = &mut rest;
    if take(r, 8)? != SEAL_MAGIC || *take(r, 1)?.first()? != SEAL_FORMAT_VERSION {
        return None;
    }
    let shard_id = take_str(r)?;
    let gpu_device = take_u32(r)?;
    let vram_bytes = usize::try_from(take_u64(r)?).ok()?;
    let digest_algorithm = take_str(r)?.parse().ok()?;
    let digest = take_str(r)?;
    let sealed_at = match take_flag(r)? {
        false => None,
        true => {
            let secs = take_u64(r)?;
            let nanos = take_u32(r)?;
            if nanos >= 1_000_000_000 {
                return None;
            }
            Some(UNIX_EPOCH.checked_add(Duration::new(secs, nanos))?)
        }
    };
    let shard_index = take_opt_usize(r)?;
    let total_shards = take_opt_usize(r)?;
    if !r.is_empty() {
        return None;
    }
    let fields = SealedFields {
        shard_id,
        gpu_device,
        vram_bytes,
        digest_algorithm,
        digest,
        sealed_at,
        shard_index,
        total_shards,
    };
    // Only canonical encodings decode (e.g. the algorithm id must be spelled as we spell it).
    (encode_sealed_fields(&fields).ok()? == input).then_some(fields)
}

fn take_opt_usize(r: &mut &[u8]) -> Option<Option<usize>> {
    match take_flag(r)? {
        false => Some(None),
        true => Some(Some(usize::try_from(take_u64(r)?).ok()?)),
    }
}

/// The MAC state after absorbing `parts` in order.
fn mac_over(key: &SealKey, parts: &[&[u8]]) -> Result<HmacSha256, VramError> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key.expose())
        .map_err(|_| VramError::Unreachable("HMAC accepts keys of any length"))?;
    for part in parts {
        mac.update(part);
    }
    Ok(mac)
}

fn sign(key: &SealKey, parts: &[&[u8]]) -> Result<SealSignature, VramError> {
    Ok(SealSignature::from_bytes(
        mac_over(key, parts)?.finalize().into_bytes().into(),
    ))
}

/// A MAC that does not match its message (raw HMAC and statement checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("MAC does not match the message")]
pub struct MacMismatch;

/// Constant-time check of `tag` against the MAC over `parts` (`Mac::verify_slice`).
fn check(key: &SealKey, parts: &[&[u8]], tag: &[u8]) -> Result<(), MacMismatch> {
    mac_over(key, parts)
        .map_err(|_| MacMismatch)?
        .verify_slice(tag)
        .map_err(|_| MacMismatch)
}

/// HMAC-SHA256 of `message` under `key`: the primitive the seal is built on, exposed for
/// known-answer tests.
///
/// # Errors
/// [`VramError::Unreachable`] only: HMAC accepts every key length.
pub fn hmac_sha256(key: &SealKey, message: &[u8]) -> Result<SealSignature, VramError> {
    sign(key, &[message])
}

/// Checks an HMAC-SHA256 tag over `message` in constant time.
///
/// # Errors
/// [`MacMismatch`] when the tag does not match; tags of any length other than 32 bytes never
/// match.
pub fn verify_hmac_sha256(key: &SealKey, message: &[u8], tag: &[u8]) -> Result<(), MacMismatch> {
    check(key, &[message], tag)
}

/// Domain prefix of statements (attestations) MACed under the seal key. It differs from the
/// seal encoding's magic (`VRAMSEAL`) in its fifth byte, so no statement MAC is a seal.
pub const STATEMENT_DOMAIN: &[u8; 16] = b"VRAM-STATEMENT\x00\x01";

/// MACs a statement under the seal key: `HMAC-SHA256(key, STATEMENT_DOMAIN ‖ statement)`.
///
/// # Errors
/// [`VramError::Unreachable`] only.
pub fn sign_statement(key: &SealKey, statement: &[u8]) -> Result<SealSignature, VramError> {
    sign(key, &[STATEMENT_DOMAIN, statement])
}

/// Checks a statement MAC in constant time.
///
/// # Errors
/// [`MacMismatch`] when it does not match.
pub fn verify_statement(
    key: &SealKey,
    statement: &[u8],
    signature: &SealSignature,
) -> Result<(), MacMismatch> {
    check(key, &[STATEMENT_DOMAIN, statement], signature.as_bytes())
}

/// Computes the seal signature over `fields`, which must describe a shard
/// ([`SealedFields::validate`]): nothing else is signed.
///
/// # Errors
/// [`VramError::InvalidInput`] for fields that do not describe a shard (an invalid shard id,
/// zero bytes, a digest that is not 64 lowercase hex characters, a bad shard index); as
/// [`encode_sealed_fields`].
pub fn compute_signature(key: &SealKey, fields: &SealedFields) -> Result<SealSignature, VramError> {
    fields.validate()?;
    sign(key, &[&encode_sealed_fields(fields)?])
}

/// Checks `signature` against `fields` in constant time.
///
/// # Errors
/// [`VramError::SealVerificationFailed`]: [`SealFailure::SignatureMismatch`] when the signature
/// does not match, [`SealFailure::MalformedFields`] when the fields do not describe a shard
/// ([`SealedFields::validate`]; no such fields were ever sealed) or cannot be encoded.
pub fn verify_signature(
    key: &SealKey,
    fields: &SealedFields,
    signature: &SealSignature,
) -> Result<(), VramError> {
    fields
        .validate()
        .map_err(|_| VramError::SealVerificationFailed {
            shard_id: fields.shard_id.clone(),
            reason: SealFailure::MalformedFields,
        })?;
    check(key, &[&encode_sealed_fields(fields)?], signature.as_bytes()).map_err(|_| {
        VramError::SealVerificationFailed {
            shard_id: fields.shard_id.clone(),
            reason: SealFailure::SignatureMismatch,
        }
    })
}
