//! Device memory, pinned staging buffers and copies, plus the host-memory kinds the VRAM-only
//! policy must refuse (managed, pinned, mapped, registered), so tests can present each to the
//! pointer check.
//!
//! Uploads and read-backs go through two pinned staging buffers on one stream: while the DMA
//! engine copies one chunk, the CPU fills (or hashes) the other.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::result;
use cudarc::driver::sys::{self, CUdeviceptr, CUevent, CUstream};
use vram_types::{AllocationFacts, VramError};

use crate::device::Device;
use crate::error::CudaError;
use crate::pointer;

/// Largest staging chunk: 32 MiB (two of them are pinned per transfer).
pub const STAGING_CHUNK_BYTES: usize = 32 * 1024 * 1024;

fn range_error(device: u32, operation: &'static str) -> VramError {
    VramError::CudaOperationFailed {
        device,
        operation,
        cuda_error: "range outside the allocation (refused before calling the driver)".into(),
    }
}

/// Device memory from `cuMemAlloc`. Freed on drop; [`DeviceBuffer::free`] reports errors.
#[derive(Debug)]
pub struct DeviceBuffer {
    device: Arc<Device>,
    ptr: Option<CUdeviceptr>,
    len: usize,
}

impl DeviceBuffer {
    /// Allocates `len` bytes on `device`.
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] for `len == 0`; [`VramError::InsufficientVram`] when the
    /// device is out of memory; [`VramError::CudaAllocationFailed`] otherwise.
    pub fn alloc(device: &Arc<Device>, len: usize) -> Result<Self, VramError> {
        if len == 0 {
            return Err(VramError::invalid_input("allocation size", "0 bytes"));
        }
        device.bind()?;
        // SAFETY: the device's context is current (bound above) and `len` is non-zero.
        let ptr = unsafe { result::malloc_sync(len) }.map_err(|e| {
            let e = CudaError::from(e);
            if e.is_out_of_memory() {
                VramError::InsufficientVram {
                    needed: len,
                    available: device.memory_info().map_or(0, |(free, _)| free),
                    device: device.ordinal(),
                }
            } else {
                VramError::CudaAllocationFailed {
                    device: device.ordinal(),
                    bytes: len,
                    cuda_error: e.to_string(),
                }
            }
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
    ) -> Result<CUdeviceptr, VramError> {
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
    ///
    /// # Errors
    /// [`VramError::CudaOperationFailed`] when the range is outside the buffer or the copy fails.
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), VramError> {
        let dst = self.range_address(offset, src.len(), "host-to-device copy")?;
        self.device.bind()?;
        // SAFETY: `dst..dst+src.len()` lies inside this live allocation (checked by `at`), and
        // `src` is a valid host slice for the whole synchronous copy.
        unsafe { result::memcpy_htod_sync(dst, src) }
            .map_err(|e| CudaError::from(e).during(self.device.ordinal(), "host-to-device copy"))
    }

    /// Copies bytes at `offset` to host memory, synchronously.
    ///
    /// # Errors
    /// [`VramError::CudaOperationFailed`] when the range is outside the buffer or the copy fails.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), VramError> {
        let src = self.range_address(offset, dst.len(), "device-to-host copy")?;
        self.device.bind()?;
        // SAFETY: `src..src+dst.len()` lies inside this live allocation (checked by `at`), and
        // `dst` is a valid, exclusively borrowed host slice for the whole synchronous copy.
        unsafe { result::memcpy_dtoh_sync(dst, src) }
            .map_err(|e| CudaError::from(e).during(self.device.ordinal(), "device-to-host copy"))
    }

    /// Uploads `src` to the start of the buffer through the two staging buffers of `staging`.
    ///
    /// # Errors
    /// [`VramError::CudaOperationFailed`] when `src` is longer than the buffer or a copy fails.
    pub fn upload(&self, src: &[u8], staging: &mut Staging) -> Result<(), VramError> {
        let ordinal = self.device.ordinal();
        self.range_address(0, src.len(), "host-to-device copy")?;
        self.device.bind()?;
        let chunk_bytes = staging.chunk;
        for (i, chunk) in src.chunks(chunk_bytes).enumerate() {
            let slot = i % 2;
            staging.wait(slot)?; // the copy that last used this slot has finished
            let pinned = staging.buffer_mut(slot)?;
            let dst_host = pinned
                .as_mut_slice()
                .get_mut(..chunk.len())
                .ok_or_else(|| range_error(ordinal, "staging copy"))?;
            dst_host.copy_from_slice(chunk);
            let offset = i.saturating_mul(chunk_bytes);
            let dst = self.range_address(offset, chunk.len(), "host-to-device copy")?;
            let stream = staging.stream;
            let src_pinned = staging
                .buffer(slot)?
                .as_slice()
                .get(..chunk.len())
                .ok_or_else(|| range_error(ordinal, "staging copy"))?;
            // SAFETY: `dst` range is inside this allocation (checked by `at`); `src_pinned` is
            // page-locked memory owned by `staging`, which is not written again before the
            // event recorded next has completed (`staging.wait`).
            unsafe { result::memcpy_htod_async(dst, src_pinned, stream) }
                .map_err(|e| CudaError::from(e).during(ordinal, "host-to-device copy"))?;
            staging.record(slot)?;
        }
        staging.synchronize()
    }

    /// Reads the first `len` bytes back through the staging buffers, calling `consume` with
    /// each chunk in order (chunks are the staging chunk size, the last may be shorter).
    /// The next chunk's copy runs while `consume` works on the current one.
    ///
    /// # Errors
    /// [`VramError::CudaOperationFailed`] when `len` exceeds the buffer or a copy fails; any
    /// error `consume` returns.
    pub fn read_back(
        &self,
        len: usize,
        staging: &mut Staging,
        mut consume: impl FnMut(&[u8]) -> Result<(), VramError>,
    ) -> Result<(), VramError> {
        self.range_address(0, len, "device-to-host copy")?;
        self.device.bind()?;
        let chunk_bytes = staging.chunk;
        let chunks = len.div_ceil(chunk_bytes);
        let chunk_len = |i: usize| {
            len.saturating_sub(i.saturating_mul(chunk_bytes))
                .min(chunk_bytes)
        };
        if chunks > 0 {
            self.issue_read(0, chunk_len(0), 0, staging)?;
        }
        for i in 0..chunks {
            let next = i.saturating_add(1);
            if next < chunks {
                self.issue_read(next, chunk_len(next), next % 2, staging)?;
            }
            staging.wait(i % 2)?;
            let data = staging
                .buffer(i % 2)?
                .as_slice()
                .get(..chunk_len(i))
                .ok_or_else(|| range_error(self.device.ordinal(), "staging copy"))?;
            consume(data)?;
        }
        staging.synchronize()
    }

    fn issue_read(
        &self,
        index: usize,
        n: usize,
        slot: usize,
        staging: &mut Staging,
    ) -> Result<(), VramError> {
        let ordinal = self.device.ordinal();
        let src = self.range_address(
            index.saturating_mul(staging.chunk),
            n,
            "device-to-host copy",
        )?;
        let stream = staging.stream;
        let dst = staging
            .buffer_mut(slot)?
            .as_mut_slice()
            .get_mut(..n)
            .ok_or_else(|| range_error(ordinal, "staging copy"))?;
        // SAFETY: `src` range is inside this allocation (checked by `at`); `dst` is page-locked
        // memory owned by `staging` that nobody reads before the event recorded next completes.
        unsafe { result::memcpy_dtoh_async(dst, src, stream) }
            .map_err(|e| CudaError::from(e).during(ordinal, "device-to-host copy"))?;
        staging.record(slot)
    }

    /// The device address, for kernel arguments inside this crate only.
    pub(crate) fn device_address(&self) -> Result<u64, VramError> {
        self.ptr
            .ok_or_else(|| range_error(self.device.ordinal(), "kernel argument"))
    }

    /// What the driver reports about this allocation, for the first `len` bytes.
    ///
    /// # Errors
    /// [`VramError::CudaOperationFailed`].
    pub fn facts(&self, len: usize) -> Result<AllocationFacts, VramError> {
        let ptr = self
            .ptr
            .ok_or_else(|| range_error(self.device.ordinal(), "pointer query"))?;
        pointer::query(&self.device, ptr, len)
    }

    /// Frees the buffer now, reporting a driver error.
    ///
    /// # Errors
    /// [`VramError::CudaDeallocationFailed`].
    pub fn free(mut self) -> Result<(), VramError> {
        self.release()
    }

    fn release(&mut self) -> Result<(), VramError> {
        let Some(ptr) = self.ptr.take() else {
            return Ok(());
        };
        self.device.bind()?;
        // SAFETY: `ptr` came from `cuMemAlloc` and is freed exactly once (taken out of `self.ptr`).
        unsafe { result::free_sync(ptr) }.map_err(|e| VramError::CudaDeallocationFailed {
            device: self.device.ordinal(),
            cuda_error: CudaError::from(e).to_string(),
        })
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // Errors were reportable through `free`; here they can only be dropped.
        let _ = self.release();
    }
}

