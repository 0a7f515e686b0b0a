//! The mock backend: "device memory" in host RAM, for tests and for machines with no GPU.
//!
//! It is a test double and says so: its allocations report [`MemoryType::Simulated`], its kind is
//! [`BackendKind::Mock`], and a manager built without it never falls back to it. It simulates
//! several devices and capacities, the 2 MiB allocation granularity of `cuMemAlloc`, device
//! properties (unified memory, integrated GPU, ...), and, with the `test-utils` feature only,
//! faults (fail the next allocation, copy or free) and the byte flips behind
//! `VramManager::flip_bits_for_tests`: a default build cannot inject either.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use vram_seal::ShardDigest;
use vram_types::{
    AllocationFacts, BackendKind, DeviceFacts, DigestAlgorithm, GpuShare, MemoryType, ShardSource,
    VramError,
};

use super::steps::{MockSteps, StepDigests};
use super::{
    Backend, BufferId, BufferTable, CUDA_ALLOCATION_GRANULARITY, ChunkObserver, DigestOrder,
    EngineStream, ForeignRange, LentMemory, MemoryInfo, PendingDigest, Ready, UPLOAD_CHUNK_BYTES,
    device_at, one_device, round_up,
};
use crate::sync::{lock, read, write};

mod engine_memory;
mod faults;
mod host_tensor;

use engine_memory::LentMock;
use faults::{Faults, MOCK_FAULT_CODE};
pub use host_tensor::HostTensor;
use host_tensor::Storage;

/// `CUresult` code the mock reports for a copy outside an allocation
/// (`CUDA_ERROR_INVALID_VALUE`).
const CUDA_ERROR_INVALID_VALUE: u32 = 1;

#[derive(Debug)]
struct MockDevice {
    facts: RwLock<DeviceFacts>,
    used: AtomicUsize,
}

#[derive(Debug)]
struct MockBuffer {
    device: u32,
    taken: usize,
    facts: AllocationFacts,
    data: Storage,
}

/// Simulated GPUs in host memory. Share it with `Arc` to keep a handle for fault injection.
pub struct MockBackend {
    devices: Vec<MockDevice>,
    granularity: usize,
    buffers: BufferTable<MockBuffer>,
    /// Memory a simulated inference engine holds (tensors to seal in place): not the manager's,
    /// not counted against a device's capacity, never freed by the manager.
    engine: BufferTable<MockBuffer>,
    faults: Mutex<Faults>,
}

/// Builds a [`MockBackend`].
#[derive(Debug, Clone)]
pub struct MockBuilder {
    devices: Vec<DeviceFacts>,
    granularity: usize,
}

impl MockBuilder {
    /// Adds a discrete GPU with `capacity` bytes of memory.
    #[must_use]
    pub fn device(mut self, capacity: usize) -> Self {
        let ordinal = u32::try_from(self.devices.len()).unwrap_or(u32::MAX);
        self.devices.push(DeviceFacts::discrete(
            ordinal,
            format!("Mock GPU {ordinal}"),
            capacity,
        ));
        self
    }

    /// Adds a device with the given facts (its ordinal is replaced by its position).
    #[must_use]
    pub fn device_with_facts(mut self, mut facts: DeviceFacts) -> Self {
        facts.ordinal = u32::try_from(self.devices.len()).unwrap_or(u32::MAX);
        self.devices.push(facts);
        self
    }

    /// Sets the allocation granularity (default 2 MiB, like `cuMemAlloc`).
    #[must_use]
    pub fn granularity(mut self, bytes: usize) -> Self {
        self.granularity = bytes.max(1);
        self
    }

    /// The backend.
    #[must_use]
    pub fn build(self) -> MockBackend {
        MockBackend {
            devices: self
                .devices
                .into_iter()
                .map(|facts| MockDevice {
                    facts: RwLock::new(facts),
                    used: AtomicUsize::new(0),
                })
                .collect(),
            granularity: self.granularity,
            buffers: BufferTable::default(),
            engine: BufferTable::default(),
            faults: Mutex::new(Faults::default()),
        }
    }
}

impl std::fmt::Debug for MockBackend {
    /// Device count and live allocations only: never the simulated VRAM's bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockBackend")
            .field("devices", &self.devices.len())
            .field("granularity", &self.granularity)
            .field("live_allocations", &self.buffers.len())
            .finish()
    }
}

impl MockBackend {
    /// A builder with no devices and 2 MiB granularity.
    #[must_use]
    pub fn builder() -> MockBuilder {
        MockBuilder {
            devices: Vec::new(),
            granularity: CUDA_ALLOCATION_GRANULARITY,
        }
    }

