//! Model-file header recognition (safetensors, GGUF, raw) on arbitrary bytes, as `vramctl seal`
//! reads a file's first bytes: never panics, and a header it accepts describes tensors that lie
//! inside the file (no parameter bytes beyond its length).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vram_formats::{ModelFormat, recognise};

fuzz_target!(|input: (u8, u16, &[u8])| {
    let (name, extra, head) = input;
    // The file may be longer than the bytes read (a header read before the data).
    let file_len = head.len() as u64 + u64::from(extra);
    let path = Path::new(match name % 3 {
        0 => "model.safetensors",
        1 => "model.gguf",
        _ => "model.bin",
    });
    match recognise(path, head, file_len) {
        Ok(ModelFormat::Safetensors { parameter_bytes, .. } | ModelFormat::Gguf { parameter_bytes, .. }) => {
            assert!(parameter_bytes <= file_len, "{parameter_bytes} parameter bytes in a {file_len}-byte file");
        }
        Ok(ModelFormat::Raw) | Err(_) => {}
    }
});
