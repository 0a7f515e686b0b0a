//! `vramctl seal FILE...`: seal files into VRAM and keep them resident, re-verified on an
//! interval, with Prometheus metrics on a loopback address and an audit log, until Ctrl-C or
//! SIGTERM, which release every shard (audited) and exit 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use vram_residency::{DigestAlgorithm, SealedShard, ShardDigest, VramOnlyPolicy, compute_digest};

use crate::cli::{BackendArgs, BackendChoice, SealArgs};
use crate::error::{CliError, CliResult, Exit};
use crate::formats::{ModelFormat, recognise};
use crate::metrics_server::MetricsServer;
use crate::output::{Output, human_bytes};
use crate::{files, session};

/// A file checked and read, ready to seal.
struct Prepared {
    path: PathBuf,
    bytes: Vec<u8>,
    format: ModelFormat,
}

/// A shard id from the file name: the safe characters kept, others replaced by `_`.
pub(crate) fn shard_id_for(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '+') {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    while id.contains("..") {
        id = id.replace("..", "._");
    }
    if id.is_empty() {
        id.push_str("model");
    }
    id
}

/// `HEX` is a tree digest (as `vramctl digest` prints); `sha256:HEX` is the flat SHA-256 (as
/// `sha256sum` or a Hugging Face LFS oid).
fn parse_expected(value: &str) -> CliResult<(DigestAlgorithm, ShardDigest)> {
    let (algorithm, hex) = match value.strip_prefix("sha256:") {
        Some(hex) => (DigestAlgorithm::Sha256, hex),
        None => (DigestAlgorithm::default(), value),
    };
    let digest = ShardDigest::from_hex(hex).map_err(|_| {
        CliError::bad_input(format!(
            "--expect {value:?} is not a digest; give the 64 hex characters `vramctl digest FILE` prints, or sha256:HEX for a flat SHA-256"
        ))
    })?;
    Ok((algorithm, digest))
}

fn parse_address(value: &str) -> CliResult<SocketAddr> {
    let addr: SocketAddr = value.parse().map_err(|_| {
        CliError::bad_input(format!(
            "--metrics {value:?} is not an address; use 127.0.0.1:PORT"
        ))
    })?;
    if !addr.ip().is_loopback() {
        return Err(CliError::bad_input(format!(
            "--metrics {value:?} is not a loopback address; metrics are served on 127.0.0.1 or [::1] only (put a proxy in front to expose them)"
        )));
    }
    Ok(addr)
}

pub(crate) fn run(out: Output, backend: &BackendArgs, args: &SealArgs) -> CliResult<Exit> {
    // Everything about the input is checked before a byte of VRAM is used.
    if !args.expect.is_empty() && args.expect.len() != args.files.len() {
        return Err(CliError::bad_input(format!(
            "{} --expect value(s) for {} file(s); give one per file, in order",
            args.expect.len(),
            args.files.len()
        )));
    }
    let expected = args
        .expect
        .iter()
        .map(|e| parse_expected(e))
        .collect::<CliResult<Vec<_>>>()?;
    let metrics_addr = args.metrics.as_deref().map(parse_address).transpose()?;
    if args.verify_every == 0 {
        return Err(CliError::bad_input(
            "--verify-every 0; give a number of seconds ≥ 1",
        ));
    }
    for path in &args.files {
        files::open_model(path)?;
    }

    let session = session::open(backend, BackendChoice::Cuda, args.audit_log.as_deref())?;
    let manager = session.manager.clone();
    out.line(&session.backend_note);
    manager.enforce_vram_only_policy()?;

    let mut prepared = Vec::new();
    for path in &args.files {
        let bytes = files::read_model(path, out)?;
        let format = recognise(path, &bytes)
            .map_err(|e| CliError::file(path, &e, "use an intact model file"))?;
        prepared.push(Prepared {
            path: path.clone(),
            bytes,
            format,
        });
    }
    for (p, (algorithm, want)) in prepared.iter().zip(&expected) {
        let got = compute_digest(&p.bytes, *algorithm);
        if !got.ct_eq(want) {
            return Err(CliError::new(
                Exit::VerificationFailed,
                format!(
                    "{}: digest {} differs from --expect {}; refusing to seal it (wrong or corrupted file)",
                    p.path.display(),
                    got.to_hex(),
                    want.to_hex()
                ),
            ));
        }
    }
    let needed: usize = prepared
        .iter()
        .map(|p| manager.vram_footprint(p.bytes.len()))
        .fold(0, usize::saturating_add);
    let available = manager.available_vram_on(args.device)?;
    if needed > available {
        return Err(CliError::bad_input(format!(
            "the file(s) need {needed} bytes of VRAM on GPU {}, {available} are free; free VRAM, use a larger GPU or another --device",
            args.device
        )));
    }

    let mut shards: Vec<SealedShard> = Vec::new();
    for p in &prepared {
        let shard = manager.seal_model_with_id(&shard_id_for(&p.path), &p.bytes, args.device)?;
        out.result(format!(
            "sealed {} as {} on GPU {}: {} ({}), digest {}",
            p.path.display(),
            shard.shard_id,
            shard.gpu_device,
            human_bytes(u64::try_from(shard.vram_bytes).unwrap_or(0)),
            p.format.describe(),
            shard.digest
        ));
        out.json(&json!({ "event": "sealed", "file": p.path.display().to_string(), "shard": shard, "model": p.format }));
        shards.push(shard);
    }
    drop(prepared); // the host copies are not needed once the bytes are in VRAM

    let server = metrics_addr
        .map(|a| MetricsServer::start(a, manager.clone()))
        .transpose()?;
    if let Some(s) = &server {
        out.line(format!("metrics at http://{}/metrics", s.address()));
        out.json(&json!({ "event": "metrics", "address": s.address().to_string() }));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .map_err(|e| CliError::bad_input(format!("cannot install the signal handler: {e}")))?;
    out.line(format!(
        "{} shard(s) resident; verifying every {} s; Ctrl-C or SIGTERM releases them",
        shards.len(),
        args.verify_every
    ));

    let interval = Duration::from_secs(args.verify_every);
    let mut last = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() < interval {
            continue;
        }
        last = Instant::now();
        for shard in &shards {
            if let Err(e) = manager.verify_sealed(shard) {
                out.json(&json!({ "event": "verification_failed", "shard_id": shard.shard_id, "error": e.to_string() }));
                drop(shards);
                return Err(e.into());
            }
            out.line(format!("verified {}", shard.shard_id));
        }
    }
    let count = shards.len();
    drop(shards);
    drop(server);
    out.line(format!(
        "released {count} shard(s); VRAM used now {} bytes",
        manager.used_vram()
    ));
    out.json(&json!({ "event": "released", "shards": count, "used_vram": manager.used_vram() }));
    Ok(Exit::Ok)
}
