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

/// `CUresult` codes the mock reports: `CUDA_ERROR_UNKNOWN` for an injected fault,
/// `CUDA_ERROR_INVALID_VALUE` for a copy outside an allocation.
const MOCK_FAULT_CODE: u32 = 999;
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

/// Host memory that an engine outside the mock holds and the mock reads where it lies (the
/// Python package's NumPy arrays standing in for tensors): the engine keeps writing it, the
/// mock never does, and every read sees the engine's bytes of that moment.
pub trait HostTensor: Send + Sync {
    /// Its length in bytes when it was handed over (a tensor that later shows another length
    /// reads as changed).
    fn len(&self) -> usize;

    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shows its bytes of this moment to `read`.
    ///
    /// # Errors
    /// [`VramError::SourceReadFailed`] when its owner can no longer show them.
    fn read(&self, read: &mut dyn FnMut(&[u8])) -> Result<(), VramError>;
}

/// A mock buffer's bytes: the mock's own, or an engine's host tensor read where it lies.
enum Storage {
    Owned(RwLock<Vec<u8>>),
    Engine(Arc<dyn HostTensor>),
}

impl std::fmt::Debug for Storage {
    /// The length only, never the bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({} bytes)", self.len())
    }
}

impl Storage {
    fn owned(bytes: Vec<u8>) -> Self {
        Self::Owned(RwLock::new(bytes))
    }

    fn len(&self) -> usize {
        match self {
            Self::Owned(data) => read(data).len(),
            Self::Engine(tensor) => tensor.len(),
        }
    }

    /// Shows the bytes of this moment to `f`.
    fn with<T>(&self, f: impl FnOnce(&[u8]) -> T) -> Result<T, VramError> {
        match self {
            Self::Owned(data) => Ok(f(&read(data))),
            Self::Engine(tensor) => {
                let mut f = Some(f);
                let mut out = None;
                tensor.read(&mut |bytes| out = f.take().map(|f| f(bytes)))?;
                out.ok_or(VramError::Unreachable("a host tensor showed no bytes"))
            }
        }
    }

    /// The mock's own bytes, to write; an engine's host tensor is written by its engine only.
    fn owned_mut(&self) -> Result<std::sync::RwLockWriteGuard<'_, Vec<u8>>, VramError> {
        match self {
            Self::Owned(data) => Ok(write(data)),
            Self::Engine(_) => Err(VramError::invalid_input(
                "engine memory",
                "a host tensor is written by the engine that holds it, not through the mock",
            )),
        }
    }
}

#[derive(Debug, Default)]
struct Faults {
    fail_allocations: u32,
    fail_uploads: u32,
    /// Uploads whose bytes arrive with their first byte inverted (a broken copy path).
    garble_uploads: u32,
    fail_reads: u32,
    fail_frees: u32,
    /// Fallible backend calls to let through before one fails, whatever it is.
    fail_call_after: Option<u64>,
    next_allocation_facts: Option<AllocationFacts>,
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

    #[cfg(feature = "test-utils")]
    /// The next `n` allocations fail with a CUDA allocation error.
    pub fn fail_next_allocations(&self, n: u32) {
        lock(&self.faults).fail_allocations = n;
    }

    #[cfg(feature = "test-utils")]
    /// The next `n` host-to-device copies (uploads) fail.
    pub fn fail_next_uploads(&self, n: u32) {
        lock(&self.faults).fail_uploads = n;
    }

    #[cfg(feature = "test-utils")]
    /// The next `n` uploads complete, but the first byte arrives inverted, after the host bytes
    /// were shown to the cross-check: a copy path that delivers other bytes than it was given.
    pub fn garble_next_uploads(&self, n: u32) {
        lock(&self.faults).garble_uploads = n;
    }

    #[cfg(feature = "test-utils")]
    /// The next `n` reads of resident bytes (the digest's read-back) fail.
    pub fn fail_next_reads(&self, n: u32) {
        lock(&self.faults).fail_reads = n;
    }

    #[cfg(feature = "test-utils")]
    /// The next `n` frees fail (the memory is still released, as a failed `cuMemFree` leaves
    /// nothing the process can use).
    pub fn fail_next_frees(&self, n: u32) {
        lock(&self.faults).fail_frees = n;
    }

