//! The attestation statement decoder on arbitrary bytes: never panics; what decodes is the one
//! canonical statement of its fields, and once signed it verifies under the key and nonce, and
//! fails under another nonce or a changed field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_policy::{decode_statement, verify_attestation};
use vram_seal::SealKey;

fuzz_target!(|data: &[u8]| {
    let Some(statement) = decode_statement(data) else { return };
    assert_eq!(statement.statement_bytes().ok().as_deref(), Some(data));
    let Ok(key) = SealKey::from_bytes(&[7u8; 32]) else { return };
    let Ok(signed) = statement.clone().signed(&key) else { return };
    if let Ok(nonce) = hex::decode(&signed.nonce) {
        assert!(verify_attestation(&key, &signed, &nonce).is_ok());
        let mut changed = signed.clone();
        changed.vram_bytes = changed.vram_bytes.wrapping_add(1);
        assert!(verify_attestation(&key, &changed, &nonce).is_err());
    }
    assert!(verify_attestation(&key, &signed, b"another nonce, never hex of itself").is_err());
});
