//! Property tests of the digest: the tree equals a plain level-by-level reference, every way of
//! computing it agrees, any bit flip changes it, and it is deterministic.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs,
    reason = "tests"
)]

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use vram_seal::digest::tree::{self, digest_from_leaf_digests, leaf_digests};
use vram_seal::digest::{DigestHasher, digest, digest_serial};
use vram_types::{DigestAlgorithm, LeafSize};

/// The spec, written as plainly as possible: level by level, odd node moves up.
fn reference(data: &[u8], leaf: usize) -> String {
    let mut level: Vec<[u8; 32]> = if data.is_empty() {
        vec![Sha256::digest([]).into()]
    } else {
        data.chunks(leaf)
            .map(|c| Sha256::digest(c).into())
            .collect()
    };
    while level.len() > 1 {
        let mut next = vec![];
        for pair in level.chunks(2) {
            next.push(if pair.len() == 2 {
                let mut h = Sha256::new();
                h.update([1u8]);
                h.update(pair[0]);
                h.update(pair[1]);
                h.finalize().into()
            } else {
                pair[0]
            });
        }
        level = next;
    }
    let mut h = Sha256::new();
    h.update([2u8]);
    h.update((leaf as u64).to_be_bytes());
    h.update((data.len() as u64).to_be_bytes());
    h.update(level[0]);
    hex::encode(h.finalize())
}

fn data_and_leaf() -> impl Strategy<Value = (Vec<u8>, u64)> {
    // Up to 40 leaves of 4 KiB (or 2 of 64 KiB): every tree shape up to 40 leaves.
    (
        prop::collection::vec(any::<u8>(), 0..160_000),
        prop_oneof![Just(4096u64), Just(8192), Just(65536)],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn tree_digest_matches_reference((data, leaf) in data_and_leaf()) {
        let alg = DigestAlgorithm::tree(leaf).unwrap();
        prop_assert_eq!(digest(&data, alg).to_hex(), reference(&data, leaf as usize));
    }

    #[test]
    fn streaming_in_random_pieces_equals_one_shot(
        (data, leaf) in data_and_leaf(),
        cuts in prop::collection::vec(0usize..70_000, 0..20),
    ) {
        let alg = DigestAlgorithm::tree(leaf).unwrap();
        for alg in [alg, DigestAlgorithm::Sha256] {
            let mut h = DigestHasher::new(alg);
            let mut rest = &data[..];
            for cut in &cuts {
                let (piece, tail) = rest.split_at((*cut).min(rest.len()));
                h.update(piece);
                rest = tail;
            }
            h.update(rest);
            let streamed = h.finalize();
            // The same pieces through the parallel path.
            let mut p = DigestHasher::new(alg);
            let mut rest = &data[..];
            for cut in &cuts {
                let (piece, tail) = rest.split_at((*cut).min(rest.len()));
                p.update_parallel(piece);
                rest = tail;
            }
            p.update_parallel(rest);
            prop_assert_eq!(p.finalize(), streamed);
            prop_assert_eq!(streamed, digest(&data, alg));
            prop_assert_eq!(streamed, digest_serial(&data, alg));
        }
    }

    #[test]
    fn leaf_digests_fold_to_the_same_digest((data, leaf) in data_and_leaf()) {
        let leaf = LeafSize::new(leaf).unwrap();
        let leaves = leaf_digests(&data, leaf);
        prop_assert_eq!(leaves.len() as u64, tree::leaf_count(data.len() as u64, leaf));
        prop_assert_eq!(
            digest_from_leaf_digests(&leaves, leaf, data.len() as u64).unwrap(),
            digest(&data, DigestAlgorithm::Sha256Tree(leaf))
        );
        // A wrong leaf count is refused, not folded.
        let mut more = leaves.clone();
        more.push([0; 32]);
        prop_assert!(digest_from_leaf_digests(&more, leaf, data.len() as u64).is_err());
    }

    #[test]
    fn any_bit_flip_changes_the_digest(
        (data, leaf) in data_and_leaf().prop_filter("non-empty", |(d, _)| !d.is_empty()),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let alg = DigestAlgorithm::tree(leaf).unwrap();
        let mut flipped = data.clone();
        flipped[at.index(data.len())] ^= 1 << bit;
        prop_assert_ne!(digest(&data, alg), digest(&flipped, alg));
        prop_assert_ne!(digest(&data, DigestAlgorithm::Sha256), digest(&flipped, DigestAlgorithm::Sha256));
    }

    #[test]
    fn digests_are_deterministic((data, leaf) in data_and_leaf()) {
        let alg = DigestAlgorithm::tree(leaf).unwrap();
        prop_assert_eq!(digest(&data, alg), digest(&data.clone(), alg));
    }
}

#[test]
fn final_step_separates_a_node_preimage_from_its_leaves() {
    // Without the final step, 0x01 ‖ SHA-256(a) ‖ SHA-256(b) (65 bytes, one leaf) would have the
    // same root as the two-leaf input a ‖ b.
    let a = vec![0x61u8; 4096];
    let b = vec![0x62u8; 4096];
    let two_leaves = [a.clone(), b.clone()].concat();
    let mut forged = vec![1u8];
    forged.extend_from_slice(&Sha256::digest(&a));
    forged.extend_from_slice(&Sha256::digest(&b));
    let leaf = LeafSize::new(4096).unwrap();
    let root_two = tree::root_from_leaf_digests(&leaf_digests(&two_leaves, leaf)).unwrap();
    let root_forged = tree::root_from_leaf_digests(&leaf_digests(&forged, leaf)).unwrap();
    assert_eq!(
        root_two, root_forged,
        "the bare roots collide: that is why the final step exists"
    );
    assert_ne!(
        digest(&two_leaves, DigestAlgorithm::Sha256Tree(leaf)),
        digest(&forged, DigestAlgorithm::Sha256Tree(leaf))
    );
}

#[test]
fn leaf_size_and_length_are_bound_into_the_digest() {
    let data = vec![9u8; 8192];
    assert_ne!(
        digest(&data, DigestAlgorithm::tree(4096).unwrap()),
        digest(&data, DigestAlgorithm::tree(8192).unwrap())
    );
}

/// A source that fails its read at one offset.
struct FailingAt(Vec<u8>, u64);

impl vram_types::ShardSource for FailingAt {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if offset == self.1 {
            return Err(std::io::Error::other("disk gone"));
        }
        self.0.as_slice().read_at(offset, buf)
    }
}

