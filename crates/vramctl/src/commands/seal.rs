//! `vramctl seal FILE...`: seal files into VRAM and keep them resident, re-verified on an
//! interval, with Prometheus metrics on a loopback address and an audit log, until Ctrl-C or
//! SIGTERM, which release every shard (audited) and exit 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use vram_residency::ShardId;
use vram_residency::digest::digest_source;
use vram_residency::{
    DigestAlgorithm, FileSource, GroupPart, SealOptions, SealedGroup, SealedShard, ShardDigest,
    ShardSource, VramError, VramManager,
};

use crate::cli::{BackendArgs, BackendChoice, SealArgs};
use crate::error::{CliError, CliResult, Exit};
use crate::files::ProgressSource;
use crate::metrics_server::MetricsServer;
use crate::notify::Notifier;
use crate::output::{self, Output, human_bytes};
use crate::session::{AuditTarget, Session};
use crate::signals::Signals;
use crate::{files, keys, session};
use vramctl::formats::{ModelFormat, recognise};

/// What a file must hash to, from `--expect` or a manifest line.
#[derive(Debug, Clone, Copy)]
struct Expected {
    algorithm: DigestAlgorithm,
    digest: ShardDigest,
    /// Given as bare hex on the command line: when it is the file's flat SHA-256 instead of its
    /// tree digest, the error says so.
    bare: bool,
    /// Where it was given, for errors: `--expect` or `the manifest`.
    given_in: &'static str,
}

/// A file named on the command line or in a manifest, with what it must hash to.
struct Requested {
    path: PathBuf,
    expected: Option<Expected>,
}

/// A file whose header was checked, ready to seal.
struct Prepared {
    path: PathBuf,
    source: FileSource,
    format: ModelFormat,
    expected: Option<Expected>,
}

/// A shard id from the path as given (`a/model.safetensors` and `b/model.safetensors` are two
/// shards), a leading `./` dropped; `ShardId::from_name_lossy` turns unsafe characters into `_`.
pub(crate) fn shard_id_for(path: &Path) -> String {
    let text = path.to_string_lossy();
    let text = text.strip_prefix("./").unwrap_or(&text);
    ShardId::from_name_lossy(text).into_string()
}

/// Two files that would get one shard id (the same file twice, or names that differ only in
/// characters an id cannot hold) are refused before anything is sealed.
fn check_distinct_ids(requested: &[Requested]) -> CliResult<()> {
    let mut seen: std::collections::HashMap<String, &Path> = std::collections::HashMap::new();
    for Requested { path, .. } in requested {
        if let Some(first) = seen.insert(shard_id_for(path), path) {
            return Err(CliError::bad_input(format!(
                "{} and {} would both be shard {}; give each file once",
                first.display(),
                path.display(),
                shard_id_for(path)
            )));
        }
    }
    Ok(())
}

/// `ALG:HEX` as `vramctl digest` prints it, `sha256:HEX` (or `SHA256:HEX`) for a flat SHA-256
/// (`sha256sum`, a Hugging Face LFS oid), or bare `HEX` for the default tree digest.
fn parse_expected(value: &str) -> CliResult<Expected> {
    let (algorithm, digest) = vramctl::manifest::parse_tagged(value, DigestAlgorithm::default())
        .ok_or_else(|| {
            CliError::bad_input(format!(
                "--expect {value:?} is not a digest; give what `vramctl digest FILE` prints (sha256-tree-65536:HEX), or sha256:HEX for a flat SHA-256"
            ))
        })?;
    Ok(Expected {
        algorithm,
        digest,
        bare: !value.contains(':'),
        given_in: "--expect",
    })
}

/// The files to seal, in order, and what each must hash to: `FILE...` with `--expect`, or
/// every line of `--manifest`.
fn requested(args: &SealArgs) -> CliResult<Vec<Requested>> {
    if let Some(manifest) = &args.manifest {
        return read_manifest(manifest);
    }
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
    Ok(args
        .files
        .iter()
        .enumerate()
        .map(|(i, path)| Requested {
            path: path.clone(),
            expected: expected.get(i).copied(),
        })
        .collect())
}

