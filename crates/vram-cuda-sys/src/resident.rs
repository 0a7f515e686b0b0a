//! What a digest can read in place: this crate's own allocations ([`DeviceBuffer`]) and device
//! memory an inference engine owns and lends for sealing in place ([`ForeignRange`]). Both are
//! [`Resident`] memory: a device, an address and a length.

use std::sync::Arc;

use cudarc::driver::result;
use cudarc::driver::sys::CUdeviceptr;
use vram_types::AllocationFacts;

use crate::device::Device;
use crate::error::{CudaError, CudaStatus};
use crate::memory::DeviceBuffer;
use crate::pointer;
use crate::tree_digest::KERNEL_ALIGNMENT;

/// Device memory an engine owns (its weight tensors), named for sealing in place: never copied
/// and never freed by this crate. A token: it holds no reference to the memory, so the caller's
/// promise (see [`ForeignRange::device`]) is what keeps it valid.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ForeignRange {
    device: u32,
    len: usize,
    place: Place,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// A device address of the device's primary context.
    Device(CUdeviceptr),
    /// Engine memory of the mock backend, by the mock's id: no address at all.
    Mock(u64),
}

impl std::fmt::Debug for ForeignRange {
    /// Device and length: never the address.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForeignRange")
            .field("device", &self.device)
            .field("len", &self.len)
            .field("mock", &matches!(self.place, Place::Mock(_)))
            .finish()
    }
}

impl ForeignRange {
    /// `len` bytes of device memory at `address` on device `device` (a tensor's
    /// `data_ptr()`, a `CUdeviceptr`), to be sealed in place. The manager checks that it is
    /// device memory of that device, not managed, not host memory, and inside one allocation,
    /// before it reads a byte.
    ///
    /// # Safety
    /// 1. `address..address + len` stays allocated, and is neither freed nor handed to another
    ///    owner, until every shard sealed from it has been released by the manager (dropped).
    /// 2. It is memory of device `device`'s primary context (the context the CUDA runtime and
    ///    PyTorch use on that device).
    #[must_use]
    pub unsafe fn device(device: u32, address: u64, len: usize) -> Self {
        Self {
            device,
            len,
            place: Place::Device(address),
        }
    }

    /// A tensor's device memory handed over by a language binding whose callers cannot write
    /// `unsafe` (the Python package): the binding keeps the tensor's owner referenced for as
    /// long as any shard sealed from the range lives, and its documentation asks its callers
    /// not to free the tensor's storage behind that reference.
    ///
    /// Why this is not `unsafe` when [`Self::device`] is: that constructor states the promise
    /// in Rust's type system for Rust callers; a binding keeps it with a reference it holds.
    /// Either way the manager checks the range before it reads a byte and never dereferences
    /// device memory on the host, so a range freed behind the binding's back ends in a CUDA
    /// error or a digest mismatch, not in undefined behaviour of this process.
    #[must_use]
    pub fn held_by_binding(device: u32, address: u64, len: usize) -> Self {
        Self {
            device,
            len,
            place: Place::Device(address),
        }
    }

    /// Engine memory of the mock backend, by the mock's id (the mock hands these out; no
    /// address is involved, so nothing unsafe is).
    #[must_use]
    pub fn mock(device: u32, id: u64, len: usize) -> Self {
        Self {
            device,
            len,
            place: Place::Mock(id),
        }
    }

    /// The device it is on.
    #[must_use]
    pub fn device_ordinal(&self) -> u32 {
        self.device
    }

    /// Its length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mock backend's id, for a range of mock engine memory.
    #[must_use]
    pub fn mock_id(&self) -> Option<u64> {
        match self.place {
            Place::Mock(id) => Some(id),
            Place::Device(_) => None,
        }
    }

