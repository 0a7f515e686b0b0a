//! Streams and events: the ordering of asynchronous work on one device.
//!
//! Work in this crate waits on its own stream or event, never on the whole context
//! (`cuCtxSynchronize`), so it does not stall an inference engine sharing the GPU.

use std::sync::Arc;

use cudarc::driver::result;
use cudarc::driver::sys::{self, CUevent, CUstream};

use crate::device::Device;
use crate::error::{CudaError, CudaStatus};

/// Scheduling priority of a stream relative to other streams of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPriority {
    /// The lowest priority the device offers: blocks of higher-priority streams (an inference
    /// engine's) are scheduled first whenever both are waiting.
    Lowest,
    /// The highest priority the device offers.
    Highest,
}

/// A non-blocking stream of one device, destroyed on drop.
pub struct Stream {
    device: Arc<Device>,
    raw: CUstream,
}

crate::debug_without_pointers!(Stream {
    device: |s: &Stream| s.device.ordinal()
});

// SAFETY: a CUstream is a driver handle usable from any thread of the process; the driver
// serialises work submitted to it.
unsafe impl Send for Stream {}
// SAFETY: as above; `&Stream` only hands the handle to thread-safe driver calls.
unsafe impl Sync for Stream {}

impl Stream {
    /// A stream with `priority` on `device`.
    ///
    /// # Errors
    /// [`CudaError::Driver`] from `cuStreamCreateWithPriority`.
    pub fn new(device: &Arc<Device>, priority: StreamPriority) -> Result<Self, CudaError> {
        device.bind()?;
        let ordinal = device.ordinal();
        let (least, greatest) = result::stream::get_priority_range()
            .map_err(|e| CudaStatus::from(e).during(ordinal, "cuCtxGetStreamPriorityRange"))?;
        let priority = match priority {
            StreamPriority::Lowest => least,
            StreamPriority::Highest => greatest,
        };
        let raw =
            result::stream::create_with_priority(result::stream::StreamKind::NonBlocking, priority)
                .map_err(|e| CudaStatus::from(e).during(ordinal, "cuStreamCreateWithPriority"))?;
        Ok(Self {
            device: Arc::clone(device),
            raw,
        })
    }

    /// The device the stream belongs to.
    #[must_use]
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    pub(crate) fn raw(&self) -> CUstream {
        self.raw
    }

    /// Waits for the work queued on this stream only.
    ///
    /// # Errors
    /// [`CudaError::Driver`], including an error of a kernel queued on it.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.device.bind()?;
        // SAFETY: `raw` was created in `new` and is destroyed only in `Drop`.
        unsafe { result::stream::synchronize(self.raw) }
            .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "cuStreamSynchronize"))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: `raw` was created in `new`; pending work is waited for first, then the
            // stream is destroyed once, here.
            let drained = unsafe { result::stream::synchronize(self.raw) };
            crate::error::report_release("a stream's pending work", self.device.ordinal(), drained);
            // SAFETY: as above.
            let destroyed = unsafe { result::stream::destroy(self.raw) };
            crate::error::report_release("a stream", self.device.ordinal(), destroyed);
        }
    }
}

/// A stream an inference engine owns, named to this crate so that a verification can be ordered
/// after the engine's work on it (or the engine's work after a verification) on the GPU: the
/// crate only records events on it and makes streams wait for them. It never synchronises,
/// destroys or queues work on it.
#[derive(Clone, Copy)]
pub struct EngineStream<'a> {
    device: u32,
    raw: CUstream,
    _borrow: std::marker::PhantomData<&'a ()>,
}

impl std::fmt::Debug for EngineStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineStream")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl EngineStream<'static> {
    /// An engine's stream by its driver handle (`torch.cuda.current_stream().cuda_stream`, a
    /// `cudaStream_t`, a `CUstream`); 0 names the legacy default stream.
    ///
    /// # Safety
    /// 1. `raw` is 0 or a live stream of the primary context of device `device` (the context
    ///    the CUDA runtime, PyTorch and this crate share).
    /// 2. It stays live until every call given this value has returned.
    #[must_use]
    pub unsafe fn from_raw(device: u32, raw: u64) -> Self {
        // The same value; the contract differs (see `held_by_binding`).
        Self::held_by_binding(device, raw)
    }
}

