//! `ShardDigest`: 32 digest bytes, shown as 64 lowercase hex characters.

use std::fmt;

use subtle::ConstantTimeEq;
use vram_types::{DigestAlgorithm, VramError};

/// A 32-byte shard digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardDigest([u8; 32]);

impl ShardDigest {
    /// Wraps digest bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses 64 hex characters (either case).
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] (field `digest`) for anything else.
    pub fn from_hex(text: &str) -> Result<Self, VramError> {
        let bad = || {
            VramError::invalid_input(
                "digest",
                format!(
                    "{:?} is not 64 hex characters",
                    text.escape_debug().to_string()
                ),
            )
        };
        if text.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let hi = pair.first().and_then(|c| hex_value(*c)).ok_or_else(bad)?;
            let lo = pair.get(1).and_then(|c| hex_value(*c)).ok_or_else(bad)?;
            *byte = (hi << 4) | lo;
        }
        Ok(Self(out))
    }

    /// The digest bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex characters: the form sealed and shown.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Constant-time equality.
    #[must_use]
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => c.checked_sub(b'0'),
        b'a'..=b'f' => c.checked_sub(b'a' - 10),
        b'A'..=b'F' => c.checked_sub(b'A' - 10),
        _ => None,
    }
}

impl fmt::Display for ShardDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ShardDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardDigest({})", self.to_hex())
    }
}

/// A digest as it stands alone: bare hex for the flat SHA-256 (as `sha256sum` writes it),
/// `ALG:HEX` for every other algorithm, so that a tree digest is never mistaken for the flat
/// SHA-256 of other bytes (`.specs/digest.md`).
#[must_use]
pub fn tagged(alg: DigestAlgorithm, digest: &ShardDigest) -> String {
    match alg {
        DigestAlgorithm::Sha256 => digest.to_hex(),
        tree => format!("{tree}:{}", digest.to_hex()),
    }
}

/// Parses a digest as it stands alone: `sha256:HEX` or `SHA256:HEX` (flat), `ALG:HEX` for a
/// tree algorithm, or bare 64 hex characters read as `bare`.
#[must_use]
pub fn parse_tagged(text: &str, bare: DigestAlgorithm) -> Option<(DigestAlgorithm, ShardDigest)> {
    let (alg, hex) = match text.split_once(':') {
        Some((tag, hex)) if tag.eq_ignore_ascii_case("sha256") => (DigestAlgorithm::Sha256, hex),
        Some((tag, hex)) => (tag.parse().ok()?, hex),
        None => (bare, text),
    };
    Some((alg, ShardDigest::from_hex(hex).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects() {
        let d = ShardDigest::from_bytes(core::array::from_fn(|i| u8::try_from(i * 7).unwrap()));
        assert_eq!(ShardDigest::from_hex(&d.to_hex()).unwrap(), d);
        assert_eq!(
            ShardDigest::from_hex(&d.to_hex().to_uppercase()).unwrap(),
            d
        );
        for bad in ["", "00", &"g".repeat(64), &"0".repeat(63), &"0".repeat(65)] {
            assert!(ShardDigest::from_hex(bad).is_err(), "{bad}");
        }
    }
}