/// Largest manifest read: far beyond any model's shard list, short of a runaway file.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// Every line of a manifest (`sha256sum` or `vramctl digest` lines), names taken from the
/// manifest's directory. A line that is not a checksum line refuses the whole manifest: a
/// manifest sealed in part would serve a model with shards missing.
fn read_manifest(manifest: &Path) -> CliResult<Vec<Requested>> {
    use std::io::Read as _;
    let unreadable = |e: std::io::Error| {
        CliError::file(
            manifest,
            &format!("cannot be read ({e})"),
            "give a manifest file",
        )
    };
    let (file, len) = files::open_model(manifest)?;
    if len > MAX_MANIFEST_BYTES {
        return Err(CliError::file(
            manifest,
            &format!("is {len} bytes, larger than a manifest ({MAX_MANIFEST_BYTES} bytes at most)"),
            "give the manifest, not a model file",
        ));
    }
    let mut text = String::new();
    file.take(MAX_MANIFEST_BYTES)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    let base = manifest.parent().unwrap_or_else(|| Path::new(""));
    let mut requested = Vec::new();
    for (number, line) in (1u64..).zip(text.lines()) {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (algorithm, digest, name) = vramctl::manifest::parse_line(line).ok_or_else(|| {
            CliError::bad_input(format!(
                "{}:{number}: improperly formatted checksum line; expected `HEX  FILE` (sha256sum) or `sha256-tree-65536:HEX  FILE` (vramctl digest)",
                manifest.display()
            ))
        })?;
        let name = Path::new(&name);
        let path = if name.is_absolute() {
            name.to_path_buf()
        } else {
            base.join(name.strip_prefix("./").unwrap_or(name))
        };
        requested.push(Requested {
            path,
            expected: Some(Expected {
                algorithm,
                digest,
                bare: false,
                given_in: "the manifest",
            }),
        });
    }
    if requested.is_empty() {
        return Err(CliError::bad_input(format!(
            "{}: no checksum lines; write one with `vramctl digest FILE... > {}`",
            manifest.display(),
            manifest.display()
        )));
    }
    Ok(requested)
}

/// Why a seal's digest did not match: when a bare `--expect HEX` is the file's flat SHA-256,
/// say so (the operator pasted `sha256sum` output) instead of calling the file wrong.
fn mismatch_remedy(p: &Prepared) -> String {
    let flat = p
        .expected
        .filter(|e| e.bare)
        .and_then(|e| Some((e, digest_source(&p.source, DigestAlgorithm::Sha256).ok()?)));
    match flat {
        Some((e, flat)) if flat.ct_eq(&e.digest) => format!(
            "this is the file's flat SHA-256, not its tree digest: write --expect sha256:{}",
            e.digest.to_hex()
        ),
        _ => "refusing to seal it (wrong or corrupted file)".to_owned(),
    }
}

/// A loopback address: an IP and port, or `localhost:PORT` (every address the name resolves to
/// must be loopback).
fn parse_address(value: &str) -> CliResult<SocketAddr> {
    use std::net::ToSocketAddrs;
    let not_an_address = || {
        CliError::bad_input(format!(
            "--metrics {value:?} is not an address; use 127.0.0.1:PORT or localhost:PORT"
        ))
    };
    let addrs: Vec<SocketAddr> = match value.parse::<SocketAddr>() {
        Ok(addr) => vec![addr],
        Err(_)
            if value
                .split_once(':')
                .is_some_and(|(host, _)| host == "localhost") =>
        {
            value
                .to_socket_addrs()
                .map_err(|_| not_an_address())?
                .collect()
        }
        Err(_) => return Err(not_an_address()),
    };
    match addrs.first() {
        Some(first) if addrs.iter().all(|a| a.ip().is_loopback()) => Ok(*first),
        Some(_) => Err(CliError::bad_input(format!(
            "--metrics {value:?} is not a loopback address; metrics are served on 127.0.0.1, [::1] or localhost only (put a proxy in front to expose them)"
        ))),
        None => Err(not_an_address()),
    }
}

