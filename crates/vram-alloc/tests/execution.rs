//! Verified execution: an engine computes on the sealed bytes through the lending view, inside a
//! scope that verified them first and (in the checked modes) again after the engine's work.
//! The checks' semantics run on both backends from one source (`<name>::mock` in CI,
//! `<name>::cuda` on a GPU with `VRAM_TEST_GPU=1 ... -- --include-ignored`); the real workload
//! (a GEMM on the engine's own CUDA stream, reading the weights where they lie, a byte flipped
//! by a kernel on that stream during the execution) is GPU-only, with a host GEMV standing in
//! on the mock.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    missing_docs,
    reason = "tests"
)]

#[macro_use]
mod common;

use std::cell::Cell;

use common::{MIB, On, keep_going, model, rig_on};
use vram_alloc::audit::{AuditEvent, Severity};
use vram_alloc::{ExecutionMode, VramManager};
use vram_types::{VramConfig, VramError};

on_both_backends! {
    intact_weights_are_lent_after_a_verification_and_the_value_is_released
    a_corrupted_shard_is_never_lent
    bytes_changed_during_the_execution_withhold_the_result_and_stop_the_worker
    the_check_after_is_what_catches_a_change_during_the_execution
    the_view_shows_no_address_and_a_foreign_shard_is_not_lent
}

