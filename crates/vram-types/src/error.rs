//! [`VramError`]: the error of every public operation (seal, verify, attest, query, build).
//!
//! Narrower errors exist where a caller needs more than a `VramError` says, each converting or
//! wrapping: `vram_alloc::PlanError` (which part of a seal plan failed, around a `VramError`),
//! `vram_alloc::audit::AuditError` (an audit sink) and `AuditLogError` (a log that does not
//! verify), `vram_seal::AuditKeyError` (an audit key's text), and `vram_cuda_sys::CudaError`
//! (the driver layer's own, mapped to `VramError` in one place by the CUDA backend).
//!
//! Every variant carries what an operator needs to act (bytes needed and available, the device,
//! the CUDA error name) and nothing an attacker could use: no key bytes, no seal bytes, no device
//! pointers. Rejected inputs are shown escaped, so a control character in a shard id cannot
//! forge a log line.

use std::fmt;

/// `CUresult` code of `CUDA_ERROR_OUT_OF_MEMORY`.
pub const CUDA_ERROR_OUT_OF_MEMORY: u32 = 2;

/// Result type of every fallible function in the workspace.
pub type Result<T, E = VramError> = std::result::Result<T, E>;

/// What a caller must do about an error ([`VramError::class`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The bytes are not, or cannot be shown to be, the bytes that were sealed: do not serve
    /// them (`vramctl` exit 1, Python `IntegrityError`).
    Integrity,
    /// Memory or a device that breaks the VRAM-only policy (exit 3, `PolicyViolation`).
    Policy,
    /// Not enough device or host memory: free some, or go elsewhere (exit 2,
    /// `InsufficientVram`).
    Capacity,
    /// The caller's input, refused: nothing changed (exit 2, `BadInput`).
    Input,
    /// The machine: no GPU, the driver, a CUDA failure, the audit log's storage, a manager
    /// stopped by an earlier failure, an internal error (exit 3, or 4 for the audit log;
    /// `VramResidencyError`).
    Environment,
}

