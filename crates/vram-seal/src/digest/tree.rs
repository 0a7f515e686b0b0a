//! `sha256-tree-<leaf>`: SHA-256 over fixed-size leaves, folded into one root.
//!
//! - leaves: the shard cut into `leaf` bytes (the last may be shorter; an empty shard is one
//!   empty leaf); each leaf digest is the plain SHA-256 of its bytes, so a GPU kernel can hash
//!   aligned blocks with no prefix;
//! - interior node: `SHA-256(0x01 ‖ left ‖ right)`; pairs are formed left to right level by
//!   level, and an odd last node moves up a level unchanged;
//! - digest: `SHA-256(0x02 ‖ leaf as u64 BE ‖ total length as u64 BE ‖ root)`. This last step
//!   binds the leaf size and length, so a bare digest can stand alone in a manifest: without it
//!   the 65-byte input `0x01 ‖ SHA-256(a) ‖ SHA-256(b)` would share a root with `a ‖ b`.
//!
//! The fold keeps only one node per level (a binary counter), so streaming needs O(log n)
//! memory. Combining the pending nodes from the right at the end gives exactly the
//! level-by-level tree above (tested against a plain reference in `tests/digest_properties.rs`).

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use vram_types::{LeafSize, VramError};

use super::{ShardDigest, len_u64};

/// Domain byte of an interior node.
pub const NODE_PREFIX: u8 = 0x01;
/// Domain byte of the final digest.
pub const FINAL_PREFIX: u8 = 0x02;

/// SHA-256 of one leaf: its plain bytes, no prefix.
#[must_use]
pub fn leaf_digest(leaf: &[u8]) -> [u8; 32] {
    Sha256::digest(leaf).into()
}

