//! Loading PTX and launching kernels. The crate's own kernels ([`crate::tree_digest`]) launch
//! through a crate-private path; launching arbitrary kernels on arbitrary buffers (a way to
//! write into any allocation) is public only with the `test-utils` feature, for tests and the
//! benchmarks.

use std::ffi::{CString, c_void};
use std::sync::Arc;

use cudarc::driver::result;
use cudarc::driver::sys::{CUfunction, CUmodule, CUstream};

use crate::device::Device;
use crate::error::{CudaError, CudaStatus};
#[cfg(feature = "test-utils")]
use crate::memory::DeviceBuffer;
#[cfg(feature = "test-utils")]
use crate::stream::Stream;

/// A loaded module (`cuModuleLoadData`), unloaded on drop.
pub struct Module {
    device: Arc<Device>,
    module: CUmodule,
}

crate::debug_without_pointers!(Module {
    device: |m: &Module| m.device.ordinal()
});

// SAFETY: a CUmodule is a driver handle valid on every thread of the context's process.
unsafe impl Send for Module {}
// SAFETY: as above; functions are only looked up and launched through driver calls.
unsafe impl Sync for Module {}

#[cfg(feature = "test-utils")]
/// A kernel argument.
#[derive(Debug, Clone, Copy)]
pub enum KernelArg<'a> {
    /// A device buffer, passed as its device address (the address never leaves this crate).
    Buffer(&'a DeviceBuffer),
    /// A 64-bit integer.
    U64(u64),
    /// A 32-bit integer.
    U32(u32),
}

impl Module {
    /// Loads PTX text (JIT-compiled by the driver for the device).
    ///
    /// # Errors
    /// [`CudaError::InvalidArgument`] for text with a NUL byte; [`CudaError::Driver`] when the
    /// driver rejects it.
    pub fn load_ptx(device: &Arc<Device>, ptx: &str) -> Result<Self, CudaError> {
        let image = CString::new(ptx).map_err(|_| CudaError::InvalidArgument {
            what: "PTX",
            reason: "contains a NUL byte".into(),
        })?;
        device.bind()?;
        // SAFETY: `image` is a NUL-terminated PTX string that outlives the call; context is current.
        let module = unsafe { result::module::load_data(image.as_ptr().cast()) }
            .map_err(|e| CudaStatus::from(e).during(device.ordinal(), "cuModuleLoadData"))?;
        Ok(Self {
            device: Arc::clone(device),
            module,
        })
    }

    /// Looks a kernel up (once per kernel for repeated launches).
    pub(crate) fn function(&self, name: &str) -> Result<CUfunction, CudaError> {
        let name = CString::new(name).map_err(|_| CudaError::InvalidArgument {
            what: "kernel name",
            reason: "contains a NUL byte".into(),
        })?;
        // SAFETY: `module` was loaded in `load_ptx` and is unloaded only in `Drop`.
        unsafe { result::module::get_function(self.module, name) }
            .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "cuModuleGetFunction"))
    }

    #[cfg(feature = "test-utils")]
    /// Launches kernel `name` on the default stream and waits for it.
    ///
    /// # Errors
    /// [`CudaError::WrongDevice`] for a buffer of another device; [`CudaError::Driver`] for an
    /// unknown kernel or a failed launch.
    ///
    /// # Safety
    /// 1. `args` must match the kernel's parameter list in number, order and type.
    /// 2. The kernel must only access memory inside the buffers it is given.
    pub unsafe fn launch(
        &self,
        name: &str,
        grid: u32,
        block: u32,
        args: &[KernelArg<'_>],
    ) -> Result<(), CudaError> {
        let values = self.arg_values(args)?;
        let function = self.function(name)?;
        // SAFETY: forwarded from this function's contract; the null stream is always valid.
        unsafe { self.launch_raw(function, (grid, 1), block, &values, result::stream::null()) }?;
        self.device.synchronize()
    }

    #[cfg(feature = "test-utils")]
    /// Queues kernel `name` on `stream` with a `grid.0 x grid.1` grid and returns without
    /// waiting (errors of the kernel itself surface when the stream is synchronised).
    ///
    /// # Errors
    /// [`CudaError::WrongDevice`] for a buffer or stream of another device;
    /// [`CudaError::Driver`] for an unknown kernel or a failed launch.
    ///
    /// # Safety
    /// 1. `args` must match the kernel's parameter list in number, order and type.
    /// 2. The kernel must only access memory inside the buffers it is given, and those buffers
    ///    must stay allocated until the stream's work is done.
    pub unsafe fn launch_async(
        &self,
        stream: &Stream,
        name: &str,
        grid: (u32, u32),
        block: u32,
        args: &[KernelArg<'_>],
    ) -> Result<(), CudaError> {
        if stream.device().ordinal() != self.device.ordinal() {
            return Err(CudaError::WrongDevice {
                device: self.device.ordinal(),
                found: stream.device().ordinal(),
                operation: "cuLaunchKernel (stream)",
            });
        }
        let values = self.arg_values(args)?;
        let function = self.function(name)?;
        // SAFETY: forwarded from this function's contract; the stream is live and of this device.
        unsafe { self.launch_raw(function, grid, block, &values, stream.raw()) }
    }

    #[cfg(feature = "test-utils")]
    fn arg_values(&self, args: &[KernelArg<'_>]) -> Result<Vec<u64>, CudaError> {
        let ordinal = self.device.ordinal();
        args.iter()
            .map(|arg| match arg {
                KernelArg::Buffer(b) => {
                    if b.device().ordinal() != ordinal {
                        return Err(CudaError::WrongDevice {
                            device: ordinal,
                            found: b.device().ordinal(),
                            operation: "cuLaunchKernel",
                        });
                    }
                    b.device_address()
                }
                KernelArg::U64(v) => Ok(*v),
                KernelArg::U32(v) => Ok(u64::from(*v)),
            })
            .collect()
    }

    /// Queues `function` on `stream` with the parameter values `values` (device addresses and
    /// integers, each passed as a 64-bit slot; 32-bit parameters read the low half). Returns
    /// without waiting.
    ///
    /// # Safety
    /// 1. `function` belongs to this module and `values` matches its parameter list.
    /// 2. The kernel only accesses memory that stays allocated until the stream's work is done.
    /// 3. `stream` is a live stream of this module's device (or the null stream).
    pub(crate) unsafe fn launch_raw(
        &self,
        function: CUfunction,
        grid: (u32, u32),
        block: u32,
        values: &[u64],
        stream: CUstream,
    ) -> Result<(), CudaError> {
        let ordinal = self.device.ordinal();
        let mut values = values.to_vec();
        // Each parameter points at its value; the driver copies them before returning.
        let mut params: Vec<*mut c_void> =
            values.iter_mut().map(|v| (v as *mut u64).cast()).collect();
        self.device.bind()?;
        // SAFETY: the caller guarantees (1)-(3); `params` holds one pointer per kernel parameter,
        // each valid for the duration of the call (the driver copies the values at launch).
        unsafe {
            result::launch_kernel(
                function,
                (grid.0, grid.1, 1),
                (block, 1, 1),
                0,
                stream,
                &mut params,
            )
        }
        .map_err(|e| CudaStatus::from(e).during(ordinal, "cuLaunchKernel"))
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: the module was loaded in `load_ptx` and is unloaded once, here.
            let unloaded = unsafe { result::module::unload(self.module) };
            crate::error::report_release("a module", self.device.ordinal(), unloaded);
        }
    }
}
