//! Threads seal, verify, clone and drop shards at once (4 threads on one device; 8 threads ×
//! 10,000 operations on two): no panic, no over-commit, and `used_vram` always equals the
//! footprint of the live shards.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::indexing_slicing,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::{MIB, model, rig, rig_with_sink};
use vram_types::VramError;

#[test]
fn four_threads_seal_verify_and_drop_with_exact_accounting() {
    let r = rig(64 * MIB);
    let manager = r.manager.clone();
    let live: Arc<Mutex<HashMap<String, vram_types::SealedShard>>> = Arc::default();
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let (manager, live) = (manager.clone(), live.clone());
            s.spawn(move || {
                let mut state = u64::from(t) * 7919 + 1;
                let mut next = move || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                for i in 0..150u32 {
                    let len = 1 + (next() % (5 * MIB as u64)) as usize;
                    let id = format!("t{t}-{i}");
                    match manager.seal_model_with_id(&id, &model(len, t), 0) {
                        Ok(shard) => {
                            manager.verify_sealed(&shard).unwrap();
                            live.lock().unwrap().insert(id, shard);
                        }
                        Err(VramError::InsufficientVram { .. }) => {}
                        Err(e) => panic!("unexpected {e}"),
                    }
                    if next() % 2 == 0 {
                        let victim = {
                            let mut map = live.lock().unwrap();
                            let key = map.keys().next().cloned();
                            key.and_then(|k| map.remove(&k))
                        };
                        if let Some(shard) = victim {
                            let copy = shard.clone();
                            manager.verify_sealed(&copy).unwrap();
                            drop(shard);
                            drop(copy);
                        }
                    }
                    assert!(manager.used_vram() <= manager.total_vram());
                }
            });
        }
    });
    let live = live.lock().unwrap();
    let expected: usize = live
        .values()
        .map(|s| r.manager.vram_footprint(s.vram_bytes))
        .sum();
    assert_eq!(r.manager.used_vram(), expected);
    assert_eq!(r.mock.live_allocations(), live.len());
    let m = r.manager.metrics();
    assert!(m.seals_succeeded > 100, "{m:?}");
    assert_eq!(m.verifications_failed, 0);
    drop(live);
}

/// 8 threads × 10,000 operations (seal, verify, clone, release, query) on two small devices:
/// no panic, no over-commit at any step, exact accounting at the end, every seal and release
/// audited, no verification failure.
#[test]
fn eight_threads_ten_thousand_operations_each() {
    use vram_alloc::audit::InMemoryAuditSink;
    use vram_alloc::backend::MockBackend;

    const THREADS: u64 = 8;
    const OPS: u32 = 10_000;
    let r = rig_with_sink(
        MockBackend::builder()
            .device(8 * MIB)
            .device(8 * MIB)
            .granularity(64 << 10)
            .build(),
        vram_types::VramConfig::default(),
        InMemoryAuditSink::with_capacity(1 << 20),
    );
    let (manager, mock, audit) = (&r.manager, &r.mock, &r.audit);
    let sealed: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    let mut state = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    let mut next = move || {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state
                    };
                    let mut live: Vec<vram_types::SealedShard> = Vec::new();
                    let mut sealed = 0u64;
                    for i in 0..OPS {
                        match next() % 8 {
                            0..=2 => {
                                let len = 1 + (next() % 4096) as usize;
                                let device = (next() % 2) as u32;
                                let id = format!("t{t}-{i}");
                                match manager.seal_model_with_id(&id, &model(len, t as u8), device)
                                {
                                    Ok(shard) => {
                                        sealed += 1;
                                        live.push(shard);
                                    }
                                    Err(VramError::InsufficientVram { .. }) => {}
                                    Err(e) => panic!("seal: {e}"),
                                }
                            }
                            3 | 4 if !live.is_empty() => {
                                let k = (next() % live.len() as u64) as usize;
                                manager.verify_sealed(&live[k]).unwrap();
                            }
                            5 if !live.is_empty() => {
                                let k = (next() % live.len() as u64) as usize;
                                drop(live[k].clone());
                            }
                            6 if !live.is_empty() => {
                                let k = (next() % live.len() as u64) as usize;
                                drop(live.swap_remove(k));
                            }
                            _ => {
                                let _ = manager.available_vram_on((next() % 2) as u32);
                                let _ = manager.metrics();
                            }
                        }
                        assert!(manager.used_vram() <= manager.total_vram());
                        // Keep each thread's share of the devices small, so seals keep landing.
                        if live.len() > 12 {
                            live.swap_remove(0);
                        }
                    }
                    sealed
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(manager.used_vram(), 0);
    assert_eq!(mock.live_allocations(), 0);
    let m = manager.metrics();
    assert_eq!(m.seals_succeeded, sealed);
    assert_eq!(m.verifications_failed, 0);
    assert!(sealed > u64::from(OPS) * THREADS / 5, "{sealed} seals");
    let events = audit.events();
    let count = |name: &str| events.iter().filter(|e| e.name() == name).count() as u64;
    assert_eq!(count("VramSealed"), sealed);
    assert_eq!(count("VramDeallocated"), sealed);
    assert_eq!(audit.evicted(), 0);
}