pub(crate) fn run(out: Output, backend: &BackendArgs, args: &SealArgs) -> CliResult<Exit> {
    // Ctrl-C or SIGTERM at any moment (reading headers, hashing, sealing, serving) releases what
    // is held and exits 0: the flag is checked between steps. SIGHUP re-verifies.
    let signals = Signals::install()?;
    // Everything about the input is checked before a byte of VRAM is used.
    let requested = requested(args)?;
    let metrics_addr = args.metrics.as_deref().map(parse_address).transpose()?;
    if args.verify_every == 0 {
        return Err(CliError::bad_input(
            "--verify-every 0; give a number of seconds ≥ 1",
        ));
    }
    if args.group.is_none() {
        check_distinct_ids(&requested)?;
    }
    // Every file and its header are checked before the GPU is touched; only headers are read.
    let mut prepared = Vec::new();
    for Requested { path, expected } in requested {
        let path = &path;
        let (file, len) = files::open_model(path)?;
        let head = files::read_head(path, &file, len)?;
        let format = recognise(path, &head, len)
            .map_err(|e| CliError::file(path, &e, "use an intact model file"))?;
        let source = FileSource::new(file).map_err(|e| {
            CliError::file(path, &format!("cannot be read ({e})"), "check the file")
        })?;
        prepared.push(Prepared {
            path: path.clone(),
            source,
            format,
            expected,
        });
    }
    let key = keys::worker_key(&args.token)?;
    let audit = match &args.audit_log {
        Some(path) => AuditTarget::File {
            path,
            repair: args.repair_audit_log,
        },
        None => AuditTarget::Memory,
    };
    let session = session::open(
        backend,
        BackendChoice::Cuda,
        &audit,
        &key,
        &args.token.worker_id,
    )?;
    out.line(&session.backend_note);
    out.line(format!("seal key: {}", key.origin));
    if let Some(file) = &session.audit_file {
        out.line(format!(
            "audit log {}: signed with audit key {}{}",
            file.path().display(),
            file.public_key(),
            if key.is_token_derived() {
                ""
            } else {
                " (random for this run; it is recorded in the log's first record)"
            }
        ));
        out.json(&json!({ "event": "audit_key", "audit_log": file.path().display().to_string(), "public_key": file.public_key().to_string(), "from_token": key.is_token_derived() }));
    }
    let result = seal_and_serve(
        out,
        &session.manager,
        args,
        metrics_addr,
        prepared,
        &signals,
    );
    finish_audit(&session, result)
}

/// Seals what was prepared, then serves and re-verifies it until told to stop.
fn seal_and_serve(
    out: Output,
    manager: &VramManager,
    args: &SealArgs,
    metrics_addr: Option<SocketAddr>,
    prepared: Vec<Prepared>,
    signals: &Signals,
) -> CliResult<Exit> {
    manager.enforce_vram_only_policy()?;
    if args.group.is_none() {
        // Before any file is read in full: a file larger than the free VRAM is refused now.
        check_capacity(manager, args, &prepared)?;
    }

    // A flat SHA-256 (`sha256:HEX`) is serial and is checked on the host before sealing; a tree
    // digest is checked by the seal itself, against the bytes in VRAM.
    for p in &prepared {
        if stopped(out, signals, 0) {
            return Ok(Exit::Ok);
        }
        let Some(Expected {
            digest: want,
            given_in,
            ..
        }) = p
            .expected
            .filter(|e| e.algorithm == DigestAlgorithm::Sha256)
        else {
            continue;
        };
        let got = digest_source(&p.source, DigestAlgorithm::Sha256).map_err(|e| {
            CliError::file(&p.path, &format!("read failed ({e})"), "check the disk")
        })?;
        if !got.ct_eq(&want) {
            return Err(CliError::new(
                Exit::VerificationFailed,
                format!(
                    "{}: digest {} differs from {given_in} sha256:{}; refusing to seal it (wrong or corrupted file)",
                    p.path.display(),
                    got.to_hex(),
                    want.to_hex()
                ),
            ));
        }
    }
    let held = match &args.group {
        Some(model_id) => seal_group(out, manager, args, model_id, &prepared)?,
        None => Held::Shards(seal_each(out, manager, args, &prepared, signals)?),
    };
    drop(prepared); // close the files
    if stopped(out, signals, held.count()) {
        drop(held);
        return Ok(Exit::Ok);
    }
    serve_and_verify(out, manager, args, metrics_addr, held, signals)
}

