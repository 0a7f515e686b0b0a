//! Recognising model files: safetensors and GGUF headers are checked and summarised before any
//! VRAM is used, and their tensor tables read (a sealed file's shard carries its table, so an
//! engine finds each tensor inside it); any other file is sealed as plain bytes. [`header_extent`] is the one place
//! that knows how much of a file its header takes; [`recognise`] reads it, with a typed
//! [`FormatError`] for every way it can be wrong.

use std::path::Path;

/// Why a model file's header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// A Git LFS pointer where the model should be.
    #[error("this is a Git LFS pointer, not the model: run `git lfs pull`")]
    LfsPointer,
    /// A safetensors header that does not hold.
    #[error("malformed safetensors header: {0}")]
    Safetensors(HeaderProblem),
    /// A GGUF header that does not hold.
    #[error("malformed GGUF header: {0}")]
    Gguf(HeaderProblem),
}

/// What is wrong with a header. Names from the file are shown escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderProblem {
    /// The header ends before a field it declares.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// A length that no file could hold.
    #[error("length {0} too large")]
    LengthTooLarge(u64),
    /// Fewer than the 8 bytes of a safetensors header's length.
    #[error("shorter than the 8-byte header length")]
    NoHeaderLength,
    /// A safetensors header length beyond the file.
    #[error("header length exceeds the file")]
    HeaderBeyondFile,
    /// The safetensors JSON does not parse or breaks the format's rules.
    #[error("bad header: {0}")]
    Json(String),
    /// A tensor name given twice.
    #[error("tensor \"{0}\" appears twice")]
    DuplicateTensor(String),
    /// A GGUF tensor name that is not UTF-8 (a model digest names tensors in UTF-8).
    #[error("tensor name \"{0}\" is not UTF-8")]
    NonUtf8Name(String),
    /// A GGUF metadata key given twice.
    #[error("metadata key \"{0}\" appears twice")]
    DuplicateKey(String),
    /// The data section is shorter (or longer) than the tensors need.
    #[error("the tensors need {needed} bytes of data after the header, the file has {available}{}", if *.partial { " (a partial download?)" } else { "" })]
    DataSize {
        /// Bytes the tensors need.
        needed: u64,
        /// Bytes after the header.
        available: u64,
        /// Shorter than needed: the file was probably cut.
        partial: bool,
    },
    /// No `GGUF` magic.
    #[error("missing GGUF magic")]
    NoMagic,
    /// A GGUF version this reader does not know.
    #[error("unsupported version {0} (2 and 3 are supported)")]
    UnsupportedVersion(u32),
    /// Tensor or key counts larger than the file could hold.
    #[error("counts exceed the file size")]
    CountsBeyondFile,
    /// `general.alignment` is not a power of two (or not an unsigned integer).
    #[error("bad general.alignment")]
    BadAlignment,
    /// A GGUF value type outside the table.
    #[error("unknown value type {0}")]
    UnknownValueType(u32),
    /// Arrays of arrays of arrays.
    #[error("arrays nested too deeply")]
    NestedTooDeeply,
    /// An array with more elements than the file has bytes.
    #[error("array of {0} elements exceeds the file")]
    ArrayBeyondFile(u64),
    /// A tensor with more dimensions than ggml allows.
    #[error("tensor \"{tensor}\" has {dims} dimensions (at most {GGML_MAX_DIMS})")]
    TooManyDimensions {
        /// The tensor's name.
        tensor: String,
        /// Its dimension count.
        dims: u32,
    },
    /// A ggml type id outside the table.
    #[error("tensor \"{tensor}\" has unknown ggml type {kind}")]
    UnknownTensorType {
        /// The tensor's name.
        tensor: String,
        /// The type id.
        kind: u32,
    },
    /// An element count or byte size that overflows.
    #[error("tensor \"{0}\": size overflows")]
    SizeOverflow(String),
    /// A row that is not whole blocks of its quantisation.
    #[error(
        "tensor \"{tensor}\" of type {type_name} has rows of {row} elements, not a multiple of {block}"
    )]
    PartialBlock {
        /// The tensor's name.
        tensor: String,
        /// Its ggml type.
        type_name: &'static str,
        /// Elements in a row.
        row: u64,
        /// Elements in a block.
        block: u64,
    },
    /// A tensor that does not start where the tensors before it end (each padded to the
    /// alignment): tensors lie back to back in table order, as ggml's reader requires, so no
    /// two share bytes and none sits in a gap.
    #[error(
        "tensor \"{tensor}\" starts at data offset {offset}; the tensors before it end at {expected}"
    )]
    TensorOffset {
        /// The tensor's name.
        tensor: String,
        /// Its offset in the data section.
        offset: u64,
        /// Where the tensors before it end, padded to the alignment.
        expected: u64,
    },
    /// A tensor offset off the alignment.
    #[error("tensor \"{tensor}\" at offset {offset}, not a multiple of the alignment {alignment}")]
    Misaligned {
        /// The tensor's name.
        tensor: String,
        /// Its offset.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
}

