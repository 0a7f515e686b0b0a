//! This crate's errors: [`CudaError`], what went wrong in a driver call or was refused before
//! one, by kind (out of memory, out of range, wrong device, the driver's status), and
//! [`CudaStatus`], a driver status with its name (`CUDA_ERROR_OUT_OF_MEMORY`) and text.
//!
//! Like cudarc's `DriverError` and candle's backend errors, these are the sys layer's own: the
//! workspace's `VramError` is built from them in one place, by the CUDA backend of `vram-alloc`,
//! which knows what each call was for (an allocation of N bytes, a release, a copy).

use std::fmt;

use cudarc::driver::result::DriverError;
use cudarc::driver::sys::CUresult;

/// Result of this crate's fallible functions.
pub type Result<T, E = CudaError> = std::result::Result<T, E>;

/// A CUDA driver status.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CudaStatus(pub(crate) CUresult);

impl CudaStatus {
    /// The driver's name for the status, e.g. `CUDA_ERROR_INVALID_VALUE`.
    #[must_use]
    pub fn name(&self) -> String {
        format!("{:?}", self.0)
    }

    /// Whether the driver ran out of device memory.
    #[must_use]
    pub fn is_out_of_memory(&self) -> bool {
        self.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY
    }

    /// The numeric `CUresult`.
    #[must_use]
    #[allow(clippy::as_conversions, reason = "CUresult is a repr(u32) enum")]
    pub fn code(&self) -> u32 {
        self.0 as u32
    }

    /// The status of an allocation of `requested` bytes on `device`: [`CudaError::OutOfMemory`]
    /// (with what `free` reports free now) when the device ran out, else the driver's error.
    /// The one place an allocation's out-of-memory status is told apart.
    #[must_use]
    pub fn allocating(
        self,
        device: u32,
        operation: &'static str,
        requested: usize,
        free: impl FnOnce() -> usize,
    ) -> CudaError {
        if self.is_out_of_memory() {
            CudaError::OutOfMemory {
                device,
                requested,
                free: free(),
            }
        } else {
            self.during(device, operation)
        }
    }

    /// The status as the error of `operation` on `device`.
    #[must_use]
    pub fn during(self, device: u32, operation: &'static str) -> CudaError {
        CudaError::Driver {
            device,
            operation,
            status: self,
        }
    }
}

impl From<DriverError> for CudaStatus {
    fn from(e: DriverError) -> Self {
        Self(e.0)
    }
}

impl fmt::Display for CudaStatus {
    /// `CUDA_ERROR_NAME: text from cuGetErrorString`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = DriverError(self.0)
            .error_string()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if text.is_empty() {
            f.write_str(&self.name())
        } else {
            write!(f, "{}: {text}", self.name())
        }
    }
}

impl fmt::Debug for CudaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaStatus({self})")
    }
}

/// What went wrong: a driver call that failed, or a request refused before the driver was
/// called. Never carries a device pointer.
///
/// Exhaustive on purpose: the CUDA backend maps every kind, and a new one must be mapped there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaError {
    /// A driver call returned an error status.
    #[error("{operation} failed on GPU {device}: {status}")]
    Driver {
        /// CUDA device index.
        device: u32,
        /// The call, e.g. `cuMemcpyHtoD` or `host-to-device copy`.
        operation: &'static str,
        /// The driver's status.
        status: CudaStatus,
    },
    /// The device had not the memory an allocation asked for.
    #[error("GPU {device} is out of memory: {requested} bytes requested, {free} free")]
    OutOfMemory {
        /// CUDA device index.
        device: u32,
        /// Bytes asked for.
        requested: usize,
        /// Bytes the device reported free afterwards.
        free: usize,
    },
    /// A range outside an allocation (or of a freed one), refused before calling the driver.
    #[error(
        "{operation} on GPU {device}: range outside the allocation (refused before calling the driver)"
    )]
    OutOfRange {
        /// CUDA device index.
        device: u32,
        /// What was attempted.
        operation: &'static str,
    },
    /// A buffer of another device, refused before calling the driver.
    #[error(
        "{operation} on GPU {device}: the buffer is on GPU {found} (refused before calling the driver)"
    )]
    WrongDevice {
        /// The device the work runs on.
        device: u32,
        /// The buffer's device.
        found: u32,
        /// What was attempted.
        operation: &'static str,
    },
    /// No driver, no GPU, or a driver that would not start.
    #[error("no GPU available: {reason}")]
    NoGpu {
        /// Why, with the remedy where one is known.
        reason: String,
    },
    /// The driver is older than the API this build calls.
    #[error(
        "CUDA driver too old: it supports CUDA {found}, this build needs at least CUDA {required}"
    )]
    DriverTooOld {
        /// Version the driver reports.
        found: String,
        /// Version this build needs.
        required: String,
    },
    /// An ordinal the driver does not know.
    #[error("invalid GPU device {device}: {device_count} device(s) present")]
    InvalidDevice {
        /// The ordinal asked for.
        device: u32,
        /// Devices present.
        device_count: u32,
    },
    /// An argument no driver call could take (0 bytes, a NUL in PTX, 2^32 blocks).
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Host memory for a pinned buffer or a table could not be had.
    #[error("host memory exhausted: {bytes} bytes")]
    HostMemory {
        /// Bytes asked for.
        bytes: usize,
    },
    /// The source of an upload could not be read.
    #[error("reading the source at offset {offset} failed: {reason}")]
    SourceRead {
        /// Byte offset of the failed read.
        offset: u64,
        /// The I/O error.
        reason: String,
    },
    /// A condition the code rules out happened anyway: a bug, reported instead of a panic.
    #[error("unreachable condition: {0}")]
    Unreachable(&'static str),
}

/// Records a failure that happened while releasing `what` in a `Drop`, where it cannot be
/// returned: a warning on target `vram_cuda_sys` with the device and the CUDA error name.
pub(crate) fn report_release<T>(
    what: &'static str,
    device: u32,
    result: std::result::Result<T, DriverError>,
) {
    if let Err(e) = result {
        tracing::warn!(gpu_device = device, error = %CudaStatus::from(e), "releasing {what} failed");
    }
}
