//! `cuPointerGetAttributes`: where an address really lives.
//!
//! One call reads the memory type, the managed flag, the owning device and the allocation range
//! (measured on an H200: managed memory reports `DEVICE`, so `IS_MANAGED` must be
//! read too; a plain `malloc` pointer gets default values, not an error).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::{self, CUdeviceptr, CUpointer_attribute};
use vram_types::{AllocationFacts, MemoryType};

use crate::device::Device;
use crate::error::{CudaError, CudaStatus};

#[cfg(feature = "test-utils")]
/// Facts of host memory that CUDA does not know (plain `malloc` or a stack array), as the pointer
/// check sees it.
///
/// # Errors
/// [`CudaError::Driver`].
pub fn host_slice_facts(device: &Arc<Device>, bytes: &[u8]) -> Result<AllocationFacts, CudaError> {
    query(device, bytes.as_ptr() as CUdeviceptr, bytes.len())
}

pub(crate) fn query(
    device: &Arc<Device>,
    ptr: CUdeviceptr,
    len: usize,
) -> Result<AllocationFacts, CudaError> {
    use CUpointer_attribute as A;
    device.bind()?;
    let mut attributes = [
        A::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
        A::CU_POINTER_ATTRIBUTE_IS_MANAGED,
        A::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
        A::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
        A::CU_POINTER_ATTRIBUTE_RANGE_SIZE,
    ];
    // Every slot is 8 bytes and zeroed: the driver writes 4-byte values (enums, int, bool as
    // unsigned int) or 8-byte values (addresses, sizes) into the low bytes (little-endian x86-64).
    let mut values = [0u64; 5];
    let mut data: [*mut c_void; 5] = [std::ptr::null_mut(); 5];
    for (slot, value) in data.iter_mut().zip(values.iter_mut()) {
        *slot = (value as *mut u64).cast();
    }
    // SAFETY: `attributes` and `data` have 5 entries each; each `data` entry points to an
    // 8-byte zeroed slot, large enough for every attribute requested; the context is current.
    let status =
        unsafe { sys::cuPointerGetAttributes(5, attributes.as_mut_ptr(), data.as_mut_ptr(), ptr) };
    status
        .result()
        .map_err(|e| CudaStatus::from(e).during(device.ordinal(), "cuPointerGetAttributes"))?;
    let [memory_type, is_managed, ordinal, start, size] = values;
    let low = |v: u64| u32::try_from(v & 0xffff_ffff).unwrap_or(0);
    let memory_type = memory_type_of(low(memory_type));
    let device_ordinal =
        u32::try_from(i32::from_ne_bytes(low(ordinal).to_ne_bytes())).unwrap_or(u32::MAX);
    let len = u64::try_from(len).unwrap_or(u64::MAX);
    let covers_shard = size > 0
        && start <= ptr
        && ptr.checked_add(len).is_some_and(|end| {
            start
                .checked_add(size)
                .is_some_and(|range_end| end <= range_end)
        });
    Ok(AllocationFacts::new(
        memory_type,
        low(is_managed) != 0,
        device_ordinal,
        covers_shard,
    ))
}

/// What a `CU_POINTER_ATTRIBUTE_MEMORY_TYPE` value means for the policy: device memory is
/// `Device`; host memory and unified memory (which may live in host RAM) are `Host`; anything
/// else is `Unregistered`: 0, which the driver leaves for memory it does not know (a plain
/// `malloc`), and arrays, which are never a pointer's memory type.
fn memory_type_of(value: u32) -> MemoryType {
    use cudarc::driver::sys::CUmemorytype as T;
    #[allow(clippy::as_conversions, reason = "CUmemorytype is a repr(u32) enum")]
    let is = |t: T| value == t as u32;
    if is(T::CU_MEMORYTYPE_DEVICE) {
        MemoryType::Device
    } else if is(T::CU_MEMORYTYPE_HOST) || is(T::CU_MEMORYTYPE_UNIFIED) {
        MemoryType::Host
    } else {
        MemoryType::Unregistered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_types_follow_the_driver_constants() {
        assert_eq!(memory_type_of(2), MemoryType::Device);
        assert_eq!(memory_type_of(1), MemoryType::Host);
        assert_eq!(
            memory_type_of(4),
            MemoryType::Host,
            "unified may live in host RAM"
        );
        assert_eq!(
            memory_type_of(3),
            MemoryType::Unregistered,
            "an array is no pointer's"
        );
        assert_eq!(
            memory_type_of(0),
            MemoryType::Unregistered,
            "unknown to CUDA"
        );
    }
}