/// A name from a file, as errors show it: lossy UTF-8, escaped.
fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).escape_debug().to_string()
}

/// One tensor of a model file: what the model digest covers, and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name.
    pub name: String,
    /// Its element type as the file names it (`F32`, `BF16`, `Q4_K`).
    pub dtype: String,
    /// Its shape, in the file's order.
    pub shape: Vec<u64>,
    /// Where its bytes start, from the start of the file.
    pub offset: u64,
    /// Its length in bytes.
    pub bytes: u64,
}

/// The tensor table of a safetensors or GGUF file (as [`recognise`] reads the header); `None`
/// for any other file, which has none.
///
/// # Errors
/// As [`recognise`]; [`HeaderProblem::NonUtf8Name`] for a GGUF tensor name that is not UTF-8.
pub fn tensor_table(
    path: &Path,
    head: &[u8],
    file_len: u64,
) -> Result<Option<Vec<TensorInfo>>, FormatError> {
    match recognise(path, head, file_len)? {
        ModelFormat::Safetensors { .. } => safetensors_table(head, file_len)
            .map(|(_, t)| Some(t))
            .map_err(FormatError::Safetensors),
        ModelFormat::Gguf { .. } => gguf_table(head, file_len)
            .map(|(_, t)| Some(t))
            .map_err(FormatError::Gguf),
        ModelFormat::Raw => Ok(None),
    }
}

/// What [`sealed_table`] found the bytes to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TableKind {
    Safetensors,
    Gguf,
}

/// Whether bytes of `len` bytes starting with `probe`, from a file `name` when they came from
/// one, have a tensor table to read, and whether a header that does not hold is an error
/// (`true`: the name or the GGUF magic says they are a model file) or makes them plain bytes.
fn table_kind(name: Option<&Path>, probe: &[u8], len: u64) -> Option<(TableKind, bool)> {
    if probe.starts_with(b"GGUF") {
        return Some((TableKind::Gguf, name.is_some()));
    }
    if let Some(name) = name {
        return match extension(name).as_deref() {
            Some("safetensors") => Some((TableKind::Safetensors, true)),
            Some("gguf") => Some((TableKind::Gguf, true)),
            _ => None,
        };
    }
    // Unnamed: a safetensors header is an 8-byte length, within the bytes, then a JSON object.
    let n = header_length(probe)?;
    let fits = n <= HEADER_PREFIX_MAX && n.checked_add(8).is_some_and(|end| end <= len);
    (fits && probe.get(8) == Some(&b'{')).then_some((TableKind::Safetensors, false))
}

/// The tensor table a sealed shard carries: read from `bytes` (the bytes in VRAM, so the table
/// describes what was sealed), sorted by name.
///
/// One rule decides which bytes have a table. Bytes that came from a file (`name`) are
/// recognised as [`recognise`] does: a `.safetensors` or `.gguf` name, or the GGUF magic, and
/// a header that does not hold is an error. Unnamed bytes (a byte slice) are recognised by
/// their content (the GGUF magic, or an 8-byte length followed by a JSON object), and a header
/// that does not parse leaves them plain bytes: nothing said they were a model file. Plain
/// bytes have no table (`Ok(None)`). A GGUF header is read in growing prefixes (1 MiB first),
/// so a small header costs a small read.
///
/// # Errors
/// [`VramError::MalformedModel`](crate::VramError::MalformedModel) for a model file whose
/// header does not hold; the error of reading `bytes` ([`crate::ShardSource::fill`]).
pub fn sealed_table(
    name: Option<&Path>,
    bytes: &dyn crate::ShardSource,
) -> Result<Option<Vec<TensorInfo>>, crate::VramError> {
    const FIRST_GGUF_READ: u64 = 1 << 20;
    let len = bytes.len();
    let read_prefix = |n: u64| {
        let n = usize::try_from(n)
            .map_err(|_| crate::VramError::Unreachable("a header prefix fits in memory"))?;
        let mut head = vec![0u8; n];
        bytes.fill(0, &mut head)?;
        Ok::<_, crate::VramError>(head)
    };
    let probe = read_prefix(HEADER_PROBE_BYTES.saturating_add(1).min(len))?;
    let Some((kind, strict)) = table_kind(name, &probe, len) else {
        return Ok(None);
    };
    let parsed = match kind {
        TableKind::Safetensors => {
            let head = read_prefix(safetensors_extent(&probe, len))?;
            safetensors_table(&head, len).map_err(FormatError::Safetensors)
        }
        TableKind::Gguf => {
            let extent = HEADER_PREFIX_MAX.min(len);
            let mut size = FIRST_GGUF_READ.min(extent);
            loop {
                let head = read_prefix(size)?;
                match gguf_table(&head, len) {
                    // A prefix too short for the header fails somewhere: read more, up to all a
                    // header may take, and keep the answer of the longest read.
                    Err(_) if size < extent => size = size.saturating_mul(4).min(extent),
                    done => break done.map_err(FormatError::Gguf),
                }
            }
        }
    };
    match parsed {
        Ok((_, mut table)) => {
            table.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
            Ok(Some(table))
        }
        Err(e) if strict => Err(crate::VramError::MalformedModel(e)),
        Err(_) => Ok(None),
    }
}

