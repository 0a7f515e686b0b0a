//! The Ed25519 key that signs audit-log checkpoints, and the checkpoint it signs.
//!
//! An audit log is hash-chained; a chain alone can be rebuilt by anyone who edits the file. A
//! checkpoint (record count and chain head) signed with a key only the worker holds makes the
//! chain before it impossible to rebuild without that key, and checkable by anyone holding the
//! public key alone (the idea of Certificate Transparency's signed tree heads).
//!
//! The signing key is derived from the seal key with HKDF-SHA256 under its own salt and info,
//! so it exists for this purpose alone, needs no storage of its own, and the public key reveals
//! nothing about the seal key. Formats, derivation and vectors: `.specs/audit.md`.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroize;

use crate::SealKey;

/// HKDF salt of the audit key (fixed; `.specs/audit.md`).
const AUDIT_KEY_SALT: &[u8] = b"vram-residency/audit-key/v1/salt";
/// HKDF info of the audit key (fixed; `.specs/audit.md`).
const AUDIT_KEY_INFO: &[u8] = b"vram-residency/audit-key/v1";
/// First line of every signed checkpoint message.
const CHECKPOINT_DOMAIN: &str = "vram-residency/audit-checkpoint/v1";
/// First word of a checkpoint's text form.
const CHECKPOINT_TEXT_TAG: &str = "vram-audit-checkpoint/v1";

/// Why an audit public key, checkpoint or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditKeyError {
    /// A public key is not 64 hex characters naming a valid Ed25519 point.
    #[error("not an Ed25519 public key (want 64 hex characters): {0}")]
    BadPublicKey(String),
    /// A checkpoint's text form does not parse.
    #[error("not an audit checkpoint (want `{CHECKPOINT_TEXT_TAG} COUNT HEAD SIGNATURE`): {0}")]
    BadCheckpoint(String),
    /// The signature does not verify under the public key.
    #[error("checkpoint signature does not verify under audit key {0}")]
    BadSignature(AuditPublicKey),
}

/// The worker's audit signing key. Zeroized on drop; `Debug` prints the public key only; not
/// `Clone`.
pub struct AuditSigningKey {
    inner: SigningKey,
}

impl SealKey {
    /// The audit signing key for this seal key:
    /// `seed = HKDF-SHA256(salt = "vram-residency/audit-key/v1/salt", IKM = seal key,
    /// info = "vram-residency/audit-key/v1")`, 32 bytes, used as an Ed25519 secret key.
    ///
    /// # Errors
    /// None in practice: HKDF-SHA256 always expands to 32 bytes; the `Result` keeps the
    /// library free of panics.
    pub fn audit_signing_key(&self) -> Result<AuditSigningKey, vram_types::VramError> {
        let hk = Hkdf::<Sha256>::new(Some(AUDIT_KEY_SALT), self.expose());
        let mut seed = [0u8; 32];
        hk.expand(AUDIT_KEY_INFO, &mut seed).map_err(|_| {
            vram_types::VramError::Unreachable("HKDF-SHA256 can expand to 32 bytes")
        })?;
        let inner = SigningKey::from_bytes(&seed);
        seed.zeroize();
        Ok(AuditSigningKey { inner })
    }
}

impl AuditSigningKey {
    /// The public key that verifies this key's checkpoints.
    #[must_use]
    pub fn public_key(&self) -> AuditPublicKey {
        AuditPublicKey(self.inner.verifying_key().to_bytes())
    }

    /// Signs the chain state `count` records long whose last record hashes to `head`.
    #[must_use]
    pub fn sign_checkpoint(&self, count: u64, head: [u8; 32]) -> Checkpoint {
        let signature = self.inner.sign(&checkpoint_message(count, &head));
        Checkpoint {
            count,
            head,
            signature: signature.to_bytes(),
        }
    }
}

impl fmt::Debug for AuditSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditSigningKey(public {})", self.public_key())
    }
}

/// An audit public key (a valid Ed25519 point); shown and parsed as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuditPublicKey([u8; 32]);

impl AuditPublicKey {
    /// The 32 key bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// Checks a checkpoint's signature.
    ///
    /// # Errors
    /// [`AuditKeyError::BadSignature`] when it was not signed by this key over this count and
    /// head.
    pub fn verify_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), AuditKeyError> {
        let signature = ed25519_dalek::Signature::from_bytes(&checkpoint.signature);
        let message = checkpoint_message(checkpoint.count, &checkpoint.head);
        // `verify_strict` refuses small-order keys and non-canonical signatures: a checkpoint
        // has exactly one valid encoding.
        VerifyingKey::from_bytes(&self.0)
            .and_then(|key| key.verify_strict(&message, &signature))
            .map_err(|_| AuditKeyError::BadSignature(*self))
    }
}

impl FromStr for AuditPublicKey {
    type Err = AuditKeyError;

