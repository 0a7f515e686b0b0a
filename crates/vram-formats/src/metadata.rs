//! The metadata digest's encoding (`.specs/model-digest.md`, "Metadata digest"): what a model
//! file says beside its tensors, which the model digest does not cover.

use std::path::Path;

use super::gguf::gguf_metadata;
use super::safetensors_header::safetensors_metadata;
use super::{FormatError, HeaderProblem, ModelFormat, recognise};

/// Domain separation of a metadata encoding (`.specs/model-digest.md`, "Metadata digest").
pub const METADATA_MAGIC: &[u8; 8] = b"VRAMMETA";
/// How a metadata digest names itself when it stands alone: `vram-meta-v1:HEX`.
pub const METADATA_TAG: &str = "vram-meta-v1";

/// The canonical encoding of a model file's metadata, what the model digest does not cover
/// (`.specs/model-digest.md`): a safetensors file's `__metadata__` entries sorted by key, or a
/// GGUF file's key-value section as the file stores it. `None` for a file with no tensor table
/// (not safetensors or GGUF). The caller hashes it (SHA-256).
///
/// # Errors
/// As [`recognise`].
pub fn metadata_encoding(
    path: &Path,
    head: &[u8],
    file_len: u64,
) -> Result<Option<Vec<u8>>, FormatError> {
    let mut out = METADATA_MAGIC.to_vec();
    out.push(1);
    let put = |out: &mut Vec<u8>, bytes: &[u8]| {
        let n = u32::try_from(bytes.len()).map_err(|_| HeaderProblem::LengthTooLarge(u64::MAX))?;
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(bytes);
        Ok::<_, HeaderProblem>(())
    };
    match recognise(path, head, file_len)? {
        ModelFormat::Safetensors { .. } => {
            let entries = safetensors_metadata(head).map_err(FormatError::Safetensors)?;
            put(&mut out, b"safetensors").map_err(FormatError::Safetensors)?;
            out.extend_from_slice(
                &u64::try_from(entries.len())
                    .unwrap_or(u64::MAX)
                    .to_be_bytes(),
            );
            for (key, value) in entries {
                put(&mut out, key.as_bytes()).map_err(FormatError::Safetensors)?;
                put(&mut out, value.as_bytes()).map_err(FormatError::Safetensors)?;
            }
        }
        ModelFormat::Gguf { .. } => {
            let (count, section) = gguf_metadata(head).map_err(FormatError::Gguf)?;
            put(&mut out, b"gguf").map_err(FormatError::Gguf)?;
            out.extend_from_slice(&count.to_be_bytes());
            out.extend_from_slice(section);
        }
        ModelFormat::Raw => return Ok(None),
    }
    Ok(Some(out))
}
