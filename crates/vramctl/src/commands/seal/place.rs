//! Placement: the job's files become one library plan ([`VramManager::plan_seal`] or
//! [`VramManager::plan_group`]) that checks ids and capacity before anything is placed, then
//! executes (each file checked against its expected digest on the bytes in VRAM), reporting
//! each sealed file. A signal stops it between steps.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde_json::json;
use vram_residency::digest::digest_source;
use vram_residency::{
    DigestAlgorithm, PlanError, PlanStep, SealOptions, SealPart, SealedGroup, SealedShard,
    ShardSource, VramError, VramManager,
};

use super::args::{Expected, Placement, SealFile, SealJob};
use crate::error::{CliError, CliResult, Exit};
use crate::files::{ProgressSource, shard_id_for};
use crate::output::{Output, human_bytes};
use crate::signals::Signals;

/// What `seal` keeps resident: shards sealed one by one, or one group.
pub(super) enum Held {
    Shards(Vec<SealedShard>),
    Group(SealedGroup),
}

impl Held {
    pub(super) fn count(&self) -> usize {
        match self {
            Self::Shards(s) => s.len(),
            Self::Group(g) => g.shards.len(),
        }
    }
}

/// Seals the job's files as one plan; `None` when a signal stopped it (everything placed is
/// released, and that is said).
pub(super) fn place(
    out: Output,
    manager: &VramManager,
    job: &SealJob,
    signals: &Signals,
) -> CliResult<Option<Held>> {
    // Each file is read once, to upload it: an expectation in another algorithm is checked on
    // the resident bytes (read back from VRAM), never on a second read of the file.
    let reads: u64 = job
        .files
        .iter()
        .map(|f| f.source.len())
        .fold(0, u64::saturating_add);
    let bar = out.progress(reads, "sealing");
    let sources: Vec<ProgressSource<'_>> = job
        .files
        .iter()
        .map(|f| ProgressSource {
            inner: &f.source,
            bar: &bar,
        })
        .collect();
    if signals.stop_requested() {
        released_by_signal(out, 0);
        return Ok(None);
    }
    let mut sealed = 0usize;
    let started = Instant::now();
    let held = match &job.placement {
        Placement::Each { device } => {
            let parts = job
                .files
                .iter()
                .zip(&sources)
                .map(|(f, source)| {
                    let options = expect(SealOptions::new().shard_id(shard_id_for(&f.path)), f);
                    SealPart::new(source, *device).with_options(options)
                })
                .collect();
            let plan = manager
                .plan_seal(parts)
                .map_err(|e| plan_error(job, e, None))?;
            plan.execute_with(|step| {
                if let PlanStep::Sealed { part, shard, took } = step
                    && let Some(file) = job.files.get(part)
                {
                    bar.suspend(|| report_sealed(out, file, shard, Some(took), None));
                    sealed = sealed.saturating_add(1);
                }
                flow(signals)
            })
            .map_err(|e| plan_error(job, e, None))?
            .map(Held::Shards)
        }
        Placement::Group { model_id, devices } => {
            let parts = job
                .files
                .iter()
                .zip(&sources)
                .zip(devices.iter().cycle())
                .map(|((f, source), device)| {
                    SealPart::new(source, *device).with_options(expect(SealOptions::new(), f))
                })
                .collect();
            let plan = manager
                .plan_group(model_id, parts)
                .map_err(|e| plan_error(job, e, Some(model_id)))?;
            let group = plan
                .execute_with(|step| {
                    if matches!(step, PlanStep::Sealed { .. }) {
                        sealed = sealed.saturating_add(1);
                    }
                    flow(signals)
                })
                .map_err(|e| plan_error(job, e, Some(model_id)))?;
            if let Some(group) = &group {
                bar.finish_and_clear();
                report_group(out, job, group, devices, started.elapsed());
            }
            group.map(Held::Group)
        }
    };
    bar.finish_and_clear();
    if held.is_none() {
        released_by_signal(out, sealed);
    }
    Ok(held)
}

