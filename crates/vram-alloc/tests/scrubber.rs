//! The scrubber: every resident shard re-verified round-robin on a thread of its own, at a
//! bounded GPU share; a change in a resident byte found and handled like any failed
//! verification; the age of the oldest proof as a metric.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use vram_alloc::audit::{AuditEvent, InMemoryAuditSink};
use vram_alloc::backend::MockBackend;
use vram_alloc::{EngineTensor, ManualClock, ScrubEvent, ScrubOptions, VramManager};
use vram_seal::SealKey;
use vram_types::{SealedShard, VramError};

const WAIT: Duration = Duration::from_secs(20);

/// What the handler saw, as owned values.
#[derive(Debug, PartialEq)]
enum Seen {
    Verified(String),
    AllProven(usize),
    Failed(String, String),
}

struct Rig {
    manager: VramManager,
    audit: Arc<InMemoryAuditSink>,
    clock: Arc<ManualClock>,
    mock: Arc<MockBackend>,
}

fn rig() -> Rig {
    let audit = Arc::new(InMemoryAuditSink::new());
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 30),
    ));
    let mock = Arc::new(MockBackend::with_capacity(256 << 20));
    let manager = VramManager::builder()
        .mock(mock.clone())
        .clock(clock.clone())
        .audit_sink(audit.clone())
        .seal_key(SealKey::derive(b"scrubber-test-worker-token", "w").unwrap())
        .build()
        .unwrap();
    Rig {
        manager,
        audit,
        clock,
        mock,
    }
}

fn seal(r: &Rig, n: usize) -> Vec<SealedShard> {
    (0..n)
        .map(|i| {
            let bytes = vec![u8::try_from(i).unwrap(); 70_000 + i];
            r.manager
                .seal_from_source(
                    &bytes.as_slice(),
                    0,
                    &vram_alloc::SealOptions::new().shard_id(format!("s{i}")),
                )
                .unwrap()
        })
        .collect()
}

fn options() -> (ScrubOptions, Receiver<Seen>) {
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    let options = ScrubOptions::new().on_event(move |e| {
        let seen = match e {
            ScrubEvent::Verified { shard_id } => Seen::Verified((*shard_id).to_owned()),
            ScrubEvent::AllProven { shards } => Seen::AllProven(*shards),
            ScrubEvent::Failed { shard_id, error } => {
                Seen::Failed((*shard_id).to_owned(), format!("{error:?}"))
            }
            _ => return,
        };
        let _ = tx.lock().unwrap().send(seen);
    });
    (options, rx)
}

fn verified_records(audit: &InMemoryAuditSink, id: &str) -> usize {
    audit
        .events()
        .iter()
        .filter(|e| matches!(e, AuditEvent::SealVerified { shard_id, .. } if shard_id == id))
        .count()
}

#[test]
fn every_resident_shard_is_verified_round_robin() {
    let r = rig();
    let shards = seal(&r, 3);
    let (options, seen) = options();
    let scrubber = r.manager.start_scrubber(options).unwrap();
    // Continuously (interval 0): each shard in turn, even on a clock that does not move.
    let mut order = Vec::new();
    while order.len() < 9 {
        match seen.recv_timeout(WAIT).unwrap() {
            Seen::Verified(id) => order.push(id),
            other => panic!("{other:?}"),
        }
    }
    for window in order.chunks(3) {
        let mut ids = window.to_vec();
        ids.sort();
        assert_eq!(ids, ["s0", "s1", "s2"], "{order:?}");
    }
    assert!(scrubber.stop().is_none());
    // Its passes are one summary record (written at the stop), not a record each.
    for shard in &shards {
        assert_eq!(verified_records(&r.audit, &shard.shard_id), 0);
    }
    let summaries: Vec<_> = r
        .audit
        .events()
        .into_iter()
        .filter_map(|e| match e {
            AuditEvent::VerificationSummary {
                scrubber,
                shards_verified,
                bytes_verified,
                ..
            } => Some((scrubber, shards_verified, bytes_verified)),
            _ => None,
        })
        .collect();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let (scrubber, shards_verified, bytes_verified) = &summaries[0];
    assert_eq!(scrubber, "background");
    assert!(*shards_verified >= 9);
    // Shards of 70,000 to 70,002 bytes.
    assert!((70_000 * shards_verified..=70_002 * shards_verified).contains(bytes_verified));
}