    /// One discrete device with `capacity` bytes.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self::builder().device(capacity).build()
    }

    /// Replaces a device's simulated facts (for example unified memory or an integrated GPU).
    ///
    /// # Errors
    /// [`VramError::InvalidDevice`] for an unknown device.
    pub fn set_device_facts(&self, device: u32, facts: DeviceFacts) -> Result<(), VramError> {
        *write(&self.device(device)?.facts) = DeviceFacts {
            ordinal: device,
            ..facts
        };
        Ok(())
    }

    /// Number of live allocations (tests check that nothing leaked).
    #[must_use]
    pub fn live_allocations(&self) -> usize {
        self.buffers.len()
    }

    fn device(&self, device: u32) -> Result<&MockDevice, VramError> {
        device_at(&self.devices, device)
    }

    fn buffer(&self, id: BufferId) -> Result<Arc<MockBuffer>, VramError> {
        self.buffers.get(id)
    }
}

impl Backend for MockBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Mock
    }

    fn device_count(&self) -> u32 {
        u32::try_from(self.devices.len()).unwrap_or(u32::MAX)
    }

    fn device_facts(&self, device: u32) -> Result<DeviceFacts, VramError> {
        let d = self.device(device)?;
        if self.any_call_fails() {
            return Err(Self::call_fault(device, "cuDeviceGetAttribute"));
        }
        Ok(read(&d.facts).clone())
    }

    fn memory_info(&self, device: u32) -> Result<MemoryInfo, VramError> {
        let d = self.device(device)?;
        if self.any_call_fails() {
            return Err(Self::call_fault(device, "cuMemGetInfo"));
        }
        let total = read(&d.facts).total_memory;
        Ok(MemoryInfo {
            free: total.saturating_sub(d.used.load(Ordering::Acquire)),
            total,
        })
    }

    fn granularity(&self) -> usize {
        self.granularity
    }

    fn allocate(&self, device: u32, bytes: usize) -> Result<BufferId, VramError> {
        let d = self.device(device)?;
        if self.take_fault(|f| &mut f.fail_allocations) {
            return Err(VramError::CudaAllocationFailed {
                device,
                bytes,
                cuda_error: "CUDA_ERROR_UNKNOWN: injected fault (mock)".into(),
                code: Some(MOCK_FAULT_CODE),
            });
        }
        let taken = round_up(bytes, self.granularity).ok_or_else(|| {
            VramError::invalid_input("model size", format!("{bytes} bytes cannot be allocated"))
        })?;
        let total = read(&d.facts).total_memory;
        d.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(taken).filter(|after| *after <= total)
            })
            .map_err(|used| VramError::InsufficientVram {
                needed: taken,
                available: total.saturating_sub(used),
                device,
            })?;
        let mut data = Vec::new();
        if data.try_reserve_exact(bytes).is_err() {
            d.used.fetch_sub(taken, Ordering::AcqRel);
            return Err(VramError::HostMemoryExhausted { needed: bytes });
        }
        data.resize(bytes, 0);
        let facts =
            lock(&self.faults)
                .next_allocation_facts
                .take()
                .unwrap_or(AllocationFacts::new(
                    MemoryType::Simulated,
                    false,
                    device,
                    true,
                ));
        Ok(self.buffers.insert(MockBuffer {
            device,
            taken,
            facts,
            data: Storage::owned(data),
        }))
    }

    fn adopt(&self, range: ForeignRange) -> Result<BufferId, VramError> {
        self.device(range.device_ordinal())?;
        Ok(self.buffers.insert_shared(self.engine_buffer(&range)?))
    }

    fn upload(
        &self,
        buffer: BufferId,
        source: &dyn ShardSource,
        observe: Option<ChunkObserver<'_>>,
    ) -> Result<(), VramError> {
        let b = self.buffer(buffer)?;
        self.copy_fault(b.device, "host-to-device copy", |f| &mut f.fail_uploads)?;
        let mut data = b.data.owned_mut()?;
        let too_long = VramError::CudaOperationFailed {
            device: b.device,
            operation: "host-to-device copy",
            cuda_error: "CUDA_ERROR_INVALID_VALUE: copy larger than the allocation".into(),
            code: Some(CUDA_ERROR_INVALID_VALUE),
        };
        let len = usize::try_from(source.len()).map_err(|_| too_long.clone())?;
        let dst = data.get_mut(..len).ok_or(too_long)?;
        // Chunk by chunk, as the CUDA backend's staging ring sees the bytes.
        let mut offset = 0u64;
        for chunk in dst.chunks_mut(UPLOAD_CHUNK_BYTES) {
            source.fill(offset, chunk)?;
            if let Some(observe) = observe {
                observe(offset, chunk);
            }
            offset = offset.saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
        }
        let mut faults = lock(&self.faults);
        if faults.garble_uploads > 0 {
            faults.garble_uploads = faults.garble_uploads.saturating_sub(1);
            if let Some(first) = dst.first_mut() {
                *first ^= 0xff;
            }
        }
        Ok(())
    }

    fn step_digests(
        &self,
        device: u32,
        algorithm: DigestAlgorithm,
    ) -> Result<Box<dyn StepDigests>, VramError> {
        device_at(&self.devices, device)?;
        Ok(Box::new(MockSteps::new(algorithm)))
    }

    fn digest(
        &self,
        buffers: &[(BufferId, usize)],
        algorithm: DigestAlgorithm,
        _share: GpuShare,
        _order: DigestOrder<'_>,
    ) -> Result<Vec<ShardDigest>, VramError> {
        let buffers = buffers
            .iter()
            .map(|(id, len)| Ok((self.buffer(*id)?, *len)))
            .collect::<Result<Vec<_>, VramError>>()?;
        one_device(buffers.iter().map(|(b, _)| b.device))?;
        buffers
            .iter()
            .map(|(b, len)| {
                self.copy_fault(b.device, "device-to-host copy", |f| &mut f.fail_reads)?;
                b.data.with(|data| {
                    data.get(..*len)
                        .map(|bytes| vram_seal::digest(bytes, algorithm))
                        .ok_or(VramError::CudaOperationFailed {
                            device: b.device,
                            operation: "device-to-host copy",
                            cuda_error: "CUDA_ERROR_INVALID_VALUE: read past the allocation".into(),
                            code: Some(CUDA_ERROR_INVALID_VALUE),
                        })
                })?
            })
            .collect()
    }

    /// The mock has no streams: the engine is the host, and the digests are computed now.
    fn digest_before(
        &self,
        buffers: &[(BufferId, usize)],
        algorithm: DigestAlgorithm,
        _engine: EngineStream<'_>,
    ) -> Result<Box<dyn PendingDigest>, VramError> {
        let digests = self.digest(buffers, algorithm, GpuShare::Full, DigestOrder::Now)?;
        Ok(Box::new(Ready(digests)))
    }

    fn read(&self, buffer: BufferId, offset: usize, dst: &mut [u8]) -> Result<(), VramError> {
        let b = self.buffer(buffer)?;
        self.copy_fault(b.device, "device-to-host copy", |f| &mut f.fail_reads)?;
        b.data.with(|data| {
            let src = offset
                .checked_add(dst.len())
                .and_then(|end| data.get(offset..end))
                .ok_or_else(|| VramError::CudaOperationFailed {
                    device: b.device,
                    operation: "device-to-host copy",
                    cuda_error: "CUDA_ERROR_INVALID_VALUE: range outside the buffer (mock)".into(),
                    code: None,
                })?;
            dst.copy_from_slice(src);
            Ok(())
        })?
    }

    fn lend(&self, buffer: BufferId) -> Result<Box<dyn LentMemory>, VramError> {
        Ok(Box::new(LentMock(self.buffer(buffer)?)))
    }

    fn allocation_facts(&self, buffer: BufferId, len: usize) -> Result<AllocationFacts, VramError> {
        let b = self.buffer(buffer)?;
        if self.any_call_fails() {
            return Err(Self::call_fault(b.device, "cuPointerGetAttributes"));
        }
        let mut facts = b.facts;
        facts.covers_shard = facts.covers_shard && b.data.len() >= len;
        Ok(facts)
    }

    #[cfg(feature = "test-utils")]
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn free(&self, buffer: BufferId) -> Result<(), VramError> {
        let b = self.buffers.remove(buffer).ok_or(VramError::Unreachable(
            "freeing a buffer id this backend does not hold",
        ))?;
        if let Ok(d) = self.device(b.device) {
            d.used.fetch_sub(b.taken, Ordering::AcqRel);
        }
        if self.take_fault(|f| &mut f.fail_frees) {
            return Err(VramError::CudaDeallocationFailed {
                device: b.device,
                cuda_error: "CUDA_ERROR_UNKNOWN: injected fault (mock)".into(),
                code: Some(MOCK_FAULT_CODE),
            });
        }
        Ok(())
    }
}
