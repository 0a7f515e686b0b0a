//! The scrubber: a background verifier that keeps re-proving every resident shard (models sealed
//! in place and group members included, each tensor as its own shard), the least recently
//! proven first, at a bounded share of the GPU. Its passes are audited in a summary record per
//! interval (`summary.rs`); a failure is handled like any failed verification (its own critical
//! record, and a security failure stops the manager), and ends the scrubber.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vram_seal::compute_signature;
use vram_types::{GpuShare, SealedShard, ShardAllocation, VramError};

use super::VramManager;
use super::proof_order::ProofOrder;
use super::resident_allocation::ResidentAllocation;
use super::shared::Shared;
use super::summary::{DEFAULT_SUMMARY_INTERVAL, PassSummary};
use super::verify::{Stage, Subject, verify_ordered};
use crate::backend::DigestOrder;
use crate::sync::lock;

/// How long an idle scrubber waits before it looks for newly sealed shards.
const IDLE_LOOK: Duration = Duration::from_millis(250);

/// What the scrubber reports as it goes (on its own thread: keep the handler short).
#[derive(Debug)]
#[non_exhaustive]
pub enum ScrubEvent<'a> {
    /// A shard passed verification.
    Verified {
        /// Its id.
        shard_id: &'a str,
    },
    /// Every resident shard is proven within the interval (after at least one verification
    /// since the last such report).
    AllProven {
        /// How many shards are resident.
        shards: usize,
    },
    /// A verification failed; the scrubber ends.
    Failed {
        /// The shard's id.
        shard_id: &'a str,
        /// What failed.
        error: &'a VramError,
    },
}

type Handler = Arc<dyn Fn(&ScrubEvent<'_>) + Send + Sync>;

/// How the scrubber paces itself.
#[derive(Clone)]
pub struct ScrubOptions {
    share: Option<GpuShare>,
    interval: Duration,
    summary_interval: Duration,
    on_event: Option<Handler>,
}

impl Default for ScrubOptions {
    fn default() -> Self {
        Self {
            share: None,
            interval: Duration::ZERO,
            summary_interval: DEFAULT_SUMMARY_INTERVAL,
            on_event: None,
        }
    }
}

impl std::fmt::Debug for ScrubOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrubOptions")
            .field("share", &self.share)
            .field("interval", &self.interval)
            .field("summary_interval", &self.summary_interval)
            .field("on_event", &self.on_event.is_some())
            .finish()
    }
}

impl ScrubOptions {
    /// Continuously, at the manager's background share of the GPU.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The GPU share of each verification (default: the configured background share,
    /// [`VramConfig::background_gpu_share`](vram_types::VramConfig::background_gpu_share)).
    #[must_use]
    pub fn share(mut self, share: GpuShare) -> Self {
        self.share = Some(share);
        self
    }

    /// A shard proven less than `interval` ago is not verified again yet (default zero:
    /// verify round-robin without pause).
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How often its passed verifications are written to the audit trail, as one
    /// `VerificationSummary` record per device (default one minute; written at a stop too).
    /// Each failure is recorded at once, on its own.
    #[must_use]
    pub fn summary_interval(mut self, interval: Duration) -> Self {
        self.summary_interval = interval;
        self
    }

    /// Calls `handler` with each [`ScrubEvent`], on the scrubber's thread.
    #[must_use]
    pub fn on_event(mut self, handler: impl Fn(&ScrubEvent<'_>) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(handler));
        self
    }
}

#[derive(Default)]
struct Control {
    stop: bool,
    /// Shards not verified by the scrubber since its verification count was this are due now
    /// (`verify_all_now`).
    requested_at: Option<u64>,
}

struct Inner {
    shared: Arc<Shared>,
    share: GpuShare,
    interval: Duration,
    on_event: Option<Handler>,
    control: Mutex<Control>,
    wake: Condvar,
    verified: AtomicU64,
    failure: Mutex<Option<VramError>>,
    /// When the scrubber last verified each shard, by its own count: equal proof times (a
    /// coarse clock) still go round-robin.
    turns: Mutex<HashMap<String, u64>>,
    /// Passes not yet written in a summary record.
    summary: Mutex<PassSummary>,
    /// The shards of this round, in the order it takes them.
    round: Mutex<Round>,
}

/// One round.
#[derive(Default)]
struct Round {
    order: ProofOrder,
    /// The last request (`verify_all_now`) a round was built for.
    served: Option<u64>,
    /// This round serves that request: every shard of it is due.
    forced: bool,
}

/// A running scrubber; dropping it (or [`Scrubber::stop`]) stops it after the verification in
/// progress.
pub struct Scrubber {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("verified", &self.verified())
            .field("failed", &self.failure().is_some())
            .finish()
    }
}

