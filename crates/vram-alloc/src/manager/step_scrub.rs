//! The step scrubber: re-verifies every resident shard of one device in the gaps of an engine's
//! own steps instead of beside them. At each step ([`StepScrubber::step`], called once the
//! engine has queued a step's work: a forward hook, a server's loop) it queues on the GPU,
//! after that work, a slice of a whole-GPU digest, continuing a round-robin over the device's
//! shards, the least recently proven first.
//!
//! The budget is a share of the engine's time, and it pays for both costs of a step: the host
//! time of the call itself (driver calls on the engine's own thread, which is what a host-bound
//! engine such as `transformers` generation feels: 0.2-0.3 ms a call on an H100) and the GPU
//! time of its slice. Every call earns `budget × the time since the last call`; a call runs
//! once the credit pays for its host time twice over, and spends what is left on GPU work. So
//! with steps shorter than the call's cost divided by the budget, only every few steps does
//! work, in a slice as large as those steps earned together: the bytes per second stay, the
//! host cost is amortised.
//!
//! Results are read without waiting (a later working call collects them); a mismatch is a
//! failed verification as any other (a critical record of its own, and the manager stops),
//! passes are summarised in the audit trail (`summary.rs`).
//! `docs/adr/0012-engine-ordered-checks.md`, `docs/adr/0013-one-stop-rule-one-error-class.md`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vram_types::{DigestAlgorithm, VramError};

use super::VramManager;
use super::allocation_check;
use super::proof_order::ProofOrder;
use super::resident_allocation::ResidentAllocation;
use super::shared::Shared;
use super::summary::{DEFAULT_SUMMARY_INTERVAL, PassSummary};
use super::verify::{compare_digest, record_failure};
use crate::backend::{EngineStream, StepDigests, gpu_digest_of, job_fits};

/// Default share of each step's time the scrubber's GPU work may take.
const DEFAULT_STEP_BUDGET: f32 = 0.01;
/// Bytes per GPU-second assumed before the first step's GPU time is measured: low, so the
/// first steps take less than their budget rather than more.
const FIRST_RATE: f64 = 50e9;
/// Host seconds a working step is assumed to cost before one is measured.
const FIRST_HOST_COST: f64 = 100e-6;
/// Weight of the newest measurement in the running host cost and hashing rate.
const EWMA: f64 = 0.2;
/// Longest a gap between two calls earns credit for (a pause between requests is not a step:
/// it would size the next slice for an idle engine).
const LONGEST_STEP: Duration = Duration::from_millis(500);

/// How the step scrubber sizes its slices and writes its summaries.
#[derive(Debug, Clone, Copy)]
pub struct StepScrubOptions {
    budget: f32,
    summary_interval: Duration,
}

impl Default for StepScrubOptions {
    fn default() -> Self {
        Self {
            budget: DEFAULT_STEP_BUDGET,
            summary_interval: DEFAULT_SUMMARY_INTERVAL,
        }
    }
}

impl StepScrubOptions {
    /// 1 % of each step's time, a summary record a minute.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The share of the engine's time (measured between calls of [`StepScrubber::step`]) the
    /// calls' host time and their GPU work may take together, in `(0, 1]` (default 0.01).
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] outside `(0, 1]`.
    pub fn budget(mut self, share: f32) -> Result<Self, VramError> {
        if !(share > 0.0 && share <= 1.0) {
            return Err(VramError::invalid_input(
                "budget",
                format!("{share}: give a share of each step's time in (0, 1]"),
            ));
        }
        self.budget = share;
        Ok(self)
    }

    /// How often passed verifications are written as one summary record (default one minute;
    /// written when the scrubber stops too).
    #[must_use]
    pub fn summary_interval(mut self, interval: Duration) -> Self {
        self.summary_interval = interval;
        self
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct StepReport {
    /// Bytes of hashing queued in this step.
    pub bytes_queued: u64,
    /// Shards whose verification finished (and passed) since the last step.
    pub shards_verified: u64,
}

/// The shards of the next job, all of one algorithm.
type NextJob = (DigestAlgorithm, Vec<Arc<ResidentAllocation>>);

/// A job in flight: the shards it hashes, kept alive until it is collected.
struct InFlight {
    shards: Vec<Arc<ResidentAllocation>>,
}

/// The step scrubber of one device (see the module docs). Not shared between threads: an
/// engine's loop owns it.
pub struct StepScrubber {
    shared: Arc<Shared>,
    device: u32,
    options: StepScrubOptions,
    lanes: HashMap<DigestAlgorithm, Box<dyn StepDigests>>,
    in_flight: HashMap<u64, (DigestAlgorithm, InFlight)>,
    /// This round's order of the device's shards.
    order: ProofOrder,
    next_tag: u64,
    last_step: Option<Instant>,
    /// Seconds of cost earned and not yet spent (see the module docs).
    credit: f64,
    /// Running host time of a working step, seconds.
    host_cost: f64,
    /// When the current call began, when [`StepScrubber::due`] began it.
    call_started: Option<Instant>,
    /// Running hashing rate, bytes per GPU-second.
    rate: f64,
    verified: u64,
    bytes_verified: u64,
    /// Times a shard was passed over because no kernel hashes its algorithm (flat SHA-256).
    uncovered: u64,
    summary: PassSummary,
    failure: Option<VramError>,
    stopped: bool,
}

impl std::fmt::Debug for StepScrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepScrubber")
            .field("device", &self.device)
            .field("verified", &self.verified)
            .field("failed", &self.failure.is_some())
            .finish_non_exhaustive()
    }
}

