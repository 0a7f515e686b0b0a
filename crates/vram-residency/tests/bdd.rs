//! The behaviour catalogue as cucumber scenarios (`tests/features/*.feature`), written against
//! the facade's public API only. Scenarios tagged `@gpu` need a real GPU: they run only with
//! `VRAM_TEST_GPU=1` and are reported as skipped otherwise. Ends with `N passed, N failed, N
//! skipped` and a non-zero exit code on any failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::needless_pass_by_value,
    missing_docs,
    reason = "tests"
)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cucumber::{StatsWriter, World, given, then, when};
use vram_residency::audit::{AuditEvent, InMemoryAuditSink, Severity};
use vram_residency::validation::{DEFAULT_MAX_MODEL_BYTES, validate_model_size};
use vram_residency::{
    AllocationFacts, Attestation, DeviceFacts, MemoryType, MockBackend, SealKey, SealSignature,
    SealedShard, VramConfig, VramError, VramManager, compute_digest, verify_attestation,
};

const MIB: usize = 1 << 20;
const KEY: [u8; 32] = [0x42; 32];

#[derive(Debug, Default, World)]
struct VramWorld {
    manager: Option<VramManager>,
    mock: Option<Arc<MockBackend>>,
    audit: Option<Arc<InMemoryAuditSink>>,
    config: VramConfig,
    model: Vec<u8>,
    shard_id: Option<String>,
    shard: Option<SealedShard>,
    copies: Vec<SealedShard>,
    last_error: Option<VramError>,
    verify_result: Option<Result<(), VramError>>,
    outcomes: Vec<Result<SealedShard, VramError>>,
    attestation: Option<Attestation>,
}

impl VramWorld {
    fn build(&mut self, mock: MockBackend) {
        let mock = Arc::new(mock);
        let audit = Arc::new(InMemoryAuditSink::new());
        self.manager = Some(
            VramManager::builder()
                .mock(mock.clone())
                .config(self.config.clone())
                .seal_key(SealKey::from_bytes(&KEY).unwrap())
                .audit_sink(audit.clone())
                .build()
                .unwrap(),
        );
        self.mock = Some(mock);
        self.audit = Some(audit);
    }

    fn manager(&self) -> &VramManager {
        self.manager.as_ref().expect("no manager in this scenario")
    }

    fn mock(&self) -> &MockBackend {
        self.mock
            .as_ref()
            .expect("this step needs the mock backend")
    }

    fn events(&self) -> Vec<AuditEvent> {
        self.audit.as_ref().map(|a| a.events()).unwrap_or_default()
    }

    fn seal(&mut self, device: u32, tensor_parallel: Option<(usize, usize)>) {
        let m = self.manager();
        let result = match (&self.shard_id, tensor_parallel) {
            (_, Some((i, n))) => m.seal_model_shard(&self.model, device, i, n),
            (Some(id), None) => m.seal_model_with_id(id, &self.model, device),
            (None, None) => m.seal_model(&self.model, device),
        };
        match result {
            Ok(shard) => {
                // Earlier shards stay alive, as a worker holding several shards would keep them.
                self.copies.extend(self.shard.replace(shard));
                self.last_error = None;
            }
            Err(e) => self.last_error = Some(e),
        }
    }

    fn shard(&self) -> &SealedShard {
        self.shard
            .as_ref()
            .expect("no shard sealed in this scenario")
    }
}

fn variant(e: &VramError) -> String {
    format!("{e:?}")
        .split([' ', '(', '{'])
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn model(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8).collect()
}

// ---- Given ----

#[given(expr = "a VRAM manager with {int} MiB of capacity")]
fn manager_with(w: &mut VramWorld, mib: usize) {
    w.build(MockBackend::with_capacity(mib * MIB));
}

#[given(
    expr = "a VRAM manager with {int} MiB of capacity whose seals expire after {int} milliseconds"
)]
fn manager_with_expiry(w: &mut VramWorld, mib: usize, ms: u64) {
    w.config.max_seal_age = Some(Duration::from_millis(ms));
    w.build(MockBackend::with_capacity(mib * MIB));
}

#[given(expr = "a VRAM manager with devices of {int} MiB and {int} MiB")]
fn manager_two_devices(w: &mut VramWorld, a: usize, b: usize) {
    w.build(
        MockBackend::builder()
            .device(a * MIB)
            .device(b * MIB)
            .build(),
    );
}

#[given("a VRAM manager on an integrated GPU with unified memory")]
fn manager_integrated(w: &mut VramWorld) {
    let facts = DeviceFacts {
        integrated: true,
        pageable_memory_access: true,
        ..DeviceFacts::discrete(0, "integrated GPU", 10 * MIB)
    };
    w.build(MockBackend::builder().device_with_facts(facts).build());
}

