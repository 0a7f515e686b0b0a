//! Loading PTX and launching kernels (the in-VRAM hash of a later issue builds on this).

use std::ffi::{CString, c_void};
use std::sync::Arc;

use cudarc::driver::result;
use cudarc::driver::sys::{CUfunction, CUmodule};
use vram_types::VramError;

use crate::device::Device;
use crate::error::CudaError;
use crate::memory::DeviceBuffer;

/// A loaded module (`cuModuleLoadData`), unloaded on drop.
#[derive(Debug)]
pub struct Module {
    device: Arc<Device>,
    module: CUmodule,
}

// SAFETY: a CUmodule is a driver handle valid on every thread of the context's process.
unsafe impl Send for Module {}
// SAFETY: as above; functions are only looked up and launched through driver calls.
unsafe impl Sync for Module {}

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
    /// [`VramError::InvalidInput`] for text with a NUL byte; [`VramError::CudaOperationFailed`]
    /// when the driver rejects it.
    pub fn load_ptx(device: &Arc<Device>, ptx: &str) -> Result<Self, VramError> {
        let image = CString::new(ptx)
            .map_err(|_| VramError::invalid_input("PTX", "contains a NUL byte"))?;
        device.bind()?;
        // SAFETY: `image` is a NUL-terminated PTX string that outlives the call; context is current.
        let module = unsafe { result::module::load_data(image.as_ptr().cast()) }
            .map_err(|e| CudaError::from(e).during(device.ordinal(), "cuModuleLoadData"))?;
        Ok(Self {
            device: Arc::clone(device),
            module,
        })
    }

    fn function(&self, name: &str) -> Result<CUfunction, VramError> {
        let name = CString::new(name)
            .map_err(|_| VramError::invalid_input("kernel name", "contains a NUL byte"))?;
        // SAFETY: `module` was loaded in `load_ptx` and is unloaded only in `Drop`.
        unsafe { result::module::get_function(self.module, name) }
            .map_err(|e| CudaError::from(e).during(self.device.ordinal(), "cuModuleGetFunction"))
    }

    /// Launches kernel `name` on the default stream and waits for it.
    ///
    /// # Errors
    /// [`VramError::CudaOperationFailed`] for an unknown kernel, a buffer of another device or a
    /// failed launch.
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
    ) -> Result<(), VramError> {
        let ordinal = self.device.ordinal();
        let function = self.function(name)?;
        let mut values: Vec<u64> = Vec::with_capacity(args.len());
        for arg in args {
            values.push(match arg {
                KernelArg::Buffer(b) => {
                    if b.device().ordinal() != ordinal {
                        return Err(VramError::CudaOperationFailed {
                            device: ordinal,
                            operation: "cuLaunchKernel",
                            cuda_error: "buffer belongs to another device".into(),
                        });
                    }
                    b.device_address()?
                }
                KernelArg::U64(v) => *v,
                KernelArg::U32(v) => u64::from(*v),
            });
        }
        // Each parameter points at its value; 32-bit values are read from the low half.
        let mut params: Vec<*mut c_void> =
            values.iter_mut().map(|v| (v as *mut u64).cast()).collect();
        self.device.bind()?;
        // SAFETY: the caller guarantees (1) and (2); `params` holds one pointer per kernel
        // parameter, each valid until the synchronisation below.
        unsafe {
            result::launch_kernel(
                function,
                (grid, 1, 1),
                (block, 1, 1),
                0,
                result::stream::null(),
                &mut params,
            )
        }
        .map_err(|e| CudaError::from(e).during(ordinal, "cuLaunchKernel"))?;
        self.device.synchronize()
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: the module was loaded in `load_ptx` and is unloaded once, here.
            let _ = unsafe { result::module::unload(self.module) };
        }
    }
}
