//! The cross-check: the digest of the host bytes, computed from the chunks the upload shows
//! it, compared with the digest of the resident bytes (`SealOptions::cross_check`).

use std::sync::{Mutex, PoisonError};

use vram_seal::ShardDigest;
use vram_seal::digest::tree::{digest_from_leaf_digests, leaf_count, leaf_digest};
use vram_types::{DigestAlgorithm, DigestKind, LeafSize, ShardSource, VramError};

/// The digest of the host bytes, computed from the chunks the upload shows it.
pub(super) enum CrossCheck {
    /// Tree: every leaf digest, filled in by the copy threads in any order.
    Tree {
        leaf: LeafSize,
        len: u64,
        leaves: Mutex<Vec<Option<[u8; 32]>>>,
    },
    /// Flat SHA-256 and BLAKE3 are not built from the upload's leaves: the source is hashed
    /// again, whole, after the upload.
    Whole,
}

impl CrossCheck {
    pub(super) fn new(algorithm: DigestAlgorithm, len: u64) -> Result<Self, VramError> {
        Ok(match algorithm.kind() {
            DigestKind::Sha256Tree(leaf) => {
                let n = usize::try_from(leaf_count(len, leaf))
                    .map_err(|_| VramError::HostMemoryExhausted { needed: usize::MAX })?;
                let mut leaves = Vec::new();
                leaves
                    .try_reserve_exact(n)
                    .map_err(|_| VramError::HostMemoryExhausted { needed: n })?;
                leaves.resize(n, None);
                Self::Tree {
                    leaf,
                    len,
                    leaves: Mutex::new(leaves),
                }
            }
            DigestKind::Sha256 | DigestKind::Blake3 => Self::Whole,
        })
    }

    /// Hashes the leaves of one uploaded chunk (chunks start on leaf boundaries: the chunk size
    /// is a multiple of every leaf size).
    pub(super) fn observe(&self, offset: u64, chunk: &[u8]) {
        let Self::Tree { leaf, leaves, .. } = self else {
            return;
        };
        let first = offset
            .checked_div(u64::from(leaf.get()))
            .and_then(|i| usize::try_from(i).ok())
            .unwrap_or(usize::MAX);
        let digests: Vec<[u8; 32]> = chunk.chunks(leaf.bytes()).map(leaf_digest).collect();
        let mut all = leaves.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, d) in digests.into_iter().enumerate() {
            if let Some(slot) = first.checked_add(i).and_then(|j| all.get_mut(j)) {
                *slot = Some(d);
            }
        }
    }

    /// The digest of the host bytes.
    pub(super) fn finish(
        self,
        source: &dyn ShardSource,
        algorithm: DigestAlgorithm,
    ) -> Result<ShardDigest, VramError> {
        match self {
            Self::Tree { leaf, len, leaves } => {
                let leaves: Option<Vec<[u8; 32]>> = leaves
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner)
                    .into_iter()
                    .collect();
                let leaves = leaves.ok_or(VramError::Unreachable(
                    "every chunk of the upload was shown to the cross-check",
                ))?;
                digest_from_leaf_digests(&leaves, leaf, len)
            }
            Self::Whole => vram_seal::digest::digest_source(source, algorithm),
        }
    }
}
