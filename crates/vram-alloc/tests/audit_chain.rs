//! The audit log as evidence: a log written by the manager verifies with only its public key;
//! every edit, deletion, insertion, reordering, rebuilt chain, foreign key, CRLF, duplicate
//! key and torn line is detected and named; a cut tail is detected against a kept checkpoint;
//! the writer is the only writer, takes only regular files, and never leaves a torn record.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{MIB, model, temp_path};
use vram_alloc::VramManager;
use vram_alloc::audit::{
    AuditError, AuditLogError, AuditLogOptions, AuditLogProblem, AuditLogSummary, AuditSigningKey,
    AuditVerifyOptions, Checkpoint, FileAuditSink, verify_audit_log, verify_audit_log_from,
};
use vram_alloc::backend::MockBackend;
use vram_seal::SealKey;

fn signing_key(seed: u8) -> AuditSigningKey {
    SealKey::from_bytes(&[seed; 32])
        .unwrap()
        .audit_signing_key()
        .unwrap()
}

fn pinned() -> AuditVerifyOptions {
    AuditVerifyOptions {
        public_key: Some(signing_key(0x11).public_key()),
        ..AuditVerifyOptions::default()
    }
}

fn options(every: u64) -> AuditLogOptions {
    let mut o = AuditLogOptions::default();
    o.checkpoint_every = every;
    o
}

/// A log written by a manager: seals, a verification, a failed verification (critical), a
/// reopening, releases. Returns its lines and the last checkpoint the writer made.
fn write_sample(path: &Path) -> (Vec<String>, Checkpoint) {
    let seal_key = [0x11; 32];
    let run = |f: &dyn Fn(&VramManager, &MockBackend)| {
        let mock = Arc::new(MockBackend::with_capacity(16 * MIB));
        let sink = Arc::new(FileAuditSink::open_with(path, signing_key(0x11), options(4)).unwrap());
        let manager = VramManager::builder()
            .mock(mock.clone())
            .seal_key(SealKey::from_bytes(&seal_key).unwrap())
            .audit_sink(sink.clone())
            .build()
            .unwrap();
        f(&manager, &mock);
        drop(manager);
        sink
    };
    drop(run(&|m, _| {
        let a = m.seal_model_with_id("a", &model(10, 1), 0).unwrap();
        m.verify_sealed(&a).unwrap();
        let b = m.seal_model_with_id("b", &model(20, 2), 0).unwrap();
        m.verify_sealed(&b).unwrap();
        m.verify_sealed(&a).unwrap();
    }));
    let sink = run(&|m, _| {
        let c = m.seal_model_with_id("c", &model(30, 3), 0).unwrap();
        m.corrupt_byte_for_tests(&c, 3).unwrap();
        assert!(m.verify_sealed(&c).is_err());
    });
    // The clean close (drop) signs the tail; keep what it signed.
    let sink = Arc::try_unwrap(sink).unwrap();
    drop(sink);
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let last = lines.last().unwrap();
    let kept = checkpoint_of(last, lines.len() as u64 - 1);
    (lines, kept)
}

/// The checkpoint a checkpoint line at `seq` states.
fn checkpoint_of(line: &str, seq: u64) -> Checkpoint {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["event"], "AuditCheckpoint", "{line}");
    format!(
        "vram-audit-checkpoint/v1 {seq} {} {}",
        v["prev"].as_str().unwrap(),
        v["signature"].as_str().unwrap()
    )
    .parse()
    .unwrap()
}

fn check(lines: &[String], options: &AuditVerifyOptions) -> Result<AuditLogSummary, AuditLogError> {
    let mut bytes = lines.join("\n").into_bytes();
    if !lines.is_empty() {
        bytes.push(b'\n');
    }
    verify_audit_log_from(&bytes[..], options)
}

fn line_hash(line: &str) -> String {
    vram_seal::digest(line.as_bytes(), vram_types::DigestAlgorithm::Sha256).to_hex()
}

