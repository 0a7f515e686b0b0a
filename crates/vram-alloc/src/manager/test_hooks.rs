//! The one test hook for corrupting resident bytes (feature `test-utils` only: a default build
//! has no way to write into a resident shard).

use vram_types::{SealedShard, ShardAllocation, VramError};

use super::VramManager;
use super::allocation_check::owned;
use crate::backend::{CudaBackend, MockBackend};

impl VramManager {
    /// Inverts one resident byte of `shard` behind the manager's back, on any backend: the
    /// test for "a corrupted weight never serves silently".
    ///
    /// # Errors
    /// As [`Self::flip_bits_for_tests`].
    pub fn corrupt_byte_for_tests(
        &self,
        shard: &SealedShard,
        offset: usize,
    ) -> Result<(), VramError> {
        self.flip_bits_for_tests(shard, offset, 0xff)
    }

    /// XORs the resident byte at `offset` of `shard` with `mask` behind the manager's back, on
    /// any backend (a single-bit flip: `mask = 1 << bit`); the same call again undoes it.
    ///
    /// # Errors
    /// [`VramError::NotSealed`] for a shard of another manager; [`VramError::InvalidInput`] for
    /// an offset outside the shard; CUDA errors.
    pub fn flip_bits_for_tests(
        &self,
        shard: &SealedShard,
        offset: usize,
        mask: u8,
    ) -> Result<(), VramError> {
        let resident = owned(&self.shared, shard)?;
        if offset >= resident.len() {
            return Err(VramError::invalid_input(
                "offset",
                format!("{offset} is outside the {}-byte shard", resident.len()),
            ));
        }
        let backend = self.shared.backend().as_any();
        if let Some(mock) = backend.downcast_ref::<MockBackend>() {
            mock.flip(resident.buffer(), offset, mask)
        } else if let Some(cuda) = backend.downcast_ref::<CudaBackend>() {
            cuda.flip_byte(resident.buffer(), offset, mask)
        } else {
            Err(VramError::Unreachable("a backend of this crate"))
        }
    }
}
