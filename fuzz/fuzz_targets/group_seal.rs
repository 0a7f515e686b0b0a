//! The group-seal decoder on arbitrary bytes: never panics; what decodes encodes back to exactly
//! the same bytes, and its group seal verifies only over those fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_seal::SealKey;
use vram_seal::group::{compute_group_seal, decode_group, encode_group, verify_group_seal};

fuzz_target!(|data: &[u8]| {
    let Some(fields) = decode_group(data) else { return };
    assert_eq!(encode_group(&fields).ok().as_deref(), Some(data));
    let Ok(key) = SealKey::from_bytes(&[9u8; 32]) else { return };
    let Ok(seal) = compute_group_seal(&key, &fields) else { return };
    assert!(verify_group_seal(&key, &fields, &seal).is_ok());
    let mut changed = fields.clone();
    changed.model_id.push('x');
    assert!(verify_group_seal(&key, &changed, &seal).is_err());
});
