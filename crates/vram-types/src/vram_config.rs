//! `VramConfig`: how a `VramManager` is set up. Holds no key material (the seal key is passed
//! separately, so that printing a config can never print a key).

use std::time::Duration;

use crate::digest_algorithm::DigestAlgorithm;
use crate::gpu_share::GpuShare;
use crate::validation::DEFAULT_MAX_MODEL_BYTES;

/// Configuration of a VRAM manager.
#[derive(Debug, Clone, PartialEq)]
pub struct VramConfig {
    /// Worker id, recorded in audit records and used to derive the seal key.
    pub worker_id: String,
    /// Largest model accepted, in bytes (default 100 GB).
    pub max_model_bytes: u64,
    /// Capacity to manage per device, in bytes; `None` takes it from the device.
    pub capacity_bytes: Option<usize>,
    /// Fraction of the device's total memory the manager may use, like vLLM's
    /// `gpu_memory_utilization` (default 1.0; applied when `capacity_bytes` is `None`).
    pub memory_fraction: f64,
    /// Digest algorithm for new seals (default `sha256-tree-65536`).
    pub digest_algorithm: DigestAlgorithm,
    /// Whether seals cover the seal time (default true; false for determinism tests).
    pub include_seal_time: bool,
    /// Refuse seals older than this at verification (default: no limit). The age is measured on
    /// a monotonic clock from the moment of sealing: wall-clock steps do not change it.
    pub max_seal_age: Option<Duration>,
    /// Stop accepting work after a failed verification (the contract's "worker transitions to
    /// Stopped"; default true).
    pub stop_on_verification_failure: bool,
    /// Accept devices whose kernels can read pageable host memory (HMM/ATS). Default false:
    /// that access is a RAM path the allocation checks cannot see.
    pub allow_pageable_memory_access: bool,
    /// How much of the GPU a background verification may take
    /// (`verify_sealed_background`; default [`GpuShare::BACKGROUND`], 1/16 of the SMs).
    /// Per-request verification always takes the whole GPU for its few milliseconds.
    pub background_gpu_share: GpuShare,
    /// What an audit record that cannot be stored does (default
    /// [`AuditFailurePolicy::FailClosed`]).
    pub audit_failure_policy: AuditFailurePolicy,
}

/// What the manager does when its audit sink cannot store a record (a full disk, a sink that
/// panics). Either way the failure is counted in `vram_audit_failures_total` and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AuditFailurePolicy {
    /// Nothing happens that the trail does not show. An operation whose record cannot be
    /// stored is refused with `VramError::AuditFailed` (a seal is undone, a verification does
    /// not pass); a record that cannot be refused (a release, a failed verification, a policy
    /// violation, a failed allocation) stops the manager, which then refuses every seal and
    /// verification until restarted.
    #[default]
    FailClosed,
    /// Keep working; the gap is only counted and logged. For workers whose audit trail is
    /// best effort.
    Continue,
}

impl Default for VramConfig {
    fn default() -> Self {
        Self {
            worker_id: "worker".to_owned(),
            max_model_bytes: DEFAULT_MAX_MODEL_BYTES,
            capacity_bytes: None,
            memory_fraction: 1.0,
            digest_algorithm: DigestAlgorithm::default(),
            include_seal_time: true,
            max_seal_age: None,
            stop_on_verification_failure: true,
            allow_pageable_memory_access: false,
            background_gpu_share: GpuShare::BACKGROUND,
            audit_failure_policy: AuditFailurePolicy::default(),
        }
    }
}
