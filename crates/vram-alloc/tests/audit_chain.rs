//! The hash-chained audit file: it continues across reopening, and its check finds edited,
//! deleted and reordered records.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::sync::Arc;

use common::{MIB, model, temp_path};
use vram_alloc::VramManager;
use vram_alloc::audit::{AuditChainError, FileAuditSink, verify_audit_chain};
use vram_alloc::backend::MockBackend;

#[test]
fn the_chain_detects_edits_deletions_and_reordering_and_survives_reopening() {
    let path = temp_path("chain.jsonl");
    {
        let mock = Arc::new(MockBackend::with_capacity(16 * MIB));
        let manager = VramManager::builder()
            .mock(mock)
            .audit_sink(Arc::new(FileAuditSink::open(&path).unwrap()))
            .build()
            .unwrap();
        let s = manager.seal_model(&model(10, 1), 0).unwrap();
        manager.verify_sealed(&s).unwrap();
    }
    assert_eq!(verify_audit_chain(&path).unwrap(), 3);
    // Reopen: the chain continues.
    {
        let manager = VramManager::builder()
            .mock(Arc::new(MockBackend::with_capacity(16 * MIB)))
            .audit_sink(Arc::new(FileAuditSink::open(&path).unwrap()))
            .build()
            .unwrap();
        drop(manager.seal_model(&model(10, 2), 0).unwrap());
    }
    assert_eq!(verify_audit_chain(&path).unwrap(), 5);
    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();

    let edited = original.replacen("SealVerified", "SealVerifiez", 1);
    std::fs::write(&path, edited).unwrap();
    assert_eq!(
        verify_audit_chain(&path),
        Err(AuditChainError::Broken { line: 3 })
    );

    let mut deleted = lines.clone();
    deleted.remove(1);
    std::fs::write(&path, deleted.join("\n") + "\n").unwrap();
    assert_eq!(
        verify_audit_chain(&path),
        Err(AuditChainError::Broken { line: 2 })
    );

    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    std::fs::write(&path, swapped.join("\n") + "\n").unwrap();
    assert!(matches!(
        verify_audit_chain(&path),
        Err(AuditChainError::Broken { .. })
    ));

    std::fs::write(&path, "not json\n").unwrap();
    assert_eq!(
        verify_audit_chain(&path),
        Err(AuditChainError::Malformed { line: 1 })
    );
    assert!(
        FileAuditSink::open(&path).is_err(),
        "a broken log is not continued silently"
    );
    std::fs::remove_file(&path).unwrap();
}
