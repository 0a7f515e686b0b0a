//! End-to-end tests of the built `vramctl` binary on the mock backend: every command, every bad
//! input (one-line error, right exit code, nothing sealed), the metrics endpoint scraped over
//! loopback, and SIGTERM releasing every shard (the audit log shows the deallocation).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "tests"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use predicates::prelude::*;
use tempfile::TempDir;
use vram_residency::audit::{AuditVerifyOptions, verify_audit_log};

#[path = "support/promlint.rs"]
mod promlint;

fn vramctl() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(cargo_bin("vramctl"));
    c.env_remove("VRAM_TEST_GPU")
        .env_remove("VRAM_WORKER_TOKEN")
        .env_remove("VRAMCTL_TOKEN_FILE")
        .timeout(Duration::from_secs(60));
    c
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Writes a file readable by its owner alone (as a token file must be).
fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A valid safetensors file with two f32 tensors.
fn safetensors_file(dir: &TempDir, name: &str) -> PathBuf {
    let a: Vec<u8> = (0..1024u32)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    let b: Vec<u8> = (0..256u32)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let views = vec![
        (
            "a",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![32, 32], &a)
                .unwrap(),
        ),
        (
            "b",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![256], &b).unwrap(),
        ),
    ];
    let p = dir.path().join(name);
    safetensors::serialize_to_file(views, None, &p).unwrap();
    p
}

fn gguf_file(dir: &TempDir) -> PathBuf {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(2u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // kv pairs
    b.extend(17u64.to_le_bytes());
    b.extend(b"general.alignment");
    b.extend(4u32.to_le_bytes()); // u32
    b.extend(64u32.to_le_bytes());
    for (i, name) in ["tok", "out"].iter().enumerate() {
        b.extend((name.len() as u64).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend(1u32.to_le_bytes());
        b.extend(64u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend((i as u64 * 256).to_le_bytes());
    }
    while !b.len().is_multiple_of(64) {
        b.push(0);
    }
    b.extend(vec![3u8; 512]);
    write(dir, "toy.gguf", &b)
}

fn stderr_one_line(output: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    assert_eq!(
        text.lines().count(),
        1,
        "expected a one-line error, got:\n{text}"
    );
    assert!(text.starts_with("error: "), "{text}");
    text
}

#[test]
fn help_documents_exit_codes_and_examples() {
    vramctl()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("Exit codes:"))
        .stdout(predicate::str::contains("3  no GPU"))
        .stdout(predicate::str::contains(
            "vramctl seal model.safetensors --expect",
        ));
}

#[test]
fn doctor_without_a_gpu_says_so_and_exits_3() {
    let out = vramctl().arg("doctor").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no usable GPU"));
    assert!(stderr_one_line(&out).contains("no GPU can hold VRAM-only shards"));
    let json = vramctl().args(["--json", "doctor"]).output().unwrap();
    let first: serde_json::Value =
        serde_json::from_slice(json.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["usable"], false);
}

#[test]
fn digest_matches_the_spec_vectors() {
    let dir = TempDir::new().unwrap();
    let abc = write(&dir, "abc.bin", b"abc");
    vramctl()
        .args(["digest"])
        .arg(&abc)
        .assert()
        .success()
        .stdout(predicate::str::starts_with(
            "sha256-tree-65536:2d4c4b2d34a7d3711a5b36433106a88f2000c10b13a979e2bc503c4479fc3de4  ",
        ));
    vramctl()
        .args(["digest", "--flat"])
        .arg(&abc)
        .assert()
        .success()
        .stdout(predicate::str::starts_with(
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  ",
        ));
    let two_leaves = write(&dir, "p.bin", &pattern(4097));
    let out = vramctl()
        .args(["--json", "digest", "--leaf", "4096"])
        .arg(&two_leaves)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["digest"],
        "cc68f1bcc1172e197b545dec8d0f16c0720b8b5ad90fc32b5527cfe2b06b710f"
    );
    assert_eq!(v["algorithm"], "sha256-tree-4096");
    // Larger than one read chunk: the streamed digest equals the library's one-shot digest.
    let big = pattern((64 << 20) + 12345);
    let big_path = write(&dir, "big.bin", &big);
    let want =
        vram_residency::compute_digest(&big, vram_residency::DigestAlgorithm::default()).to_hex();
    vramctl()
        .arg("digest")
        .arg(&big_path)
        .assert()
        .success()
        .stdout(predicate::str::starts_with(format!(
            "sha256-tree-65536:{want}  "
        )));
    let bad = vramctl()
        .args(["digest", "--leaf", "3000"])
        .arg(&abc)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr_one_line(&bad).contains("power of two"));
}

#[test]
fn bad_inputs_get_one_line_the_right_code_and_seal_nothing() {
    let dir = TempDir::new().unwrap();
    let model = safetensors_file(&dir, "m.safetensors");
    let empty = write(&dir, "empty.bin", b"");
    let broken = write(
        &dir,
        "broken.safetensors",
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":",
    );
    let broken_gguf = write(&dir, "broken.gguf", b"GGUF\x03\x00\x00\x00\xff\xff");
    let big = write(&dir, "big.bin", &pattern(5 << 20));
    let looped = dir.path().join("loop");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (vec![p(&dir.path().join("missing.bin"))], 2, "no such file"),
        (vec![p(dir.path())], 2, "is a directory"),
        (vec![p(&empty)], 2, "is empty"),
        (vec![p(&looped)], 2, "loop"),
        (vec![p(&broken)], 2, "malformed safetensors header"),
        (vec![p(&broken_gguf)], 2, "malformed GGUF header"),
        (
            vec![p(&big), "--mock-capacity".into(), "4194304".into()],
            2,
            "free VRAM",
        ),
        (
            vec![p(&model), "--expect".into(), "xyz".into()],
            2,
            "is not a digest",
        ),
        (
            vec![p(&model), "--expect".into(), "ab".repeat(32)],
            1,
            "differs from --expect",
        ),
        (
            vec![p(&model), "--metrics".into(), "0.0.0.0:9400".into()],
            2,
            "not a loopback address",
        ),
        (
            vec![p(&model), "--metrics".into(), "nonsense".into()],
            2,
            "not an address",
        ),
        (
            vec![p(&model), "--verify-every".into(), "0".into()],
            2,
            "--verify-every 0",
        ),
        (
            vec![p(&model), "--scrub-share".into(), "0".into()],
            2,
            "--scrub-share 0",
        ),
        (
            vec![p(&model), "--scrub-share".into(), "1.5".into()],
            2,
            "--scrub-share 1.5",
        ),
        (
            vec![p(&model), "--scrub-share".into(), "half".into()],
            2,
            "give `full` or a fraction",
        ),
        (
            vec![p(&model), p(&model), "--expect".into(), "ab".repeat(32)],
            2,
            "one per file",
        ),
    ];
    // One token for every run: a log is continued only under the key that signed it.
    let token = write(&dir, "token", b"token-of-the-bad-input-runs");
    for (args, code, needle) in cases {
        let out = vramctl()
            .args(["--backend", "mock", "seal", "--audit-log"])
            .arg(&audit)
            .arg("--token-file")
            .arg(&token)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stderr_one_line(&out);
        assert!(line.contains(needle), "{args:?}: {line}");
        assert!(line.contains("; "), "a remedy follows the problem: {line}");
    }
    // No case sealed anything (the audit log, if created, has no seal record).
    let log = std::fs::read_to_string(&audit).unwrap_or_default();
    assert!(!log.contains("VramSealed"), "{log}");

    if Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout != b"0\n")
    {
        let locked = write(&dir, "locked.bin", b"secret");
        std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();
        let out = vramctl()
            .args(["--backend", "mock", "seal"])
            .arg(&locked)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr_one_line(&out).contains("permission denied"));
    }
    // Without a GPU the default backend is CUDA: exit 3, not a silent fallback to host memory.
    let out = vramctl().arg("seal").arg(&model).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr_one_line(&out).contains("--backend mock"));
}

/// Calls `probe` every 200 ms until it gives a value; fails the test after 20 s.
fn poll<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "no {what} within 20 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
}

/// Sends SIGTERM to a running `vramctl seal`, expects the clean stop (exit 0) and returns the
/// lines it printed after the ones already read.
fn stop_with_sigterm(
    mut child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
) -> Vec<String> {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    lines.map(Result::unwrap).collect()
}

