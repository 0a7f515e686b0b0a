//! Uploads through a ring of reused pinned staging slots, filled by several threads.
//!
//! A single pageable copy runs at about 9 GB/s; pinned memory reaches the PCIe link's ~55 GB/s,
//! and what bounds a seal from pageable memory is then the host's memory bandwidth. So several
//! threads each own two slots: a thread fills one slot straight from the source (a `memcpy` from
//! a slice, a positioned read from a file) while its other slot's asynchronous copy runs on its
//! own stream. The slots stay in a bounded pool between seals, so pinning (milliseconds per
//! slot) is paid once; they never hold a shard after its seal and are never handed to inference.
//! Reads back to the host borrow an idle slot the same way.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::result;
use vram_types::ShardSource;

use crate::device::Device;
use crate::error::{CudaError, CudaStatus};
use crate::memory::{DeviceBuffer, PinnedBuffer};
use crate::resident::Resident;
use crate::stream::{Event, Stream, StreamPriority};

/// Default slot size: 16 MiB (a multiple of every tree leaf size, so leaves never straddle).
pub const DEFAULT_SLOT_BYTES: usize = 16 * 1024 * 1024;
/// Default number of slots kept pinned per device: 32 (512 MiB at the default slot size), two
/// for each of the default copy threads.
pub const DEFAULT_SLOTS: usize = 32;
/// Default number of copy threads: at most 16. On a 16-core H100 host, 16 MiB slots moved
/// 28, 32, 42 and 42 GB/s from pageable memory with 4, 8, 12 and 16 threads, and 16, 24, 30 and
/// 35 GB/s from a cached file (`docs/perf.md`): the host's memory bandwidth, not PCIe, limits.
pub const DEFAULT_COPY_THREADS: usize = 16;

/// One pinned slot and the event of the last copy out of it.
struct Slot {
    pinned: PinnedBuffer,
    copied: Event,
}

impl Slot {
    /// The slot's first `n` bytes (a chunk is at most one slot).
    fn bytes(&self, n: usize) -> Result<&[u8], CudaError> {
        self.pinned.as_slice().get(..n).ok_or(TOO_LONG)
    }

    fn bytes_mut(&mut self, n: usize) -> Result<&mut [u8], CudaError> {
        self.pinned.as_mut_slice().get_mut(..n).ok_or(TOO_LONG)
    }
}

const TOO_LONG: CudaError = CudaError::Unreachable("a chunk is at most one slot");

/// What one copy thread works with: a stream and two slots it alternates between.
struct CopyLane {
    stream: Stream,
    slots: [Slot; 2],
}

/// A bounded pool of pinned staging slots for one device.
pub struct StagingRing {
    device: Arc<Device>,
    slot_bytes: usize,
    max_slots: usize,
    copy_threads: usize,
    idle: Mutex<Vec<CopyLane>>,
    /// The reads' own small pinned buffer and stream, made at the first read that finds no
    /// idle lane.
    bounce: Mutex<Option<Bounce>>,
}

/// Pinned bytes a read without an idle lane passes through, a chunk at a time.
const BOUNCE_BYTES: usize = 1 << 20;

/// A read's pinned buffer and non-blocking stream: a copy to pageable memory would be staged
/// by the driver and wait for (and hold back) the legacy default stream, where PyTorch
/// computes (`docs/perf.md`).
struct Bounce {
    stream: Stream,
    pinned: PinnedBuffer,
}

impl std::fmt::Debug for StagingRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagingRing")
            .field("device", &self.device.ordinal())
            .field("slot_bytes", &self.slot_bytes)
            .field("max_slots", &self.max_slots)
            .field("pinned_slots", &self.pinned_slots())
            .finish()
    }
}

/// What each filled chunk is shown to before it is copied: `(offset, bytes)`. Called from the
/// copy threads, in no particular order; chunks are the slot size (the last may be shorter).
pub type ChunkObserver<'a> = &'a (dyn Fn(u64, &[u8]) + Sync);

impl StagingRing {
    /// A ring of at most `max_slots` slots of `slot_bytes` each (at least 2 and 1 byte), filled
    /// by up to `copy_threads` threads. Nothing is pinned until the first upload.
    #[must_use]
    pub fn new(
        device: &Arc<Device>,
        slot_bytes: usize,
        max_slots: usize,
        copy_threads: usize,
    ) -> Self {
        Self {
            device: Arc::clone(device),
            slot_bytes: slot_bytes.max(1),
            max_slots: max_slots.max(2),
            copy_threads: copy_threads.max(1),
            idle: Mutex::new(Vec::new()),
            bounce: Mutex::new(None),
        }
    }

    /// A ring with the default sizes, and copy threads up to the machine's parallelism.
    #[must_use]
    pub fn with_defaults(device: &Arc<Device>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self::new(
            device,
            DEFAULT_SLOT_BYTES,
            DEFAULT_SLOTS,
            cores.min(DEFAULT_COPY_THREADS),
        )
    }

    /// Slot size in bytes.
    #[must_use]
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Slots pinned now and idle in the pool.
    #[must_use]
    pub fn pinned_slots(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
            .saturating_mul(2)
    }

