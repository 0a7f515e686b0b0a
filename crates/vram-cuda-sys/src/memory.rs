//! Device memory and synchronous copies, pinned host buffers (the staging ring's slots), and,
//! with the `test-utils` feature only, the host-memory kinds the VRAM-only policy must refuse
//! (managed, mapped, registered), so tests can present each to the pointer check. Fast uploads go through
//! [`StagingRing`](crate::staging_ring::StagingRing).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::result;
use cudarc::driver::sys::CUdeviceptr;
use vram_types::AllocationFacts;

use crate::device::Device;
use crate::error::{CudaError, CudaStatus};
use crate::pointer;

fn range_error(device: u32, operation: &'static str) -> CudaError {
    CudaError::OutOfRange { device, operation }
}

/// Device memory from `cuMemAlloc`. Freed on drop; [`DeviceBuffer::free`] reports errors.
pub struct DeviceBuffer {
    device: Arc<Device>,
    ptr: Option<CUdeviceptr>,
    len: usize,
}

crate::debug_without_pointers!(DeviceBuffer {
    device: |b: &DeviceBuffer| b.device.ordinal(),
    len: |b: &DeviceBuffer| b.len
});

impl DeviceBuffer {
    /// Allocates `len` bytes on `device`.
    ///
    /// # Errors
    /// [`CudaError::InvalidArgument`] for `len == 0`; [`CudaError::OutOfMemory`] when the
    /// device is out of memory; [`CudaError::Driver`] otherwise.
    pub fn alloc(device: &Arc<Device>, len: usize) -> Result<Self, CudaError> {
        if len == 0 {
            return Err(CudaError::InvalidArgument {
                what: "allocation size",
                reason: "0 bytes".into(),
            });
        }
        device.bind()?;
        // SAFETY: the device's context is current (bound above) and `len` is non-zero.
        let ptr = unsafe { result::malloc_sync(len) }.map_err(|e| {
            CudaStatus::from(e).allocating(device.ordinal(), "cuMemAlloc", len, || {
                device.memory_info().map_or(0, |(free, _)| free)
            })
        })?;
        Ok(Self {
            device: Arc::clone(device),
            ptr: Some(ptr),
            len,
        })
    }

    /// Length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty (never: allocations are at least one byte).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The owning device.
    #[must_use]
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    pub(crate) fn range_address(
        &self,
        offset: usize,
        n: usize,
        operation: &'static str,
    ) -> Result<CUdeviceptr, CudaError> {
        let ptr = self
            .ptr
            .ok_or_else(|| range_error(self.device.ordinal(), operation))?;
        let end = offset.checked_add(n);
        match end {
            Some(end) if end <= self.len => u64::try_from(offset)
                .ok()
                .and_then(|o| ptr.checked_add(o))
                .ok_or_else(|| range_error(self.device.ordinal(), operation)),
            _ => Err(range_error(self.device.ordinal(), operation)),
        }
    }

    /// Copies host bytes (any host memory, pageable included) to `offset`, synchronously.
    /// A copy from pageable memory is ordered with the legacy default stream (where PyTorch
    /// computes): never on a path beside an engine (tests, the naive baseline of `bench`).
    ///
    /// # Errors
    /// [`CudaError::OutOfRange`] when the range is outside the buffer; [`CudaError::Driver`] when
    /// the copy fails.
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), CudaError> {
        let dst = self.range_address(offset, src.len(), "host-to-device copy")?;
        self.device.bind()?;
        // SAFETY: `dst..dst+src.len()` lies inside this live allocation (checked by `range_address`), and
        // `src` is a valid host slice for the whole synchronous copy.
        unsafe { result::memcpy_htod_sync(dst, src) }
            .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "host-to-device copy"))
    }

    /// Copies bytes at `offset` to host memory, synchronously (ordered with the legacy default
    /// stream, as [`Self::write`] is: never beside an engine; `StagingRing::download` reads
    /// through pinned memory instead).
    ///
    /// # Errors
    /// [`CudaError::OutOfRange`] when the range is outside the buffer; [`CudaError::Driver`] when
    /// the copy fails.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), CudaError> {
        let src = self.range_address(offset, dst.len(), "device-to-host copy")?;
        self.device.bind()?;
        // SAFETY: `src..src+dst.len()` lies inside this live allocation (checked by `range_address`), and
        // `dst` is a valid, exclusively borrowed host slice for the whole synchronous copy.
        unsafe { result::memcpy_dtoh_sync(dst, src) }
            .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "device-to-host copy"))
    }

    /// The allocation's device address, for the manager's scoped lending view (an engine's
    /// kernels read the sealed bytes where they lie). Valid while this buffer lives; the view
    /// that carries it borrows the shard that owns the buffer.
    ///
    /// # Errors
    /// [`CudaError::OutOfRange`] for a buffer already freed.
    pub fn lending_address(&self) -> Result<u64, CudaError> {
        self.device_address()
    }

    /// The device address, for kernel arguments inside this crate only.
    pub(crate) fn device_address(&self) -> Result<u64, CudaError> {
        self.ptr
            .ok_or_else(|| range_error(self.device.ordinal(), "kernel argument"))
    }

    /// What the driver reports about this allocation, for the first `len` bytes.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn facts(&self, len: usize) -> Result<AllocationFacts, CudaError> {
        let ptr = self
            .ptr
            .ok_or_else(|| range_error(self.device.ordinal(), "pointer query"))?;
        pointer::query(&self.device, ptr, len)
    }

    /// Frees the buffer now, reporting a driver error.
    ///
    /// # Errors
    /// [`CudaError::Driver`] (`cuMemFree`).
    pub fn free(mut self) -> Result<(), CudaError> {
        self.release()
    }

    fn release(&mut self) -> Result<(), CudaError> {
        let Some(ptr) = self.ptr.take() else {
            return Ok(());
        };
        self.device.bind()?;
        // SAFETY: `ptr` came from `cuMemAlloc` and is freed exactly once (taken out of `self.ptr`).
        unsafe { result::free_sync(ptr) }
            .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "cuMemFree"))
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // Errors were reportable through `free`; here they can only be dropped.
        if let Err(e) = self.release() {
            tracing::warn!(gpu_device = self.device.ordinal(), error = %e, "releasing device memory failed");
        }
    }
}

