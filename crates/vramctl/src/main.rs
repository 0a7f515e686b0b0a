//! `vramctl`: point it at a model file and a GPU.
//!
//! Commands: `doctor` (can these GPUs hold VRAM-only shards?), `digest` (the expected digest of
//! a file, for manifests), `seal` (keep files sealed in VRAM, re-verified, with metrics and an
//! audit log), `audit verify` (check a signed audit log), `bench` (seal and verify speed next to the naive path) and `demo` (the README's
//! main job). Exit codes: 0 ok, 1 verification failure, 2 bad input, 3 no GPU / policy violation,
//! 4 audit records lost (the audit trail is incomplete).
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod error;
mod files;
mod host_memory;
mod keys;
mod metrics_server;
mod notify;
mod output;
mod session;
mod signals;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::output::Output;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return bad_argument(&e),
    };
    init_logging(cli.verbose);
    let out = Output {
        json: cli.json,
        quiet: cli.quiet,
    };
    let takes_backend = matches!(
        cli.command,
        Command::Seal(_) | Command::Bench(_) | Command::Demo
    );
    if cli.backend.backend.is_some() && !takes_backend {
        output::warn(
            "error: --backend applies to seal, bench and demo only; this command uses no backend",
        );
        return ExitCode::from(error::Exit::BadInput as u8);
    }
    let result = match cli.command {
        Command::Doctor => commands::doctor::run(out),
        Command::Digest(args) => commands::digest::run(out, &args),
        Command::Seal(args) => commands::seal::run(out, &cli.backend, &args),
        Command::Audit(cli::AuditCommand::Verify(args)) => commands::audit::verify(out, &args),
        Command::Bench(args) => commands::bench::run(out, &cli.backend, &args),
        Command::Demo => commands::demo::run(out, &cli.backend),
    };
    match result {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(e) => {
            if out.json && !e.reported_in_json {
                output::say(
                    &serde_json::json!({ "error": e.to_string(), "exit_code": e.exit as u8 })
                        .to_string(),
                );
            }
            output::warn(&format!("error: {e}"));
            ExitCode::from(e.exit as u8)
        }
    }
}

/// A value our own parsers refused gets the one-line error every bad input gets (its message
/// names the option and the remedy); clap reports everything else (unknown options, missing
/// arguments, `--help`) its own way.
fn bad_argument(e: &clap::Error) -> ExitCode {
    use std::error::Error as _;
    match (e.kind(), e.source()) {
        (clap::error::ErrorKind::ValueValidation, Some(reason)) => {
            output::warn(&format!("error: {reason}"));
            ExitCode::from(error::Exit::BadInput as u8)
        }
        _ => e.exit(),
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => return,
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // At the trace level each timed step (a seal's, a verification's) is shown as it ends,
    // with its time.
    let spans = if verbose >= 3 {
        tracing_subscriber::fmt::format::FmtSpan::CLOSE
    } else {
        tracing_subscriber::fmt::format::FmtSpan::NONE
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_span_events(spans)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
