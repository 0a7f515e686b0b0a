//! What model files are made of, as the other crates see them: a file's format, its tensor
//! table, and every way its header can be wrong. The parsers that produce them are in
//! `vram-formats`; the types are here because a sealed shard carries its table and
//! [`VramError::MalformedModel`](crate::VramError::MalformedModel) carries a [`FormatError`].

/// ggml's limit on tensor dimensions.
pub const GGML_MAX_DIMS: u32 = 4;

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