/// Errors from sealing, verifying and managing shards in VRAM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VramError {
    /// The device has not enough free VRAM for the shard (GPU memory, not host memory).
    #[error(
        "insufficient VRAM on GPU {device}: needed {needed} bytes, available {available} bytes"
    )]
    InsufficientVram {
        /// Bytes the request needs, allocation granularity included.
        needed: usize,
        /// Bytes still available on the device when the request was refused.
        available: usize,
        /// CUDA device index.
        device: u32,
    },

    /// Host (CPU) memory ran out, for example for a staging buffer. Distinct from VRAM exhaustion.
    #[error("host memory exhausted: could not allocate {needed} bytes of host memory")]
    HostMemoryExhausted {
        /// Bytes of host memory requested.
        needed: usize,
    },

    /// The seal signature does not match the shard's sealed fields: the shard's metadata was
    /// changed or its seal forged after sealing.
    #[error("seal verification failed for shard {shard_id:?}: {reason}")]
    SealVerificationFailed {
        /// The shard whose seal failed.
        shard_id: String,
        /// Which check failed.
        reason: SealFailure,
    },

    /// The shard was not sealed by this manager, or its VRAM was already released.
    #[error("shard {shard_id:?} is not sealed by this manager or is no longer resident")]
    NotSealed {
        /// The shard presented for verification.
        shard_id: String,
    },

    /// The bytes in VRAM no longer hash to the sealed digest: corruption or tampering.
    #[error(
        "integrity violation for shard {shard_id:?}: bytes in VRAM hash to {actual}, sealed digest is {expected}"
    )]
    IntegrityViolation {
        /// The shard whose bytes changed.
        shard_id: String,
        /// The sealed digest (hex).
        expected: String,
        /// The digest of the bytes found now (hex).
        actual: String,
    },

    /// The bytes in VRAM changed while an engine computed with them: the check after the
    /// engine's work found another digest, so the engine's result was withheld.
    #[error(
        "shard {shard_id:?} changed during execution: bytes in VRAM hash to {actual} after the engine's work, sealed digest is {expected}; the result was withheld"
    )]
    ModifiedDuringExecution {
        /// The shard whose bytes changed.
        shard_id: String,
        /// The sealed digest (hex).
        expected: String,
        /// The digest after the engine's work (hex).
        actual: String,
    },

    /// The model bytes do not have the digest the caller expected (a manifest's): a wrong,
    /// truncated or corrupted file. Nothing was sealed.
    #[error(
        "model bytes hash to {actual}, expected {expected}: wrong or corrupted file; nothing sealed"
    )]
    UnexpectedDigest {
        /// The digest the caller expected (hex).
        expected: String,
        /// The digest of the bytes as uploaded (hex).
        actual: String,
    },

    /// A model under update (announced, or refused after an update whose bytes were not the
    /// expected ones): no verification, window or scrubber pass vouches for it until an update
    /// is accepted or the model is released. Nothing is stopped: the caller's own sequencing.
    #[error(
        "model {model_id:?} is being updated: it serves no request until an update is accepted (or it is released)"
    )]
    ModelUpdating {
        /// The model's id.
        model_id: String,
    },

    /// An update's bytes, hashed where they lie, do not have the digest the sender announced:
    /// nothing was sealed, and the model stays refused until a good update or its release.
    #[error(
        "update of model {model_id:?} refused: the tensors hash to model digest {found}, expected {expected}{}",
        tensor.as_deref().map(|t| format!("; first tensor that differs: {t:?}")).unwrap_or_default()
    )]
    UpdateRefused {
        /// The model's id.
        model_id: String,
        /// The model digest the sender announced (hex).
        expected: String,
        /// The model digest of the bytes in VRAM (hex).
        found: String,
        /// The first tensor (in name order) whose digest differs from the sender's, or, with
        /// only a model digest to compare, from the tensor's digest before the update; `None`
        /// when none can be named.
        tensor: Option<String>,
    },

    /// The bytes that reached VRAM differ from the host bytes they were copied from (the
    /// cross-check of a seal): a broken copy path. Nothing was sealed.
    #[error(
        "GPU {device}: bytes in VRAM hash to {resident}, the host bytes to {host}; nothing sealed"
    )]
    UploadMismatch {
        /// CUDA device index.
        device: u32,
        /// Digest of the host bytes (hex).
        host: String,
        /// Digest of the bytes in VRAM (hex).
        resident: String,
    },

    /// The model bytes could not be read from their source (a file).
    #[error("reading the model bytes at offset {offset} failed: {reason}")]
    SourceReadFailed {
        /// Byte offset of the failed read.
        offset: u64,
        /// The I/O error.
        reason: String,
    },

    /// A CUDA allocation failed for a reason other than lack of free memory.
    #[error("CUDA allocation of {bytes} bytes failed on GPU {device}: {cuda_error}")]
    CudaAllocationFailed {
        /// CUDA device index.
        device: u32,
        /// Bytes requested.
        bytes: usize,
        /// CUDA error name and text, e.g. `CUDA_ERROR_INVALID_VALUE: invalid argument`.
        cuda_error: String,
        /// The driver's `CUresult` code, e.g. 2 for `CUDA_ERROR_OUT_OF_MEMORY`.
        code: Option<u32>,
    },

    /// Releasing VRAM failed. Reported and audited; the memory is never freed twice.
    #[error("CUDA deallocation failed on GPU {device}: {cuda_error}")]
    CudaDeallocationFailed {
        /// CUDA device index.
        device: u32,
        /// CUDA error name and text.
        cuda_error: String,
        /// The driver's `CUresult` code.
        code: Option<u32>,
    },

    /// Another CUDA driver call failed (copy, context, query).
    #[error("CUDA {operation} failed on GPU {device}: {cuda_error}")]
    CudaOperationFailed {
        /// CUDA device index.
        device: u32,
        /// What was attempted, e.g. `host-to-device copy`.
        operation: &'static str,
        /// CUDA error name and text.
        cuda_error: String,
        /// The driver's `CUresult` code; `None` when the request was refused before the driver
        /// was called (a range outside an allocation, a buffer of another device).
        code: Option<u32>,
    },

    /// No usable GPU: no driver, no device, or the driver could not be initialised.
    #[error("no GPU available: {reason}")]
    NoGpu {
        /// Why no GPU could be used, with the remedy where one is known.
        reason: String,
    },

    /// The installed CUDA driver is older than the API version this build calls.
    #[error(
        "CUDA driver too old: it supports CUDA {found}, this build needs at least CUDA {required}; update the NVIDIA driver"
    )]
    DriverTooOld {
        /// Version the driver reports, e.g. `12.2`.
        found: String,
        /// Version this build needs, e.g. `12.8`.
        required: String,
    },

    /// The GPU index does not name a device that this manager can use.
    #[error("invalid GPU device {device}: {device_count} device(s) present")]
    InvalidDevice {
        /// The requested device index.
        device: u32,
        /// How many devices exist.
        device_count: u32,
    },

    /// The caller's input was rejected before anything was allocated or audited.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// Which input was rejected.
        field: &'static str,
        /// Why, with any rejected text escaped.
        reason: String,
    },

    /// Model bytes named or recognised as a safetensors or GGUF file whose header does not hold
    /// (read from the bytes in VRAM when they are sealed): the shard would carry a wrong tensor
    /// table, so nothing is sealed.
    #[error("{0}")]
    MalformedModel(crate::formats::FormatError),

    /// A shard with this id is already sealed and resident.
    #[error("shard {shard_id:?} is already sealed; drop it before sealing that id again")]
    AlreadySealed {
        /// The duplicate shard id.
        shard_id: String,
    },

    /// The seal is older than the configured maximum age.
    #[error("seal of shard {shard_id:?} expired: sealed {age_secs} s ago, limit {max_age_secs} s")]
    SealExpired {
        /// The shard whose seal expired.
        shard_id: String,
        /// Age of the seal in seconds.
        age_secs: u64,
        /// Configured limit in seconds.
        max_age_secs: u64,
    },

    /// The VRAM-only policy is violated: memory could live in, or be read from, host RAM.
    #[error("VRAM-only policy violation on GPU {device}: {reason}")]
    PolicyViolation {
        /// CUDA device index.
        device: u32,
        /// What was found, e.g. `allocation is managed (unified) memory`.
        reason: String,
    },

    /// The manager stopped accepting work after an integrity or policy failure, or after an
    /// audit record it could not refuse (a release, a failure report) could not be stored.
    #[error(
        "VRAM manager stopped after a failed verification, policy check or audit write; restart the worker"
    )]
    Stopped,

    /// The operation's audit record could not be stored, and the audit failure policy is
    /// fail-closed: the operation was refused (a seal undone, a verification not passed).
    #[error("{event} could not be recorded in the audit trail, so it was refused: {reason}")]
    AuditFailed {
        /// The event that could not be recorded (e.g. `VramSealed`).
        event: &'static str,
        /// Why the sink refused it.
        reason: String,
    },

    /// A seal key was rejected.
    #[error("invalid seal key: {0}")]
    InvalidKey(KeyProblem),

    /// A condition the code rules out happened anyway: a bug, reported instead of a panic.
    #[error("unreachable condition: {0} (please file a bug)")]
    Unreachable(&'static str),
}

