//! The audit trail: one event per seal, verification, release, allocation failure and policy
//! violation (consumer contract §10.2, module map §6).
//!
//! Events go to an [`AuditSink`] ([`InMemoryAuditSink`]: a bounded window in memory;
//! [`FileAuditSink`]: a hash-chained JSON-lines file with signed checkpoints) and to `tracing`
//! under the target `audit`. Events carry ids, sizes, digests and reasons: never key bytes,
//! seal bytes or device pointers. Input rejected by validation is not audited (it changed
//! nothing). [`verify_audit_log`] checks a log file with only its public key
//! (`.specs/audit.md`).

//!
//! | module | role |
//! |---|---|
//! | `sink` | the [`AuditSink`] trait and its [`AuditError`] |
//! | `format` | the line format: encoding records, openings and checkpoints; scanning lines |
//! | `writer` | [`FileAuditSink`], the one writer of a log file, over a [`LogFile`] |
//! | `verify` | [`verify_audit_log`]: checking a log with its public key |
//! | `open` | opening a path only if it is a regular file |
//! | `memory` | [`InMemoryAuditSink`], a bounded ring |

mod format;
mod memory;
mod open;
mod sink;
mod verify;
mod writer;

use serde::Serialize;

pub use format::MAX_RECORD_BYTES;
pub use memory::{DEFAULT_IN_MEMORY_RECORDS, InMemoryAuditSink};
pub use sink::{AuditError, AuditSink};
pub use verify::{
    AuditLogError, AuditLogProblem, AuditLogSummary, AuditVerifyOptions, verify_audit_log,
    verify_audit_log_from,
};
pub use vram_seal::{AuditPublicKey, AuditSigningKey, Checkpoint};
pub use writer::{AuditLogOptions, FileAuditSink, LogFile};

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
        /// Sealed in place: the engine's memory, not copied and never freed by the manager
        /// (`reserved_bytes` is 0). Absent when false.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        in_place: bool,
        /// Where the expected digest the bytes were checked against came from (`caller`,
        /// `manifest`, `signed-manifest`, `unverified-signed-manifest`); absent when none was.
        #[serde(skip_serializing_if = "Option::is_none")]
        expected_from: Option<String>,
    },
    /// A shard passed verification.
    SealVerified {
        /// Shard id.
        shard_id: String,
        /// CUDA device index.
        gpu_device: u32,
    },
    /// A scrubber's passed verifications on one device since its last summary, in one
    /// record (`.specs/audit.md`): each failure is a `SealVerificationFailed` record of its own.
    VerificationSummary {
        /// CUDA device index.
        gpu_device: u32,
        /// Which scrubber: `background` (its own thread, a bounded GPU share) or `step`
        /// (between an engine's steps).
        scrubber: String,
        /// Shard verifications that passed.
        shards_verified: u64,
        /// Bytes those verifications hashed.
        bytes_verified: u64,
        /// Milliseconds from the first of them to this record.
        period_ms: u64,
        /// Milliseconds since the oldest proof of any shard resident on the device.
        oldest_proof_age_ms: u64,
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
    /// A seal failed after its VRAM was allocated; the allocation was released again.
    SealAborted {
        /// The shard id, when the caller gave one.
        #[serde(skip_serializing_if = "Option::is_none")]
        shard_id: Option<String>,
        /// CUDA device index.
        gpu_device: u32,
        /// Bytes that were allocated and released (granularity included).
        reserved_bytes: usize,
        /// Why the seal failed.
        reason: String,
        /// The seal failed a security check (the bytes that reached VRAM differ from the host
        /// bytes, or the allocation broke the VRAM-only policy): recorded as critical, and the
        /// manager stops as after a failed verification. Absent when false.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        security_failure: bool,
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
    /// An update of a model sealed in place was announced: nothing vouches for its tensors
    /// until an update is accepted or the model is released.
    ModelUpdateStarted {
        /// The model's id.
        model_id: String,
        /// CUDA device index.
        gpu_device: u32,
        /// The model digest before the update.
        digest: String,
    },
    /// An update was accepted: the model's tensors hash to the expected model digest (or the
    /// caller vouched for them) and are sealed again, each with its own `VramSealed` record.
    ModelUpdated {
        /// The model's id.
        model_id: String,
        /// CUDA device index.
        gpu_device: u32,
        /// The model digest before the update.
        old_digest: String,
        /// The model digest now sealed.
        digest: String,
        /// `sender`: the digest was the sender's; `trusted`: no digest was given, the caller
        /// vouched for the new bytes (recorded as a warning).
        expected_from: String,
    },
    /// An update was refused (critical): the model stays refused until a good update or its
    /// release.
    ModelUpdateRefused {
        /// The model's id.
        model_id: String,
        /// CUDA device index.
        gpu_device: u32,
        /// The model digest before the update.
        old_digest: String,
        /// The sender's model digest, when one was given.
        #[serde(skip_serializing_if = "Option::is_none")]
        expected: Option<String>,
        /// The model digest of the bytes found, when they could be hashed.
        #[serde(skip_serializing_if = "Option::is_none")]
        found: Option<String>,
        /// The first tensor that differs, when one can be named.
        #[serde(skip_serializing_if = "Option::is_none")]
        tensor: Option<String>,
        /// Why.
        reason: String,
    },
}

impl AuditEvent {
    /// The event's severity.
    #[must_use]
    pub fn severity(&self) -> Severity {
        match self {
            Self::SealVerificationFailed { .. }
            | Self::PolicyViolation { .. }
            | Self::ModelUpdateRefused { .. }
            | Self::SealAborted {
                security_failure: true,
                ..
            } => Severity::Critical,
            Self::VramAllocationFailed { .. } | Self::SealAborted { .. } => Severity::Warning,
            Self::ModelUpdated { expected_from, .. } if expected_from != "sender" => {
                Severity::Warning
            }
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
            Self::VerificationSummary { .. } => "VerificationSummary",
            Self::SealVerificationFailed { .. } => "SealVerificationFailed",
            Self::VramDeallocated { .. } => "VramDeallocated",
            Self::VramAllocationFailed { .. } => "VramAllocationFailed",
            Self::SealAborted { .. } => "SealAborted",
            Self::ModelUpdateStarted { .. } => "ModelUpdateStarted",
            Self::ModelUpdated { .. } => "ModelUpdated",
            Self::ModelUpdateRefused { .. } => "ModelUpdateRefused",
            Self::PolicyViolation { .. } => "PolicyViolation",
            Self::DeviceAccepted { .. } => "DeviceAccepted",
        }
    }
}

/// An event with who, when and which operation.
///
/// Serialized with `time` (RFC 3339, UTC, milliseconds; `null` for a clock outside 1970–9999)
/// after `timestamp_ms`, for log pipelines (`.specs/audit.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub event: AuditEvent,
}

impl Serialize for AuditRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The line's field order: `.specs/audit.md`.
        #[derive(Serialize)]
        struct Line<'a> {
            timestamp_ms: u64,
            time: Option<String>,
            worker_id: &'a str,
            correlation_id: &'a str,
            severity: Severity,
            #[serde(flatten)]
            event: &'a AuditEvent,
        }
        Line {
            timestamp_ms: self.timestamp_ms,
            time: vram_types::rfc3339_from_unix_millis(self.timestamp_ms),
            worker_id: &self.worker_id,
            correlation_id: &self.correlation_id,
            severity: self.severity,
            event: &self.event,
        }
        .serialize(serializer)
    }
}
