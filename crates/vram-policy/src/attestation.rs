//! Residency attestations: a statement of where a shard lives, MACed under the seal key.
//!
//! The MAC covers a canonical encoding (`.specs/attestation.md`): the version, then every field
//! as `u32` big-endian length ‖ UTF-8 text, in declaration order, under the statement domain of
//! `vram_seal::signature::sign_statement`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vram_alloc::VramManager;
use vram_seal::SealKey;
use vram_seal::signature::verify_statement;
use vram_types::{BackendKind, SEAL_SIGNATURE_LEN, SealSignature, SealedShard, VramError};

/// Current attestation format version.
pub const ATTESTATION_VERSION: u8 = 1;
/// Longest caller nonce accepted.
const MAX_NONCE_BYTES: usize = 256;

/// A signed statement that a shard is resident in device memory and unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// Format version (1).
    pub version: u8,
    /// The worker that attests.
    pub worker_id: String,
    /// Shard id.
    pub shard_id: String,
    /// CUDA device index.
    pub gpu_device: u32,
    /// Shard length in bytes.
    pub vram_bytes: usize,
    /// Sealed digest, re-checked against the bytes in VRAM for this statement.
    pub digest: String,
    /// Digest algorithm id.
    pub digest_algorithm: String,
    /// `cuda` or `mock`.
    pub backend: String,
    /// True on the mock backend: the "VRAM" is host memory. A verifier must refuse it in
    /// production.
    pub simulated: bool,
    /// Device name.
    pub device_name: String,
    /// Device ECC state when known.
    pub ecc_enabled: Option<bool>,
    /// Where the driver says the allocation lives (`device`, or `simulated` on the mock).
    pub memory_type: String,
    /// Whether the allocation is managed memory (never true in a valid attestation).
    pub is_managed: bool,
    /// The device that owns the allocation.
    pub device_ordinal: u32,
    /// Whether the allocation covers the whole shard.
    pub covers_shard: bool,
    /// The checks that passed, in order.
    pub checks_passed: Vec<String>,
    /// When the statement was made, milliseconds since the Unix epoch.
    pub attested_at_ms: u64,
    /// The caller's nonce, hex.
    pub nonce: String,
    /// HMAC-SHA256 over the canonical encoding, hex.
    pub signature: String,
}

fn put(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

impl Attestation {
    /// The canonical bytes the signature covers (everything but the signature).
    #[must_use]
    pub fn statement_bytes(&self) -> Vec<u8> {
        let mut out = vec![self.version];
        for text in [
            self.worker_id.as_str(),
            &self.shard_id,
            &self.gpu_device.to_string(),
            &self.vram_bytes.to_string(),
            &self.digest,
            &self.digest_algorithm,
            &self.backend,
            &self.simulated.to_string(),
            &self.device_name,
            &format!("{:?}", self.ecc_enabled),
            &self.memory_type,
            &self.is_managed.to_string(),
            &self.device_ordinal.to_string(),
            &self.covers_shard.to_string(),
            &self.checks_passed.len().to_string(),
        ] {
            put(&mut out, text);
        }
        for check in &self.checks_passed {
            put(&mut out, check);
        }
        put(&mut out, &self.attested_at_ms.to_string());
        put(&mut out, &self.nonce);
        out
    }
}

/// Checks an attestation's signature under `key`, and that it answers `expected_nonce`.
///
/// # Errors
/// [`VramError::SealVerificationFailed`] when the signature does not match (any field changed);
/// [`VramError::InvalidInput`] for a malformed signature or a nonce that differs.
pub fn verify_attestation(
    key: &SealKey,
    attestation: &Attestation,
    expected_nonce: &[u8],
) -> Result<(), VramError> {
    if attestation.nonce != hex::encode(expected_nonce) {
        return Err(VramError::invalid_input(
            "attestation nonce",
            "does not match the nonce sent (replayed statement?)",
        ));
    }
    let raw: [u8; SEAL_SIGNATURE_LEN] = hex::decode(&attestation.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            VramError::invalid_input("attestation signature", "not 64 hex characters")
        })?;
    verify_statement(
        key,
        &attestation.statement_bytes(),
        &SealSignature::from_bytes(raw),
    )
    .map_err(|_| VramError::SealVerificationFailed {
        shard_id: attestation.shard_id.clone(),
        reason: vram_types::SealFailure::SignatureMismatch,
    })
}

pub(crate) fn attest(
    manager: &VramManager,
    shard: &SealedShard,
    nonce: &[u8],
) -> Result<Attestation, VramError> {
    if nonce.len() > MAX_NONCE_BYTES {
        return Err(VramError::invalid_input(
            "attestation nonce",
            format!("{} bytes, at most {MAX_NONCE_BYTES}", nonce.len()),
        ));
    }
    manager.verify_sealed(shard)?;
    let device = manager.device_facts(shard.gpu_device)?;
    let problems = device.vram_only_problems(manager.config().allow_pageable_memory_access);
    if !problems.is_empty() {
        return Err(VramError::PolicyViolation {
            device: shard.gpu_device,
            reason: problems.join("; "),
        });
    }
    let facts = manager.allocation_facts(shard)?;
    let mut attestation = Attestation {
        version: ATTESTATION_VERSION,
        worker_id: manager.config().worker_id.clone(),
        shard_id: shard.shard_id.clone(),
        gpu_device: shard.gpu_device,
        vram_bytes: shard.vram_bytes,
        digest: shard.digest.clone(),
        digest_algorithm: shard.digest_algorithm().to_string(),
        backend: manager.backend_kind().to_string(),
        simulated: manager.backend_kind() != BackendKind::Cuda,
        device_name: device.name.clone(),
        ecc_enabled: device.ecc_enabled,
        memory_type: facts.memory_type.to_string(),
        is_managed: facts.is_managed,
        device_ordinal: facts.device_ordinal,
        covers_shard: facts.covers_shard,
        checks_passed: [
            "seal signature",
            "digest of resident bytes",
            "allocation is device memory, not managed",
            "allocation on the expected device and covers the shard",
            "device has its own memory and no pageable access",
        ]
        .map(str::to_owned)
        .to_vec(),
        attested_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        nonce: hex::encode(nonce),
        signature: String::new(),
    };
    attestation.signature = manager
        .sign_statement(&attestation.statement_bytes())?
        .to_hex();
    Ok(attestation)
}
