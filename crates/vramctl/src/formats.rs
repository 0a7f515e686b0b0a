//! Recognising model files: safetensors and GGUF headers are checked and summarised before any
//! VRAM is used; any other file is sealed as plain bytes.

use std::path::Path;

use safetensors::tensor::Metadata;
use serde::Serialize;

/// What a file is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

impl ModelFormat {
    /// One line for operators: format, tensor count, types, parameter bytes.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Safetensors {
                tensors,
                parameter_bytes,
            } => format!(
                "safetensors, {tensors} tensors, {} of parameters",
                crate::units::human_bytes(*parameter_bytes)
            ),
            Self::Gguf {
                version,
                tensors,
                parameter_bytes,
                types,
            } => {
                let types: Vec<String> = types.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
                format!(
                    "GGUF v{version}, {tensors} tensors{}, {} of parameters",
                    if types.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", types.join(", "))
                    },
                    crate::units::human_bytes(*parameter_bytes)
                )
            }
            Self::Raw => "raw bytes".to_owned(),
        }
    }
}

/// Recognises a model file of `file_len` bytes (named `path`) from its first bytes `head` (at
/// least the whole header); a malformed safetensors or GGUF header is an error.
///
/// # Errors
/// A one-line reason when a safetensors or GGUF header is malformed, or the file is cut short.
pub fn recognise(path: &Path, head: &[u8], file_len: u64) -> Result<ModelFormat, String> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if head.starts_with(b"version https://git-lfs.github.com/spec/") {
        return Err("this is a Git LFS pointer, not the model: run `git lfs pull`".to_owned());
    }
    if head.starts_with(b"GGUF") || extension.as_deref() == Some("gguf") {
        return gguf(head, file_len).map_err(|e| format!("malformed GGUF header: {e}"));
    }
    if extension.as_deref() == Some("safetensors") {
        return safetensors(head, file_len)
            .map_err(|e| format!("malformed safetensors header: {e}"));
    }
    Ok(ModelFormat::Raw)
}

/// The header (`u64` LE length, JSON) checked by the `safetensors` crate's own validation
/// (contiguous offsets, sizes matching dtype and shape), and its data section against the file.
fn safetensors(head: &[u8], file_len: u64) -> Result<ModelFormat, String> {
    let n = head
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or("shorter than the 8-byte header length")?;
    let json = usize::try_from(n)
        .ok()
        .and_then(|n| head.get(8..n.checked_add(8)?))
        .ok_or("header length exceeds the file")?;
    // serde_json keeps the last of two equal keys: refuse them, as the reference parser does.
    serde_json::from_slice::<UniqueKeys>(json).map_err(|e| format!("bad header: {e}"))?;
    let metadata: Metadata =
        serde_json::from_slice(json).map_err(|e| format!("bad header: {e}"))?;
    let data = u64::try_from(metadata.data_len()).map_err(|_| "size")?;
    if n.checked_add(8).and_then(|h| h.checked_add(data)) != Some(file_len) {
        return Err(format!(
            "the tensors need {data} bytes of data after the header, the file has {}",
            file_len.saturating_sub(n.saturating_add(8))
        ));
    }
    Ok(ModelFormat::Safetensors {
        tensors: metadata.tensors().len(),
        parameter_bytes: data,
    })
}

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
                            "tensor \"{}\" appears twice",
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

/// A bounds-checked little-endian reader.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "length too large".to_owned())?;
        let end = self.pos.checked_add(n).ok_or("length overflows")?;
        let out = self
            .bytes
            .get(self.pos..end)
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let n = u64::try_from(N).map_err(|_| "size")?;
        self.take(n)?
            .try_into()
            .map_err(|_| "short read".to_owned())
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<&'a [u8], String> {
        let len = self.u64()?;
        self.take(len)
    }

    fn remaining(&self) -> u64 {
        u64::try_from(self.bytes.len().saturating_sub(self.pos)).unwrap_or(u64::MAX)
    }

    /// Skips one value of GGUF type `kind`; returns it as u64 when it is an unsigned integer.
    fn skip_value(&mut self, kind: u32, depth: u32) -> Result<Option<u64>, String> {
        let fixed = match kind {
            0 | 1 | 7 => 1, // u8, i8, bool
            2 | 3 => 2,     // u16, i16
            4..=6 => 4,     // u32, i32, f32
            10..=12 => 8,   // u64, i64, f64
            8 => {
                self.string()?;
                return Ok(None);
            }
            9 => {
                if depth > 2 {
                    return Err("arrays nested too deeply".into());
                }
                let elem = self.u32()?;
                let count = self.u64()?;
                if count > self.remaining() {
                    return Err(format!("array of {count} elements exceeds the file"));
                }
                for _ in 0..count {
                    self.skip_value(elem, depth.saturating_add(1))?;
                }
                return Ok(None);
            }
            other => return Err(format!("unknown value type {other}")),
        };
        let raw = self.take(fixed)?;
        Ok(match kind {
            4 => raw
                .try_into()
                .ok()
                .map(|b| u64::from(u32::from_le_bytes(b))),
            10 => raw.try_into().ok().map(u64::from_le_bytes),
            _ => None,
        })
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
    offset: u64,
    bytes: u64,
}

