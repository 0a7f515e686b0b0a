//! Finding and initialising the driver, once per process.
//!
//! cudarc's loader panics when no `libcuda` exists and when a driver lacks a symbol. So: check
//! that the library can be opened (no GPU driver → `NoGpu`), then ask its version and refuse a
//! driver older than the API this build calls (`DriverTooOld`), then `cuInit`. Each first call
//! runs under `catch_unwind`, so a broken installation is an error, never a crash.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use cudarc::driver::{result, sys};

use crate::error::{CudaError, CudaStatus};

/// The driver version this build needs: CUDA 12.8 (`cuda-12080`), as `major * 1000 + minor * 10`.
pub const REQUIRED_DRIVER_VERSION: i32 = 12_080;

/// The initialised CUDA driver.
#[derive(Debug)]
pub struct Driver {
    version: i32,
    device_count: u32,
}

fn version_text(v: i32) -> String {
    format!(
        "{}.{}",
        v.div_euclid(1000),
        v.rem_euclid(1000).div_euclid(10)
    )
}

fn no_gpu(reason: impl Into<String>) -> CudaError {
    CudaError::NoGpu {
        reason: reason.into(),
    }
}

fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, CudaError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| {
        no_gpu(format!(
            "the CUDA driver failed during {what} (missing library or symbol)"
        ))
    })
}

fn load() -> Result<Driver, CudaError> {
    // SAFETY: `is_culib_present` only tries to open the library by name and closes it again.
    let present = guarded("library lookup", || unsafe { sys::is_culib_present() })?;
    if !present {
        return Err(no_gpu(
            "no NVIDIA driver found (libcuda could not be loaded); install the driver or use the mock backend",
        ));
    }
    let mut version = 0;
    // SAFETY: `version` is a valid, writable `c_int`; the library is present (checked above).
    let status = guarded("cuDriverGetVersion", || unsafe {
        sys::cuDriverGetVersion(&raw mut version)
    })?;
    status.result().map_err(|e| {
        no_gpu(format!(
            "cuDriverGetVersion failed: {}",
            CudaStatus::from(e)
        ))
    })?;
    if version < REQUIRED_DRIVER_VERSION {
        return Err(CudaError::DriverTooOld {
            found: version_text(version),
            required: version_text(REQUIRED_DRIVER_VERSION),
        });
    }
    guarded("cuInit", result::init)?
        .map_err(|e| no_gpu(format!("cuInit failed: {}", CudaStatus::from(e))))?;
    let count = guarded("cuDeviceGetCount", result::device::get_count)?
        .map_err(|e| no_gpu(format!("cuDeviceGetCount failed: {}", CudaStatus::from(e))))?;
    let device_count = u32::try_from(count).unwrap_or(0);
    if device_count == 0 {
        return Err(no_gpu("the NVIDIA driver reports no GPU"));
    }
    Ok(Driver {
        version,
        device_count,
    })
}

impl Driver {
    /// The process's driver, initialised on first use.
    ///
    /// # Errors
    /// [`CudaError::NoGpu`] when no driver or no GPU is present or the driver fails to start;
    /// [`CudaError::DriverTooOld`] when it is older than CUDA 12.8.
    pub fn get() -> Result<&'static Self, CudaError> {
        static DRIVER: OnceLock<Result<Driver, CudaError>> = OnceLock::new();
        DRIVER.get_or_init(load).as_ref().map_err(Clone::clone)
    }

    /// Driver version as `major.minor`, e.g. `13.0`.
    #[must_use]
    pub fn version(&self) -> String {
        version_text(self.version)
    }

    /// Number of CUDA devices.
    #[must_use]
    pub fn device_count(&self) -> u32 {
        self.device_count
    }
}
