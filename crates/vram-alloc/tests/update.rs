//! Updates of a model sealed in place (`manager/update.rs`): weights rewritten in place or moved
//! to new storage are sealed again only when they hash to the sender's digest; from the
//! announcement on, nothing vouches for the model and nothing fails or stops because a tensor is
//! being rewritten. On the mock (its engine memory stands in for an engine's tensors).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{MIB, model, rig};
use vram_alloc::audit::{AuditEvent, Severity};
use vram_alloc::{
    EngineTensor, ExecutionMode, RangeDigester, ScrubOptions, SealedModel, UpdateExpectation,
};
use vram_cuda_sys::resident::ForeignRange;
use vram_types::VramError;

const NAMES: [&str; 4] = ["a.weight", "b.weight", "c.bias", "d.weight"];

fn weights(seed: u8) -> Vec<Vec<u8>> {
    NAMES
        .iter()
        .enumerate()
        .map(|(i, _)| model(100_000 + i * 4_099, seed.wrapping_add(i as u8)))
        .collect()
}

fn place(r: &common::Rig, bytes: &[Vec<u8>]) -> Vec<EngineTensor> {
    let mock = r.mock.clone();
    NAMES
        .iter()
        .zip(bytes)
        .map(|(name, b)| EngineTensor {
            name: (*name).to_owned(),
            dtype: "U8".into(),
            shape: vec![b.len() as u64],
            range: mock.engine_memory(0, b).unwrap(),
        })
        .collect()
}

fn ranges(tensors: &[EngineTensor]) -> Vec<ForeignRange> {
    tensors.iter().map(|t| t.range).collect()
}

/// The sender's digests, as `digest_tensors` computes them where the weights lie.
fn sent(r: &common::Rig, tensors: &[EngineTensor]) -> UpdateExpectation {
    let d = RangeDigester::mock(r.mock.clone())
        .digest_model(tensors, r.manager.config().digest_algorithm, None)
        .unwrap();
    UpdateExpectation::Digest {
        model: d.model,
        tensors: Some(d.tensors.into_iter().collect()),
    }
}

fn names(r: &common::Rig) -> Vec<&'static str> {
    r.audit.events().iter().map(AuditEvent::name).collect()
}

#[test]
fn a_refit_written_in_place_is_sealed_again_when_it_hashes_to_the_senders_digest() {
    let r = rig(64 * MIB);
    let tensors = place(&r, &weights(1));
    let old = r
        .manager
        .seal_model_in_place("llm", tensors.clone(), None)
        .unwrap();
    r.manager.begin_update(&old).unwrap();
    // Announced: refused everywhere, recorded as nothing, nothing stopped.
    let before = r.audit.events().len();
    assert!(matches!(
        r.manager.verify_model(&old),
        Err(VramError::ModelUpdating { model_id }) if model_id == "llm"
    ));
    assert!(matches!(
        r.manager
            .execute_model(&old, ExecutionMode::BeforeAndAfter, |_| ()),
        Err(VramError::ModelUpdating { .. })
    ));
    assert_eq!(r.audit.events().len(), before, "no failure recorded");
    // The refit: new bytes written in place.
    let new = weights(9);
    for (range, bytes) in ranges(&tensors).iter().zip(&new) {
        r.mock.write_engine_memory(range, 0, bytes).unwrap();
    }
    let expect = sent(&r, &tensors);
    let updated = r.manager.update_model(&old, tensors, &expect).unwrap();
    assert_ne!(updated.digest(), old.digest());
    let UpdateExpectation::Digest {
        model: sent_model, ..
    } = &expect
    else {
        panic!("a digest was sent");
    };
    assert_eq!(updated.digest(), sent_model);
    r.manager.verify_model(&updated).unwrap();
    // The old handle is vouched for no more (and refused without a failure record).
    assert!(matches!(
        r.manager.verify_model(&old),
        Err(VramError::NotSealed { .. })
    ));
    assert!(!r.manager.is_stopped());
    let events = names(&r);
    assert!(events.contains(&"ModelUpdateStarted"));
    assert!(events.contains(&"ModelUpdated"));
    assert!(!events.contains(&"SealVerificationFailed"));
    assert!(
        r.manager
            .metrics()
            .prometheus_text()
            .contains("vram_model_updates_total{gpu_device=\"0\",result=\"sender\"} 1")
    );
}

