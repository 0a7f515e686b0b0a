//! A scrubber's passed verifications, summarised: one `VerificationSummary` record per device
//! every interval (and when the scrubber stops) instead of one record per verification, so
//! scrubbing continuously for days keeps the audit log small (`.specs/audit.md`). Failures are
//! never summarised: each is a critical record of its own, written when it happens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use vram_types::VramError;

use super::shared::{Shared, oldest_proof};
use crate::audit::AuditEvent;

/// Default time between two summaries of one scrubber.
pub(super) const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    shards: u64,
    bytes: u64,
}

/// Passes counted since the last summary, per device.
#[derive(Debug)]
pub(super) struct PassSummary {
    scrubber: &'static str,
    interval: Duration,
    /// The manager's monotonic time of the first pass counted since the last summary.
    since: Option<Duration>,
    counts: BTreeMap<u32, Counts>,
}

impl PassSummary {
    pub(super) fn new(scrubber: &'static str, interval: Duration) -> Self {
        Self {
            scrubber,
            interval,
            since: None,
            counts: BTreeMap::new(),
        }
    }

    /// Counts `shards` passed verifications of `bytes` on `device` at monotonic time `now`.
    pub(super) fn add(&mut self, device: u32, shards: u64, bytes: u64, now: Duration) {
        self.since.get_or_insert(now);
        let c = self.counts.entry(device).or_default();
        c.shards = c.shards.saturating_add(shards);
        c.bytes = c.bytes.saturating_add(bytes);
    }

    /// Writes the summaries when the interval has passed since the first pass counted.
    ///
    /// # Errors
    /// As [`Self::flush`].
    pub(super) fn flush_if_due(&mut self, shared: &Arc<Shared>) -> Result<(), VramError> {
        let now = shared.clock().monotonic();
        if self
            .since
            .is_some_and(|since| now.saturating_sub(since) >= self.interval)
        {
            return self.flush(shared);
        }
        Ok(())
    }

    /// Writes one summary per device with passes counted, and starts counting afresh.
    ///
    /// # Errors
    /// [`VramError::AuditFailed`] when a summary cannot be stored under fail-closed: the passes
    /// it would have recorded are not passes, and the manager stops (as when a per-request
    /// pass cannot be recorded).
    pub(super) fn flush(&mut self, shared: &Arc<Shared>) -> Result<(), VramError> {
        let Some(since) = self.since.take() else {
            return Ok(());
        };
        let now = shared.clock().monotonic();
        let period_ms = millis(now.saturating_sub(since));
        let live = shared.live();
        for (device, counts) in std::mem::take(&mut self.counts) {
            let oldest = oldest_proof(&live, device, now);
            let recorded = shared.record(
                &shared.next_correlation_id(),
                AuditEvent::VerificationSummary {
                    gpu_device: device,
                    scrubber: self.scrubber.to_owned(),
                    shards_verified: counts.shards,
                    bytes_verified: counts.bytes,
                    period_ms,
                    oldest_proof_age_ms: millis(oldest),
                },
            );
            if let Err(e) = recorded {
                shared.stop_on(&e);
                return Err(e);
            }
        }
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
