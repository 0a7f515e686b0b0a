//! `vramctl seal FILE...`: seal files into VRAM and keep them resident, re-verified on an
//! interval, with Prometheus metrics on a loopback address and an audit log, until Ctrl-C or
//! SIGTERM, which release every shard (audited) and exit 0.
//!
//! In three parts, each with one job: [`args`] validates the arguments into a job before any
//! work (files and headers, expected digests, the metrics port bound), [`place`] turns the job
//! into one library seal plan and executes it, [`serve`] keeps what was sealed verified until
//! stopped. This module opens the session and signs the audit log at the end.

mod args;
mod place;
mod serve;

use serde_json::json;

use crate::cli::{BackendArgs, BackendChoice, SealArgs};
use crate::error::{CliError, CliResult, Exit};
use crate::keys;
use crate::output::{self, Output};
use crate::session::{self, AuditTarget, Session};
use crate::signals::Signals;

pub(crate) fn run(out: Output, backend: &BackendArgs, args: &SealArgs) -> CliResult<Exit> {
    // Ctrl-C or SIGTERM at any moment (reading headers, hashing, sealing, serving) releases what
    // is held and exits 0: the flag is checked between steps. SIGHUP re-verifies.
    let signals = Signals::install()?;
    // Everything about the input is checked before a byte of VRAM is used.
    let job = args::SealJob::from_args(args)?;
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
        job.algorithm,
    )?;
    out.line(&session.backend_note);
    out.line(format!("digest: {}", job.algorithm));
    if let Some(args::Signature { bundle, signer }) = &job.signature {
        let bundle = crate::output::shown(bundle);
        match signer {
            Some(signer) => out.line(format!(
                "signed manifest {bundle}: signature verified ({signer})"
            )),
            None => out.line(format!(
                "signed manifest {bundle}: signature NOT verified (trusted by the operator)"
            )),
        }
        out.json(&json!({ "event": "signature", "signed_manifest": bundle, "verified": signer.is_some(), "signer": signer }));
    }
    out.line(format!("seal key: {}", key.origin));
    if let Some(file) = &session.audit_file {
        out.line(format!(
            "audit log {}: signed with audit key {}{}",
            crate::output::shown(file.path()),
            file.public_key(),
            if key.is_token_derived() {
                ""
            } else {
                " (random for this run; it is recorded in the log's first record)"
            }
        ));
        out.json(&json!({ "event": "audit_key", "audit_log": file.path().display().to_string(), "public_key": file.public_key().to_string(), "from_token": key.is_token_derived() }));
    }
    let result = seal_and_serve(out, &session, job, &signals);
    finish_audit(&session, result)
}

/// Places the job's files, then serves them until told to stop.
fn seal_and_serve(
    out: Output,
    session: &Session,
    job: args::SealJob,
    signals: &Signals,
) -> CliResult<Exit> {
    let manager = &session.manager;
    manager.enforce_vram_only_policy()?;
    let Some(held) = place::place(out, manager, &job, signals)? else {
        return Ok(Exit::Ok);
    };
    let args::SealJob { files, serving, .. } = job;
    drop(files); // close the files
    if signals.stop_requested() {
        place::released_by_signal(out, held.count());
        return Ok(Exit::Ok);
    }
    serve::serve(out, manager, serving, held, signals)
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
