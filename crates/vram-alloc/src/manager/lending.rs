//! The lending view: a sealed shard's memory (and a sealed model's tensors) as an engine sees
//! it inside a verified execution (`execute.rs`). [`Weights`] borrows the shard for the scope,
//! so the shard cannot be released while it is lent; the address never reaches a log, an audit
//! record, a metric or an error, and no view's `Debug` shows it. A shard sealed from a
//! safetensors or GGUF file carries its tensor table, so the view finds each tensor
//! ([`Weights::tensor`]).

use std::sync::Arc;

use vram_types::formats::TensorInfo;
use vram_types::{SealedShard, VramError};

use super::allocation_check::owned;
use super::shared::Shared;
use crate::backend::LentMemory;

/// A sealed model's tensors, lent to an engine for one verified execution
/// ([`VramManager::execute_model`](super::VramManager::execute_model)): each tensor's [`Weights`] by name. Lives only inside the
/// closure, like [`Weights`].
pub struct ModelWeights<'s> {
    tensors: Vec<(&'s str, Weights<'s>)>,
}

impl<'s> ModelWeights<'s> {
    pub(super) fn new(tensors: Vec<(&'s str, Weights<'s>)>) -> Self {
        Self { tensors }
    }

    /// The tensor named `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Weights<'_>> {
        self.tensors
            .binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes()))
            .ok()
            .and_then(|i| self.tensors.get(i))
            .map(|(_, w)| w)
    }

    /// Every tensor with its name, names in byte order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Weights<'_>)> {
        self.tensors.iter().map(|(n, w)| (*n, w))
    }

    /// How many tensors.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are none (never: a sealed model has at least one tensor).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

impl std::fmt::Debug for ModelWeights<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.tensors.iter().map(|(_, w)| w))
            .finish()
    }
}

/// A sealed shard's memory, lent to an engine for one verified execution: its address (device
/// memory on a GPU, host memory on the mock backend), length and device. It lives only inside
/// [`VramManager::execute`](super::VramManager::execute)'s closure; it is neither `Clone` nor `Serialize`, and its `Debug`
/// shows no address.
pub struct Weights<'s> {
    lent: Box<dyn LentMemory>,
    len: usize,
    device: u32,
    shard_id: &'s str,
    /// The shard's tensor table, sorted by name (empty for plain bytes).
    tensors: &'s [TensorInfo],
}

impl Weights<'_> {
    /// The address of the shard's first byte, for the engine's kernels (a `CUdeviceptr`).
    #[must_use]
    pub fn device_ptr(&self) -> u64 {
        self.lent.address()
    }

    /// Shows the bytes to `read` when they are host memory (the mock backend, where an engine
    /// computes on the host) and returns its value; `None` on a GPU, where the bytes are read
    /// by the engine's kernels through [`Self::device_ptr`]. The mock's buffer is locked for
    /// reading while `read` runs: do not call the manager's test hooks from inside it.
    pub fn read_host<T>(&self, read: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let mut read = Some(read);
        let mut out = None;
        let shown = self.lent.read_host(&mut |bytes| {
            if let Some(read) = read.take() {
                out = Some(read(bytes));
            }
        });
        if shown { out } else { None }
    }

    /// The device allocation behind the view, on the CUDA backend (test engines launch their
    /// kernels on it; test builds only).
    #[cfg(feature = "test-utils")]
    #[must_use]
    pub fn device_buffer(&self) -> Option<&vram_cuda_sys::memory::DeviceBuffer> {
        self.lent.device_buffer()
    }

    /// The shard's length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the shard is empty (never: a sealed shard has at least one byte).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The CUDA device the bytes are on.
    #[must_use]
    pub fn device(&self) -> u32 {
        self.device
    }

    /// The shard's id.
    #[must_use]
    pub fn shard_id(&self) -> &str {
        self.shard_id
    }

    /// The tensor named `name` inside the shard, when the shard was sealed from a safetensors
    /// or GGUF file (its tensor table, read from the sealed bytes); `None` for another name or
    /// for plain bytes.
    ///
    /// ```
    /// use safetensors::tensor::{Dtype, TensorView};
    /// use vram_alloc::{ExecutionMode, VramManager};
    ///
    /// let norm = [0u8; 16]; // four F32 values
    /// let file = safetensors::serialize([("norm", TensorView::new(Dtype::F32, vec![4], &norm)?)], None)?;
    /// let manager = VramManager::with_capacity(64 << 20); // mock: lends host memory
    /// let shard = manager.seal_model(&file, 0)?; // or a `FileSource::open("model.safetensors")`
    /// manager.execute(&shard, ExecutionMode::BeforeAndAfter, |weights| {
    ///     let t = weights.tensor("norm").expect("in the table");
    ///     // An engine launches its kernels with t.device_ptr() and t.len().
    ///     assert_eq!((t.info().dtype.as_str(), t.len()), ("F32", 16));
    ///     assert_eq!(t.device_ptr(), weights.device_ptr() + t.offset());
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn tensor(&self, name: &str) -> Option<LentTensor<'_>> {
        self.tensors
            .binary_search_by(|t| t.name.as_bytes().cmp(name.as_bytes()))
            .ok()
            .and_then(|i| self.tensors.get(i))
            .map(|info| LentTensor {
                weights: self,
                info,
            })
    }

    /// Every tensor of the shard's table, names in byte order (none for plain bytes).
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = LentTensor<'_>> {
        self.tensors.iter().map(|info| LentTensor {
            weights: self,
            info,
        })
    }
}