/// The checked modes every backend offers (the stream-ordered ones need a GPU's stream).
const MODES: [ExecutionMode<'static>; 2] = [ExecutionMode::Before, ExecutionMode::BeforeAndAfter];

fn execution_counts(m: &VramManager) -> (u64, u64, u64) {
    let e = m.metrics().executions;
    (e.passed, e.refused_before, e.caught_after)
}

fn intact_weights_are_lent_after_a_verification_and_the_value_is_released(on: On) {
    let r = rig_on(on, 16 * MIB, VramConfig::default());
    let bytes = model(3 * MIB, 1);
    let shard = r.manager.seal_model_with_id("w", &bytes, 0).unwrap();
    for mode in MODES {
        let seen = r
            .manager
            .execute(&shard, mode, |weights| {
                assert_eq!(weights.len(), 3 * MIB);
                assert_eq!(weights.device(), 0);
                assert_eq!(weights.shard_id(), "w");
                assert_ne!(weights.device_ptr(), 0);
                // On the mock the engine reads host memory; on a GPU its kernels would.
                weights.read_host(|b| b == bytes.as_slice())
            })
            .unwrap();
        assert_ne!(seen, Some(false), "the lent bytes are the sealed bytes");
    }
    assert_eq!(execution_counts(&r.manager), (2, 0, 0));
    // Every check is a verification: one for Before, two for BeforeAndAfter.
    let verified = r
        .audit
        .events()
        .iter()
        .filter(|e| matches!(e, AuditEvent::SealVerified { .. }))
        .count();
    assert_eq!(verified, 3);
    assert!(
        r.manager
            .metrics()
            .prometheus_text()
            .contains("vram_executions_total{gpu_device=\"0\",result=\"passed\"} 2")
    );
}

fn a_corrupted_shard_is_never_lent(on: On) {
    for mode in MODES {
        let r = rig_on(on, 16 * MIB, keep_going());
        let shard = r.manager.seal_model(&model(MIB, 2), 0).unwrap();
        r.manager.corrupt_byte_for_tests(&shard, 12_345).unwrap();
        let ran = Cell::new(false);
        let err = r
            .manager
            .execute(&shard, mode, |_| ran.set(true))
            .unwrap_err();
        assert!(
            matches!(err, VramError::IntegrityViolation { .. }),
            "{err:?}"
        );
        assert!(!ran.get(), "the engine never ran on corrupted weights");
        assert_eq!(execution_counts(&r.manager), (0, 1, 0));
    }
}

fn bytes_changed_during_the_execution_withhold_the_result_and_stop_the_worker(on: On) {
    let r = rig_on(on, 16 * MIB, VramConfig::default());
    let shard = r
        .manager
        .seal_model_with_id("w", &model(MIB, 3), 0)
        .unwrap();
    let result = r
        .manager
        .execute(&shard, ExecutionMode::BeforeAndAfter, |_| {
            // Something writes into the weights while the engine computes with them.
            r.manager
                .flip_bits_for_tests(&shard, MIB - 1, 0x10)
                .unwrap();
            "a response computed on altered weights"
        });
    let err = result.unwrap_err();
    assert!(
        matches!(&err, VramError::ModifiedDuringExecution { shard_id, .. } if shard_id == "w"),
        "{err:?}"
    );
    assert!(err.is_security_critical());
    assert_eq!(execution_counts(&r.manager), (0, 0, 1));
    // A critical record names the shard, and the worker stops as after any failed check.
    let failure = r
        .audit
        .records()
        .into_iter()
        .find(|rec| matches!(rec.event, AuditEvent::SealVerificationFailed { .. }))
        .unwrap();
    assert_eq!(failure.severity, Severity::Critical);
    match failure.event {
        AuditEvent::SealVerificationFailed {
            shard_id, reason, ..
        } => {
            assert_eq!(shard_id, "w");
            assert!(reason.contains("changed during execution"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(r.manager.is_stopped());
    assert_eq!(
        r.manager
            .execute(&shard, ExecutionMode::Before, |_| ())
            .unwrap_err(),
        VramError::Stopped
    );
}

fn the_check_after_is_what_catches_a_change_during_the_execution(on: On) {
    // The same write with only the check before: the value is released (what that mode
    // proves is the state when the engine was handed the bytes), and the next check fails.
    let r = rig_on(on, 16 * MIB, keep_going());
    let shard = r.manager.seal_model(&model(MIB, 4), 0).unwrap();
    let value = r
        .manager
        .execute(&shard, ExecutionMode::Before, |_| {
            r.manager.flip_bits_for_tests(&shard, 0, 1).unwrap();
            7
        })
        .unwrap();
    assert_eq!(value, 7);
    assert!(matches!(
        r.manager.verify_sealed(&shard),
        Err(VramError::IntegrityViolation { .. })
    ));
    assert_eq!(execution_counts(&r.manager), (1, 0, 0));
}

fn the_view_shows_no_address_and_a_foreign_shard_is_not_lent(on: On) {
    let r = rig_on(on, 16 * MIB, keep_going());
    let shard = r
        .manager
        .seal_model_with_id("w", &model(MIB, 5), 0)
        .unwrap();
    r.manager
        .execute(&shard, ExecutionMode::Before, |weights| {
            let shown = format!("{weights:?}");
            let address = weights.device_ptr();
            assert!(!shown.contains(&address.to_string()), "{shown}");
            assert!(!shown.contains(&format!("{address:x}")), "{shown}");
            assert!(shown.contains("\"w\"") && shown.contains("len"), "{shown}");
        })
        .unwrap();
    // A shard of another manager is not this manager's to lend.
    let other = VramManager::with_capacity(16 * MIB);
    let foreign = other.seal_model(&model(MIB, 6), 0).unwrap();
    let ran = Cell::new(false);
    assert!(matches!(
        r.manager
            .execute(&foreign, ExecutionMode::Before, |_| ran.set(true)),
        Err(VramError::NotSealed { .. })
    ));
    assert!(!ran.get());
    // No address in the audit trail or the metrics.
    let trail = format!("{:?}", r.audit.records());
    let text = r.manager.metrics().prometheus_text().to_owned();
    r.manager
        .execute(&shard, ExecutionMode::Before, |weights| {
            let address = weights.device_ptr().to_string();
            assert!(!trail.contains(&address) && !text.contains(&address));
        })
        .unwrap();
}

/// The mock's stand-in engine: a GEMV over the lent f32 weights, computed on the host.
#[test]
fn a_host_engine_computes_on_the_lent_weights_on_the_mock() {
    let r = rig_on(On::Mock, 16 * MIB, VramConfig::default());
    let (rows, cols) = (64usize, 256usize);
    let matrix: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32 - 3.0).collect();
    let x: Vec<f32> = (0..cols).map(|j| (j % 5) as f32 * 0.5).collect();
    let bytes: Vec<u8> = matrix.iter().flat_map(|v| v.to_le_bytes()).collect();
    let shard = r.manager.seal_model(&bytes, 0).unwrap();
    let gemv = |w: &[u8]| -> Vec<f32> {
        (0..rows)
            .map(|i| {
                (0..cols)
                    .map(|j| {
                        let at = (i * cols + j) * 4;
                        f32::from_le_bytes(w[at..at + 4].try_into().unwrap()) * x[j]
                    })
                    .sum()
            })
            .collect()
    };
    let y = r
        .manager
        .execute(&shard, ExecutionMode::BeforeAndAfter, |weights| {
            weights.read_host(gemv).unwrap()
        })
        .unwrap();
    let reference: Vec<f32> = (0..rows)
        .map(|i| (0..cols).map(|j| matrix[i * cols + j] * x[j]).sum())
        .collect();
    assert_eq!(y, reference);
}

/// The real workload on a GPU: a tiled f32 GEMM on the engine's own high-priority stream reads
/// the sealed weights where they lie; the checks are ordered with it on the GPU.
#[test]
#[ignore = "needs a GPU: VRAM_TEST_GPU=1 and --include-ignored"]
fn a_gemm_on_the_engine_stream_computes_on_the_sealed_weights_and_is_checked_around() {
    use vram_alloc::EngineStream;
    use vram_cuda_sys::memory::DeviceBuffer;
    use vram_cuda_sys::stream::{Stream, StreamPriority};
    use vram_cuda_sys::testing::TestEngine;

    let r = rig_on(On::Cuda, 256 * MIB, keep_going());
    let n = 1024u32; // 4 MiB of f32 weights: 64 leaves, digested by the GPU kernels
    let len = (n * n) as usize;
    let a: Vec<f32> = (0..len).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let b: Vec<f32> = (0..len).map(|i| ((i * 3) % 11) as f32 * 0.25).collect();
    let to_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let shard = r.manager.seal_model_with_id("a", &to_bytes(&a), 0).unwrap();
    let device = vram_cuda_sys::Device::open(0).unwrap();
    let engine = TestEngine::new(&device).unwrap();
    let stream = Stream::new(&device, StreamPriority::Highest).unwrap();
    let b_dev = DeviceBuffer::alloc(&device, len * 4).unwrap();
    b_dev.write(0, &to_bytes(&b)).unwrap();
    let c_dev = DeviceBuffer::alloc(&device, len * 4).unwrap();
    let on_stream = EngineStream::of(&stream);
    let gemm = |weights: &vram_alloc::Weights<'_>| {
        let w = weights.device_buffer().unwrap();
        engine.queue_sgemm(&stream, (w, &b_dev, &c_dev), n).unwrap();
    };
    let read_c = || {
        stream.synchronize().unwrap();
        let mut out = vec![0u8; len * 4];
        c_dev.read(0, &mut out).unwrap();
        out.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect::<Vec<f32>>()
    };
    // CPU reference of a few rows (all small integers times 0.25: exact in f32).
    let check_rows = |c: &[f32]| {
        for i in [0usize, 1, 511, 1023] {
            for j in [0usize, 77, 1023] {
                let want: f32 = (0..n as usize)
                    .map(|k| a[i * n as usize + k] * b[k * n as usize + j])
                    .sum();
                assert_eq!(c[i * n as usize + j], want, "c[{i}][{j}]");
            }
        }
    };
    for mode in [
        ExecutionMode::BeforeAndAfterOn(on_stream),
        ExecutionMode::Pipelined(on_stream),
    ] {
        r.manager.execute(&shard, mode, gemm).unwrap();
        check_rows(&read_c());
    }
    // A kernel on the engine's stream writes into the weights after the GEMM: the check
    // after, ordered after that kernel on the GPU, catches it, and the result is withheld.
    for (i, mode) in [
        ExecutionMode::BeforeAndAfterOn(on_stream),
        ExecutionMode::Pipelined(on_stream),
    ]
    .into_iter()
    .enumerate()
    {
        let err = r
            .manager
            .execute(&shard, mode, |weights| {
                gemm(weights);
                let w = weights.device_buffer().unwrap();
                engine.queue_flip(&stream, w, 4096 * (i + 1), 0x80).unwrap();
            })
            .unwrap_err();
        assert!(
            matches!(err, VramError::ModifiedDuringExecution { .. }),
            "{mode:?}: {err:?}"
        );
        // Undo it for the next mode (the same write again), and check the shard is whole.
        r.manager
            .flip_bits_for_tests(&shard, 4096 * (i + 1), 0x80)
            .unwrap();
        r.manager.verify_sealed(&shard).unwrap();
    }
    // Corrupted before: the checked mode never runs the engine; the pipelined one finds it
    // and withholds the result the engine computed.
    r.manager.flip_bits_for_tests(&shard, 100, 1).unwrap();
    let ran = std::cell::Cell::new(false);
    let err = r
        .manager
        .execute(&shard, ExecutionMode::BeforeAndAfterOn(on_stream), |_| {
            ran.set(true);
        })
        .unwrap_err();
    assert!(matches!(err, VramError::IntegrityViolation { .. }) && !ran.get());
    let err = r
        .manager
        .execute(&shard, ExecutionMode::Pipelined(on_stream), gemm)
        .unwrap_err();
    assert!(
        matches!(err, VramError::IntegrityViolation { .. }),
        "{err:?}"
    );
    let e = r.manager.metrics().executions;
    assert_eq!((e.passed, e.refused_before, e.caught_after), (2, 2, 2));
}

/// The pipelined mode through the guard form (as the Python windows drive it): a change during
/// the engine's work is `ModifiedDuringExecution`, not the stop it causes. (The mock computes
/// the digest queued ahead at once and ignores the stream, so any handle stands in.)
#[test]
fn a_pipelined_guard_names_a_change_during_the_execution() {
    let r = rig_on(On::Mock, 16 * MIB, VramConfig::default());
    let shard = r
        .manager
        .seal_model_with_id("w", &model(MIB, 5), 0)
        .unwrap();
    let stream = vram_alloc::EngineStream::held_by_binding(0, 0);
    let model = r
        .manager
        .execute(&shard, ExecutionMode::Pipelined(stream), |_| 1)
        .unwrap();
    assert_eq!(model, 1);
    let err = r
        .manager
        .execute(&shard, ExecutionMode::Pipelined(stream), |_| {
            r.manager.flip_bits_for_tests(&shard, 7, 0x01).unwrap();
        })
        .unwrap_err();
    assert!(
        matches!(&err, VramError::ModifiedDuringExecution { shard_id, .. } if shard_id == "w"),
        "{err:?}"
    );
    assert_eq!(execution_counts(&r.manager), (1, 0, 1));
    assert!(r.manager.is_stopped());
}
