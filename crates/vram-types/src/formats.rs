//! Recognising model files: safetensors and GGUF headers are checked and summarised before any
//! VRAM is used, and their tensor tables read (a sealed file's shard carries its table, so an
//! engine finds each tensor inside it); any other file is sealed as plain bytes. [`header_extent`] is the one place
//! that knows how much of a file its header takes; [`recognise`] reads it, with a typed
//! [`FormatError`] for every way it can be wrong.

use std::path::Path;

use safetensors::tensor::Metadata;

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

/// A safetensors header's `__metadata__` entries (a header [`recognise`] accepted), sorted by
/// key bytes.
fn safetensors_metadata(head: &[u8]) -> Result<Vec<(String, String)>, HeaderProblem> {
    let (_, json) = safetensors_json(head)?;
    let metadata: Metadata =
        serde_json::from_slice(json).map_err(|e| HeaderProblem::Json(e.to_string()))?;
    let mut entries: Vec<(String, String)> = metadata
        .metadata()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(entries)
}

/// A GGUF header's key-value count and section bytes (a header [`recognise`] accepted).
fn gguf_metadata(head: &[u8]) -> Result<(u64, &[u8]), HeaderProblem> {
    let mut c = Cursor {
        bytes: head,
        pos: 0,
    };
    c.take(4)?; // magic
    c.u32()?; // version
    c.u64()?; // tensor count
    let kv_count = c.u64()?;
    let start = c.pos;
    gguf_key_values(&mut c, kv_count)?;
    let section = head
        .get(start..c.pos)
        .ok_or(HeaderProblem::Truncated(start))?;
    Ok((kv_count, section))
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

/// The header (`u64` LE length, JSON) checked by the `safetensors` crate's own validation
/// (contiguous offsets, sizes matching dtype and shape), and its data section against the file.
fn safetensors(head: &[u8], file_len: u64) -> Result<ModelFormat, HeaderProblem> {
    safetensors_table(head, file_len).map(|(format, _)| format)
}

/// A safetensors header's length (its first 8 bytes, little-endian) and its JSON.
fn safetensors_json(head: &[u8]) -> Result<(u64, &[u8]), HeaderProblem> {
    let n = head
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(HeaderProblem::NoHeaderLength)?;
    let json = usize::try_from(n)
        .ok()
        .and_then(|n| head.get(8..n.checked_add(8)?))
        .ok_or(HeaderProblem::HeaderBeyondFile)?;
    Ok((n, json))
}

/// The safetensors header and its tensor table (byte ranges from the start of the file).
fn safetensors_table(
    head: &[u8],
    file_len: u64,
) -> Result<(ModelFormat, Vec<TensorInfo>), HeaderProblem> {
    let (n, json) = safetensors_json(head)?;
    // serde_json keeps the last of two equal keys: refuse them, as the reference parser does.
    serde_json::from_slice::<UniqueKeys>(json).map_err(|e| {
        let text = e.to_string();
        match text.strip_prefix(DUPLICATE_TENSOR) {
            Some(rest) => HeaderProblem::DuplicateTensor(
                rest.split(" at line").next().unwrap_or(rest).to_owned(),
            ),
            None => HeaderProblem::Json(text),
        }
    })?;
    let metadata: Metadata =
        serde_json::from_slice(json).map_err(|e| HeaderProblem::Json(e.to_string()))?;
    let data = u64::try_from(metadata.data_len()).map_err(|_| HeaderProblem::LengthTooLarge(n))?;
    let available = file_len.saturating_sub(n.saturating_add(8));
    if n.checked_add(8).and_then(|h| h.checked_add(data)) != Some(file_len) {
        return Err(HeaderProblem::DataSize {
            needed: data,
            available,
            partial: available < data,
        });
    }
    let data_start = n.saturating_add(8);
    let table = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (start, end) = info.data_offsets;
            let to_u64 = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
            TensorInfo {
                dtype: format!("{:?}", info.dtype),
                shape: info.shape.iter().map(|&d| to_u64(d)).collect(),
                offset: data_start.saturating_add(to_u64(start)),
                bytes: to_u64(end.saturating_sub(start)),
                name,
            }
        })
        .collect();
    let format = ModelFormat::Safetensors {
        tensors: metadata.tensors().len(),
        parameter_bytes: data,
    };
    Ok((format, table))
}

