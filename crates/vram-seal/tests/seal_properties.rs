//! Property tests of the seal: a flip of any bit of any sealed field, of the digest or of the
//! signature makes verification fail; the encoding is injective (it decodes back); another key
//! never verifies.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs,
    reason = "tests"
)]

use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use vram_seal::SealKey;
use vram_seal::signature::{
    compute_signature, decode_sealed_fields, encode_sealed_fields, verify_signature,
};
use vram_types::{DigestAlgorithm, SealSignature, SealedFields};

/// Fields of a shard that can be sealed (`SealedFields::validate`): a valid id, at least one
/// byte, a tensor-parallel index below its count or neither.
fn fields() -> impl Strategy<Value = SealedFields> {
    (
        "[A-Za-z0-9._:@+-]{1,64}".prop_filter("no path traversal", |id| !id.contains("..")),
        any::<u32>(),
        1usize..,
        prop_oneof![
            Just(DigestAlgorithm::Sha256),
            (12u32..=24).prop_map(|p| DigestAlgorithm::tree(1 << p).unwrap())
        ],
        "[0-9a-f]{64}",
        prop::option::of((any::<u32>(), 0u32..1_000_000_000)),
        prop::option::of((any::<usize>(), 1usize..).prop_map(|(i, n)| (i % n, n))),
    )
        .prop_map(
            |(shard_id, gpu_device, vram_bytes, digest_algorithm, digest, t, tensor_parallel)| {
                SealedFields {
                    shard_id,
                    gpu_device,
                    vram_bytes,
                    digest_algorithm,
                    digest,
                    sealed_at: t.map(|(s, n)| UNIX_EPOCH + Duration::new(u64::from(s), n)),
                    shard_index: tensor_parallel.map(|(i, _)| i),
                    total_shards: tensor_parallel.map(|(_, n)| n),
                }
            },
        )
}

/// Every way of changing one bit of one field.
fn flip(f: &SealedFields, which: usize, bit: usize) -> SealedFields {
    let mut g = f.clone();
    let flip_str = |s: &mut String| {
        let mut b = s.clone().into_bytes();
        let i = bit % b.len();
        b[i] ^= 1 << (bit % 7); // stays ASCII
        *s = String::from_utf8(b).unwrap();
    };
    match which % 8 {
        0 => flip_str(&mut g.shard_id),
        1 => g.gpu_device ^= 1 << (bit % 32),
        2 => g.vram_bytes ^= 1 << (bit % 64),
        3 => {
            g.digest_algorithm = match f.digest_algorithm {
                DigestAlgorithm::Sha256 => DigestAlgorithm::default(),
                _ => DigestAlgorithm::Sha256,
            }
        }
        4 => flip_str(&mut g.digest),
        5 => {
            g.sealed_at = match f.sealed_at {
                None => Some(UNIX_EPOCH),
                Some(t) => Some(t + Duration::from_nanos(1 << (bit % 30))),
            }
        }
        6 => g.shard_index = Some(f.shard_index.map_or(0, |i| i ^ (1 << (bit % 64)))),
        _ => {
            g.total_shards = match f.total_shards {
                Some(_) => None,
                None => Some(1),
            }
        }
    }
    g
}

fn key() -> SealKey {
    SealKey::from_bytes(&[0x42; 32]).unwrap()
}

proptest! {
    #[test]
    fn sealed_fields_verify(f in fields()) {
        let sig = compute_signature(&key(), &f).unwrap();
        prop_assert!(verify_signature(&key(), &f, &sig).is_ok());
    }

    #[test]
    fn any_changed_field_fails(f in fields(), which in 0usize..8, bit in 0usize..512) {
        let g = flip(&f, which, bit);
        prop_assume!(g != f);
        let sig = compute_signature(&key(), &f).unwrap();
        prop_assert!(verify_signature(&key(), &g, &sig).is_err());
    }

    #[test]
    fn any_flipped_signature_bit_fails(f in fields(), bit in 0usize..256) {
        let sig = compute_signature(&key(), &f).unwrap();
        let mut raw = *sig.as_bytes();
        raw[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(verify_signature(&key(), &f, &SealSignature::from_bytes(raw)).is_err());
    }

    #[test]
    fn encoding_is_injective(f in fields(), g in fields()) {
        let (ef, eg) = (encode_sealed_fields(&f).unwrap(), encode_sealed_fields(&g).unwrap());
        prop_assert_eq!(decode_sealed_fields(&ef), Some(f.clone()));
        prop_assert_eq!(ef == eg, f == g);
    }

    #[test]
    fn another_key_never_verifies(f in fields(), k in prop::collection::vec(any::<u8>(), 32..=64)) {
        let other = SealKey::from_bytes(&k).unwrap();
        prop_assume!(k != vec![0x42; 32]);
        let sig = compute_signature(&key(), &f).unwrap();
        prop_assert!(verify_signature(&other, &f, &sig).is_err());
    }

    #[test]
    fn seal_is_deterministic(f in fields()) {
        prop_assert_eq!(compute_signature(&key(), &f).unwrap(), compute_signature(&key(), &f.clone()).unwrap());
    }
}

#[test]
fn pre_epoch_seal_time_is_malformed_not_a_panic() {
    let f = SealedFields {
        shard_id: "s".into(),
        gpu_device: 0,
        vram_bytes: 1,
        digest_algorithm: DigestAlgorithm::default(),
        digest: "0".repeat(64),
        sealed_at: Some(UNIX_EPOCH - Duration::from_secs(1)),
        shard_index: None,
        total_shards: None,
    };
    assert!(compute_signature(&key(), &f).is_err());
}

#[test]
fn fields_that_describe_no_shard_are_never_signed() {
    let good = SealedFields {
        shard_id: "shard-0".into(),
        gpu_device: 0,
        vram_bytes: 3,
        digest_algorithm: DigestAlgorithm::default(),
        digest: "a".repeat(64),
        sealed_at: None,
        shard_index: None,
        total_shards: None,
    };
    let signature = compute_signature(&key(), &good).unwrap();
    let bad: [(&str, SealedFields); 6] = [
        (
            "empty id",
            SealedFields {
                shard_id: String::new(),
                ..good.clone()
            },
        ),
        (
            "traversal id",
            SealedFields {
                shard_id: "a/../b".into(),
                ..good.clone()
            },
        ),
        (
            "zero bytes",
            SealedFields {
                vram_bytes: 0,
                ..good.clone()
            },
        ),
        (
            "short digest",
            SealedFields {
                digest: "a".repeat(32),
                ..good.clone()
            },
        ),
        (
            "uppercase digest",
            SealedFields {
                digest: "A".repeat(64),
                ..good.clone()
            },
        ),
        (
            "index without count",
            SealedFields {
                shard_index: Some(0),
                ..good.clone()
            },
        ),
    ];
    for (what, fields) in bad {
        assert!(
            matches!(
                compute_signature(&key(), &fields),
                Err(vram_types::VramError::InvalidInput { .. })
            ),
            "{what} was signed"
        );
        assert!(
            verify_signature(&key(), &fields, &signature).is_err(),
            "{what} verified"
        );
    }
}
