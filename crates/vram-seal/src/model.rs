//! The model digest (`.specs/model-digest.md`): one SHA-256 over every tensor of a model —
//! name, dtype, shape, byte length, digest algorithm and the tensor's own digest — in a canonical
//! order (names, byte-wise ascending), so that a manifest made from a file on disk and the
//! digest of the tensors an engine loaded itself can be compared, and tools outside the project
//! can reproduce it (`.specs/reference/vectors.py model`).

use vram_types::{DigestAlgorithm, VramError};

use crate::digest::ShardDigest;
use crate::encoding::put_str;

/// Domain separation: a model encoding starts with these 8 bytes, then the format version.
pub const MAGIC: &[u8; 8] = b"VRAMMODL";
/// The encoding's format version.
pub const VERSION: u8 = 1;
/// How a model digest names itself when it stands alone: `vram-model-v1:HEX`.
pub const TAG: &str = "vram-model-v1";

/// One tensor of a model, as the model digest covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// The tensor's name (unique in the model).
    pub name: String,
    /// Its element type as the file names it (`F32`, `BF16`, `Q4_K`, ...).
    pub dtype: String,
    /// Its shape, in the file's order.
    pub shape: Vec<u64>,
    /// Its length in bytes.
    pub bytes: u64,
    /// The algorithm of `digest`.
    pub algorithm: DigestAlgorithm,
    /// The digest of the tensor's bytes.
    pub digest: ShardDigest,
}

/// The canonical encoding of `tensors` (in any order: they are sorted by name). Tensors of
/// zero bytes are left out: they hold no weights, nothing of them can be sealed in VRAM or
/// change there, so a model file and the tensors an engine sealed agree on one digest whether
/// or not the engine kept its empty tensors (`.specs/model-digest.md`).
///
/// # Errors
/// [`VramError::InvalidInput`] for no tensor with bytes, a name given twice, or a name, dtype
/// or shape too large to encode.
pub fn encode_model(tensors: &[TensorEntry]) -> Result<Vec<u8>, VramError> {
    let mut sorted: Vec<&TensorEntry> = tensors.iter().filter(|t| t.bytes > 0).collect();
    if sorted.is_empty() {
        return Err(VramError::invalid_input(
            "model",
            "no tensors with bytes (empty tensors are not part of a model digest)",
        ));
    }
    sorted.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    if let Some(pair) = sorted
        .windows(2)
        .find(|w| matches!(w, [a, b] if a.name == b.name))
    {
        let name = pair.first().map_or("", |t| t.name.as_str());
        return Err(VramError::invalid_input(
            "model",
            format!("tensor {name:?} appears twice"),
        ));
    }
    let too_large = || VramError::invalid_input("model", "a field too large to encode");
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(
        &u64::try_from(sorted.len())
            .map_err(|_| too_large())?
            .to_be_bytes(),
    );
    for t in sorted {
        put_str(&mut out, &t.name).ok_or_else(too_large)?;
        put_str(&mut out, &t.dtype).ok_or_else(too_large)?;
        let dims = u32::try_from(t.shape.len()).map_err(|_| too_large())?;
        out.extend_from_slice(&dims.to_be_bytes());
        for d in &t.shape {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(&t.bytes.to_be_bytes());
        put_str(&mut out, &t.algorithm.to_string()).ok_or_else(too_large)?;
        put_str(&mut out, &t.digest.to_hex()).ok_or_else(too_large)?;
    }
    Ok(out)
}

/// The model digest: SHA-256 of [`encode_model`].
///
/// # Errors
/// As [`encode_model`].
pub fn model_digest(tensors: &[TensorEntry]) -> Result<ShardDigest, VramError> {
    Ok(crate::digest::digest(
        &encode_model(tensors)?,
        DigestAlgorithm::Sha256,
    ))
}