    #[cfg(feature = "test-utils")]
    /// A device buffer given up for good: it is never freed, so it stays valid for any seal
    /// (tests and benchmarks stand in for an engine's tensors this way, without `unsafe`).
    #[must_use]
    pub fn leak(buffer: DeviceBuffer) -> Self {
        let buffer: &'static DeviceBuffer = Box::leak(Box::new(buffer));
        Self {
            device: buffer.device().ordinal(),
            len: buffer.len(),
            place: Place::Device(buffer.device_address().unwrap_or(0)),
        }
    }

    #[cfg(feature = "test-utils")]
    /// Managed memory given up for good (tests: the policy must refuse it).
    #[must_use]
    pub fn leak_managed(buffer: crate::memory::ManagedBuffer) -> Self {
        let buffer: &'static crate::memory::ManagedBuffer = Box::leak(Box::new(buffer));
        Self {
            device: buffer.device().ordinal(),
            len: buffer.len(),
            place: Place::Device(buffer.address()),
        }
    }

    #[cfg(feature = "test-utils")]
    /// Pinned host memory given up for good (tests: the policy must refuse it).
    #[must_use]
    pub fn leak_pinned(buffer: crate::memory::PinnedBuffer) -> Self {
        let buffer: &'static crate::memory::PinnedBuffer = Box::leak(Box::new(buffer));
        Self {
            device: buffer.device().ordinal(),
            len: buffer.as_slice().len(),
            place: Place::Device(
                u64::try_from(buffer.as_slice().as_ptr().addr()).unwrap_or(u64::MAX),
            ),
        }
    }

    #[cfg(feature = "test-utils")]
    /// The same range `extra` bytes longer (tests: a range past its allocation's end must be
    /// refused before a byte is read).
    #[must_use]
    pub fn grown_for_tests(self, extra: usize) -> Self {
        Self {
            len: self.len.saturating_add(extra),
            ..self
        }
    }

    #[cfg(feature = "test-utils")]
    /// The same range starting `bytes` later, as long (tests: a tensor view that starts off a
    /// 16-byte boundary must be refused before a kernel reads it).
    #[must_use]
    pub fn shifted_for_tests(self, bytes: u64) -> Self {
        Self {
            place: match self.place {
                Place::Device(address) => Place::Device(address.saturating_add(bytes)),
                mock @ Place::Mock(_) => mock,
            },
            ..self
        }
    }
}

/// Memory a digest reads in place: one of this crate's allocations, or an engine's range.
#[derive(Clone)]
pub enum Resident {
    /// A buffer this crate allocated.
    Owned(Arc<DeviceBuffer>),
    /// An engine's memory, on the device it names.
    Foreign {
        /// The device.
        device: Arc<Device>,
        /// The range.
        range: ForeignRange,
    },
}

impl std::fmt::Debug for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Owned(b) => b.fmt(f),
            Self::Foreign { range, .. } => range.fmt(f),
        }
    }
}

impl Resident {
    /// An engine's range on `device`.
    ///
    /// # Errors
    /// [`CudaError::WrongDevice`] for a range of another device; [`CudaError::InvalidArgument`]
    /// for mock engine memory or an empty range.
    pub fn foreign(device: &Arc<Device>, range: ForeignRange) -> Result<Self, CudaError> {
        if range.device != device.ordinal() {
            return Err(CudaError::WrongDevice {
                device: device.ordinal(),
                found: range.device,
                operation: "sealing in place",
            });
        }
        if range.mock_id().is_some() || range.is_empty() {
            return Err(CudaError::InvalidArgument {
                what: "range to seal in place",
                reason: "mock engine memory or 0 bytes; give a tensor's device memory".into(),
            });
        }
        if let Place::Device(address) = range.place
            && address % KERNEL_ALIGNMENT != 0
        {
            return Err(CudaError::InvalidArgument {
                what: "range to seal in place",
                reason: format!(
                    "starts off a {KERNEL_ALIGNMENT}-byte boundary (a view into a tensor?); the digest kernels read aligned words: seal the whole tensor"
                ),
            });
        }
        Ok(Self::Foreign {
            device: Arc::clone(device),
            range,
        })
    }