#[test]
fn seal_serves_metrics_reverifies_and_releases_everything_on_sigterm() {
    let dir = TempDir::new().unwrap();
    let model = safetensors_file(&dir, "m.safetensors");
    let gguf = gguf_file(&dir);
    let audit = dir.path().join("audit.jsonl");
    let digest = vram_residency::compute_digest(
        &std::fs::read(&model).unwrap(),
        vram_residency::DigestAlgorithm::default(),
    )
    .to_hex();
    // The second file is checked against its flat SHA-256 (as `sha256sum` prints it).
    let gguf_digest = vram_residency::compute_digest(
        &std::fs::read(&gguf).unwrap(),
        vram_residency::DigestAlgorithm::Sha256,
    )
    .to_hex();
    let mut child = Command::new(cargo_bin("vramctl"))
        .args([
            "--json",
            "--backend",
            "mock",
            "seal",
            "--verify-every",
            "1",
            "--metrics",
            "127.0.0.1:0",
            "--audit-log",
        ])
        .arg(&audit)
        .arg(&model)
        .arg(&gguf)
        .args([
            "--expect",
            &digest,
            "--expect",
            &format!("sha256:{gguf_digest}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events = Vec::new();
    let addr = loop {
        let line = lines.next().expect("vramctl exited early").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "sealed" {
            events.push(v.clone());
        }
        if v["event"] == "metrics" {
            break v["address"].as_str().unwrap().to_owned();
        }
    };
    assert_eq!(events[0]["model"]["format"], "safetensors");
    assert_eq!(events[0]["model"]["tensors"], 2);
    assert_eq!(events[0]["shard"]["digest"], digest.as_str());
    assert_eq!(events[1]["model"]["format"], "gguf");
    assert_eq!(events[1]["model"]["tensors"], 2);
    assert_eq!(events[1]["model"]["parameter_bytes"], 512);

    let text = scrape(&addr);
    assert!(
        text.starts_with("HTTP/1.") && text.contains(" 200 "),
        "{text}"
    );
    assert_eq!(
        metric(&text, "vram_used_bytes{gpu_device=\"0\"}"),
        4.0 * 1024.0 * 1024.0
    );
    assert_eq!(
        metric(
            &text,
            "vram_seal_operations_total{gpu_device=\"0\",result=\"success\"}"
        ),
        2.0
    );
    // Wait for a re-verification round.
    poll("a re-verification", || {
        let verified = metric(
            &scrape(&addr),
            "vram_verify_operations_total{gpu_device=\"0\",result=\"success\"}",
        );
        (verified >= 2.0).then_some(())
    });

    let rest = stop_with_sigterm(child, lines);
    assert!(
        rest.iter()
            .any(|l| l.contains("\"event\":\"released\"") && l.contains("\"used_vram\":0")),
        "{rest:?}"
    );

    let log = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(log.matches("\"event\":\"VramSealed\"").count(), 2, "{log}");
    assert_eq!(
        log.matches("\"event\":\"VramDeallocated\"").count(),
        2,
        "{log}"
    );
    // The scrubber's passes: one summary record, written when it stopped.
    assert!(log.contains("\"event\":\"VerificationSummary\""), "{log}");
    assert!(!log.contains("\"event\":\"SealVerified\""), "{log}");
    let summary = verify_audit_log(&audit, &AuditVerifyOptions::default()).unwrap();
    assert_eq!(summary.records as usize, log.lines().count());
    assert_eq!(
        summary.unsigned_records(),
        0,
        "the clean stop signed the log"
    );
}

#[test]
fn demo_shows_detection_audit_and_metrics_on_the_mock() {
    let out = vramctl().arg("demo").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("backend: mock") && first.contains("not VRAM"),
        "{first}"
    );
    for needle in [
        "safetensors, 3 tensors, 5.00 MiB of parameters",
        "3. verified",
        "engine computed on the lent weights, verified before and after its work: byte sum",
        "verification FAILED as it must: integrity violation",
        "\"event\":\"SealVerificationFailed\"",
        "\"severity\":\"critical\"",
        "vram_verify_operations_total{gpu_device=\"0\",result=\"failure\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let json = vramctl().args(["--json", "demo"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["backend"], "mock");
    assert_eq!(v["metrics"]["verifications_failed"], 1);
    assert_eq!(v["audit_record"]["severity"], "critical");
    // RFC 3339 beside the epoch numbers, the same instant.
    let parsed = |field: &serde_json::Value| {
        humantime::parse_rfc3339(field.as_str().unwrap())
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    };
    let record_time = parsed(&v["audit_record"]["time"]);
    assert_eq!(
        u64::try_from(record_time.as_millis()).unwrap(),
        v["audit_record"]["timestamp_ms"].as_u64().unwrap()
    );
    let sealed_at = parsed(&v["shard"]["sealed_at"]);
    assert_eq!(
        sealed_at.as_secs(),
        v["shard"]["sealed_at_unix_secs"].as_u64().unwrap()
    );
    assert_eq!(
        sealed_at.subsec_millis(),
        u32::try_from(v["shard"]["sealed_at_nanos"].as_u64().unwrap() / 1_000_000).unwrap()
    );
}

#[test]
fn trace_logging_times_each_step_of_a_seal_and_a_verification() {
    let out = vramctl()
        .args(["-vvv", "--backend", "mock", "bench", "--size", "4KiB"])
        .args(["--algorithm", "blake3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    // Plain text (stderr is not a terminal here); escape sequences dropped all the same.
    let log: String = String::from_utf8_lossy(&out.stderr)
        .split('\u{1b}')
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.split_once('m').map_or(part, |(_, rest)| rest)
            }
        })
        .collect();
    for step in [
        "plan",
        "allocate",
        "upload",
        "digest",
        "check and sign",
        "register",
        "check fields",
        "record",
    ] {
        let timed = log.lines().any(|l| {
            l.contains(&format!("step{{name=\"{step}\"}}: ")) && l.contains("close time.busy=")
        });
        assert!(timed, "no timed step \"{step}\" in:\n{log}");
    }
    // Below trace no step is timed.
    let out = vramctl()
        .args(["-vv", "--backend", "mock", "bench", "--size", "4KiB"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("time.busy"));
}

#[test]
fn bench_prints_both_paths_and_the_ratio() {
    let out = vramctl()
        .args(["bench", "--size", "1MiB,8MiB,64GiB"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "backend: mock",
        "seal naive",
        "verify ours",
        " 1.00 MiB sha256-tree-65536 |",
        " 1.00 MiB            blake3 |",
        " 8.00 MiB sha256-tree-65536 |",
        " 8.00 MiB            blake3 |",
        "skipping 64.00 GiB: needs",
    ] {
        assert!(text.contains(needle), "{text}");
    }
    let json = vramctl()
        .args(["--json", "bench", "--size", "4MiB", "--cross-check"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["cross_check"], true);
    let row = &v["rows"][0];
    assert_eq!(row["size"], 4 << 20);
    assert_eq!(row["algorithm"], "sha256-tree-65536");
    assert_eq!(v["rows"][1]["algorithm"], "blake3");
    assert!(
        row["seal_speedup"].as_f64().unwrap() > 0.0
            && row["naive_verify_s"].as_f64().unwrap() > 0.0
    );
    for bad in ["0", "18446744073709551615", "200GB", "lots"] {
        let out = vramctl().args(["bench", "--size", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "--size {bad}");
    }
    let out = vramctl()
        .args(["bench", "--algorithm", "md5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn quiet_keeps_results_only() {
    let dir = TempDir::new().unwrap();
    let abc = write(&dir, "abc.bin", b"abc");
    let out = vramctl()
        .args(["--quiet", "digest"])
        .arg(&abc)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(out.stderr.is_empty());
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    // `vramctl demo | head -1`: the reader goes away after one line.
    let mut child = Command::new(cargo_bin("vramctl"))
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("backend: mock"));
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn seal_group_places_a_sharded_model_as_one_group_and_releases_it_on_sigterm() {
    let dir = TempDir::new().unwrap();
    let first = write(&dir, "model-00001-of-00002.bin", &vec![1u8; 3 << 20]);
    let second = write(&dir, "model-00002-of-00002.bin", &vec![2u8; 3 << 20]);
    let audit = dir.path().join("audit.jsonl");
    let mut child = Command::new(cargo_bin("vramctl"))
        .args([
            "--json",
            "--backend",
            "mock",
            "seal",
            "--group",
            "llama",
            "--devices",
            "0",
        ])
        .args([
            "--verify-every",
            "1",
            "--audit-summary-every",
            "1",
            "--audit-log",
        ])
        .arg(&audit)
        .arg(&first)
        .arg(&second)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events: Vec<serde_json::Value> = Vec::new();
    while !events.iter().any(|e| e["event"] == "group_sealed") {
        let line = lines.next().expect("vramctl exited early").unwrap();
        events.push(serde_json::from_str(&line).unwrap());
    }
    let group = events
        .iter()
        .find(|e| e["event"] == "group_sealed")
        .unwrap();
    assert_eq!(group["shards"], 2);
    assert_eq!(group["group_seal"].as_str().unwrap().len(), 64);
    let ids: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "sealed")
        .map(|e| e["shard"]["shard_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["llama:tp0", "llama:tp1"]);
    // Let it re-verify the group at least once, then stop it.
    poll("a group verification", || {
        let log = std::fs::read_to_string(&audit).unwrap();
        log.contains("\"event\":\"VerificationSummary\"")
            .then_some(())
    });
    let rest = stop_with_sigterm(child, lines);
    assert!(
        rest.iter()
            .any(|l| l.contains("\"event\":\"released\"") && l.contains("\"shards\":2")),
        "{rest:?}"
    );
    let log = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(log.matches("\"group_id\":\"llama\"").count(), 2, "{log}");
    assert_eq!(
        log.matches("\"event\":\"VramDeallocated\"").count(),
        2,
        "{log}"
    );
    // --devices without --group is refused.
    let out = vramctl()
        .args(["--backend", "mock", "seal", "--devices", "0"])
        .arg(&first)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

type StdoutLines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// `vramctl ARGS` running in `dir`, no worker token in its environment, stdout piped and
/// stderr discarded (use `Command` directly to read stderr).
fn spawn_vramctl(dir: &Path, args: &[&std::ffi::OsStr]) -> (std::process::Child, StdoutLines) {
    let mut child = Command::new(cargo_bin("vramctl"))
        .current_dir(dir)
        .env_remove("VRAM_WORKER_TOKEN")
        .env_remove("VRAMCTL_TOKEN_FILE")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// Stdout lines up to and including the first that `until` accepts.
fn read_until(lines: &mut StdoutLines, until: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = lines.next().expect("vramctl exited early").unwrap();
        let done = until(&line);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

/// The first JSON document on stdout whose `event` is `event`.
fn read_event(lines: &mut StdoutLines, event: &str) -> serde_json::Value {
    let line = read_until(lines, |l| l.contains(&format!("\"event\":\"{event}\"")));
    serde_json::from_str(line.last().unwrap()).unwrap()
}

/// `vramctl --backend mock seal FILE --audit-log LOG` (plus `extra`), stopped with SIGTERM once
/// it reports the shard resident; returns its stdout lines and stderr.
fn seal_until_sigterm(file: &Path, log: &Path, extra: &[&str]) -> (Vec<String>, String) {
    let mut child = Command::new(cargo_bin("vramctl"))
        .env_remove("VRAM_WORKER_TOKEN")
        .env_remove("VRAMCTL_TOKEN_FILE")
        .args(["--backend", "mock", "seal", "--verify-every", "1"])
        .arg("--audit-log")
        .arg(log)
        .args(extra)
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = read_until(&mut lines, |l| l.contains("resident"));
    seen.extend(stop_with_sigterm(child, lines));
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    (seen, err)
}

#[test]
fn audit_logs_are_signed_with_the_token_key_and_verified_by_vramctl() {
    let dir = TempDir::new().unwrap();
    let model = write(&dir, "m.bin", &pattern(4096));
    let token = write(&dir, "token", b"worker-token-for-the-audit-test\n");
    let log = dir.path().join("audit.jsonl");
    let token_arg = ["--token-file", token.to_str().unwrap()];
    let (out, err) = seal_until_sigterm(&model, &log, &token_arg);
    let key_line = out.iter().find(|l| l.contains("audit key")).unwrap();
    let public_key = key_line.split_whitespace().last().unwrap().to_owned();
    assert_eq!(public_key.len(), 64, "{key_line}");
    let checkpoint_in = |err: &str| {
        err.lines()
            .find_map(|l| {
                l.split(": ")
                    .last()
                    .filter(|c| c.starts_with("vram-audit-checkpoint/v1"))
            })
            .unwrap_or_else(|| panic!("no checkpoint on stderr:\n{err}"))
            .to_owned()
    };
    checkpoint_in(&err);
    // The same token gives the same key in a later run, which continues the log.
    let (again, err) = seal_until_sigterm(&model, &log, &token_arg);
    assert!(again.iter().any(|l| l.contains(&public_key)), "{again:?}");
    let checkpoint = checkpoint_in(&err);

    let verify = |args: &[&str]| {
        vramctl()
            .args(["audit", "verify"])
            .arg(&log)
            .args(args)
            .output()
            .unwrap()
    };
    for pin in [&token_arg[..], &["--public-key", &public_key]] {
        let ok = verify(pin);
        assert_eq!(
            ok.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(String::from_utf8_lossy(&ok.stdout).contains("(pinned)"));
    }
    assert_eq!(
        verify(&["--checkpoint", &checkpoint]).status.code(),
        Some(0)
    );
    let unpinned = verify(&[]);
    assert!(String::from_utf8_lossy(&unpinned.stdout).contains("NOT pinned"));
    // Another token's key: refused.
    let other = write(&dir, "other", b"another-worker-token-0123456789");
    let wrong = verify(&["--token-file", other.to_str().unwrap()]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(stderr_one_line(&wrong).contains("line 1"));
    assert!(stderr_one_line(&wrong).contains("check that this is the token that wrote the log"));
    // The right token under another worker id (issue 33): the hint names the log's worker id.
    let token_arg = token.to_str().unwrap();
    let other_id = verify(&["--token-file", token_arg, "--worker-id", "worker-7"]);
    assert_eq!(other_id.status.code(), Some(1));
    assert!(
        stderr_one_line(&other_id).contains("pass --worker-id vramctl"),
        "{}",
        stderr_one_line(&other_id)
    );

    let original = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    // A record deleted: the line after it is named.
    let mut deleted = lines.clone();
    deleted.remove(3);
    std::fs::write(&log, deleted.join("\n") + "\n").unwrap();
    let broken = verify(&["--public-key", &public_key]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        stderr_one_line(&broken).contains("line 4"),
        "{}",
        stderr_one_line(&broken)
    );
    // CRLF line endings, an edited last line, a duplicated key: each named.
    let crlf = original.replace('\n', "\r\n");
    let edited_last = original
        .trim_end()
        .rsplit_once('\n')
        .map(|(head, last)| {
            format!(
                "{head}\n{}\n",
                last.replacen("\"signature\":\"", "\"signature\":\"0", 1)
            )
        })
        .unwrap();
    let duplicated = original.replacen("\"seq\":1,", "\"seq\":1,\"seq\":1,", 1);
    for (tampered, needle) in [
        (crlf, "line 1: carriage return"),
        (
            edited_last,
            &format!("line {}: checkpoint", lines.len()) as &str,
        ),
        (duplicated, "line 2: not an audit record"),
    ] {
        std::fs::write(&log, tampered).unwrap();
        let out = verify(&["--public-key", &public_key]);
        assert_eq!(out.status.code(), Some(1));
        let line = stderr_one_line(&out);
        assert!(line.contains(needle), "{line}");
    }
    // The tail cut back to an earlier checkpoint: only the kept checkpoint shows it.
    let earlier = lines[..lines.len() - 1]
        .iter()
        .rposition(|l| l.contains("AuditCheckpoint"))
        .unwrap();
    std::fs::write(&log, lines[..=earlier].join("\n") + "\n").unwrap();
    assert_eq!(
        verify(&["--public-key", &public_key]).status.code(),
        Some(0)
    );
    let cut = verify(&["--public-key", &public_key, "--checkpoint", &checkpoint]);
    assert_eq!(cut.status.code(), Some(1));
    assert!(stderr_one_line(&cut).contains("cut from the end"));
    // A record appended by someone else is unsigned: refused unless asked to allow it.
    std::fs::write(
        &log,
        original.clone()
            + &lines[3].replace("\"seq\":3", &format!("\"seq\":{}", lines.len()))
            + "\n",
    )
    .unwrap();
    assert_eq!(
        verify(&["--public-key", &public_key]).status.code(),
        Some(1)
    );
    std::fs::write(&log, &original).unwrap();
    assert_eq!(
        verify(&["--public-key", &public_key]).status.code(),
        Some(0)
    );
}

#[test]
fn the_audit_log_must_be_a_regular_file_with_one_writer() {
    let dir = TempDir::new().unwrap();
    let model = write(&dir, "m.bin", &pattern(4096));
    let fifo = dir.path().join("fifo");
    let have_fifo = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    let mut special: Vec<PathBuf> = vec!["/dev/zero".into(), "/dev/full".into(), dir.path().into()];
    if have_fifo {
        special.push(fifo);
    }
    for path in special {
        let out = vramctl()
            .args(["--backend", "mock", "seal", "--audit-log"])
            .arg(&path)
            .arg(&model)
            .timeout(Duration::from_secs(20))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        assert!(
            stderr_one_line(&out).contains("not a regular file"),
            "{}",
            path.display()
        );
        let verify = vramctl()
            .args(["audit", "verify"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(verify.status.code(), Some(2));
    }
    // A second writer on a log in use is refused at start.
    let log = dir.path().join("audit.jsonl");
    let (first, mut lines) = spawn_vramctl(
        dir.path(),
        &[
            "--backend".as_ref(),
            "mock".as_ref(),
            "seal".as_ref(),
            "--audit-log".as_ref(),
            log.as_os_str(),
            model.as_os_str(),
        ],
    );
    read_until(&mut lines, |l| l.contains("resident"));
    let second = vramctl()
        .args(["--backend", "mock", "seal", "--audit-log"])
        .arg(&log)
        .arg(&model)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(stderr_one_line(&second).contains("locked by another writer"));
    stop_with_sigterm(first, lines);
    assert_eq!(
        vramctl()
            .args(["audit", "verify"])
            .arg(&log)
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn a_full_disk_under_the_audit_log_is_exit_4_not_silence() {
    // An 8 KiB tmpfs, half filled, in a user and mount namespace; skipped (with the reason) where
    // unprivileged namespaces are not allowed.
    let dir = TempDir::new().unwrap();
    let model = write(&dir, "m.bin", &pattern(4096));
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=8k tmpfs {mnt} && head -c 4096 /dev/zero > {mnt}/filler && \
         exec {bin} --backend mock seal --verify-every 1 --audit-summary-every 1 --audit-log {mnt}/audit.jsonl {model}",
        mnt = mnt.display(),
        bin = cargo_bin("vramctl").display(),
        model = model.display()
    );
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipping: unprivileged user and mount namespaces are not available here");
        return;
    }
    let mut child = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .env_remove("VRAM_WORKER_TOKEN")
        .env_remove("VRAMCTL_TOKEN_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The refused verification is reported at once; the process keeps serving until SIGTERM.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut err = String::new();
    while !err.contains("refused from now on") {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "vramctl exited early:\n{err}"
        );
        err.push_str(&line);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running after the failure"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    stderr.read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(
        err.contains("could not be recorded") || err.contains("could not be stored"),
        "{err}"
    );
    assert!(
        err.contains("No space left") || err.contains("disk full") || err.contains("short write"),
        "{err}"
    );
}

#[test]
fn bench_skips_a_size_the_host_memory_cannot_hold_before_allocating() {
    // 90 GB on the mock takes 270 GB of host memory at its peak (sample, simulated VRAM, the
    // naive path's copies); with overcommit it used to be allocated and the process killed.
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    if available.is_none_or(|a| a > 270_000_000_000) {
        eprintln!("skipped: this machine could hold the run ({available:?} bytes available)");
        return;
    }
    let out = vramctl()
        .args([
            "--backend",
            "mock",
            "--mock-capacity",
            "200GB",
            "bench",
            "--size",
            "1MiB,90GB",
        ])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("skipping 83.82 GiB: needs 251.46 GiB of host memory (3 copies at its peak)"),
        "{text}"
    );
    assert!(text.contains(" 1.00 MiB sha256-tree-65536 |"), "{text}");
}

#[test]
fn blake3_lines_are_b3sums_and_seal_checks_blake3_expectations() {
    let dir = TempDir::new().unwrap();
    write(&dir, "abc.bin", b"abc");
    write(&dir, "big.bin", &pattern(1_048_577));
    // BLAKE3("abc") and BLAKE3(pattern:1048577), from the reference implementation.
    let abc = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85";
    let big = include_str!("../../vram-seal/tests/data/digest_vectors.txt")
        .lines()
        .find_map(|l| l.strip_prefix("blake3-mib-plus-one pattern:1048577 blake3 "))
        .unwrap()
        .to_owned();
    let run_in = |args: &[&str]| {
        vramctl()
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run_in(&["digest", "--algorithm", "blake3", "abc.bin", "big.bin"]);
    assert!(out.status.success());
    let want = format!("{abc}  abc.bin\n{big}  big.bin\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    match Command::new("b3sum")
        .current_dir(dir.path())
        .args(["abc.bin", "big.bin"])
        .output()
        .ok()
        .filter(|o| o.status.success())
    {
        Some(b3sum) => assert_eq!(out.stdout, b3sum.stdout, "byte for byte as b3sum"),
        None => eprintln!("b3sum is not installed: the comparison with it is skipped"),
    }
    // A b3sum manifest checks with --algorithm blake3 (bare hex is SHA-256 otherwise).
    std::fs::write(dir.path().join("m.b3"), &out.stdout).unwrap();
    let ok = run_in(&["digest", "-c", "m.b3", "--algorithm", "blake3"]);
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(ok.stdout, b"abc.bin: OK\nbig.bin: OK\n");
    let as_sha = run_in(&["digest", "-c", "m.b3"]);
    assert_eq!(as_sha.status.code(), Some(1));
    // --expect blake3:HEX: checked on the bytes sealed; a wrong one releases and names both.
    let wrong = run_in(&[
        "--backend",
        "mock",
        "seal",
        "--expect",
        &format!("blake3:{}", "ab".repeat(32)),
        "big.bin",
    ]);
    assert_eq!(wrong.status.code(), Some(1));
    let err = stderr_one_line(&wrong);
    assert!(
        err.contains(&format!("digest blake3:{big} differs")),
        "{err}"
    );
}

/// A copy of the fixture `model_signing` made (`tests/data/model-signing/make.py`).
fn signed_model() -> TempDir {
    let dir = TempDir::new().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/model-signing");
    std::fs::create_dir(dir.path().join("model")).unwrap();
    for name in [
        "model.blake3.sig",
        "model.sha256.sig",
        "model.cert.sig",
        "pub.pem",
        "ca.pem",
        "other-ca.pem",
        "model/weights.bin",
        "model/config.json",
    ] {
        std::fs::copy(from.join(name), dir.path().join(name)).unwrap();
    }
    dir
}

/// Runs `vramctl --backend mock --json seal ARGS` in `dir` until it reports one shard sealed
/// (then SIGTERM), or to its end when it refuses; returns (exit code when refused, stdout,
/// stderr).
fn seal_signed(dir: &Path, args: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let mut child = Command::new(cargo_bin("vramctl"))
        .current_dir(dir)
        .env_remove("VRAM_WORKER_TOKEN")
        .env_remove("VRAMCTL_TOKEN_FILE")
        .args(["--backend", "mock", "--json", "seal"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut resident = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        resident = line.contains("\"event\":\"sealed\"");
        seen.push(line);
        if resident {
            break;
        }
    }
    let code = if resident {
        seen.extend(stop_with_sigterm(child, lines));
        None
    } else {
        child.wait().unwrap().code()
    };
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    (code, seen, err)
}

/// Issue 33: a model-signing bundle's signature is checked (key- and certificate-signed, as
/// `model_signing sign` writes them) before any digest it lists is trusted; a forged or
/// unsigned statement is refused; one trusted unchecked says so in --json and the audit log.
#[test]
fn a_model_signing_bundle_gives_each_file_its_signed_digest_checked_in_vram() {
    let dir = signed_model();
    let d = dir.path();
    let key = ["--signature-key", "pub.pem"];
    let seal = |bundle: &str, trust: &[&str], file: &str| {
        let mut args = vec!["--signed-manifest", bundle];
        args.extend_from_slice(trust);
        args.push(file);
        seal_signed(d, &args)
    };
    // No trust given: refused before anything is read.
    let (code, _, err) = seal("model.blake3.sig", &[], "model/weights.bin");
    assert_eq!(code, Some(2));
    assert!(err.contains("its signature must be checked"), "{err}");
    // A file the bundle does not list is refused before anything is sealed.
    std::fs::write(d.join("model/extra.bin"), b"unsigned").unwrap();
    let (code, _, err) = seal("model.blake3.sig", &key, "model/extra.bin");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("not among the 2 file(s) the signed manifest"),
        "{err}"
    );
    // A byte changed after signing: the signature holds, the bytes in VRAM do not.
    let mut weights = std::fs::read(d.join("model/weights.bin")).unwrap();
    weights[4000] ^= 1;
    std::fs::write(d.join("model/weights.bin"), &weights).unwrap();
    for (bundle, alg) in [
        ("model.blake3.sig", "blake3"),
        ("model.sha256.sig", "sha256"),
    ] {
        let (code, _, err) = seal(bundle, &key, "model/weights.bin");
        assert_eq!(code, Some(1), "{bundle}: {err}");
        assert!(
            err.contains(&format!("differs from the signed manifest {alg}:")),
            "{err}"
        );
    }
    weights[4000] ^= 1;
    std::fs::write(d.join("model/weights.bin"), &weights).unwrap();
    // Not a bundle.
    let (code, _, err) = seal("model/config.json", &key, "model/weights.bin");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a model-signing bundle"), "{err}");

    // A forged statement (the weights' digest replaced by that of other bytes, the signature
    // kept) and a bundle with no signature: refused, nothing sealed.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("model.blake3.sig")).unwrap()).unwrap();
    let statement = b64
        .decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    let signed_hex =
        vram_residency::compute_digest(&weights, vram_residency::DigestAlgorithm::Blake3).to_hex();
    let other_hex =
        vram_residency::compute_digest(b"other", vram_residency::DigestAlgorithm::Blake3).to_hex();
    let forged = String::from_utf8(statement)
        .unwrap()
        .replace(&signed_hex, &other_hex);
    bundle["dsseEnvelope"]["payload"] = b64.encode(forged).into();
    std::fs::write(d.join("forged.sig"), bundle.to_string()).unwrap();
    bundle["dsseEnvelope"]["signatures"] = serde_json::json!([]);
    std::fs::write(d.join("unsigned.sig"), bundle.to_string()).unwrap();
    for (name, says) in [
        ("forged.sig", "no signature verifies"),
        ("unsigned.sig", "no signature"),
    ] {
        let (code, out, err) = seal(name, &key, "model/weights.bin");
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(
            err.contains("signature not accepted") && err.contains(says),
            "{err}"
        );
        assert!(
            !out.iter().any(|l| l.contains("\"event\":\"sealed\"")),
            "{out:?}"
        );
    }
    // A certificate-signed bundle: verified against its CA, refused against another one.
    let (code, _, err) = seal(
        "model.cert.sig",
        &["--signature-roots", "other-ca.pem"],
        "model/weights.bin",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("certificate chain"), "{err}");
    let (code, out, _) = seal(
        "model.cert.sig",
        &["--signature-roots", "ca.pem"],
        "model/weights.bin",
    );
    assert_eq!(code, None, "{out:?}");
    let signature = out
        .iter()
        .find(|l| l.contains("\"event\":\"signature\""))
        .unwrap();
    let signature: serde_json::Value = serde_json::from_str(signature).unwrap();
    assert_eq!(signature["verified"], true);
    assert!(
        signature["signer"]
            .as_str()
            .unwrap()
            .contains("CN=model signer")
    );

    // The signed bytes, sealed in the manifest's algorithm: the seal's digest is the signed
    // BLAKE3 itself, so every re-verification recomputes the signed digest. The model directory
    // is matched canonically (`./model`, an absolute path).
    let absolute = d.join("model");
    for model_dir in ["./model", absolute.to_str().unwrap()] {
        let (code, out, _) = seal_signed(
            d,
            &[
                "--signed-manifest",
                "model.blake3.sig",
                "--signature-key",
                "pub.pem",
                "--model-dir",
                model_dir,
                "model/weights.bin",
            ],
        );
        assert_eq!(code, None, "{model_dir}: {out:?}");
        let sealed = out
            .iter()
            .find(|l| l.contains("\"event\":\"sealed\""))
            .unwrap();
        assert!(sealed.contains(&signed_hex), "{sealed}");
        assert!(sealed.contains("\"blake3\""), "{sealed}");
    }

    // Trusted unchecked, on the operator's word: said in --json and in the audit record.
    let log = d.join("audit.jsonl");
    let (code, out, err) = seal_signed(
        d,
        &[
            "--signed-manifest",
            "model.blake3.sig",
            "--trust-unverified-signature",
            "--audit-log",
            log.to_str().unwrap(),
            "model/weights.bin",
        ],
    );
    assert_eq!(code, None, "{err}");
    assert!(err.contains("signature is NOT checked"), "{err}");
    let signature = out
        .iter()
        .find(|l| l.contains("\"event\":\"signature\""))
        .unwrap();
    assert!(signature.contains("\"verified\":false"), "{signature}");
    let audit = std::fs::read_to_string(&log).unwrap();
    let sealed = audit
        .lines()
        .find(|l| l.contains("\"event\":\"VramSealed\""))
        .unwrap();
    assert!(
        sealed.contains("\"expected_from\":\"unverified-signed-manifest\""),
        "{sealed}"
    );

    // An explicit --algorithm wins: the signed digest is then checked once, at the seal.
    let (code, out, _) = seal_signed(
        d,
        &[
            "--algorithm",
            "sha256-tree-65536",
            "--signed-manifest",
            "model.blake3.sig",
            "--signature-key",
            "pub.pem",
            "--model-dir",
            "model",
            "model/weights.bin",
        ],
    );
    assert_eq!(code, None);
    let sealed = out
        .iter()
        .find(|l| l.contains("\"event\":\"sealed\""))
        .unwrap();
    assert!(
        sealed.contains("sha256-tree-65536") && !sealed.contains(&signed_hex),
        "{sealed}"
    );
}

#[test]
fn too_many_open_files_names_the_open_file_limit() {
    let dir = TempDir::new().unwrap();
    write(&dir, "x.bin", b"x");
    let manifest = vramctl()
        .current_dir(dir.path())
        .args(["digest", "x.bin"])
        .output()
        .unwrap();
    std::fs::write(dir.path().join("m.manifest"), &manifest.stdout).unwrap();
    // Four descriptors: the standard three and the manifest; the listed file gets EMFILE.
    let bin = cargo_bin("vramctl");
    let out = Command::new("sh")
        .current_dir(dir.path())
        .arg("-c")
        .arg(format!(
            "ulimit -n 4 && exec '{}' digest -c m.manifest",
            bin.display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("error while loading shared libraries") {
        eprintln!("skipped: this system's loader needs more than four descriptors: {err}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(out.stdout, b"x.bin: FAILED open or read\n");
    // Was: "cannot be read (Too many open files ...); check the file".
    assert!(
        err.contains("raise the open-file limit (`ulimit -n`, or LimitNOFILE="),
        "{err}"
    );
}

#[test]
fn names_that_are_not_utf8_round_trip_as_with_sha256sum() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = TempDir::new().unwrap();
    let name = OsStr::from_bytes(b"caf\xe9.bin"); // Latin-1: not UTF-8
    std::fs::write(dir.path().join(name), b"latin-1 name").unwrap();
    let run_in = |args: &[&OsStr]| {
        vramctl()
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    // Written as its bytes, as sha256sum writes it (was: lossily, so the line failed -c).
    let flat = run_in(&[OsStr::new("digest"), OsStr::new("--flat"), name]);
    assert!(flat.status.success());
    let hex =
        vram_residency::compute_digest(b"latin-1 name", vram_residency::DigestAlgorithm::Sha256);
    let want = [hex.to_hex().as_bytes(), b"  caf\xe9.bin\n"].concat();
    assert_eq!(flat.stdout, want);
    if let Some(reference) = Command::new("sha256sum")
        .current_dir(dir.path())
        .arg(name)
        .output()
        .ok()
        .filter(|o| o.status.success())
    {
        assert_eq!(flat.stdout, reference.stdout);
    }
    // Its own output and a tree manifest check (was: the manifest refused whole).
    std::fs::write(dir.path().join("flat.sha256"), &flat.stdout).unwrap();
    let tree = run_in(&[OsStr::new("digest"), name]);
    std::fs::write(dir.path().join("tree.manifest"), &tree.stdout).unwrap();
    for manifest in ["flat.sha256", "tree.manifest"] {
        let ok = run_in(&[OsStr::new("digest"), OsStr::new("-c"), OsStr::new(manifest)]);
        assert_eq!(
            ok.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert_eq!(ok.stdout, b"caf\xe9.bin: OK\n");
    }
    if let Some(reference) = Command::new("sha256sum")
        .current_dir(dir.path())
        .args(["-c", "flat.sha256"])
        .output()
        .ok()
        .filter(|o| o.status.success())
    {
        assert_eq!(reference.stdout, b"caf\xe9.bin: OK\n");
    }
    // And seal reads such a manifest (was: refused whole): the name leads to the file, whose
    // bytes are sealed and compared (a wrong digest here, so that the command ends).
    let wrong = [&b"ab".repeat(32)[..], b"  caf\xe9.bin\n"].concat();
    std::fs::write(dir.path().join("wrong.sha256"), wrong).unwrap();
    let sealed = vramctl()
        .current_dir(dir.path())
        .args(["--backend", "mock", "seal", "--manifest", "wrong.sha256"])
        .output()
        .unwrap();
    assert_eq!(sealed.status.code(), Some(1));
    assert!(
        stderr_one_line(&sealed).contains("differs from the manifest"),
        "{}",
        stderr_one_line(&sealed)
    );
}

#[test]
fn digests_stand_alone_and_manifests_check_like_sha256sum() {
    let dir = TempDir::new().unwrap();
    let abc = write(&dir, "abc.bin", b"abc");
    let odd = write(&dir, "we\\ird.bin", &pattern(70_000));
    write(&dir, "new\nline.bin", b"x");
    let run_in = |args: &[&str]| {
        vramctl()
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    // Many files; flat lines exactly as sha256sum writes them (escaped name included).
    let names = ["abc.bin", "we\\ird.bin", "new\nline.bin"];
    let flat = run_in(&[&["digest", "--flat"][..], &names].concat());
    assert!(flat.status.success());
    let sha256sum = Command::new("sha256sum")
        .current_dir(dir.path())
        .args(names)
        .output();
    if let Some(reference) = sha256sum.ok().filter(|o| o.status.success()) {
        assert_eq!(flat.stdout, reference.stdout);
    }
    std::fs::write(dir.path().join("flat.sha256"), &flat.stdout).unwrap();
    // Tree lines carry their algorithm, so sha256sum cannot take them for flat digests.
    let tree = run_in(&[&["digest"][..], &names].concat());
    let text = String::from_utf8(tree.stdout.clone()).unwrap();
    assert!(text.starts_with("sha256-tree-65536:"), "{text}");
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .starts_with("\\sha256-tree-65536:"),
        "{text}"
    );
    std::fs::write(dir.path().join("tree.manifest"), &tree.stdout).unwrap();
    if let Ok(o) = Command::new("sha256sum")
        .current_dir(dir.path())
        .args(["-c", "tree.manifest"])
        .output()
    {
        assert!(
            !o.status.success(),
            "sha256sum must not accept a tree digest line"
        );
    }
    // --check: both kinds of line, sha256sum's output and exit codes.
    for manifest in ["flat.sha256", "tree.manifest"] {
        let ok = run_in(&["digest", "--check", manifest]);
        assert_eq!(
            ok.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        // As coreutils 9 prints checked names: escaped only when they hold a line break.
        assert_eq!(
            String::from_utf8_lossy(&ok.stdout),
            "abc.bin: OK\nwe\\ird.bin: OK\n\\new\\nline.bin: OK\n"
        );
    }
    let coreutils = Command::new("sha256sum")
        .current_dir(dir.path())
        .args(["-c", "flat.sha256"])
        .output();
    if let Some(reference) = coreutils.ok().filter(|o| o.status.success()) {
        let ours = run_in(&["digest", "-c", "flat.sha256"]);
        assert_eq!(
            String::from_utf8_lossy(&ours.stdout),
            String::from_utf8_lossy(&reference.stdout),
            "byte for byte as sha256sum -c"
        );
    }
    std::fs::write(&abc, b"abd").unwrap();
    std::fs::remove_file(&odd).unwrap();
    let failed = run_in(&["digest", "-c", "tree.manifest"]);
    assert_eq!(failed.status.code(), Some(1));
    let out = String::from_utf8_lossy(&failed.stdout);
    assert!(
        out.contains("abc.bin: FAILED\n") && out.contains("ird.bin: FAILED open or read"),
        "{out}"
    );
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        err.contains("WARNING: 1 computed checksum did NOT match"),
        "{err}"
    );
    assert!(
        err.contains("WARNING: 1 listed file could not be read"),
        "{err}"
    );
    std::fs::write(dir.path().join("junk"), "not a manifest\n").unwrap();
    assert_eq!(run_in(&["digest", "-c", "junk"]).status.code(), Some(1));
    // Issue 22: a malformed line beside good ones is skipped (exit 0, as sha256sum) unless
    // --strict (exit 1); --json names the line that went unchecked.
    let good = String::from_utf8(run_in(&["digest", "--flat", "abc.bin"]).stdout).unwrap();
    std::fs::write(dir.path().join("mixed"), format!("{good}not a line\n")).unwrap();
    assert_eq!(run_in(&["digest", "-c", "mixed"]).status.code(), Some(0));
    assert_eq!(
        run_in(&["digest", "-c", "mixed", "--strict"]).status.code(),
        Some(1)
    );
    let json = String::from_utf8(run_in(&["--json", "digest", "-c", "mixed"]).stdout).unwrap();
    assert!(
        json.contains(r#"{"line":2,"result":"improperly formatted"}"#),
        "{json}"
    );
    // Standard input.
    let stdin = vramctl()
        .args(["digest", "--flat", "-"])
        .write_stdin("abc")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&stdin.stdout),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  -\n"
    );
}

#[test]
fn expected_digests_name_their_algorithm_and_flat_ones_get_a_hint() {
    let dir = TempDir::new().unwrap();
    let abc = write(&dir, "abc.bin", b"abc");
    let flat = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    // A bare value is the tree digest; the file's flat SHA-256 there gets a hint.
    let out = vramctl()
        .args(["--backend", "mock", "seal", "--expect", flat])
        .arg(&abc)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_one_line(&out).contains(&format!("write --expect sha256:{flat}")),
        "{}",
        stderr_one_line(&out)
    );
    // `SHA256:` and `sha256-tree-65536:` prefixes are accepted (the seal itself then runs
    // until SIGTERM: checked through the audit-free JSON events).
    for expect in [
        format!("SHA256:{flat}"),
        "sha256-tree-65536:2d4c4b2d34a7d3711a5b36433106a88f2000c10b13a979e2bc503c4479fc3de4"
            .to_owned(),
    ] {
        let log = dir.path().join(format!("a-{}.jsonl", expect.len()));
        let (out, _) = seal_until_sigterm(&abc, &log, &["--expect", &expect]);
        assert!(out.iter().any(|l| l.starts_with("sealed ")), "{out:?}");
    }
}

#[test]
fn files_with_one_base_name_in_two_directories_are_two_shards() {
    let dir = TempDir::new().unwrap();
    for sub in ["a", "b"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::fs::write(dir.path().join(sub).join("model.bin"), sub.repeat(100)).unwrap();
    }
    let args =
        ["--backend", "mock", "seal", "a/model.bin", "./b/model.bin"].map(std::ffi::OsStr::new);
    let (child, mut lines) = spawn_vramctl(dir.path(), &args);
    let sealed: Vec<String> = read_until(&mut lines, |l| l.contains("resident"))
        .into_iter()
        .filter(|l| l.starts_with("sealed "))
        .collect();
    stop_with_sigterm(child, lines);
    assert!(sealed[0].contains("as a_model.bin "), "{sealed:?}");
    assert!(sealed[1].contains("as b_model.bin "), "{sealed:?}");
    // The same file twice is refused before anything is sealed.
    let twice = vramctl()
        .current_dir(dir.path())
        .args(["--backend", "mock", "seal", "a/model.bin", "./a/model.bin"])
        .output()
        .unwrap();
    assert_eq!(twice.status.code(), Some(2));
    assert!(stderr_one_line(&twice).contains("give each file once"));
}

#[test]
fn seal_takes_a_manifest_checks_every_line_then_seals_the_directory() {
    let dir = TempDir::new().unwrap();
    let shards = dir.path().join("shards");
    std::fs::create_dir(&shards).unwrap();
    std::fs::write(shards.join("a.bin"), pattern(300_000)).unwrap();
    std::fs::write(shards.join("b.bin"), b"abc").unwrap();
    // A tree line as `vramctl digest` writes it and a flat line as `sha256sum` writes it, both
    // with names relative to the manifest's directory.
    let tree = vramctl()
        .current_dir(&shards)
        .args(["digest", "a.bin"])
        .output()
        .unwrap();
    assert!(tree.status.success());
    let flat_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let manifest = shards.join("SHA256SUMS");
    let good = format!(
        "{}{flat_abc}  ./b.bin\n",
        String::from_utf8(tree.stdout).unwrap()
    );
    std::fs::write(&manifest, &good).unwrap();
    let args = [
        "--backend",
        "mock",
        "--json",
        "seal",
        "--manifest",
        "shards/SHA256SUMS",
    ]
    .map(std::ffi::OsStr::new);
    let (child, mut lines) = spawn_vramctl(dir.path(), &args);
    let first = read_event(&mut lines, "sealed");
    let second = read_event(&mut lines, "sealed");
    stop_with_sigterm(child, lines);
    assert_eq!(first["shard"]["shard_id"], "shards_a.bin");
    assert_eq!(first["shard"]["vram_bytes"], 300_000);
    assert_eq!(second["shard"]["shard_id"], "shards_b.bin");

    // Every line is checked before anything is sealed: a malformed line, a missing file, an empty manifest, a manifest with files or --expect.
    let audit = dir.path().join("audit.jsonl");
    let token = write(&dir, "token", b"token-of-the-manifest-runs");
    let wrong_flat = good.replace(flat_abc, &"ab".repeat(32));
    let cases: Vec<(&str, String, Vec<&str>, i32, &str)> = vec![
        (
            "malformed",
            format!("{good}not a checksum line\n"),
            vec![],
            2,
            "wrong:3: improperly formatted",
        ),
        (
            "missing",
            format!("{good}{flat_abc}  c.bin\n"),
            vec![],
            2,
            "no such file",
        ),
        ("empty", "\n".to_owned(), vec![], 2, "no checksum lines"),
        (
            "with-files",
            good.clone(),
            vec!["shards/a.bin"],
            2,
            "cannot be used with",
        ),
        (
            "with-expect",
            good.clone(),
            vec!["--expect", flat_abc],
            2,
            "cannot be used with",
        ),
    ];
    for (name, text, extra, code, needle) in cases {
        let path = shards.join(name);
        std::fs::write(&path, text).unwrap();
        let out = vramctl()
            .current_dir(dir.path())
            .args(["--backend", "mock", "seal", "--audit-log"])
            .arg(&audit)
            .arg("--token-file")
            .arg(&token)
            .arg("--manifest")
            .arg(&path)
            .args(&extra)
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: {line}");
        // The malformed case names the manifest it read, whatever the path.
        let needle = needle.replace(
            "wrong:3",
            &format!("{}:3", shards.join("malformed").display()),
        );
        assert!(line.contains(&needle), "{name}: {line}");
    }
    let log = std::fs::read_to_string(&audit).unwrap_or_default();
    assert!(!log.contains("VramSealed"), "nothing was sealed: {log}");

    // A wrong tree digest is caught by the seal itself: what was sealed before it is released.
    let tree_abc = "2d4c4b2d34a7d3711a5b36433106a88f2000c10b13a979e2bc503c4479fc3de4";
    let wrong_tree = format!(
        "sha256-tree-65536:{tree_abc}  b.bin\nsha256-tree-65536:{}  a.bin\n",
        "cd".repeat(32)
    );
    std::fs::write(shards.join("wrong-tree"), wrong_tree).unwrap();
    // So is a wrong flat digest (on the last line): computed from the bytes that reached VRAM,
    // never from a separate read of the file (issue 22, item 5).
    std::fs::write(shards.join("wrong-flat"), wrong_flat).unwrap();
    for (name, needle) in [
        ("wrong-tree", "differs from the manifest"),
        ("wrong-flat", "differs from the manifest sha256:abab"),
    ] {
        let released = dir.path().join(format!("released-{name}.jsonl"));
        let out = vramctl()
            .current_dir(dir.path())
            .args(["--backend", "mock", "seal", "--manifest"])
            .arg(format!("shards/{name}"))
            .arg("--audit-log")
            .arg(&released)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr_one_line(&out));
        let log = std::fs::read_to_string(&released).unwrap();
        assert_eq!(log.matches("\"VramSealed\"").count(), 1, "{name}: {log}");
        assert_eq!(log.matches("\"SealAborted\"").count(), 1, "{name}: {log}");
        assert_eq!(
            log.matches("\"VramDeallocated\"").count(),
            1,
            "{name}: {log}"
        );
        assert!(
            stderr_one_line(&out).contains(needle),
            "{name}: {}",
            stderr_one_line(&out)
        );
    }
}

#[test]
fn broken_and_misplaced_model_files_are_refused_before_any_vram_is_used() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models");
    for (name, needle) in [
        ("truncated.gguf", "partial download"),
        ("header-only.gguf", "partial download"),
        ("bad-type.gguf", "unknown ggml type 99"),
        ("bad-offset.gguf", "starts at data offset 1000000000000"),
        ("lfs-pointer.gguf", "git lfs pull"),
        ("/dev/null", "not a regular file"),
    ] {
        let out = vramctl()
            .args(["--backend", "mock", "seal"])
            .arg(models.join(name))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert!(
            stderr_one_line(&out).contains(needle),
            "{name}: {}",
            stderr_one_line(&out)
        );
        assert!(
            out.stdout.is_empty(),
            "{name}: nothing was sealed, no session was opened"
        );
    }
    // A vocabulary-only GGUF (no tensors, no padding) is a valid file.
    let (child, mut lines) = spawn_vramctl(
        &models,
        &[
            "--json",
            "--backend",
            "mock",
            "seal",
            "vocab-only-unpadded.gguf",
        ]
        .map(std::ffi::OsStr::new),
    );
    let sealed = read_event(&mut lines, "sealed");
    stop_with_sigterm(child, lines);
    assert_eq!(sealed["model"]["format"], "gguf");
    assert_eq!(sealed["model"]["tensors"], 0);
}

/// Runs the official Python Prometheus parsers on both exposition formats; `None` when
/// `prometheus_client` is not installed (`.ci/run` installs it).
fn python_parses(text_0_0_4: &str, openmetrics: &str) -> Option<String> {
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families as text
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
a, b = sys.stdin.read().split("\0")
for name, parse, body in (("0.0.4", text, a), ("openmetrics", om, b)):
    fams = {f.name: f for f in parse(body)}
    for counter in ("vram_seal_operations", "vram_verify_operations", "vram_audit_failures"):
        assert fams[counter].samples, (name, counter, "no samples")
    print(name, len(fams), "families")
"#;
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{text_0_0_4}\0{openmetrics}").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn get(addr: &str, accept: Option<&str>) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[test]
fn metrics_negotiate_their_format_and_parse_with_the_official_parsers() {
    let dir = TempDir::new().unwrap();
    write(&dir, "m.bin", &pattern(4096));
    let args = [
        "--json",
        "--backend",
        "mock",
        "seal",
        "--verify-every",
        "1",
        "--metrics",
        "localhost:0",
        "m.bin",
    ];
    let (child, mut lines) = spawn_vramctl(dir.path(), &args.map(std::ffi::OsStr::new));
    let addr = read_event(&mut lines, "metrics")["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let (head, text) = poll("a verification timestamp in the metrics", || {
        let (head, text) = get(&addr, None);
        text.contains("vram_last_verified_timestamp_seconds{")
            .then_some((head, text))
    });
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(!text.contains("# EOF"));
    assert!(
        text.contains("# TYPE vram_seal_operations_total counter"),
        "{text}"
    );
    assert!(
        text.contains("vram_shards_resident{gpu_device=\"0\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("vram_last_verified_timestamp_seconds{shard_id=\""),
        "{text}"
    );
    let (head, om) = get(
        &addr,
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    );
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(om.ends_with("# EOF\n"));
    // What `promtool check metrics` checks (promtool itself cannot be installed from the
    // package registries CI reaches; `support/promlint.rs` ports its rules).
    assert_eq!(promlint::lint(&text), Vec::<String>::new(), "{text}");
    // ...and it flags what promtool flagged when OpenMetrics was served as the default.
    let old_default = promlint::lint(&om);
    assert!(
        old_default.contains(&"vram_seal_operations_total: no help text".to_owned()),
        "{old_default:?}"
    );
    match python_parses(&text, &om) {
        Some(report) => eprintln!("prometheus_client: {report}"),
        None => eprintln!("skipping the Python parsers: prometheus_client is not installed"),
    }
    // Many idle connections hold no thread each: the process stays at a handful of threads.
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let threads = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .count();
    assert!(
        threads < 40,
        "{threads} threads with {} idle connections",
        idle.len()
    );
    drop(idle);
    stop_with_sigterm(child, lines);
}

#[test]
fn json_failures_are_one_document_and_unused_options_are_refused() {
    let out = vramctl().args(["--json", "doctor"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["usable"], false);
    for args in [
        &["--backend", "mock", "doctor"][..],
        &["--backend", "cuda", "digest", "x"],
    ] {
        let out = vramctl().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr_one_line(&out).contains("--backend applies to"),
            "{args:?}"
        );
    }
}

#[test]
fn sigterm_while_sealing_releases_what_is_held_and_exits_0() {
    let dir = TempDir::new().unwrap();
    let files: Vec<PathBuf> = (0..4)
        .map(|i| write(&dir, &format!("part{i}.bin"), &vec![i as u8 + 1; 64 << 20]))
        .collect();
    let log = dir.path().join("audit.jsonl");
    let mut args = ["--backend", "mock", "seal", "--audit-log"]
        .map(std::ffi::OsStr::new)
        .to_vec();
    args.push(log.as_os_str());
    args.extend(files.iter().map(|f| f.as_os_str()));
    let (child, mut lines) = spawn_vramctl(dir.path(), &args);
    // The session is open (the first line names the backend): stop it while it seals.
    assert!(lines.next().unwrap().unwrap().starts_with("backend:"));
    let rest = stop_with_sigterm(child, lines);
    assert!(
        rest.iter()
            .any(|l| l.starts_with("stopped by a signal") || l.starts_with("released")),
        "{rest:?}"
    );
    let audit = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        audit.matches("\"event\":\"VramSealed\"").count(),
        audit.matches("\"event\":\"VramDeallocated\"").count(),
        "every seal released, and recorded:\n{audit}"
    );
    verify_audit_log(&log, &AuditVerifyOptions::default()).unwrap();
}

#[test]
fn seal_speaks_the_systemd_notify_protocol_and_sighup_reverifies() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new().unwrap();
    write(&dir, "m.bin", &pattern(4096));
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(cargo_bin("vramctl"))
        .current_dir(dir.path())
        .env_remove("VRAM_WORKER_TOKEN")
        .env_remove("VRAMCTL_TOKEN_FILE")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .args([
            "--backend",
            "mock",
            "seal",
            "--verify-every",
            "3600",
            "--scrub-share",
            "0.25",
            "m.bin",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let receive = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = receive();
    assert!(
        ready.starts_with("READY=1\nSTATUS=1 shard(s) sealed"),
        "{ready}"
    );
    let mut got = Vec::new();
    while !got.iter().any(|m: &String| m == "WATCHDOG=1") {
        got.push(receive());
    }
    // SIGHUP re-verifies at once (the interval is an hour) and does not stop the process.
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    read_until(&mut lines, |l| l.starts_with("verified m.bin"));
    let status = loop {
        let m = receive();
        if m.starts_with("STATUS=") {
            break m;
        }
    };
    assert_eq!(status, "STATUS=1 shard(s) resident, all verified");
    assert!(child.try_wait().unwrap().is_none());
    stop_with_sigterm(child, lines);
    let stopping = loop {
        let m = receive();
        if m.starts_with("STOPPING=1") {
            break m;
        }
    };
    assert!(stopping.contains("releasing 1 shard(s)"), "{stopping}");
}

#[test]
fn a_busy_metrics_port_is_refused_before_anything_is_sealed_and_a_wrong_flat_digest_before_the_group_is()
 {
    let dir = TempDir::new().unwrap();
    let model = write(&dir, "model.bin", &vec![5u8; 1 << 20]);
    let audit = dir.path().join("audit.jsonl");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = vramctl()
        .args(["--backend", "mock", "seal", "--audit-log"])
        .arg(&audit)
        .arg("--metrics")
        .arg(busy.local_addr().unwrap().to_string())
        .arg(&model)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_one_line(&out).contains("pick a free port"));
    // Refused while the arguments were checked: no session was opened, no log written.
    assert!(!audit.exists(), "nothing was started");

    // A group whose last file has the wrong flat SHA-256: checked on the bytes placed in VRAM,
    // so the group is never sealed (its first shard is released, the second aborted).
    let second = write(&dir, "second.bin", &vec![6u8; 1 << 20]);
    let right = vram_residency::compute_digest(
        &vec![5u8; 1 << 20],
        vram_residency::DigestAlgorithm::Sha256,
    );
    let out = vramctl()
        .args(["--backend", "mock", "seal", "--group", "m", "--audit-log"])
        .arg(&audit)
        .arg(&model)
        .arg(&second)
        .arg("--expect")
        .arg(format!("sha256:{}", right.to_hex()))
        .arg("--expect")
        .arg(format!("sha256:{}", right.to_hex()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line = stderr_one_line(&out);
    assert!(
        line.contains("second.bin: digest") && line.contains("nothing was sealed"),
        "{line}"
    );
    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(!log.contains("VramSealed"), "{log}");
    assert_eq!(log.matches("\"SealAborted\"").count(), 1, "{log}");
}

#[test]
fn digest_tensors_gives_each_tensor_and_the_model_digest_as_the_safetensors_library_reads_them() {
    use vram_residency::model::{TAG, TensorEntry, model_digest};
    use vram_residency::{DigestAlgorithm, compute_digest};
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models");
    let path = models.join("tiny.safetensors");
    let out = vramctl()
        .args(["--json", "digest", "--tensors"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Independently: the safetensors library's view of every tensor, hashed here.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let alg = DigestAlgorithm::default();
    let mut entries: Vec<TensorEntry> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| TensorEntry {
            name,
            dtype: format!("{:?}", view.dtype()),
            shape: view.shape().iter().map(|&d| d as u64).collect(),
            bytes: view.data().len() as u64,
            algorithm: alg,
            digest: compute_digest(view.data(), alg),
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let listed = v["tensors"].as_array().unwrap();
    assert_eq!(listed.len(), entries.len());
    for (l, e) in listed.iter().zip(&entries) {
        assert_eq!(l["name"], e.name.as_str());
        assert_eq!(l["digest"], format!("{alg}:{}", e.digest.to_hex()).as_str());
    }
    assert_eq!(
        v["model_digest"],
        format!("{TAG}:{}", model_digest(&entries).unwrap().to_hex()).as_str()
    );
    // The text form: one line per tensor, then the model line.
    let text = vramctl()
        .args(["digest", "--tensors"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.lines().last().unwrap().starts_with(&format!("{TAG}:")),
        "{text}"
    );
    assert_eq!(text.lines().count(), entries.len() + 1);
    // A file that has no tensors is refused.
    let raw = vramctl()
        .args(["digest", "--tensors"])
        .arg(models.join("lfs-pointer.gguf"))
        .output()
        .unwrap();
    assert_eq!(raw.status.code(), Some(2));
}

#[test]
fn digest_check_refuses_a_line_longer_than_a_manifest_line_before_holding_it() {
    // /dev/zero is one endless line: it used to be read whole until memory ran out (SIGABRT).
    let started = std::time::Instant::now();
    let out = vramctl()
        .args(["digest", "-c", "/dev/zero"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_one_line(&out).contains("longer than 65536 bytes"));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Issue 22, item 2: a metrics client that never finishes its request does not hold the stop:
/// SIGTERM exits 0 within 3 s, the shards released and the final checkpoint written.
#[test]
fn sigterm_stops_at_once_with_a_slow_metrics_client_connected() {
    let dir = TempDir::new().unwrap();
    write(&dir, "m.bin", &pattern(4096));
    let audit = dir.path().join("audit.jsonl");
    let args = [
        "--json",
        "--backend",
        "mock",
        "seal",
        "--metrics",
        "127.0.0.1:0",
        "--audit-log",
        "audit.jsonl",
        "m.bin",
    ];
    let (mut child, mut lines) = spawn_vramctl(dir.path(), &args.map(std::ffi::OsStr::new));
    let addr = read_event(&mut lines, "metrics")["address"]
        .as_str()
        .unwrap()
        .to_owned();
    // One client trickling its request, one idle.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let _idle = TcpStream::connect(&addr).unwrap();
    // A byte a second, under any per-read timeout, until the server closes (10 s at most).
    let trickle = std::thread::spawn(move || {
        for _ in 0..10 {
            if slow.write_all(b"X").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "still running 3 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(log.contains("\"event\":\"VramDeallocated\""), "{log}");
    assert!(
        log.lines()
            .last()
            .unwrap()
            .contains("\"event\":\"AuditCheckpoint\""),
        "the final checkpoint is written: {log}"
    );
    let summary = verify_audit_log(&audit, &AuditVerifyOptions::default()).unwrap();
    assert_eq!(summary.unsigned_records(), 0);
    trickle.join().unwrap();
}

/// Issue 22, item 4, through the tool: records appended without the key after a clean stop,
/// then a restart of `vramctl seal` on the same log: `audit verify` with the pinned key refuses
/// them (exit 1) and, when unsigned records are allowed, still counts them as unsigned.
#[test]
fn a_forged_tail_adopted_at_restart_is_reported_unsigned_by_audit_verify() {
    let dir = TempDir::new().unwrap();
    let model = write(&dir, "m.bin", &pattern(4096));
    let token = write(&dir, "token", b"worker-token-for-the-forgery-test");
    let log = dir.path().join("audit.jsonl");
    let token_arg = ["--token-file", token.to_str().unwrap()];
    seal_until_sigterm(&model, &log, &token_arg);
    // Two records linked after the clean close, as anyone with write access could add them.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut last = text.lines().last().unwrap().to_owned();
    let mut forged = String::new();
    let start = text.lines().count();
    for seq in start..start + 2 {
        let prev = vram_residency::compute_digest(
            last.as_bytes(),
            vram_residency::DigestAlgorithm::Sha256,
        )
        .to_hex();
        last = format!(
            r#"{{"seq":{seq},"prev":"{prev}","timestamp_ms":1,"time":"1970-01-01T00:00:00.001Z","worker_id":"vramctl","correlation_id":"x","severity":"info","event":"SealVerified","shard_id":"m.bin","gpu_device":0}}"#
        );
        forged.push_str(&last);
        forged.push('\n');
    }
    std::fs::write(&log, format!("{text}{forged}")).unwrap();
    // Two restarts: each signs the log on. The first warns of what it adopts (issue 33); the
    // second finds nothing unsigned after the checkpoints the first wrote.
    let (_, first) = seal_until_sigterm(&model, &log, &token_arg);
    assert!(
        first.contains("2 record(s) at its end were never signed"),
        "{first}"
    );
    let (_, second) = seal_until_sigterm(&model, &log, &token_arg);
    assert!(!second.contains("never signed"), "{second}");
    let verify = |extra: &[&str]| {
        vramctl()
            .args(["--json", "audit", "verify"])
            .arg(&log)
            .args(token_arg)
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = verify(&[]);
    assert_eq!(refused.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&refused.stdout).to_string();
    let doc: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("2 record(s) from line"),
        "{doc}"
    );
    let allowed = verify(&["--allow-unsigned-tail"]);
    assert_eq!(allowed.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert_eq!(doc["adopted_unsigned_records"], 2, "{doc}");
    assert_eq!(doc["unsigned_records"], 2, "{doc}");
}

/// Issue 22: a manifest names only files beside it or below it. An absolute path, `..` and a
/// symbolic link out of its directory are refused before anything is read, and the digest of
/// the file outside (a token, say) is never printed.
#[test]
fn manifest_names_that_leave_its_directory_are_refused_and_never_hashed() {
    let dir = TempDir::new().unwrap();
    let secret = write(&dir, "token", b"the-worker-token-nobody-may-hash");
    let secret_digest = vram_residency::compute_digest(
        b"the-worker-token-nobody-may-hash",
        vram_residency::DigestAlgorithm::Sha256,
    )
    .to_hex();
    let shards = dir.path().join("model");
    std::fs::create_dir(&shards).unwrap();
    std::fs::write(shards.join("a.bin"), pattern(4096)).unwrap();
    std::os::unix::fs::symlink(&secret, shards.join("link.bin")).unwrap();
    let hex = "ab".repeat(32);
    for (name, line) in [
        ("absolute", secret.display().to_string()),
        ("dotdot", "../token".to_owned()),
        ("symlink", "link.bin".to_owned()),
    ] {
        let manifest = shards.join(format!("SUMS-{name}"));
        std::fs::write(&manifest, format!("{hex}  a.bin\n{hex}  {line}\n")).unwrap();
        let out = vramctl()
            .args(["--backend", "mock", "seal", "--manifest"])
            .arg(&manifest)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2), "{name}: {all}");
        assert!(
            all.contains("outside the manifest's directory"),
            "{name}: {all}"
        );
        assert!(!all.contains(&secret_digest), "{name}: {all}");
        assert!(!all.contains("sealed"), "{name}: {all}");
    }
}

/// Issue 22, token file: a token others can read is warned about (as `ssh` does for keys), an
/// empty `VRAMCTL_TOKEN_FILE` means none, and an exported one does not conflict with
/// `audit verify --public-key`.
#[test]
fn token_files_are_warned_about_when_shared_and_the_environment_never_conflicts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let model = write(&dir, "m.bin", &pattern(4096));
    let token = write(&dir, "token", b"worker-token-for-the-token-test");
    let log = dir.path().join("audit.jsonl");
    let (out, err) = seal_until_sigterm(&model, &log, &["--token-file", token.to_str().unwrap()]);
    assert!(!err.contains("accessible by others"), "{err}");
    let key_line = out.iter().find(|l| l.contains("audit key")).unwrap();
    let public_key = key_line.split_whitespace().last().unwrap().to_owned();

    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let shared = vramctl()
        .args(["audit", "verify"])
        .arg(&log)
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert_eq!(shared.status.code(), Some(0));
    let err = String::from_utf8_lossy(&shared.stderr);
    assert!(
        err.contains("accessible by others (mode 0644)") && err.contains("chmod 600"),
        "{err}"
    );

    // Exported as the sample unit does: `--public-key` still works, no conflict.
    let pinned = vramctl()
        .env("VRAMCTL_TOKEN_FILE", &token)
        .args(["audit", "verify"])
        .arg(&log)
        .args(["--public-key", &public_key])
        .output()
        .unwrap();
    assert_eq!(
        pinned.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    // The exported file is the token when nothing else is given.
    let from_env = vramctl()
        .env("VRAMCTL_TOKEN_FILE", &token)
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&from_env.stdout).contains("(pinned)"));
    // Empty: no token file, no error about an option nobody passed.
    let empty = vramctl()
        .env("VRAMCTL_TOKEN_FILE", "")
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    assert_eq!(empty.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&empty.stdout).contains("NOT pinned"));
}

/// Issue 22, leaf sizes: a manifest line in another leaf size than the seal's (as
/// `vramctl digest --leaf 4KiB` writes it) is checked in that leaf size, on the bytes in VRAM,
/// not compared with a digest of another leaf size.
#[test]
fn a_manifest_line_in_another_leaf_size_is_checked_in_that_leaf_size() {
    let dir = TempDir::new().unwrap();
    write(&dir, "a.bin", &pattern(300_000));
    let line = vramctl()
        .current_dir(dir.path())
        .args(["digest", "--leaf", "4KiB", "a.bin"])
        .output()
        .unwrap();
    assert!(line.status.success());
    let line = String::from_utf8(line.stdout).unwrap();
    assert!(line.starts_with("sha256-tree-4096:"), "{line}");
    write(&dir, "SUMS", line.as_bytes());
    let args = ["--json", "--backend", "mock", "seal", "--manifest", "SUMS"];
    let (child, mut lines) = spawn_vramctl(dir.path(), &args.map(std::ffi::OsStr::new));
    let sealed = read_event(&mut lines, "sealed");
    assert_eq!(sealed["shard"]["vram_bytes"], 300_000);
    assert_eq!(sealed["shard"]["digest_algorithm"], "sha256-tree-65536");
    stop_with_sigterm(child, lines);

    let wrong = line.replacen(&line[17..81], &"cd".repeat(32), 1);
    write(&dir, "WRONG", wrong.as_bytes());
    let out = vramctl()
        .current_dir(dir.path())
        .args(["--backend", "mock", "seal", "--manifest", "WRONG"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_one_line(&out).contains("differs from the manifest sha256-tree-4096:cdcd"),
        "{}",
        stderr_one_line(&out)
    );
}

/// Issue 22, output injection: a file name or worker id holding a line break or a terminal
/// escape is printed quoted and escaped, so it cannot forge a line (of the journal, under
/// systemd) or drive the terminal.
#[test]
fn names_with_line_breaks_and_escapes_cannot_forge_output_lines() {
    let dir = TempDir::new().unwrap();
    let name = "m\nvramctl: forged OK\u{1b}[31m.bin";
    write(&dir, name, &pattern(4096));
    let token = write(&dir, "token", b"worker-token-for-the-escape-test");
    let log = dir.path().join("audit.jsonl");
    let (out, err) = seal_until_sigterm(
        &dir.path().join(name),
        &log,
        &[
            "--token-file",
            token.to_str().unwrap(),
            "--worker-id",
            "w\nforged",
        ],
    );
    let all = format!("{}\n{err}", out.join("\n"));
    assert!(!all.contains('\u{1b}'), "{all}");
    assert!(
        !all.lines()
            .any(|l| l.starts_with("vramctl: forged") || l.starts_with("forged")),
        "{all}"
    );
    assert!(
        all.contains(r"m\nvramctl: forged OK\u{1b}[31m.bin"),
        "{all}"
    );
}

/// A safetensors file of `tensors` (name, shape, bytes; F32) with `metadata`.
fn safetensors_with(
    dir: &TempDir,
    name: &str,
    tensors: &[(&str, Vec<usize>, Vec<u8>)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> PathBuf {
    use safetensors::tensor::{Dtype, TensorView};
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, data)| {
            (
                *n,
                TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, metadata).unwrap();
    write(dir, name, &bytes)
}

/// Issue 33: per-tensor lines always carry their algorithm (they are never a file's line),
/// a tensor name cannot drive the terminal, and empty tensors are left out of the listing as
/// the model digest leaves them out.
#[test]
fn digest_tensors_lines_are_tagged_escaped_and_leave_empty_tensors_out() {
    use vram_residency::model::{TAG, TensorEntry, model_digest};
    use vram_residency::{DigestAlgorithm, compute_digest};
    let dir = TempDir::new().unwrap();
    let w = pattern(24);
    let evil = "e\u{1b}[2J\u{7}vil\u{202e}";
    let path = safetensors_with(
        &dir,
        "m.safetensors",
        &[
            ("w", vec![2, 3], w.clone()),
            (evil, vec![1], pattern(4)),
            ("empty", vec![0, 4], vec![]),
        ],
        None,
    );
    let alone = safetensors_with(
        &dir,
        "alone.safetensors",
        &[("w", vec![2, 3], w.clone()), (evil, vec![1], pattern(4))],
        None,
    );
    for (flags, alg) in [
        (vec!["--algorithm", "blake3"], DigestAlgorithm::Blake3),
        (vec!["--flat"], DigestAlgorithm::Sha256),
        (vec![], DigestAlgorithm::default()),
    ] {
        let run = |file: &Path| {
            let out = vramctl()
                .args(["digest", "--tensors"])
                .args(&flags)
                .arg(file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let stdout = run(&path);
        assert!(
            !stdout.iter().any(|b| b.is_ascii_control() && *b != b'\n'),
            "a control byte reached the terminal: {stdout:?}"
        );
        let text = String::from_utf8(stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "two tensors and the model line: {text}");
        let file = path.to_str().unwrap();
        assert_eq!(
            lines[1],
            format!("{alg}:{}  {file}#w", compute_digest(&w, alg).to_hex())
        );
        assert_eq!(
            lines[0],
            format!(
                "\\{alg}:{}  {file}#e\\x1b[2J\\x07vil\\u{{202e}}",
                compute_digest(&pattern(4), alg).to_hex()
            )
        );
        assert!(!text.contains("empty"));
        // The model digest of the file with its empty tensor is that of the file without it.
        let entry = |name: &str, data: &[u8]| TensorEntry {
            name: name.into(),
            dtype: "F32".into(),
            shape: if name == "w" { vec![2, 3] } else { vec![1] },
            bytes: data.len() as u64,
            algorithm: alg,
            digest: compute_digest(data, alg),
        };
        let model = model_digest(&[entry("w", &w), entry(evil, &pattern(4))]).unwrap();
        assert_eq!(lines[2], format!("{TAG}:{}  {file}", model.to_hex()));
        let other = String::from_utf8(run(&alone)).unwrap();
        assert!(other.ends_with(&format!(
            "{TAG}:{}  {}\n",
            model.to_hex(),
            alone.to_str().unwrap()
        )));
    }
}

/// Issue 33: the model digest covers tensors only; the metadata digest beside it covers what
/// the file says about them (`.specs/model-digest.md`).
#[test]
fn the_metadata_digest_covers_what_the_model_digest_does_not() {
    use vram_residency::{DigestAlgorithm, compute_digest};
    let dir = TempDir::new().unwrap();
    let digests = |file: &Path| {
        let out = vramctl()
            .args(["--json", "digest", "--tensors"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v["model_digest"].as_str().unwrap().to_owned(),
            v["metadata_digest"].as_str().unwrap().to_owned(),
        )
    };
    // safetensors: the `__metadata__` entries by key (the vector, built from the spec's table).
    let meta = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    };
    let tensors = [("w", vec![2usize, 3], pattern(24))];
    let a = safetensors_with(
        &dir,
        "a.safetensors",
        &tensors,
        meta(&[("b", "2"), ("a", "1")]),
    );
    let b = safetensors_with(
        &dir,
        "b.safetensors",
        &tensors,
        meta(&[("a", "1"), ("b", "3")]),
    );
    let none = safetensors_with(&dir, "c.safetensors", &tensors, None);
    let s = |x: &str| [&(x.len() as u32).to_be_bytes()[..], x.as_bytes()].concat();
    let mut want = b"VRAMMETA\x01".to_vec();
    want.extend(s("safetensors"));
    want.extend(2u64.to_be_bytes());
    for x in ["a", "1", "b", "2"] {
        want.extend(s(x));
    }
    let (model_a, meta_a) = digests(&a);
    assert_eq!(
        meta_a,
        format!(
            "vram-meta-v1:{}",
            compute_digest(&want, DigestAlgorithm::Sha256).to_hex()
        )
    );
    let (model_b, meta_b) = digests(&b);
    let (model_none, meta_none) = digests(&none);
    assert_eq!((&model_a, &model_b), (&model_none, &model_none));
    assert_ne!(meta_a, meta_b);
    assert_ne!(meta_a, meta_none);
    // GGUF: one byte of the key-value section (the model's name) changed.
    let gguf =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/tiny.gguf"))
            .unwrap();
    let at = gguf.windows(4).position(|w| w == b"tiny").unwrap();
    let mut renamed = gguf.clone();
    renamed[at + 3] = b'z';
    let (model_1, meta_1) = digests(&write(&dir, "1.gguf", &gguf));
    let (model_2, meta_2) = digests(&write(&dir, "2.gguf", &renamed));
    assert_eq!(model_1, model_2);
    assert_ne!(meta_1, meta_2);
}

/// Issue 33: `digest` behaves as `sha256sum` and `b3sum`: an empty file has the digest of no
/// bytes, and a file that cannot be read is reported while the others are still digested,
/// the exit status saying something failed.
#[test]
fn digest_hashes_empty_files_and_goes_on_past_unreadable_ones() {
    use vram_residency::{DigestAlgorithm, compute_digest};
    let dir = TempDir::new().unwrap();
    write(&dir, "a", b"hi\n");
    write(&dir, "empty", b"");
    for (flags, alg) in [
        (vec!["--algorithm", "blake3"], DigestAlgorithm::Blake3),
        (vec!["--flat"], DigestAlgorithm::Sha256),
    ] {
        let out = vramctl()
            .current_dir(dir.path())
            .arg("digest")
            .args(&flags)
            .args(["a", "empty", "missing", "a"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let hex = |b: &[u8]| compute_digest(b, alg).to_hex();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{0}  a\n{1}  empty\n{0}  a\n", hex(b"hi\n"), hex(b""))
        );
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.contains("missing") && err.contains("1 of 4 files"),
            "{err}"
        );
    }
}

/// Issue 33: a `b3sum` manifest (bare hex BLAKE3) is read as BLAKE3 with `--algorithm blake3`,
/// and without it a failure says what the lines are instead of calling the files corrupted.
#[test]
fn b3sum_manifests_are_read_as_blake3_when_asked_and_named_when_not() {
    use vram_residency::{DigestAlgorithm, compute_digest};
    let dir = TempDir::new().unwrap();
    let bytes = pattern(70_000);
    write(&dir, "m.bin", &bytes);
    let b3 = compute_digest(&bytes, DigestAlgorithm::Blake3).to_hex();
    std::fs::write(dir.path().join("B3SUMS"), format!("{b3}  m.bin\n")).unwrap();
    let run = |args: &[&str]| {
        vramctl()
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    // digest -c: FAILED as SHA-256, with the hint; OK as BLAKE3.
    let failed = run(&["digest", "-c", "B3SUMS"]);
    assert_eq!(failed.status.code(), Some(1));
    assert_eq!(failed.stdout, b"m.bin: FAILED\n");
    let err = String::from_utf8(failed.stderr).unwrap();
    assert!(
        err.contains("BLAKE3 (a b3sum manifest)") && err.contains("--algorithm blake3"),
        "{err}"
    );
    let ok = run(&["digest", "--algorithm", "blake3", "-c", "B3SUMS"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(ok.stdout, b"m.bin: OK\n");
    // A wrong line gets no hint.
    std::fs::write(
        dir.path().join("WRONG"),
        format!("{}  m.bin\n", "ab".repeat(32)),
    )
    .unwrap();
    let wrong = run(&["digest", "-c", "WRONG"]);
    assert!(!String::from_utf8(wrong.stderr).unwrap().contains("b3sum"));
    // seal --manifest: the same hint, and with --algorithm blake3 the file is sealed.
    let refused = run(&["--backend", "mock", "seal", "--manifest", "B3SUMS"]);
    assert_eq!(refused.status.code(), Some(1));
    let line = stderr_one_line(&refused);
    assert!(
        line.contains("b3sum manifest") && line.contains("--algorithm blake3"),
        "{line}"
    );
    let args = [
        "--backend",
        "mock",
        "--json",
        "seal",
        "--algorithm",
        "blake3",
        "--manifest",
        "B3SUMS",
    ]
    .map(std::ffi::OsStr::new);
    let (child, mut lines) = spawn_vramctl(dir.path(), &args);
    let sealed = read_event(&mut lines, "sealed");
    stop_with_sigterm(child, lines);
    assert_eq!(sealed["shard"]["digest_algorithm"], "blake3");
}
