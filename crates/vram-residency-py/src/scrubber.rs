//! The library's scrubbers for Python: the background one (`VramManager::start_scrubber`:
//! every sealed tensor re-verified round-robin at a bounded share of the GPU on a Rust thread,
//! beside inference) and the step one (`VramManager::step_scrubber`: a slice of a whole-GPU
//! digest queued after each engine step, sized to a share of the step's time, driven by
//! `Scrubber.step()` or the `vram_residency.torch` hooks). Running background scrubbers are
//! stopped at interpreter exit, before the interpreter can no longer give their threads the
//! GIL (on the mock they read NumPy arrays).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use pyo3::prelude::*;
use vram_residency::{Scrubber as RustScrubber, StepScrubber, VramError};

use crate::errors::{bad_input, to_py};
use crate::streams::engine_stream;

/// What runs.
enum Kind {
    Background(Mutex<Option<RustScrubber>>),
    Step {
        scrubber: Mutex<Option<Box<StepScrubber>>>,
        device: u32,
        /// The manager's backend is the mock (no streams: the engine is the host).
        mock: bool,
    },
}

/// The state a scrubber shares with the interpreter-exit hook.
struct Inner {
    kind: Kind,
    /// Shard verifications passed, kept when it stops.
    verified: AtomicU64,
    /// Bytes those hashed (the step scrubber counts them; the background one does not).
    bytes: AtomicU64,
}

impl Inner {
    /// Stops it (with the GIL released by the caller); returns the failure it found, if any.
    fn stop(&self) -> Option<VramError> {
        match &self.kind {
            Kind::Background(s) => {
                let mut taken = s.lock().unwrap_or_else(PoisonError::into_inner).take()?;
                taken.halt();
                self.verified.store(taken.verified(), Ordering::Release);
                taken.stop()
            }
            Kind::Step { scrubber, .. } => {
                let mut taken = scrubber
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()?;
                let stopped = taken.stop();
                self.verified.store(taken.verified(), Ordering::Release);
                self.bytes.store(taken.bytes_verified(), Ordering::Release);
                stopped.err()
            }
        }
    }
}

/// Every scrubber started, for the interpreter-exit hook.
static STARTED: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());

/// Stops every scrubber still running (registered with `atexit` at the first start).
#[pyfunction]
fn stop_scrubbers_at_exit(py: Python<'_>) {
    let started: Vec<Arc<Inner>> = STARTED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain(..)
        .filter_map(|w| w.upgrade())
        .collect();
    py.detach(move || {
        for s in started {
            // At exit nobody is left to raise to; the failure was recorded when found.
            let _ = s.stop();
        }
    });
}

/// A running scrubber. `stop()` (or leaving its `with` block) stops it; a failure it found is
/// raised there, as the `IntegrityError` it was.
#[pyclass(frozen, module = "vram_residency")]
pub(crate) struct Scrubber {
    inner: Arc<Inner>,
}

impl Scrubber {
    pub(crate) fn background(py: Python<'_>, scrubber: RustScrubber) -> PyResult<Self> {
        Self::registered(py, Kind::Background(Mutex::new(Some(scrubber))))
    }

    pub(crate) fn stepped(
        py: Python<'_>,
        scrubber: StepScrubber,
        device: u32,
        mock: bool,
    ) -> PyResult<Self> {
        Self::registered(
            py,
            Kind::Step {
                scrubber: Mutex::new(Some(Box::new(scrubber))),
                device,
                mock,
            },
        )
    }

    fn registered(py: Python<'_>, kind: Kind) -> PyResult<Self> {
        let inner = Arc::new(Inner {
            kind,
            verified: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        });
        let mut started = STARTED.lock().unwrap_or_else(PoisonError::into_inner);
        if started.is_empty() {
            let hook = wrap_pyfunction!(stop_scrubbers_at_exit, py)?;
            py.import("atexit")?.call_method1("register", (hook,))?;
        }
        started.retain(|w| w.strong_count() > 0);
        started.push(Arc::downgrade(&inner));
        Ok(Self { inner })
    }
}

