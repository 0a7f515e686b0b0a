//! Key derivation and raw-key checks on arbitrary input: never panics; accepted inputs are
//! exactly those within the documented bounds; derivation is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_seal::signature::hmac_sha256;
use vram_seal::{MAX_KEY_BYTES, MIN_KEY_BYTES, MIN_TOKEN_BYTES, SealKey};

fuzz_target!(|input: (Vec<u8>, String)| {
    let (token, worker_id) = input;
    let derived = SealKey::derive(&token, &worker_id);
    let valid = token.len() >= MIN_TOKEN_BYTES && !worker_id.is_empty() && worker_id.len() <= 256;
    assert_eq!(derived.is_ok(), valid);
    if let (Ok(a), Ok(b)) = (derived, SealKey::derive(&token, &worker_id)) {
        assert_eq!(hmac_sha256(&a, b"probe").ok(), hmac_sha256(&b, b"probe").ok());
    }
    let raw = SealKey::from_bytes(&token);
    assert_eq!(raw.is_ok(), (MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&token.len()));
});
