//! A buffer's resident bytes as a [`ShardSource`], read back from VRAM with device-to-host
//! copies: what is computed on the host from what is resident (a flat SHA-256, a small tree
//! digest, a sealed file's tensor table) reads through it, so reading overlaps hashing as for a
//! file, and the bytes checked are the bytes sealed, never a second read of the source.

use std::io;
use std::sync::Mutex;

use vram_seal::ShardDigest;
use vram_seal::digest::digest_source;
use vram_types::{DigestAlgorithm, ShardSource, VramError};

use super::{Backend, BufferId};
use crate::sync::lock;

/// A buffer's first `len` bytes, read with the backend's copies.
pub(crate) struct ResidentBytes<'b> {
    backend: &'b dyn Backend,
    buffer: BufferId,
    len: u64,
    /// The first copy error, kept whole (a source's read reports only an I/O error).
    failed: Mutex<Option<VramError>>,
}

impl ShardSource for ResidentBytes<'_> {
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

impl<'b> ResidentBytes<'b> {
    pub(crate) fn new(backend: &'b dyn Backend, buffer: BufferId, len: usize) -> Self {
        Self {
            backend,
            buffer,
            len: u64::try_from(len).unwrap_or(u64::MAX),
            failed: Mutex::new(None),
        }
    }

    /// `read`'s result, a failed copy reported as the copy's own error.
    pub(crate) fn reading<T>(
        self,
        read: impl FnOnce(&Self) -> Result<T, VramError>,
    ) -> Result<T, VramError> {
        read(&self).map_err(|e| lock(&self.failed).take().unwrap_or(e))
    }

    /// The digest in `algorithm` of the bytes, hashed on the host as they are read back.
    ///
    /// # Errors
    /// The copy's error (as [`Backend::read`] gives it); [`VramError::HostMemoryExhausted`].
    pub(crate) fn digest(self, algorithm: DigestAlgorithm) -> Result<ShardDigest, VramError> {
        self.reading(|bytes| digest_source(bytes, algorithm))
    }
}
