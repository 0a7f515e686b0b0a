//! `SealKey`: the per-worker HMAC key.
//!
//! Derived with HKDF-SHA256 (RFC 5869) from the worker's API token and its worker id, so each
//! worker seals under its own key and a key never needs to be stored. Salt and info are fixed in
//! `.specs/seal.md`. The key is zeroized on drop and never printed.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use vram_types::{KeyProblem, VramError};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Shortest raw key accepted (the HMAC-SHA256 output size).
pub const MIN_KEY_BYTES: usize = 32;
/// Longest raw key accepted: the SHA-256 block size. A longer HMAC key is first hashed, so two
/// different long keys could act as one; refusing them keeps key equality simple.
pub const MAX_KEY_BYTES: usize = 64;
/// Shortest worker token accepted for derivation (128 bits).
pub const MIN_TOKEN_BYTES: usize = 16;
/// Longest worker id accepted for derivation.
const MAX_WORKER_ID_BYTES: usize = 256;

/// HKDF salt (fixed; see `.specs/seal.md`).
pub(crate) const HKDF_SALT: &[u8] = b"vram-residency/seal-key/v1/salt";
/// HKDF info prefix; the worker id follows.
pub(crate) const HKDF_INFO_PREFIX: &[u8] = b"vram-residency/seal-key/v1/worker:";

/// A seal key. Zeroized on drop; `Debug` prints no bytes; not `Clone` (share it with `Arc`).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SealKey {
    bytes: Vec<u8>,
}

impl SealKey {
    /// Derives the worker's key: `HKDF-SHA256(salt, ikm = worker_token, info = prefix ‖ worker_id)`,
    /// 32 bytes.
    ///
    /// # Errors
    /// [`VramError::InvalidKey`] when the token is empty or shorter than 16 bytes, or the worker
    /// id is empty or longer than 256 bytes.
    pub fn derive(worker_token: &[u8], worker_id: &str) -> Result<Self, VramError> {
        check_len(worker_token.len(), MIN_TOKEN_BYTES, usize::MAX)?;
        if worker_id.is_empty() || worker_id.len() > MAX_WORKER_ID_BYTES {
            return Err(VramError::InvalidKey(KeyProblem::BadWorkerId));
        }
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), worker_token);
        let mut bytes = vec![0u8; MIN_KEY_BYTES];
        hk.expand_multi_info(&[HKDF_INFO_PREFIX, worker_id.as_bytes()], &mut bytes)
            .map_err(|_| VramError::Unreachable("HKDF-SHA256 can expand to 32 bytes"))?;
        Ok(Self { bytes })
    }

    /// A fresh random 32-byte key from the operating system: for a worker that seals and
    /// verifies within one process and needs no key shared with anyone else.
    ///
    /// # Errors
    /// [`VramError::Unreachable`] if the operating
    /// system's random source fails.
    pub fn generate() -> Result<Self, VramError> {
        let mut bytes = vec![0u8; MIN_KEY_BYTES];
        getrandom::fill(&mut bytes)
            .map_err(|_| VramError::Unreachable("the operating system's random source failed"))?;
        Ok(Self { bytes })
    }

    /// Uses a 32-byte array as the key (cannot fail: the length is right by construction).
    #[must_use]
    pub fn from_array(key: [u8; 32]) -> Self {
        Self {
            bytes: key.to_vec(),
        }
    }

    /// Uses raw key bytes (tests, or a key from a secrets manager).
    ///
    /// # Errors
    /// [`VramError::InvalidKey`] when the key is empty, shorter than 32 or longer than 64 bytes.
    pub fn from_bytes(key: &[u8]) -> Result<Self, VramError> {
        check_len(key.len(), MIN_KEY_BYTES, MAX_KEY_BYTES)?;
        Ok(Self {
            bytes: key.to_vec(),
        })
    }

    /// The key bytes, for the MAC only.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.bytes
    }
}

fn check_len(len: usize, min: usize, max: usize) -> Result<(), VramError> {
    let problem = if len == 0 {
        KeyProblem::Empty
    } else if len < min {
        KeyProblem::TooShort { len, min }
    } else if len > max {
        KeyProblem::TooLong { len, max }
    } else {
        return Ok(());
    };
    Err(VramError::InvalidKey(problem))
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_key_lengths() {
        assert_eq!(
            SealKey::from_bytes(&[]).unwrap_err(),
            VramError::InvalidKey(KeyProblem::Empty)
        );
        assert!(matches!(
            SealKey::from_bytes(&[1; 31]),
            Err(VramError::InvalidKey(KeyProblem::TooShort {
                len: 31,
                min: 32
            }))
        ));
        assert!(SealKey::from_bytes(&[1; 32]).is_ok());
        assert!(SealKey::from_bytes(&[1; 64]).is_ok());
        assert!(matches!(
            SealKey::from_bytes(&[1; 65]),
            Err(VramError::InvalidKey(KeyProblem::TooLong {
                len: 65,
                max: 64
            }))
        ));
    }

    #[test]
    fn derivation_checks_inputs_and_separates_workers() {
        assert!(SealKey::derive(b"", "w").is_err());
        assert!(SealKey::derive(b"short", "w").is_err());
        assert!(SealKey::derive(&[1; 16], "").is_err());
        assert!(SealKey::derive(&[1; 16], &"w".repeat(257)).is_err());
        let a = SealKey::derive(&[1; 16], "worker-a").unwrap();
        let b = SealKey::derive(&[1; 16], "worker-b").unwrap();
        let a2 = SealKey::derive(&[1; 16], "worker-a").unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose(), a2.expose());
        assert_eq!(a.expose().len(), 32);
    }

    #[test]
    fn generated_keys_differ() {
        let (a, b) = (SealKey::generate().unwrap(), SealKey::generate().unwrap());
        assert_eq!(a.expose().len(), 32);
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn debug_prints_no_key_bytes() {
        let key = SealKey::from_bytes(&[0xab; 32]).unwrap();
        let text = format!("{key:?}");
        assert_eq!(text, "SealKey(<redacted>)");
        assert!(!text.contains("ab") && !text.contains("171"));
    }
}
