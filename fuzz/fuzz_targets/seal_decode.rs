//! The canonical seal decoder on arbitrary bytes: never panics, and whatever decodes encodes
//! back to exactly the same bytes (the encoding is injective).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_seal::signature::{decode_sealed_fields, encode_sealed_fields};

fuzz_target!(|data: &[u8]| {
    if let Some(fields) = decode_sealed_fields(data) {
        assert_eq!(encode_sealed_fields(&fields).ok().as_deref(), Some(data));
    }
});
