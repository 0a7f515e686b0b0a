//! Model files, recognised before any VRAM is used: safetensors and GGUF headers checked and
//! summarised, and their tensor tables read (a sealed file's shard carries its table, so an
//! engine finds each tensor inside it); any other file is sealed as plain bytes.
//! [`header_extent`] is the one place that knows how much of a file its header takes;
//! [`recognise`] reads it, with a typed [`FormatError`] for every way it can be wrong;
//! [`metadata_encoding`] is what the metadata digest (`vram-meta-v1`) covers.
//!
//! The types (`TensorInfo`, `FormatError`, `ModelFormat`) live in `vram-types`, which a sealed
//! shard and `VramError` need; this crate holds the parsers, alone so they can be fuzzed alone.
#![forbid(unsafe_code)]

use std::path::Path;

pub use vram_types::formats::{FormatError, HeaderProblem, ModelFormat, TensorInfo};

/// A name from a file, as errors show it: lossy UTF-8, escaped.
pub(crate) fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).escape_debug().to_string()
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
/// [`VramError::MalformedModel`](vram_types::VramError::MalformedModel) for a model file whose
/// header does not hold; the error of reading `bytes` ([`vram_types::ShardSource::fill`]).
pub fn sealed_table(
    name: Option<&Path>,
    bytes: &dyn vram_types::ShardSource,
) -> Result<Option<Vec<TensorInfo>>, vram_types::VramError> {
    const FIRST_GGUF_READ: u64 = 1 << 20;
    let len = bytes.len();
    let read_prefix = |n: u64| {
        let n = usize::try_from(n)
            .map_err(|_| vram_types::VramError::Unreachable("a header prefix fits in memory"))?;
        let mut head = vec![0u8; n];
        bytes.fill(0, &mut head)?;
        Ok::<_, vram_types::VramError>(head)
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
        Err(e) if strict => Err(vram_types::VramError::MalformedModel(e)),
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

use gguf::{gguf, gguf_table};
pub use metadata::{METADATA_MAGIC, METADATA_TAG, metadata_encoding};
use safetensors_header::{safetensors, safetensors_table};
