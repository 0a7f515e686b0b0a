//! `VramManager`: seals model shards into GPU memory and re-verifies them, behind a backend trait.
//!
//! This crate provides:
//! - [`VramManager`]: seal (every seal is a [`SealPlan`]: it checks, claims and reserves; then
//!   place → upload or check in place → digest the resident bytes → seal → audit), verify,
//!   capacity queries and metrics; `Send + Sync`;
//! - [`backend`]: the [`MockBackend`](backend::MockBackend) test double (fault injection and
//!   simulated corruption with the `test-utils` feature only); the backend trait itself, and
//!   the CUDA backend, are private to this crate, so no outside type can claim memory is VRAM;
//! - the VRAM-only policy, applied with `vram-policy`'s rules: `enforce_vram_only_policy`,
//!   `is_vram_only`, `policy_report` and `attest_vram_residency` on the manager;
//! - [`audit`]: audit events, an in-memory sink and a hash-chained JSON-lines file sink;
//! - [`VramMetrics`]: the contract's metrics, rendered as Prometheus text by `prometheus-client`.
//!
//! VRAM is released exactly once, when the last clone of a shard is dropped
//! (`docs/adr/0002-shard-ownership.md`).
//!
//! Where things are decided (one place each):
//!
//! | decision | where |
//! |---|---|
//! | the public ways to seal (bytes, a file, a range in place, a model, a group, a plan) | `manager/seal/entry.rs`, one line each |
//! | a seal's pre-flight (ids, devices, sizes, capacity), for every kind of seal | `manager/seal/preflight.rs`, run by `SealPlan` (`manager/seal/plan.rs`) |
//! | how shard ids are made (derived, group member, model tensor) and claimed | `manager/seal/ids.rs` |
//! | the steps of one seal (place, upload or check in place, digest, check, sign, register) and what a failed one leaves | `manager/seal/steps.rs` |
//! | a set's epilogue (group seal or model digest, records held back, fail-closed) | `manager/seal/plan.rs` |
//! | whether an allocation is VRAM-only memory covering the shard | `manager/allocation_check.rs` |
//! | whether a failure stops the manager | `Shared::stop_on` in `manager/shared.rs` |
//! | what class an error is (integrity, policy, capacity, input, environment) | `VramError::class` in `vram-types` |
//! | which digest runs where (GPU kernel or host, bounded share) | the backend's `digest` (`backend/cuda.rs`, `backend/mock/mod.rs`) |
//! | how checks are ordered with an engine's stream | `vram-cuda-sys`'s `stream.rs`, `tree_digest/order.rs` and `tree_digest/step.rs` |
//! | what a model file's header says (format, tensor table, header extent) | `vram-formats` |
//! | what the step scrubber spends (its calls' host time and GPU work) | `manager/step_scrub.rs` |
//! | the audit record format | `audit/format.rs` (`.specs/audit.md`) |
//!
//! A manager is no signing oracle and no audit pen. Whoever holds one can have it attest only a
//! shard it has just verified, and cannot make it sign a statement, write an audit record of
//! its choosing, or stop it at will (none of these compile):
//!
//! ```compile_fail
//! let m = vram_alloc::VramManager::with_capacity(64 << 20);
//! let _ = m.sign_statement(b"backend=cuda simulated=false");
//! ```
//! ```compile_fail
//! use vram_alloc::audit::AuditEvent;
//! let m = vram_alloc::VramManager::with_capacity(64 << 20);
//! m.record_audit_event(AuditEvent::SealVerified { shard_id: "forged".into(), gpu_device: 0 });
//! ```
//! ```compile_fail
//! let m = vram_alloc::VramManager::with_capacity(64 << 20);
//! m.stop("because I said so");
//! let _ = m.live_allocation_facts();
//! ```
//!
//! ```
//! use vram_alloc::VramManager;
//!
//! let manager = VramManager::with_capacity(64 << 20); // mock backend, one 64 MiB device
//! let shard = manager.seal_model(&vec![1u8; 3 << 20], 0)?;
//! manager.verify_sealed(&shard)?;
//! assert_eq!(manager.used_vram(), 4 << 20); // 3 MiB rounded to the 2 MiB granularity
//! drop(shard);
//! assert_eq!(manager.used_vram(), 0);
//! # Ok::<(), vram_types::VramError>(())
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        reason = "tests"
    )
)]

pub mod audit;
pub mod backend;
mod capacity;
#[cfg(test)]
mod capacity_tests;
mod clock;
mod digester;
mod manager;
mod metrics;
#[cfg(feature = "test-utils")]
pub mod proof_bundle;
mod sync;

#[cfg(feature = "test-utils")]
pub use clock::ManualClock;

pub use digester::{ModelDigests, QueuedDigests, RangeDigester};
pub use manager::{
    EngineTensor, ExecutionMode, ExpectedFrom, GroupPart, GroupPlan, LentTensor, ModelExecution,
    ModelWeights, PlanError, PlanStep, ScrubEvent, ScrubOptions, Scrubber, SealOptions, SealPart,
    SealPlan, SealedGroup, SealedModel, SealedTensor, StepReport, StepScrubOptions, StepScrubber,
    UpdateExpectation, VramManager, VramManagerBuilder, Weights,
};
pub use metrics::{DeviceUsage, ExecutionCounts, VramMetrics};
/// An engine's memory to seal in place ([`VramManager::seal_in_place`]); its constructor from a
/// device address is `unsafe`: the caller vouches the memory stays allocated until released.
pub use vram_cuda_sys::resident::ForeignRange;
/// An inference engine's CUDA stream, named for [`ExecutionMode::BeforeAndAfterOn`] and
/// [`ExecutionMode::Pipelined`] (its constructor from a raw handle is `unsafe`: the caller
/// vouches that the stream is live).
pub use vram_cuda_sys::stream::EngineStream;

/// The facts of every CUDA GPU of the machine, without building a manager (for diagnostics
/// such as `vramctl doctor`).
///
/// # Errors
/// [`vram_types::VramError::NoGpu`] without a driver or GPU; [`vram_types::VramError::DriverTooOld`];
/// CUDA errors.
pub fn probe_gpus() -> Result<Vec<vram_types::DeviceFacts>, vram_types::VramError> {
    backend::CudaBackend::probe()
}
