//! The group seal (`.specs/group-seal.md`): the reference vectors, the decoder, and every way a
//! group can be tampered with (a missing, duplicated, swapped, reordered or foreign shard, any
//! single changed field), plus composing a group from shard seals.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs,
    reason = "tests"
)]

use proptest::prelude::*;
use vram_seal::SealKey;
use vram_seal::group::{
    GroupFields, GroupMember, compute_group_seal, decode_group, encode_group, group_from_shards,
    verify_group_seal,
};
use vram_seal::signature::compute_signature;
use vram_types::{DigestAlgorithm, SealedFields, VramError};

fn key() -> SealKey {
    SealKey::from_bytes(&(0u8..32).collect::<Vec<_>>()).unwrap()
}

fn vectors() -> Vec<(GroupFields, Vec<u8>, String)> {
    include_str!("data/group_vectors.txt")
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut fields = GroupFields {
                model_id: String::new(),
                members: vec![],
            };
            let (mut encoding, mut seal) = (vec![], String::new());
            for line in block.lines() {
                let (k, v) = line.split_once(' ').unwrap();
                match k {
                    "model_id" => fields.model_id = v.into(),
                    "member" => {
                        let p: Vec<&str> = v.split(' ').collect();
                        fields.members.push(GroupMember {
                            shard_index: p[0].parse().unwrap(),
                            gpu_device: p[1].parse().unwrap(),
                            vram_bytes: p[2].parse().unwrap(),
                            digest_algorithm: p[3].parse().unwrap(),
                            digest: p[4].into(),
                        });
                    }
                    "encoding" => encoding = hex::decode(v).unwrap(),
                    "seal" => seal = v.into(),
                    _ => {}
                }
            }
            (fields, encoding, seal)
        })
        .collect()
}

#[test]
fn encodings_and_seals_match_the_reference() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 3);
    for (fields, encoding, seal) in vectors {
        assert_eq!(
            encode_group(&fields).unwrap(),
            encoding,
            "{}",
            fields.model_id
        );
        assert_eq!(decode_group(&encoding).unwrap(), fields);
        let computed = compute_group_seal(&key(), &fields).unwrap();
        assert_eq!(computed.to_hex(), seal);
        verify_group_seal(&key(), &fields, &computed).unwrap();
    }
}

fn three() -> (GroupFields, vram_types::SealSignature) {
    let (fields, _, _) = vectors().remove(1);
    let seal = compute_group_seal(&key(), &fields).unwrap();
    (fields, seal)
}

#[test]
fn missing_duplicated_swapped_reordered_and_foreign_shards_fail() {
    let (good, seal) = three();
    let fails = |f: &GroupFields| verify_group_seal(&key(), f, &seal).is_err();
    let mut missing = good.clone();
    missing.members.pop();
    assert!(fails(&missing), "missing");
    let mut duplicated = good.clone();
    let again = GroupMember {
        shard_index: 3,
        ..good.members[2].clone()
    };
    duplicated.members.push(again);
    assert!(fails(&duplicated), "duplicated");
    let mut swapped = good.clone();
    let d0 = swapped.members[0].digest.clone();
    swapped.members[0].digest = swapped.members[1].digest.clone();
    swapped.members[1].digest = d0;
    assert!(fails(&swapped), "swapped digests");
    let mut reordered = good.clone();
    reordered.members.swap(0, 2);
    assert!(fails(&reordered), "reordered");
    assert!(
        encode_group(&reordered).is_err(),
        "out of index order never encodes"
    );
    let mut foreign = good.clone();
    foreign.members[1].digest = "f".repeat(64);
    assert!(fails(&foreign), "foreign shard");
    let mut other_model = good.clone();
    other_model.model_id.push('x');
    assert!(fails(&other_model), "another model");
    let other_key = SealKey::from_bytes(&[7; 32]).unwrap();
    assert!(
        verify_group_seal(&other_key, &good, &seal).is_err(),
        "another key"
    );
    verify_group_seal(&key(), &good, &seal).unwrap();
}

proptest! {
    #[test]
    fn any_single_field_change_fails(which in 0usize..6, member in 0usize..3, delta in 1u32..1000) {
        let (good, seal) = three();
        let mut f = good.clone();
        let m = &mut f.members[member];
        match which {
            0 => m.gpu_device = m.gpu_device.wrapping_add(delta),
            1 => m.vram_bytes = m.vram_bytes.wrapping_add(delta as usize),
            2 => m.digest_algorithm = if m.digest_algorithm == DigestAlgorithm::Sha256 {
                DigestAlgorithm::default()
            } else {
                DigestAlgorithm::Sha256
            },
            3 => {
                let mut b = m.digest.clone().into_bytes();
                let i = delta as usize % 64;
                b[i] = if b[i] == b'0' { b'1' } else { b'0' };
                m.digest = String::from_utf8(b).unwrap();
            }
            4 => m.shard_index = m.shard_index.wrapping_add(delta as usize),
            _ => f.model_id = format!("{}{delta}", f.model_id),
        }
        prop_assert_ne!(&f, &good);
        prop_assert!(verify_group_seal(&key(), &f, &seal).is_err());
    }

    #[test]
    fn decoding_never_accepts_a_changed_byte(at in 0usize..400, bit in 0u8..8) {
        let (good, _) = three();
        let mut bytes = encode_group(&good).unwrap();
        let i = at % bytes.len();
        bytes[i] ^= 1 << bit;
        if let Some(decoded) = decode_group(&bytes) {
            prop_assert_ne!(decoded, good);
        }
    }
}

fn shard(index: usize, total: usize, device: u32) -> (SealedFields, vram_types::SealSignature) {
    let fields = SealedFields {
        shard_id: format!("m.{index}"),
        gpu_device: device,
        vram_bytes: 100 + index,
        digest_algorithm: DigestAlgorithm::default(),
        digest: format!("{index:064x}"),
        sealed_at: None,
        shard_index: Some(index),
        total_shards: Some(total),
    };
    let seal = compute_signature(&key(), &fields).unwrap();
    (fields, seal)
}

#[test]
fn groups_compose_from_shard_seals_in_any_order_and_refuse_bad_sets() {
    let shards = vec![shard(2, 3, 5), shard(0, 3, 1), shard(1, 3, 1)];
    let group = group_from_shards(&key(), "m", &shards).unwrap();
    assert_eq!(
        group
            .members
            .iter()
            .map(|m| m.shard_index)
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(group.members[2].gpu_device, 5);
    let seal = compute_group_seal(&key(), &group).unwrap();
    verify_group_seal(&key(), &group, &seal).unwrap();

    let refused =
        |set: &[(SealedFields, vram_types::SealSignature)]| group_from_shards(&key(), "m", set);
    assert!(
        matches!(refused(&shards[..2]), Err(VramError::InvalidInput { .. })),
        "one missing"
    );
    let dup = vec![shard(0, 3, 1), shard(0, 3, 1), shard(1, 3, 1)];
    assert!(
        matches!(refused(&dup), Err(VramError::InvalidInput { .. })),
        "duplicate"
    );
    let mut forged = shards.clone();
    forged[0].0.digest = "a".repeat(64);
    assert!(
        matches!(
            refused(&forged),
            Err(VramError::SealVerificationFailed { .. })
        ),
        "forged shard"
    );
    let mixed = vec![shard(0, 2, 1), shard(1, 3, 1)];
    assert!(
        matches!(refused(&mixed), Err(VramError::InvalidInput { .. })),
        "counts differ"
    );
}