/// Stops the plan when a signal asked for it.
fn flow(signals: &Signals) -> ControlFlow<()> {
    if signals.stop_requested() {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

/// Says that a signal stopped the seal and what it releases.
pub(super) fn released_by_signal(out: Output, released: usize) {
    out.line(format!(
        "stopped by a signal; releasing {released} shard(s)"
    ));
    out.json(&json!({ "event": "released", "shards": released, "reason": "signal" }));
}

/// The file's expectation, in the options the plan checks: a digest in the manager's algorithm
/// computed in VRAM, another (a flat SHA-256) on the resident bytes read back: both on what was
/// uploaded, never on a second read of the file.
fn expect(options: SealOptions, file: &SealFile) -> SealOptions {
    match file.expected {
        Some(e) => options
            .expect_digest_in(e.algorithm, e.digest)
            .expected_from(e.from),
        None => options,
    }
}

/// `sealed FILE as ID on GPU N: SIZE (FORMAT), digest HEX[, in T s (R GB/s)]`, and its JSON.
fn report_sealed(
    out: Output,
    file: &SealFile,
    shard: &SealedShard,
    took: Option<Duration>,
    group: Option<&str>,
) {
    let line = format!(
        "sealed {} as {} on GPU {}: {} ({}), digest {}",
        crate::output::shown(&file.path),
        shard.shard_id,
        shard.gpu_device,
        human_bytes(u64::try_from(shard.vram_bytes).unwrap_or(0)),
        vramctl::formats::describe(&file.format),
        shard.digest
    );
    let seconds = took.map(|t| t.as_secs_f64());
    match took {
        Some(took) => out.result(format!(
            "{line}, in {:.3} s ({:.1} GB/s)",
            took.as_secs_f64(),
            gbps(shard.vram_bytes, took)
        )),
        None => out.result(line),
    }
    let event = match group {
        Some(group) => {
            json!({ "event": "sealed", "file": file.path.display().to_string(), "shard": shard, "model": file.format, "group": group })
        }
        None => {
            json!({ "event": "sealed", "file": file.path.display().to_string(), "shard": shard, "model": file.format, "seconds": seconds })
        }
    };
    out.json(&event);
}

fn report_group(out: Output, job: &SealJob, group: &SealedGroup, devices: &[u32], took: Duration) {
    for (shard, file) in group.shards.iter().zip(&job.files) {
        report_sealed(out, file, shard, None, Some(&group.model_id));
    }
    let total = group
        .shards
        .iter()
        .map(|s| s.vram_bytes)
        .fold(0, usize::saturating_add);
    out.result(format!(
        "sealed group {}: {} shard(s) on GPU(s) {devices:?}, group seal {}, in {:.3} s ({:.1} GB/s)",
        group.model_id,
        group.shards.len(),
        group.group_seal().to_hex(),
        took.as_secs_f64(),
        gbps(total, took)
    ));
    out.json(&json!({ "event": "group_sealed", "group": group.model_id, "shards": group.shards.len(), "group_seal": group.group_seal().to_hex(), "seconds": took.as_secs_f64() }));
}

#[allow(clippy::cast_precision_loss, reason = "throughput display")]
fn gbps(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64().max(1e-9) / 1e9
}

/// A plan's error in the operator's terms: the file it is about, and for a digest mismatch
/// what was expected where, and what happened to what was sealed.
fn plan_error(job: &SealJob, error: PlanError, group: Option<&str>) -> CliError {
    let file = |i: usize| job.files.get(i);
    match error {
        PlanError::SameShardId {
            first,
            second,
            shard_id,
        } => match (file(first), file(second)) {
            (Some(a), Some(b)) => CliError::bad_input(format!(
                "{} and {} would both be shard {shard_id}; give each file once",
                crate::output::shown(&a.path),
                crate::output::shown(&b.path),
            )),
            _ => VramError::from(PlanError::SameShardId {
                first,
                second,
                shard_id,
            })
            .into(),
        },
        PlanError::Part {
            part,
            error: VramError::UnexpectedDigest { expected, actual },
        } => match file(part).and_then(|f| Some((f, f.expected?))) {
            Some((f, want)) => digest_mismatch(f, &want, &actual, group.is_some()),
            None => VramError::UnexpectedDigest { expected, actual }.into(),
        },
        other => VramError::from(other).into(),
    }
}

/// `FILE: digest ALG:X differs from WHERE ALG:Y; what happened; remedy` (exit 1). Both digests
/// name their algorithm: a digest of another leaf size is checked in that leaf size, and the
/// message says which one was compared.
fn digest_mismatch(file: &SealFile, want: &Expected, actual: &str, in_group: bool) -> CliError {
    // A group is sealed whole or not at all; single files before this one were sealed.
    let released = if in_group {
        "nothing was sealed"
    } else {
        "what was sealed before it was released"
    };
    CliError::new(
        Exit::VerificationFailed,
        format!(
            "{}: digest {}:{actual} differs from {} {}; {released}; {}",
            crate::output::shown(&file.path),
            want.algorithm,
            want.given_in,
            manifest_digest(want),
            mismatch_remedy(file, want)
        ),
    )
}

/// An expectation with its algorithm: `sha256:HEX` for a flat SHA-256, `ALG:HEX` for a tree.
fn manifest_digest(want: &Expected) -> String {
    format!("{}:{}", want.algorithm, want.digest.to_hex())
}

/// Why a seal's digest did not match: when a bare hex digest is the file's digest under
/// another algorithm (the operator pasted `sha256sum` output for a tree, or gave a `b3sum`
/// manifest), say which and how to write it, instead of calling the file wrong.
fn mismatch_remedy(file: &SealFile, want: &Expected) -> String {
    let other = if want.bare {
        other_algorithm(&file.source, want.algorithm, &want.digest)
    } else {
        None
    };
    match other {
        Some(alg) if want.given_in == "--expect" => format!(
            "this is the file's {} digest: write --expect {alg}:{}",
            alg_name(alg),
            want.digest.to_hex()
        ),
        Some(DigestAlgorithm::Blake3) => "the manifest's bare hex is the file's BLAKE3 (a b3sum manifest): seal it with --algorithm blake3".to_owned(),
        Some(alg) => format!(
            "the manifest's bare hex is the file's {} (a sha256sum manifest): seal it without --algorithm blake3",
            alg_name(alg)
        ),
        None => "refusing to seal it (wrong or corrupted file)".to_owned(),
    }
}

/// The algorithm of bare hex when it is not `assumed` but one of the others bare hex is
/// written with (`sha256sum`'s flat SHA-256, `b3sum`'s BLAKE3): hashed again only on a
/// mismatch, so a good seal costs nothing more.
fn other_algorithm(
    source: &dyn vram_residency::ShardSource,
    assumed: DigestAlgorithm,
    digest: &vram_residency::ShardDigest,
) -> Option<DigestAlgorithm> {
    vramctl::manifest::bare_as_other(assumed, digest, |a| digest_source(source, a).ok())
}

/// How an error names an algorithm.
fn alg_name(alg: DigestAlgorithm) -> &'static str {
    match alg {
        DigestAlgorithm::Sha256 => "flat SHA-256",
        DigestAlgorithm::Blake3 => "BLAKE3",
        _ => "tree",
    }
}