/// Page-locked host memory from `cuMemAllocHost`: fast DMA, and never model storage.
#[derive(Debug)]
pub struct PinnedBuffer {
    device: Arc<Device>,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer exclusively owns its allocation; `&mut self` guards every write.
unsafe impl Send for PinnedBuffer {}
// SAFETY: shared references only read.
unsafe impl Sync for PinnedBuffer {}

impl PinnedBuffer {
    /// Allocates `len` bytes of pinned host memory.
    ///
    /// # Errors
    /// [`VramError::HostMemoryExhausted`] when it cannot be allocated.
    pub fn alloc(device: &Arc<Device>, len: usize) -> Result<Self, VramError> {
        device.bind()?;
        // SAFETY: the device's context is current; `len` is the requested size.
        let ptr = unsafe { result::malloc_host(len.max(1), 0) }
            .map_err(|_| VramError::HostMemoryExhausted { needed: len })?;
        Ok(Self {
            device: Arc::clone(device),
            ptr: ptr.cast(),
            len,
        })
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
    /// [`VramError::CudaOperationFailed`].
    pub fn facts(&self) -> Result<AllocationFacts, VramError> {
        pointer::query(&self.device, self.ptr as CUdeviceptr, self.len)
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: `ptr` came from `cuMemAllocHost` and is freed once, here.
            let _ = unsafe { result::free_host(self.ptr.cast::<c_void>()) };
        }
    }
}

/// Two pinned staging buffers, a stream and one event per buffer.
#[derive(Debug)]
pub struct Staging {
    device: Arc<Device>,
    buffers: [PinnedBuffer; 2],
    events: [CUevent; 2],
    used: [bool; 2],
    stream: CUstream,
    chunk: usize,
}

// SAFETY: stream and events are driver handles usable from any thread; `&mut self` serialises use.
unsafe impl Send for Staging {}

impl Staging {
    /// Staging for a transfer of `transfer_len` bytes: two pinned buffers of
    /// `min(transfer_len, STAGING_CHUNK_BYTES)` bytes each, a stream and two events.
    ///
    /// # Errors
    /// [`VramError::HostMemoryExhausted`]; [`VramError::CudaOperationFailed`].
    pub fn new(device: &Arc<Device>, transfer_len: usize) -> Result<Self, VramError> {
        let ordinal = device.ordinal();
        let chunk = transfer_len.clamp(1, STAGING_CHUNK_BYTES);
        let buffers = [
            PinnedBuffer::alloc(device, chunk)?,
            PinnedBuffer::alloc(device, chunk)?,
        ];
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(|e| CudaError::from(e).during(ordinal, "cuStreamCreate"))?;
        let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING;
        let first = result::event::create(flags);
        let second = result::event::create(flags);
        let events = match (first, second) {
            (Ok(a), Ok(b)) => [a, b],
            (a, b) => {
                for e in [a, b].into_iter().flatten() {
                    // SAFETY: `e` was created just above and is destroyed once.
                    let _ = unsafe { result::event::destroy(e) };
                }
                // SAFETY: `stream` was created just above and is destroyed once.
                let _ = unsafe { result::stream::destroy(stream) };
                return Err(VramError::CudaOperationFailed {
                    device: ordinal,
                    operation: "cuEventCreate",
                    cuda_error: "event creation failed".into(),
                });
            }
        };
        Ok(Self {
            device: Arc::clone(device),
            buffers,
            events,
            used: [false; 2],
            stream,
            chunk,
        })
    }