#[test]
fn a_source_digest_read_by_the_workers_equals_the_one_shot_digest() {
    use vram_seal::digest::{SOURCE_CHUNK_BYTES, digest_source};
    let c = SOURCE_CHUNK_BYTES;
    for len in [0, 1, 4097, c - 1, c, c + 1, 2 * c + 12345] {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        for alg in [
            DigestAlgorithm::Sha256,
            DigestAlgorithm::default(),
            DigestAlgorithm::tree(4096).unwrap(),
            DigestAlgorithm::tree(16 << 20).unwrap(),
        ] {
            assert_eq!(
                digest_source(&bytes, alg).unwrap(),
                digest(&bytes, alg),
                "{len} bytes, {alg}"
            );
        }
    }
    // A read that fails on any thread is the digest's error, whichever chunk it hits.
    for at in [0, 1 << 20, c as u64, 2 * c as u64] {
        let source = FailingAt(vec![1; 2 * c + 1], at);
        for alg in [DigestAlgorithm::Sha256, DigestAlgorithm::default()] {
            let flat_misses = alg == DigestAlgorithm::Sha256 && at == 1 << 20;
            if !flat_misses {
                assert!(
                    matches!(
                        digest_source(&source, alg),
                        Err(vram_types::VramError::SourceReadFailed { .. })
                    ),
                    "{alg} failing at {at}"
                );
            }
        }
    }
}
