//! A sealed file's tensor table, read from the resident bytes (`ResidentBytes`), not the file: no
//! window between a check and the upload, what is described is what is sealed. (A digest in
//! another algorithm than the manager's is the backend's to compute, from the resident bytes as
//! well.)

use std::path::Path;

use vram_formats::{TensorInfo, sealed_table};
use vram_types::VramError;

use crate::backend::{Backend, BufferId, ResidentBytes};

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
    ResidentBytes::new(backend, buffer, len).reading(|bytes| sealed_table(path, bytes))
}