impl VramManager {
    /// Starts a scrubber on a thread of its own: every resident shard of this manager is
    /// re-verified, the least recently proven first, at a bounded share of the GPU, for as
    /// long as the scrubber lives. `vram_oldest_verification_age_seconds` shows how fresh the
    /// oldest proof is.
    ///
    /// # Errors
    /// [`VramError::Stopped`]; [`VramError::HostMemoryExhausted`] when no thread can be started.
    pub fn start_scrubber(&self, options: ScrubOptions) -> Result<Scrubber, VramError> {
        self.shared.ensure_running()?;
        let inner = Arc::new(Inner {
            share: options
                .share
                .unwrap_or(self.shared.config().background_gpu_share),
            shared: self.shared.clone(),
            interval: options.interval,
            on_event: options.on_event,
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            verified: AtomicU64::new(0),
            failure: Mutex::new(None),
            turns: Mutex::new(HashMap::new()),
            summary: Mutex::new(PassSummary::new("background", options.summary_interval)),
            round: Mutex::new(Round::default()),
        });
        let running = inner.clone();
        let thread = std::thread::Builder::new()
            .name("vram-scrubber".to_owned())
            .spawn(move || running.run())
            .map_err(|_| VramError::HostMemoryExhausted { needed: 0 })?;
        Ok(Scrubber {
            inner,
            thread: Some(thread),
        })
    }
}

impl Scrubber {
    /// Shards verified so far.
    #[must_use]
    pub fn verified(&self) -> u64 {
        self.inner.verified.load(Ordering::Acquire)
    }

    /// The failure that ended it, if one did.
    #[must_use]
    pub fn failure(&self) -> Option<VramError> {
        lock(&self.inner.failure).clone()
    }

    /// Makes every shard due at once, whatever the interval (SIGHUP in `vramctl seal`).
    pub fn verify_all_now(&self) {
        let count = self.inner.verified.load(Ordering::Acquire);
        lock(&self.inner.control).requested_at = Some(count);
        self.inner.wake.notify_all();
    }

    /// Stops it after the verification in progress, and returns its failure, if any.
    #[must_use]
    pub fn stop(mut self) -> Option<VramError> {
        self.halt();
        self.failure()
    }

    /// Stops it after the verification in progress, keeping it: [`Self::verified`] and
    /// [`Self::failure`] are final afterwards. Idempotent.
    pub fn halt(&mut self) {
        lock(&self.inner.control).stop = true;
        self.inner.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // A panic on the scrubber thread has nothing left to report.
            let _ = thread.join();
        }
    }
}

impl Drop for Scrubber {
    fn drop(&mut self) {
        self.halt();
    }
}

impl Inner {
    fn run(&self) {
        self.scrub();
        // The passes since the last summary are recorded when the scrubber ends.
        if let Err(e) = lock(&self.summary).flush(&self.shared) {
            lock(&self.failure).get_or_insert(e);
        }
    }

