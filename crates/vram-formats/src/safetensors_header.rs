//! safetensors headers: an 8-byte little-endian length and a JSON object, checked by the
//! `safetensors` crate's own validation and against the file, read into a tensor table.

use safetensors::tensor::Metadata;

use super::{HeaderProblem, ModelFormat, TensorInfo};

/// The header (`u64` LE length, JSON) checked by the `safetensors` crate's own validation
/// (contiguous offsets, sizes matching dtype and shape), and its data section against the file.
pub(super) fn safetensors(head: &[u8], file_len: u64) -> Result<ModelFormat, HeaderProblem> {
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
pub(super) fn safetensors_table(
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

/// A safetensors header's `__metadata__` entries (a header [`recognise`] accepted), sorted by
/// key bytes.
pub(super) fn safetensors_metadata(head: &[u8]) -> Result<Vec<(String, String)>, HeaderProblem> {
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