/// Whether a stop was asked for; says so, with what is being released.
fn stopped(out: Output, signals: &Signals, held: usize) -> bool {
    let asked = signals.stop_requested();
    if asked {
        out.line(format!("stopped by a signal; releasing {held} shard(s)"));
        out.json(&json!({ "event": "released", "shards": held, "reason": "signal" }));
    }
    asked
}

/// Once every shard is released: signs the audit log and, after a clean stop, prints its last
/// checkpoint on stderr (to keep off the host); turns lost audit records into exit 4 when
/// nothing worse happened.
fn finish_audit(session: &Session, result: CliResult<Exit>) -> CliResult<Exit> {
    let lost = session.manager.metrics().audit_failures;
    // An error stays a one-line error: the log is still signed when the sink closes, and
    // `vramctl audit verify --json` shows its last checkpoint.
    if let Some(file) = session.audit_file.as_ref().filter(|_| result.is_ok()) {
        match file.checkpoint() {
            Ok(checkpoint) => output::warn(&format!(
                "audit checkpoint (keep it off this host; `vramctl audit verify --checkpoint` checks the log against it): {checkpoint}"
            )),
            Err(e) => output::warn(&format!("audit log could not be signed at exit: {e}")),
        }
    }
    if lost == 0 {
        return result;
    }
    let message = format!(
        "{lost} audit record(s) could not be stored; the audit trail is incomplete (see the errors above)"
    );
    match result {
        Ok(_) => Err(CliError::new(Exit::AuditFailed, message)),
        Err(e) => {
            output::warn(&format!("error: {message}"));
            Err(e)
        }
    }
}

/// What `seal` keeps resident: shards sealed one by one, or one group.
enum Held {
    Shards(Vec<SealedShard>),
    Group(SealedGroup),
}

impl Held {
    fn count(&self) -> usize {
        match self {
            Self::Shards(s) => s.len(),
            Self::Group(g) => g.shards.len(),
        }
    }
}

/// The file(s) must fit the free VRAM of `--device` before anything is read.
fn check_capacity(manager: &VramManager, args: &SealArgs, prepared: &[Prepared]) -> CliResult<()> {
    let needed: usize = prepared
        .iter()
        .map(|p| manager.vram_footprint(usize::try_from(p.source.len()).unwrap_or(usize::MAX)))
        .fold(0, usize::saturating_add);
    let available = manager.available_vram_on(args.device)?;
    if needed > available {
        return Err(CliError::bad_input(format!(
            "the file(s) need {needed} bytes of VRAM on GPU {}, {available} are free; free VRAM, use a larger GPU or another --device",
            args.device
        )));
    }

    Ok(())
}

/// `sealed FILE as ID on GPU N: SIZE (FORMAT), digest HEX`.
fn sealed_line(p: &Prepared, shard: &SealedShard) -> String {
    format!(
        "sealed {} as {} on GPU {}: {} ({}), digest {}",
        p.path.display(),
        shard.shard_id,
        shard.gpu_device,
        human_bytes(u64::try_from(shard.vram_bytes).unwrap_or(0)),
        p.format.describe(),
        shard.digest
    )
}