    fn scrub(&self) {
        let mut since_report = 0usize;
        loop {
            let (next, wait) = {
                let control = lock(&self.control);
                if control.stop {
                    return;
                }
                self.next(control.requested_at)
            };
            let Some(resident) = next else {
                if since_report > 0 {
                    self.emit(&ScrubEvent::AllProven {
                        shards: self.shared.live().len(),
                    });
                    since_report = 0;
                }
                let control = lock(&self.control);
                if !control.stop {
                    // Woken early by a stop or `verify_all_now`; the result is not needed.
                    drop(self.wake.wait_timeout(control, wait));
                }
                continue;
            };
            match self.verify(&resident) {
                Ok(()) => {
                    let mut summary = lock(&self.summary);
                    let bytes = u64::try_from(resident.sealed().vram_bytes).unwrap_or(u64::MAX);
                    let now = self.shared.clock().monotonic();
                    summary.add(resident.sealed().gpu_device, 1, bytes, now);
                    let flushed = summary.flush_if_due(&self.shared);
                    drop(summary);
                    if let Err(error) = flushed {
                        // The passes could not be recorded: not passes (fail-closed).
                        self.emit(&ScrubEvent::Failed {
                            shard_id: resident.shard_id(),
                            error: &error,
                        });
                        *lock(&self.failure) = Some(error);
                        return;
                    }
                    let turn = self.verified.fetch_add(1, Ordering::AcqRel);
                    lock(&self.turns)
                        .insert(resident.shard_id().to_owned(), turn.saturating_add(1));
                    since_report = since_report.saturating_add(1);
                    self.emit(&ScrubEvent::Verified {
                        shard_id: resident.shard_id(),
                    });
                }
                // Held for an update since the round began: skipped, not failed.
                Err(VramError::ModelUpdating { .. }) => {}
                Err(error) => {
                    self.emit(&ScrubEvent::Failed {
                        shard_id: resident.shard_id(),
                        error: &error,
                    });
                    *lock(&self.failure) = Some(error);
                    return;
                }
            }
        }
    }

    /// The live shard proven longest ago, if it is due; else how long until one is. After
    /// `verify_all_now` (`requested_at`), every shard not verified since is due first.
    fn next(&self, requested_at: Option<u64>) -> (Option<Arc<ResidentAllocation>>, Duration) {
        let mut round = lock(&self.round);
        let requested = requested_at.filter(|at| round.served != Some(*at));
        if requested.is_some() || round.order.is_empty() {
            self.new_round(&mut round, requested);
        }
        let now = self.shared.clock().monotonic();
        if let Some(resident) = round.order.pop() {
            if round.forced {
                return (Some(resident), Duration::ZERO);
            }
            let age = now.saturating_sub(resident.last_proven());
            if age >= self.interval {
                return (Some(resident), Duration::ZERO);
            }
            // The oldest left is not due: neither is any after it. Look again when it is.
            round.order.clear();
            return (None, self.interval.saturating_sub(age).min(IDLE_LOOK));
        }
        round.forced = false;
        (
            None,
            if self.shared.live().is_empty() {
                IDLE_LOOK
            } else {
                Duration::ZERO
            },
        )
    }

    /// Orders the live shards for a round: with a request, those not verified since it (all
    /// due); otherwise all (equal proof times by the scrubber's own turns, so a coarse clock
    /// still goes round-robin). Drops the turns of shards no longer live.
    fn new_round(&self, round: &mut Round, requested: Option<u64>) {
        let live = self.shared.live();
        let mut turns = lock(&self.turns);
        if turns.len() > live.len() {
            let ids: std::collections::HashSet<&str> = live.iter().map(|r| r.shard_id()).collect();
            turns.retain(|id, _| ids.contains(id.as_str()));
        }
        let turn = |r: &ResidentAllocation| turns.get(r.shard_id()).copied().unwrap_or(0);
        let shards: Vec<Arc<ResidentAllocation>> = live
            .iter()
            .filter(|r| self.shared.vouches_for(r).is_ok())
            .filter(|r| requested.is_none_or(|at| turn(r) <= at))
            .cloned()
            .collect();
        round.order.fill(&shards, turn);
        round.forced = requested.is_some();
        if requested.is_some() {
            round.served = requested;
        }
    }

    /// Verifies the shard the manager sealed for `resident`, as `verify_sealed_background`
    /// verifies a caller's shard: the fields are the manager's own, re-sealed with its key.
    fn verify(&self, resident: &Arc<ResidentAllocation>) -> Result<(), VramError> {
        let fields = resident.sealed().clone();
        let signature = compute_signature(self.shared.key(), &fields)?;
        let allocation: Arc<dyn ShardAllocation> = resident.clone();
        let shard = SealedShard::from_parts(
            fields,
            self.shared.clock().wall(),
            signature,
            Some(allocation),
        );
        verify_ordered(
            &self.shared,
            &Subject::shard(&shard).summarized(),
            self.share,
            DigestOrder::Now,
            Stage::Standalone,
        )
    }

    fn emit(&self, event: &ScrubEvent<'_>) {
        if let Some(handler) = &self.on_event {
            handler(event);
        }
    }
}
