//! Serving: what was sealed stays resident, re-verified every interval (at once on SIGHUP),
//! metrics served on the port bound at start, systemd told how it goes, until Ctrl-C or
//! SIGTERM releases everything. A failed verification does not end the process: the failure
//! stays visible (metrics keep being served, `result="failure"` can be scraped), the model
//! stays refused (the manager has stopped, so nothing verifies again), and the exit code
//! reports it after SIGTERM.

use std::time::{Duration, Instant};

use serde_json::json;
use vram_residency::{VramError, VramManager};

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
        &held,
        serving.verify_every,
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

/// Re-verifies every `interval` (and on SIGHUP) until a stop is asked for, pinging the systemd
/// watchdog between rounds; returns the first failure, after which nothing is verified again.
fn keep_verified(
    out: Output,
    manager: &VramManager,
    held: &Held,
    interval: Duration,
    signals: &Signals,
    notifier: &Notifier,
) -> Option<VramError> {
    let mut pinged = Instant::now();
    let mut last = Instant::now();
    let mut failure: Option<VramError> = None;
    while !signals.stop_requested() {
        std::thread::sleep(TICK);
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
        let checked = verify_round(out, manager, held);
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
    failure
}

/// One verification of everything held: each shard in turn, or the group at once.
fn verify_round(out: Output, manager: &VramManager, held: &Held) -> Result<(), VramError> {
    match held {
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
    }
}