impl EngineStream<'static> {
    /// A framework's stream handed over by a language binding whose callers cannot write
    /// `unsafe` (the Python package): the binding takes the handle only from a stream object of
    /// the framework that made it (a `torch.cuda.Stream`, a CuPy stream; never a bare number
    /// from its caller), of device `device`, and keeps that object referenced for as long as
    /// any call given this value runs. PyTorch never destroys the streams it hands out, so the
    /// handle stays live.
    ///
    /// Why this is not `unsafe` when [`Self::from_raw`] is: that constructor states the promise
    /// in Rust's type system for Rust callers; a binding keeps it with the object it holds and
    /// by refusing handles it cannot vouch for (`docs/adr/0012-engine-ordered-checks.md`).
    #[must_use]
    pub fn held_by_binding(device: u32, raw: u64) -> Self {
        Self {
            device,
            raw: std::ptr::with_exposed_provenance_mut(usize::try_from(raw).unwrap_or(0)),
            _borrow: std::marker::PhantomData,
        }
    }
}

impl<'a> EngineStream<'a> {
    /// One of this crate's streams, as an engine's (tests and benchmarks: a stand-in engine).
    #[must_use]
    pub fn of(stream: &'a Stream) -> Self {
        Self {
            device: stream.device().ordinal(),
            raw: stream.raw(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// The device the stream belongs to.
    #[must_use]
    pub fn device(&self) -> u32 {
        self.device
    }

    pub(crate) fn raw(&self) -> CUstream {
        self.raw
    }

    /// Waits on the host until the work queued on this stream so far is done (an event recorded
    /// there; the rest of the device is not waited for).
    ///
    /// # Errors
    /// [`CudaError::WrongDevice`] when `device` is not the stream's; [`CudaError::Driver`].
    pub fn wait_on_host(&self, device: &Arc<Device>) -> Result<(), CudaError> {
        let mut done = Event::new(device)?;
        done.record_on(*self)?;
        done.wait()
    }
}

// SAFETY: a CUstream is a driver handle usable from any thread of the process; this value only
// hands it to thread-safe driver calls (event record, stream wait).
unsafe impl Send for EngineStream<'_> {}
// SAFETY: as above.
unsafe impl Sync for EngineStream<'_> {}

impl Stream {
    /// Makes work queued on this stream from now on wait, on the GPU, for `event` (the work
    /// queued before it was recorded); the host does not wait.
    ///
    /// # Errors
    /// [`CudaError::Driver`] from `cuStreamWaitEvent`.
    pub(crate) fn wait_for(&self, event: &Event) -> Result<(), CudaError> {
        self.device.bind()?;
        // SAFETY: both handles were created by the driver and are live (the event is owned by
        // the caller, the stream by `self`).
        unsafe {
            result::stream::wait_event(
                self.raw,
                event.raw,
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "cuStreamWaitEvent"))
    }
}

/// How a host thread waits for an event, and whether it times the work before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    /// No timing; a host wait spins. (A blocking-sync wait made a pure-Python loop beside it
    /// 1.8x slower on an H100 host, `docs/perf.md`: the crate's waits spin.)
    Spin,
    /// Timed ([`Event::elapsed_since`]); never waited for on the host.
    Timing,
}

/// An event: "has the work before this point finished", and, when timed, when it did.
pub(crate) struct Event {
    device: Arc<Device>,
    raw: CUevent,
    recorded: bool,
}

crate::debug_without_pointers!(Event {
    device: |e: &Event| e.device.ordinal(),
    recorded: |e: &Event| e.recorded
});

// SAFETY: a CUevent is a driver handle usable from any thread; `&mut self` serialises record.
unsafe impl Send for Event {}

impl Event {
    pub(crate) fn new(device: &Arc<Device>) -> Result<Self, CudaError> {
        Self::of_kind(device, EventKind::Spin)
    }

    pub(crate) fn of_kind(device: &Arc<Device>, kind: EventKind) -> Result<Self, CudaError> {
        use sys::CUevent_flags as F;
        device.bind()?;
        let flags = match kind {
            EventKind::Spin => F::CU_EVENT_DISABLE_TIMING as u32,
            EventKind::Timing => F::CU_EVENT_DEFAULT as u32,
        };
        let mut raw = std::mem::MaybeUninit::uninit();
        // SAFETY: the device's context is current; `raw` is written by the call; `flags` is a
        // combination of the driver's event flags.
        unsafe { sys::cuEventCreate(raw.as_mut_ptr(), flags) }
            .result()
            .map_err(|e| CudaStatus::from(e).during(device.ordinal(), "cuEventCreate"))?;
        // SAFETY: the call above succeeded, so `raw` is initialised.
        let raw = unsafe { raw.assume_init() };
        Ok(Self {
            device: Arc::clone(device),
            raw,
            recorded: false,
        })
    }

    /// Marks the current end of `stream`'s queue.
    pub(crate) fn record(&mut self, stream: &Stream) -> Result<(), CudaError> {
        // SAFETY: `raw` and the stream's handle were created by the driver and are live.
        unsafe { result::event::record(self.raw, stream.raw()) }
            .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "cuEventRecord"))?;
        self.recorded = true;
        Ok(())
    }