/// How [`UniqueKeys`] reports a repeated key through serde's text-only custom error.
const DUPLICATE_TENSOR: &str = "duplicate tensor: ";

/// A JSON object whose top-level keys are all different (the values are not kept).
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!(
                            "{DUPLICATE_TENSOR}{}",
                            key.escape_debug()
                        )));
                    }
                }
                Ok(UniqueKeys)
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

/// GGUF metadata value types (`gguf_type` in ggml's `gguf.h`), by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GgufValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl GgufValueType {
    /// The table: every id GGUF defines.
    const ALL: [(u32, Self); 13] = [
        (0, Self::U8),
        (1, Self::I8),
        (2, Self::U16),
        (3, Self::I16),
        (4, Self::U32),
        (5, Self::I32),
        (6, Self::F32),
        (7, Self::Bool),
        (8, Self::String),
        (9, Self::Array),
        (10, Self::U64),
        (11, Self::I64),
        (12, Self::F64),
    ];

    fn from_id(id: u32) -> Result<Self, HeaderProblem> {
        Self::ALL
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, t)| *t)
            .ok_or(HeaderProblem::UnknownValueType(id))
    }

    /// Bytes of a value of a fixed-size type; `None` for strings and arrays.
    fn fixed_bytes(self) -> Option<u64> {
        match self {
            Self::U8 | Self::I8 | Self::Bool => Some(1),
            Self::U16 | Self::I16 => Some(2),
            Self::U32 | Self::I32 | Self::F32 => Some(4),
            Self::U64 | Self::I64 | Self::F64 => Some(8),
            Self::String | Self::Array => None,
        }
    }
}

/// A bounds-checked little-endian reader.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], HeaderProblem> {
        let too_large = HeaderProblem::LengthTooLarge(n);
        let n = usize::try_from(n).map_err(|_| too_large.clone())?;
        let end = self.pos.checked_add(n).ok_or(too_large)?;
        let out = self
            .bytes
            .get(self.pos..end)
            .ok_or(HeaderProblem::Truncated(self.pos))?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], HeaderProblem> {
        let at = self.pos;
        self.take(u64::try_from(N).unwrap_or(u64::MAX))?
            .try_into()
            .map_err(|_| HeaderProblem::Truncated(at))
    }

    fn u32(&mut self) -> Result<u32, HeaderProblem> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, HeaderProblem> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<&'a [u8], HeaderProblem> {
        let len = self.u64()?;
        self.take(len)
    }

    fn remaining(&self) -> u64 {
        u64::try_from(self.bytes.len().saturating_sub(self.pos)).unwrap_or(u64::MAX)
    }

    /// Skips one value of GGUF type `kind`; returns it as u64 when it is an unsigned integer of
    /// 32 or 64 bits.
    fn skip_value(&mut self, kind: u32, depth: u32) -> Result<Option<u64>, HeaderProblem> {
        let kind = GgufValueType::from_id(kind)?;
        match kind {
            GgufValueType::String => {
                self.string()?;
                Ok(None)
            }
            GgufValueType::Array => {
                if depth > 2 {
                    return Err(HeaderProblem::NestedTooDeeply);
                }
                let elem = self.u32()?;
                let count = self.u64()?;
                if count > self.remaining() {
                    return Err(HeaderProblem::ArrayBeyondFile(count));
                }
                for _ in 0..count {
                    self.skip_value(elem, depth.saturating_add(1))?;
                }
                Ok(None)
            }
            fixed => {
                let raw = self.take(fixed.fixed_bytes().unwrap_or(0))?;
                Ok(match fixed {
                    GgufValueType::U32 => raw
                        .try_into()
                        .ok()
                        .map(|b| u64::from(u32::from_le_bytes(b))),
                    GgufValueType::U64 => raw.try_into().ok().map(u64::from_le_bytes),
                    _ => None,
                })
            }
        }
    }
}

/// ggml tensor types: `(id, name, elements per block, bytes per block)`, as the official
/// `gguf` Python package lists them (`GGML_QUANT_SIZES`); ids missing here were removed from
/// ggml and are refused.
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
];

/// ggml's limit on tensor dimensions.
const GGML_MAX_DIMS: u32 = 4;

