//! Sealing memory an engine already holds, in place: checked like the manager's own
//! allocations, hashed where it lies with no copy, never freed by the manager and not counted
//! against its capacity; verified and lent like any shard. Both backends from one source
//! (`<name>::cuda` on a GPU with `VRAM_TEST_GPU=1 ... -- --include-ignored`).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "tests"
)]

#[macro_use]
mod common;

use common::{AnyRig, MIB, On, keep_going, model, names, rig_on};
use vram_alloc::audit::AuditEvent;
use vram_alloc::{ExecutionMode, SealOptions};
use vram_cuda_sys::resident::ForeignRange;
use vram_types::{VramConfig, VramError};

on_both_backends! {
    an_engines_tensor_is_sealed_where_it_lies_and_verified_like_any_shard
    a_change_to_the_engines_memory_is_caught
    bad_ranges_and_options_are_refused_and_change_nothing
}

/// Memory an engine allocated and filled: the mock's engine memory, or a device buffer given
/// up for good on a GPU (so it stays valid whatever the test does).
fn engine_tensor(r: &AnyRig, on: On, bytes: &[u8]) -> ForeignRange {
    match on {
        On::Mock => r.mock().unwrap().engine_memory(0, bytes).unwrap(),
        On::Cuda => {
            let device = vram_cuda_sys::Device::open(0).unwrap();
            let buffer = vram_cuda_sys::memory::DeviceBuffer::alloc(&device, bytes.len()).unwrap();
            buffer.write(0, bytes).unwrap();
            ForeignRange::leak(buffer)
        }
    }
}

fn an_engines_tensor_is_sealed_where_it_lies_and_verified_like_any_shard(on: On) {
    let r = rig_on(on, 16 * MIB, VramConfig::default());
    let bytes = model(5 * MIB + 3, 1);
    let tensor = engine_tensor(&r, on, &bytes);
    let shard = r
        .manager
        .seal_in_place(tensor, &SealOptions::new().shard_id("layer.0.weight"))
        .unwrap();
    // The digest of the bytes where they lie is the digest of the engine's bytes.
    assert_eq!(
        shard.digest,
        vram_seal::digest(&bytes, shard.digest_algorithm()).to_hex()
    );
    assert_eq!((shard.vram_bytes, shard.gpu_device), (bytes.len(), 0));
    // Not the manager's memory: no capacity taken, but a resident shard all the same.
    assert_eq!(r.manager.used_vram(), 0);
    assert!(
        r.manager
            .metrics()
            .prometheus_text()
            .contains("vram_shards_resident{gpu_device=\"0\"} 1"),
        "{}",
        r.manager.metrics().prometheus_text()
    );
    r.manager.verify_sealed(&shard).unwrap();
    let lent = r
        .manager
        .execute(&shard, ExecutionMode::BeforeAndAfter, |w| {
            (w.len(), w.read_host(|b| b == bytes.as_slice()))
        })
        .unwrap();
    assert_eq!(lent.0, bytes.len());
    assert_ne!(lent.1, Some(false));
    let events = r.audit.events();
    assert!(matches!(
        &events[0],
        AuditEvent::VramSealed {
            in_place: true,
            reserved_bytes: 0,
            ..
        }
    ));
    drop(shard);
    // Released from the manager, never freed by it: the engine still has its bytes.
    assert_eq!(names(&r.audit.events()).last(), Some(&"VramDeallocated"));
    r.assert_live_allocations(0);
    if let Some(mock) = r.mock() {
        assert_eq!(mock.read_engine_memory(&tensor).unwrap(), bytes);
    }
    // The same memory can be sealed again once released.
    r.manager
        .seal_in_place(tensor, &SealOptions::new())
        .unwrap();
}

fn a_change_to_the_engines_memory_is_caught(on: On) {
    let r = rig_on(on, 16 * MIB, keep_going());
    let bytes = model(MIB, 2);
    let tensor = engine_tensor(&r, on, &bytes);
    let shard = r
        .manager
        .seal_in_place(tensor, &SealOptions::new())
        .unwrap();
    // The engine (or a bug in it) writes into its weights after they were sealed.
    r.manager.flip_bits_for_tests(&shard, 4242, 0x04).unwrap();
    assert!(matches!(
        r.manager.verify_sealed(&shard),
        Err(VramError::IntegrityViolation { .. })
    ));
    let ran = std::cell::Cell::new(false);
    assert!(
        r.manager
            .execute(&shard, ExecutionMode::Before, |_| ran.set(true))
            .is_err()
    );
    assert!(!ran.get());
    // An expected digest is checked on the bytes where they lie.
    let r2 = rig_on(on, 16 * MIB, keep_going());
    let other = engine_tensor(&r2, on, &bytes);
    let wrong = SealOptions::new().expect_digest(vram_seal::digest(b"x", shard.digest_algorithm()));
    assert!(matches!(
        r2.manager.seal_in_place(other, &wrong),
        Err(VramError::UnexpectedDigest { .. })
    ));
    let right =
        SealOptions::new().expect_digest(vram_seal::digest(&bytes, shard.digest_algorithm()));
    r2.manager.seal_in_place(other, &right).unwrap();
}