    fn slot(&self) -> Result<Slot, CudaError> {
        Ok(Slot {
            pinned: PinnedBuffer::alloc(&self.device, self.slot_bytes)?,
            copied: Event::new(&self.device)?,
        })
    }

    fn take(&self) -> Result<CopyLane, CudaError> {
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match reused {
            Some(lane) => Ok(lane),
            None => Ok(CopyLane {
                stream: Stream::new(&self.device, StreamPriority::Highest)?,
                slots: [self.slot()?, self.slot()?],
            }),
        }
    }

    /// An idle lane, if the pool holds one (nothing is pinned for it).
    fn take_idle(&self) -> Option<CopyLane> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn give_back(&self, lane: CopyLane) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len().saturating_mul(2) < self.max_slots {
            idle.push(lane);
        }
    }

    /// Copies all of `source` to the start of `dst`, calling `observe` with each chunk as it
    /// sits in pinned memory (what the device receives). Returns when every copy has finished.
    ///
    /// # Errors
    /// [`CudaError::OutOfRange`] when the source is longer than `dst`; [`CudaError::Driver`]
    /// when a copy fails; [`CudaError::SourceRead`] when the source cannot be read;
    /// [`CudaError::HostMemory`] when a slot cannot be pinned.
    pub fn upload(
        &self,
        dst: &DeviceBuffer,
        source: &dyn ShardSource,
        observe: Option<ChunkObserver<'_>>,
    ) -> Result<(), CudaError> {
        let ordinal = self.device.ordinal();
        let len = source.len();
        if usize::try_from(len).map_or(true, |l| l > dst.len()) {
            return Err(CudaError::OutOfRange {
                device: ordinal,
                operation: "host-to-device copy (source longer than the allocation)",
            });
        }
        let slot = u64::try_from(self.slot_bytes).unwrap_or(u64::MAX);
        let chunks = len.div_ceil(slot);
        let threads = usize::try_from(chunks)
            .unwrap_or(usize::MAX)
            .min(self.copy_threads)
            .min(self.max_slots / 2)
            .max(1);
        let next = AtomicU64::new(0);
        let failed = AtomicBool::new(false);
        if threads == 1 {
            // One copy thread: this one (starting a thread costs more than a small copy).
            return self.copy_worker(dst, source, observe, &next, &failed, (slot, len));
        }
        let first_error: Mutex<Option<CudaError>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let result =
                        self.copy_worker(dst, source, observe, &next, &failed, (slot, len));
                    if let Err(e) = result {
                        failed.store(true, Ordering::Release);
                        first_error
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_or_insert(e);
                    }
                });
            }
        });
        match first_error
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Copies `dst.len()` bytes of `src` from `offset` into `dst`, through an idle pinned slot
    /// when the pool has one (1 MiB: 387 us as a pageable copy, 114 us through a slot, on an
    /// H100 host), otherwise through the ring's one small pinned read buffer (never a pageable
    /// copy, which would wait for an engine's work on the legacy default stream); a read never
    /// pins a slot. Returns when every byte has arrived.
    ///
    /// # Errors
    /// [`CudaError::WrongDevice`] for memory of another device than the ring's;
    /// [`CudaError::OutOfRange`] when the range is not inside `src`; [`CudaError::Driver`] when
    /// a copy fails.
    pub fn download(&self, src: &Resident, offset: usize, dst: &mut [u8]) -> Result<(), CudaError> {
        let (ordinal, found) = (self.device.ordinal(), src.device().ordinal());
        if found != ordinal {
            return Err(CudaError::WrongDevice {
                device: ordinal,
                found,
                operation: "device-to-host copy",
            });
        }
        let Some(mut lane) = self.take_idle() else {
            return self.download_bounced(src, offset, dst);
        };
        let result = download_through(&mut lane, src, offset, dst, self.slot_bytes);
        // The copies finish before the lane goes back to the pool or the call returns.
        let drained = lane.stream.synchronize();
        if drained.is_ok() {
            self.give_back(lane);
        }
        result.and(drained)
    }

    /// [`Self::download`] through the read buffer, a chunk at a time.
    fn download_bounced(
        &self,
        src: &Resident,
        offset: usize,
        dst: &mut [u8],
    ) -> Result<(), CudaError> {
        let mut bounce = self.bounce.lock().unwrap_or_else(PoisonError::into_inner);
        let b = match bounce.as_mut() {
            Some(b) => b,
            None => bounce.insert(Bounce {
                stream: Stream::new(&self.device, StreamPriority::Highest)?,
                pinned: PinnedBuffer::alloc(&self.device, BOUNCE_BYTES)?,
            }),
        };
        let ordinal = src.device().ordinal();
        let mut at = offset;
        for chunk in dst.chunks_mut(BOUNCE_BYTES) {
            let n = chunk.len();
            let from = src.range_address(at, n, "device-to-host copy")?;
            let pinned = b.pinned.as_mut_slice().get_mut(..n).ok_or(TOO_LONG)?;
            src.device().bind()?;
            // SAFETY: `from..from + n` lies inside `src` (`range_address`), which outlives the
            // copy (borrowed for this call); `pinned` is the read buffer, held under its lock
            // and read only after the stream is synchronised below.
            unsafe { result::memcpy_dtoh_async(pinned, from, b.stream.raw()) }
                .map_err(|e| CudaStatus::from(e).during(ordinal, "device-to-host copy"))?;
            b.stream.synchronize()?;
            chunk.copy_from_slice(b.pinned.as_slice().get(..n).ok_or(TOO_LONG)?);
            at = at.checked_add(n).ok_or(CudaError::OutOfRange {
                device: ordinal,
                operation: "device-to-host copy",
            })?;
        }
        Ok(())
    }

    /// One copy thread: claims chunks in order and alternates between its two slots.
    fn copy_worker(
        &self,
        dst: &DeviceBuffer,
        source: &dyn ShardSource,
        observe: Option<ChunkObserver<'_>>,
        next: &AtomicU64,
        failed: &AtomicBool,
        (slot_len, len): (u64, u64),
    ) -> Result<(), CudaError> {
        let ordinal = self.device.ordinal();
        let mut lane = self.take()?;
        let mut result = Ok(());
        let mut turn = 0usize;
        while !failed.load(Ordering::Acquire) {
            let index = next.fetch_add(1, Ordering::AcqRel);
            let offset = index.saturating_mul(slot_len);
            if offset >= len {
                break;
            }
            let n = usize::try_from(slot_len.min(len.saturating_sub(offset))).unwrap_or(0);
            let Some(slot) = lane.slots.get_mut(turn % 2) else {
                break;
            };
            turn = turn.wrapping_add(1);
            result = fill_and_send(slot, &lane.stream, dst, source, observe, offset, n, ordinal);
            if result.is_err() {
                break;
            }
        }
        // Both slots' copies finish before the lane goes back to the pool or the call returns.
        let drained = lane.stream.synchronize();
        if drained.is_ok() {
            self.give_back(lane);
        }
        result.and(drained)
    }
}