/// One tensor of a lent shard sealed from a safetensors or GGUF file: where it lies inside the
/// shard, and what it is. Lives only inside the execution's closure, like [`Weights`]; its
/// `Debug` shows no address.
pub struct LentTensor<'w> {
    weights: &'w Weights<'w>,
    info: &'w TensorInfo,
}

impl<'w> LentTensor<'w> {
    /// The address of the tensor's first byte, for the engine's kernels: the shard's address
    /// plus [`Self::offset`].
    #[must_use]
    pub fn device_ptr(&self) -> u64 {
        self.weights.device_ptr().saturating_add(self.info.offset)
    }

    /// Where the tensor starts, from the shard's first byte (its offset in the file).
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.info.offset
    }

    /// Its length in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.info.bytes
    }

    /// Whether it has no bytes (a tensor with a zero dimension).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.info.bytes == 0
    }

    /// Its name, dtype and shape as the file gives them.
    #[must_use]
    pub fn info(&self) -> &'w TensorInfo {
        self.info
    }

    /// [`Weights::read_host`] over the tensor's bytes alone.
    pub fn read_host<T>(&self, read: impl FnOnce(&[u8]) -> T) -> Option<T> {
        let range = usize::try_from(self.info.offset)
            .ok()
            .zip(usize::try_from(self.info.bytes).ok())
            .and_then(|(start, n)| Some(start..start.checked_add(n)?))?;
        self.weights
            .read_host(|bytes| bytes.get(range).map(read))
            .flatten()
    }
}

impl std::fmt::Debug for LentTensor<'_> {
    /// Name, dtype, shape, offset and length: never the address.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LentTensor")
            .field("name", &self.info.name)
            .field("dtype", &self.info.dtype)
            .field("shape", &self.info.shape)
            .field("offset", &self.info.offset)
            .field("len", &self.info.bytes)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Weights<'_> {
    /// Shard, device and length: never the address.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("shard_id", &self.shard_id)
            .field("device", &self.device)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// The lending view of a shard this manager sealed.
pub(super) fn lend<'s>(
    shared: &Arc<Shared>,
    shard: &'s SealedShard,
) -> Result<Weights<'s>, VramError> {
    let resident = owned(shared, shard)?;
    Ok(Weights {
        lent: shared.backend().lend(resident.buffer())?,
        len: shard.vram_bytes,
        device: shard.gpu_device,
        shard_id: &shard.shard_id,
        tensors: shard.tensors().unwrap_or_default(),
    })
}