#[test]
fn with_an_interval_a_round_then_rest_until_due_or_asked() {
    let r = rig();
    let _shards = seal(&r, 2);
    let (options, seen) = options();
    let scrubber = r
        .manager
        .start_scrubber(options.interval(Duration::from_secs(60)))
        .unwrap();
    // Sealing proved them: nothing is due for a minute.
    assert!(seen.recv_timeout(Duration::from_millis(600)).is_err());
    r.clock.advance(Duration::from_secs(61));
    let mut got = vec![
        seen.recv_timeout(WAIT).unwrap(),
        seen.recv_timeout(WAIT).unwrap(),
    ];
    got.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(
        got,
        [Seen::Verified("s0".into()), Seen::Verified("s1".into())]
    );
    assert_eq!(seen.recv_timeout(WAIT).unwrap(), Seen::AllProven(2));
    assert!(seen.recv_timeout(Duration::from_millis(600)).is_err());
    assert_eq!(scrubber.verified(), 2);
    // Asked (SIGHUP in vramctl): every shard at once, whatever the interval.
    scrubber.verify_all_now();
    for _ in 0..2 {
        assert!(matches!(
            seen.recv_timeout(WAIT).unwrap(),
            Seen::Verified(_)
        ));
    }
    assert_eq!(seen.recv_timeout(WAIT).unwrap(), Seen::AllProven(2));
    assert_eq!(scrubber.verified(), 4);
}

#[test]
fn a_changed_byte_is_found_audited_and_stops_the_manager() {
    let r = rig();
    let shards = seal(&r, 3);
    r.manager
        .corrupt_byte_for_tests(&shards[1], 69_999)
        .unwrap();
    let (options, seen) = options();
    let scrubber = r.manager.start_scrubber(options).unwrap();
    let failed = loop {
        match seen.recv_timeout(WAIT).unwrap() {
            Seen::Failed(id, error) => break (id, error),
            Seen::Verified(_) | Seen::AllProven(_) => {}
        }
    };
    assert_eq!(failed.0, "s1");
    assert!(failed.1.starts_with("IntegrityViolation"), "{}", failed.1);
    assert!(r.manager.is_stopped());
    assert!(r.audit.events().iter().any(|e| matches!(
        e,
        AuditEvent::SealVerificationFailed { shard_id, .. } if shard_id == "s1"
    )));
    // It ended on the failure and says so.
    assert!(matches!(
        scrubber.stop(),
        Some(VramError::IntegrityViolation { .. })
    ));
    assert!(matches!(
        r.manager.start_scrubber(ScrubOptions::new()),
        Err(VramError::Stopped)
    ));
}

#[test]
fn a_model_sealed_in_place_is_scrubbed_tensor_by_tensor() {
    let r = rig();
    let tensors: Vec<Arc<common::HostBytes>> = (0..4u8)
        .map(|i| common::HostBytes::new(vec![i; 4096]))
        .collect();
    let model = r
        .manager
        .seal_model_in_place(
            "m",
            tensors
                .iter()
                .enumerate()
                .map(|(i, t)| EngineTensor {
                    name: format!("t{i}"),
                    dtype: "U8".into(),
                    shape: vec![4096],
                    range: r.mock.engine_host_tensor(0, t.clone()).unwrap(),
                })
                .collect(),
            None,
        )
        .unwrap();
    let (options, seen) = options();
    let _scrubber = r.manager.start_scrubber(options).unwrap();
    for _ in 0..4 {
        assert!(
            matches!(seen.recv_timeout(WAIT).unwrap(), Seen::Verified(id) if id.starts_with("m:t"))
        );
    }
    tensors[2].0.lock().unwrap()[7] ^= 4;
    let failed = loop {
        if let Seen::Failed(id, _) = seen.recv_timeout(WAIT).unwrap() {
            break id;
        }
    };
    assert_eq!(failed, "m:t2");
    assert!(r.manager.verify_model(&model).is_err());
}

#[test]
fn the_oldest_proof_age_is_a_metric() {
    let r = rig();
    let metric = |m: &VramManager| -> f64 {
        let text = m.metrics().prometheus_text().to_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with("vram_oldest_verification_age_seconds{"))
            .unwrap_or_else(|| panic!("{text}"))
            .to_owned();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(metric(&r.manager), 0.0);
    let shards = seal(&r, 2);
    r.clock.advance(Duration::from_secs(90));
    assert_eq!(metric(&r.manager), 90.0);
    r.manager.verify_sealed(&shards[0]).unwrap();
    r.clock.advance(Duration::from_secs(10));
    // s1 was proven only by its seal, 100 s ago.
    assert_eq!(metric(&r.manager), 100.0);
    r.manager.verify_sealed(&shards[1]).unwrap();
    assert_eq!(metric(&r.manager), 10.0);
    drop(shards);
    assert_eq!(metric(&r.manager), 0.0);
}

/// Steps until `done` holds (at most 10,000 calls: a full budget pays for a working call every
/// few calls).
fn step_until(
    scrubber: &mut vram_alloc::StepScrubber,
    mut done: impl FnMut(&vram_alloc::StepScrubber) -> bool,
) -> Result<(), VramError> {
    for _ in 0..10_000 {
        if done(scrubber) {
            return Ok(());
        }
        scrubber.step(None)?;
    }
    panic!("not done after 10,000 steps");
}

