//! Names of the digest algorithms a shard can be sealed with.
//!
//! The algorithm id is part of every seal, so a verifier always knows how to recompute the
//! digest. The byte-level definitions are in `.specs/digest.md`; the code is in `vram-seal`.

use std::fmt;
use std::str::FromStr;

use crate::error::VramError;

/// Smallest tree leaf: 4 KiB.
pub const MIN_LEAF_BYTES: u32 = 4 * 1024;
/// Largest tree leaf: 16 MiB.
pub const MAX_LEAF_BYTES: u32 = 16 * 1024 * 1024;
/// Default tree leaf: 64 KiB (fills a GPU with one thread per leaf; see `docs/perf.md`).
pub const DEFAULT_LEAF_BYTES: u32 = 64 * 1024;

/// A validated tree leaf size: a power of two from [`MIN_LEAF_BYTES`] to [`MAX_LEAF_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeafSize(u32);

impl LeafSize {
    /// The default leaf size, 64 KiB.
    pub const DEFAULT: Self = Self(DEFAULT_LEAF_BYTES);

    /// Validates a leaf size.
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] unless `bytes` is a power of two from 4 KiB to 16 MiB.
    pub fn new(bytes: u64) -> Result<Self, VramError> {
        match u32::try_from(bytes) {
            Ok(b) if b.is_power_of_two() && (MIN_LEAF_BYTES..=MAX_LEAF_BYTES).contains(&b) => {
                Ok(Self(b))
            }
            _ => Err(VramError::invalid_input(
                "leaf size",
                format!("{bytes} bytes; use a power of two from 4096 to 16777216"),
            )),
        }
    }

    /// The leaf size in bytes.
    #[must_use]
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The leaf size in bytes, as `usize` (lossless on every supported target).
    #[must_use]
    pub const fn bytes(self) -> usize {
        self.0 as usize
    }
}

impl Default for LeafSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How a shard's digest is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DigestAlgorithm {
    /// `sha256`: plain SHA-256 of the bytes, identical to `sha256sum` and to a Hugging Face LFS
    /// oid. Serial, so about 2 GB/s whatever the hardware.
    Sha256,
    /// `sha256-tree-<leaf>`: SHA-256 tree over fixed-size leaves, parallel on CPU and GPU.
    Sha256Tree(LeafSize),
    /// `blake3`: the standard BLAKE3 hash (unkeyed, 32 bytes), identical to `b3sum`, to the
    /// `blake3` crate and to the file digests of OpenSSF model-signing manifests. A tree of
    /// 1 KiB chunks by its own definition, so parallel everywhere.
    Blake3,
}

/// The computation behind an algorithm id, for the code that computes digests. Unlike
/// [`DigestAlgorithm`] it is exhaustive on purpose: an algorithm added there must be taught to
/// every digest path before the workspace compiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestKind {
    /// Flat SHA-256.
    Sha256,
    /// The SHA-256 tree with this leaf size.
    Sha256Tree(LeafSize),
    /// BLAKE3.
    Blake3,
}

impl Default for DigestAlgorithm {
    /// `sha256-tree-65536`.
    fn default() -> Self {
        Self::Sha256Tree(LeafSize::DEFAULT)
    }
}

impl DigestAlgorithm {
    /// The tree digest with the given leaf size.
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] when the leaf size is not a power of two from 4 KiB to 16 MiB.
    pub fn tree(leaf_bytes: u64) -> Result<Self, VramError> {
        LeafSize::new(leaf_bytes).map(Self::Sha256Tree)
    }

    /// The SHA-256 tree's leaf size, or `None` for the other algorithms.
    #[must_use]
    pub fn leaf_size(self) -> Option<LeafSize> {
        match self {
            Self::Sha256 | Self::Blake3 => None,
            Self::Sha256Tree(leaf) => Some(leaf),
        }
    }

    /// What computes it.
    #[must_use]
    pub fn kind(self) -> DigestKind {
        match self {
            Self::Sha256 => DigestKind::Sha256,
            Self::Sha256Tree(leaf) => DigestKind::Sha256Tree(leaf),
            Self::Blake3 => DigestKind::Blake3,
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    /// The algorithm id as sealed: `sha256`, `sha256-tree-<leaf bytes>` or `blake3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sha256 => f.write_str("sha256"),
            Self::Sha256Tree(leaf) => write!(f, "sha256-tree-{}", leaf.get()),
            Self::Blake3 => f.write_str("blake3"),
        }
    }
}

impl FromStr for DigestAlgorithm {
    type Err = VramError;

    /// Parses an algorithm id.
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] for an unknown id or a bad leaf size.
    fn from_str(id: &str) -> Result<Self, VramError> {
        if id == "sha256" {
            return Ok(Self::Sha256);
        }
        if id == "blake3" {
            return Ok(Self::Blake3);
        }
        let leaf = id
            .strip_prefix("sha256-tree-")
            .filter(|n| !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                VramError::invalid_input(
                    "digest algorithm",
                    format!(
                        "{:?}; expected \"sha256\", \"sha256-tree-<leaf bytes>\" or \"blake3\"",
                        id
                    ),
                )
            })?;
        Self::tree(leaf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for id in [
            "sha256",
            "blake3",
            "sha256-tree-4096",
            "sha256-tree-65536",
            "sha256-tree-16777216",
        ] {
            assert_eq!(id.parse::<DigestAlgorithm>().unwrap().to_string(), id);
        }
        assert_eq!(DigestAlgorithm::default().to_string(), "sha256-tree-65536");
        assert_eq!(
            DigestAlgorithm::default(),
            "sha256-tree-65536".parse().unwrap()
        );
    }

    #[test]
    fn bad_ids_and_leaves_are_rejected() {
        for id in [
            "",
            "sha",
            "sha256-tree-",
            "sha256-tree-3000",
            "sha256-tree-2048",
            "sha256-tree-33554432",
            "sha256-tree-065536",
            "sha256-tree-+65536",
            "SHA256",
            "BLAKE3",
            "blake3-tree-4096",
        ] {
            assert!(id.parse::<DigestAlgorithm>().is_err(), "{id} accepted");
        }
        assert!(LeafSize::new(u64::from(u32::MAX) + 1).is_err());
    }
}