impl VramManager {
    /// A step scrubber for the shards resident on `device` (see [`StepScrubber`]).
    ///
    /// # Errors
    /// [`VramError::Stopped`]; [`VramError::InvalidDevice`].
    pub fn step_scrubber(
        &self,
        device: u32,
        options: StepScrubOptions,
    ) -> Result<StepScrubber, VramError> {
        self.shared.ensure_running()?;
        vram_types::validation::validate_gpu_device(device, self.shared.backend().device_count())?;
        Ok(StepScrubber {
            shared: Arc::clone(&self.shared),
            device,
            options,
            lanes: HashMap::new(),
            in_flight: HashMap::new(),
            order: ProofOrder::default(),
            next_tag: 0,
            last_step: None,
            credit: 0.0,
            host_cost: FIRST_HOST_COST,
            call_started: None,
            rate: FIRST_RATE,
            verified: 0,
            bytes_verified: 0,
            uncovered: 0,
            summary: PassSummary::new("step", options.summary_interval),
            failure: None,
            stopped: false,
        })
    }
}

impl StepScrubber {
    /// Whether this call of the engine's step would do work: it starts the call (its time
    /// counts from here) and earns the time since the last call. No driver call; a binding that
    /// must look up the engine's stream first calls this and skips the lookup when it is not
    /// due. A call that is not due costs next to nothing (see the module docs).
    pub fn due(&mut self) -> bool {
        let now = Instant::now();
        if let Some(last) = self.last_step.replace(now) {
            let gap = now.saturating_duration_since(last).min(LONGEST_STEP);
            let budget = f64::from(self.options.budget);
            // A long pause earns at most one longest step; a budget too small to pay for one
            // call in that time still earns enough for one now and then.
            let cap = (budget * LONGEST_STEP.as_secs_f64()).max(4.0 * self.host_cost);
            self.credit = (self.credit + budget * gap.as_secs_f64()).min(cap);
        }
        self.call_started = Some(now);
        self.works()
    }

    /// Whether the call begun works: the credit pays for its host time twice over (or there
    /// is a failure or a stop to report).
    fn works(&self) -> bool {
        self.failure.is_some() || self.stopped || self.credit >= 2.0 * self.host_cost
    }

