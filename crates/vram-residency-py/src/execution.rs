//! The execution window around a forward pass, as a context manager over the Rust side's
//! guard-shaped execution (`ModelExecution`): `__enter__` runs the checks before, `__exit__`
//! the checks after and reads the verdict. No thread of its own: the window's rules are the
//! Rust side's, driven from the two calls.

use std::sync::{Arc, Mutex, PoisonError};

use pyo3::prelude::*;
use vram_residency::{EngineStream, ExecutionMode, ModelExecution, VramManager};

use crate::errors::{bad_input, to_py};
use crate::sealed::Held;
use crate::streams::{HeldStream, engine_stream};

/// What the window checks, and when the host waits for the verdict.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Verified before the block runs (after the work queued so far on the stream).
    Before,
    /// Verified before, and again after the block's work on the stream; the verdict is read
    /// at `__exit__`.
    BeforeAndAfter,
    /// Both checks queued on the GPU around the block's work (the block starts without a host
    /// round trip); both verdicts read at `__exit__`.
    Pipelined,
}

impl Mode {
    pub(crate) fn parse(mode: &str) -> PyResult<Self> {
        match mode {
            "before" => Ok(Self::Before),
            "before_and_after" => Ok(Self::BeforeAndAfter),
            "pipelined" => Ok(Self::Pipelined),
            other => Err(bad_input(
                "mode",
                format!("{other:?}: give \"before\", \"before_and_after\" or \"pipelined\""),
            )),
        }
    }

    /// The Rust mode on `stream` (none: the mock, whose engine is the host).
    fn on(self, stream: Option<EngineStream<'static>>) -> ExecutionMode<'static> {
        match (self, stream) {
            (Self::Before, Some(s)) => ExecutionMode::BeforeOn(s),
            (Self::Before, None) => ExecutionMode::Before,
            (Self::BeforeAndAfter, Some(s)) => ExecutionMode::BeforeAndAfterOn(s),
            (Self::BeforeAndAfter, None) => ExecutionMode::BeforeAndAfter,
            (Self::Pipelined, Some(s)) => ExecutionMode::Pipelined(s),
            // The mock computes every digest now: pipelining is the checked mode there.
            (Self::Pipelined, None) => ExecutionMode::BeforeAndAfter,
        }
    }
}

/// Where a window stands: one request, entered once, exited once.
enum State {
    Fresh,
    /// The Rust execution and the stream it is ordered on (its owner kept referenced).
    Entered {
        execution: ModelExecution<'static>,
        stream: Option<HeldStream>,
    },
    Used,
}

/// `with manager.execute(sealed):` — see `Manager.execute`.
#[pyclass(frozen, module = "vram_residency")]
pub(crate) struct Execution {
    manager: Arc<VramManager>,
    held: Arc<Held>,
    mode: Mode,
    stream: Option<Py<PyAny>>,
    state: Mutex<State>,
}

impl Execution {
    pub(crate) fn new(
        manager: Arc<VramManager>,
        held: Arc<Held>,
        mode: Mode,
        stream: Option<Py<PyAny>>,
    ) -> Self {
        Self {
            manager,
            held,
            mode,
            stream,
            state: Mutex::new(State::Fresh),
        }
    }
}

#[pymethods]
impl Execution {
    fn __enter__<'p>(slf: PyRef<'p, Self>, py: Python<'p>) -> PyResult<PyRef<'p, Self>> {
        {
            let mut state = slf.state.lock().unwrap_or_else(PoisonError::into_inner);
            if !matches!(*state, State::Fresh) {
                return Err(bad_input(
                    "execution",
                    "already entered: use a new one per request",
                ));
            }
            // Taken now: a second `__enter__` meanwhile (another thread) is refused.
            *state = State::Used;
        }
        let device = slf.held.model.gpu_device();
        let stream = if slf.held.lent.mock.is_some() {
            None
        } else {
            engine_stream(py, device, slf.stream.as_ref().map(|s| s.bind(py)))?
        };
        let mode = slf.mode.on(stream.as_ref().map(HeldStream::engine));
        let (manager, held) = (slf.manager.clone(), slf.held.clone());
        let execution = py
            .detach(move || manager.begin_model_execution(&held.model, mode))
            .map_err(|e| to_py(&e))?;
        *slf.state.lock().unwrap_or_else(PoisonError::into_inner) =
            State::Entered { execution, stream };
        Ok(slf)
    }

    #[pyo3(signature = (_exc_type=None, _exc=None, _traceback=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _traceback: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !matches!(*state, State::Entered { .. }) {
            return Err(bad_input("execution", "not entered"));
        }
        let State::Entered { execution, stream } = std::mem::replace(&mut *state, State::Used)
        else {
            return Err(bad_input("execution", "not entered"));
        };
        drop(state);
        // The stream's owner stays referenced until the checks after have been queued and read.
        let verdict = py.detach(move || execution.finish());
        drop(stream);
        verdict.map_err(|e| to_py(&e))?;
        Ok(false)
    }

    /// `"before"`, `"before_and_after"` or `"pipelined"`.
    #[getter]
    fn mode(&self) -> &'static str {
        match self.mode {
            Mode::Before => "before",
            Mode::BeforeAndAfter => "before_and_after",
            Mode::Pipelined => "pipelined",
        }
    }
}