/// Longest prefix read to recognise a model's format (a safetensors header is at most 100 MB).
pub const HEADER_PREFIX_MAX: u64 = 128 << 20;

/// Bytes [`header_extent`] needs to see first: a safetensors file's header length.
pub const HEADER_PROBE_BYTES: u64 = 8;

/// How many bytes from the start of a file of `file_len` bytes named `path` [`recognise`]
/// needs, given its first [`HEADER_PROBE_BYTES`] bytes `probe`: a safetensors file's 8-byte
/// length and JSON header, up to [`HEADER_PREFIX_MAX`] of anything else. Never more than
/// the file.
#[must_use]
pub fn header_extent(path: &Path, probe: &[u8], file_len: u64) -> u64 {
    if is_safetensors(path) {
        safetensors_extent(probe, file_len)
    } else {
        HEADER_PREFIX_MAX.min(file_len)
    }
}

/// A safetensors header's 8-byte length, from the first bytes of a file.
fn header_length(probe: &[u8]) -> Option<u64> {
    probe
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

/// The bytes a safetensors header takes (its length and its JSON, bounded), never more than
/// the file.
fn safetensors_extent(probe: &[u8], file_len: u64) -> u64 {
    header_length(probe)
        .unwrap_or(0)
        .min(HEADER_PREFIX_MAX)
        .saturating_add(HEADER_PROBE_BYTES)
        .min(file_len)
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

fn is_safetensors(path: &Path) -> bool {
    extension(path).as_deref() == Some("safetensors")
}

/// What a file is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum ModelFormat {
    /// A safetensors file.
    Safetensors {
        /// Number of tensors.
        tensors: usize,
        /// Bytes of tensor data.
        parameter_bytes: u64,
    },
    /// A GGUF file (llama.cpp).
    Gguf {
        /// GGUF version.
        version: u32,
        /// Number of tensors.
        tensors: u64,
        /// Bytes of tensor data, padding excluded.
        parameter_bytes: u64,
        /// Tensor types (ggml types, quantisations included) with their counts, by name.
        types: std::collections::BTreeMap<&'static str, u64>,
    },
    /// Any other file: sealed as bytes.
    Raw,
}

/// Recognises a model file of `file_len` bytes (named `path`) from its first bytes `head` (at
/// least the whole header); a malformed safetensors or GGUF header is an error.
///
/// # Errors
/// [`FormatError::LfsPointer`]; [`FormatError::Safetensors`] or [`FormatError::Gguf`] when the
/// header is malformed or the file is cut short.
pub fn recognise(path: &Path, head: &[u8], file_len: u64) -> Result<ModelFormat, FormatError> {
    if head.starts_with(b"version https://git-lfs.github.com/spec/") {
        return Err(FormatError::LfsPointer);
    }
    if head.starts_with(b"GGUF") || extension(path).as_deref() == Some("gguf") {
        return gguf(head, file_len).map_err(FormatError::Gguf);
    }
    if is_safetensors(path) {
        return safetensors(head, file_len).map_err(FormatError::Safetensors);
    }
    Ok(ModelFormat::Raw)
}

mod gguf;
mod metadata;
mod safetensors_header;
#[cfg(test)]
mod tests;

use gguf::{GGML_MAX_DIMS, gguf, gguf_table};
pub use metadata::{METADATA_MAGIC, METADATA_TAG, metadata_encoding};
use safetensors_header::{safetensors, safetensors_table};