/// An interior node over two children.
#[must_use]
pub fn node_digest(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The final digest over a tree root.
#[must_use]
pub fn finalize_root(leaf: LeafSize, total_len: u64, root: &[u8; 32]) -> ShardDigest {
    let mut h = Sha256::new();
    h.update([FINAL_PREFIX]);
    h.update(u64::from(leaf.get()).to_be_bytes());
    h.update(total_len.to_be_bytes());
    h.update(root);
    ShardDigest::from_bytes(h.finalize().into())
}

/// How many leaves a shard of `total_len` bytes has (at least one).
#[must_use]
pub fn leaf_count(total_len: u64, leaf: LeafSize) -> u64 {
    total_len.div_ceil(u64::from(leaf.get())).max(1)
}

/// Leaf digests of `bytes`, hashed in parallel.
#[must_use]
pub fn leaf_digests(bytes: &[u8], leaf: LeafSize) -> Vec<[u8; 32]> {
    if bytes.is_empty() {
        return vec![leaf_digest(&[])];
    }
    par_leaf_digests(bytes, leaf)
}

/// Leaf digests of `bytes` hashed in parallel; no leaf at all for empty input.
fn par_leaf_digests(bytes: &[u8], leaf: LeafSize) -> Vec<[u8; 32]> {
    // Tasks of up to 16 leaves (1 MiB at the default size) keep rayon's scheduling cost
    // negligible on large shards, but never so large that a small shard leaves cores idle: a
    // fixed 16 hashed a 1 MiB shard on one core (1.1 ms on a 16-core H100 host, `docs/perf.md`).
    let leaves = bytes.len().div_ceil(leaf.bytes().max(1));
    let per_task = leaves
        .checked_div(rayon::current_num_threads().saturating_mul(4))
        .unwrap_or(1)
        .clamp(1, 16);
    bytes
        .par_chunks(leaf.bytes())
        .with_min_len(per_task)
        .map(leaf_digest)
        .collect()
}

/// Folds leaf digests, in order, into the tree root; `None` when there are none.
#[must_use]
pub fn root_from_leaf_digests(leaves: &[[u8; 32]]) -> Option<[u8; 32]> {
    let mut fold = Fold::default();
    for leaf in leaves {
        fold.push(*leaf);
    }
    fold.root()
}

/// The digest of a shard from its leaf digests (computed anywhere, a GPU included).
///
/// # Errors
/// [`VramError::InvalidInput`] when the number of leaf digests does not match `total_len`.
pub fn digest_from_leaf_digests(
    leaves: &[[u8; 32]],
    leaf: LeafSize,
    total_len: u64,
) -> Result<ShardDigest, VramError> {
    let expected = leaf_count(total_len, leaf);
    if len_u64(leaves.len()) != expected {
        return Err(VramError::invalid_input(
            "leaf digests",
            format!(
                "{} given, a {total_len}-byte shard with {}-byte leaves has {expected}",
                leaves.len(),
                leaf.get()
            ),
        ));
    }
    let root = root_from_leaf_digests(leaves)
        .ok_or(VramError::Unreachable("a shard always has a leaf"))?;
    Ok(finalize_root(leaf, total_len, &root))
}

/// One-shot tree digest with the leaves hashed in parallel (rayon).
#[must_use]
pub fn digest_parallel(bytes: &[u8], leaf: LeafSize) -> ShardDigest {
    let mut hasher = TreeHasher::new(leaf);
    hasher.update_parallel(bytes);
    hasher.finalize()
}

/// Streaming tree digest: accepts pieces of any size.
#[derive(Clone)]
pub struct TreeHasher {
    leaf: LeafSize,
    current: Sha256,
    current_len: usize,
    total_len: u64,
    leaves: u64,
    fold: Fold,
}

impl TreeHasher {
    /// A hasher with the given leaf size.
    #[must_use]
    pub fn new(leaf: LeafSize) -> Self {
        Self {
            leaf,
            current: Sha256::new(),
            current_len: 0,
            total_len: 0,
            leaves: 0,
            fold: Fold::default(),
        }
    }

    /// Adds the next piece.
    pub fn update(&mut self, mut piece: &[u8]) {
        self.total_len = self.total_len.saturating_add(len_u64(piece.len()));
        while !piece.is_empty() {
            let room = self.leaf.bytes().saturating_sub(self.current_len);
            let (now, rest) = piece
                .split_at_checked(room.min(piece.len()))
                .unwrap_or((piece, &[]));
            self.current.update(now);
            self.current_len = self.current_len.saturating_add(now.len());
            piece = rest;
            if self.current_len == self.leaf.bytes() {
                self.finish_leaf();
            }
        }
    }

    /// Adds the next piece like [`Self::update`], hashing the piece's whole leaves in parallel
    /// (rayon). Pieces of any size are accepted; the digest is the same.
    pub fn update_parallel(&mut self, mut piece: &[u8]) {
        if self.current_len > 0 {
            // Complete the pending partial leaf first, on this thread.
            let room = self.leaf.bytes().saturating_sub(self.current_len);
            let (head, rest) = piece
                .split_at_checked(room.min(piece.len()))
                .unwrap_or((piece, &[]));
            self.update(head);
            piece = rest;
        }
        let whole = piece
            .len()
            .checked_div(self.leaf.bytes())
            .map_or(0, |n| n.saturating_mul(self.leaf.bytes()));
        let (leaves, tail) = piece.split_at_checked(whole).unwrap_or((&[], piece));
        for digest in par_leaf_digests(leaves, self.leaf) {
            self.fold.push(digest);
            self.leaves = self.leaves.saturating_add(1);
        }
        self.total_len = self.total_len.saturating_add(len_u64(leaves.len()));
        self.update(tail);
    }

    /// Adds the digests of leaves hashed elsewhere, in order, covering `bytes` bytes: whole
    /// leaves, the last one possibly short (then no more may follow). Only before any
    /// [`Self::update`] that left a partial leaf pending.
    pub(crate) fn push_leaf_digests(&mut self, digests: &[[u8; 32]], bytes: u64) {
        for digest in digests {
            self.fold.push(*digest);
            self.leaves = self.leaves.saturating_add(1);
        }
        self.total_len = self.total_len.saturating_add(bytes);
    }

    fn finish_leaf(&mut self) {
        let done = std::mem::take(&mut self.current);
        self.fold.push(done.finalize().into());
        self.current_len = 0;
        self.leaves = self.leaves.saturating_add(1);
    }

    /// The digest of everything fed so far.
    #[must_use]
    pub fn finalize(mut self) -> ShardDigest {
        if self.current_len > 0 || self.leaves == 0 {
            self.finish_leaf();
        }
        let root = self.fold.root().unwrap_or_else(|| leaf_digest(&[]));
        finalize_root(self.leaf, self.total_len, &root)
    }
}

/// Binary-counter fold: at most one pending node per level.
#[derive(Clone, Default)]
struct Fold {
    /// Pending nodes, highest level first; levels strictly decrease.
    pending: Vec<(u32, [u8; 32])>,
}

impl Fold {
    fn push(&mut self, leaf: [u8; 32]) {
        let (mut level, mut node) = (0u32, leaf);
        while let Some((top_level, top)) = self.pending.last().copied() {
            if top_level != level {
                break;
            }
            self.pending.pop();
            node = node_digest(&top, &node);
            level = level.saturating_add(1);
        }
        self.pending.push((level, node));
    }

    fn root(mut self) -> Option<[u8; 32]> {
        let (_, mut acc) = self.pending.pop()?;
        while let Some((_, left)) = self.pending.pop() {
            acc = node_digest(&left, &acc);
        }
        Some(acc)
    }
}