    /// Parses 64 hex characters.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AuditKeyError::BadPublicKey(shorten(s));
        let bytes: [u8; 32] = hex::decode(s)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        VerifyingKey::from_bytes(&bytes)
            .map(|key| Self(key.to_bytes()))
            .map_err(|_| bad())
    }
}

impl fmt::Display for AuditPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for AuditPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditPublicKey({self})")
    }
}

/// A signed statement that the log held `count` records and its last record hashed to `head`.
#[derive(Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Records covered (the chain's length).
    pub count: u64,
    /// SHA-256 of the last covered record line.
    pub head: [u8; 32],
    /// Ed25519 signature over [`checkpoint_message`].
    pub signature: [u8; 64],
}

/// The bytes a checkpoint signs: `"vram-residency/audit-checkpoint/v1\n" ‖ count (decimal) ‖
/// "\n" ‖ head (64 lowercase hex) ‖ "\n"`.
#[must_use]
pub fn checkpoint_message(count: u64, head: &[u8; 32]) -> Vec<u8> {
    format!("{CHECKPOINT_DOMAIN}\n{count}\n{}\n", hex::encode(head)).into_bytes()
}

impl Checkpoint {
    /// The signature as 128 lowercase hex characters (as written in an audit log).
    #[must_use]
    pub fn signature_hex(&self) -> String {
        hex::encode(self.signature)
    }
}

impl fmt::Display for Checkpoint {
    /// One line to keep off the host: `vram-audit-checkpoint/v1 COUNT HEAD SIGNATURE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{CHECKPOINT_TEXT_TAG} {} {} {}",
            self.count,
            hex::encode(self.head),
            self.signature_hex()
        )
    }
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checkpoint({self})")
    }
}

impl FromStr for Checkpoint {
    type Err = AuditKeyError;

    /// Parses the one-line text form (surrounding whitespace ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AuditKeyError::BadCheckpoint(shorten(s));
        let mut words = s.split_ascii_whitespace();
        let (Some(CHECKPOINT_TEXT_TAG), Some(count), Some(head), Some(signature), None) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            return Err(bad());
        };
        if !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Ok(Self {
            count: count.parse().map_err(|_| bad())?,
            head: decode_lower_hex(head).ok_or_else(bad)?,
            signature: decode_lower_hex(signature).ok_or_else(bad)?,
        })
    }
}

/// Decodes exactly `N` bytes of lowercase hex (one spelling per value).
#[must_use]
pub fn decode_lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

/// At most 80 characters of outside input, for an error message.
fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuditSigningKey {
        SealKey::from_array(core::array::from_fn(|i| u8::try_from(i).unwrap()))
            .audit_signing_key()
            .unwrap()
    }

    #[test]
    fn checkpoints_verify_only_for_their_count_head_and_key() {
        let k = key();
        let cp = k.sign_checkpoint(7, [3; 32]);
        k.public_key().verify_checkpoint(&cp).unwrap();
        for edited in [
            Checkpoint {
                count: 8,
                ..cp.clone()
            },
            Checkpoint {
                head: [4; 32],
                ..cp.clone()
            },
        ] {
            assert!(k.public_key().verify_checkpoint(&edited).is_err());
        }
        let mut flipped = cp.clone();
        flipped.signature[10] ^= 1;
        assert!(k.public_key().verify_checkpoint(&flipped).is_err());
        let other = SealKey::from_array([9; 32]).audit_signing_key().unwrap();
        assert!(other.public_key().verify_checkpoint(&cp).is_err());
    }

    #[test]
    fn text_forms_round_trip_and_refuse_other_spellings() {
        let k = key();
        let cp = k.sign_checkpoint(42, [0xab; 32]);
        let text = cp.to_string();
        assert_eq!(text.parse::<Checkpoint>().unwrap(), cp);
        assert!(text.to_uppercase().parse::<Checkpoint>().is_err());
        assert!(text.replace(" 42 ", " +42 ").parse::<Checkpoint>().is_err());
        assert!(format!("{text} extra").parse::<Checkpoint>().is_err());
        assert!(text.replace("/v1", "/v2").parse::<Checkpoint>().is_err());
        let public = k.public_key();
        assert_eq!(
            public.to_string().parse::<AuditPublicKey>().unwrap(),
            public
        );
        assert!("00".parse::<AuditPublicKey>().is_err());
        assert!("zz".repeat(32).parse::<AuditPublicKey>().is_err());
    }

    #[test]
    fn the_audit_key_is_not_the_seal_key_and_debug_shows_no_secret() {
        let seal = SealKey::from_array([5; 32]);
        let audit = seal.audit_signing_key().unwrap();
        assert_ne!(audit.inner.to_bytes(), [5; 32]);
        assert_eq!(
            audit.public_key(),
            seal.audit_signing_key().unwrap().public_key()
        );
        let text = format!("{audit:?}");
        assert!(!text.contains(&hex::encode(audit.inner.to_bytes())));
        assert!(text.contains(&audit.public_key().to_string()));
    }
}