    fn buffer(&self, slot: usize) -> Result<&PinnedBuffer, VramError> {
        self.buffers
            .get(slot)
            .ok_or(VramError::Unreachable("two staging slots"))
    }

    fn buffer_mut(&mut self, slot: usize) -> Result<&mut PinnedBuffer, VramError> {
        self.buffers
            .get_mut(slot)
            .ok_or(VramError::Unreachable("two staging slots"))
    }

    fn record(&mut self, slot: usize) -> Result<(), VramError> {
        let event = *self
            .events
            .get(slot)
            .ok_or(VramError::Unreachable("two staging slots"))?;
        // SAFETY: `event` and `stream` were created in `new` and live until drop.
        unsafe { result::event::record(event, self.stream) }
            .map_err(|e| CudaError::from(e).during(self.device.ordinal(), "cuEventRecord"))?;
        if let Some(u) = self.used.get_mut(slot) {
            *u = true;
        }
        Ok(())
    }

    fn wait(&mut self, slot: usize) -> Result<(), VramError> {
        if !self.used.get(slot).copied().unwrap_or(false) {
            return Ok(());
        }
        let event = *self
            .events
            .get(slot)
            .ok_or(VramError::Unreachable("two staging slots"))?;
        // SAFETY: `event` was created in `new` and recorded on our stream.
        unsafe { result::event::synchronize(event) }
            .map_err(|e| CudaError::from(e).during(self.device.ordinal(), "cuEventSynchronize"))
    }