#[given(expr = "a VRAM manager on GPU {int}")]
fn manager_on_gpu(w: &mut VramWorld, gpu: u32) {
    w.manager =
        Some(VramManager::from_gpu_device(gpu).expect("a GPU (VRAM_TEST_GPU=1 runs need one)"));
}

#[given(expr = "the maximum model size is {int} MiB")]
fn max_size(w: &mut VramWorld, mib: u64) {
    w.config.max_model_bytes = mib * MIB as u64;
    w.build(MockBackend::with_capacity(10 * MIB));
}

#[given(expr = "a model of {int} MiB")]
fn a_model(w: &mut VramWorld, mib: usize) {
    w.model = model(mib * MIB);
}

#[given(expr = "the shard id {string}")]
fn shard_id(w: &mut VramWorld, id: String) {
    w.shard_id = Some(id);
}

#[given("a shard id with a null byte")]
fn shard_id_nul(w: &mut VramWorld) {
    w.shard_id = Some("shard\0evil".into());
}

#[given(expr = "a sealed model of {int} MiB")]
fn sealed_model(w: &mut VramWorld, mib: usize) {
    w.model = model(mib * MIB);
    w.seal(0, None);
    assert!(w.last_error.is_none(), "{:?}", w.last_error);
    w.audit.as_ref().inspect(|a| a.clear());
}

#[given(expr = "a sealed model of {int} MiB with id {string}")]
fn sealed_model_with_id(w: &mut VramWorld, mib: usize, id: String) {
    w.shard_id = Some(id);
    sealed_model(w, mib);
    w.copies.push(w.shard.take().unwrap());
}

#[given(expr = "the next allocation is {word} memory")]
fn next_allocation_kind(w: &mut VramWorld, kind: String) {
    let facts = match kind.as_str() {
        "managed" => AllocationFacts::new(MemoryType::Device, true, 0, true),
        "pinned" | "zero-copy" => AllocationFacts::new(MemoryType::Host, false, 0, true),
        "unregistered" => AllocationFacts::new(MemoryType::Unregistered, false, 0, false),
        other => panic!("unknown memory kind {other}"),
    };
    w.mock().next_allocation_reports(facts);
}

#[given("the next allocation fails")]
fn next_allocation_fails(w: &mut VramWorld) {
    w.mock().fail_next_allocations(1);
}

// ---- When ----

#[when("I seal the model")]
fn seal(w: &mut VramWorld) {
    w.seal(0, None);
}

#[when(expr = "I seal the model on device {int} as shard {int} of {int}")]
fn seal_tp(w: &mut VramWorld, device: u32, index: usize, total: usize) {
    w.seal(device, Some((index, total)));
}

#[when(expr = "a {int}-byte model is checked against the default maximum")]
fn check_size(w: &mut VramWorld, len: usize) {
    w.last_error = validate_model_size(len, DEFAULT_MAX_MODEL_BYTES).err();
}

#[when("I verify the seal")]
fn verify(w: &mut VramWorld) {
    w.verify_result = Some(w.manager().verify_sealed(w.shard()));
}

#[when("I verify a shard built without VRAM")]
fn verify_orphan(w: &mut VramWorld) {
    let orphan = vram_residency::test_utils::mock_sealed_shard(0).unwrap();
    w.verify_result = Some(w.manager().verify_sealed(&orphan));
}

#[when("the shard's digest is changed after sealing")]
fn tamper_digest(w: &mut VramWorld) {
    let shard = w.shard.as_mut().unwrap();
    shard.digest = compute_digest(b"another model", shard.digest_algorithm()).to_hex();
}

#[when("the shard's signature is replaced with zeros")]
fn forge_signature(w: &mut VramWorld) {
    w.shard
        .as_mut()
        .unwrap()
        .set_seal_signature_for_tests(SealSignature::from_bytes([0; 32]));
}

#[when("a byte of the shard is changed in VRAM")]
fn corrupt(w: &mut VramWorld) {
    let offset = w.shard().vram_bytes / 2;
    w.manager()
        .corrupt_byte_for_tests(w.shard(), offset)
        .unwrap();
}