    #[cfg(feature = "test-utils")]
    /// After `calls` more fallible backend calls succeed, the next one fails, whatever it is:
    /// device facts, memory info, allocation, upload, digest read-back, allocation facts or
    /// free (a fault at any point of any operation; `None` cancels).
    pub fn fail_call_after(&self, calls: Option<u64>) {
        lock(&self.faults).fail_call_after = calls;
    }

    #[cfg(feature = "test-utils")]
    /// Whether the fault set with [`Self::fail_call_after`] is still waiting to fire.
    #[must_use]
    pub fn call_fault_pending(&self) -> bool {
        lock(&self.faults).fail_call_after.is_some()
    }

    #[cfg(feature = "test-utils")]
    /// The next allocation reports these facts (simulates managed, pinned or host memory).
    pub fn next_allocation_reports(&self, facts: AllocationFacts) {
        lock(&self.faults).next_allocation_facts = Some(facts);
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

    #[cfg(feature = "test-utils")]
    /// XORs one byte of a buffer with `mask`.
    pub(crate) fn flip(&self, buffer: BufferId, offset: usize, mask: u8) -> Result<(), VramError> {
        let b = self.buffer(buffer)?;
        let mut data = b.data.owned_mut()?;
        let byte = data.get_mut(offset).ok_or_else(|| {
            VramError::invalid_input("offset", format!("{offset} is outside the buffer"))
        })?;
        *byte ^= mask;
        Ok(())
    }

    /// Simulated engine memory on `device` holding `bytes` (the tensors an engine allocated
    /// itself), named for [`VramManager::seal_in_place`](crate::VramManager::seal_in_place).
    /// It is the engine's: not counted against the device's capacity, never freed by a manager.
    ///
    /// # Errors
    /// [`VramError::InvalidDevice`]; [`VramError::InvalidInput`] for no bytes;
    /// [`VramError::HostMemoryExhausted`].
    pub fn engine_memory(&self, device: u32, bytes: &[u8]) -> Result<ForeignRange, VramError> {
        self.device(device)?;
        if bytes.is_empty() {
            return Err(VramError::invalid_input("engine memory", "0 bytes"));
        }
        let mut data = Vec::new();
        data.try_reserve_exact(bytes.len())
            .map_err(|_| VramError::HostMemoryExhausted {
                needed: bytes.len(),
            })?;
        data.extend_from_slice(bytes);
        let id = self.engine.insert(MockBuffer {
            device,
            taken: 0,
            facts: AllocationFacts::new(MemoryType::Simulated, false, device, true),
            data: Storage::owned(data),
        });
        Ok(ForeignRange::mock(device, id.raw(), bytes.len()))
    }

    /// Simulated engine memory on `device` that is `tensor` itself: the mock reads the engine's
    /// host bytes where they lie at every digest, so a change the engine makes is seen, as a
    /// change in VRAM is on a GPU (the Python package seals NumPy arrays this way).
    ///
    /// # Errors
    /// [`VramError::InvalidDevice`]; [`VramError::InvalidInput`] for an empty tensor.
    pub fn engine_host_tensor(
        &self,
        device: u32,
        tensor: Arc<dyn HostTensor>,
    ) -> Result<ForeignRange, VramError> {
        self.device(device)?;
        let len = tensor.len();
        if len == 0 {
            return Err(VramError::invalid_input("engine memory", "0 bytes"));
        }
        let id = self.engine.insert(MockBuffer {
            device,
            taken: 0,
            facts: AllocationFacts::new(MemoryType::Simulated, false, device, true),
            data: Storage::Engine(tensor),
        });
        Ok(ForeignRange::mock(device, id.raw(), len))
    }

    /// The engine lets go of memory it handed out: the mock forgets the range (a shard still
    /// sealed over it keeps its bytes until it is released, as a GPU keeps an allocation that
    /// is still referenced).
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] for memory this mock did not hand out (or already forgot).
    pub fn forget_engine_memory(&self, range: &ForeignRange) -> Result<(), VramError> {
        self.engine_buffer(range)?;
        range
            .mock_id()
            .and_then(|id| self.engine.remove(BufferId::from_raw(id)))
            .map(drop)
            .ok_or(VramError::Unreachable(
                "engine memory vanished while it was forgotten",
            ))
    }

