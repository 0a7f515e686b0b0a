//! The execution window around a forward pass, as a context manager: `__enter__` verifies the
//! model, `__exit__` (in the checked mode) verifies it again after the engine's work. Both
//! checks are the Rust `execute_model`'s: it runs on a thread of its own whose closure is the
//! `with` block, so the window's rules live in one place.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use pyo3::prelude::*;
use vram_residency::{ExecutionMode, VramError, VramManager};

use crate::errors::{bad_input, to_py};
use crate::sealed::Held;

/// What the window checks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Verified before the block runs.
    Before,
    /// Verified before, and again once the block's GPU work is finished.
    BeforeAndAfter,
}

impl Mode {
    pub(crate) fn parse(mode: &str) -> PyResult<Self> {
        match mode {
            "before" => Ok(Self::Before),
            "before_and_after" => Ok(Self::BeforeAndAfter),
            other => Err(bad_input(
                "mode",
                format!("{other:?}: give \"before\" or \"before_and_after\""),
            )),
        }
    }
}

enum Event {
    Entered,
    Done(Result<(), VramError>),
}

struct Running {
    exit: Sender<()>,
    events: Receiver<Event>,
    thread: JoinHandle<()>,
}

/// `with manager.execute(sealed):` — the model is verified on entry; in the
/// `before_and_after` mode it is verified again on exit, after the work the block queued on
/// the tensors' producer streams is finished (that stream is synchronised, never the
/// whole device). A change found on exit raises `IntegrityError` (`kind` =
/// `ModifiedDuringExecution`): the block's result must not be served.
#[pyclass(module = "vram_residency")]
pub(crate) struct Execution {
    manager: Arc<VramManager>,
    held: Arc<Held>,
    mode: Mode,
    running: Mutex<Option<Running>>,
}

impl Execution {
    pub(crate) fn new(manager: Arc<VramManager>, held: Arc<Held>, mode: Mode) -> Self {
        Self {
            manager,
            held,
            mode,
            running: Mutex::new(None),
        }
    }
}

#[pymethods]
impl Execution {
    fn __enter__<'p>(slf: PyRef<'p, Self>, py: Python<'p>) -> PyResult<PyRef<'p, Self>> {
        // Never waited for: a window entered from another thread holds the lock while its
        // check runs, which may need the GIL this thread holds.
        let mut running = match slf.running.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(bad_input(
                    "execution",
                    "already being entered: use a new one per request",
                ));
            }
        };
        if running.is_some() {
            return Err(bad_input(
                "execution",
                "already entered: use a new one per request",
            ));
        }
        let (events_tx, events) = channel();
        let (exit, exit_rx) = channel::<()>();
        let manager = slf.manager.clone();
        let held = slf.held.clone();
        let mode = match slf.mode {
            Mode::Before => ExecutionMode::Before,
            Mode::BeforeAndAfter => ExecutionMode::BeforeAndAfter,
        };
        let thread = std::thread::Builder::new()
            .name("vram-execute".to_owned())
            .spawn(move || {
                let entered = events_tx.clone();
                let result = manager.execute_model(&held.model, mode, |_weights| {
                    let _ = entered.send(Event::Entered);
                    // The block runs now; its end (or the window dropped) ends the scope.
                    let _ = exit_rx.recv();
                });
                let _ = events_tx.send(Event::Done(result));
            })
            .map_err(|e| {
                crate::errors::VramResidencyError::new_err(format!(
                    "no thread could be started for the execution: {e}"
                ))
            })?;
        let (first, events) = py.detach(move || (events.recv(), events));
        match first {
            Ok(Event::Entered) => {
                *running = Some(Running {
                    exit,
                    events,
                    thread,
                });
                drop(running);
                Ok(slf)
            }
            Ok(Event::Done(result)) => {
                let _ = thread.join();
                Err(to_py(&result.err().unwrap_or(VramError::Unreachable(
                    "an execution ended before it started",
                ))))
            }
            Err(_) => Err(to_py(&VramError::Unreachable(
                "the execution thread ended without a word",
            ))),
        }
    }

    #[pyo3(signature = (_exc_type=None, _exc=None, _traceback=None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _traceback: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| bad_input("execution", "not entered"))?;
        if self.mode == Mode::BeforeAndAfter {
            // The block's kernels were queued on the tensors' current streams: the check after
            // must see their end.
            for stream in &self.held.lent.producer_streams {
                stream.bind(py).call_method0("synchronize")?;
            }
        }
        let Running {
            exit,
            events,
            thread,
        } = running;
        let _ = exit.send(());
        let done = py.detach(move || {
            let done = events.recv();
            let _ = thread.join();
            done
        });
        match done {
            Ok(Event::Done(Ok(()))) => Ok(false),
            Ok(Event::Done(Err(e))) => Err(to_py(&e)),
            _ => Err(to_py(&VramError::Unreachable(
                "the execution thread ended without a result",
            ))),
        }
    }
}
