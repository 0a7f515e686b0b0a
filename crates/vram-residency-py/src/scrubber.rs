//! The library's scrubber (`VramManager::start_scrubber`) for Python: every sealed tensor
//! re-verified round-robin at a bounded share of the GPU on a Rust thread, beside inference.

use std::sync::{Mutex, PoisonError};

use pyo3::prelude::*;
use vram_residency::Scrubber as RustScrubber;

use crate::errors::to_py;

/// A running scrubber. `stop()` (or leaving its `with` block) stops it after the verification
/// in progress; a failure it found is raised there, as the `IntegrityError` it was.
#[pyclass(frozen, module = "vram_residency")]
pub(crate) struct Scrubber {
    inner: Mutex<Option<RustScrubber>>,
}

impl Scrubber {
    pub(crate) fn new(inner: RustScrubber) -> Self {
        Self {
            inner: Mutex::new(Some(inner)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&RustScrubber) -> T) -> Option<T> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(f)
    }
}

impl Drop for Scrubber {
    /// Stops the thread with the GIL released: on the mock it reads NumPy arrays and needs the
    /// GIL, which a garbage-collected scrubber would otherwise hold while joining it.
    fn drop(&mut self) {
        let inner = self
            .inner
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(scrubber) = inner {
            Python::attach(|py| py.detach(move || drop(scrubber)));
        }
    }
}

#[pymethods]
impl Scrubber {
    /// Tensors verified so far.
    #[getter]
    fn verified(&self) -> u64 {
        self.with(RustScrubber::verified).unwrap_or(0)
    }

    /// Whether it is still running (it ends on the first failure, and when stopped).
    #[getter]
    fn running(&self) -> bool {
        self.with(|s| s.failure().is_none()).unwrap_or(false)
    }

    /// Makes every tensor due at once, whatever the interval.
    fn verify_all_now(&self) {
        self.with(RustScrubber::verify_all_now);
    }

    /// Stops it; raises the failure it found, if any. Idempotent.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match inner.and_then(|s| py.detach(move || s.stop())) {
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
