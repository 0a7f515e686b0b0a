//! `sha256`: plain SHA-256 of the bytes, as `sha256sum` prints it.

use sha2::{Digest, Sha256};

use super::ShardDigest;

/// SHA-256 of `bytes`.
pub(super) fn sha256(bytes: &[u8]) -> ShardDigest {
    ShardDigest::from_bytes(Sha256::digest(bytes).into())
}

/// Streaming SHA-256.
#[derive(Clone, Default)]
pub(super) struct FlatHasher(Sha256);

impl FlatHasher {
    pub(super) fn update(&mut self, piece: &[u8]) {
        self.0.update(piece);
    }

    pub(super) fn finalize(self) -> ShardDigest {
        ShardDigest::from_bytes(self.0.finalize().into())
    }
}
