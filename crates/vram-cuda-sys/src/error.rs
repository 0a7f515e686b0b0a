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

    /// As a `VramError::CudaOperationFailed`.
    #[must_use]
    pub fn during(self, device: u32, operation: &'static str) -> VramError {
        VramError::CudaOperationFailed {
            device,
            operation,
            cuda_error: self.to_string(),
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
