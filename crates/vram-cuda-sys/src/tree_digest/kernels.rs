//! The digest kernels: the committed PTX of both `.cu` files, and each module's four kernels
//! loaded once per device.

use std::sync::Arc;

use cudarc::driver::sys::CUfunction;

use super::{GpuDigest, TreeDigestEngine};
use crate::device::Device;
use crate::error::CudaError;
use crate::module::Module;

impl TreeDigestEngine {
    pub(super) fn kernels(&self, digest: GpuDigest) -> &Kernels {
        match digest {
            GpuDigest::Sha256Tree(_) => &self.sha256,
            GpuDigest::Blake3 => &self.blake3,
        }
    }
}

/// PTX of `kernels/sha256_tree.cu` (`cargo xtask ptx` regenerates it).
pub const SHA256_TREE_PTX: &str = include_str!("../../kernels/sha256_tree.ptx");
/// PTX of `kernels/blake3_tree.cu` (`cargo xtask ptx` regenerates it).
pub const BLAKE3_TREE_PTX: &str = include_str!("../../kernels/blake3_tree.ptx");

/// The four kernels of one algorithm, in the module that holds them.
pub(super) struct Kernels {
    pub(super) module: Module,
    pub(super) leaves: CUfunction,
    pub(super) fold: CUfunction,
    pub(super) range_leaves: CUfunction,
    pub(super) range_fold: CUfunction,
}

impl Kernels {
    /// Loads `ptx` and finds its leaf, fold, range-leaf and range-fold kernels, in that order.
    pub(super) fn load(
        device: &Arc<Device>,
        ptx: &str,
        names: [&str; 4],
    ) -> Result<Self, CudaError> {
        let module = Module::load_ptx(device, ptx)?;
        let [leaves, fold, range_leaves, range_fold] = names;
        Ok(Self {
            leaves: module.function(leaves)?,
            fold: module.function(fold)?,
            range_leaves: module.function(range_leaves)?,
            range_fold: module.function(range_fold)?,
            module,
        })
    }
}
