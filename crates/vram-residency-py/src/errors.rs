//! The exception hierarchy, and the one mapping of [`VramError`] onto it: each exception
//! carries the Rust error's fields as attributes (`kind` names the variant), never key
//! material or a device address (the Rust errors carry neither).

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::{PyErr, create_exception};
use vram_residency::{ErrorClass, VramError};

create_exception!(
    vram_residency,
    VramResidencyError,
    PyException,
    "Every error of the library; `kind` names the Rust variant, the other attributes its fields."
);
create_exception!(
    vram_residency,
    IntegrityError,
    VramResidencyError,
    "The bytes are not the bytes that were sealed (or cannot be shown to be): do not serve."
);
create_exception!(
    vram_residency,
    PolicyViolation,
    VramResidencyError,
    "Memory or a device that breaks the VRAM-only policy (managed, host, integrated)."
);
create_exception!(
    vram_residency,
    InsufficientVram,
    VramResidencyError,
    "Not enough memory: device memory (`needed` and `available` bytes on `device`), or host memory (`needed`)."
);
create_exception!(
    vram_residency,
    BadInput,
    VramResidencyError,
    "An argument the library refuses before doing anything: nothing changed."
);

/// A field's value as Python sees it.
enum Value {
    Text(String),
    Int(u64),
    OptInt(Option<u32>),
    OptText(Option<String>),
}

