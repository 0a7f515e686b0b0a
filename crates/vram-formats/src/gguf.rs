//! GGUF headers: the key-value section and the tensor records, checked as the official readers
//! check them, read into a tensor table.

use super::{HeaderProblem, ModelFormat, TensorInfo, shown};
use vram_types::formats::GGML_MAX_DIMS;

/// GGUF metadata value types (`gguf_type` in ggml's `gguf.h`), by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GgufValueType {
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
    pub(super) const ALL: [(u32, Self); 13] = [
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

    pub(super) fn from_id(id: u32) -> Result<Self, HeaderProblem> {
        Self::ALL
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, t)| *t)
            .ok_or(HeaderProblem::UnknownValueType(id))
    }

    /// Bytes of a value of a fixed-size type; `None` for strings and arrays.
    pub(super) fn fixed_bytes(self) -> Option<u64> {
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
pub(super) fn gguf(bytes: &[u8], file_len: u64) -> Result<ModelFormat, HeaderProblem> {
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
pub(super) fn gguf_table(
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

/// A GGUF header's key-value count and section bytes (a header [`recognise`] accepted).
pub(super) fn gguf_metadata(head: &[u8]) -> Result<(u64, &[u8]), HeaderProblem> {
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