/// Page-locked host memory from `cuMemAllocHost`: fast DMA, and never model storage.
pub struct PinnedBuffer {
    device: Arc<Device>,
    ptr: *mut u8,
    len: usize,
}

crate::debug_without_pointers!(PinnedBuffer {
    device: |b: &PinnedBuffer| b.device.ordinal(),
    len: |b: &PinnedBuffer| b.len
});

// SAFETY: the buffer exclusively owns its allocation; `&mut self` guards every write.
unsafe impl Send for PinnedBuffer {}
// SAFETY: shared references only read.
unsafe impl Sync for PinnedBuffer {}

impl PinnedBuffer {
    /// Allocates `len` bytes of pinned host memory.
    ///
    /// # Errors
    /// [`CudaError::HostMemory`] when it cannot be allocated.
    pub fn alloc(device: &Arc<Device>, len: usize) -> Result<Self, CudaError> {
        device.bind()?;
        // SAFETY: the device's context is current; `len` is the requested size.
        let ptr = unsafe { result::malloc_host(len.max(1), 0) }
            .map_err(|_| CudaError::HostMemory { bytes: len })?;
        Ok(Self {
            device: Arc::clone(device),
            ptr: ptr.cast(),
            len,
        })
    }

    /// The device whose context pinned it.
    #[must_use]
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// The bytes.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` bytes owned by this buffer until drop.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `len` bytes owned by this buffer; `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// What the driver reports about this memory (host memory: the policy refuses it).
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn facts(&self) -> Result<AllocationFacts, CudaError> {
        pointer::query(&self.device, self.ptr as CUdeviceptr, self.len)
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: `ptr` came from `cuMemAllocHost` and is freed once, here.
            let freed = unsafe { result::free_host(self.ptr.cast::<c_void>()) };
            crate::error::report_release("pinned host memory", self.device.ordinal(), freed);
        }
    }
}

#[cfg(feature = "test-utils")]
/// Managed (unified) memory from `cuMemAllocManaged`: claims to be device memory but migrates
/// to host RAM. Exists so tests can show the policy refuses it.
pub struct ManagedBuffer {
    device: Arc<Device>,
    ptr: CUdeviceptr,
    len: usize,
}

#[cfg(feature = "test-utils")]
crate::debug_without_pointers!(ManagedBuffer {
    device: |b: &ManagedBuffer| b.device.ordinal(),
    len: |b: &ManagedBuffer| b.len
});

#[cfg(feature = "test-utils")]
impl ManagedBuffer {
    /// Allocates `len` bytes of managed memory (keep it small: never more than the card has free).
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn alloc(device: &Arc<Device>, len: usize) -> Result<Self, CudaError> {
        device.bind()?;
        // SAFETY: the device's context is current; `len` is the requested size.
        let ptr = unsafe {
            result::malloc_managed(
                len.max(1),
                cudarc::driver::sys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL,
            )
        }
        .map_err(|e| CudaStatus::from(e).during(device.ordinal(), "cuMemAllocManaged"))?;
        Ok(Self {
            device: Arc::clone(device),
            ptr,
            len,
        })
    }

