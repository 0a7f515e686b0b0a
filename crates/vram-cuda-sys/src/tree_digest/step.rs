//! Digests spread over an engine's steps: a [`StepLane`] hashes a few resident ranges at a time
//! (a "job", one launch sequence over its ranges as [`TreeDigestEngine::tree_roots_of`] hashes
//! them), a slice of the job per step, each slice queued after the work the engine queued so
//! far on its stream and sized by the caller's byte budget. The host never waits on the hot
//! path: a job's roots land in pinned memory behind an event that a later step polls
//! ([`StepLane::collect`]), and each step's GPU time is measured with timing events
//! ([`StepLane::measured`]) so the caller can size the next slice to its time budget.
//!
//! Everything the hot path needs is allocated when the lane is made (two slots of device
//! scratch and pinned memory): no allocation, free or synchronisation runs during a step, since
//! any of those can stall an engine sharing the context.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::lane::{Scratch, roots_offset};
use super::launch::{LeafSource, LeafWork};
use super::layout::RangeLayout;
use super::{DIGEST_BYTES, GpuDigest, TreeDigestEngine, block_size};
use crate::error::CudaError;
use crate::memory::{DeviceBuffer, PinnedBuffer};
use crate::resident::Resident;
use crate::stream::{EngineStream, Event, EventKind, Stream, StreamPriority};

/// Bytes of each SHA-256 leaf one step launch hashes: one thread hashes its leaf's slice as a
/// serial chain (about 30 MB/s), so 1 KiB keeps a launch of few leaves to tens of microseconds.
pub const STEP_SLICE_BYTES: u64 = 1024;
/// Most BLAKE3 chunks a job fits in a slot's scratch (256 MiB); a longer range is a job of its
/// own with scratch of its own.
pub const STEP_JOB_LEAVES: u64 = 1 << 18;
/// Most SHA-256 leaves in a job (2 GiB of 64 KiB leaves): enough threads to fill the GPU with
/// one slice of each, few enough that a job (every slice of every leaf) finishes within a few
/// dozen steps, so proofs keep arriving.
pub const STEP_JOB_SHA256_LEAVES: u64 = 1 << 15;
/// Most ranges in one job (the pinned table's size).
pub const STEP_JOB_RANGES: usize = 512;
/// Jobs in flight at once: one being queued while the one before it finishes.
const SLOTS: usize = 2;
/// Pinned bytes of a slot: a job's range table (at most [`STEP_JOB_RANGES`] ranges, every fold
/// level of a tree of 2^40 leaves) and its roots.
const SLOT_PINNED_BYTES: usize = 256 * 1024;

/// One job: ranges hashed together, a slice per step.
struct Job {
    tag: u64,
    slot: usize,
    /// The ranges, kept until the job is collected (an own buffer stays allocated meanwhile).
    memory: Vec<Resident>,
    layout: RangeLayout,
    /// Stream-ordered scratch of its own (a range longer than a slot holds), freed in stream
    /// order when the job is dropped; `None` when the slot's scratch holds it.
    _own_scratch: Option<Scratch>,
    /// Table, region A (leaf states) and region B (the first fold's output), device addresses.
    table: u64,
    a: u64,
    b: u64,
    /// Units of work (leaf slices for SHA-256, chunks for BLAKE3) and how many are queued.
    units: u64,
    queued: u64,
    /// Recorded after the roots' copy once every unit is queued.
    done: Option<Event>,
}

struct Slot {
    scratch: DeviceBuffer,
    pinned: PinnedBuffer,
    busy: bool,
}

/// Finished jobs: each tag with its roots, one per range in the order given.
pub type Finished = Vec<(u64, Vec<[u8; 32]>)>;

/// One step's slice of work and its GPU time.
struct Timed {
    bytes: u64,
    start: Event,
    end: Event,
}

/// The step-driven digest lane of one device and one algorithm (see the module docs). Owned by
/// one caller; its methods take `&mut self`.
pub struct StepLane {
    engine: Arc<TreeDigestEngine>,
    digest: GpuDigest,
    stream: Arc<Stream>,
    slots: Vec<Slot>,
    jobs: VecDeque<Job>,
    /// The step being queued: its start event and bytes so far.
    open: Option<(Event, u64)>,
    timed: VecDeque<Timed>,
    /// Events kept for the next steps: creating and destroying three a step cost the engine's
    /// thread more than the rest of the step's driver calls.
    events: EventPool,
}

