//! `vramctl bench [--size SIZES] [--algorithm ALGS]`: seal and verify throughput of this
//! backend at several shard sizes, for each digest algorithm (the SHA-256 tree and BLAKE3 by
//! default), next to the naive path (one pageable copy + single-thread flat SHA-256) measured in
//! the same run, as one table.

use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde_json::json;

use crate::cli::{BackendArgs, BackendChoice, BenchArgs};
use crate::error::{CliError, CliResult, Exit};
use crate::output::{Output, human_bytes};
use crate::session;
use vram_residency::digest::digest_serial;
use vram_residency::{BackendKind, DigestAlgorithm, SealOptions};

#[allow(clippy::cast_precision_loss, reason = "throughput display")]
fn gbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64().max(1e-9) / 1e9
}

fn ratio(naive: Duration, ours: Duration) -> f64 {
    naive.as_secs_f64() / ours.as_secs_f64().max(1e-9)
}

/// A measurement buffer of `n` non-repeating bytes, filled in parallel.
fn sample(n: usize) -> CliResult<Vec<u8>> {
    let mut data = Vec::new();
    data.try_reserve_exact(n).map_err(|_| {
        CliError::bad_input(format!(
            "--size {}: not enough host memory for the sample buffer",
            human_bytes(n as u64)
        ))
    })?;
    data.resize(n, 0);
    data.par_chunks_mut(1 << 20)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (i, b) in chunk.iter_mut().enumerate() {
                let k = (c << 20 | i) as u64;
                *b = (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 29).to_le_bytes()[0];
            }
        });
    Ok(data)
}

/// The naive path the bench compares against, measured here (nothing is sealed, reserved or
/// audited): seal = one plain copy of the pageable buffer into VRAM + single-thread flat
/// SHA-256; verify = one copy back into pageable memory + single-thread SHA-256. On the mock
/// backend host copies stand in for VRAM.
fn naive_path(kind: BackendKind, device: u32, data: &[u8]) -> CliResult<(Duration, Duration)> {
    let hash = |b: &[u8]| digest_serial(b, DigestAlgorithm::Sha256);
    let mut back = Vec::new();
    back.try_reserve_exact(data.len()).map_err(|_| {
        CliError::bad_input("not enough host memory for the naive path's read-back buffer")
    })?;
    back.resize(data.len(), 0);
    let (seal, verify, sealed, again) = if kind == BackendKind::Cuda {
        let gpu = vram_cuda_sys::Device::open(device)?;
        let buffer = vram_cuda_sys::memory::DeviceBuffer::alloc(&gpu, data.len())?;
        let t = Instant::now();
        buffer.write(0, data)?;
        let sealed = hash(data);
        let seal = t.elapsed();
        let t = Instant::now();
        buffer.read(0, &mut back)?;
        let again = hash(&back);
        let verify = t.elapsed();
        buffer.free()?;
        (seal, verify, sealed, again)
    } else {
        let mut resident = vec![0u8; data.len()];
        let t = Instant::now();
        resident.copy_from_slice(data);
        let sealed = hash(data);
        let seal = t.elapsed();
        let t = Instant::now();
        back.copy_from_slice(&resident);
        let again = hash(&back);
        (seal, t.elapsed(), sealed, again)
    };
    if sealed.ct_eq(&again) {
        Ok((seal, verify))
    } else {
        Err(CliError::new(
            Exit::VerificationFailed,
            "the naive path read back different bytes: a broken copy path",
        ))
    }
}

/// One row: best seal and verify times of ours and of the naive path.
struct Row {
    size: usize,
    algorithm: DigestAlgorithm,
    seal: Duration,
    verify: Duration,
    naive_seal: Duration,
    naive_verify: Duration,
}