    /// What the driver reports about it.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn facts(&self) -> Result<AllocationFacts, CudaError> {
        pointer::query(&self.device, self.ptr, self.len)
    }

    /// The device.
    #[must_use]
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// Its length.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn address(&self) -> CUdeviceptr {
        self.ptr
    }
}

#[cfg(feature = "test-utils")]
impl Drop for ManagedBuffer {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: `ptr` came from `cuMemAllocManaged` and is freed once, here.
            let freed = unsafe { result::free_sync(self.ptr) };
            crate::error::report_release("managed memory", self.device.ordinal(), freed);
        }
    }
}

#[cfg(feature = "test-utils")]
/// Zero-copy host memory mapped into the device's address space (`cuMemHostAlloc` with
/// `DEVICEMAP`). Exists so tests can show the policy refuses it.
pub struct MappedHostBuffer {
    device: Arc<Device>,
    ptr: *mut c_void,
    len: usize,
}

#[cfg(feature = "test-utils")]
crate::debug_without_pointers!(MappedHostBuffer {
    device: |b: &MappedHostBuffer| b.device.ordinal(),
    len: |b: &MappedHostBuffer| b.len
});

#[cfg(feature = "test-utils")]
impl MappedHostBuffer {
    /// Allocates `len` bytes of mapped pinned host memory.
    ///
    /// # Errors
    /// [`CudaError::HostMemory`].
    pub fn alloc(device: &Arc<Device>, len: usize) -> Result<Self, CudaError> {
        device.bind()?;
        // SAFETY: the device's context is current; flags ask for a device mapping.
        let ptr = unsafe {
            result::malloc_host(len.max(1), cudarc::driver::sys::CU_MEMHOSTALLOC_DEVICEMAP)
        }
        .map_err(|_| CudaError::HostMemory { bytes: len })?;
        Ok(Self {
            device: Arc::clone(device),
            ptr,
            len,
        })
    }

    /// What the driver reports about it.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn facts(&self) -> Result<AllocationFacts, CudaError> {
        pointer::query(&self.device, self.ptr as CUdeviceptr, self.len)
    }
}

#[cfg(feature = "test-utils")]
impl Drop for MappedHostBuffer {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: `ptr` came from `cuMemHostAlloc` and is freed once, here.
            let freed = unsafe { result::free_host(self.ptr) };
            crate::error::report_release("mapped host memory", self.device.ordinal(), freed);
        }
    }
}

#[cfg(feature = "test-utils")]
/// Ordinary host memory registered with `cuMemHostRegister`. Exists so tests can show the
/// policy refuses it.
pub struct RegisteredHostBuffer {
    device: Arc<Device>,
    bytes: Vec<u8>,
    registered: bool,
}

#[cfg(feature = "test-utils")]
crate::debug_without_pointers!(RegisteredHostBuffer {
    device: |b: &RegisteredHostBuffer| b.device.ordinal(),
    len: |b: &RegisteredHostBuffer| b.bytes.len()
});

#[cfg(feature = "test-utils")]
impl RegisteredHostBuffer {
    /// Allocates `len` bytes on the heap and registers them.
    ///
    /// # Errors
    /// [`CudaError::Driver`] when registration fails.
    pub fn alloc(device: &Arc<Device>, len: usize) -> Result<Self, CudaError> {
        device.bind()?;
        let mut bytes = vec![0u8; len.max(1)];
        let ptr = bytes.as_mut_ptr().cast::<c_void>();
        // SAFETY: `ptr` points to `bytes.len()` bytes owned by `bytes`, which outlives the
        // registration (unregistered in `Drop` before the vector is freed).
        unsafe { cudarc::driver::sys::cuMemHostRegister_v2(ptr, bytes.len(), 0) }
            .result()
            .map_err(|e| CudaStatus::from(e).during(device.ordinal(), "cuMemHostRegister"))?;
        Ok(Self {
            device: Arc::clone(device),
            bytes,
            registered: true,
        })
    }

    /// What the driver reports about it.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn facts(&self) -> Result<AllocationFacts, CudaError> {
        pointer::query(
            &self.device,
            self.bytes.as_ptr() as CUdeviceptr,
            self.bytes.len(),
        )
    }
}

#[cfg(feature = "test-utils")]
impl Drop for RegisteredHostBuffer {
    fn drop(&mut self) {
        if self.registered && self.device.bind().is_ok() {
            // SAFETY: the pointer was registered in `alloc` and is unregistered once, here,
            // before `bytes` is freed.
            let _ =
                unsafe { cudarc::driver::sys::cuMemHostUnregister(self.bytes.as_mut_ptr().cast()) };
        }
    }
}