/// The lane's reusable events: one that marks the engine's queue (a stream's wait takes the
/// event's state when it is queued, so the event can be recorded again at once), and timing
/// events whose steps have been measured.
struct EventPool {
    engine_done: Option<Event>,
    timing: Vec<Event>,
}

impl EventPool {
    fn timing(&mut self, device: &Arc<crate::device::Device>) -> Result<Event, CudaError> {
        match self.timing.pop() {
            Some(e) => Ok(e),
            None => Event::of_kind(device, EventKind::Timing),
        }
    }
}

impl std::fmt::Debug for StepLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepLane")
            .field("device", &self.engine.device.ordinal())
            .field("digest", &self.digest)
            .field("jobs", &self.jobs.len())
            .finish_non_exhaustive()
    }
}

impl StepLane {
    /// A lane for `digest` on the engine's device: a lowest-priority non-blocking stream and
    /// two slots of scratch (a job of [`STEP_JOB_LEAVES`] leaves' states, folds included) and
    /// pinned memory.
    ///
    /// # Errors
    /// [`CudaError::OutOfMemory`] / [`CudaError::HostMemory`] when the slots cannot be
    /// allocated; [`CudaError::Driver`].
    pub fn new(engine: Arc<TreeDigestEngine>, digest: GpuDigest) -> Result<Self, CudaError> {
        let device = Arc::clone(&engine.device);
        let stream = Arc::new(Stream::new(&device, StreamPriority::Lowest)?);
        let scratch_bytes = scratch_bytes(digest, STEP_JOB_LEAVES, table_bytes_max());
        let slots = (0..SLOTS)
            .map(|_| {
                Ok(Slot {
                    scratch: DeviceBuffer::alloc(
                        &device,
                        usize::try_from(scratch_bytes).unwrap_or(usize::MAX),
                    )?,
                    pinned: PinnedBuffer::alloc(&device, SLOT_PINNED_BYTES)?,
                    busy: false,
                })
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        Ok(Self {
            engine,
            digest,
            stream,
            slots,
            jobs: VecDeque::new(),
            open: None,
            timed: VecDeque::new(),
            events: EventPool {
                engine_done: None,
                timing: Vec::new(),
            },
        })
    }

    /// What the lane computes.
    #[must_use]
    pub fn digest(&self) -> GpuDigest {
        self.digest
    }

    /// Whether a job can start now (a slot is free).
    #[must_use]
    pub fn can_start(&self) -> bool {
        self.slots.iter().any(|s| !s.busy)
    }

    /// Whether a job of these range lengths fits one job's limits ([`job_fits`]).
    #[must_use]
    pub fn fits(&self, lens: &[usize]) -> bool {
        job_fits(self.digest, lens)
    }

    /// Begins a step: what is queued from now on runs on the GPU after the work queued so far
    /// on `engine` (none: at once). The host does not wait.
    ///
    /// # Errors
    /// [`CudaError::WrongDevice`] for a stream of another device; [`CudaError::Driver`].
    pub fn begin(&mut self, engine: Option<EngineStream<'_>>) -> Result<(), CudaError> {
        let device = &self.engine.device;
        if let Some(engine) = engine {
            let engine_done = match &mut self.events.engine_done {
                Some(e) => e,
                none => none.insert(Event::new(device)?),
            };
            engine_done.record_on(engine)?;
            self.stream.wait_for(engine_done)?;
        }
        if let Some((start, _)) = self.open.take() {
            self.events.timing.push(start); // a step begun and never ended
        }
        let mut start = self.events.timing(device)?;
        start.record(&self.stream)?;
        self.open = Some((start, 0));
        Ok(())
    }

    /// Starts a job over `ranges` (each `(memory, len)`, all on the lane's device), tagged
    /// `tag` for [`Self::collect`]; its work is queued by [`Self::advance`].
    ///
    /// # Errors
    /// [`CudaError::InvalidArgument`] with no free slot, no ranges or ranges that do not fit
    /// one job ([`Self::fits`]); the errors of [`TreeDigestEngine::tree_roots_of`] for a range.
    pub fn start(&mut self, tag: u64, ranges: &[(Resident, usize)]) -> Result<(), CudaError> {
        let invalid = |reason: &str| CudaError::InvalidArgument {
            what: "step digest",
            reason: reason.to_owned(),
        };
        let lens: Vec<usize> = ranges.iter().map(|(_, len)| *len).collect();
        if !self.fits(&lens) {
            return Err(invalid("no ranges, or more than one job holds"));
        }
        let slot_index = self
            .slots
            .iter()
            .position(|s| !s.busy)
            .ok_or_else(|| invalid("no free slot: collect a finished job first"))?;
        let spans = ranges
            .iter()
            .map(|(memory, len)| self.engine.checked(memory, *len))
            .collect::<Result<Vec<_>, _>>()?;
        let layout = RangeLayout::new(&spans, self.digest);
        let table_bytes = layout.table_bytes();
        let leaves = layout.total(0);
        let roots = u64::try_from(ranges.len()).unwrap_or(u64::MAX);
        let roots_at = roots_offset(table_bytes);
        if roots_at.saturating_add(roots.saturating_mul(DIGEST_BYTES)) > SLOT_PINNED_BYTES as u64 {
            return Err(invalid("the range table does not fit a slot"));
        }
        let Some(slot) = self.slots.get_mut(slot_index) else {
            return Err(CudaError::Unreachable("a free slot exists"));
        };
        let needed = scratch_bytes(self.digest, leaves, table_bytes);
        let (own_scratch, base) = if needed <= u64::try_from(slot.scratch.len()).unwrap_or(0) {
            (None, slot.scratch.device_address()?)
        } else {
            let own = Scratch::alloc(&self.stream, needed)?;
            let base = own.at(0);
            (Some(own), base)
        };
        // The table through the slot's pinned memory, which stays untouched until the job is
        // collected: the copy never makes the host wait.
        self.engine
            .upload_table(&self.stream, base, &layout, slot.pinned.as_mut_slice())?;
        slot.busy = true;
        let units = match self.digest {
            GpuDigest::Sha256Tree(leaf) => {
                leaves.saturating_mul(u64::from(leaf.get()).div_ceil(STEP_SLICE_BYTES))
            }
            GpuDigest::Blake3 => leaves,
        };
        self.jobs.push_back(Job {
            tag,
            slot: slot_index,
            memory: ranges.iter().map(|(m, _)| m.clone()).collect(),
            table: base,
            a: base.saturating_add(table_bytes),
            b: base
                .saturating_add(table_bytes)
                .saturating_add(leaves.saturating_mul(DIGEST_BYTES)),
            layout,
            _own_scratch: own_scratch,
            units,
            queued: 0,
            done: None,
        });
        Ok(())
    }

    /// Queues about `budget` bytes of hashing (at least one launch when any job has work
    /// left), oldest job first; a job whose last leaves are queued gets its folds, the copy of
    /// its roots and its done event. Returns the bytes queued.
    ///
    /// # Errors
    /// [`CudaError::Driver`] when a launch fails.
    pub fn advance(&mut self, budget: u64) -> Result<u64, CudaError> {
        let unit_bytes = match self.digest {
            GpuDigest::Sha256Tree(_) => STEP_SLICE_BYTES,
            GpuDigest::Blake3 => super::BLAKE3_CHUNK_BYTES,
        };
        let mut units_left = budget.checked_div(unit_bytes).unwrap_or(0).max(1);
        let mut queued_bytes = 0u64;
        let (engine, stream, digest) = (&self.engine, &self.stream, self.digest);
        for job in self.jobs.iter_mut().filter(|j| j.done.is_none()) {
            if units_left == 0 {
                break;
            }
            while job.queued < job.units && units_left > 0 {
                let n = queue_units(engine, stream, digest, job, units_left)?;
                if n == 0 {
                    break;
                }
                job.queued = job.queued.saturating_add(n);
                units_left = units_left.saturating_sub(n);
                queued_bytes = queued_bytes.saturating_add(n.saturating_mul(unit_bytes));
            }
            if job.queued >= job.units {
                let slot = self
                    .slots
                    .get_mut(job.slot)
                    .ok_or(CudaError::Unreachable("a job's slot exists"))?;
                finish_job(engine, stream, digest, &mut slot.pinned, job)?;
            }
        }
        if let Some((_, bytes)) = &mut self.open {
            *bytes = bytes.saturating_add(queued_bytes);
        }
        Ok(queued_bytes)
    }

    /// Ends the step begun by [`Self::begin`]: its GPU time is measured once it has run.
    ///
    /// # Errors
    /// [`CudaError::Driver`].
    pub fn end(&mut self) -> Result<(), CudaError> {
        if let Some((start, bytes)) = self.open.take() {
            if bytes == 0 {
                self.events.timing.push(start);
                return Ok(());
            }
            let mut end = self.events.timing(&self.engine.device)?;
            end.record(&self.stream)?;
            self.timed.push_back(Timed { bytes, start, end });
        }
        Ok(())
    }

    /// The bytes and GPU time of every ended step that has run since the last call, oldest
    /// first; never waits.
    ///
    /// # Errors
    /// [`CudaError::Driver`], including an error of a digest kernel.
    pub fn measured(&mut self) -> Result<Vec<(u64, Duration)>, CudaError> {
        let mut out = Vec::new();
        while let Some(t) = self.timed.front() {
            if !t.end.is_done()? {
                break;
            }
            out.push((t.bytes, t.end.elapsed_since(&t.start)?));
            if let Some(t) = self.timed.pop_front() {
                self.events.timing.extend([t.start, t.end]);
            }
        }
        Ok(out)
    }

    /// The roots of every job that has finished on the GPU, oldest first, each with its tag,
    /// one root per range in the order given; their slots are free again. Never waits.
    ///
    /// # Errors
    /// [`CudaError::Driver`], including an error of a digest kernel.
    pub fn collect(&mut self) -> Result<Finished, CudaError> {
        let mut out = Vec::new();
        while let Some(job) = self.jobs.front() {
            let finished = match &job.done {
                Some(done) => done.is_done()?,
                None => false,
            };
            if !finished {
                break;
            }
            let Some(job) = self.jobs.pop_front() else {
                break;
            };
            out.push((job.tag, self.release(job)?));
        }
        Ok(out)
    }

    /// Waits for everything queued (at a stop, never on the hot path) and returns what
    /// [`Self::collect`] then returns; jobs not fully queued are dropped unfinished.
    ///
    /// # Errors
    /// As [`Self::collect`].
    pub fn drain(&mut self) -> Result<Finished, CudaError> {
        self.stream.synchronize()?;
        let finished = self.collect();
        while let Some(job) = self.jobs.pop_front() {
            if let Some(slot) = self.slots.get_mut(job.slot) {
                slot.busy = false;
            }
        }
        finished
    }

    /// A finished job's roots; its slot (and own scratch, freed in stream order) released.
    fn release(&mut self, job: Job) -> Result<Vec<[u8; 32]>, CudaError> {
        let slot = self
            .slots
            .get_mut(job.slot)
            .ok_or(CudaError::Unreachable("a job's slot exists"))?;
        let start = usize::try_from(roots_offset(job.layout.table_bytes())).unwrap_or(usize::MAX);
        let len = job.memory.len().saturating_mul(32);
        let words = slot
            .pinned
            .as_slice()
            .get(start..start.saturating_add(len))
            .ok_or(CudaError::Unreachable("a job's roots fit its slot"))?;
        let roots = super::lane::root_bytes(self.digest, words);
        slot.busy = false;
        Ok(roots)
    }
}

impl Drop for StepLane {
    fn drop(&mut self) {
        // Nothing queued may outlive the memory it reads or the slots it writes.
        if let Err(e) = self.stream.synchronize() {
            tracing::warn!(gpu_device = self.engine.device.ordinal(), error = %e, "waiting for a step lane failed");
        }
    }
}

/// Whether ranges of these lengths fit one step job of `digest`: at most [`STEP_JOB_RANGES`]
/// ranges, and [`STEP_JOB_LEAVES`] BLAKE3 chunks or [`STEP_JOB_SHA256_LEAVES`] SHA-256 leaves
/// unless it is a single range (a job of its own, with scratch of its own).
#[must_use]
pub fn job_fits(digest: GpuDigest, lens: &[usize]) -> bool {
    let leaves = lens
        .iter()
        .map(|l| digest.leaves(u64::try_from(*l).unwrap_or(u64::MAX)))
        .fold(0u64, u64::saturating_add);
    let most = match digest {
        GpuDigest::Sha256Tree(_) => STEP_JOB_SHA256_LEAVES,
        GpuDigest::Blake3 => STEP_JOB_LEAVES,
    };
    !lens.is_empty() && lens.len() <= STEP_JOB_RANGES && (lens.len() == 1 || leaves <= most)
}

/// Queues `job`'s folds, the copy of its roots into the slot's pinned memory and its done
/// event (every unit of it queued).
fn finish_job(
    engine: &TreeDigestEngine,
    stream: &Stream,
    digest: GpuDigest,
    pinned: &mut PinnedBuffer,
    job: &mut Job,
) -> Result<(), CudaError> {
    let roots_at = engine.fold_ranges(stream, digest, &job.layout, job.table, job.a, job.b)?;
    let start = usize::try_from(roots_offset(job.layout.table_bytes())).unwrap_or(usize::MAX);
    let len = job.memory.len().saturating_mul(32);
    let roots = pinned
        .as_mut_slice()
        .get_mut(start..start.saturating_add(len))
        .ok_or(CudaError::Unreachable(
            "a job's roots fit its slot (checked at start)",
        ))?;
    engine.copy_roots(stream, roots_at, roots)?;
    let mut done = Event::new(&engine.device)?;
    done.record(stream)?;
    job.done = Some(done);
    Ok(())
}

/// Queues up to `max` units of `job` from where it stands, in one launch; returns how many.
fn queue_units(
    engine: &TreeDigestEngine,
    stream: &Stream,
    digest: GpuDigest,
    job: &Job,
    max: u64,
) -> Result<u64, CudaError> {
    let leaves = job.layout.total(0);
    let source = LeafSource::Ranges {
        ptrs: job.table,
        lens: job
            .table
            .saturating_add(job.layout.ranges().saturating_mul(8)),
        offs: job.table.saturating_add(job.layout.offsets_byte(0)),
        ranges: job.layout.ranges(),
    };
    match digest {
        GpuDigest::Sha256Tree(leaf) => {
            // Slice-major: every leaf's slice `s` before any leaf's slice `s + 1`, so each
            // thread continues the chaining state its leaf's previous slice left.
            let leaves = leaves.max(1);
            let slice = job.queued.checked_div(leaves).unwrap_or(0);
            let first = job.queued.checked_rem(leaves).unwrap_or(0);
            let count = max.min(leaves.saturating_sub(first));
            let work = LeafWork::Slice {
                leaf: u64::from(leaf.get()),
                begin: slice.saturating_mul(STEP_SLICE_BYTES),
                len: STEP_SLICE_BYTES,
            };
            let block = block_size(count, engine.multiprocessors);
            engine.launch_leaves(stream, digest, block, source, (first, count), work, job.a)?;
            Ok(count)
        }
        GpuDigest::Blake3 => {
            let first = job.queued;
            let count = max.min(leaves.saturating_sub(first));
            let work = LeafWork::Chunks { per_thread: 1 };
            let block = block_size(count, engine.multiprocessors);
            engine.launch_leaves(stream, digest, block, source, (first, count), work, job.a)?;
            Ok(count)
        }
    }
}

/// Scratch of a job of `leaves` leaves with a table of `table_bytes`: the table, a state per
/// leaf, and the first fold's output.
fn scratch_bytes(digest: GpuDigest, leaves: u64, table_bytes: u64) -> u64 {
    table_bytes
        .saturating_add(leaves.saturating_mul(DIGEST_BYTES))
        .saturating_add(
            leaves
                .div_ceil(digest.fan_in())
                .saturating_mul(DIGEST_BYTES),
        )
}

/// The largest table a slot's job has: [`STEP_JOB_RANGES`] ranges, 41 levels.
fn table_bytes_max() -> u64 {
    let ranges = STEP_JOB_RANGES as u64;
    ranges
        .saturating_mul(2)
        .saturating_add(ranges.saturating_add(1).saturating_mul(41))
        .saturating_mul(8)
}