/// One tensor's entry in a GGUF header.
struct GgufTensor<'a> {
    name: &'a [u8],
    type_name: &'static str,
    shape: Vec<u64>,
    offset: u64,
    bytes: u64,
}

fn gguf_tensor<'a>(c: &mut Cursor<'a>, alignment: u64) -> Result<GgufTensor<'a>, HeaderProblem> {
    let name = c.string()?;
    let tensor = || shown(name);
    let dims = c.u32()?;
    if dims > GGML_MAX_DIMS {
        return Err(HeaderProblem::TooManyDimensions {
            tensor: tensor(),
            dims,
        });
    }
    let mut shape = Vec::new();
    for _ in 0..dims {
        shape.push(c.u64()?);
    }
    let kind = c.u32()?;
    let offset = c.u64()?;
    let &(_, type_name, block, block_bytes) = GGML_TYPES
        .iter()
        .find(|(id, ..)| *id == kind)
        .ok_or_else(|| HeaderProblem::UnknownTensorType {
            tensor: tensor(),
            kind,
        })?;
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&e| i64::try_from(e).is_ok())
        .ok_or_else(|| HeaderProblem::SizeOverflow(tensor()))?;
    // ggml quantises rows: the first dimension holds whole blocks.
    let row = shape.first().copied().unwrap_or(1);
    if row.checked_rem(block) != Some(0) {
        return Err(HeaderProblem::PartialBlock {
            tensor: tensor(),
            type_name,
            row,
            block,
        });
    }
    let bytes = elements
        .checked_div(block)
        .and_then(|blocks| blocks.checked_mul(block_bytes))
        .ok_or_else(|| HeaderProblem::SizeOverflow(tensor()))?;
    if offset.checked_rem(alignment) != Some(0) {
        return Err(HeaderProblem::Misaligned {
            tensor: tensor(),
            offset,
            alignment,
        });
    }
    Ok(GgufTensor {
        name,
        type_name,
        shape,
        offset,
        bytes,
    })
}

/// The GGUF header, and every tensor checked against the data section as the official readers
/// do: known ggml type, at most 4 dimensions, no overflowing element count, whole blocks per
/// row, aligned offset, tensors back to back in table order, bytes inside the file, no
/// duplicate name. A file with no tensors
/// (a vocabulary-only GGUF) needs no data section.
fn gguf(bytes: &[u8], file_len: u64) -> Result<ModelFormat, HeaderProblem> {
    gguf_table(bytes, file_len).map(|(format, _)| format)
}

/// Reads the GGUF metadata section at `c` (`kv_count` pairs): no key twice; returns the data
/// alignment it sets (32 by default).
fn gguf_key_values(c: &mut Cursor<'_>, kv_count: u64) -> Result<u64, HeaderProblem> {
    let mut alignment = 32u64;
    let mut keys = std::collections::HashSet::new();
    for _ in 0..kv_count {
        let key = c.string()?;
        if !keys.insert(key) {
            return Err(HeaderProblem::DuplicateKey(shown(key)));
        }
        let kind = c.u32()?;
        let value = c.skip_value(kind, 0)?;
        if key == b"general.alignment" {
            alignment = value
                .filter(|a| a.is_power_of_two())
                .ok_or(HeaderProblem::BadAlignment)?;
        }
    }
    Ok(alignment)
}

