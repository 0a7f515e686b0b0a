//! A sealed safetensors or GGUF file carries its tensor table, read from the bytes in VRAM, so
//! an engine finds each tensor inside the lent shard by name. Both backends from one source
//! (`<name>::cuda` on a GPU with `VRAM_TEST_GPU=1 ... -- --include-ignored`).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "tests"
)]

#[macro_use]
mod common;

use std::path::{Path, PathBuf};

use common::{AnyRig, MIB, On, model, names, rig_on, temp_path};
use safetensors::tensor::{Dtype, TensorView};
use vram_alloc::{ExecutionMode, SealOptions, Weights};
use vram_formats::{FormatError, TensorInfo, tensor_table};
use vram_types::{FileSource, SealedShard, VramConfig, VramError};

on_both_backends! {
    a_sealed_safetensors_file_lends_each_tensor_by_name
    safetensors_bytes_without_a_name_are_recognised_by_content
    a_sealed_gguf_file_carries_the_table_its_header_gives
    a_malformed_named_file_is_refused_and_changes_nothing
    plain_bytes_have_no_table
}

/// Three tensors of unlike sizes and dtypes; their bytes by name.
fn safetensors_file() -> (Vec<u8>, Vec<(&'static str, Vec<u8>)>) {
    let tensors = vec![
        ("model.embed_tokens.weight", model(64 * 96 * 2, 1)),
        ("model.norm.weight", model(96 * 4, 2)),
        ("lm_head.weight", model(96 * 33 * 2, 3)),
    ];
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, bytes)| {
            let view = match *name {
                "model.norm.weight" => TensorView::new(Dtype::F32, vec![96], bytes),
                "lm_head.weight" => TensorView::new(Dtype::BF16, vec![33, 96], bytes),
                _ => TensorView::new(Dtype::BF16, vec![64, 96], bytes),
            };
            (*name, view.unwrap())
        })
        .collect();
    let file = safetensors::serialize(views, None).unwrap();
    (file, tensors)
}