/// Rewrites every `seq` and `prev` so that the links hold again: what an attacker without the
/// key can do after an edit.
fn relink(lines: &[String]) -> Vec<String> {
    let mut prev = "0".repeat(64);
    let mut out = Vec::new();
    for (seq, line) in lines.iter().enumerate() {
        let rest = &line[line.find(r#","prev":""#).unwrap() + 9 + 64..];
        let fixed = format!(r#"{{"seq":{seq},"prev":"{prev}{rest}"#);
        prev = line_hash(&fixed);
        out.push(fixed);
    }
    out
}

fn fails_at(result: Result<AuditLogSummary, AuditLogError>) -> (Option<u64>, AuditLogProblem) {
    let Err(e) = result else {
        panic!("tampering must be detected")
    };
    (e.line, e.problem)
}

#[test]
fn a_log_written_by_the_manager_verifies_with_only_the_public_key() {
    let path = temp_path("sample.jsonl");
    let (lines, kept) = write_sample(&path);
    let summary = verify_audit_log(&path, &pinned()).unwrap();
    assert_eq!(summary.records, lines.len() as u64);
    assert_eq!(summary.unsigned_records(), 0);
    assert!(summary.key_pinned);
    assert!(summary.checkpoints >= 4, "{summary:?}");
    assert_eq!(summary.last_checkpoint.as_ref(), Some(&kept));
    // Against the checkpoint kept elsewhere, too.
    let with_kept = AuditVerifyOptions {
        kept_checkpoint: Some(kept.clone()),
        ..pinned()
    };
    verify_audit_log(&path, &with_kept).unwrap();
    // The second opening named the same key and found nothing unsigned or torn.
    let openings: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "AuditLogOpened")
        .collect();
    assert_eq!(openings.len(), 2);
    for o in &openings {
        assert_eq!(o["public_key"], signing_key(0x11).public_key().to_string());
        assert_eq!(o["unsigned_records"], 0);
        assert_eq!(o["repaired_bytes"], 0);
    }
    // Every critical record is followed by a checkpoint, synced before `record` returned.
    for (i, l) in lines.iter().enumerate() {
        if l.contains(r#""severity":"critical""#) {
            assert!(lines[i + 1].contains("AuditCheckpoint"), "{}", lines[i + 1]);
        }
    }
    // Without a pinned key the log is checked against the key it names, and says so.
    let unpinned = verify_audit_log(&path, &AuditVerifyOptions::default()).unwrap();
    assert!(!unpinned.key_pinned);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn every_deletion_swap_insertion_and_edit_is_detected() {
    let path = temp_path("tamper.jsonl");
    let (lines, _) = write_sample(&path);
    std::fs::remove_file(&path).unwrap();
    let n = lines.len();
    for i in 0..n {
        let mut deleted = lines.clone();
        deleted.remove(i);
        let (line, _) = fails_at(check(&deleted, &pinned()));
        assert!(
            line.is_none_or(|l| l <= i as u64 + 1),
            "deleting line {} detected at {line:?}",
            i + 1
        );
    }
    for i in 0..n - 1 {
        let mut swapped = lines.clone();
        swapped.swap(i, i + 1);
        fails_at(check(&swapped, &pinned()));
    }
    for i in 0..n {
        let mut inserted = lines.clone();
        inserted.insert(i, lines[i].clone());
        fails_at(check(&inserted, &pinned()));
        // An edit that keeps the JSON meaning (a space) changes the bytes all the same.
        let mut edited = lines.clone();
        edited[i] = edited[i].replacen('{', "{ ", 1);
        fails_at(check(&edited, &pinned()));
    }
    // The last line (a checkpoint) cannot carry anything unsigned.
    let mut last = lines.clone();
    last[n - 1] = last[n - 1].replacen('}', r#","note":"ok"}"#, 1);
    assert_eq!(
        fails_at(check(&last, &pinned())),
        (Some(n as u64), AuditLogProblem::NonCanonicalCheckpoint)
    );
}

#[test]
fn a_rebuilt_chain_fails_at_the_first_checkpoint_after_the_edit() {
    let path = temp_path("rebuilt.jsonl");
    let (lines, _) = write_sample(&path);
    std::fs::remove_file(&path).unwrap();
    let critical = lines
        .iter()
        .position(|l| l.contains("SealVerificationFailed"))
        .unwrap();
    // Delete the critical record and recompute every link: the chain holds, the signatures
    // do not.
    let mut removed = lines.clone();
    removed.remove(critical);
    let rebuilt = relink(&removed);
    let (line, problem) = fails_at(check(&rebuilt, &pinned()));
    assert!(
        matches!(problem, AuditLogProblem::BadSignature(_)),
        "{problem}"
    );
    assert_eq!(
        line,
        Some(critical as u64 + 1),
        "the checkpoint that followed it"
    );
    // Rewriting it to a pass, likewise.
    let mut edited = lines.clone();
    edited[critical] = edited[critical].replace("SealVerificationFailed", "SealVerified");
    assert!(matches!(
        fails_at(check(&relink(&edited), &pinned())).1,
        AuditLogProblem::BadSignature(_)
    ));
}

#[test]
fn a_log_re_signed_with_another_key_fails_against_the_pinned_key() {
    let path = temp_path("foreign.jsonl");
    let (lines, _) = write_sample(&path);
    std::fs::remove_file(&path).unwrap();
    let attacker = signing_key(0x66);
    let real = signing_key(0x11).public_key().to_string();
    let swapped_key: Vec<String> = lines
        .iter()
        .map(|l| l.replace(&real, &attacker.public_key().to_string()))
        .collect();
    // Relink and re-sign every checkpoint with the attacker's key, line by line.
    let mut forged = Vec::new();
    let mut prev = "0".repeat(64);
    for (seq, line) in swapped_key.iter().enumerate() {
        let rest = &line[line.find(r#","prev":""#).unwrap() + 9 + 64..];
        let mut fixed = format!(r#"{{"seq":{seq},"prev":"{prev}{rest}"#);
        if fixed.contains("AuditCheckpoint") {
            let head: [u8; 32] = hex::decode(&prev).unwrap().try_into().unwrap();
            let c = attacker.sign_checkpoint(seq as u64, head);
            fixed = format!(
                r#"{{"seq":{seq},"prev":"{prev}","event":"AuditCheckpoint","signature":"{}"}}"#,
                c.signature_hex()
            );
        }
        prev = line_hash(&fixed);
        forged.push(fixed);
    }
    // Consistent with itself: an unpinned check passes and says the key was not pinned.
    let unpinned = check(&forged, &AuditVerifyOptions::default()).unwrap();
    assert!(!unpinned.key_pinned);
    assert_eq!(unpinned.public_key, attacker.public_key());
    // Against the real key, refused at the first line.
    assert!(matches!(
        fails_at(check(&forged, &pinned())),
        (Some(1), AuditLogProblem::KeyMismatch { .. })
    ));
    // Only the key replaced (signatures left): refused by a pinned verifier at line 1 too,
    // and by an unpinned one at the first checkpoint.
    assert!(matches!(
        fails_at(check(&swapped_key, &AuditVerifyOptions::default())).1,
        AuditLogProblem::BrokenLink | AuditLogProblem::BadSignature(_)
    ));
}

#[test]
fn a_cut_tail_is_detected_against_a_kept_checkpoint() {
    let path = temp_path("cut.jsonl");
    let (lines, kept) = write_sample(&path);
    std::fs::remove_file(&path).unwrap();
    let with_kept = AuditVerifyOptions {
        kept_checkpoint: Some(kept.clone()),
        ..pinned()
    };
    let n = lines.len();
    // One line cut: the log's own tail is unsigned now, and the kept checkpoint is missing.
    assert!(matches!(
        fails_at(check(&lines[..n - 1], &pinned())).1,
        AuditLogProblem::UnsignedTail { .. }
    ));
    // Cut back to an earlier checkpoint: the log alone looks whole, the kept checkpoint
    // says otherwise.
    let earlier = lines[..n - 1]
        .iter()
        .rposition(|l| l.contains("AuditCheckpoint"))
        .unwrap();
    let cut = &lines[..=earlier];
    check(cut, &pinned()).unwrap();
    assert_eq!(
        fails_at(check(cut, &with_kept)).1,
        AuditLogProblem::CutShort {
            records: earlier as u64 + 1,
            signed: kept.count
        }
    );
    // Cut everything.
    assert_eq!(fails_at(check(&[], &with_kept)).1, AuditLogProblem::Empty);
    // The kept checkpoint must itself be genuine.
    let mut forged = kept.clone();
    forged.count -= 1;
    let bad = AuditVerifyOptions {
        kept_checkpoint: Some(forged),
        ..pinned()
    };
    assert!(matches!(
        fails_at(check(&lines, &bad)).1,
        AuditLogProblem::KeptCheckpointInvalid(_)
    ));
}

#[test]
fn crlf_duplicate_keys_torn_and_overlong_lines_are_named() {
    let path = temp_path("format.jsonl");
    let (lines, _) = write_sample(&path);
    std::fs::remove_file(&path).unwrap();
    let crlf: Vec<String> = lines.iter().map(|l| format!("{l}\r")).collect();
    assert_eq!(
        fails_at(check(&crlf, &pinned())),
        (Some(1), AuditLogProblem::CarriageReturn)
    );
    let mut dup = lines.clone();
    dup[1] = dup[1].replacen(r#""seq":1,"#, r#""seq":1,"seq":1,"#, 1);
    let (line, problem) = fails_at(check(&dup, &pinned()));
    assert_eq!(line, Some(2));
    assert!(problem.to_string().contains("appears twice"), "{problem}");
    // A torn last record (no newline).
    let mut torn = lines.join("\n").into_bytes();
    torn.extend_from_slice(b"\n{\"seq\":");
    assert_eq!(
        fails_at(verify_audit_log_from(&torn[..], &pinned())),
        (Some(lines.len() as u64 + 1), AuditLogProblem::Torn)
    );
    let unterminated = lines.join("\n");
    assert_eq!(
        fails_at(verify_audit_log_from(unterminated.as_bytes(), &pinned())),
        (Some(lines.len() as u64), AuditLogProblem::Torn)
    );
    let long = vec![b'x'; 200_000];
    assert_eq!(
        fails_at(verify_audit_log_from(&long[..], &pinned())),
        (Some(1), AuditLogProblem::TooLong)
    );
    assert_eq!(fails_at(check(&[], &pinned())).1, AuditLogProblem::Empty);
    assert_eq!(
        fails_at(check(&lines[1..], &pinned())).0,
        Some(1),
        "a log must start with its opening record"
    );
}

#[test]
fn one_writer_at_a_time() {
    let path = temp_path("locked.jsonl");
    let first = FileAuditSink::open(&path, signing_key(0x11)).unwrap();
    let second = FileAuditSink::open(&path, signing_key(0x11)).unwrap_err();
    assert!(matches!(second, AuditError::Locked { .. }), "{second}");
    drop(first);
    let again = FileAuditSink::open(&path, signing_key(0x11)).unwrap();
    drop(again);
    verify_audit_log(&path, &pinned()).unwrap();
    // Another key cannot continue the log.
    let foreign = FileAuditSink::open(&path, signing_key(0x22)).unwrap_err();
    assert!(
        matches!(&foreign, AuditError::ForeignKey { log_key, .. } if *log_key == signing_key(0x11).public_key()),
        "{foreign}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn only_regular_files_are_logs() {
    let dir = temp_path("dir");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    let link = dir.join("link-to-zero");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let mut special = vec![
        (dir.clone(), "a directory"),
        ("/dev/zero".into(), "a device"),
        ("/dev/full".into(), "a device"),
        (link, "a device"),
    ];
    if made {
        special.push((fifo, "a FIFO"));
    } else {
        eprintln!("skipping the FIFO case: mkfifo is not available");
    }
    for (path, kind) in special {
        let e = FileAuditSink::open(&path, signing_key(0x11)).unwrap_err();
        assert!(
            matches!(&e, AuditError::NotRegularFile { reason, .. } if reason.starts_with(kind)),
            "{}: {e}",
            path.display()
        );
        let v = verify_audit_log(&path, &pinned()).unwrap_err();
        assert!(v.to_string().contains("not a regular file"), "{v}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_torn_tail_is_refused_or_repaired_and_the_repair_is_recorded() {
    let path = temp_path("torn.jsonl");
    drop(FileAuditSink::open(&path, signing_key(0x11)).unwrap());
    let whole = std::fs::read(&path).unwrap();
    for tail in [&b"{\"seq\":2,\"prev\":\"ab"[..], b"x"] {
        let mut torn = whole.clone();
        torn.extend_from_slice(tail);
        std::fs::write(&path, &torn).unwrap();
        let e = FileAuditSink::open(&path, signing_key(0x11)).unwrap_err();
        assert_eq!(
            e,
            AuditError::TornTail {
                path: path.clone(),
                bytes: tail.len() as u64
            }
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            torn,
            "refusing changes nothing"
        );
    }
    let mut repair = AuditLogOptions::default();
    repair.repair_torn_tail = true;
    drop(FileAuditSink::open_with(&path, signing_key(0x11), repair).unwrap());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(std::str::from_utf8(&whole).unwrap()));
    assert!(text.contains(r#""repaired_bytes":1"#), "{text}");
    verify_audit_log(&path, &pinned()).unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_full_disk_leaves_no_torn_record_and_the_chain_continues_after() {
    let path = temp_path("full.jsonl");
    let mock = Arc::new(MockBackend::with_capacity(16 * MIB));
    let room = common::Room::default();
    let sink = Arc::new(common::sink_on_small_disk(&path, signing_key(0x11), &room));
    let config = vram_types::VramConfig {
        audit_failure_policy: vram_types::AuditFailurePolicy::Continue,
        ..vram_types::VramConfig::default()
    };
    let manager = VramManager::builder()
        .mock(mock)
        .config(config)
        .audit_sink(sink.clone())
        .build()
        .unwrap();
    let shard = manager.seal_model(&model(10, 1), 0).unwrap();
    let before = std::fs::read(&path).unwrap();
    room.set(Some(40));
    manager.verify_sealed(&shard).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the part of the record that fit was cut back off"
    );
    assert_eq!(manager.metrics().audit_failures, 1);
    room.set(None);
    manager.verify_sealed(&shard).unwrap();
    drop(shard);
    drop(manager);
    drop(Arc::try_unwrap(sink).unwrap());
    verify_audit_log(&path, &pinned()).unwrap();
    std::fs::remove_file(&path).unwrap();
}

/// A record forged without the key: correctly linked after `lines`, never signed.
fn forged_after(lines: &[String], event: &str) -> String {
    let seq = lines.len();
    let prev = line_hash(lines.last().unwrap());
    format!(
        r#"{{"seq":{seq},"prev":"{prev}","timestamp_ms":1,"time":"1970-01-01T00:00:00.001Z","worker_id":"w","correlation_id":"c","severity":"info","event":"{event}","shard_id":"forged","gpu_device":0}}"#
    )
}

fn append_lines(path: &Path, new: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    for l in new {
        writeln!(f, "{l}").unwrap();
    }
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Issue 22, item 4: records appended without the key after a clean stop are adopted by the
/// next writer only as unsigned, and every later verification, after any number of restarts,
/// reports them so (refused unless unsigned records are allowed, and counted either way).
#[test]
fn records_forged_without_the_key_are_never_reported_as_signed_after_restarts() {
    let path = temp_path("forged-tail.jsonl");
    let (mut lines, _) = write_sample(&path);
    let first_forged = lines.len() as u64 + 1;
    for _ in 0..3 {
        let forged = forged_after(&lines, "SealVerified");
        lines.push(forged);
    }
    append_lines(&path, &lines[lines.len() - 3..]);
    for restart in 0..3 {
        // The writer reopens (as after any stop) and signs on.
        drop(FileAuditSink::open_with(&path, signing_key(0x11), options(4)).unwrap());
        let e = verify_audit_log(&path, &pinned()).unwrap_err();
        assert_eq!(
            e.problem,
            AuditLogProblem::AdoptedUnsigned {
                first: first_forged,
                records: 3,
                reopened_at: first_forged + 3,
            },
            "restart {restart}"
        );
        let allowed = AuditVerifyOptions {
            allow_unsigned_tail: true,
            ..pinned()
        };
        let summary = verify_audit_log(&path, &allowed).unwrap();
        assert_eq!(summary.adopted_unsigned_records, 3);
        assert_eq!(summary.unsigned_records(), 3, "restart {restart}");
        assert_eq!(summary.signed_records, summary.records - 3);
    }
    // The opening that adopted them cannot be edited to hide them: its checkpoint signs it.
    let mut text = lines_of(&path);
    let at = usize::try_from(first_forged + 3 - 1).unwrap();
    assert!(text[at].contains(r#""unsigned_records":3"#), "{}", text[at]);
    text[at] = text[at].replace(r#""unsigned_records":3"#, r#""unsigned_records":0"#);
    let (line, problem) = fails_at(check(&relink(&text), &pinned()));
    assert!(
        matches!(
            problem,
            AuditLogProblem::WrongUnsignedCount {
                claimed: 0,
                found: 3
            }
        ),
        "line {line:?}: {problem:?}"
    );
    std::fs::remove_file(&path).unwrap();
}

/// The spec's rules on lines are enforced: UTF-8 text, records' keys in the fixed order, and
/// openings exactly as written; a writer refuses to continue a log that breaks them.
#[test]
fn non_utf8_records_keys_out_of_order_and_odd_openings_are_refused() {
    let path = temp_path("rules.jsonl");
    let (lines, _) = write_sample(&path);
    let n = lines.len() as u64 + 1;
    let utf8 = forged_after(&lines, "SealVerified");
    let mut bytes = lines.join("\n").into_bytes();
    bytes.push(b'\n');
    let mut bad = utf8.clone().into_bytes();
    let i = bad.iter().position(|b| *b == b'f').unwrap(); // in "forged"
    bad[i] = 0xff;
    bytes.extend_from_slice(&bad);
    bytes.push(b'\n');
    let allowed = AuditVerifyOptions {
        allow_unsigned_tail: true,
        ..pinned()
    };
    let e = verify_audit_log_from(&bytes[..], &allowed).unwrap_err();
    assert_eq!(e.line, Some(n));
    assert!(matches!(e.problem, AuditLogProblem::NotUtf8 { .. }), "{e}");
    std::fs::write(&path, &bytes).unwrap();
    let e = FileAuditSink::open(&path, signing_key(0x11)).unwrap_err();
    assert!(matches!(e, AuditError::BrokenChain { .. }));
    assert!(
        e.to_string().contains("start a new log at another path"),
        "names the remedy: {e}"
    );

    // Keys out of order (the same fields, `severity` moved to the end).
    let moved = utf8
        .replace(r#","severity":"info""#, "")
        .replace(r#""gpu_device":0}"#, r#""gpu_device":0,"severity":"info"}"#);
    let mut out_of_order = lines.clone();
    out_of_order.push(moved);
    let (line, problem) = fails_at(check(&out_of_order, &allowed));
    assert_eq!(line, Some(n));
    assert!(
        matches!(problem, AuditLogProblem::KeyOrder { .. }),
        "{problem:?}"
    );

    // An opening with a field added, or its fields in another order.
    for (from, to) in [
        (
            r#","repaired_bytes":0}"#,
            r#","repaired_bytes":0,"note":"x"}"#,
        ),
        (
            r#""unsigned_records":0,"repaired_bytes":0"#,
            r#""repaired_bytes":0,"unsigned_records":0"#,
        ),
    ] {
        let mut odd = lines.clone();
        assert!(odd[0].contains(from), "{}", odd[0]);
        odd[0] = odd[0].replace(from, to);
        let (line, problem) = fails_at(check(&relink(&odd), &allowed));
        assert_eq!(
            (line, problem),
            (Some(1), AuditLogProblem::NonCanonicalOpening)
        );
    }
    std::fs::remove_file(&path).unwrap();
}

/// Issue 22, audit log handling: a symbolic link to nothing is refused (its target is never
/// created), and repair only ever removes one torn record: a file that is not a log (a token
/// file, a blob with no newline) or a tail longer than a record is left as it is.
#[test]
fn dangling_links_and_files_that_are_not_logs_are_refused_and_left_unchanged() {
    let dir = temp_path("not-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("elsewhere.jsonl");
    let link = dir.join("audit.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = FileAuditSink::open(&link, signing_key(0x11)).unwrap_err();
    assert!(
        matches!(&e, AuditError::NotRegularFile { reason, .. } if reason.contains("symbolic link to nothing")),
        "{e}"
    );
    assert!(!target.exists(), "the link's target was created");

    let mut repair = AuditLogOptions::default();
    repair.repair_torn_tail = true;
    let token = dir.join("token");
    let blob = dir.join("blob");
    std::fs::write(&token, b"worker-token-with-no-newline").unwrap();
    std::fs::write(&blob, vec![0xabu8; 200 * 1024]).unwrap();
    for (path, reason) in [(&token, "not an audit log"), (&blob, "not an audit log")] {
        let before = std::fs::read(path).unwrap();
        let e = FileAuditSink::open_with(path, signing_key(0x11), repair.clone()).unwrap_err();
        assert!(
            matches!(&e, AuditError::NotRepairable { reason: r, .. } if r.contains(reason)),
            "{e}"
        );
        assert_eq!(std::fs::read(path).unwrap(), before, "nothing was changed");
    }
    // A real log with more than a record's length of junk after it.
    let log = dir.join("log.jsonl");
    drop(FileAuditSink::open(&log, signing_key(0x11)).unwrap());
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend(vec![b'x'; 70 * 1024]);
    std::fs::write(&log, &bytes).unwrap();
    let e = FileAuditSink::open_with(&log, signing_key(0x11), repair).unwrap_err();
    assert!(
        matches!(&e, AuditError::NotRepairable { reason, .. } if reason.contains("longer than any record")),
        "{e}"
    );
    assert_eq!(std::fs::read(&log).unwrap(), bytes);
    std::fs::remove_dir_all(&dir).unwrap();
}
