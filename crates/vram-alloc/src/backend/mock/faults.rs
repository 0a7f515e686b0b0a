//! The mock's faults: what the `test-utils` feature lets a test inject (the next allocation,
//! copy, read or free failing; any call failing after a count; an upload garbled; an
//! allocation reporting other memory; a byte flipped), and how each call consumes them. A
//! default build has the counters but no way to set them.

#[cfg(feature = "test-utils")]
use super::super::BufferId;
use super::MockBackend;
use crate::sync::lock;
use vram_types::{AllocationFacts, VramError};

/// `CUresult` codes the mock reports: `CUDA_ERROR_UNKNOWN` for an injected fault.
pub(super) const MOCK_FAULT_CODE: u32 = 999;

#[derive(Debug, Default)]
pub(super) struct Faults {
    pub(super) fail_allocations: u32,
    pub(super) fail_uploads: u32,
    /// Uploads whose bytes arrive with their first byte inverted (a broken copy path).
    pub(super) garble_uploads: u32,
    pub(super) fail_reads: u32,
    pub(super) fail_frees: u32,
    /// Fallible backend calls to let through before one fails, whatever it is.
    pub(super) fail_call_after: Option<u64>,
    pub(super) next_allocation_facts: Option<AllocationFacts>,
}

impl MockBackend {
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

    /// Counts one fallible call against [`Self::fail_call_after`]; true when this one fails.
    pub(super) fn any_call_fails(&self) -> bool {
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
    pub(super) fn call_fault(device: u32, operation: &'static str) -> VramError {
        VramError::CudaOperationFailed {
            device,
            operation,
            cuda_error: "CUDA_ERROR_UNKNOWN: injected fault (mock)".into(),
            code: Some(MOCK_FAULT_CODE),
        }
    }

    pub(super) fn take_fault(&self, pick: impl FnOnce(&mut Faults) -> &mut u32) -> bool {
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

    pub(super) fn copy_fault(
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
