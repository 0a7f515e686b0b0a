//! Memory a simulated inference engine holds (tensors to seal in place): not the manager's,
//! not counted against a device's capacity, never freed by a manager; and a mock buffer lent
//! to an engine.

use std::sync::Arc;

use vram_types::{AllocationFacts, MemoryType, VramError};

use super::super::{BufferId, ForeignRange, LentMemory};
use super::host_tensor::{HostTensor, Storage};
use super::{MockBackend, MockBuffer};
use crate::sync::read;

impl MockBackend {
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

    pub(super) fn engine_buffer(&self, range: &ForeignRange) -> Result<Arc<MockBuffer>, VramError> {
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
}

/// A mock buffer lent to an engine: simulated device memory, host memory that never moves while
/// the buffer lives (its vector is never resized).
pub(super) struct LentMock(pub(super) Arc<MockBuffer>);

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