/// The GGUF header and its tensor table (byte ranges from the start of the file).
fn gguf_table(
    bytes: &[u8],
    file_len: u64,
) -> Result<(ModelFormat, Vec<TensorInfo>), HeaderProblem> {
    let mut c = Cursor { bytes, pos: 0 };
    if c.take(4)? != b"GGUF" {
        return Err(HeaderProblem::NoMagic);
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(HeaderProblem::UnsupportedVersion(version));
    }
    let tensors = c.u64()?;
    let kv_count = c.u64()?;
    if tensors > c.remaining() || kv_count > c.remaining() {
        return Err(HeaderProblem::CountsBeyondFile);
    }
    let alignment = gguf_key_values(&mut c, kv_count)?;
    let mut names = std::collections::HashSet::new();
    let mut types = std::collections::BTreeMap::new();
    // `next`: where the next tensor must start (the last one's end, padded to the alignment).
    let (mut parameter_bytes, mut data_needed, mut next) = (0u64, 0u64, 0u64);
    let mut table = Vec::new();
    for _ in 0..tensors {
        let t = gguf_tensor(&mut c, alignment)?;
        if !names.insert(t.name) {
            return Err(HeaderProblem::DuplicateTensor(shown(t.name)));
        }
        if t.offset != next {
            return Err(HeaderProblem::TensorOffset {
                tensor: shown(t.name),
                offset: t.offset,
                expected: next,
            });
        }
        let count = types.entry(t.type_name).or_insert(0u64);
        *count = count.saturating_add(1);
        parameter_bytes = parameter_bytes.saturating_add(t.bytes);
        let end = t
            .offset
            .checked_add(t.bytes)
            .ok_or_else(|| HeaderProblem::SizeOverflow(shown(t.name)))?;
        data_needed = end;
        next = end
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or_else(|| HeaderProblem::SizeOverflow(shown(t.name)))?;
        table.push(TensorInfo {
            name: String::from_utf8(t.name.to_vec())
                .map_err(|_| HeaderProblem::NonUtf8Name(shown(t.name)))?,
            dtype: t.type_name.to_owned(),
            shape: t.shape,
            offset: t.offset,
            bytes: t.bytes,
        });
    }
    let header_end = u64::try_from(c.pos).unwrap_or(u64::MAX);
    if tensors > 0 {
        let data_start = header_end
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or(HeaderProblem::BadAlignment)?;
        for t in &mut table {
            t.offset = t.offset.saturating_add(data_start);
        }
        let available = file_len.saturating_sub(data_start);
        if data_needed > available {
            return Err(HeaderProblem::DataSize {
                needed: data_needed,
                available,
                partial: true,
            });
        }
    }
    let format = ModelFormat::Gguf {
        version,
        tensors,
        parameter_bytes,
        types,
    };
    Ok((format, table))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "tests"
)]
mod tests {
    use super::*;

    fn gguf_file(tensors: u64, data: usize) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // one kv
        b.extend(4u64.to_le_bytes());
        b.extend(b"name");
        b.extend(8u32.to_le_bytes());
        b.extend(3u64.to_le_bytes());
        b.extend(b"toy");
        for i in 0..tensors {
            let name = format!("t{i}");
            b.extend((name.len() as u64).to_le_bytes());
            b.extend(name.as_bytes());
            b.extend(1u32.to_le_bytes());
            b.extend(4u64.to_le_bytes());
            b.extend(0u32.to_le_bytes());
            b.extend((i * 32).to_le_bytes());
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend(vec![1u8; data]);
        b
    }

    #[test]
    fn gguf_header_is_summarised() {
        let f = gguf_file(2, 64);
        assert_eq!(
            recognise(Path::new("m.gguf"), &f, f.len() as u64).unwrap(),
            ModelFormat::Gguf {
                version: 3,
                tensors: 2,
                parameter_bytes: 32,
                types: [("F32", 2)].into_iter().collect(),
            }
        );
    }

    #[test]
    fn malformed_headers_are_errors() {
        let f = gguf_file(2, 32);
        assert!(
            recognise(Path::new("m.gguf"), &f[..40], 40)
                .unwrap_err()
                .to_string()
                .contains("GGUF")
        );
        assert!(recognise(Path::new("m.gguf"), b"GGUF\x01\0\0\0", 8).is_err());
        assert!(
            recognise(
                Path::new("x.safetensors"),
                b"\xff\xff\xff\xff\xff\xff\xff\xff{",
                9
            )
            .is_err()
        );
        assert_eq!(
            recognise(Path::new("weights.bin"), b"anything", 8).unwrap(),
            ModelFormat::Raw
        );
    }

    fn fixture(name: &str) -> Result<ModelFormat, FormatError> {
        // The fixtures live with the command that reads model files most.
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../vramctl/tests/data/models")
            .join(name);
        let bytes = std::fs::read(&path).unwrap();
        recognise(&path, &bytes, bytes.len() as u64)
    }