fn write_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = temp_path(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn seal_file(r: &AnyRig, path: &Path) -> Result<SealedShard, VramError> {
    let source = FileSource::open(path).unwrap();
    r.manager.seal_from_source(&source, 0, &SealOptions::new())
}

/// The tensor's bytes as the lent view shows them: from host memory on the mock, copied back
/// from the device at the tensor's address on a GPU.
fn lent_bytes(weights: &Weights<'_>, name: &str) -> Vec<u8> {
    let t = weights.tensor(name).unwrap();
    assert_eq!(t.device_ptr(), weights.device_ptr() + t.offset());
    match t.read_host(<[u8]>::to_vec) {
        Some(bytes) => bytes,
        None => {
            let mut out = vec![0u8; t.len() as usize];
            weights
                .device_buffer()
                .unwrap()
                .read(t.offset() as usize, &mut out)
                .unwrap();
            out
        }
    }
}

fn a_sealed_safetensors_file_lends_each_tensor_by_name(on: On) {
    let r = rig_on(on, 16 * MIB, VramConfig::default());
    let (file, tensors) = safetensors_file();
    let path = write_file("layout.safetensors", &file);
    let shard = seal_file(&r, &path).unwrap();

    // The table the host reads from the file is the one the shard carries, sorted by name.
    let mut host = tensor_table(&path, &file, file.len() as u64)
        .unwrap()
        .unwrap();
    host.sort_by(|a, b| a.name.cmp(&b.name));
    let table = shard.tensors().unwrap();
    assert_eq!(table, host.as_slice());
    let norm = table
        .iter()
        .find(|t| t.name == "model.norm.weight")
        .unwrap();
    assert_eq!(
        (norm.dtype.as_str(), norm.shape.as_slice()),
        ("F32", &[96][..])
    );

    let checked = r
        .manager
        .execute(&shard, ExecutionMode::BeforeAndAfter, |weights| {
            assert_eq!(weights.tensors().len(), tensors.len());
            let in_order: Vec<&str> = weights.tensors().map(|t| t.info().name.as_str()).collect();
            assert_eq!(
                in_order,
                [
                    "lm_head.weight",
                    "model.embed_tokens.weight",
                    "model.norm.weight"
                ]
            );
            assert!(weights.tensor("model.missing").is_none());
            let shown = format!("{:?}", weights.tensor("lm_head.weight").unwrap());
            assert!(shown.contains("lm_head.weight"), "{shown}");
            assert!(
                !shown.contains(&weights.device_ptr().to_string())
                    && !shown.contains(&format!("{:x}", weights.device_ptr())),
                "no address in Debug: {shown}"
            );
            tensors
                .iter()
                .all(|(name, bytes)| lent_bytes(weights, name) == *bytes)
        })
        .unwrap();
    assert!(checked, "every tensor's bytes at its address");
    // Clones share the table.
    assert_eq!(shard.clone().tensors(), shard.tensors());
    drop(shard);
    r.assert_live_allocations(0);
    std::fs::remove_file(path).unwrap();
}

fn safetensors_bytes_without_a_name_are_recognised_by_content(on: On) {
    let r = rig_on(on, 16 * MIB, VramConfig::default());
    let (file, tensors) = safetensors_file();
    let shard = r.manager.seal_model(&file, 0).unwrap();
    assert_eq!(shard.tensors().unwrap().len(), tensors.len());
    // Bytes that only look like a header (a length, then `{`) are plain bytes, not an error.
    let mut fake = 20u64.to_le_bytes().to_vec();
    fake.extend_from_slice(b"{ not json at all ...");
    fake.extend_from_slice(&model(4096, 7));
    let plain = r.manager.seal_model(&fake, 0).unwrap();
    assert!(plain.tensors().is_none());
}

fn a_sealed_gguf_file_carries_the_table_its_header_gives(on: On) {
    let r = rig_on(on, 16 * MIB, VramConfig::default());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vramctl/tests/data/models/tiny.gguf");
    let file = std::fs::read(&path).unwrap();
    let shard = seal_file(&r, &path).unwrap();
    let mut host: Vec<TensorInfo> = tensor_table(&path, &file, file.len() as u64)
        .unwrap()
        .unwrap();
    host.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!host.is_empty());
    assert_eq!(shard.tensors().unwrap(), host.as_slice());
    r.manager
        .execute(&shard, ExecutionMode::Before, |weights| {
            for t in &host {
                let start = t.offset as usize;
                assert_eq!(
                    lent_bytes(weights, &t.name),
                    &file[start..start + t.bytes as usize]
                );
            }
        })
        .unwrap();
}

fn a_malformed_named_file_is_refused_and_changes_nothing(on: On) {
    let r = rig_on(on, 16 * MIB, VramConfig::default());
    let (mut file, _) = safetensors_file();
    file.truncate(file.len() - 10); // the data section is short: a partial download
    let path = write_file("cut.safetensors", &file);
    let e = seal_file(&r, &path).unwrap_err();
    assert!(
        matches!(&e, VramError::MalformedModel(FormatError::Safetensors(_))),
        "{e:?}"
    );
    assert!(e.to_string().contains("partial download"), "{e}");
    assert!(!e.is_retriable() && !e.is_security_critical());
    assert_eq!(r.manager.used_vram(), 0, "capacity given back");
    r.assert_live_allocations(0);
    assert_eq!(names(&r.audit.events()), ["SealAborted"]);
    // The same bytes unnamed are plain bytes: nothing said they were a safetensors file.
    let plain = r.manager.seal_model(&file, 0).unwrap();
    assert!(plain.tensors().is_none());
    std::fs::remove_file(path).unwrap();

    // A truncated GGUF named as one is refused too (its magic says what it is).
    let gguf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../vramctl/tests/data/models/truncated.gguf");
    let e = seal_file(&r, &gguf).unwrap_err();
    assert!(
        matches!(&e, VramError::MalformedModel(FormatError::Gguf(_))),
        "{e:?}"
    );
}

fn plain_bytes_have_no_table(on: On) {
    let r = rig_on(on, 16 * MIB, VramConfig::default());
    let path = write_file("weights.bin", &model(MIB + 3, 5));
    let shard = seal_file(&r, &path).unwrap();
    assert!(shard.tensors().is_none());
    r.manager
        .execute(&shard, ExecutionMode::Before, |weights| {
            assert_eq!(weights.tensors().len(), 0);
            assert!(weights.tensor("anything").is_none());
        })
        .unwrap();
    std::fs::remove_file(path).unwrap();
}
