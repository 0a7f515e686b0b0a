//! `.specs/audit.md` against the independent Python reference (`.specs/reference/vectors.py
//! audit`, committed in `tests/data/audit_vectors.txt`): the audit key derivation, the
//! checkpoint message and its Ed25519 signature, and a whole log, byte for byte as the writer
//! produces it and accepted by the verifier.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    reason = "tests"
)]

use vram_alloc::audit::{
    AuditEvent, AuditRecord, AuditSink, AuditVerifyOptions, Checkpoint, FileAuditSink, Severity,
    verify_audit_log, verify_audit_log_from,
};
use vram_seal::SealKey;
use vram_seal::audit_key::checkpoint_message;

const VECTORS: &str = include_str!("data/audit_vectors.txt");

fn rows(tag: &str) -> impl Iterator<Item = &'static str> + '_ {
    VECTORS
        .lines()
        .filter_map(move |l| l.strip_prefix(tag)?.strip_prefix(' '))
}

fn vector_key() -> SealKey {
    SealKey::from_bytes(&(0u8..32).collect::<Vec<_>>()).unwrap()
}

#[test]
fn audit_keys_derive_as_the_reference_does() {
    let mut n = 0;
    for row in rows("key") {
        let f: Vec<&str> = row.split(' ').collect();
        let key = SealKey::from_bytes(&hex::decode(f[0]).unwrap()).unwrap();
        assert_eq!(
            key.audit_signing_key().unwrap().public_key().to_string(),
            f[2],
            "seal key {}",
            f[0]
        );
        n += 1;
    }
    assert_eq!(n, 3);
}

#[test]
fn checkpoints_sign_the_reference_message_with_the_reference_signature() {
    let signer = vector_key().audit_signing_key().unwrap();
    let mut n = 0;
    for row in rows("checkpoint") {
        let f: Vec<&str> = row.split(' ').collect();
        let count: u64 = f[0].parse().unwrap();
        let head: [u8; 32] = hex::decode(f[1]).unwrap().try_into().unwrap();
        assert_eq!(hex::encode(checkpoint_message(count, &head)), f[2]);
        // Ed25519 is deterministic: the same key and message give the same signature.
        let c = signer.sign_checkpoint(count, head);
        assert_eq!(c.signature_hex(), f[3]);
        signer.public_key().verify_checkpoint(&c).unwrap();
        let text: Checkpoint = c.to_string().parse().unwrap();
        assert_eq!(text, c);
        n += 1;
    }
    assert_eq!(n, 3);
}

/// The records of the reference log, as the manager would hand them to a sink.
fn records() -> Vec<AuditRecord> {
    let record = |ms, n: u32, severity, event| AuditRecord {
        timestamp_ms: ms,
        worker_id: "worker-1".into(),
        correlation_id: format!("0a1b2c3d-{n:08}"),
        severity,
        event,
    };
    let digest = vram_seal::digest(b"abc", vram_types::DigestAlgorithm::default()).to_hex();
    vec![
        record(
            1_700_000_000_123,
            1,
            Severity::Info,
            AuditEvent::VramSealed {
                shard_id: "llama-shard-0".into(),
                gpu_device: 0,
                vram_bytes: 3,
                reserved_bytes: 2_097_152,
                digest,
                digest_algorithm: "sha256-tree-65536".into(),
                backend: "mock".into(),
                group_id: None,
                in_place: false,
                expected_from: None,
            },
        ),
        record(
            1_700_000_000_456,
            2,
            Severity::Info,
            AuditEvent::SealVerified {
                shard_id: "llama-shard-0".into(),
                gpu_device: 0,
            },
        ),
        record(
            1_700_000_000_789,
            3,
            Severity::Critical,
            AuditEvent::SealVerificationFailed {
                shard_id: "llama-shard-0".into(),
                gpu_device: 0,
                reason: "integrity violation on GPU 0: digest mismatch \u{2014} \"edited\"\n"
                    .into(),
            },
        ),
        record(
            1_700_000_001_000,
            1,
            Severity::Info,
            AuditEvent::VramDeallocated {
                shard_id: "llama-shard-0".into(),
                gpu_device: 0,
                freed_bytes: 2_097_152,
                error: None,
            },
        ),
    ]
}

#[test]
fn the_writer_produces_the_reference_log_byte_for_byte() {
    let expected: String = rows("line").map(|l| format!("{l}\n")).collect();
    let key = vector_key();
    let pinned = AuditVerifyOptions {
        public_key: Some(key.audit_signing_key().unwrap().public_key()),
        ..AuditVerifyOptions::default()
    };
    let summary = verify_audit_log_from(expected.as_bytes(), &pinned).unwrap();
    assert_eq!(summary.records, 8);
    assert_eq!(summary.checkpoints, 3);

    let path =
        std::env::temp_dir().join(format!("vram-audit-vectors-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let sink = FileAuditSink::open(&path, key.audit_signing_key().unwrap()).unwrap();
    for r in records() {
        sink.record(&r).unwrap();
    }
    drop(sink);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    verify_audit_log(&path, &pinned).unwrap();
    std::fs::remove_file(&path).unwrap();
}
