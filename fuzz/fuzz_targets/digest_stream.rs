//! Streaming digest in arbitrary pieces equals the one-shot parallel digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_seal::digest::{DigestHasher, digest};
use vram_types::DigestAlgorithm;

fuzz_target!(|input: (Vec<u8>, Vec<u16>, bool)| {
    let (data, cuts, flat) = input;
    let alg = if flat { DigestAlgorithm::Sha256 } else { DigestAlgorithm::tree(4096).unwrap_or_default() };
    let mut h = DigestHasher::new(alg);
    let mut rest = &data[..];
    for cut in cuts {
        let (piece, tail) = rest.split_at(usize::from(cut).min(rest.len()));
        h.update(piece);
        rest = tail;
    }
    h.update(rest);
    assert_eq!(h.finalize(), digest(&data, alg));
});
