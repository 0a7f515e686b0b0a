//! What a digest can read: the manager's own buffers and ranges an engine holds, by device,
//! length and address.

use crate::error::CudaError;
use crate::memory::DeviceBuffer;
use crate::resident::Resident;

/// Memory the kernels read: a device, a length and the address of its first byte.
pub(super) trait Span {
    fn ordinal(&self) -> u32;
    fn span_len(&self) -> usize;
    fn address(&self) -> Result<u64, CudaError>;
}

impl Span for DeviceBuffer {
    fn ordinal(&self) -> u32 {
        self.device().ordinal()
    }

    fn span_len(&self) -> usize {
        self.len()
    }

    fn address(&self) -> Result<u64, CudaError> {
        self.device_address()
    }
}

impl Span for Resident {
    fn ordinal(&self) -> u32 {
        self.device().ordinal()
    }

    fn span_len(&self) -> usize {
        self.len()
    }

    fn address(&self) -> Result<u64, CudaError> {
        self.lending_address()
    }
}
