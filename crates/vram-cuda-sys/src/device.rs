//! One CUDA device and its primary context.
//!
//! The driver keeps a "current context" per thread. Every operation here first makes the
//! device's primary context current on the calling thread ([`Device::bind`]), so the types can
//! be used from any thread.

use std::sync::Arc;

use cudarc::driver::result;
use cudarc::driver::sys::{self, CUcontext, CUdevice, CUdevice_attribute};
use vram_types::DeviceFacts;

use crate::driver::Driver;
use crate::error::{CudaError, CudaStatus};

/// Unused bytes the default stream-ordered pool keeps mapped between digests: one 2 MiB
/// granule, enough for the scratch of a BLAKE3 digest of up to 64 MiB or a 64 KiB-leaf tree
/// digest of up to 4 GiB.
pub const POOL_KEEP_BYTES: usize = 2 << 20;

/// A CUDA device with its retained primary context.
pub struct Device {
    ordinal: u32,
    handle: CUdevice,
    ctx: CUcontext,
}

crate::debug_without_pointers!(Device {
    ordinal: |d: &Device| d.ordinal
});

// SAFETY: a CUcontext is a driver handle, valid on every thread of the process; the driver
// serialises access internally, and this type never dereferences it.
unsafe impl Send for Device {}
// SAFETY: as above; `&Device` only hands the handle to thread-safe driver calls.
unsafe impl Sync for Device {}

impl Device {
    /// Opens device `ordinal` and retains its primary context.
    ///
    /// # Errors
    /// [`CudaError::NoGpu`] / [`CudaError::DriverTooOld`] from [`Driver::get`];
    /// [`CudaError::InvalidDevice`] for an ordinal the driver does not know;
    /// [`CudaError::Driver`] when the context cannot be created.
    pub fn open(ordinal: u32) -> Result<Arc<Self>, CudaError> {
        let driver = Driver::get()?;
        if ordinal >= driver.device_count() {
            return Err(CudaError::InvalidDevice {
                device: ordinal,
                device_count: driver.device_count(),
            });
        }
        let index = i32::try_from(ordinal).map_err(|_| CudaError::InvalidDevice {
            device: ordinal,
            device_count: driver.device_count(),
        })?;
        let handle = result::device::get(index)
            .map_err(|e| CudaStatus::from(e).during(ordinal, "cuDeviceGet"))?;
        // SAFETY: `handle` was returned by `cuDeviceGet` just above.
        let ctx = unsafe { result::primary_ctx::retain(handle) }
            .map_err(|e| CudaStatus::from(e).during(ordinal, "cuDevicePrimaryCtxRetain"))?;
        let device = Self {
            ordinal,
            handle,
            ctx,
        };
        device.bind()?;
        Ok(Arc::new(device))
    }

    /// The device index.
    #[must_use]
    pub fn ordinal(&self) -> u32 {
        self.ordinal
    }

    /// Makes the primary context current on the calling thread.
    ///
    /// # Errors
    /// [`CudaError::Driver`] from `cuCtxSetCurrent`.
    pub fn bind(&self) -> Result<(), CudaError> {
        // SAFETY: `ctx` is a primary context retained in `open` and released only in `Drop`.
        unsafe { result::ctx::set_current(self.ctx) }
            .map_err(|e| CudaStatus::from(e).during(self.ordinal, "cuCtxSetCurrent"))
    }

    fn attribute(&self, attribute: CUdevice_attribute) -> Result<i32, CudaError> {
        // SAFETY: `handle` came from `cuDeviceGet`; the attribute is a valid enum value.
        unsafe { result::device::get_attribute(self.handle, attribute) }
            .map_err(|e| CudaStatus::from(e).during(self.ordinal, "cuDeviceGetAttribute"))
    }

    /// The attributes the VRAM-only policy decides on.
    ///
    /// # Errors
    /// [`CudaError::Driver`] when an attribute cannot be read.
    pub fn facts(&self) -> Result<DeviceFacts, CudaError> {
        use CUdevice_attribute as A;
        let flag = |a| self.attribute(a).map(|v| v != 0);
        let name = result::device::get_name(self.handle)
            .map_err(|e| CudaStatus::from(e).during(self.ordinal, "cuDeviceGetName"))?;
        // SAFETY: `handle` came from `cuDeviceGet`.
        let total_memory = unsafe { result::device::total_mem(self.handle) }
            .map_err(|e| CudaStatus::from(e).during(self.ordinal, "cuDeviceTotalMem"))?;
        Ok(DeviceFacts {
            ordinal: self.ordinal,
            name,
            total_memory,
            integrated: flag(A::CU_DEVICE_ATTRIBUTE_INTEGRATED)?,
            unified_addressing: flag(A::CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING)?,
            managed_memory: flag(A::CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY)?,
            pageable_memory_access: flag(A::CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS)?,
            can_map_host_memory: flag(A::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY)?,
            ecc_enabled: Some(flag(A::CU_DEVICE_ATTRIBUTE_ECC_ENABLED)?),
            driver_version: Driver::get().ok().map(Driver::version),
        })
    }

    /// Number of streaming multiprocessors.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn multiprocessor_count(&self) -> Result<u32, CudaError> {
        let n = self.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        Ok(u32::try_from(n).unwrap_or(1).max(1))
    }

    /// Free and total device memory, in bytes (`cuMemGetInfo`; a snapshot).
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn memory_info(&self) -> Result<(usize, usize), CudaError> {
        self.bind()?;
        result::mem_get_info().map_err(|e| CudaStatus::from(e).during(self.ordinal, "cuMemGetInfo"))
    }

    /// Returns the unused memory of the device's default stream-ordered pool (`cuMemAllocAsync`)
    /// to the device but one granule ([`POOL_KEEP_BYTES`]), so free memory reflects live
    /// allocations within a granule, and the digests' small scratch allocations reuse memory
    /// already mapped instead of mapping (and the pool releasing) a fresh granule every time.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn trim_memory_pool(&self) -> Result<(), CudaError> {
        self.bind()?;
        let mut pool = std::mem::MaybeUninit::uninit();
        // SAFETY: `handle` came from `cuDeviceGet`; `pool` is written by the call.
        unsafe { sys::cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), self.handle) }
            .result()
            .map_err(|e| CudaStatus::from(e).during(self.ordinal, "cuDeviceGetDefaultMemPool"))?;
        // SAFETY: the call above succeeded, so `pool` is initialised.
        let pool = unsafe { pool.assume_init() };
        // The pool's release threshold (default 0) makes every synchronisation hand all unused
        // memory back; one granule kept is what lets the next scratch allocation skip mapping.
        let mut keep = POOL_KEEP_BYTES as u64;
        // SAFETY: `pool` is the device's default pool, valid for the process's lifetime; the
        // attribute is a u64 that the call reads from `keep` before returning.
        unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&raw mut keep).cast(),
            )
        }
        .result()
        .map_err(|e| CudaStatus::from(e).during(self.ordinal, "cuMemPoolSetAttribute"))?;
        // SAFETY: as above.
        unsafe { sys::cuMemPoolTrimTo(pool, POOL_KEEP_BYTES) }
            .result()
            .map_err(|e| CudaStatus::from(e).during(self.ordinal, "cuMemPoolTrimTo"))
    }

    /// Waits until all work on the device's context is done.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.bind()?;
        result::ctx::synchronize()
            .map_err(|e| CudaStatus::from(e).during(self.ordinal, "cuCtxSynchronize"))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: the context was retained once in `open`; this is the matching release.
        let released = unsafe { result::primary_ctx::release(self.handle) };
        crate::error::report_release("the primary context", self.ordinal, released);
    }
}