    /// The device it is on.
    #[must_use]
    pub fn device(&self) -> &Arc<Device> {
        match self {
            Self::Owned(b) => b.device(),
            Self::Foreign { device, .. } => device,
        }
    }

    /// Its length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Self::Owned(b) => b.len(),
            Self::Foreign { range, .. } => range.len,
        }
    }

    /// Whether it is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer this crate allocated, if it is one.
    #[must_use]
    pub fn owned(&self) -> Option<&DeviceBuffer> {
        match self {
            Self::Owned(b) => Some(b),
            Self::Foreign { .. } => None,
        }
    }

    /// The address of the first byte, for kernels of this crate and for lending.
    ///
    /// # Errors
    /// [`CudaError::OutOfRange`] for a freed buffer or a range without an address.
    pub fn lending_address(&self) -> Result<u64, CudaError> {
        match self {
            Self::Owned(b) => b.lending_address(),
            Self::Foreign { range, device } => match range.place {
                Place::Device(address) => Ok(address),
                Place::Mock(_) => Err(CudaError::OutOfRange {
                    device: device.ordinal(),
                    operation: "lending",
                }),
            },
        }
    }

    /// The address of `offset..offset + n`, checked to lie inside.
    pub(crate) fn range_address(
        &self,
        offset: usize,
        n: usize,
        operation: &'static str,
    ) -> Result<u64, CudaError> {
        let out_of_range = || CudaError::OutOfRange {
            device: self.device().ordinal(),
            operation,
        };
        if offset.checked_add(n).is_none_or(|end| end > self.len()) {
            return Err(out_of_range());
        }
        self.lending_address()?
            .checked_add(u64::try_from(offset).map_err(|_| out_of_range())?)
            .ok_or_else(out_of_range)
    }

    /// Copies bytes at `offset` to host memory, synchronously (ordered with the legacy default
    /// stream: never beside an engine; `StagingRing::download` reads through pinned memory).
    ///
    /// # Errors
    /// [`CudaError::OutOfRange`] when the range is outside; [`CudaError::Driver`].
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), CudaError> {
        if let Self::Owned(b) = self {
            return b.read(offset, dst);
        }
        let src = self.range_address(offset, dst.len(), "device-to-host copy")?;
        self.device().bind()?;
        // SAFETY: `src..src + dst.len()` lies inside the engine's range (`range_address`), which
        // its owner keeps allocated (the contract of `ForeignRange::device`); `dst` is an
        // exclusively borrowed host slice for the whole synchronous copy.
        unsafe { result::memcpy_dtoh_sync(dst, src) }
            .map_err(|e| CudaStatus::from(e).during(self.device().ordinal(), "device-to-host copy"))
    }

    #[cfg(feature = "test-utils")]
    /// Copies host bytes to `offset`, synchronously (test builds: writing into an engine's
    /// range is the tests' corruption, never the library's).
    ///
    /// # Errors
    /// As [`Self::read`].
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), CudaError> {
        if let Self::Owned(b) = self {
            return b.write(offset, src);
        }
        let dst = self.range_address(offset, src.len(), "host-to-device copy")?;
        self.device().bind()?;
        // SAFETY: `dst..dst + src.len()` lies inside the engine's range (`range_address`),
        // allocated by the contract of `ForeignRange::device`; `src` is valid for the copy.
        unsafe { result::memcpy_htod_sync(dst, src) }
            .map_err(|e| CudaStatus::from(e).during(self.device().ordinal(), "host-to-device copy"))
    }

    /// What the driver reports about the first `len` bytes (the engine's range: where its
    /// allocation really lives, and whether one allocation covers it).
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn facts(&self, len: usize) -> Result<AllocationFacts, CudaError> {
        match self {
            Self::Owned(b) => b.facts(len),
            Self::Foreign { .. } => pointer::query(self.device(), self.lending_address()?, len),
        }
    }
}
