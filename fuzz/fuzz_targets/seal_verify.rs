//! Seal verification over arbitrary fields and signatures: never panics; a seal computed over
//! the fields verifies; any other signature (or the same one over changed fields) does not.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use vram_seal::SealKey;
use vram_seal::signature::{compute_signature, verify_signature};
use vram_types::{DigestAlgorithm, SealSignature, SealedFields};

fuzz_target!(|input: (String, u32, usize, u8, String, Option<(u64, u32)>, Option<usize>, Option<usize>, [u8; 32], [u8; 32], usize)| {
    let (shard_id, gpu_device, vram_bytes, alg, digest, t, shard_index, total_shards, key, forged, bump) = input;
    let digest_algorithm = match alg % 14 {
        0 => DigestAlgorithm::Sha256,
        p => DigestAlgorithm::tree(1u64 << (p + 10).min(24)).unwrap_or_default(),
    };
    let sealed_at = t.and_then(|(s, n)| UNIX_EPOCH.checked_add(Duration::new(s, n % 1_000_000_000)));
    let fields = SealedFields { shard_id, gpu_device, vram_bytes, digest_algorithm, digest, sealed_at, shard_index, total_shards };
    let Ok(key) = SealKey::from_bytes(&key) else { return };
    let Ok(sig) = compute_signature(&key, &fields) else { return };
    assert!(verify_signature(&key, &fields, &sig).is_ok());
    if forged != *sig.as_bytes() {
        assert!(verify_signature(&key, &fields, &SealSignature::from_bytes(forged)).is_err());
    }
    let mut changed = fields.clone();
    changed.vram_bytes = changed.vram_bytes.wrapping_add(bump.max(1));
    assert!(verify_signature(&key, &changed, &sig).is_err());
});