impl VramError {
    /// Whether retrying the same request later can succeed.
    ///
    /// Capacity failures are retriable (VRAM or host memory ran out, including a CUDA call that
    /// failed with `CUDA_ERROR_OUT_OF_MEMORY`); integrity, policy and input failures are not
    /// (retrying them would hide a security problem or repeat a mistake), nor is any other CUDA
    /// failure (a lost device, an illegal address, an uncorrectable ECC error).
    #[must_use]
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::InsufficientVram { .. } | Self::HostMemoryExhausted { .. } => true,
            Self::CudaAllocationFailed { code, .. }
            | Self::CudaDeallocationFailed { code, .. }
            | Self::CudaOperationFailed { code, .. } => *code == Some(CUDA_ERROR_OUT_OF_MEMORY),
            _ => false,
        }
    }

    /// Whether the error is a security event: a seal, integrity, upload or policy failure. The
    /// manager records each as critical (a failed verification, a policy violation, or a seal
    /// aborted with `security_failure`) and stops: always after a policy violation, after the
    /// others when `stop_on_verification_failure` is set (the default).
    #[must_use]
    pub fn is_security_critical(&self) -> bool {
        matches!(
            self,
            Self::SealVerificationFailed { .. }
                | Self::IntegrityViolation { .. }
                | Self::ModifiedDuringExecution { .. }
                | Self::UploadMismatch { .. }
                | Self::PolicyViolation { .. }
        )
    }

    /// What kind of failure this is: the one classification both front ends map (`vramctl`'s
    /// exit codes, the Python exception classes), so that they never disagree on what a caller
    /// must do. Every variant has exactly one class.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::SealVerificationFailed { .. }
            | Self::NotSealed { .. }
            | Self::IntegrityViolation { .. }
            | Self::ModifiedDuringExecution { .. }
            | Self::UnexpectedDigest { .. }
            | Self::UploadMismatch { .. }
            | Self::UpdateRefused { .. }
            | Self::SealExpired { .. } => ErrorClass::Integrity,
            Self::PolicyViolation { .. } => ErrorClass::Policy,
            Self::InsufficientVram { .. } | Self::HostMemoryExhausted { .. } => {
                ErrorClass::Capacity
            }
            Self::InvalidDevice { .. }
            | Self::InvalidInput { .. }
            | Self::MalformedModel(_)
            | Self::AlreadySealed { .. }
            | Self::ModelUpdating { .. }
            | Self::InvalidKey(_)
            | Self::SourceReadFailed { .. } => ErrorClass::Input,
            Self::CudaAllocationFailed { .. }
            | Self::CudaDeallocationFailed { .. }
            | Self::CudaOperationFailed { .. }
            | Self::NoGpu { .. }
            | Self::DriverTooOld { .. }
            | Self::Stopped
            | Self::AuditFailed { .. }
            | Self::Unreachable(_) => ErrorClass::Environment,
        }
    }

    /// One value of every variant, for tests that check a mapping covers them all (the front
    /// ends' exit codes and exception classes).
    #[cfg(any(test, feature = "test-utils"))]
    #[must_use]
    pub fn one_of_each() -> Vec<Self> {
        let text = String::new;
        vec![
            Self::InsufficientVram {
                needed: 2,
                available: 1,
                device: 0,
            },
            Self::HostMemoryExhausted { needed: 1 },
            Self::SealVerificationFailed {
                shard_id: text(),
                reason: SealFailure::SignatureMismatch,
            },
            Self::NotSealed { shard_id: text() },
            Self::IntegrityViolation {
                shard_id: text(),
                expected: text(),
                actual: text(),
            },
            Self::ModifiedDuringExecution {
                shard_id: text(),
                expected: text(),
                actual: text(),
            },
            Self::UnexpectedDigest {
                expected: text(),
                actual: text(),
            },
            Self::UploadMismatch {
                device: 0,
                host: text(),
                resident: text(),
            },
            Self::ModelUpdating { model_id: text() },
            Self::UpdateRefused {
                model_id: text(),
                expected: text(),
                found: text(),
                tensor: Some(text()),
            },
            Self::SourceReadFailed {
                offset: 0,
                reason: text(),
            },
            Self::CudaAllocationFailed {
                device: 0,
                bytes: 1,
                cuda_error: text(),
                code: None,
            },
            Self::CudaDeallocationFailed {
                device: 0,
                cuda_error: text(),
                code: None,
            },
            Self::CudaOperationFailed {
                device: 0,
                operation: "op",
                cuda_error: text(),
                code: None,
            },
            Self::NoGpu { reason: text() },
            Self::DriverTooOld {
                found: text(),
                required: text(),
            },
            Self::InvalidDevice {
                device: 1,
                device_count: 1,
            },
            Self::invalid_input("field", ""),
            Self::MalformedModel(crate::formats::FormatError::LfsPointer),
            Self::AlreadySealed { shard_id: text() },
            Self::SealExpired {
                shard_id: text(),
                age_secs: 2,
                max_age_secs: 1,
            },
            Self::PolicyViolation {
                device: 0,
                reason: text(),
            },
            Self::Stopped,
            Self::AuditFailed {
                event: "e",
                reason: text(),
            },
            Self::InvalidKey(KeyProblem::Empty),
            Self::Unreachable("x"),
        ]
    }

    /// Builds an [`VramError::InvalidInput`].
    #[must_use]
    pub fn invalid_input(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            field,
            reason: reason.into(),
        }
    }
}

