//! Errors as operators see them: one line naming the problem and the remedy, and the exit code
//! documented in `--help` and the README.

use std::fmt;
use std::path::Path;

use vram_residency::{ErrorClass, VramError};

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
    /// The exit code is the error's class ([`VramError::class`], the one classification the
    /// Python exception classes follow too); the remedy is this tool's.
    fn from(e: VramError) -> Self {
        let exit = exit_for(&e);
        let remedy = match (&e, e.class()) {
            (VramError::UnexpectedDigest { .. }, _) => {
                "refusing to seal it: use the intact file the digest was made from"
            }
            (_, ErrorClass::Integrity) => "do not serve this model; re-load it from a trusted copy",
            (VramError::InsufficientVram { .. }, _) => {
                "free VRAM, use a GPU with more memory, or pick another one with --device"
            }
            (_, ErrorClass::Capacity) => "free host memory",
            (VramError::SourceReadFailed { .. }, _) => "check the file and the disk",
            (VramError::InvalidDevice { .. }, _) => "run `vramctl doctor` to list GPUs",
            (VramError::MalformedModel(_), _) => "use an intact model file",
            (_, ErrorClass::Input) => "check the arguments (see --help)",
            (VramError::NoGpu { .. }, _) => {
                "run `vramctl doctor`; on a machine without a GPU use --backend mock"
            }
            (VramError::DriverTooOld { .. }, _) => "update the NVIDIA driver",
            (VramError::AuditFailed { .. }, _) => {
                "free space on the audit log's disk or fix its permissions, then restart"
            }
            (VramError::PolicyViolation { .. } | VramError::Stopped, _) => {
                "this GPU or setup cannot keep weights VRAM-only; see `vramctl doctor`"
            }
            _ => "see `vramctl doctor` and the logs (-v)",
        };
        Self::new(exit, format!("{e}; {remedy}"))
    }
}

/// The exit code of a library error: its class; a lost audit record has its own (4).
fn exit_for(e: &VramError) -> Exit {
    match (e, e.class()) {
        (VramError::AuditFailed { .. }, _) => Exit::AuditFailed,
        (_, ErrorClass::Integrity) => Exit::VerificationFailed,
        (_, ErrorClass::Input | ErrorClass::Capacity) => Exit::BadInput,
        _ => Exit::NoGpuOrPolicy,
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

#[cfg(all(test, feature = "demo"))]
mod tests {
    #![allow(clippy::panic, reason = "tests")]

    use vram_residency::{ErrorClass, VramError};

    use super::{Exit, exit_for};

    /// Every variant's exit code is its class's (`ErrorClass`'s documented contract, which the
    /// Python exception classes follow too); a lost audit record has its own.
    #[test]
    fn every_variant_exits_with_its_class_code() {
        for e in VramError::one_of_each() {
            let want = match e.class() {
                _ if matches!(e, VramError::AuditFailed { .. }) => Exit::AuditFailed,
                ErrorClass::Integrity => Exit::VerificationFailed,
                ErrorClass::Capacity | ErrorClass::Input => Exit::BadInput,
                ErrorClass::Policy | ErrorClass::Environment => Exit::NoGpuOrPolicy,
                _ => panic!("{e:?}: a class with no exit code"),
            };
            assert_eq!(exit_for(&e) as u8, want as u8, "{e:?}");
        }
        // The cases the README names.
        let code = |e: VramError| exit_for(&e) as u8;
        assert_eq!(
            code(VramError::MalformedModel(
                vram_residency::formats::FormatError::LfsPointer
            )),
            2
        );
        assert_eq!(code(VramError::Stopped), 3);
    }
}
