//! The CUDA backend: shards in real device memory (`cuMemAlloc`), uploaded and read back through
//! pinned staging buffers that live only for one transfer, digested on the CPU from the bytes
//! read back out of VRAM.

use std::sync::Arc;

use vram_cuda_sys::memory::{DeviceBuffer, Staging};
use vram_cuda_sys::{Device, Driver};
use vram_seal::ShardDigest;
use vram_seal::digest::DigestHasher;
use vram_types::{AllocationFacts, BackendKind, DeviceFacts, DigestAlgorithm, VramError};

use super::{
    Backend, BufferId, BufferTable, CUDA_ALLOCATION_GRANULARITY, MemoryInfo, Sealed, device_at,
};

/// Every CUDA device of the machine.
#[derive(Debug)]
pub struct CudaBackend {
    devices: Vec<Arc<Device>>,
    buffers: BufferTable<DeviceBuffer>,
}

impl CudaBackend {
    /// The facts of every GPU, without building a manager (for `vramctl doctor`).
    ///
    /// # Errors
    /// As [`CudaBackend::open`].
    pub fn probe() -> Result<Vec<DeviceFacts>, VramError> {
        let backend = Self::open()?;
        (0..backend.device_count())
            .map(|d| backend.device_facts(d))
            .collect()
    }

    /// Opens every device the driver reports.
    ///
    /// # Errors
    /// [`VramError::NoGpu`] without a driver or GPU; [`VramError::DriverTooOld`];
    /// CUDA errors while creating contexts.
    pub fn open() -> Result<Self, VramError> {
        let count = Driver::get()?.device_count();
        let devices = (0..count)
            .map(Device::open)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            devices,
            buffers: BufferTable::default(),
        })
    }

    fn device(&self, device: u32) -> Result<&Arc<Device>, VramError> {
        device_at(&self.devices, device)
    }

    fn buffer(&self, id: BufferId) -> Result<Arc<DeviceBuffer>, VramError> {
        self.buffers.get(id)
    }
}

impl Sealed for CudaBackend {}

impl Backend for CudaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn device_count(&self) -> u32 {
        u32::try_from(self.devices.len()).unwrap_or(u32::MAX)
    }

    fn device_facts(&self, device: u32) -> Result<DeviceFacts, VramError> {
        self.device(device)?.facts()
    }

    fn memory_info(&self, device: u32) -> Result<MemoryInfo, VramError> {
        let (free, total) = self.device(device)?.memory_info()?;
        Ok(MemoryInfo { free, total })
    }

    fn granularity(&self) -> usize {
        CUDA_ALLOCATION_GRANULARITY
    }

    fn allocate(&self, device: u32, bytes: usize) -> Result<BufferId, VramError> {
        let buffer = DeviceBuffer::alloc(self.device(device)?, bytes)?;
        Ok(self.buffers.insert(buffer))
    }

    fn upload(&self, buffer: BufferId, bytes: &[u8]) -> Result<(), VramError> {
        let b = self.buffer(buffer)?;
        let mut staging = Staging::new(b.device(), bytes.len())?;
        b.upload(bytes, &mut staging)
        // `staging` (pinned host memory) is freed here: it never outlives the transfer.
    }

    fn upload_unstaged(&self, buffer: BufferId, bytes: &[u8]) -> Result<(), VramError> {
        self.buffer(buffer)?.write(0, bytes)
    }

    fn read_unstaged(&self, buffer: BufferId, dst: &mut [u8]) -> Result<(), VramError> {
        self.buffer(buffer)?.read(0, dst)
    }

    fn digest(
        &self,
        buffer: BufferId,
        len: usize,
        algorithm: DigestAlgorithm,
    ) -> Result<ShardDigest, VramError> {
        let b = self.buffer(buffer)?;
        let mut staging = Staging::new(b.device(), len)?;
        // Each chunk read back is hashed (tree leaves in parallel) while the next one copies.
        let mut hasher = DigestHasher::new(algorithm);
        b.read_back(len, &mut staging, |chunk| {
            hasher.update_parallel(chunk);
            Ok(())
        })?;
        Ok(hasher.finalize())
    }

    fn allocation_facts(&self, buffer: BufferId, len: usize) -> Result<AllocationFacts, VramError> {
        self.buffer(buffer)?.facts(len)
    }

    #[cfg(feature = "test-utils")]
    fn flip_byte(&self, buffer: BufferId, offset: usize) -> Result<(), VramError> {
        let b = self.buffer(buffer)?;
        let mut byte = [0u8; 1];
        b.read(offset, &mut byte)?;
        b.write(offset, &byte.map(|v| !v))
    }

    fn free(&self, buffer: BufferId) -> Result<(), VramError> {
        let b = self
            .buffers
            .remove(buffer)
            .ok_or(VramError::CudaDeallocationFailed {
                device: 0,
                cuda_error: "unknown allocation".into(),
            })?;
        match Arc::try_unwrap(b) {
            Ok(owned) => owned.free(),
            // A transfer still holds it (cannot happen: the allocation is only freed when its
            // last shard handle is gone); dropping the last reference frees it.
            Err(_) => Ok(()),
        }
    }
}