    fn synchronize(&mut self) -> Result<(), VramError> {
        // SAFETY: `stream` was created in `new` and lives until drop.
        unsafe { result::stream::synchronize(self.stream) }
            .map_err(|e| CudaError::from(e).during(self.device.ordinal(), "cuStreamSynchronize"))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.device.bind().is_err() {
            return;
        }
        let _ = self.synchronize();
        for event in self.events {
            // SAFETY: each event was created in `new` and is destroyed once, here.
            let _ = unsafe { result::event::destroy(event) };
        }
        // SAFETY: the stream was created in `new`, has no pending work (synchronised above)
        // and is destroyed once, here.
        let _ = unsafe { result::stream::destroy(self.stream) };
    }
}

/// Managed (unified) memory from `cuMemAllocManaged`: claims to be device memory but migrates
/// to host RAM. Exists so tests can show the policy refuses it.
#[derive(Debug)]
pub struct ManagedBuffer {
    device: Arc<Device>,
    ptr: CUdeviceptr,
    len: usize,
}

impl ManagedBuffer {
    /// Allocates `len` bytes of managed memory (keep it small: never more than the card has free).
    ///
    /// # Errors
    /// [`VramError::CudaAllocationFailed`].
    pub fn alloc(device: &Arc<Device>, len: usize) -> Result<Self, VramError> {
        device.bind()?;
        // SAFETY: the device's context is current; `len` is the requested size.
        let ptr = unsafe {
            result::malloc_managed(len.max(1), sys::CUmemAttach_flags::CU_MEM_ATTACH_GLOBAL)
        }
        .map_err(|e| VramError::CudaAllocationFailed {
            device: device.ordinal(),
            bytes: len,
            cuda_error: CudaError::from(e).to_string(),
        })?;
        Ok(Self {
            device: Arc::clone(device),
            ptr,
            len,
        })
    }

