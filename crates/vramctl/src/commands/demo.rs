//! `vramctl demo`: the README's main job. Writes a small real safetensors model to a temporary
//! directory, seals it, verifies it, corrupts one byte of the resident copy behind the manager's
//! back, shows the verification failure and its audit record, and prints the metrics. Uses the
//! GPU when there is one and the mock backend (saying so on its first line) otherwise.

use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use vram_residency::{DigestAlgorithm, ExecutionMode, VramError};

use crate::cli::{BackendArgs, BackendChoice};
use crate::error::{CliError, CliResult, Exit};
use crate::files::shard_id_for;
use crate::output::{Output, human_bytes};
use crate::session;
use vramctl::formats::recognise;

/// Writes a small model: three f32 tensors, 5 MiB of parameters, deterministic values.
fn write_sample_model(path: &Path) -> CliResult<()> {
    let shapes: [(&str, [usize; 2]); 3] = [
        ("embed.weight", [1024, 512]),
        ("layers.0.mlp.weight", [512, 512]),
        ("lm_head.weight", [512, 1024]),
    ];
    let buffers: Vec<Vec<u8>> = shapes
        .iter()
        .enumerate()
        .map(|(t, (_, [r, c]))| {
            (0..r.saturating_mul(*c))
                .flat_map(|i| {
                    let x = u32::try_from(i.wrapping_mul(7).wrapping_add(t)).unwrap_or(0) % 1000;
                    (f32::from(u16::try_from(x).unwrap_or(0)) / 1000.0 - 0.5).to_le_bytes()
                })
                .collect()
        })
        .collect();
    let views = shapes
        .iter()
        .zip(&buffers)
        .map(|((name, shape), data)| {
            TensorView::new(Dtype::F32, shape.to_vec(), data).map(|v| (*name, v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::bad_input(format!("cannot build the sample model: {e}")))?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| {
        CliError::bad_input(format!(
            "cannot write the sample model to {}: {e}",
            crate::output::shown(path)
        ))
    })
}

pub(crate) fn run(out: Output, backend: &BackendArgs) -> CliResult<Exit> {
    let session =
        session::open_ephemeral(backend, BackendChoice::Auto, DigestAlgorithm::default())?;
    let m = &session.manager;
    // The first line says which backend holds the shards (mock: not VRAM).
    out.result(&session.backend_note);
    m.enforce_vram_only_policy()?;

    let dir = tempfile::tempdir()
        .map_err(|e| CliError::bad_input(format!("cannot create a temporary directory: {e}")))?;
    let path = dir.path().join("demo-model.safetensors");
    write_sample_model(&path)?;
    let bytes = std::fs::read(&path)
        .map_err(|e| CliError::file(&path, &format!("cannot be read ({e})"), "report a bug"))?;
    let format = recognise(&path, &bytes, bytes.len() as u64)
        .map_err(|e| CliError::file(&path, &e.to_string(), "report a bug"))?;
    out.result(format!(
        "1. wrote {} ({}, {} on disk)",
        crate::output::shown(&path),
        vramctl::formats::describe(&format),
        human_bytes(bytes.len() as u64)
    ));

    let shard = m.seal_model_with_id(&shard_id_for(&path), &bytes, 0)?;
    out.result(format!(
        "2. sealed as {} on GPU {}: digest {} ({}), {} of VRAM taken",
        shard.shard_id,
        shard.gpu_device,
        shard.digest,
        shard.digest_algorithm(),
        human_bytes(m.used_vram() as u64)
    ));

    m.verify_sealed(&shard)?;
    out.result("3. verified: the bytes in VRAM hash to the sealed digest, and the seal matches");
    // An engine computes on the sealed bytes where they lie, checked before and after its work.
    let computed = m.execute(&shard, ExecutionMode::BeforeAndAfter, |weights| {
        weights.read_host(|bytes| bytes.iter().map(|&b| u64::from(b)).sum::<u64>())
    })?;
    out.result(format!(
        "   then an engine computed on the lent weights, verified before and after its work: {}",
        computed.map_or_else(
            || "its kernels read them in VRAM; result released".to_owned(),
            |sum| format!("byte sum {sum}; result released")
        )
    ));

    let offset = shard.vram_bytes / 2;
    m.corrupt_byte_for_tests(&shard, offset)?;
    out.result(format!(
        "4. flipped the byte at offset {offset} of the resident copy, behind the manager's back"
    ));

    let error = match m.verify_sealed(&shard) {
        Err(e @ VramError::IntegrityViolation { .. }) => e,
        Err(e) => return Err(e.into()),
        Ok(()) => {
            return Err(CliError::new(
                Exit::VerificationFailed,
                "the corruption was NOT detected; this is a bug",
            ));
        }
    };
    out.result(format!("5. verification FAILED as it must: {error}"));
    out.result(format!(
        "   the manager stopped serving: {}",
        m.is_stopped()
    ));

    let record = session.memory_audit.as_ref().and_then(|a| {
        a.records()
            .into_iter()
            .rev()
            .find(|r| r.event.name() == "SealVerificationFailed")
    });
    let record_json = record
        .as_ref()
        .map(|r| serde_json::to_value(r).unwrap_or_default());
    out.result(format!(
        "6. audit record: {}",
        record_json
            .as_ref()
            .map_or_else(|| "(none)".to_owned(), ToString::to_string)
    ));

    let metrics = m.metrics();
    out.result("7. metrics (OpenMetrics text):");
    out.result(metrics.prometheus_text().trim_end());

    out.json(&json!({
        "backend": m.backend_kind().to_string(),
        "model": format,
        "shard": shard,
        "corrupted_offset": offset,
        "verification_error": error.to_string(),
        "audit_record": record_json,
        "metrics": {
            "seals_succeeded": metrics.seals_succeeded,
            "verifications_succeeded": metrics.verifications_succeeded,
            "verifications_failed": metrics.verifications_failed,
        },
    }));
    drop(shard);
    Ok(Exit::Ok)
}
