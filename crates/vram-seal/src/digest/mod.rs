//! Shard digests: the SHA-256 tree digest (default), flat SHA-256 and BLAKE3.
//!
//! Format, invariants and test vectors: `.specs/digest.md`. Three ways to compute the same
//! value: [`digest`] (one shot, leaves hashed in parallel with rayon), [`DigestHasher`]
//! (streaming, pieces of any size, serially with `update` or leaves in parallel with
//! `update_parallel`) and [`tree::digest_from_leaf_digests`] (leaf digests computed elsewhere,
//! for example by a GPU kernel).

mod flat;
mod shard_digest;
pub mod tree;

use vram_types::{DigestAlgorithm, DigestKind, LeafSize, ShardSource, VramError};

pub use shard_digest::{ShardDigest, parse_tagged, tagged};
pub use tree::TreeHasher;

use flat::FlatHasher;

/// Digest of `bytes`, leaves hashed in parallel for the tree algorithm.
#[must_use]
pub fn digest(bytes: &[u8], algorithm: DigestAlgorithm) -> ShardDigest {
    match algorithm.kind() {
        DigestKind::Sha256 => flat::sha256(bytes),
        DigestKind::Sha256Tree(leaf) => tree::digest_parallel(bytes, leaf),
        DigestKind::Blake3 => {
            let mut hasher = blake3::Hasher::new();
            hasher.update_rayon(bytes);
            ShardDigest::from_bytes(*hasher.finalize().as_bytes())
        }
    }
}

/// Digest of `bytes` on the calling thread only (the baseline the parallel digest is measured
/// against, and the choice inside code that is already parallel).
#[must_use]
pub fn digest_serial(bytes: &[u8], algorithm: DigestAlgorithm) -> ShardDigest {
    let mut hasher = DigestHasher::new(algorithm);
    hasher.update(bytes);
    hasher.finalize()
}

/// Bytes read from a source per step of [`digest_source`]: memory stays bounded by two of them.
pub const SOURCE_CHUNK_BYTES: usize = 16 * 1024 * 1024;

/// Digest of a source (a file), with memory bounded whatever the source's size.
///
/// A tree digest is computed by the worker threads each reading its own 1 MiB block
/// (positioned reads into a buffer that stays in cache) and hashing its leaves there; the leaf
/// digests fold in order. A flat SHA-256 is one chain: the next [`SOURCE_CHUNK_BYTES`] are read
/// on another thread while the current chunk is hashed. Either way reading and hashing overlap,
/// so a file in the page cache is digested at about the hash's own speed.
///
/// # Errors
/// [`VramError::SourceReadFailed`] when the source cannot be read;
/// [`VramError::HostMemoryExhausted`] when the buffers cannot be allocated.
pub fn digest_source(
    source: &dyn ShardSource,
    algorithm: DigestAlgorithm,
) -> Result<ShardDigest, VramError> {
    match algorithm.kind() {
        DigestKind::Sha256Tree(leaf) => tree_digest_source(source, leaf),
        DigestKind::Sha256 | DigestKind::Blake3 => chained_digest_source(source, algorithm),
    }
}

/// Bytes each worker reads and hashes at a time in [`tree_digest_source`].
const TREE_BLOCK_BYTES: usize = 1 << 20;

fn tree_digest_source(source: &dyn ShardSource, leaf: LeafSize) -> Result<ShardDigest, VramError> {
    use rayon::prelude::*;
    let len = source.len();
    // A whole number of leaves (both are powers of two).
    let block = u64::try_from(leaf.bytes().max(TREE_BLOCK_BYTES)).unwrap_or(u64::MAX);
    let per_window = u64::try_from(rayon::current_num_threads().saturating_mul(8)).unwrap_or(8);
    let window = block.saturating_mul(per_window.max(1));
    let mut hasher = tree::TreeHasher::new(leaf);
    let mut start = 0u64;
    while start < len {
        let end = start.saturating_add(window).min(len);
        let blocks: Vec<(u64, u64)> = (start..end)
            .step_by(usize::try_from(block).unwrap_or(usize::MAX))
            .map(|offset| (offset, offset.saturating_add(block).min(end)))
            .collect();
        let digests = blocks
            .par_iter()
            .map_init(
                || chunk_buffer(usize::try_from(block).unwrap_or(usize::MAX)),
                |buf, &(offset, stop)| {
                    let buf = buf.as_mut().map_err(|e| e.clone())?;
                    let n = usize::try_from(stop.saturating_sub(offset)).unwrap_or(0);
                    let piece = buf.get_mut(..n).unwrap_or_default();
                    source.fill(offset, piece)?;
                    Ok(tree::leaf_digests(piece, leaf))
                },
            )
            .collect::<Result<Vec<_>, VramError>>()?;
        for (digests, (offset, stop)) in digests.iter().zip(&blocks) {
            hasher.push_leaf_digests(digests, stop.saturating_sub(*offset));
        }
        start = end;
    }
    Ok(hasher.finalize())
}

