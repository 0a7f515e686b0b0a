//! `vramctl audit verify FILE`: checks a signed audit log with the library's verifier
//! (`vram_residency::audit::verify_audit_log`) and says which record first fails and why.
//! Exit 0 when it holds, 1 when it is broken or cannot be verified, 2 for bad input.

use serde_json::json;
use vram_residency::audit::{
    AuditLogProblem, AuditPublicKey, AuditVerifyOptions, Checkpoint, verify_audit_log,
};

use crate::cli::AuditVerifyArgs;
use crate::error::{CliError, CliResult, Exit};
use crate::keys;
use crate::output::Output;

pub(crate) fn verify(out: Output, args: &AuditVerifyArgs) -> CliResult<Exit> {
    let public_key = pinned_key(args)?;
    let kept_checkpoint = args
        .checkpoint
        .as_deref()
        .map(|text| {
            text.parse::<Checkpoint>()
                .map_err(|e| CliError::bad_input(format!("--checkpoint: {e}")))
        })
        .transpose()?;
    let options = AuditVerifyOptions {
        public_key,
        kept_checkpoint,
        allow_unsigned_tail: args.allow_unsigned_tail,
    };
    let file = crate::output::shown(&args.file);
    match verify_audit_log(&args.file, &options) {
        Ok(summary) => {
            let pinning = if summary.key_pinned {
                "pinned".to_owned()
            } else {
                "NOT pinned: checked against the key the log names, which proves only that the log is consistent with itself; pass --public-key or --token-file".to_owned()
            };
            out.result(format!(
                "{file}: holds: {} records, {} checkpoint(s), {} signed, {} unsigned ({} after the last checkpoint, {} found unsigned when the log was reopened); audit key {} ({pinning}){}",
                summary.records,
                summary.checkpoints,
                summary.signed_records,
                summary.unsigned_records(),
                summary
                    .unsigned_records()
                    .saturating_sub(summary.adopted_unsigned_records),
                summary.adopted_unsigned_records,
                summary.public_key,
                if options.kept_checkpoint.is_some() { "; covers the kept checkpoint" } else { "" },
            ));
            out.json(&json!({
                "file": file,
                "holds": true,
                "records": summary.records,
                "checkpoints": summary.checkpoints,
                "signed_records": summary.signed_records,
                "unsigned_records": summary.unsigned_records(),
                "adopted_unsigned_records": summary.adopted_unsigned_records,
                "public_key": summary.public_key.to_string(),
                "key_pinned": summary.key_pinned,
                "last_checkpoint": summary.last_checkpoint.map(|c| c.to_string()),
            }));
            Ok(Exit::Ok)
        }
        Err(e) => {
            if let AuditLogProblem::Io(reason) = &e.problem {
                return Err(CliError::file(
                    &args.file,
                    reason,
                    "give the path of an audit log file",
                ));
            }
            let hint = match &e.problem {
                AuditLogProblem::KeyMismatch { .. } if args.public_key.is_none() => {
                    key_mismatch_hint(&args.file, &args.token.worker_id)
                }
                _ => String::new(),
            };
            out.json(&json!({ "file": file, "holds": false, "line": e.line, "error": e.problem.to_string(), "hint": hint }));
            Err(CliError::new(
                Exit::VerificationFailed,
                format!(
                    "{file}: does not hold: {e}{}",
                    if hint.is_empty() {
                        String::new()
                    } else {
                        format!("; {hint}")
                    }
                ),
            ))
        }
    }
}

/// The key to pin: `--public-key`, or the audit key derived from the worker token.
fn pinned_key(args: &AuditVerifyArgs) -> CliResult<Option<AuditPublicKey>> {
    if let Some(hex) = &args.public_key {
        return hex
            .parse()
            .map(Some)
            .map_err(|e| CliError::bad_input(format!("--public-key: {e}")));
    }
    let key = keys::worker_key(&args.token)?;
    if !key.is_token_derived() {
        return Ok(None);
    }
    Ok(Some(key.seal_key()?.audit_signing_key()?.public_key()))
}

/// Why a token-derived key may not be the log's: the key is derived from the token *and* the
/// worker id, and a log written under another worker id (a Python `Manager("worker-7")`, a
/// `vramctl seal --worker-id`) names it in every record.
fn key_mismatch_hint(log: &std::path::Path, worker_id: &str) -> String {
    use std::io::BufRead;
    let written_by = std::fs::File::open(log).ok().and_then(|f| {
        std::io::BufReader::new(f)
            .lines()
            .take(4)
            .map_while(Result::ok)
            .find_map(|line| {
                serde_json::from_str::<serde_json::Value>(&line)
                    .ok()?
                    .get("worker_id")?
                    .as_str()
                    .map(str::to_owned)
            })
    });
    match written_by {
        Some(w) if w != worker_id => format!(
            "the key is derived from the token and the worker id, and the log was written by worker {}: pass --worker-id {} (this check used {})",
            crate::output::shown(&w),
            crate::output::shown(&w),
            crate::output::shown(worker_id)
        ),
        _ => "the key is derived from the token and the worker id: check that this is the token that wrote the log".to_owned(),
    }
}