    /// One engine step: when due ([`Self::due`]), collects the verifications finished since the
    /// last working step (without waiting), then queues, after the work queued so far on
    /// `engine` (none: at once), as many bytes of digest work as the credit left after the
    /// call's own host time pays for. The first call only starts the clock.
    ///
    /// # Errors
    /// A failed verification, as [`VramManager::verify_sealed`] reports it
    /// ([`VramError::IntegrityViolation`] naming the shard, a policy violation, ...): it is
    /// recorded, the manager stops, and every later step returns [`VramError::Stopped`].
    /// CUDA errors.
    pub fn step(&mut self, engine: Option<EngineStream<'_>>) -> Result<StepReport, VramError> {
        let due = match self.call_started {
            Some(_) => self.works(),
            None => self.due(),
        };
        let started = self.call_started.take().unwrap_or_else(Instant::now);
        if let Some(e) = &self.failure {
            return Err(e.clone());
        }
        if self.stopped {
            return Err(VramError::invalid_input(
                "step scrubber",
                "stopped: start another",
            ));
        }
        self.shared.ensure_running()?;
        // The summary is written on time whether or not this call works (a clock read).
        if let Err(e) = self.summary.flush_if_due(&self.shared) {
            self.failure = Some(e.clone());
            return Err(e);
        }
        if !due {
            return Ok(StepReport::default());
        }
        self.learn_rate()?;
        let verified_before = self.verified;
        self.collect(false)?;
        let gpu_seconds = (self.credit - self.host_cost).max(0.0);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive byte budget far below 2^64"
        )]
        let budget = (self.rate * gpu_seconds).max(1.0) as u64;
        let queued = self.queue(engine, budget)?;
        let host = started.elapsed().as_secs_f64();
        self.host_cost += EWMA * (host - self.host_cost);
        #[allow(clippy::cast_precision_loss, reason = "a time estimate")]
        let gpu = queued as f64 / self.rate;
        self.credit = (self.credit - host - gpu).max(0.0);
        Ok(StepReport {
            bytes_queued: queued,
            shards_verified: self.verified.saturating_sub(verified_before),
        })
    }

    /// Shard verifications passed so far.
    #[must_use]
    pub fn verified(&self) -> u64 {
        self.verified
    }

    /// Bytes those verifications hashed.
    #[must_use]
    pub fn bytes_verified(&self) -> u64 {
        self.bytes_verified
    }

    /// How many times it passed over a shard no GPU kernel hashes (flat SHA-256; 0 when it
    /// never met one): the background scrubber or per-request checks cover those.
    #[must_use]
    pub fn uncovered(&self) -> u64 {
        self.uncovered
    }

    /// The failure it found, if any.
    #[must_use]
    pub fn failure(&self) -> Option<&VramError> {
        self.failure.as_ref()
    }

    /// Waits for the work it queued, checks it, and writes the last summary: [`Self::verified`]
    /// is final afterwards, and later steps queue nothing. Idempotent.
    ///
    /// # Errors
    /// As [`Self::step`], for the work still in flight; the failure it found before, if any.
    pub fn stop(&mut self) -> Result<(), VramError> {
        let result = match &self.failure {
            Some(e) => Err(e.clone()),
            None if self.stopped => Ok(()),
            None => self.collect(true),
        };
        self.stopped = true;
        let flushed = self.summary.flush(&self.shared);
        self.in_flight.clear();
        result.and(flushed)
    }

    /// Updates the hashing rate from the steps measured since the last call.
    fn learn_rate(&mut self) -> Result<(), VramError> {
        for lane in self.lanes.values_mut() {
            for (bytes, time) in lane.measured()? {
                let t = time.as_secs_f64();
                if t > 0.0 {
                    #[allow(clippy::cast_precision_loss, reason = "a rate estimate")]
                    let r = bytes as f64 / t;
                    self.rate += EWMA * (r - self.rate);
                }
            }
        }
        Ok(())
    }

    /// Checks every finished job (with `wait`, everything queued); the first mismatch fails.
    fn collect(&mut self, wait: bool) -> Result<(), VramError> {
        let mut finished = Vec::new();
        for lane in self.lanes.values_mut() {
            finished.extend(if wait { lane.drain()? } else { lane.collect()? });
        }
        for (tag, digests) in finished {
            let Some((_, job)) = self.in_flight.remove(&tag) else {
                continue;
            };
            self.check(&job, &digests)?;
        }
        Ok(())
    }

    /// Compares a finished job's digests with the sealed ones. A shard released while it was
    /// hashed is not compared (its memory may already hold an engine's new bytes).
    fn check(
        &mut self,
        job: &InFlight,
        digests: &[vram_seal::ShardDigest],
    ) -> Result<(), VramError> {
        let now = self.shared.clock().monotonic();
        for (resident, digest) in job.shards.iter().zip(digests) {
            // Released, or held for an update, while it was hashed: its memory may already
            // hold the engine's new bytes, which nothing claims to be the sealed ones.
            if !self.shared.is_live(resident) || self.shared.vouches_for(resident).is_err() {
                continue;
            }
            let sealed = resident.sealed();
            if let Err(e) = compare_digest(&sealed.shard_id, &sealed.digest, digest) {
                return Err(self.fail(resident, e));
            }
            resident.mark_verified(now);
            self.shared
                .metrics()
                .set_last_verified(&sealed.shard_id, self.shared.clock().wall());
            let bytes = u64::try_from(sealed.vram_bytes).unwrap_or(u64::MAX);
            self.verified = self.verified.saturating_add(1);
            self.bytes_verified = self.bytes_verified.saturating_add(bytes);
            self.summary.add(self.device, 1, bytes, now);
            self.shared
                .metrics()
                .count_verify(self.device, true, Duration::ZERO);
        }
        Ok(())
    }

    /// Records a failed verification of `resident` as any verification's failure is recorded:
    /// critical, counted, and (a security failure) the manager stops.
    fn fail(&mut self, resident: &ResidentAllocation, e: VramError) -> VramError {
        let correlation_id = self.shared.next_correlation_id();
        record_failure(
            &self.shared,
            &correlation_id,
            resident.shard_id(),
            self.device,
            &e,
        );
        self.shared
            .metrics()
            .count_verify(self.device, false, Duration::ZERO);
        self.failure = Some(e.clone());
        e
    }

    /// Queues about `budget` bytes: continues the jobs started, and starts new ones on the
    /// least recently proven shards while a slot is free and budget is left.
    fn queue(&mut self, engine: Option<EngineStream<'_>>, budget: u64) -> Result<u64, VramError> {
        let mut left = budget;
        let mut queued = 0u64;
        let mut begun: Vec<DigestAlgorithm> = Vec::new();
        // The jobs already started, oldest first within each lane.
        let algorithms: Vec<DigestAlgorithm> = self.lanes.keys().copied().collect();
        for algorithm in algorithms {
            if left == 0 {
                break;
            }
            let n = self.advance(algorithm, engine, &mut begun, left)?;
            left = left.saturating_sub(n);
            queued = queued.saturating_add(n);
        }
        while left > 0 {
            // No job can start while every lane's slots are taken (most managers have one).
            if !self.lanes.is_empty() && self.lanes.values().all(|l| !l.can_start()) {
                break;
            }
            let Some((algorithm, shards)) = self.next_job()? else {
                break;
            };
            let tag = self.next_tag;
            self.next_tag = self.next_tag.wrapping_add(1);
            let buffers: Vec<_> = shards
                .iter()
                .map(|r| (r.buffer(), r.sealed().vram_bytes))
                .collect();
            let shared = Arc::clone(&self.shared);
            let lane = self.lane(algorithm)?;
            if !lane.can_start() {
                break;
            }
            if !begun.contains(&algorithm) {
                lane.begin(engine)?;
                begun.push(algorithm);
            }
            lane.start(shared.backend(), tag, &buffers)?;
            self.in_flight.insert(tag, (algorithm, InFlight { shards }));
            let n = self.advance(algorithm, engine, &mut begun, left)?;
            left = left.saturating_sub(n.max(1));
            queued = queued.saturating_add(n);
        }
        for algorithm in begun {
            self.lane(algorithm)?.end()?;
        }
        Ok(queued)
    }

    /// Advances `algorithm`'s lane by up to `budget` bytes, beginning its step first.
    fn advance(
        &mut self,
        algorithm: DigestAlgorithm,
        engine: Option<EngineStream<'_>>,
        begun: &mut Vec<DigestAlgorithm>,
        budget: u64,
    ) -> Result<u64, VramError> {
        let lane = self.lane(algorithm)?;
        if !begun.contains(&algorithm) {
            lane.begin(engine)?;
            begun.push(algorithm);
        }
        lane.advance(budget)
    }

    fn lane(&mut self, algorithm: DigestAlgorithm) -> Result<&mut Box<dyn StepDigests>, VramError> {
        if !self.lanes.contains_key(&algorithm) {
            let lane = self.shared.backend().step_digests(self.device, algorithm)?;
            self.lanes.insert(algorithm, lane);
        }
        self.lanes
            .get_mut(&algorithm)
            .ok_or(VramError::Unreachable("a lane was just inserted"))
    }

    /// The next job: the next shard of the round (the least recently proven first) not in
    /// flight, and after it those of its algorithm that fit one job with it. Each shard's
    /// allocation is checked (still plain device memory) before it is hashed.
    fn next_job(&mut self) -> Result<Option<NextJob>, VramError> {
        if self.order.is_empty() {
            let live: Vec<_> = self
                .shared
                .live()
                .into_iter()
                .filter(|r| r.sealed().gpu_device == self.device)
                .collect();
            self.order.fill(&live, |_| 0);
        }
        let busy: std::collections::HashSet<String> = self
            .in_flight
            .values()
            .flat_map(|(_, job)| job.shards.iter().map(|r| r.shard_id().to_owned()))
            .collect();
        let mut chosen: Vec<Arc<ResidentAllocation>> = Vec::new();
        let mut lens: Vec<usize> = Vec::new();
        let mut algorithm = None;
        while let Some(r) = self.order.pop() {
            if busy.contains(r.shard_id()) || self.shared.vouches_for(&r).is_err() {
                continue; // being hashed now, or held for an update
            }
            let a = r.sealed().digest_algorithm;
            let Some(digest) = gpu_digest_of(a) else {
                self.uncovered = self.uncovered.saturating_add(1);
                continue;
            };
            lens.push(r.sealed().vram_bytes);
            if algorithm.is_some_and(|x| x != a) || !job_fits(digest, &lens) {
                // The first shard of the next job.
                self.order.put_back(&r);
                break;
            }
            allocation_check::check(
                &self.shared,
                r.buffer(),
                self.device,
                r.sealed().vram_bytes,
                &self.shared.next_correlation_id(),
            )?;
            algorithm = Some(a);
            chosen.push(r);
        }
        Ok(algorithm.map(|a| (a, chosen)))
    }
}

impl Drop for StepScrubber {
    /// Writes the passes not yet summarised; work in flight is waited for by its lane.
    fn drop(&mut self) {
        // Nobody is left to tell: a summary that cannot be stored has stopped the manager.
        let _ = self.summary.flush(&self.shared);
    }
}
