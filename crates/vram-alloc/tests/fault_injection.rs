//! Fault injection as a property: random sequences of seal, verify, attest, query, clone, release
//! and drop, on one thread and on several, with one failure injected into any backend call at
//! any point (device facts, memory info, allocation, upload, digest read-back, allocation facts,
//! free). After each step: `used_vram` equals the rounded sum of the live shards, no allocation
//! outlives its shard, no failed seal leaves anything behind, and nothing panics. At the end: the
//! audit trail pairs every seal with its release.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::sync::Arc;

use common::{Rig, model, rig_with};
use proptest::prelude::*;
use vram_alloc::audit::AuditEvent;
use vram_alloc::backend::MockBackend;
use vram_types::{SealedShard, VramConfig, VramError};

const KIB: usize = 1 << 10;

#[derive(Debug, Clone)]
enum Op {
    Seal { len: usize, device: u32 },
    Verify(usize),
    VerifyBackground(usize),
    Attest(usize),
    Query,
    CloneAndDrop(usize),
    Release(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..=96 * KIB, 0..2u32).prop_map(|(len, device)| Op::Seal { len, device }),
        2 => any::<usize>().prop_map(Op::Verify),
        1 => any::<usize>().prop_map(Op::VerifyBackground),
        1 => any::<usize>().prop_map(Op::Attest),
        1 => Just(Op::Query),
        1 => any::<usize>().prop_map(Op::CloneAndDrop),
        2 => any::<usize>().prop_map(Op::Release),
    ]
}

/// Two 1 MiB devices with a 64 KiB granularity: seals fill them quickly, so capacity refusals
/// happen too.
fn two_devices() -> Rig {
    let mock = MockBackend::builder()
        .device(1 << 20)
        .device(1 << 20)
        .granularity(64 * KIB)
        .build();
    rig_with(mock, VramConfig::default())
}

/// Errors an operation may return when a fault was injected or capacity ran out; anything else
/// (a panic included) fails the property.
fn expected(e: &VramError) -> bool {
    matches!(
        e,
        VramError::CudaOperationFailed { .. }
            | VramError::CudaAllocationFailed { .. }
            | VramError::CudaDeallocationFailed { .. }
            | VramError::InsufficientVram { .. }
            | VramError::SealVerificationFailed { .. }
            | VramError::IntegrityViolation { .. }
            | VramError::PolicyViolation { .. }
            | VramError::Stopped
    )
}

/// Runs `ops` on one thread's shards; checks the accounting after each step when `exact` (no
/// other thread is changing it) and the capacity bound always.
fn run(r: &Rig, ops: &[Op], tag: usize, exact: bool) -> (u64, Vec<SealedShard>) {
    let m = &r.manager;
    let mut live: Vec<SealedShard> = Vec::new();
    let mut sealed = 0u64;
    for (step, op) in ops.iter().enumerate() {
        let pick = |i: &usize, live: &Vec<SealedShard>| (!live.is_empty()).then(|| i % live.len());
        match op {
            Op::Seal { len, device } => {
                let id = format!("t{tag}-{step}");
                match m.seal_model_with_id(&id, &model(*len, step.to_le_bytes()[0]), *device) {
                    Ok(shard) => {
                        sealed += 1;
                        assert_eq!(shard.vram_bytes, *len);
                        live.push(shard);
                    }
                    Err(e) => assert!(expected(&e), "seal: {e}"),
                }
            }
            Op::Verify(i) | Op::VerifyBackground(i) | Op::Attest(i) => {
                if let Some(i) = pick(i, &live) {
                    let result = match op {
                        Op::Verify(_) => m.verify_sealed(&live[i]),
                        Op::VerifyBackground(_) => m.verify_sealed_background(&live[i]),
                        _ => m.attest_vram_residency(&live[i], b"nonce").map(drop),
                    };
                    if let Err(e) = result {
                        assert!(expected(&e), "{op:?}: {e}");
                    }
                }
            }
            Op::Query => {
                let _ = m.metrics();
                let _ = m.available_vram();
                for d in 0..m.device_count() {
                    let _ = m.available_vram_on(d);
                    let _ = m.device_facts(d);
                }
                let _ = m.policy_report();
            }
            Op::CloneAndDrop(i) => {
                if let Some(i) = pick(i, &live) {
                    drop(live[i].clone());
                }
            }
            Op::Release(i) => {
                if let Some(i) = pick(i, &live) {
                    drop(live.swap_remove(i));
                }
            }
        }
        assert!(m.used_vram() <= m.total_vram());
        if exact {
            assert_accounting(r, &live);
        }
    }
    (sealed, live)
}

fn assert_accounting(r: &Rig, live: &[SealedShard]) {
    let footprint: usize = live
        .iter()
        .map(|s| r.manager.vram_footprint(s.vram_bytes))
        .sum();
    assert_eq!(r.manager.used_vram(), footprint, "used_vram vs live shards");
    assert_eq!(
        r.mock.live_allocations(),
        live.len(),
        "allocations vs live shards"
    );
}

/// Every seal has exactly one release record once every shard is gone; every record names an
/// event the manager writes.
fn assert_audit_pairs(r: &Rig, sealed: u64) {
    let events: Vec<AuditEvent> = r.audit.events();
    let count = |name: &str| events.iter().filter(|e| e.name() == name).count() as u64;
    assert_eq!(count("VramSealed"), sealed, "a VramSealed record per seal");
    assert_eq!(
        count("VramDeallocated"),
        sealed,
        "a release record per seal"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn a_fault_anywhere_leaves_exact_accounting_on_one_thread(
        ops in proptest::collection::vec(op(), 1..40),
        fault_after in proptest::option::of(0u64..160),
    ) {
        let r = two_devices();
        r.note_seed("fault_after", fault_after);
        r.note_seed("ops", format!("{ops:?}"));
        r.mock.fail_call_after(fault_after);
        let (sealed, live) = run(&r, &ops, 0, true);
        drop(live);
        assert_accounting(&r, &[]);
        assert_audit_pairs(&r, sealed);
    }

    #[test]
    fn a_fault_anywhere_leaves_exact_accounting_on_four_threads(
        ops in proptest::collection::vec(proptest::collection::vec(op(), 1..30), 4),
        fault_after in proptest::option::of(0u64..300),
    ) {
        let r = Arc::new(two_devices());
        r.note_seed("fault_after", fault_after);
        r.note_seed("ops", format!("{ops:?}"));
        r.mock.fail_call_after(fault_after);
        let results: Vec<(u64, Vec<SealedShard>)> = std::thread::scope(|s| {
            let handles: Vec<_> = ops
                .iter()
                .enumerate()
                .map(|(t, ops)| {
                    let r = &r;
                    s.spawn(move || run(r, ops, t, false))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let live: Vec<SealedShard> = results.iter().flat_map(|(_, l)| l.iter().cloned()).collect();
        assert_accounting(&r, &live);
        let sealed = results.iter().map(|(n, _)| n).sum();
        drop(live);
        drop(results);
        assert_accounting(&r, &[]);
        assert_audit_pairs(&r, sealed);
    }
}
