//! Safe wrappers over the CUDA driver API: the workspace's only `unsafe` code.
//!
//! The driver is reached through `cudarc` with `dynamic-loading` (pinned to the CUDA 12.8 API,
//! `docs/adr/0001-cudarc-dynamic-loading.md`), so nothing here needs a CUDA toolkit to build
//! and a machine without a GPU gets typed errors, never a panic or a crash at load.
//!
//! | module | wraps |
//! |---|---|
//! | [`driver`] | finding `libcuda`, the driver version check, `cuInit`, device count |
//! | [`device`] | one device and its primary context: attributes, free/total memory |
//! | [`memory`] | device allocations, synchronous copies, pinned buffers, and the managed / pinned / mapped / registered host memory the policy must refuse |
//! | [`pointer`](mod@pointer) | `cuPointerGetAttributes`: where an allocation really lives |
//! | [`resident`] | memory a digest reads in place: own allocations, and an engine's ranges sealed in place |
//! | [`module`] | loading PTX and launching a kernel |
//! | [`stream`] | streams with a priority, events |
//! | [`tree_digest`] | tree digests of bytes in VRAM, the `sha256-tree-L` root and standard BLAKE3: leaf and fold kernels (`kernels/`); step lanes, which spread digests over an engine's steps |
//! | [`staging_ring`] | uploads through a bounded pool of pinned slots filled by several threads |
//! | `testing` | stand-in engines for tests (feature `test-utils`): a GEMM and a byte writer |
//!
//! Device pointers never leave this crate's types but one way: [`memory::DeviceBuffer::lending_address`],
//! which the manager hands to an engine inside a scoped, verified execution; no `Debug` output
//! shows one. Every `unsafe` block holds one driver call behind a `// SAFETY:`
//! comment that names what makes it sound.
#![allow(unsafe_code)]
#![deny(
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block,
    unsafe_op_in_unsafe_fn
)]

/// `Debug` that names the device and, where given, other plain fields: never a device pointer or
/// a driver handle (the contract keeps them private, and a log line must not carry one).
macro_rules! debug_without_pointers {
    ($ty:ident { $($field:ident: $value:expr),* $(,)? }) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                #[allow(clippy::redundant_closure_call, reason = "one accessor per field")]
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), &($value)(self)))*
                    .finish_non_exhaustive()
            }
        }
    };
}
pub(crate) use debug_without_pointers;

pub mod device;
pub mod driver;
mod error;
pub mod memory;
pub mod module;
pub mod pointer;
pub mod resident;
pub mod staging_ring;
pub mod stream;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod tree_digest;

pub use device::Device;
pub use driver::{Driver, REQUIRED_DRIVER_VERSION};
pub use error::{CudaError, CudaStatus, Result};