#[when("the scrubber runs until it has verified every shard twice")]
fn scrub_twice(w: &mut VramWorld) {
    let scrubber = w
        .manager()
        .start_scrubber(vram_residency::ScrubOptions::new())
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while scrubber.verified() < 2 && scrubber.failure().is_none() {
        assert!(std::time::Instant::now() < deadline, "the scrubber stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
    w.verify_result = Some(scrubber.stop().map_or(Ok(()), Err));
}

#[when("the scrubber runs until it stops on a failure")]
fn scrub_until_failure(w: &mut VramWorld) {
    let scrubber = w
        .manager()
        .start_scrubber(vram_residency::ScrubOptions::new())
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while scrubber.failure().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the scrubber found nothing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    w.verify_result = Some(scrubber.stop().map_or(Ok(()), Err));
}

#[when("I enforce the VRAM-only policy")]
fn enforce(w: &mut VramWorld) {
    w.verify_result = Some(w.manager().enforce_vram_only_policy());
}

#[when(expr = "{int} threads each seal a model of {int} MiB")]
fn concurrent(w: &mut VramWorld, threads: usize, mib: usize) {
    let m = w.manager().clone();
    w.outcomes = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let m = m.clone();
                s.spawn(move || m.seal_model_with_id(&format!("t{t}"), &model(mib * MIB), 0))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
}

#[when(expr = "I wait {int} milliseconds")]
fn wait(_w: &mut VramWorld, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[when(expr = "I clone the shard {int} times")]
fn clone_shard(w: &mut VramWorld, n: usize) {
    let copies: Vec<_> = (0..n).map(|_| w.shard().clone()).collect();
    w.copies.extend(copies);
}

#[when("I drop the original shard")]
fn drop_original(w: &mut VramWorld) {
    w.shard = None;
}

#[when("I drop every copy of the shard")]
fn drop_copies(w: &mut VramWorld) {
    w.shard = None;
    w.copies.clear();
}

#[when(expr = "I request an attestation with nonce {string}")]
fn attest(w: &mut VramWorld, nonce: String) {
    w.attestation = Some(
        w.manager()
            .attest_vram_residency(w.shard(), nonce.as_bytes())
            .unwrap(),
    );
}

// ---- Then ----

#[then("the seal succeeds")]
fn seal_ok(w: &mut VramWorld) {
    assert!(w.last_error.is_none(), "seal failed: {:?}", w.last_error);
    assert!(w.shard.is_some());
}

#[then(expr = "the seal fails with {word}")]
#[then(expr = "it is rejected with {word}")]
fn seal_fails(w: &mut VramWorld, expected: String) {
    let e = w.last_error.as_ref().expect("the operation succeeded");
    assert_eq!(variant(e), expected, "{e}");
}

#[then(expr = "the shard has the model's size on device {int}")]
fn shard_metadata(w: &mut VramWorld, device: u32) {
    let s = w.shard();
    assert_eq!((s.vram_bytes, s.gpu_device), (w.model.len(), device));
    assert_eq!(s.shard_id, w.shard_id.clone().unwrap());
    assert!(s.handle_count() >= 1, "resident");
}

#[then("the shard's digest is the SHA-256 tree digest of the model")]
fn shard_digest(w: &mut VramWorld) {
    let s = w.shard();
    assert_eq!(s.digest_algorithm().to_string(), "sha256-tree-65536");
    assert_eq!(
        s.digest,
        compute_digest(&w.model, s.digest_algorithm()).to_hex()
    );
    s.verify(&compute_digest(&w.model, s.digest_algorithm()).to_hex())
        .unwrap();
}

#[then(expr = "an audit event {word} is recorded")]
fn audit_event(w: &mut VramWorld, name: String) {
    assert!(
        w.events().iter().any(|e| e.name() == name),
        "{:?}",
        w.events()
    );
}

#[then(expr = "a critical audit event {word} is recorded")]
fn critical_event(w: &mut VramWorld, name: String) {
    assert!(
        w.events()
            .iter()
            .any(|e| e.name() == name && e.severity() == Severity::Critical),
        "{:?}",
        w.events()
    );
}

#[then("no audit event is recorded")]
fn no_audit(w: &mut VramWorld) {
    assert!(w.events().is_empty(), "{:?}", w.events());
}

#[then(expr = "exactly {int} VramDeallocated event is recorded")]
fn dealloc_events(w: &mut VramWorld, n: usize) {
    let count = w
        .events()
        .iter()
        .filter(|e| e.name() == "VramDeallocated")
        .count();
    assert_eq!(count, n);
}

#[then(expr = "the error shows {int} bytes needed and {int} bytes available")]
fn error_amounts(w: &mut VramWorld, needed: usize, available: usize) {
    let e = w.last_error.as_ref().unwrap();
    assert!(
        matches!(e, VramError::InsufficientVram { needed: n, available: a, .. } if *n == needed && *a == available),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains(&needed.to_string()) && text.contains(&available.to_string()));
}

#[then(expr = "{int} MiB of VRAM is used")]
fn used(w: &mut VramWorld, mib: usize) {
    assert_eq!(w.manager().used_vram(), mib * MIB);
}

#[then(expr = "{int} MiB of VRAM is used on device {int}")]
fn used_on(w: &mut VramWorld, mib: usize, device: u32) {
    assert_eq!(w.manager().used_vram_on(device).unwrap(), mib * MIB);
}

#[then(expr = "{int} MiB of VRAM is available")]
fn available(w: &mut VramWorld, mib: usize) {
    assert_eq!(w.manager().available_vram(), mib * MIB);
}

#[then("the verification succeeds")]
#[then("the policy holds")]
fn verification_ok(w: &mut VramWorld) {
    let r = w.verify_result.take().expect("nothing was verified");
    assert!(r.is_ok(), "{r:?}");
    assert!(!w.manager().is_stopped());
}

#[then(expr = "the verification fails with {word}")]
fn verification_fails(w: &mut VramWorld, expected: String) {
    let e = w
        .verify_result
        .take()
        .expect("nothing was verified")
        .unwrap_err();
    assert_eq!(variant(&e), expected, "{e}");
}

#[then("the policy is violated")]
fn policy_violated(w: &mut VramWorld) {
    let e = w.verify_result.take().unwrap().unwrap_err();
    assert!(
        matches!(&e, VramError::PolicyViolation { reason, .. } if reason.contains("integrated") && reason.contains("pageable")),
        "{e}"
    );
    assert!(!w.manager().is_vram_only());
}

#[then("the worker is stopped")]
fn stopped(w: &mut VramWorld) {
    assert!(w.manager().is_stopped());
    assert_eq!(
        w.manager().seal_model(&model(10), 0).unwrap_err(),
        VramError::Stopped
    );
}

#[then(expr = "{int} seals succeed and {int} fail with InsufficientVram")]
fn concurrent_outcome(w: &mut VramWorld, ok: usize, failed: usize) {
    let successes = w.outcomes.iter().filter(|r| r.is_ok()).count();
    let refusals = w
        .outcomes
        .iter()
        .filter(|r| matches!(r, Err(VramError::InsufficientVram { .. })))
        .count();
    assert_eq!((successes, refusals), (ok, failed));
}

#[then(expr = "the attestation verifies with nonce {string} and not with {string}")]
fn attestation_verifies(w: &mut VramWorld, good: String, bad: String) {
    let key = SealKey::from_bytes(&KEY).unwrap();
    let att = w.attestation.as_ref().unwrap();
    verify_attestation(&key, att, good.as_bytes()).unwrap();
    assert!(verify_attestation(&key, att, bad.as_bytes()).is_err());
}

#[then("the attestation says the memory is simulated")]
fn attestation_simulated(w: &mut VramWorld) {
    let att = w.attestation.as_ref().unwrap();
    assert!(att.simulated && att.backend == "mock");
}

fn main() -> ExitCode {
    let gpu = std::env::var("VRAM_TEST_GPU").is_ok_and(|v| v == "1");
    // The build's own path, or (for binaries staged onto a GPU machine) the path from the
    // repository root, or an explicit VRAM_BDD_FEATURES.
    let built = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/features");
    let features = std::env::var("VRAM_BDD_FEATURES").unwrap_or_else(|_| {
        if std::path::Path::new(built).exists() {
            built.to_owned()
        } else {
            "crates/vram-residency/tests/features".to_owned()
        }
    });
    let skipped_gpu = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = skipped_gpu.clone();
    // Default options, not parsed from the command line: the binary also accepts (and ignores)
    // the libtest arguments that test runners pass to every test binary. Scenarios run one at a
    // time: the steps are synchronous, and timing steps (seal freshness) must not wait behind
    // other scenarios' steps.
    let runner = VramWorld::cucumber()
        .max_concurrent_scenarios(1)
        .with_cli(cucumber::cli::Opts::<_, _, _, cucumber::cli::Empty>::default());
    let writer = futures::executor::block_on(runner.filter_run(features, move |_, _, scenario| {
        let needs_gpu = scenario.tags.iter().any(|t| t == "gpu");
        if needs_gpu && !gpu {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            println!(
                "skipped: \"{}\" needs a GPU (run with VRAM_TEST_GPU=1 on a GPU machine)",
                scenario.name
            );
        }
        !needs_gpu || gpu
    }));
    let stats = writer.scenarios_stats();
    let skipped = stats.skipped + skipped_gpu.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{} passed, {} failed, {} skipped",
        stats.passed, stats.failed, skipped
    );
    if writer.execution_has_failed() || stats.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