    /// Marks the current end of an engine's stream's queue.
    pub(crate) fn record_on(&mut self, stream: EngineStream<'_>) -> Result<(), CudaError> {
        if stream.device() != self.device.ordinal() {
            return Err(CudaError::WrongDevice {
                device: self.device.ordinal(),
                found: stream.device(),
                operation: "cuEventRecord (engine stream)",
            });
        }
        self.device.bind()?;
        // SAFETY: `raw` was created in `new`; the engine's stream is live and of this device
        // (the contract of `EngineStream::from_raw`, or borrowed from a live `Stream`).
        unsafe { result::event::record(self.raw, stream.raw()) }
            .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "cuEventRecord"))?;
        self.recorded = true;
        Ok(())
    }

    /// Makes the engine's stream wait, on the GPU, for the work recorded before this event.
    pub(crate) fn hold(&self, stream: EngineStream<'_>) -> Result<(), CudaError> {
        self.device.bind()?;
        // SAFETY: as in `record_on`.
        unsafe {
            result::stream::wait_event(
                stream.raw(),
                self.raw,
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "cuStreamWaitEvent"))
    }

    /// Whether the work recorded before this event has finished, without waiting (true when
    /// never recorded).
    pub(crate) fn is_done(&self) -> Result<bool, CudaError> {
        if !self.recorded {
            return Ok(true);
        }
        // SAFETY: `raw` was created in `new` and recorded on a live stream.
        match unsafe { result::event::query(self.raw) } {
            Ok(()) => Ok(true),
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            Err(e) => Err(CudaStatus::from(e).during(self.device.ordinal(), "cuEventQuery")),
        }
    }

    /// The GPU time between `start` and this event, both timed ([`EventKind::Timing`]) and
    /// done.
    pub(crate) fn elapsed_since(&self, start: &Event) -> Result<std::time::Duration, CudaError> {
        // SAFETY: both events were created by the driver and are live; the driver checks that
        // both were recorded, completed and timed.
        let ms = unsafe { result::event::elapsed(start.raw, self.raw) }
            .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "cuEventElapsedTime"))?;
        Ok(std::time::Duration::from_secs_f32(ms.max(0.0) / 1000.0))
    }

    /// Waits until the work recorded before this event has finished (at once if never recorded).
    pub(crate) fn wait(&self) -> Result<(), CudaError> {
        if !self.recorded {
            return Ok(());
        }
        // SAFETY: `raw` was created in `new` and recorded on a live stream.
        unsafe { result::event::synchronize(self.raw) }
            .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "cuEventSynchronize"))
    }
}

impl Drop for Event {
    /// Destroys the event without waiting for it: the driver releases an event still pending
    /// once the work before it completes. (Waiting here made every event recorded on an
    /// engine's stream a host synchronisation with that engine.)
    fn drop(&mut self) {
        if self.device.bind().is_ok() {
            // SAFETY: `raw` was created in `new` and is destroyed once, here.
            let destroyed = unsafe { result::event::destroy(self.raw) };
            crate::error::report_release("an event", self.device.ordinal(), destroyed);
        }
    }
}