#[test]
fn a_flipped_byte_in_an_offloaded_copy_is_refused_naming_the_tensor_until_a_good_update() {
    let r = rig(64 * MIB);
    let bytes = weights(3);
    let old = r
        .manager
        .seal_model_in_place("llm", place(&r, &bytes), None)
        .unwrap();
    let kept = *old.digest(); // kept from before sleep
    r.manager.begin_update(&old).unwrap();
    // Sleep: the storage is freed (here: dropped by the engine); wake: new storage, filled
    // from an offloaded copy in which one byte flipped.
    let mut offloaded = bytes.clone();
    offloaded[2][777] ^= 0x10;
    let woken = place(&r, &offloaded);
    let expect = UpdateExpectation::Digest {
        model: kept,
        tensors: None,
    };
    let refused = r.manager.update_model(&old, woken, &expect).unwrap_err();
    match &refused {
        VramError::UpdateRefused {
            model_id, tensor, ..
        } => {
            assert_eq!(model_id, "llm");
            assert_eq!(tensor.as_deref(), Some("c.bias"), "named by its old digest");
        }
        other => panic!("{other:?}"),
    }
    assert!(!r.manager.is_stopped(), "refused, not stopped");
    assert!(matches!(
        r.manager.verify_model(&old),
        Err(VramError::ModelUpdating { .. })
    ));
    let record = r
        .audit
        .events()
        .into_iter()
        .find(|e| e.name() == "ModelUpdateRefused")
        .unwrap();
    assert_eq!(record.severity(), Severity::Critical);
    // A good copy: accepted, the same model digest as before sleep.
    let again = r
        .manager
        .update_model(&old, place(&r, &bytes), &expect)
        .unwrap();
    assert_eq!(again.digest(), &kept);
    r.manager.verify_model(&again).unwrap();
}

#[test]
fn no_update_without_an_announcement_and_trusted_bytes_are_audited_as_such() {
    let r = rig(64 * MIB);
    let tensors = place(&r, &weights(5));
    let old = r
        .manager
        .seal_model_in_place("llm", tensors.clone(), None)
        .unwrap();
    let expect = sent(&r, &tensors);
    assert!(matches!(
        r.manager.update_model(&old, tensors.clone(), &expect),
        Err(VramError::InvalidInput { .. })
    ));
    r.manager.verify_model(&old).unwrap();
    r.manager.begin_update(&old).unwrap();
    r.manager.begin_update(&old).unwrap(); // announcing twice is allowed
    let trusted = r
        .manager
        .update_model(&old, tensors, &UpdateExpectation::TrustNewBytes)
        .unwrap();
    r.manager.verify_model(&trusted).unwrap();
    let record = r
        .audit
        .events()
        .into_iter()
        .find(|e| e.name() == "ModelUpdated")
        .unwrap();
    assert!(matches!(
        &record,
        AuditEvent::ModelUpdated { expected_from, .. } if expected_from == "trusted"
    ));
    assert_eq!(record.severity(), Severity::Warning);
    assert_eq!(
        names(&r)
            .iter()
            .filter(|n| **n == "ModelUpdateStarted")
            .count(),
        1,
        "one announcement recorded"
    );
    // A released model's hold ends with it: the id seals again as a new model.
    r.manager.begin_update(&trusted).unwrap();
    r.manager.release_model(trusted);
    let fresh = r
        .manager
        .seal_model_in_place("llm", place(&r, &weights(6)), None)
        .unwrap();
    r.manager.verify_model(&fresh).unwrap();
}

/// Windows and a continuous scrubber race an update: no window passes on half-written weights,
/// none fails (nothing is recorded as failed, nothing stops) because a tensor is being
/// rewritten, and once the update is accepted the new model serves.
#[test]
fn windows_and_the_scrubber_racing_an_update_serve_nothing_half_written_and_fail_nothing() {
    let r = rig(64 * MIB);
    let tensors = place(&r, &weights(7));
    let old = r
        .manager
        .seal_model_in_place("llm", tensors.clone(), None)
        .unwrap();
    let scrubber = r
        .manager
        .start_scrubber(ScrubOptions::new().interval(Duration::ZERO))
        .unwrap();
    let rewriting = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let new = weights(8);
    let updated: SealedModel = std::thread::scope(|s| {
        let windows = s.spawn(|| {
            let mut outcomes = BTreeMap::<&str, usize>::new();
            // Until the update is accepted, however fast or slow the machine.
            while !done.load(Ordering::Acquire) {
                let during = rewriting.load(Ordering::Acquire);
                let result = r
                    .manager
                    .execute_model(&old, ExecutionMode::BeforeAndAfter, |_| ());
                let name = match result {
                    Ok(()) => {
                        assert!(!during, "a window passed while the weights were rewritten");
                        "served"
                    }
                    Err(VramError::ModelUpdating { .. }) => "refused: updating",
                    Err(VramError::NotSealed { .. }) => "refused: superseded",
                    Err(e) => panic!("a window failed: {e}"),
                };
                *outcomes.entry(name).or_default() += 1;
            }
            outcomes
        });
        std::thread::sleep(Duration::from_millis(2));
        r.manager.begin_update(&old).unwrap();
        rewriting.store(true, Ordering::Release);
        for (range, bytes) in ranges(&tensors).iter().zip(&new) {
            r.mock.write_engine_memory(range, 0, bytes).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        let expect = sent(&r, &tensors);
        let updated = r
            .manager
            .update_model(&old, tensors.clone(), &expect)
            .unwrap();
        rewriting.store(false, Ordering::Release);
        done.store(true, Ordering::Release);
        let outcomes = windows.join().unwrap();
        assert!(
            outcomes.keys().any(|k| k.starts_with("refused")),
            "{outcomes:?}"
        );
        updated
    });
    r.manager
        .execute_model(&updated, ExecutionMode::BeforeAndAfter, |_| ())
        .unwrap();
    assert!(scrubber.failure().is_none(), "the scrubber failed nothing");
    drop(scrubber);
    assert!(!r.manager.is_stopped());
    assert!(!names(&r).contains(&"SealVerificationFailed"));
}
