//! The audit-log verifier on arbitrary bytes, with and without a pinned key and a kept
//! checkpoint: never panics, never reads past its line cap, and whatever it accepts has as many
//! newline-terminated lines as it counts records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vram_alloc::audit::{AuditVerifyOptions, Checkpoint, verify_audit_log_from};
use vram_seal::SealKey;

fuzz_target!(|data: &[u8]| {
    let key = SealKey::from_array([7; 32])
        .audit_signing_key()
        .map(|k| k.public_key())
        .ok();
    let kept: Option<Checkpoint> = std::str::from_utf8(data)
        .ok()
        .and_then(|t| t.lines().last())
        .and_then(|l| l.parse().ok());
    for options in [
        AuditVerifyOptions::default(),
        AuditVerifyOptions {
            public_key: key,
            kept_checkpoint: kept,
            allow_unsigned_tail: true,
        },
    ] {
        if let Ok(summary) = verify_audit_log_from(data, &options) {
            let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(summary.records, lines);
            assert!(summary.signed_records <= summary.records);
        }
    }
});
