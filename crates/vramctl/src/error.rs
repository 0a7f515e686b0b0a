//! Errors as operators see them: one line naming the problem and the remedy, and the exit code
//! documented in `--help` and the README.

use std::fmt;
use std::path::Path;

use vram_residency::VramError;

/// Exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// 0: everything checked out.
    Ok = 0,
    /// 1: a verification failed (digest, seal, or `--expect` mismatch).
    VerificationFailed = 1,
    /// 2: bad input (file, option, address, size).
    BadInput = 2,
    /// 3: no GPU, driver problem, or VRAM-only policy violation.
    NoGpuOrPolicy = 3,
    /// 4: the audit trail lost records (a write failed).
    AuditFailed = 4,
}

/// A failure with its exit code.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) exit: Exit,
    message: String,
    /// The command already printed its JSON document for this failure (`--json` prints one
    /// document per result, never a second for the error).
    pub(crate) reported_in_json: bool,
}

impl CliError {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            reported_in_json: false,
        }
    }

    /// Marks the failure as already described by the command's own JSON document.
    pub(crate) fn reported_in_json(mut self) -> Self {
        self.reported_in_json = true;
        self
    }

    pub(crate) fn bad_input(message: impl Into<String>) -> Self {
        Self::new(Exit::BadInput, message)
    }

    /// A file that cannot be used, with the remedy.
    pub(crate) fn file(path: &Path, problem: &str, remedy: &str) -> Self {
        Self::bad_input(format!(
            "{}: {problem}; {remedy}",
            crate::output::shown(path)
        ))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<VramError> for CliError {
    fn from(e: VramError) -> Self {
        let (exit, remedy) = match &e {
            VramError::UnexpectedDigest { .. } => (
                Exit::VerificationFailed,
                "refusing to seal it: use the intact file the digest was made from",
            ),
            VramError::SourceReadFailed { .. } => (Exit::BadInput, "check the file and the disk"),
            VramError::IntegrityViolation { .. }
            | VramError::ModifiedDuringExecution { .. }
            | VramError::UploadMismatch { .. }
            | VramError::SealVerificationFailed { .. }
            | VramError::NotSealed { .. }
            | VramError::SealExpired { .. } => (
                Exit::VerificationFailed,
                "do not serve this model; re-load it from a trusted copy",
            ),
            VramError::InsufficientVram { .. } => (
                Exit::BadInput,
                "free VRAM, use a GPU with more memory, or pick another one with --device",
            ),
            VramError::HostMemoryExhausted { .. } => (Exit::BadInput, "free host memory"),
            VramError::InvalidInput { .. } | VramError::AlreadySealed { .. } => {
                (Exit::BadInput, "check the arguments (see --help)")
            }
            VramError::InvalidDevice { .. } => {
                (Exit::BadInput, "run `vramctl doctor` to list GPUs")
            }
            VramError::NoGpu { .. } => (
                Exit::NoGpuOrPolicy,
                "run `vramctl doctor`; on a machine without a GPU use --backend mock",
            ),
            VramError::DriverTooOld { .. } => (Exit::NoGpuOrPolicy, "update the NVIDIA driver"),
            VramError::AuditFailed { .. } => (
                Exit::AuditFailed,
                "free space on the audit log's disk or fix its permissions, then restart",
            ),
            VramError::PolicyViolation { .. } | VramError::Stopped => (
                Exit::NoGpuOrPolicy,
                "this GPU or setup cannot keep weights VRAM-only; see `vramctl doctor`",
            ),
            _ => (
                Exit::NoGpuOrPolicy,
                "see `vramctl doctor` and the logs (-v)",
            ),
        };
        Self::new(exit, format!("{e}; {remedy}"))
    }
}

/// The naive baseline of `bench` calls the CUDA wrappers directly: their errors get the exit
/// code of a GPU problem (out of memory: bad input, as the library's `InsufficientVram`).
impl From<vram_cuda_sys::CudaError> for CliError {
    fn from(e: vram_cuda_sys::CudaError) -> Self {
        match e {
            vram_cuda_sys::CudaError::OutOfMemory { .. } => Self::new(
                Exit::BadInput,
                format!("{e}; free VRAM or measure smaller sizes with --size"),
            ),
            _ => Self::new(
                Exit::NoGpuOrPolicy,
                format!("{e}; see `vramctl doctor` and the logs (-v)"),
            ),
        }
    }
}

pub(crate) type CliResult<T> = Result<T, CliError>;
