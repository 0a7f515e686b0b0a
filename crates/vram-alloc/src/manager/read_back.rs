//! The resident bytes as a [`ShardSource`]: read back from VRAM, for what is not computed
//! there: a sealed file's tensor table. Reading what is resident, not the file, leaves no window
//! between a check and the upload: the bytes checked are the bytes sealed. (A digest in another
//! algorithm than the manager's is the backend's to compute, from the resident bytes as well.)

use std::io;
use std::path::Path;
use std::sync::Mutex;

use vram_types::formats::{TensorInfo, sealed_table};
use vram_types::{ShardSource, VramError};

use crate::backend::{Backend, BufferId};
use crate::sync::lock;

/// A buffer's first `len` bytes, read with device-to-host copies.
struct Resident<'b> {
    backend: &'b dyn Backend,
    buffer: BufferId,
    len: u64,
    /// The first copy error, kept whole (a source's read reports only an I/O error).
    failed: Mutex<Option<VramError>>,
}

impl ShardSource for Resident<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let offset = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        self.backend.read(self.buffer, offset, buf).map_err(|e| {
            let text = e.to_string();
            lock(&self.failed).get_or_insert(e);
            io::Error::other(text)
        })
    }
}

impl<'b> Resident<'b> {
    fn new(backend: &'b dyn Backend, buffer: BufferId, len: usize) -> Self {
        Self {
            backend,
            buffer,
            len: u64::try_from(len).unwrap_or(u64::MAX),
            failed: Mutex::new(None),
        }
    }

    /// `read`'s result, a failed copy reported as the copy's own error.
    fn reading<T>(self, read: impl FnOnce(&Self) -> Result<T, VramError>) -> Result<T, VramError> {
        read(&self).map_err(|e| lock(&self.failed).take().unwrap_or(e))
    }
}

/// The tensor table of the buffer's first `len` bytes, from a safetensors or GGUF header read
/// back from VRAM ([`sealed_table`]): it describes what is sealed, whatever the source holds
/// later.
///
/// # Errors
/// As [`sealed_table`]; a failed copy as [`Backend::read`] gives it.
pub(super) fn table_resident(
    backend: &dyn Backend,
    buffer: BufferId,
    len: usize,
    path: Option<&Path>,
) -> Result<Option<Vec<TensorInfo>>, VramError> {
    Resident::new(backend, buffer, len).reading(|bytes| sealed_table(path, bytes))
}
