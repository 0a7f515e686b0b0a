//! `SealOptions`: what a seal checks beyond the defaults.

use vram_seal::ShardDigest;
use vram_types::DigestAlgorithm;

/// Options of [`VramManager::seal_from_source`](crate::VramManager::seal_from_source).
///
/// By default a seal covers exactly the bytes found in VRAM after the upload, digested there.
/// Two checks can be added: an expected digest (a manifest's), and a cross-check that also
/// hashes the host bytes on the CPU as they pass through the staging buffers (slower: see
/// `docs/perf.md`), so a broken copy path is caught at seal time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealOptions {
    pub(crate) shard_id: Option<String>,
    pub(crate) expected: Option<ExpectedDigest>,
    pub(crate) expected_from: ExpectedFrom,
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
    /// algorithm): [`VramError::UnexpectedDigest`](vram_types::VramError::UnexpectedDigest)
    /// otherwise, and nothing stays allocated.
    #[must_use]
    pub fn expect_digest(mut self, digest: ShardDigest) -> Self {
        self.expected = Some(ExpectedDigest {
            algorithm: None,
            digest,
        });
        self
    }

    /// Refuses to seal unless the bytes have this digest in `algorithm`. In the manager's own
    /// algorithm it is checked against the digest computed in VRAM, as [`Self::expect_digest`];
    /// in another one (a flat SHA-256 from `sha256sum` or a Hugging Face LFS oid) it is
    /// computed on the host from the resident bytes read back after the upload (one more pass
    /// over the shard, at the speed of SHA-256 on one core), never from a separate read of the
    /// source: a file changed between a check and its upload is never sealed. A mismatch
    /// releases what was placed ([`VramError::UnexpectedDigest`](vram_types::VramError::UnexpectedDigest)).
    #[must_use]
    pub fn expect_digest_in(mut self, algorithm: DigestAlgorithm, digest: ShardDigest) -> Self {
        self.expected = Some(ExpectedDigest {
            algorithm: Some(algorithm),
            digest,
        });
        self
    }

    /// Where the expected digest came from (default [`ExpectedFrom::Caller`]): recorded with
    /// the seal (the audit record's `expected_from`, the `vram_seals_with_expected_digest`
    /// metric), so that a seal against a statement nobody checked is never mistaken for one
    /// against a verified signature.
    #[must_use]
    pub fn expected_from(mut self, from: ExpectedFrom) -> Self {
        self.expected_from = from;
        self
    }

    /// Also digests the host bytes on the CPU and refuses to seal if they differ from the
    /// resident bytes ([`VramError::UploadMismatch`](vram_types::VramError::UploadMismatch)).
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

/// Where an expected digest came from ([`SealOptions::expected_from`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpectedFrom {
    /// The caller (an API argument, a command-line value).
    #[default]
    Caller,
    /// A checksum manifest (`sha256sum`, `b3sum`, `vramctl digest` lines).
    Manifest,
    /// A signed manifest whose signature was verified.
    SignedManifest,
    /// A signed manifest whose signature was not verified: the operator chose to trust it.
    UnverifiedSignedManifest,
}

impl ExpectedFrom {
    /// Its name in audit records and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Manifest => "manifest",
            Self::SignedManifest => "signed-manifest",
            Self::UnverifiedSignedManifest => "unverified-signed-manifest",
        }
    }
}

/// An expected digest and the algorithm it is in (`None`: the manager's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExpectedDigest {
    pub(crate) algorithm: Option<DigestAlgorithm>,
    pub(crate) digest: ShardDigest,
}

impl ExpectedDigest {
    /// Whether it is the digest computed in VRAM (in `sealed_with`, the manager's algorithm);
    /// otherwise it is computed from the resident bytes read back.
    pub(crate) fn is_resident(&self, sealed_with: DigestAlgorithm) -> bool {
        self.algorithm.is_none_or(|a| a == sealed_with)
    }
}
