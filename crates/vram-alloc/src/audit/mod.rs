//! The audit trail: one event per seal, verification, release, allocation failure and policy
//! violation (consumer contract §10.2, module map §6).
//!
//! Events go to an [`AuditSink`] ([`InMemoryAuditSink`] for tests, [`FileAuditSink`] for a
//! hash-chained JSON-lines file) and to `tracing` under the target `audit`. Events carry ids,
//! sizes, digests and reasons: never key bytes, seal bytes or device pointers. Input rejected by
//! validation is not audited (it changed nothing).

mod file;

use std::fmt;
use std::sync::Mutex;

use serde::Serialize;

use crate::sync::lock;

pub use file::{AuditChainError, AuditError, FileAuditSink, verify_audit_chain};

/// How urgent an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Severity {
    /// Normal operation.
    Info,
    /// Something an operator should look at (an allocation failed).
    Warning,
    /// A security event: a seal or integrity failure or a policy violation. File sinks sync
    /// these to disk before returning.
    Critical,
}

/// One auditable event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event")]
#[non_exhaustive]
pub enum AuditEvent {
    /// A shard was sealed in VRAM.
    VramSealed {
        /// Shard id.
        shard_id: String,
        /// CUDA device index.
        gpu_device: u32,
        /// Shard length in bytes.
        vram_bytes: usize,
        /// Bytes taken on the device (granularity included).
        reserved_bytes: usize,
        /// Digest of the resident bytes.
        digest: String,
        /// Digest algorithm id.
        digest_algorithm: String,
        /// Backend (`cuda` or `mock`).
        backend: String,
        /// The tensor-parallel group (model id) the shard was sealed in, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        group_id: Option<String>,
    },
    /// A shard passed verification.
    SealVerified {
        /// Shard id.
        shard_id: String,
        /// CUDA device index.
        gpu_device: u32,
    },
    /// A shard failed verification (critical).
    SealVerificationFailed {
        /// Shard id.
        shard_id: String,
        /// CUDA device index.
        gpu_device: u32,
        /// The error, as shown to the operator.
        reason: String,
    },
    /// A shard's VRAM was released.
    VramDeallocated {
        /// Shard id.
        shard_id: String,
        /// CUDA device index.
        gpu_device: u32,
        /// Bytes returned to the device (granularity included).
        freed_bytes: usize,
        /// The release error, when the driver reported one.
        error: Option<String>,
    },
    /// An allocation for a seal failed (capacity or driver).
    VramAllocationFailed {
        /// CUDA device index.
        gpu_device: u32,
        /// Bytes requested (granularity included).
        requested: usize,
        /// Bytes available when refused.
        available: usize,
        /// The error.
        reason: String,
    },
    /// A GPU passed the start-up checks and will hold shards.
    DeviceAccepted {
        /// CUDA device index.
        gpu_device: u32,
        /// Device name.
        name: String,
        /// Total device memory in bytes.
        total_memory: usize,
        /// ECC state when known.
        ecc_enabled: Option<bool>,
        /// Driver version when known.
        driver_version: Option<String>,
    },
    /// The VRAM-only policy was violated (critical).
    PolicyViolation {
        /// CUDA device index.
        gpu_device: u32,
        /// What was found.
        reason: String,
        /// Device ECC state when known.
        ecc_enabled: Option<bool>,
    },
}

impl AuditEvent {
    /// The event's severity.
    #[must_use]
    pub fn severity(&self) -> Severity {
        match self {
            Self::SealVerificationFailed { .. } | Self::PolicyViolation { .. } => {
                Severity::Critical
            }
            Self::VramAllocationFailed { .. } => Severity::Warning,
            Self::VramDeallocated { error, .. } if error.is_some() => Severity::Warning,
            _ => Severity::Info,
        }
    }

    /// The event's name, e.g. `VramSealed`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::VramSealed { .. } => "VramSealed",
            Self::SealVerified { .. } => "SealVerified",
            Self::SealVerificationFailed { .. } => "SealVerificationFailed",
            Self::VramDeallocated { .. } => "VramDeallocated",
            Self::VramAllocationFailed { .. } => "VramAllocationFailed",
            Self::PolicyViolation { .. } => "PolicyViolation",
            Self::DeviceAccepted { .. } => "DeviceAccepted",
        }
    }
}

/// An event with who, when and which operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The worker that emitted it.
    pub worker_id: String,
    /// Ties the events of one operation together (a seal and its later release share one).
    pub correlation_id: String,
    /// Severity.
    pub severity: Severity,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// Where audit records go.
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Stores one record.
    ///
    /// # Errors
    /// [`AuditError`] when the record could not be stored; the manager logs the failure.
    fn record(&self, record: &AuditRecord) -> Result<(), AuditError>;
}

/// Keeps records in memory (tests, and the default when no sink is configured).
#[derive(Debug, Default)]
pub struct InMemoryAuditSink {
    records: Mutex<Vec<AuditRecord>>,
}

impl InMemoryAuditSink {
    /// An empty sink.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every record so far.
    #[must_use]
    pub fn records(&self) -> Vec<AuditRecord> {
        lock(&self.records).clone()
    }

    /// The events so far, without the envelope.
    #[must_use]
    pub fn events(&self) -> Vec<AuditEvent> {
        lock(&self.records)
            .iter()
            .map(|r| r.event.clone())
            .collect()
    }

    /// Forgets every record.
    pub fn clear(&self) {
        lock(&self.records).clear();
    }
}

impl AuditSink for InMemoryAuditSink {
    fn record(&self, record: &AuditRecord) -> Result<(), AuditError> {
        lock(&self.records).push(record.clone());
        Ok(())
    }
}
