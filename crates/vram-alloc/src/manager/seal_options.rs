//! `SealOptions`: what a seal checks beyond the defaults, and the cross-check of host bytes.

use std::sync::{Mutex, PoisonError};

use vram_seal::ShardDigest;
use vram_seal::digest::tree::{digest_from_leaf_digests, leaf_count, leaf_digest};
use vram_types::{DigestAlgorithm, LeafSize, ShardSource, VramError};

/// Options of [`VramManager::seal_from_source`](crate::VramManager::seal_from_source).
///
/// By default a seal covers exactly the bytes found in VRAM after the upload, digested there.
/// Two checks can be added: an expected digest (a manifest's), and a cross-check that also
/// hashes the host bytes on the CPU as they pass through the staging buffers (slower: see
/// `docs/perf.md`), so a broken copy path is caught at seal time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealOptions {
    pub(crate) shard_id: Option<String>,
    pub(crate) expected_digest: Option<ShardDigest>,
    pub(crate) cross_check: bool,
    pub(crate) tensor_parallel: Option<(usize, usize)>,
}

impl SealOptions {
    /// No extra checks; the shard id is derived from the digest.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Seals under the caller's shard id (validated at seal time).
    #[must_use]
    pub fn shard_id(mut self, shard_id: impl Into<String>) -> Self {
        self.shard_id = Some(shard_id.into());
        self
    }

    /// Refuses to seal unless the resident bytes have this digest (in the manager's digest
    /// algorithm): [`VramError::UnexpectedDigest`] otherwise, and nothing stays allocated.
    #[must_use]
    pub fn expect_digest(mut self, digest: ShardDigest) -> Self {
        self.expected_digest = Some(digest);
        self
    }

    /// Also digests the host bytes on the CPU and refuses to seal if they differ from the
    /// resident bytes ([`VramError::UploadMismatch`]).
    #[must_use]
    pub fn cross_check(mut self, on: bool) -> Self {
        self.cross_check = on;
        self
    }

    /// Seals one tensor-parallel shard, `shard_index` of `total_shards` (both sealed).
    #[must_use]
    pub fn tensor_parallel(mut self, shard_index: usize, total_shards: usize) -> Self {
        self.tensor_parallel = Some((shard_index, total_shards));
        self
    }
}

/// The digest of the host bytes, computed from the chunks the upload shows it.
pub(super) enum CrossCheck {
    /// Tree: every leaf digest, filled in by the copy threads in any order.
    Tree {
        leaf: LeafSize,
        len: u64,
        leaves: Mutex<Vec<Option<[u8; 32]>>>,
    },
    /// Flat SHA-256 is serial: the source is hashed again, in order, after the upload.
    Flat,
}

impl CrossCheck {
    pub(super) fn new(algorithm: DigestAlgorithm, len: u64) -> Result<Self, VramError> {
        Ok(match algorithm.leaf_size() {
            Some(leaf) => {
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
            None => Self::Flat,
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
            Self::Flat => vram_seal::digest::digest_source(source, algorithm),
        }
    }
}