/// The variant name and fields of `e`.
fn describe(e: &VramError) -> (&'static str, Vec<(&'static str, Value)>) {
    use Value::{Int, OptInt, OptText, Text};
    let size = |n: usize| Int(u64::try_from(n).unwrap_or(u64::MAX));
    match e {
        VramError::InsufficientVram {
            needed,
            available,
            device,
        } => (
            "InsufficientVram",
            vec![
                ("needed", size(*needed)),
                ("available", size(*available)),
                ("device", Int((*device).into())),
            ],
        ),
        VramError::HostMemoryExhausted { needed } => {
            ("HostMemoryExhausted", vec![("needed", size(*needed))])
        }
        VramError::SealVerificationFailed { shard_id, reason } => (
            "SealVerificationFailed",
            vec![
                ("shard_id", Text(shard_id.clone())),
                ("reason", Text(reason.to_string())),
            ],
        ),
        VramError::NotSealed { shard_id } => {
            ("NotSealed", vec![("shard_id", Text(shard_id.clone()))])
        }
        VramError::IntegrityViolation {
            shard_id,
            expected,
            actual,
        } => (
            "IntegrityViolation",
            vec![
                ("shard_id", Text(shard_id.clone())),
                ("expected", Text(expected.clone())),
                ("actual", Text(actual.clone())),
            ],
        ),
        VramError::ModifiedDuringExecution {
            shard_id,
            expected,
            actual,
        } => (
            "ModifiedDuringExecution",
            vec![
                ("shard_id", Text(shard_id.clone())),
                ("expected", Text(expected.clone())),
                ("actual", Text(actual.clone())),
            ],
        ),
        VramError::ModelUpdating { model_id } => {
            ("ModelUpdating", vec![("model_id", Text(model_id.clone()))])
        }
        VramError::UpdateRefused {
            model_id,
            expected,
            found,
            tensor,
        } => (
            "UpdateRefused",
            vec![
                ("model_id", Text(model_id.clone())),
                ("expected", Text(expected.clone())),
                ("found", Text(found.clone())),
                ("tensor", OptText(tensor.clone())),
            ],
        ),
        VramError::UnexpectedDigest { expected, actual } => (
            "UnexpectedDigest",
            vec![
                ("expected", Text(expected.clone())),
                ("actual", Text(actual.clone())),
            ],
        ),
        VramError::UploadMismatch {
            device,
            host,
            resident,
        } => (
            "UploadMismatch",
            vec![
                ("device", Int((*device).into())),
                ("host", Text(host.clone())),
                ("resident", Text(resident.clone())),
            ],
        ),
        VramError::SourceReadFailed { offset, reason } => (
            "SourceReadFailed",
            vec![("offset", Int(*offset)), ("reason", Text(reason.clone()))],
        ),
        VramError::CudaAllocationFailed {
            device,
            bytes,
            cuda_error,
            code,
        } => (
            "CudaAllocationFailed",
            vec![
                ("device", Int((*device).into())),
                ("bytes", size(*bytes)),
                ("cuda_error", Text(cuda_error.clone())),
                ("code", OptInt(*code)),
            ],
        ),
        VramError::CudaDeallocationFailed {
            device,
            cuda_error,
            code,
        } => (
            "CudaDeallocationFailed",
            vec![
                ("device", Int((*device).into())),
                ("cuda_error", Text(cuda_error.clone())),
                ("code", OptInt(*code)),
            ],
        ),
        VramError::CudaOperationFailed {
            device,
            operation,
            cuda_error,
            code,
        } => (
            "CudaOperationFailed",
            vec![
                ("device", Int((*device).into())),
                ("operation", Text((*operation).to_owned())),
                ("cuda_error", Text(cuda_error.clone())),
                ("code", OptInt(*code)),
            ],
        ),
        VramError::NoGpu { reason } => ("NoGpu", vec![("reason", Text(reason.clone()))]),
        VramError::DriverTooOld { found, required } => (
            "DriverTooOld",
            vec![
                ("found", Text(found.clone())),
                ("required", Text(required.clone())),
            ],
        ),
        VramError::InvalidDevice {
            device,
            device_count,
        } => (
            "InvalidDevice",
            vec![
                ("device", Int((*device).into())),
                ("device_count", Int((*device_count).into())),
            ],
        ),
        VramError::InvalidInput { field, reason } => (
            "InvalidInput",
            vec![
                ("field", Text((*field).to_owned())),
                ("reason", Text(reason.clone())),
            ],
        ),
        VramError::MalformedModel(problem) => (
            "MalformedModel",
            vec![("reason", Text(problem.to_string()))],
        ),
        VramError::AlreadySealed { shard_id } => {
            ("AlreadySealed", vec![("shard_id", Text(shard_id.clone()))])
        }
        VramError::SealExpired {
            shard_id,
            age_secs,
            max_age_secs,
        } => (
            "SealExpired",
            vec![
                ("shard_id", Text(shard_id.clone())),
                ("age_secs", Int(*age_secs)),
                ("max_age_secs", Int(*max_age_secs)),
            ],
        ),
        VramError::PolicyViolation { device, reason } => (
            "PolicyViolation",
            vec![
                ("device", Int((*device).into())),
                ("reason", Text(reason.clone())),
            ],
        ),
        VramError::Stopped => ("Stopped", Vec::new()),
        VramError::AuditFailed { event, reason } => (
            "AuditFailed",
            vec![
                ("event", Text((*event).to_owned())),
                ("reason", Text(reason.clone())),
            ],
        ),
        VramError::InvalidKey(problem) => {
            ("InvalidKey", vec![("reason", Text(problem.to_string()))])
        }
        VramError::Unreachable(what) => ("Unreachable", vec![("reason", Text((*what).to_owned()))]),
        // A variant added later still reaches Python, as the base class with its message.
        _ => ("Other", Vec::new()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Base,
    Integrity,
    Policy,
    Insufficient,
    Bad,
}

/// The exception class of an error class ([`VramError::class`], which `vramctl`'s exit codes
/// follow too).
fn class_of(class: ErrorClass) -> Class {
    match class {
        ErrorClass::Integrity => Class::Integrity,
        ErrorClass::Policy => Class::Policy,
        ErrorClass::Capacity => Class::Insufficient,
        ErrorClass::Input => Class::Bad,
        _ => Class::Base,
    }
}

/// The Python exception for `e`, its fields set as attributes.
pub(crate) fn to_py(e: &VramError) -> PyErr {
    let (kind, fields) = describe(e);
    let message = e.to_string();
    let err = match class_of(e.class()) {
        Class::Base => VramResidencyError::new_err(message),
        Class::Integrity => IntegrityError::new_err(message),
        Class::Policy => PolicyViolation::new_err(message),
        Class::Insufficient => InsufficientVram::new_err(message),
        Class::Bad => BadInput::new_err(message),
    };
    Python::attach(|py| {
        let value = err.value(py);
        // Attributes are best effort: the exception and its message stand without them.
        let _ = value.setattr("kind", kind);
        for (name, field) in fields {
            let _ = match field {
                Value::Text(text) => value.setattr(name, text),
                Value::Int(n) => value.setattr(name, n),
                Value::OptInt(n) => value.setattr(name, n),
                Value::OptText(text) => value.setattr(name, text),
            };
        }
    });
    err
}

/// A [`BadInput`] the binding raises itself (an argument no Rust call saw), with its `kind`
/// and `field` set as [`to_py`] sets them for `VramError::InvalidInput`.
pub(crate) fn bad_input(field: &'static str, reason: impl Into<String>) -> PyErr {
    to_py(&VramError::InvalidInput {
        field,
        reason: reason.into(),
    })
}

/// Adds the exception classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("VramResidencyError", py.get_type::<VramResidencyError>())?;
    m.add("IntegrityError", py.get_type::<IntegrityError>())?;
    m.add("PolicyViolation", py.get_type::<PolicyViolation>())?;
    m.add("InsufficientVram", py.get_type::<InsufficientVram>())?;
    m.add("BadInput", py.get_type::<BadInput>())?;
    Ok(())
}