    #[test]
    fn files_from_the_official_writers_are_read_as_the_official_readers_read_them() {
        // tests/data/models/make_fixtures.py: gguf-py's GGUFWriter and the safetensors library.
        let tiny = fixture("tiny.gguf").unwrap();
        assert_eq!(
            tiny,
            ModelFormat::Gguf {
                version: 3,
                tensors: 3,
                parameter_bytes: 256 + 64 + 68,
                types: [("F16", 1), ("F32", 1), ("Q8_0", 1)].into_iter().collect(),
            }
        );
        for vocab in ["vocab-only.gguf", "vocab-only-unpadded.gguf"] {
            assert!(
                matches!(
                    fixture(vocab),
                    Ok(ModelFormat::Gguf {
                        tensors: 0,
                        parameter_bytes: 0,
                        ..
                    })
                ),
                "{vocab}: {:?}",
                fixture(vocab)
            );
        }
        assert_eq!(
            fixture("tiny.safetensors").unwrap(),
            ModelFormat::Safetensors {
                tensors: 2,
                parameter_bytes: 24 + 6
            }
        );
    }

    #[test]
    fn broken_gguf_files_that_the_official_reader_refuses_are_refused() {
        for (name, needle) in [
            ("truncated.gguf", "partial download"),
            ("header-only.gguf", "partial download"),
            ("bad-type.gguf", "unknown ggml type 99"),
            ("bad-offset.gguf", "starts at data offset 1000000000000"),
        ] {
            let e = fixture(name).unwrap_err().to_string();
            assert!(e.contains(needle), "{name}: {e}");
        }
        assert!(matches!(
            fixture("bad-type.gguf"),
            Err(FormatError::Gguf(HeaderProblem::UnknownTensorType {
                kind: 99,
                ..
            }))
        ));
        let e = fixture("lfs-pointer.gguf").unwrap_err();
        assert_eq!(e, FormatError::LfsPointer);
        assert!(e.to_string().contains("git lfs pull"), "{e}");
    }

    #[test]
    fn duplicate_tensor_names_are_refused_in_both_formats() {
        let mut f = gguf_file(2, 64);
        let second = f.windows(2).rposition(|w| w == b"t1").unwrap();
        f[second + 1] = b'0';
        let e = recognise(Path::new("m.gguf"), &f, f.len() as u64).unwrap_err();
        assert!(e.to_string().contains("\"t0\" appears twice"), "{e}");
        let json = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut st = (json.len() as u64).to_le_bytes().to_vec();
        st.extend_from_slice(json);
        st.extend_from_slice(&[0; 4]);
        let e = recognise(Path::new("m.safetensors"), &st, st.len() as u64).unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");
        assert_eq!(
            e,
            FormatError::Safetensors(HeaderProblem::DuplicateTensor("w".into()))
        );
    }

    #[test]
    fn gguf_tensors_are_checked_against_the_type_table() {
        // Row of 4 F32 elements: fine. Q4_K (256-element blocks) with a 4-element row: refused.
        let mut f = gguf_file(1, 64);
        let pos = find_type_field(&f);
        f[pos..pos + 4].copy_from_slice(&12u32.to_le_bytes());
        let e = recognise(Path::new("m.gguf"), &f, f.len() as u64).unwrap_err();
        assert!(e.to_string().contains("not a multiple of 256"), "{e}");
    }

    #[test]
    fn gguf_tensors_lie_back_to_back_so_none_share_bytes_or_leave_gaps() {
        // Two 16-byte tensors padded to 32: the second starts at 32. At 0 both would be counted
        // in 16 bytes of data (found by the `model_header` fuzz target); at 64 a gap is left.
        let whole = gguf_file(2, 64);
        assert!(recognise(Path::new("m.gguf"), &whole, whole.len() as u64).is_ok());
        for second in [0u64, 16, 64] {
            let mut f = gguf_file(2, 64);
            let name = f.windows(2).position(|w| w == b"t1").unwrap();
            let pos = name + 2 + 4 + 8 + 4;
            f[pos..pos + 8].copy_from_slice(&second.to_le_bytes());
            let e = recognise(Path::new("m.gguf"), &f, f.len() as u64).unwrap_err();
            assert!(
                matches!(
                    &e,
                    FormatError::Gguf(HeaderProblem::TensorOffset { tensor, offset, expected: 32 })
                        if tensor == "t1" && *offset == second
                ) || matches!(&e, FormatError::Gguf(HeaderProblem::Misaligned { .. })),
                "offset {second}: {e:?}"
            );
        }
    }