/// Waits for the slot's previous copy, fills it with `n` source bytes at `offset`, shows them to
/// `observe`, and queues their copy to `dst` at the same offset.
#[allow(clippy::too_many_arguments, reason = "one step of the copy loop")]
fn fill_and_send(
    slot: &mut Slot,
    stream: &Stream,
    dst: &DeviceBuffer,
    source: &dyn ShardSource,
    observe: Option<ChunkObserver<'_>>,
    offset: u64,
    n: usize,
    ordinal: u32,
) -> Result<(), CudaError> {
    slot.copied.wait()?;
    let host = slot.bytes_mut(n)?;
    source
        .read_at(offset, host)
        .map_err(|e| CudaError::SourceRead {
            offset,
            reason: e.to_string(),
        })?;
    if let Some(observe) = observe {
        observe(offset, host);
    }
    let at =
        usize::try_from(offset).map_err(|_| CudaError::Unreachable("offset fits the buffer"))?;
    let target = dst.range_address(at, n, "host-to-device copy")?;
    let host = slot.bytes(n)?;
    stream.device().bind()?;
    // The slot is written again only after the event recorded next has completed (`wait` above),
    // and the stream is synchronised before the slot returns to the pool.
    // SAFETY: `target..target + n` lies inside `dst` (`range_address`), which outlives the copy;
    // `host` is the slot's pinned memory, untouched until the copy completes (see above).
    unsafe { result::memcpy_htod_async(target, host, stream.raw()) }
        .map_err(|e| CudaStatus::from(e).during(ordinal, "host-to-device copy"))?;
    slot.copied.record(stream)
}

/// Copies `src[offset..offset + dst.len()]` into `dst` one slot at a time through the lane's
/// first slot, waiting for each copy before moving its bytes on.
fn download_through(
    lane: &mut CopyLane,
    src: &Resident,
    offset: usize,
    dst: &mut [u8],
    slot_bytes: usize,
) -> Result<(), CudaError> {
    let ordinal = src.device().ordinal();
    let [slot, _] = &mut lane.slots;
    // The slot's last upload (if any) finished before the lane came back to the pool.
    slot.copied.wait()?;
    let mut at = offset;
    for chunk in dst.chunks_mut(slot_bytes.max(1)) {
        let n = chunk.len();
        let from = src.range_address(at, n, "device-to-host copy")?;
        let pinned = slot.bytes_mut(n)?;
        src.device().bind()?;
        // SAFETY: `from..from + n` lies inside `src` (`range_address`), which outlives the copy
        // (borrowed for this call); `pinned` is the slot's pinned memory, read only after the
        // stream is synchronised below.
        unsafe { result::memcpy_dtoh_async(pinned, from, lane.stream.raw()) }
            .map_err(|e| CudaStatus::from(e).during(ordinal, "device-to-host copy"))?;
        lane.stream.synchronize()?;
        let arrived = slot.bytes(n)?;
        chunk.copy_from_slice(arrived);
        at = at.checked_add(n).ok_or(CudaError::OutOfRange {
            device: ordinal,
            operation: "device-to-host copy",
        })?;
    }
    Ok(())
}
