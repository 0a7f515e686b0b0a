//! Host memory an engine outside the mock holds (the Python package's NumPy arrays standing in
//! for tensors), and the bytes of a mock buffer: the mock's own, or such an engine's.

use std::sync::{Arc, RwLock};

use vram_types::VramError;

use crate::sync::{read, write};

/// Host memory that an engine outside the mock holds and the mock reads where it lies (the
/// Python package's NumPy arrays standing in for tensors): the engine keeps writing it, the
/// mock never does, and every read sees the engine's bytes of that moment.
pub trait HostTensor: Send + Sync {
    /// Its length in bytes when it was handed over (a tensor that later shows another length
    /// reads as changed).
    fn len(&self) -> usize;

    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shows its bytes of this moment to `read`.
    ///
    /// # Errors
    /// [`VramError::SourceReadFailed`] when its owner can no longer show them.
    fn read(&self, read: &mut dyn FnMut(&[u8])) -> Result<(), VramError>;
}

/// A mock buffer's bytes: the mock's own, or an engine's host tensor read where it lies.
pub(super) enum Storage {
    Owned(RwLock<Vec<u8>>),
    Engine(Arc<dyn HostTensor>),
}

impl std::fmt::Debug for Storage {
    /// The length only, never the bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({} bytes)", self.len())
    }
}

impl Storage {
    pub(super) fn owned(bytes: Vec<u8>) -> Self {
        Self::Owned(RwLock::new(bytes))
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Self::Owned(data) => read(data).len(),
            Self::Engine(tensor) => tensor.len(),
        }
    }

    /// Shows the bytes of this moment to `f`.
    pub(super) fn with<T>(&self, f: impl FnOnce(&[u8]) -> T) -> Result<T, VramError> {
        match self {
            Self::Owned(data) => Ok(f(&read(data))),
            Self::Engine(tensor) => {
                let mut f = Some(f);
                let mut out = None;
                tensor.read(&mut |bytes| out = f.take().map(|f| f(bytes)))?;
                out.ok_or(VramError::Unreachable("a host tensor showed no bytes"))
            }
        }
    }

    /// The mock's own bytes, to write; an engine's host tensor is written by its engine only.
    pub(super) fn owned_mut(&self) -> Result<std::sync::RwLockWriteGuard<'_, Vec<u8>>, VramError> {
        match self {
            Self::Owned(data) => Ok(write(data)),
            Self::Engine(_) => Err(VramError::invalid_input(
                "engine memory",
                "a host tensor is written by the engine that holds it, not through the mock",
            )),
        }
    }
}
