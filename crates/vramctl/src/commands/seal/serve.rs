//! Serving: what was sealed stays resident, re-verified by the library's scrubber once each
//! shard's last proof is an interval old (at once on SIGHUP),
//! metrics served on the port bound at start, systemd told how it goes, until Ctrl-C or
//! SIGTERM releases everything. A failed verification does not end the process: the failure
//! stays visible (metrics keep being served, `result="failure"` can be scraped), the model
//! stays refused (the manager has stopped, so nothing verifies again), and the exit code
//! reports it after SIGTERM.

use std::sync::Mutex;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use serde_json::json;
use vram_residency::{GpuShare, ScrubEvent, ScrubOptions, VramError, VramManager};

use super::args::Serving;
use super::place::Held;
use crate::error::{CliResult, Exit};
use crate::notify::Notifier;
use crate::output::{self, Output};
use crate::signals::Signals;

/// How often the loop looks at signals, the watchdog and the clock.
const TICK: Duration = Duration::from_millis(100);

/// Serves `held` until a stop is asked for, then releases it.
pub(super) fn serve(
    out: Output,
    manager: &VramManager,
    serving: Serving,
    held: Held,
    signals: &Signals,
) -> CliResult<Exit> {
    let server = serving
        .metrics
        .map(|listener| listener.serve(manager.clone()))
        .transpose()?;
    if let Some(s) = &server {
        out.line(format!("metrics at http://{}/metrics", s.address()));
        out.json(&json!({ "event": "metrics", "address": s.address().to_string() }));
    }
    let every = serving.verify_every.as_secs();
    out.line(format!(
        "{} shard(s) resident; verifying every {every} s; Ctrl-C or SIGTERM releases them",
        held.count(),
    ));
    let notifier = Notifier::from_env();
    notifier.notify(&format!(
        "READY=1\nSTATUS={} shard(s) sealed; verifying every {every} s",
        held.count(),
    ));
    let failure = keep_verified(
        out,
        manager,
        (serving.verify_every, serving.summary_every, serving.share),
        signals,
        &notifier,
    );
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

/// What the scrubber reported, carried to the main thread (which owns the output).
enum Report {
    Verified(String),
    AllProven(usize),
    Failed(String, VramError),
}

/// Keeps every shard re-verified by the library's scrubber (each one once it was last proven
/// the interval ago, every one at once on SIGHUP), at the chosen share of the GPU,
/// on the scrubber's thread: this loop stays free to answer signals and ping the systemd
/// watchdog however long a verification takes. Returns the first failure, after which nothing
/// is verified again.
fn keep_verified(
    out: Output,
    manager: &VramManager,
    (interval, summary_every, share): (Duration, Duration, Option<GpuShare>),
    signals: &Signals,
    notifier: &Notifier,
) -> Option<VramError> {
    let (tx, reports) = channel();
    let tx = Mutex::new(tx);
    let mut options = ScrubOptions::new()
        .interval(interval)
        .summary_interval(summary_every);
    if let Some(share) = share {
        options = options.share(share);
    }
    let options = options.on_event(move |event| {
        let report = match event {
            ScrubEvent::Verified { shard_id } => Report::Verified((*shard_id).to_owned()),
            ScrubEvent::AllProven { shards } => Report::AllProven(*shards),
            ScrubEvent::Failed { shard_id, error } => {
                Report::Failed((*shard_id).to_owned(), (*error).clone())
            }
            _ => return,
        };
        // The main loop has ended when nobody receives: nothing is left to tell.
        let _ = tx.lock().map(|tx| tx.send(report));
    });
    let scrubber = match manager.start_scrubber(options) {
        Ok(scrubber) => scrubber,
        Err(e) => return Some(e),
    };
    let mut pinged = Instant::now();
    let mut failure: Option<VramError> = None;
    while !signals.stop_requested() {
        match reports.recv_timeout(TICK) {
            Ok(Report::Verified(id)) => out.line(format!("verified {}", output::shown(&id))),
            Ok(Report::AllProven(shards)) => {
                notifier.notify(&format!("STATUS={shards} shard(s) resident, all verified"));
            }
            Ok(Report::Failed(id, e)) => {
                out.json(&json!({ "event": "verification_failed", "shard_id": id, "error": e.to_string() }));
                notifier.notify(&format!(
                    "STATUS=verification failed, the model is refused: {e}"
                ));
                output::warn(&format!(
                    "error: {e}; the model is refused from now on; metrics stay up until Ctrl-C or SIGTERM"
                ));
                failure = Some(e);
            }
            Err(_) => {}
        }
        if notifier
            .watchdog_interval()
            .is_some_and(|every| pinged.elapsed() >= every)
        {
            notifier.notify("WATCHDOG=1");
            pinged = Instant::now();
        }
        if signals.take_reverify() && failure.is_none() {
            out.line("SIGHUP: re-verifying every shard now (SIGTERM or Ctrl-C stops)");
            scrubber.verify_all_now();
        }
    }
    // Stops after the verification in progress.
    drop(scrubber);
    failure
}