    /// What the driver reports about it.
    ///
    /// # Errors
    /// [`VramError::CudaOperationFailed`].
    pub fn facts(&self) -> Result<AllocationFacts, VramError> {
        pointer::query(&self.device, self.ptr, self.len)
    }
}

impl Drop for ManagedBuffer {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: `ptr` came from `cuMemAllocManaged` and is freed once, here.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// Zero-copy host memory mapped into the device's address space (`cuMemHostAlloc` with
/// `DEVICEMAP`). Exists so tests can show the policy refuses it.
#[derive(Debug)]
pub struct MappedHostBuffer {
    device: Arc<Device>,
    ptr: *mut c_void,
    len: usize,
}

impl MappedHostBuffer {
    /// Allocates `len` bytes of mapped pinned host memory.
    ///
    /// # Errors
    /// [`VramError::HostMemoryExhausted`].
    pub fn alloc(device: &Arc<Device>, len: usize) -> Result<Self, VramError> {
        device.bind()?;
        // SAFETY: the device's context is current; flags ask for a device mapping.
        let ptr = unsafe { result::malloc_host(len.max(1), sys::CU_MEMHOSTALLOC_DEVICEMAP) }
            .map_err(|_| VramError::HostMemoryExhausted { needed: len })?;
        Ok(Self {
            device: Arc::clone(device),
            ptr,
            len,
        })
    }

    /// What the driver reports about it.
    ///
    /// # Errors
    /// [`VramError::CudaOperationFailed`].
    pub fn facts(&self) -> Result<AllocationFacts, VramError> {
        pointer::query(&self.device, self.ptr as CUdeviceptr, self.len)
    }
}

impl Drop for MappedHostBuffer {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: `ptr` came from `cuMemHostAlloc` and is freed once, here.
            let _ = unsafe { result::free_host(self.ptr) };
        }
    }
}

/// Ordinary host memory registered with `cuMemHostRegister`. Exists so tests can show the
/// policy refuses it.
#[derive(Debug)]
pub struct RegisteredHostBuffer {
    device: Arc<Device>,
    bytes: Vec<u8>,
    registered: bool,
}

impl RegisteredHostBuffer {
    /// Allocates `len` bytes on the heap and registers them.
    ///
    /// # Errors
    /// [`VramError::CudaOperationFailed`] when registration fails.
    pub fn alloc(device: &Arc<Device>, len: usize) -> Result<Self, VramError> {
        device.bind()?;
        let mut bytes = vec![0u8; len.max(1)];
        let ptr = bytes.as_mut_ptr().cast::<c_void>();
        // SAFETY: `ptr` points to `bytes.len()` bytes owned by `bytes`, which outlives the
        // registration (unregistered in `Drop` before the vector is freed).
        unsafe { sys::cuMemHostRegister_v2(ptr, bytes.len(), 0) }
            .result()
            .map_err(|e| CudaError::from(e).during(device.ordinal(), "cuMemHostRegister"))?;
        Ok(Self {
            device: Arc::clone(device),
            bytes,
            registered: true,
        })
    }

    /// What the driver reports about it.
    ///
    /// # Errors
    /// [`VramError::CudaOperationFailed`].
    pub fn facts(&self) -> Result<AllocationFacts, VramError> {
        pointer::query(
            &self.device,
            self.bytes.as_ptr() as CUdeviceptr,
            self.bytes.len(),
        )
    }
}

impl Drop for RegisteredHostBuffer {
    fn drop(&mut self) {
        if self.registered && self.device.bind().is_ok() {
            // SAFETY: the pointer was registered in `alloc` and is unregistered once, here,
            // before `bytes` is freed.
            let _ = unsafe { sys::cuMemHostUnregister(self.bytes.as_mut_ptr().cast()) };
        }
    }
}
