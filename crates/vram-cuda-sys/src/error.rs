//! `CudaError`: a driver status with its name (`CUDA_ERROR_OUT_OF_MEMORY`) and text, and its
//! conversion to the workspace's `VramError` with the device and operation attached.

use std::fmt;

use cudarc::driver::result::DriverError;
use cudarc::driver::sys::CUresult;
use vram_types::VramError;

/// A CUDA driver error.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CudaError(pub(crate) CUresult);

impl CudaError {
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

    /// As a `VramError::CudaOperationFailed`, with the device, the operation and the code.
    #[must_use]
    pub fn during(self, device: u32, operation: &'static str) -> VramError {
        VramError::CudaOperationFailed {
            device,
            operation,
            cuda_error: self.to_string(),
            code: Some(self.code()),
        }
    }
}

impl From<DriverError> for CudaError {
    fn from(e: DriverError) -> Self {
        Self(e.0)
    }
}

impl fmt::Display for CudaError {
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

impl fmt::Debug for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaError({self})")
    }
}

impl std::error::Error for CudaError {}

/// Records a failure that happened while releasing `what` in a `Drop`, where it cannot be
/// returned: a warning on target `vram_cuda_sys` with the device and the CUDA error name.
pub(crate) fn report_release<T>(
    what: &'static str,
    device: u32,
    result: Result<T, cudarc::driver::result::DriverError>,
) {
    if let Err(e) = result {
        tracing::warn!(gpu_device = device, error = %CudaError::from(e), "releasing {what} failed");
    }
}
