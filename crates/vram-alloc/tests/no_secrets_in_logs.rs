//! A full scenario with a known key: no log line and no audit record contains the key bytes,
//! the worker token or any pointer value. (Its own test binary: tracing's per-thread subscriber
//! must not race other tests for callsite interest.)
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{MIB, model, temp_path};
use vram_alloc::VramManager;
use vram_alloc::audit::{AuditVerifyOptions, FileAuditSink, verify_audit_log};
use vram_alloc::backend::MockBackend;
use vram_seal::SealKey;
use vram_types::VramConfig;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const TOKEN: &[u8] = b"super-secret-worker-token-4f1d9a";
const FORGED_ID: &str = "llama\nFORGED 2026-01-01 INFO seal verified\u{1b}[31m\r";

fn scenario(audit_path: &std::path::Path) -> (String, Vec<u8>) {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    // A raw key with a recognisable pattern; the token is searched for too.
    let key_bytes = vec![0xa7u8; 32];
    let _derived = SealKey::derive(TOKEN, "worker-7").unwrap();
    tracing::subscriber::with_default(subscriber, || {
        let mock = Arc::new(MockBackend::with_capacity(16 * MIB));
        let manager = VramManager::builder()
            .mock(mock.clone())
            .config(VramConfig {
                worker_id: "worker-7".into(),
                ..VramConfig::default()
            })
            .seal_key(SealKey::from_bytes(&key_bytes).unwrap())
            .audit_sink(Arc::new(
                FileAuditSink::open(
                    audit_path,
                    SealKey::from_bytes(&key_bytes)
                        .unwrap()
                        .audit_signing_key()
                        .unwrap(),
                )
                .unwrap(),
            ))
            .build()
            .unwrap();
        let shard = manager
            .seal_model_with_id("secret-scan", &model(3 * MIB, 1), 0)
            .unwrap();
        manager.verify_sealed(&shard).unwrap();
        let _ = manager.seal_model(&model(20 * MIB, 1), 0);
        let _ = manager.seal_model_with_id("../bad", &model(1, 1), 0);
        tracing::info!(?shard, "debug print of a shard");
        // A caller that edits a shard id to forge log lines or colour a terminal gets its id
        // escaped in every log line.
        let mut forged = shard.clone();
        forged.shard_id = FORGED_ID.into();
        assert!(manager.verify_sealed(&forged).is_err());
        manager.corrupt_byte_for_tests(&shard, 5).unwrap();
        assert!(manager.verify_sealed(&shard).is_err());
        drop(shard);
    });
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    (logs, key_bytes)
}

#[test]
fn logs_and_audit_records_never_show_keys_or_pointers() {
    let path = temp_path("secrets.jsonl");
    let (logs, key) = scenario(&path);
    let audit = std::fs::read_to_string(&path).unwrap();
    assert!(
        logs.contains("model sealed in VRAM") && logs.contains("audit"),
        "{logs}"
    );
    assert!(audit.lines().count() >= 5, "{audit}");
    // Log hygiene: the edited id reached no line raw.
    assert!(logs.contains("seal verification failed"), "{logs}");
    assert!(!logs.lines().any(|l| l.starts_with("FORGED")), "{logs}");
    assert!(!logs.contains('\u{1b}') && !logs.contains('\r'), "{logs:?}");
    for text in [&logs, &audit] {
        let hex_key: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!text.contains(&hex_key));
        assert!(!text.contains(&format!("{key:?}")));
        assert!(!text.contains(std::str::from_utf8(TOKEN).unwrap()));
        // No pointer-looking value (0x followed by 8+ hex digits) anywhere.
        let pointerish = text.match_indices("0x").any(|(i, _)| {
            text[i + 2..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .count()
                >= 8
        });
        assert!(!pointerish, "pointer-like value in:\n{text}");
        assert!(!text.contains("SealKey(") || text.contains("SealKey(<redacted>)"));
    }
    // The file chain holds, and every manager record names the worker and a correlation id.
    let summary = verify_audit_log(&path, &AuditVerifyOptions::default()).unwrap();
    assert_eq!(summary.records, audit.lines().count() as u64);
    assert_eq!(summary.unsigned_records(), 0, "a clean close signs the log");
    let is_sink_line = |l: &&str| {
        l.contains(r#""event":"AuditLogOpened""#) || l.contains(r#""event":"AuditCheckpoint""#)
    };
    for line in audit.lines().filter(|l| !is_sink_line(l)) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["worker_id"], "worker-7");
        assert!(v["correlation_id"].as_str().unwrap().len() > 8);
    }
    let events: Vec<String> = audit
        .lines()
        .filter(|l| !is_sink_line(l))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        events,
        [
            "VramSealed",
            "SealVerified",
            "VramAllocationFailed",
            "SealVerificationFailed",
            "VramDeallocated"
        ],
        "rejected input (../bad) is not audited"
    );
    std::fs::remove_file(&path).unwrap();
}
