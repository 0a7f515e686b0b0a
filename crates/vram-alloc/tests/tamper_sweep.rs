//! Tamper sweeps: every single-bit flip of a shard, one at a time, and one flipped byte at
//! 10,000 random places of a large shard; each is caught by the next verification, and the
//! shard verifies again once the flip is undone. On a GPU (`<name>::cuda`, `#[ignore]`d
//! without one: `VRAM_TEST_GPU=1 cargo test --release -p vram-alloc --features test-utils
//! --test tamper_sweep -- --include-ignored --test-threads=1`): every bit of a 64 KiB shard and
//! 10,000 bytes of a 1 GiB shard. On the mock (CI): every bit of a 1 KiB shard and 1,000 bytes
//! of a 4 MiB shard. The time each sweep took is printed.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "tests"
)]

#[macro_use]
mod common;

use std::time::Instant;

use common::{On, keep_going, model, rig_on};
use vram_types::VramError;

fn caught(result: Result<(), VramError>, what: &str) {
    match result {
        Err(VramError::IntegrityViolation { .. }) => {}
        other => panic!("{what}: expected an integrity violation, got {other:?}"),
    }
}

fn every_bit_of_a_shard(on: On) {
    let len = match on {
        On::Mock => 1 << 10,
        On::Cuda => 64 << 10,
    };
    let r = rig_on(on, 256 << 20, keep_going());
    let shard = r
        .manager
        .seal_model_with_id("sweep", &model(len, 3), 0)
        .unwrap();
    let started = Instant::now();
    for offset in 0..len {
        for bit in 0..8 {
            let mask = 1u8 << bit;
            r.manager.flip_bits_for_tests(&shard, offset, mask).unwrap();
            caught(
                r.manager.verify_sealed(&shard),
                &format!("bit {bit} of byte {offset}"),
            );
            r.manager.flip_bits_for_tests(&shard, offset, mask).unwrap();
        }
    }
    let took = started.elapsed();
    r.manager.verify_sealed(&shard).unwrap();
    let m = r.manager.metrics();
    assert_eq!(m.verifications_failed, len as u64 * 8);
    eprintln!(
        "every bit of a {len}-byte shard on {on:?}: {} flips, all caught, in {:.1} s ({:.0} µs per flip and verification)",
        len * 8,
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / (len * 8) as f64
    );
}

fn random_bytes_of_a_large_shard(on: On) {
    let (len, flips) = match on {
        On::Mock => (4 << 20, 1_000),
        On::Cuda => (1 << 30, 10_000),
    };
    let r = rig_on(on, len + (64 << 20), keep_going());
    let shard = r
        .manager
        .seal_model_with_id("large", &model(len, 5), 0)
        .unwrap();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let started = Instant::now();
    for _ in 0..flips {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = (state % len as u64) as usize;
        // Any non-zero change of the byte: one bit up to all eight.
        let mask = ((state >> 56) as u8).max(1);
        r.manager.flip_bits_for_tests(&shard, offset, mask).unwrap();
        caught(
            r.manager.verify_sealed(&shard),
            &format!("byte {offset} ^ {mask:#04x}"),
        );
        r.manager.flip_bits_for_tests(&shard, offset, mask).unwrap();
    }
    let took = started.elapsed();
    r.manager.verify_sealed(&shard).unwrap();
    assert_eq!(r.manager.metrics().verifications_failed, flips);
    eprintln!(
        "{flips} random bytes of a {} MiB shard on {on:?}: all caught, in {:.1} s ({:.2} ms per flip and verification)",
        len >> 20,
        took.as_secs_f64(),
        took.as_secs_f64() * 1e3 / flips as f64
    );
}

on_both_backends! {
    every_bit_of_a_shard
    random_bytes_of_a_large_shard
}