pub(crate) fn run(out: Output, backend: &BackendArgs, args: &BenchArgs) -> CliResult<Exit> {
    let sizes = args.size.clone();
    let max =
        usize::try_from(vram_residency::validation::DEFAULT_MAX_MODEL_BYTES).unwrap_or(usize::MAX);
    if let Some(big) = sizes.iter().find(|s| **s > max) {
        return Err(CliError::bad_input(format!(
            "--size {}: larger than the model-size limit ({})",
            human_bytes(*big as u64),
            human_bytes(max as u64)
        )));
    }
    let sessions = args
        .algorithm
        .iter()
        .map(|alg| {
            Ok((
                *alg,
                session::open_ephemeral(backend, BackendChoice::Auto, *alg)?,
            ))
        })
        .collect::<CliResult<Vec<_>>>()?;
    let Some((_, first)) = sessions.first() else {
        return Err(CliError::bad_input("--algorithm: give at least one"));
    };
    let m = &first.manager;
    out.line(&first.backend_note);
    let mut rows = Vec::new();
    for (n, size) in sizes.iter().copied().enumerate() {
        let available = m.available_vram_on(args.device)?;
        if m.vram_footprint(size) > available {
            out.line(format!(
                "skipping {}: needs {} of VRAM on GPU {}, {} available",
                human_bytes(size as u64),
                human_bytes(m.vram_footprint(size) as u64),
                args.device,
                human_bytes(available as u64)
            ));
            continue;
        }
        // Host memory the size needs at its peak: the sample and the naive path's read-back
        // buffer, and on the mock the simulated VRAM too. Checked first: with overcommit an
        // allocation beyond it succeeds and the process is killed later, filling it.
        let copies: u64 = if m.backend_kind() == BackendKind::Cuda {
            2
        } else {
            3
        };
        let host_need = (size as u64).saturating_mul(copies);
        if let Some(host) = crate::host_memory::available().filter(|h| host_need > *h) {
            out.line(format!(
                "skipping {}: needs {} of host memory ({copies} copies at its peak), {} available",
                human_bytes(size as u64),
                human_bytes(host_need),
                human_bytes(host)
            ));
            continue;
        }
        let data = sample(size)?;
        // The naive path: best of 3 up to 256 MiB, once above (it takes seconds per GiB).
        let (mut naive_seal, mut naive_verify) = (Duration::MAX, Duration::MAX);
        for _ in 0..if size <= 256 << 20 { 3 } else { 1 } {
            let (seal, verify) = naive_path(m.backend_kind(), args.device, &data)?;
            naive_seal = naive_seal.min(seal);
            naive_verify = naive_verify.min(verify);
        }
        // Ours: best of 3, each algorithm on its own manager.
        for (algorithm, session) in &sessions {
            let mut row = Row {
                size,
                algorithm: *algorithm,
                seal: Duration::MAX,
                verify: Duration::MAX,
                naive_seal,
                naive_verify,
            };
            for round in 0..3 {
                let t = Instant::now();
                let options = SealOptions::new()
                    .shard_id(format!("bench-{n}-{round}"))
                    .cross_check(args.cross_check);
                let shard =
                    session
                        .manager
                        .seal_from_source(&data.as_slice(), args.device, &options)?;
                row.seal = row.seal.min(t.elapsed());
                let t = Instant::now();
                session.manager.verify_sealed(&shard)?;
                row.verify = row.verify.min(t.elapsed());
            }
            rows.push(row);
        }
    }
    out.result(format!(
        "{:>9} {:>17} | {:>12} {:>12} {:>8} | {:>12} {:>12} {:>8}",
        "size",
        "algorithm",
        "seal naive",
        "seal ours",
        "ratio",
        "verify naive",
        "verify ours",
        "ratio"
    ));
    for r in &rows {
        out.result(format!(
            "{:>9} {:>17} | {:>7.2} GB/s {:>7.2} GB/s {:>7.1}x | {:>7.2} GB/s {:>7.2} GB/s {:>7.1}x",
            human_bytes(r.size as u64),
            r.algorithm.to_string(),
            gbps(r.size, r.naive_seal),
            gbps(r.size, r.seal),
            ratio(r.naive_seal, r.seal),
            gbps(r.size, r.naive_verify),
            gbps(r.size, r.verify),
            ratio(r.naive_verify, r.verify)
        ));
    }
    out.result(format!(
        "ours: staged ring upload, digest of the bytes in VRAM in each algorithm{}, best of 3; naive: one pageable copy + single-thread flat SHA-256",
        if args.cross_check { ", host bytes cross-checked on the CPU" } else { "" }
    ));
    out.json(&json!({
        "backend": m.backend_kind().to_string(),
        "cross_check": args.cross_check,
        "rows": rows.iter().map(|r| json!({
            "size": r.size, "algorithm": r.algorithm.to_string(),
            "seal_s": r.seal.as_secs_f64(), "verify_s": r.verify.as_secs_f64(),
            "naive_seal_s": r.naive_seal.as_secs_f64(), "naive_verify_s": r.naive_verify.as_secs_f64(),
            "seal_speedup": ratio(r.naive_seal, r.seal), "verify_speedup": ratio(r.naive_verify, r.verify),
        })).collect::<Vec<_>>(),
    }));
    Ok(Exit::Ok)
}