/// Which part of a seal check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealFailure {
    /// The HMAC over the sealed fields does not match the stored signature.
    SignatureMismatch,
    /// The sealed fields cannot be encoded (for example an unknown digest algorithm id).
    MalformedFields,
    /// A sealed field of the shard differs from what this manager sealed: it was edited after
    /// sealing. Names the first such field (`shard_id`, `gpu_device`, `vram_bytes`,
    /// `digest_algorithm`, `digest`, `sealed_at`, `shard_index` or `total_shards`).
    FieldChanged(&'static str),
}

impl fmt::Display for SealFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SignatureMismatch => "signature does not match the sealed fields",
            Self::MalformedFields => "sealed fields are malformed",
            Self::FieldChanged(field) => {
                return write!(
                    f,
                    "{field}_mismatch: `{field}` differs from what was sealed"
                );
            }
        })
    }
}

/// Why a seal key was rejected. Never carries key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyProblem {
    /// The key or token is empty.
    Empty,
    /// The key is shorter than the minimum.
    TooShort {
        /// Length given.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// The key is longer than the maximum.
    TooLong {
        /// Length given.
        len: usize,
        /// Maximum length.
        max: usize,
    },
    /// The worker id used for derivation is empty or too long.
    BadWorkerId,
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("key material is empty"),
            Self::TooShort { len, min } => {
                write!(f, "key is {len} bytes, at least {min} bytes are required")
            }
            Self::TooLong { len, max } => {
                write!(f, "key is {len} bytes, at most {max} bytes are accepted")
            }
            Self::BadWorkerId => f.write_str("worker id must be 1 to 256 bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vram_exhaustion_is_retriable_and_distinct_from_host_exhaustion() {
        let vram = VramError::InsufficientVram {
            needed: 10,
            available: 5,
            device: 1,
        };
        let host = VramError::HostMemoryExhausted { needed: 10 };
        assert!(vram.is_retriable() && host.is_retriable());
        assert_ne!(vram, host);
        let text = vram.to_string();
        assert!(text.contains("needed 10 bytes") && text.contains("available 5 bytes"));
        assert!(text.contains("GPU 1"));
        assert!(host.to_string().contains("host memory"));
    }

    #[test]
    fn only_out_of_memory_cuda_failures_are_retriable() {
        let op = |code| VramError::CudaOperationFailed {
            device: 0,
            operation: "host-to-device copy",
            cuda_error: "x".into(),
            code,
        };
        assert!(op(Some(CUDA_ERROR_OUT_OF_MEMORY)).is_retriable());
        // CUDA_ERROR_DEVICE_UNAVAILABLE, CUDA_ERROR_ILLEGAL_ADDRESS, CUDA_ERROR_ECC_UNCORRECTABLE
        for lost in [46, 700, 214] {
            assert!(!op(Some(lost)).is_retriable(), "{lost}");
        }
        assert!(!op(None).is_retriable());
        let alloc = VramError::CudaAllocationFailed {
            device: 0,
            bytes: 1,
            cuda_error: "x".into(),
            code: Some(999),
        };
        assert!(!alloc.is_retriable());
    }

    #[test]
    fn security_failures_are_not_retriable() {
        let e = VramError::IntegrityViolation {
            shard_id: "s".into(),
            expected: "a".into(),
            actual: "b".into(),
        };
        assert!(!e.is_retriable());
        assert!(e.is_security_critical());
        assert!(
            !VramError::invalid_input("shard_id", "empty").is_security_critical(),
            "input errors are not security events"
        );
    }

    #[test]
    fn rejected_text_is_escaped_in_messages() {
        let e = VramError::NotSealed {
            shard_id: "a\nINFO forged".into(),
        };
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn key_problems_never_show_key_bytes() {
        let e = VramError::InvalidKey(KeyProblem::TooShort { len: 3, min: 32 });
        assert_eq!(
            e.to_string(),
            "invalid seal key: key is 3 bytes, at least 32 bytes are required"
        );
    }
}

#[cfg(test)]
mod class_tests {
    use super::{ErrorClass, VramError};

    /// Every class has a variant, and a security event is never classed as the caller's input
    /// or the machine's (a front end would then let the model serve on).
    #[test]
    fn classes_are_used_and_security_events_are_integrity_or_policy() {
        let all = VramError::one_of_each();
        for class in [
            ErrorClass::Integrity,
            ErrorClass::Policy,
            ErrorClass::Capacity,
            ErrorClass::Input,
            ErrorClass::Environment,
        ] {
            assert!(all.iter().any(|e| e.class() == class), "{class:?} unused");
        }
        for e in all.iter().filter(|e| e.is_security_critical()) {
            assert!(
                matches!(e.class(), ErrorClass::Integrity | ErrorClass::Policy),
                "{e:?}"
            );
        }
    }
}
