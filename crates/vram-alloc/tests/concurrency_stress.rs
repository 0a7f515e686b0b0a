//! Four threads seal, verify, clone and drop shards at once on one device: no panic, no
//! over-commit, and `used_vram` always equals the footprint of the live shards.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::{MIB, model, rig};
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
