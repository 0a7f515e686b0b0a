//! The model digest (`.specs/model-digest.md`) against the independent Python reference, and its
//! invariants: any order of the same tensors gives one digest; a changed field of any tensor
//! changes it; duplicates and empty models are refused.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    reason = "tests"
)]

use vram_seal::ShardDigest;
use vram_seal::model::{TensorEntry, encode_model, model_digest};
use vram_types::{DigestAlgorithm, VramError};

/// (tensors in the reference's order, encoding, digest) of each case.
fn vectors() -> Vec<(Vec<TensorEntry>, Vec<u8>, String)> {
    include_str!("data/model_vectors.txt")
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let (mut tensors, mut encoding, mut digest) = (vec![], vec![], String::new());
            for line in block.lines() {
                let (k, v) = line.split_once(' ').unwrap();
                match k {
                    "tensor" => {
                        let p: Vec<&str> = v.split(' ').collect();
                        tensors.push(TensorEntry {
                            name: p[0].into(),
                            dtype: p[1].into(),
                            shape: if p[2] == "-" {
                                vec![]
                            } else {
                                p[2].split(',').map(|d| d.parse().unwrap()).collect()
                            },
                            bytes: p[3].parse().unwrap(),
                            algorithm: p[4].parse().unwrap(),
                            digest: ShardDigest::from_hex(p[5]).unwrap(),
                        });
                    }
                    "encoding" => encoding = hex::decode(v).unwrap(),
                    "digest" => digest = v.into(),
                    _ => {}
                }
            }
            (tensors, encoding, digest)
        })
        .collect()
}

#[test]
fn encodings_and_digests_match_the_reference() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 4);
    for (tensors, encoding, digest) in vectors {
        assert_eq!(encode_model(&tensors).unwrap(), encoding);
        assert_eq!(model_digest(&tensors).unwrap().to_hex(), digest);
        // Any order of the same tensors: the same digest.
        let mut reversed = tensors.clone();
        reversed.reverse();
        assert_eq!(model_digest(&reversed).unwrap().to_hex(), digest);
    }
}

#[test]
fn a_tensor_of_zero_bytes_is_left_out() {
    let vectors = vectors();
    let (one, _, one_digest) = &vectors[0];
    let (with_empty, _, digest) = &vectors[3];
    assert!(with_empty.iter().any(|t| t.bytes == 0));
    assert_eq!(digest, one_digest);
    assert_eq!(
        model_digest(one).unwrap(),
        model_digest(with_empty).unwrap()
    );
    // A model of empty tensors only has no digest, as a model of none.
    let empty: Vec<TensorEntry> = with_empty
        .iter()
        .filter(|t| t.bytes == 0)
        .cloned()
        .collect();
    assert!(matches!(
        model_digest(&empty),
        Err(VramError::InvalidInput { .. })
    ));
}

#[test]
fn every_field_of_every_tensor_is_bound() {
    let (tensors, _, digest) = vectors().remove(1);
    let edits: Vec<fn(&mut TensorEntry)> = vec![
        |t| t.name.push('x'),
        |t| t.dtype = "F64".into(),
        |t| t.shape.push(1),
        |t| t.bytes += 1,
        |t| {
            t.algorithm = if t.algorithm == DigestAlgorithm::Sha256 {
                DigestAlgorithm::default()
            } else {
                DigestAlgorithm::Sha256
            }
        },
        |t| t.digest = vram_seal::digest(b"other", DigestAlgorithm::Sha256),
    ];
    for i in 0..tensors.len() {
        for edit in &edits {
            let mut changed = tensors.clone();
            edit(&mut changed[i]);
            assert_ne!(model_digest(&changed).unwrap().to_hex(), digest);
        }
    }
    // A tensor dropped or added changes it too.
    assert_ne!(model_digest(&tensors[1..]).unwrap().to_hex(), digest);
}

#[test]
fn duplicates_and_empty_models_are_refused() {
    let (tensors, _, _) = vectors().remove(0);
    let twice = [tensors[0].clone(), tensors[0].clone()];
    assert!(matches!(
        model_digest(&twice),
        Err(VramError::InvalidInput { .. })
    ));
    assert!(matches!(
        model_digest(&[]),
        Err(VramError::InvalidInput { .. })
    ));
}