/// A step scrubber whose budget is the whole step: it works every few calls.
fn full_budget(r: &Rig) -> vram_alloc::StepScrubber {
    r.manager
        .step_scrubber(0, vram_alloc::StepScrubOptions::new().budget(1.0).unwrap())
        .unwrap()
}

/// The step scrubber (`VramManager::step_scrubber`): on the mock, each working step checks one
/// job of shards, the least recently proven first, so a few steps cover every shard.
#[test]
fn the_step_scrubber_covers_every_shard_finds_a_change_and_summarises_its_passes() {
    let r = rig();
    let shards = seal(&r, 4);
    let mut scrubber = full_budget(&r);
    step_until(&mut scrubber, |s| s.verified() >= 4).unwrap();
    assert!(scrubber.verified() >= 4, "{}", scrubber.verified());
    let each: u64 = shards.iter().map(|s| s.vram_bytes as u64).sum::<u64>() / 4;
    assert!(scrubber.bytes_verified() >= 4 * (each - 2));
    // No record per pass while it runs (the summary interval has not passed on this clock).
    assert!(
        r.audit
            .events()
            .iter()
            .all(|e| !matches!(e, AuditEvent::SealVerified { .. }))
    );
    r.manager.corrupt_byte_for_tests(&shards[2], 123).unwrap();
    let caught = step_until(&mut scrubber, |_| false).unwrap_err();
    assert!(
        matches!(&caught, VramError::IntegrityViolation { shard_id, .. } if shard_id == "s2"),
        "{caught:?}"
    );
    assert!(r.manager.is_stopped());
    assert!(matches!(
        scrubber.step(None),
        Err(VramError::IntegrityViolation { .. })
    ));
    let verified = scrubber.verified();
    assert!(scrubber.stop().is_err());
    assert_eq!(scrubber.verified(), verified);
    let events = r.audit.events();
    let failed = events
        .iter()
        .filter(|e| matches!(e, AuditEvent::SealVerificationFailed { shard_id, .. } if shard_id == "s2"))
        .count();
    assert_eq!(failed, 1);
    let summarised: u64 = events
        .iter()
        .filter_map(|e| match e {
            AuditEvent::VerificationSummary {
                scrubber,
                shards_verified,
                ..
            } if scrubber == "step" => Some(*shards_verified),
            _ => None,
        })
        .sum();
    assert_eq!(summarised, verified);
}

/// The budget pays for the calls' host time as well as their GPU work: calls in a tight loop
/// (microseconds apart, as a host-bound engine's hook would be were its steps that short)
/// earn too little for one working call, and a pause long enough earns one.
#[test]
fn step_scrubber_calls_are_paid_for_by_the_budget() {
    let r = rig();
    let _shards = seal(&r, 4);
    let mut scrubber = r
        .manager
        .step_scrubber(0, vram_alloc::StepScrubOptions::new())
        .unwrap();
    let mut queued = 0;
    for _ in 0..1_000 {
        assert!(!scrubber.due() || queued == 0);
        queued += scrubber.step(None).unwrap().bytes_queued;
    }
    assert_eq!(
        queued, 0,
        "a thousand calls in a tight loop earned a working call"
    );
    // 1 % of 100 ms pays for a call (assumed 0.1 ms until measured) twice over.
    std::thread::sleep(Duration::from_millis(100));
    assert!(scrubber.due());
    assert!(scrubber.step(None).unwrap().bytes_queued > 0);
}

#[test]
fn step_scrubber_summaries_follow_the_interval_and_options_are_checked() {
    let r = rig();
    let _shards = seal(&r, 2);
    assert!(vram_alloc::StepScrubOptions::new().budget(0.0).is_err());
    assert!(vram_alloc::StepScrubOptions::new().budget(1.5).is_err());
    assert!(
        r.manager
            .step_scrubber(7, vram_alloc::StepScrubOptions::new())
            .is_err()
    );
    let mut scrubber = r
        .manager
        .step_scrubber(
            0,
            vram_alloc::StepScrubOptions::new()
                .budget(1.0)
                .unwrap()
                .summary_interval(Duration::from_secs(10)),
        )
        .unwrap();
    let summaries = |r: &Rig| {
        r.audit
            .events()
            .iter()
            .filter(|e| matches!(e, AuditEvent::VerificationSummary { .. }))
            .count()
    };
    step_until(&mut scrubber, |s| s.verified() > 0).unwrap();
    assert_eq!(summaries(&r), 0);
    r.clock.advance(Duration::from_secs(11));
    scrubber.step(None).unwrap();
    assert_eq!(summaries(&r), 1);
    scrubber.stop().unwrap();
    assert!(scrubber.stop().is_ok(), "stop is idempotent");
    assert!(
        scrubber.step(None).is_err(),
        "a stopped scrubber queues nothing"
    );
}