    /// Writes `bytes` at `offset` of simulated engine memory, as the engine itself may.
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] for memory this mock did not hand out or a range outside it.
    pub fn write_engine_memory(
        &self,
        range: &ForeignRange,
        offset: usize,
        bytes: &[u8],
    ) -> Result<(), VramError> {
        let b = self.engine_buffer(range)?;
        let mut data = b.data.owned_mut()?;
        let dst = offset
            .checked_add(bytes.len())
            .and_then(|end| data.get_mut(offset..end))
            .ok_or_else(|| {
                VramError::invalid_input("offset", format!("{offset} + {} is outside", bytes.len()))
            })?;
        dst.copy_from_slice(bytes);
        Ok(())
    }

    /// The engine's bytes of a range, as the engine sees them (they stay the engine's after a
    /// manager that sealed them released them).
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] for memory this mock did not hand out;
    /// [`VramError::SourceReadFailed`] for a host tensor its owner can no longer show.
    pub fn read_engine_memory(&self, range: &ForeignRange) -> Result<Vec<u8>, VramError> {
        self.engine_buffer(range)?.data.with(<[u8]>::to_vec)
    }

    fn engine_buffer(&self, range: &ForeignRange) -> Result<Arc<MockBuffer>, VramError> {
        range
            .mock_id()
            .and_then(|id| self.engine.get(BufferId::from_raw(id)).ok())
            .filter(|b| b.device == range.device_ordinal() && b.data.len() == range.len())
            .ok_or_else(|| {
                VramError::invalid_input(
                    "range to seal in place",
                    "not engine memory of this mock backend (device memory of a GPU, or another mock's)",
                )
            })
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

    /// Counts one fallible call against [`Self::fail_call_after`]; true when this one fails.
    fn any_call_fails(&self) -> bool {
        let mut faults = lock(&self.faults);
        match faults.fail_call_after {
            Some(0) => {
                faults.fail_call_after = None;
                true
            }
            Some(n) => {
                faults.fail_call_after = Some(n.saturating_sub(1));
                false
            }
            None => false,
        }
    }

    /// An injected fault of a call that is not a copy.
    fn call_fault(device: u32, operation: &'static str) -> VramError {
        VramError::CudaOperationFailed {
            device,
            operation,
            cuda_error: "CUDA_ERROR_UNKNOWN: injected fault (mock)".into(),
            code: Some(MOCK_FAULT_CODE),
        }
    }

    fn take_fault(&self, pick: impl FnOnce(&mut Faults) -> &mut u32) -> bool {
        if self.any_call_fails() {
            return true;
        }
        let mut faults = lock(&self.faults);
        let n = pick(&mut faults);
        if *n > 0 {
            *n = n.saturating_sub(1);
            true
        } else {
            false
        }
    }

    fn copy_fault(
        &self,
        device: u32,
        operation: &'static str,
        pick: impl FnOnce(&mut Faults) -> &mut u32,
    ) -> Result<(), VramError> {
        if self.take_fault(pick) {
            return Err(VramError::CudaOperationFailed {
                device,
                operation,
                cuda_error: "CUDA_ERROR_UNKNOWN: injected fault (mock)".into(),
                code: Some(MOCK_FAULT_CODE),
            });
        }
        Ok(())
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

/// A mock buffer lent to an engine: simulated device memory, host memory that never moves while
/// the buffer lives (its vector is never resized).
struct LentMock(Arc<MockBuffer>);

impl LentMemory for LentMock {
    /// The mock's own bytes' address; 0 for an engine's host tensor, which the mock only reads
    /// through its owner (no copy is made just to show an address).
    fn address(&self) -> u64 {
        match &self.0.data {
            Storage::Owned(data) => u64::try_from(read(data).as_ptr().addr()).unwrap_or(u64::MAX),
            Storage::Engine(_) => 0,
        }
    }

    fn read_host(&self, read_bytes: &mut dyn FnMut(&[u8])) -> bool {
        self.0.data.with(read_bytes).is_ok()
    }

    #[cfg(feature = "test-utils")]
    fn device_buffer(&self) -> Option<&vram_cuda_sys::memory::DeviceBuffer> {
        None
    }
}
