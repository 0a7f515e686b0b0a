//! Recognising model files: safetensors and GGUF headers are checked and summarised before any
//! VRAM is used; any other file is sealed as plain bytes.

use std::path::Path;

use safetensors::tensor::Metadata;
use serde::Serialize;

/// What a file is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub(crate) enum ModelFormat {
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
        /// Bytes of tensor data (from the aligned data section to the end of the file).
        parameter_bytes: u64,
    },
    /// Any other file: sealed as bytes.
    Raw,
}

impl ModelFormat {
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Safetensors {
                tensors,
                parameter_bytes,
            } => format!(
                "safetensors, {tensors} tensors, {} of parameters",
                crate::output::human_bytes(*parameter_bytes)
            ),
            Self::Gguf {
                version,
                tensors,
                parameter_bytes,
            } => format!(
                "GGUF v{version}, {tensors} tensors, {} of parameters",
                crate::output::human_bytes(*parameter_bytes)
            ),
            Self::Raw => "raw bytes".to_owned(),
        }
    }
}

/// Recognises a model file of `file_len` bytes (named `path`) from its first bytes `head` (at
/// least the whole header); a malformed safetensors or GGUF header is an error.
pub(crate) fn recognise(path: &Path, head: &[u8], file_len: u64) -> Result<ModelFormat, String> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
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
    for _ in 0..kv_count {
        let key = c.string()?;
        let kind = c.u32()?;
        let value = c.skip_value(kind, 0)?;
        if key == b"general.alignment" {
            alignment = value
                .filter(|a| a.is_power_of_two())
                .ok_or("bad general.alignment")?;
        }
    }
    for _ in 0..tensors {
        c.string()?;
        let dims = c.u32()?;
        if dims > 8 {
            return Err(format!("tensor with {dims} dimensions"));
        }
        for _ in 0..dims {
            c.u64()?;
        }
        c.u32()?; // type
        c.u64()?; // offset
    }
    let header_end = u64::try_from(c.pos).map_err(|_| "size")?;
    let data_start = header_end
        .div_ceil(alignment)
        .checked_mul(alignment)
        .ok_or("alignment overflows")?;
    let parameter_bytes = file_len
        .checked_sub(data_start)
        .ok_or("tensor data section missing")?;
    Ok(ModelFormat::Gguf {
        version,
        tensors,
        parameter_bytes,
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
            b.extend((i * 16).to_le_bytes());
        }
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.extend(vec![1u8; data]);
        b
    }

    #[test]
    fn gguf_header_is_summarised() {
        let f = gguf_file(2, 32);
        assert_eq!(
            recognise(Path::new("m.gguf"), &f, f.len() as u64).unwrap(),
            ModelFormat::Gguf {
                version: 3,
                tensors: 2,
                parameter_bytes: 32
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