/// Seals every file as one group (`--group`): file i on the i-th of `--devices`, cycling.
fn seal_group(
    out: Output,
    manager: &VramManager,
    args: &SealArgs,
    model_id: &str,
    prepared: &[Prepared],
) -> CliResult<Held> {
    let devices = if args.devices.is_empty() {
        vec![args.device]
    } else {
        args.devices.clone()
    };
    let total: u64 = prepared.iter().map(|p| p.source.len()).sum();
    let bar = out.progress(total, "sealing");
    let sources: Vec<ProgressSource<'_>> = prepared
        .iter()
        .map(|p| ProgressSource {
            inner: &p.source,
            bar: &bar,
        })
        .collect();
    let parts: Vec<GroupPart<'_>> = sources
        .iter()
        .zip(devices.iter().cycle())
        .map(|(source, &gpu_device)| GroupPart { source, gpu_device })
        .collect();
    let started = Instant::now();
    let sealed = manager.seal_model_group(model_id, &parts);
    let took = started.elapsed();
    bar.finish_and_clear();
    let group = sealed?;
    // Tree digests given with --expect are checked against what the group sealed; on a
    // mismatch the whole group is released (dropped) before the error is returned.
    for (shard, p) in group.shards.iter().zip(prepared) {
        let Some(want) = p
            .expected
            .filter(|e| e.algorithm != DigestAlgorithm::Sha256)
        else {
            continue;
        };
        if ShardDigest::from_hex(&shard.digest).map_or(true, |d| !d.ct_eq(&want.digest)) {
            return Err(CliError::new(
                Exit::VerificationFailed,
                format!(
                    "{}: digest {} differs from {} {}; the group was released; {}",
                    p.path.display(),
                    shard.digest,
                    want.given_in,
                    want.digest.to_hex(),
                    mismatch_remedy(p)
                ),
            ));
        }
    }
    for (shard, p) in group.shards.iter().zip(prepared) {
        out.result(sealed_line(p, shard));
        out.json(&json!({ "event": "sealed", "file": p.path.display().to_string(), "shard": shard, "model": p.format, "group": model_id }));
    }
    #[allow(clippy::cast_precision_loss, reason = "throughput display")]
    let gbps = total as f64 / took.as_secs_f64().max(1e-9) / 1e9;
    out.result(format!(
        "sealed group {model_id}: {} shard(s) on GPU(s) {devices:?}, group seal {}, in {:.3} s ({gbps:.1} GB/s)",
        group.shards.len(),
        group.group_seal().to_hex(),
        took.as_secs_f64()
    ));
    out.json(&json!({ "event": "group_sealed", "group": model_id, "shards": group.shards.len(), "group_seal": group.group_seal().to_hex(), "seconds": took.as_secs_f64() }));
    Ok(Held::Group(group))
}

/// Seals every file on its own, on `--device`.
fn seal_each(
    out: Output,
    manager: &VramManager,
    args: &SealArgs,
    prepared: &[Prepared],
    signals: &Signals,
) -> CliResult<Vec<SealedShard>> {
    let mut shards: Vec<SealedShard> = Vec::new();
    for p in prepared {
        if signals.stop_requested() {
            // The caller releases what was sealed so far.
            break;
        }
        let mut options = SealOptions::new().shard_id(shard_id_for(&p.path));
        if let Some(want) = p
            .expected
            .filter(|e| e.algorithm != DigestAlgorithm::Sha256)
        {
            options = options.expect_digest(want.digest);
        }
        let bar = out.progress(p.source.len(), "sealing");
        let source = ProgressSource {
            inner: &p.source,
            bar: &bar,
        };
        let started = Instant::now();
        let sealed = manager.seal_from_source(&source, args.device, &options);
        let took = started.elapsed();
        bar.finish_and_clear();
        let shard = sealed.map_err(|e| match e {
            VramError::UnexpectedDigest {
                expected: wanted,
                actual,
            } => CliError::new(
                Exit::VerificationFailed,
                format!(
                    "{}: digest {actual} differs from {} {wanted}; {}",
                    p.path.display(),
                    p.expected.map_or("--expect", |e| e.given_in),
                    mismatch_remedy(p)
                ),
            ),
            other => other.into(),
        })?;
        #[allow(clippy::cast_precision_loss, reason = "throughput display")]
        let gbps = shard.vram_bytes as f64 / took.as_secs_f64().max(1e-9) / 1e9;
        out.result(format!(
            "{}, in {:.3} s ({gbps:.1} GB/s)",
            sealed_line(p, &shard),
            took.as_secs_f64()
        ));
        out.json(&json!({ "event": "sealed", "file": p.path.display().to_string(), "shard": shard, "model": p.format, "seconds": took.as_secs_f64() }));
        shards.push(shard);
    }
    Ok(shards)
}