fn bad_ranges_and_options_are_refused_and_change_nothing(on: On) {
    let r = rig_on(on, 16 * MIB, VramConfig::default());
    let tensor = engine_tensor(&r, on, &model(MIB, 3));
    for (options, what) in [
        (SealOptions::new().shard_id("../x"), "shard_id"),
        (SealOptions::new().cross_check(true), "cross-check"),
        (
            SealOptions::new().expect_digest_in(
                vram_types::DigestAlgorithm::Sha256,
                vram_seal::digest(b"x", vram_types::DigestAlgorithm::Sha256),
            ),
            "expected digest",
        ),
    ] {
        let e = r.manager.seal_in_place(tensor, &options).unwrap_err();
        assert!(
            matches!(&e, VramError::InvalidInput { field, .. } if *field == what),
            "{what}: {e:?}"
        );
    }
    // Memory of a device that does not exist, and the mock's memory of another mock.
    let elsewhere = ForeignRange::mock(7, 1, MIB);
    assert!(matches!(
        r.manager.seal_in_place(elsewhere, &SealOptions::new()),
        Err(VramError::InvalidDevice { .. })
    ));
    let foreign_mock = vram_alloc::backend::MockBackend::with_capacity(16 * MIB)
        .engine_memory(0, &model(MIB, 4))
        .unwrap();
    if on == On::Mock {
        // Ids are per mock: this one names nothing of this mock's (or a buffer of another size).
        let e = r
            .manager
            .seal_in_place(ForeignRange::mock(0, 999, MIB), &SealOptions::new())
            .unwrap_err();
        assert!(matches!(e, VramError::InvalidInput { .. }), "{e:?}");
    } else {
        // A GPU cannot read the mock's memory.
        let e = r
            .manager
            .seal_in_place(foreign_mock, &SealOptions::new())
            .unwrap_err();
        assert!(matches!(e, VramError::InvalidInput { .. }), "{e:?}");
    }
    assert!(r.audit.events().is_empty(), "{:?}", r.audit.events());
    assert!(!r.manager.is_stopped());
    r.assert_live_allocations(0);
}

/// Managed and host memory are refused like a managed allocation of the manager's own would
/// be: a policy violation, recorded; the manager keeps running (the caller's range was
/// refused, nothing was sealed).
#[test]
#[ignore = "needs a GPU: VRAM_TEST_GPU=1 and --include-ignored"]
fn managed_and_host_ranges_are_refused_on_a_gpu() {
    let r = rig_on(On::Cuda, 16 * MIB, VramConfig::default());
    let device = vram_cuda_sys::Device::open(0).unwrap();
    for range in [
        ForeignRange::leak_managed(
            vram_cuda_sys::memory::ManagedBuffer::alloc(&device, MIB).unwrap(),
        ),
        ForeignRange::leak_pinned(
            vram_cuda_sys::memory::PinnedBuffer::alloc(&device, MIB).unwrap(),
        ),
    ] {
        let e = r
            .manager
            .seal_in_place(range, &SealOptions::new())
            .unwrap_err();
        assert!(matches!(e, VramError::PolicyViolation { .. }), "{e:?}");
    }
    assert_eq!(
        names(&r.audit.events()),
        ["PolicyViolation", "PolicyViolation"]
    );
    assert!(!r.manager.is_stopped());
    // A range that runs past its allocation's end is refused too.
    let buffer = vram_cuda_sys::memory::DeviceBuffer::alloc(&device, MIB).unwrap();
    let inside = ForeignRange::leak(buffer);
    let past = inside.grown_for_tests(2 * MIB + 1);
    assert!(matches!(
        r.manager.seal_in_place(past, &SealOptions::new()),
        Err(VramError::PolicyViolation { .. })
    ));
}