fn gguf_tensor<'a>(c: &mut Cursor<'a>, alignment: u64) -> Result<GgufTensor<'a>, String> {
    let name = c.string()?;
    let shown = String::from_utf8_lossy(name).escape_debug().to_string();
    let dims = c.u32()?;
    if dims > GGML_MAX_DIMS {
        return Err(format!(
            "tensor \"{shown}\" has {dims} dimensions (at most {GGML_MAX_DIMS})"
        ));
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
        .ok_or_else(|| format!("tensor \"{shown}\" has unknown ggml type {kind}"))?;
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&e| i64::try_from(e).is_ok())
        .ok_or_else(|| format!("tensor \"{shown}\": element count overflows"))?;
    // ggml quantises rows: the first dimension holds whole blocks.
    if shape.first().copied().unwrap_or(1).checked_rem(block) != Some(0) {
        return Err(format!(
            "tensor \"{shown}\" of type {type_name} has rows of {} elements, not a multiple of {block}",
            shape.first().copied().unwrap_or(1)
        ));
    }
    let bytes = elements
        .checked_div(block)
        .and_then(|blocks| blocks.checked_mul(block_bytes))
        .ok_or_else(|| format!("tensor \"{shown}\": byte size overflows"))?;
    if offset.checked_rem(alignment) != Some(0) {
        return Err(format!(
            "tensor \"{shown}\" at offset {offset}, not a multiple of the alignment {alignment}"
        ));
    }
    Ok(GgufTensor {
        name,
        type_name,
        offset,
        bytes,
    })
}

/// The GGUF header, and every tensor checked against the data section as the official readers
/// do: known ggml type, at most 4 dimensions, no overflowing element count, whole blocks per
/// row, aligned offset, bytes inside the file, no duplicate name. A file with no tensors
/// (a vocabulary-only GGUF) needs no data section.
fn gguf(bytes: &[u8], file_len: u64) -> Result<ModelFormat, String> {
    let mut c = Cursor { bytes, pos: 0 };
    if c.take(4)? != b"GGUF" {
        return Err("missing GGUF magic".into());
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "unsupported version {version} (2 and 3 are supported)"
        ));
    }
    let tensors = c.u64()?;
    let kv_count = c.u64()?;
    if tensors > c.remaining() || kv_count > c.remaining() {
        return Err("counts exceed the file size".into());
    }
    let mut alignment = 32u64;
    let mut keys = std::collections::HashSet::new();
    for _ in 0..kv_count {
        let key = c.string()?;
        if !keys.insert(key) {
            return Err(format!(
                "metadata key \"{}\" appears twice",
                String::from_utf8_lossy(key).escape_debug()
            ));
        }
        let kind = c.u32()?;
        let value = c.skip_value(kind, 0)?;
        if key == b"general.alignment" {
            alignment = value
                .filter(|a| a.is_power_of_two())
                .ok_or("bad general.alignment")?;
        }
    }
    let mut names = std::collections::HashSet::new();
    let mut types = std::collections::BTreeMap::new();
    let (mut parameter_bytes, mut data_needed) = (0u64, 0u64);
    for _ in 0..tensors {
        let t = gguf_tensor(&mut c, alignment)?;
        if !names.insert(t.name) {
            return Err(format!(
                "tensor \"{}\" appears twice",
                String::from_utf8_lossy(t.name).escape_debug()
            ));
        }
        let count = types.entry(t.type_name).or_insert(0u64);
        *count = count.saturating_add(1);
        parameter_bytes = parameter_bytes.saturating_add(t.bytes);
        let end = t
            .offset
            .checked_add(t.bytes)
            .ok_or("tensor offset overflows")?;
        data_needed = data_needed.max(end);
    }
    let header_end = u64::try_from(c.pos).map_err(|_| "size")?;
    if tensors > 0 {
        let data_start = header_end
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or("alignment overflows")?;
        let available = file_len.saturating_sub(data_start);
        if data_needed > available {
            return Err(format!(
                "the tensors need {data_needed} bytes of data after the header, the file has {available} (a partial download?)"
            ));
        }
    }
    Ok(ModelFormat::Gguf {
        version,
        tensors,
        parameter_bytes,
        types,
    })
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

    fn fixture(name: &str) -> Result<ModelFormat, String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/models")
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
        assert_eq!(
            tiny.describe(),
            "GGUF v3, 3 tensors (F16 ×1, F32 ×1, Q8_0 ×1), 388 B of parameters"
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
            ("bad-offset.gguf", "partial download"),
        ] {
            let e = fixture(name).unwrap_err();
            assert!(e.contains(needle), "{name}: {e}");
        }
        let e = fixture("lfs-pointer.gguf").unwrap_err();
        assert!(e.contains("git lfs pull"), "{e}");
    }

    #[test]
    fn duplicate_tensor_names_are_refused_in_both_formats() {
        let mut f = gguf_file(2, 64);
        let second = f.windows(2).rposition(|w| w == b"t1").unwrap();
        f[second + 1] = b'0';
        let e = recognise(Path::new("m.gguf"), &f, f.len() as u64).unwrap_err();
        assert!(e.contains("\"t0\" appears twice"), "{e}");
        let json = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut st = (json.len() as u64).to_le_bytes().to_vec();
        st.extend_from_slice(json);
        st.extend_from_slice(&[0; 4]);
        let e = recognise(Path::new("m.safetensors"), &st, st.len() as u64).unwrap_err();
        assert!(e.contains("appears twice"), "{e}");
    }

    #[test]
    fn gguf_tensors_are_checked_against_the_type_table() {
        // Row of 4 F32 elements: fine. Q4_K (256-element blocks) with a 4-element row: refused.
        let mut f = gguf_file(1, 64);
        let pos = find_type_field(&f);
        f[pos..pos + 4].copy_from_slice(&12u32.to_le_bytes());
        let e = recognise(Path::new("m.gguf"), &f, f.len() as u64).unwrap_err();
        assert!(e.contains("not a multiple of 256"), "{e}");
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
        assert!(truncated.contains("need 24 bytes"), "{truncated}");
        assert!(recognise(Path::new("m.safetensors"), &head[..8 + n - 1], len).is_err());
    }
}