impl Drop for Scrubber {
    /// Stops it with the GIL released: on the mock a background scrubber's thread reads NumPy
    /// arrays and needs the GIL, which a garbage-collected scrubber would otherwise hold while
    /// joining it.
    fn drop(&mut self) {
        let inner = Arc::clone(&self.inner);
        Python::attach(|py| py.detach(move || drop(inner.stop())));
    }
}

#[pymethods]
impl Scrubber {
    /// `"background"` or `"step"`.
    #[getter]
    fn mode(&self) -> &'static str {
        match self.inner.kind {
            Kind::Background(_) => "background",
            Kind::Step { .. } => "step",
        }
    }

    /// Tensor verifications passed so far (kept after `stop()`).
    #[getter]
    fn verified(&self) -> u64 {
        match &self.inner.kind {
            Kind::Background(s) => s
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(RustScrubber::verified),
            Kind::Step { scrubber, .. } => scrubber
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|s| s.verified()),
        }
        .unwrap_or_else(|| self.inner.verified.load(Ordering::Acquire))
    }

    /// Bytes the step scrubber's passed verifications hashed (0 for the background one).
    #[getter]
    fn bytes_verified(&self) -> u64 {
        match &self.inner.kind {
            Kind::Background(_) => 0,
            Kind::Step { scrubber, .. } => scrubber
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map_or_else(
                    || self.inner.bytes.load(Ordering::Acquire),
                    |s| s.bytes_verified(),
                ),
        }
    }

    /// Whether it is still running (it ends on the first failure, and when stopped).
    #[getter]
    fn running(&self) -> bool {
        match &self.inner.kind {
            Kind::Background(s) => s
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|s| s.failure().is_none()),
            Kind::Step { scrubber, .. } => scrubber
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|s| s.failure().is_none()),
        }
    }

    /// Makes every tensor due at once, whatever the interval (background scrubber).
    fn verify_all_now(&self) {
        if let Kind::Background(s) = &self.inner.kind
            && let Some(s) = s.lock().unwrap_or_else(PoisonError::into_inner).as_ref()
        {
            s.verify_all_now();
        }
    }

    /// One engine step (step scrubber): checks the slices finished since the last step
    /// without waiting, then queues the next slice after the work queued so far on `stream`
    /// (a `torch.cuda.Stream`; default PyTorch's current stream). Raises `IntegrityError` when
    /// a finished verification failed (the manager stops), `BadInput` on a background
    /// scrubber or a stopped one.
    #[pyo3(signature = (stream=None))]
    fn step(&self, py: Python<'_>, stream: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let Kind::Step { device, mock, .. } = &self.inner.kind else {
            return Err(bad_input(
                "scrubber",
                "a background scrubber runs on its own: step() drives a mode=\"step\" scrubber",
            ));
        };
        // Most calls of a host-bound engine's steps are not due (the budget pays for a working
        // call every few steps): those return before the stream is looked up.
        let due = match &self.inner.kind {
            Kind::Step { scrubber, .. } => scrubber
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
                .is_none_or(|s| s.due()),
            Kind::Background(_) => true,
        };
        if !due {
            return Ok(());
        }
        let held = if *mock {
            None
        } else {
            engine_stream(py, *device, stream.as_ref())?
        };
        let inner = Arc::clone(&self.inner);
        let engine = held.as_ref().map(crate::streams::HeldStream::engine);
        let result = py.detach(move || {
            let Kind::Step { scrubber, .. } = &inner.kind else {
                return Err(VramError::Unreachable("a step scrubber"));
            };
            let mut guard = scrubber.lock().unwrap_or_else(PoisonError::into_inner);
            let s = guard
                .as_mut()
                .ok_or_else(|| VramError::invalid_input("scrubber", "stopped: start another"))?;
            s.step(engine).map(|_| ())
        });
        drop(held);
        result.map_err(|e| to_py(&e))
    }

    /// Stops it; raises the failure it found, if any. Idempotent.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let inner = Arc::clone(&self.inner);
        match py.detach(move || inner.stop()) {
            Some(e) => Err(to_py(&e)),
            None => Ok(()),
        }
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (_exc_type=None, _exc=None, _traceback=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _traceback: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }
}
