//! Residency attestations: a statement of where a shard lives, MACed under the seal key.
//!
//! The MAC covers a canonical encoding (`.specs/attestation.md`): the version, then every field
//! as `u32` big-endian length ‖ UTF-8 text, in declaration order, under the statement domain of
//! `vram_seal::signature::sign_statement`. [`decode_statement`] reads it back. Only the manager
//! that verified a shard makes one (`VramManager::attest_vram_residency`); anyone holding the
//! seal key can check one with [`verify_attestation`].

use serde::{Deserialize, Serialize};
use vram_seal::SealKey;
use vram_seal::encoding::{put_str, take, take_str};
use vram_seal::signature::{sign_statement, verify_statement};
use vram_types::{SEAL_SIGNATURE_LEN, SealFailure, SealSignature, VramError};

/// Current attestation format version.
pub const ATTESTATION_VERSION: u8 = 1;
/// Longest caller nonce accepted, in bytes.
pub const MAX_NONCE_BYTES: usize = 256;

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

impl Attestation {
    /// The field texts in encoding order, up to the list of checks.
    fn head_texts(&self) -> [String; 15] {
        [
            self.worker_id.clone(),
            self.shard_id.clone(),
            self.gpu_device.to_string(),
            self.vram_bytes.to_string(),
            self.digest.clone(),
            self.digest_algorithm.clone(),
            self.backend.clone(),
            self.simulated.to_string(),
            self.device_name.clone(),
            format!("{:?}", self.ecc_enabled),
            self.memory_type.clone(),
            self.is_managed.to_string(),
            self.device_ordinal.to_string(),
            self.covers_shard.to_string(),
            self.checks_passed.len().to_string(),
        ]
    }

    /// The canonical bytes the signature covers (everything but the signature).
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] for a field longer than 4 GiB.
    pub fn statement_bytes(&self) -> Result<Vec<u8>, VramError> {
        let too_long = || VramError::invalid_input("attestation field", "longer than 4 GiB");
        let mut out = vec![self.version];
        let tail = [self.attested_at_ms.to_string(), self.nonce.clone()];
        for text in self
            .head_texts()
            .iter()
            .chain(&self.checks_passed)
            .chain(&tail)
        {
            put_str(&mut out, text).ok_or_else(too_long)?;
        }
        Ok(out)
    }

    /// Signs the statement under `key` (the manager's seal key), filling in `signature`.
    ///
    /// # Errors
    /// As [`Self::statement_bytes`].
    pub fn signed(mut self, key: &SealKey) -> Result<Self, VramError> {
        self.signature = sign_statement(key, &self.statement_bytes()?)?.to_hex();
        Ok(self)
    }
}

/// Reads a statement written by [`Attestation::statement_bytes`] back into its fields (with an
/// empty signature). `None` for anything that is not exactly one canonical statement: another
/// version, a field that does not parse, a list count that does not match, a nonce that is not
/// lowercase hex of at most [`MAX_NONCE_BYTES`] bytes, trailing bytes.
#[must_use]
pub fn decode_statement(input: &[u8]) -> Option<Attestation> {
    let mut rest = input;
    let r = &mut rest;
    let version = *take(r, 1)?.first()?;
    if version != ATTESTATION_VERSION {
        return None;
    }
    let mut next = || take_str(r);
    let worker_id = next()?;
    let shard_id = next()?;
    let gpu_device = next()?.parse().ok()?;
    let vram_bytes = next()?.parse().ok()?;
    let digest = next()?;
    let digest_algorithm = next()?;
    let backend = next()?;
    let simulated = next()?.parse().ok()?;
    let device_name = next()?;
    let ecc_enabled = match next()?.as_str() {
        "Some(true)" => Some(true),
        "Some(false)" => Some(false),
        "None" => None,
        _ => return None,
    };
    let memory_type = next()?;
    let is_managed = next()?.parse().ok()?;
    let device_ordinal = next()?.parse().ok()?;
    let covers_shard = next()?.parse().ok()?;
    let checks: usize = next()?.parse().ok()?;
    // Each check takes at least 4 bytes: a count larger than the input allows is refused
    // before anything is allocated for it.
    if checks > input.len() / 4 {
        return None;
    }
    let checks_passed = (0..checks).map(|_| next()).collect::<Option<Vec<_>>>()?;
    let attested_at_ms = next()?.parse().ok()?;
    let nonce = next()?;
    // The nonce is lowercase hex of at most MAX_NONCE_BYTES bytes, as the manager writes it: any
    // other spelling could never verify against the nonce a verifier sent.
    let canonical_nonce = nonce.len() % 2 == 0
        && nonce.len() / 2 <= MAX_NONCE_BYTES
        && nonce
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !canonical_nonce {
        return None;
    }
    let attestation = Attestation {
        version,
        worker_id,
        shard_id,
        gpu_device,
        vram_bytes,
        digest,
        digest_algorithm,
        backend,
        simulated,
        device_name,
        ecc_enabled,
        memory_type,
        is_managed,
        device_ordinal,
        covers_shard,
        checks_passed,
        attested_at_ms,
        nonce,
        signature: String::new(),
    };
    // Only the canonical spelling decodes (numbers without leading zeros or signs, ...).
    (r.is_empty() && attestation.statement_bytes().ok()? == input).then_some(attestation)
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
        &attestation.statement_bytes()?,
        &SealSignature::from_bytes(raw),
    )
    .map_err(|_| VramError::SealVerificationFailed {
        shard_id: attestation.shard_id.clone(),
        reason: SealFailure::SignatureMismatch,
    })
}