/// Serves metrics, re-verifies what is held every `--verify-every` seconds, and releases it on
/// Ctrl-C or SIGTERM.
fn serve_and_verify(
    out: Output,
    manager: &VramManager,
    args: &SealArgs,
    metrics_addr: Option<SocketAddr>,
    held: Held,
    signals: &Signals,
) -> CliResult<Exit> {
    let server = metrics_addr
        .map(|a| MetricsServer::start(a, manager.clone()))
        .transpose()?;
    if let Some(s) = &server {
        out.line(format!("metrics at http://{}/metrics", s.address()));
        out.json(&json!({ "event": "metrics", "address": s.address().to_string() }));
    }
    out.line(format!(
        "{} shard(s) resident; verifying every {} s; Ctrl-C or SIGTERM releases them",
        held.count(),
        args.verify_every
    ));

    // A failed verification does not end the process: the failure stays visible (metrics keep
    // being served, `result="failure"` can be scraped), the model stays refused (the manager
    // has stopped, so nothing verifies again), and the exit code reports it after SIGTERM.
    let notifier = Notifier::from_env();
    notifier.notify(&format!(
        "READY=1\nSTATUS={} shard(s) sealed; verifying every {} s",
        held.count(),
        args.verify_every
    ));
    let mut pinged = Instant::now();
    let interval = Duration::from_secs(args.verify_every);
    let mut last = Instant::now();
    let mut failure: Option<VramError> = None;
    while !signals.stop_requested() {
        std::thread::sleep(Duration::from_millis(100));
        if notifier
            .watchdog_interval()
            .is_some_and(|every| pinged.elapsed() >= every)
        {
            notifier.notify("WATCHDOG=1");
            pinged = Instant::now();
        }
        let hangup = signals.take_reverify();
        if hangup {
            out.line("SIGHUP: re-verifying every shard now (SIGTERM or Ctrl-C stops)");
        }
        if failure.is_some() || (!hangup && last.elapsed() < interval) {
            continue;
        }
        last = Instant::now();
        let checked = match &held {
            Held::Shards(shards) => shards.iter().try_for_each(|shard| {
                manager
                    .verify_sealed(shard)
                    .inspect(|()| out.line(format!("verified {}", shard.shard_id)))
                    .inspect_err(|e| {
                        out.json(&json!({ "event": "verification_failed", "shard_id": shard.shard_id, "error": e.to_string() }));
                    })
            }),
            Held::Group(group) => manager
                .verify_group(group)
                .inspect(|()| {
                    out.line(format!(
                        "verified group {} ({} shards)",
                        group.model_id,
                        group.shards.len()
                    ));
                })
                .inspect_err(|e| {
                    out.json(&json!({ "event": "verification_failed", "group": group.model_id, "error": e.to_string() }));
                }),
        };
        notifier.notify(&match &checked {
            Ok(()) => format!("STATUS={} shard(s) resident, all verified", held.count()),
            Err(e) => format!("STATUS=verification failed, the model is refused: {e}"),
        });
        if let Err(e) = checked {
            output::warn(&format!(
                "error: {e}; the model is refused from now on; metrics stay up until Ctrl-C or SIGTERM"
            ));
            failure = Some(e);
        }
    }
    let count = held.count();
    notifier.notify(&format!("STOPPING=1\nSTATUS=releasing {count} shard(s)"));
    drop(held);
    drop(server);
    out.line(format!(
        "released {count} shard(s); VRAM used now {} bytes",
        manager.used_vram()
    ));
    out.json(&json!({ "event": "released", "shards": count, "used_vram": manager.used_vram() }));
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(Exit::Ok),
    }
}
