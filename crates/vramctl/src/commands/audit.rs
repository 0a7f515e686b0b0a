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
            out.json(&json!({ "file": file, "holds": false, "line": e.line, "error": e.problem.to_string() }));
            Err(CliError::new(
                Exit::VerificationFailed,
                format!("{file}: does not hold: {e}"),
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