/// Reads chunk after chunk on one thread while the previous one is hashed (BLAKE3 hashes each
/// chunk on every core itself).
fn chained_digest_source(
    source: &dyn ShardSource,
    algorithm: DigestAlgorithm,
) -> Result<ShardDigest, VramError> {
    let len = source.len();
    let size = usize::try_from(len).map_or(SOURCE_CHUNK_BYTES, |l| l.min(SOURCE_CHUNK_BYTES));
    let chunk_at = |offset: u64| {
        usize::try_from(len.saturating_sub(offset)).map_or(size, |rest| rest.min(size))
    };
    let (mut current, mut next) = (chunk_buffer(size)?, chunk_buffer(size)?);
    let mut hasher = DigestHasher::new(algorithm);
    let mut offset = 0u64;
    let mut n = chunk_at(0);
    source.fill(0, current.get_mut(..n).unwrap_or_default())?;
    while n > 0 {
        let next_offset = offset.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        let next_n = chunk_at(next_offset);
        let next_chunk = next.get_mut(..next_n).unwrap_or_default();
        let piece = current.get(..n).unwrap_or_default();
        let read = std::thread::scope(|scope| {
            let reader = scope.spawn(|| source.fill(next_offset, next_chunk));
            hasher.update_parallel(piece);
            reader.join()
        });
        read.map_err(|_| VramError::Unreachable("a source's read_at panicked"))??;
        std::mem::swap(&mut current, &mut next);
        offset = next_offset;
        n = next_n;
    }
    Ok(hasher.finalize())
}

fn chunk_buffer(size: usize) -> Result<Vec<u8>, VramError> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(size)
        .map_err(|_| VramError::HostMemoryExhausted { needed: size })?;
    buf.resize(size, 0);
    Ok(buf)
}

/// A streaming digest: feed bytes in pieces of any size, get the same digest as [`digest`].
#[derive(Clone)]
pub struct DigestHasher(Inner);

#[derive(Clone)]
enum Inner {
    Flat(FlatHasher),
    Tree(TreeHasher),
    Blake3(Box<blake3::Hasher>),
}

impl DigestHasher {
    /// A hasher for `algorithm`.
    #[must_use]
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        Self(match algorithm.kind() {
            DigestKind::Sha256 => Inner::Flat(FlatHasher::default()),
            DigestKind::Sha256Tree(leaf) => Inner::Tree(TreeHasher::new(leaf)),
            DigestKind::Blake3 => Inner::Blake3(Box::default()),
        })
    }

    /// Adds the next piece of the shard.
    pub fn update(&mut self, piece: &[u8]) {
        match &mut self.0 {
            Inner::Flat(h) => h.update(piece),
            Inner::Tree(h) => h.update(piece),
            Inner::Blake3(h) => {
                h.update(piece);
            }
        }
    }

    /// Adds the next piece, hashing whole tree leaves (BLAKE3's chunks) in parallel; flat
    /// SHA-256 is serial by nature. Same digest as [`Self::update`]; for large pieces, such as
    /// read-back chunks.
    pub fn update_parallel(&mut self, piece: &[u8]) {
        match &mut self.0 {
            Inner::Flat(h) => h.update(piece),
            Inner::Tree(h) => h.update_parallel(piece),
            Inner::Blake3(h) => {
                h.update_rayon(piece);
            }
        }
    }

    /// The digest of everything fed so far.
    #[must_use]
    pub fn finalize(self) -> ShardDigest {
        match self.0 {
            Inner::Flat(h) => h.finalize(),
            Inner::Tree(h) => h.finalize(),
            Inner::Blake3(h) => ShardDigest::from_bytes(*h.finalize().as_bytes()),
        }
    }
}

impl std::fmt::Debug for DigestHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Inner::Flat(_) => "DigestHasher(sha256)",
            Inner::Tree(_) => "DigestHasher(sha256-tree)",
            Inner::Blake3(_) => "DigestHasher(blake3)",
        })
    }
}

/// `usize` to `u64`, saturating (lossless on every supported target).
fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}