    /// Offset of the first tensor's type field in a `gguf_file`.
    fn find_type_field(f: &[u8]) -> usize {
        let name = f.windows(2).position(|w| w == b"t0").unwrap();
        name + 2 + 4 + 8
    }

    #[test]
    fn safetensors_is_checked_from_its_header_and_the_file_length() {
        use safetensors::tensor::{Dtype, TensorView};
        let data = vec![0u8; 4 * 6];
        let view = TensorView::new(Dtype::F32, vec![2, 3], &data).unwrap();
        let file = safetensors::serialize([("w", view)], None).unwrap();
        let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
        let head = &file[..8 + n]; // what `read_head` reads: no tensor data
        let len = file.len() as u64;
        assert_eq!(
            recognise(Path::new("m.safetensors"), head, len).unwrap(),
            ModelFormat::Safetensors {
                tensors: 1,
                parameter_bytes: 24
            }
        );
        let truncated = recognise(Path::new("m.safetensors"), head, len - 1).unwrap_err();
        assert!(
            truncated.to_string().contains("need 24 bytes"),
            "{truncated}"
        );
        assert!(recognise(Path::new("m.safetensors"), &head[..8 + n - 1], len).is_err());
    }

    #[test]
    fn the_header_extent_is_the_safetensors_header_or_a_bounded_prefix() {
        let probe = 100u64.to_le_bytes();
        assert_eq!(
            header_extent(Path::new("a.safetensors"), &probe, 1 << 20),
            108
        );
        assert_eq!(header_extent(Path::new("a.safetensors"), &probe, 50), 50);
        assert_eq!(
            header_extent(
                Path::new("a.safetensors"),
                &u64::MAX.to_le_bytes(),
                u64::MAX
            ),
            HEADER_PREFIX_MAX + 8
        );
        assert_eq!(
            header_extent(Path::new("a.gguf"), b"GGUF\x03\0\0\0", 1 << 40),
            HEADER_PREFIX_MAX
        );
        assert_eq!(header_extent(Path::new("a.bin"), b"", 10), 10);
    }

    #[test]
    fn gguf_value_types_follow_the_table() {
        for (id, t) in GgufValueType::ALL {
            assert_eq!(GgufValueType::from_id(id), Ok(t));
        }
        assert_eq!(
            GgufValueType::from_id(13),
            Err(HeaderProblem::UnknownValueType(13))
        );
        assert_eq!(GgufValueType::Bool.fixed_bytes(), Some(1));
        assert_eq!(GgufValueType::F64.fixed_bytes(), Some(8));
        assert_eq!(GgufValueType::String.fixed_bytes(), None);
    }

    #[test]
    fn tensor_tables_give_each_tensors_byte_range() {
        // GGUF: two F32 tensors of 4 elements at relative offsets 0 and 32, data aligned to 32.
        let f = gguf_file(2, 64);
        let table = tensor_table(Path::new("m.gguf"), &f, f.len() as u64)
            .unwrap()
            .unwrap();
        let data_start = (f.len() - 64) as u64;
        assert_eq!(table.len(), 2);
        for (i, t) in table.iter().enumerate() {
            assert_eq!(t.name, format!("t{i}"));
            assert_eq!(
                (t.dtype.as_str(), t.shape.as_slice(), t.bytes),
                ("F32", &[4u64][..], 16)
            );
            assert_eq!(t.offset, data_start + 32 * i as u64);
        }
        // safetensors: the range holds exactly the tensor's bytes.
        use safetensors::tensor::{Dtype, TensorView};
        let data: Vec<u8> = (0..24u8).collect();
        let view = TensorView::new(Dtype::F32, vec![2, 3], &data).unwrap();
        let file = safetensors::serialize([("w", view)], None).unwrap();
        let table = tensor_table(Path::new("m.safetensors"), &file, file.len() as u64)
            .unwrap()
            .unwrap();
        let t = &table[0];
        assert_eq!(
            (t.name.as_str(), t.dtype.as_str(), t.shape.as_slice()),
            ("w", "F32", &[2u64, 3][..])
        );
        let range = &file[t.offset as usize..(t.offset + t.bytes) as usize];
        assert_eq!(range, data.as_slice());
        // Raw files have no table.
        assert_eq!(tensor_table(Path::new("x.bin"), b"abc", 3).unwrap(), None);
    }

