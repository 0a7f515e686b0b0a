//! Model-file headers as `vramctl` shows them: the parsers are the library's
//! ([`vram_residency::formats`], re-exported here for the fuzz targets and tests); this module
//! adds the one-line description operators read.

pub use vram_residency::formats::*;

/// One line for operators: format, tensor count, types, parameter bytes.
#[must_use]
pub fn describe(format: &ModelFormat) -> String {
    match format {
        ModelFormat::Safetensors {
            tensors,
            parameter_bytes,
        } => format!(
            "safetensors, {tensors} tensors, {} of parameters",
            crate::units::human_bytes(*parameter_bytes)
        ),
        ModelFormat::Gguf {
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
        ModelFormat::Raw => "raw bytes".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::path::Path;

    use super::{describe, recognise};

    #[test]
    fn a_gguf_file_is_described_by_its_version_tensors_types_and_size() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/tiny.gguf");
        let bytes = std::fs::read(&path).unwrap();
        let tiny = recognise(&path, &bytes, bytes.len() as u64).unwrap();
        assert_eq!(
            describe(&tiny),
            "GGUF v3, 3 tensors (F16 ×1, F32 ×1, Q8_0 ×1), 388 B of parameters"
        );
    }
}