    /// Bytes that record the length of every read.
    struct Recorded<'a> {
        bytes: &'a [u8],
        reads: std::sync::Mutex<Vec<usize>>,
    }

    impl crate::ShardSource for Recorded<'_> {
        fn len(&self) -> u64 {
            self.bytes.len() as u64
        }

        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            self.reads.lock().unwrap().push(buf.len());
            self.bytes.read_at(offset, buf)
        }
    }

    /// A source whose every read fails.
    struct Unreadable;

    impl crate::ShardSource for Unreadable {
        fn len(&self) -> u64 {
            100
        }

        fn read_at(&self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
            Err(std::io::Error::other("device lost"))
        }
    }

    /// `sealed_table` over `bytes`, with the length of every read it made.
    fn sealed(
        name: Option<&str>,
        bytes: &[u8],
    ) -> (
        Result<Option<Vec<TensorInfo>>, crate::VramError>,
        Vec<usize>,
    ) {
        let recorded = Recorded {
            bytes,
            reads: std::sync::Mutex::new(Vec::new()),
        };
        let result = sealed_table(name.map(Path::new), &recorded);
        (result, recorded.reads.into_inner().unwrap())
    }

    #[test]
    fn a_sealed_table_is_read_by_name_or_content_and_sorted() {
        // GGUF with a header over 1 MiB: read in growing prefixes, after a 9-byte probe.
        let f = gguf_file(60_000, 60_000 * 32);
        let (table, reads) = sealed(Some("m.gguf"), &f);
        let table = table.unwrap().unwrap();
        assert_eq!(
            reads,
            [9, 1 << 20, f.len()],
            "4 MiB, or the whole when shorter"
        );
        let mut expected = tensor_table(Path::new("m.gguf"), &f, f.len() as u64)
            .unwrap()
            .unwrap();
        expected.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(table, expected);
        // A small header takes one read after the probe; unnamed bytes with the magic too.
        let small = gguf_file(2, 64);
        let (table, reads) = sealed(None, &small);
        assert_eq!(table.unwrap().unwrap().len(), 2);
        assert_eq!(reads, [9, small.len()]);

        // A named file whose header does not hold is refused; unnamed, it is plain bytes.
        let mut cut = small.clone();
        cut.truncate(small.len() - 40); // 24 of the 48 data bytes the tensors need
        let (named, _) = sealed(Some("m.gguf"), &cut);
        assert!(
            matches!(
                named,
                Err(crate::VramError::MalformedModel(FormatError::Gguf(
                    HeaderProblem::DataSize { .. }
                )))
            ),
            "{named:?}"
        );
        assert_eq!(sealed(None, &cut).0.unwrap(), None);

        // safetensors: by name, or by content (a length within the bytes, then `{`).
        use safetensors::tensor::{Dtype, TensorView};
        let data: Vec<u8> = (0..24u8).collect();
        let view = TensorView::new(Dtype::F32, vec![2, 3], &data).unwrap();
        let file = safetensors::serialize([("w", view)], None).unwrap();
        for name in [Some("m.safetensors"), None] {
            let (table, reads) = sealed(name, &file);
            assert_eq!(table.unwrap().unwrap()[0].name, "w");
            assert_eq!(reads, [9, file.len() - 24], "the probe, then the header");
        }
        assert!(
            sealed(Some("m.safetensors"), &file[..file.len() - 1])
                .0
                .is_err()
        );
        assert_eq!(sealed(None, &file[..file.len() - 1]).0.unwrap(), None);

        // Anything else: the probe alone, no table, whatever its name.
        for name in [Some("weights.bin"), None] {
            let (table, reads) = sealed(name, b"plain bytes, not a model");
            assert_eq!((table.unwrap(), reads), (None, vec![9]));
        }
        assert_eq!(sealed(None, b"").0.unwrap(), None);
        // A read that fails fails the whole.
        let failing = sealed_table(None, &Unreadable);
        assert!(
            matches!(
                failing,
                Err(crate::VramError::SourceReadFailed { offset: 0, .. })
            ),
            "{failing:?}"
        );
    }
}
