//! Engine streams from Python: the stream a window's or a step's checks are ordered on, taken
//! only from a stream object of the framework that made it (PyTorch's current stream by
//! default, a `torch.cuda.Stream` or a CuPy stream given), never from a bare number, and kept
//! referenced while the Rust side uses its handle (`docs/adr/0012-engine-ordered-checks.md`).

use pyo3::prelude::*;
use pyo3::types::PyInt;
use vram_residency::EngineStream;

use crate::errors::bad_input;

/// A stream the checks are ordered on: its handle, and the object that keeps it live.
pub(crate) struct HeldStream {
    handle: u64,
    device: u32,
    _owner: Py<PyAny>,
}

impl HeldStream {
    /// The stream as the Rust side takes it. Valid while `self` (which holds the stream's
    /// owner) lives: callers keep `self` for as long as the value is used.
    pub(crate) fn engine(&self) -> EngineStream<'static> {
        EngineStream::held_by_binding(self.device, self.handle)
    }
}

/// The stream of `stream` (a stream object) on `device`, or PyTorch's current stream of
/// `device` when `stream` is `None`. `None` when neither is there (no PyTorch: the mock's
/// NumPy arrays have no stream).
pub(crate) fn engine_stream(
    py: Python<'_>,
    device: u32,
    stream: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<HeldStream>> {
    let object = match stream {
        Some(s) if s.is_none() => return current(py, device),
        Some(s) => s.clone(),
        None => return current(py, device),
    };
    refuse_raw_handle(&object)?;
    held(device, &object)
}

/// A bare number is no stream the package can vouch for (`docs/adr/0012-engine-ordered-checks.md`).
pub(crate) fn refuse_raw_handle(object: &Bound<'_, PyAny>) -> PyResult<()> {
    if object.is_instance_of::<PyInt>() {
        return Err(bad_input(
            "stream",
            "give a stream object (torch.cuda.Stream, a CuPy stream), not a raw handle: a number cannot be checked",
        ));
    }
    Ok(())
}

/// PyTorch's current stream of `device`, when PyTorch is there.
fn current(py: Python<'_>, device: u32) -> PyResult<Option<HeldStream>> {
    let Ok(torch) = py.import("torch") else {
        return Ok(None);
    };
    let cuda = torch.getattr("cuda")?;
    if !cuda.call_method0("is_available")?.extract::<bool>()? {
        return Ok(None);
    }
    let stream = cuda.call_method1("current_stream", (device,))?;
    held(device, &stream)
}

/// A PyTorch (`cuda_stream`, `device.index`) or CuPy (`ptr`, `device_id`) stream object on
/// `device`.
fn held(device: u32, object: &Bound<'_, PyAny>) -> PyResult<Option<HeldStream>> {
    let (handle, on) = handle_of(object)?;
    if let Some(on) = on
        && on != device
    {
        return Err(bad_input(
            "stream",
            format!("the stream is on GPU {on}, the model on GPU {device}"),
        ));
    }
    Ok(Some(HeldStream {
        handle,
        device,
        _owner: object.clone().unbind(),
    }))
}

/// A stream object's handle and the device it says it is on, when it says: PyTorch's
/// (`cuda_stream`, `device.index`) or CuPy's (`ptr`, `device_id`).
fn handle_of(object: &Bound<'_, PyAny>) -> PyResult<(u64, Option<u32>)> {
    if let Ok(handle) = object.getattr("cuda_stream") {
        let on = object
            .getattr("device")
            .and_then(|d| d.getattr("index"))
            .ok()
            .and_then(|i| i.extract::<Option<u32>>().ok().flatten());
        return Ok((handle.extract()?, on));
    }
    if let Ok(handle) = object.getattr("ptr") {
        let on = object
            .getattr("device_id")
            .ok()
            .and_then(|i| i.extract::<u32>().ok());
        return Ok((handle.extract()?, on));
    }
    Err(bad_input(
        "stream",
        format!(
            "a {}: give a torch.cuda.Stream or a CuPy stream",
            object
                .get_type()
                .name()
                .map_or_else(|_| "?".to_owned(), |n| n.to_string())
        ),
    ))
}

/// The distinct streams a batch of tensors was produced on, in the order first met: each
/// stream object is looked at once (the tensors of a batch share PyTorch's current stream
/// object), and streams are told apart by handle. Keeps them referenced.
#[derive(Default)]
pub(crate) struct ProducerStreams {
    seen: Vec<Py<PyAny>>,
    distinct: Vec<(u64, Py<PyAny>)>,
}

impl ProducerStreams {
    /// Adds the stream object a tensor's producer queued its work on.
    pub(crate) fn add(&mut self, py: Python<'_>, stream: &Py<PyAny>) -> PyResult<()> {
        if self.seen.iter().any(|s| s.is(stream)) {
            return Ok(());
        }
        self.seen.push(stream.clone_ref(py));
        let (handle, _) = handle_of(stream.bind(py))?;
        if !self.distinct.iter().any(|(h, _)| *h == handle) {
            self.distinct.push((handle, stream.clone_ref(py)));
        }
        Ok(())
    }

    /// The one stream, when the batch was produced on exactly one.
    pub(crate) fn only(&self) -> Option<&Py<PyAny>> {
        match self.distinct.as_slice() {
            [(_, one)] => Some(one),
            _ => None,
        }
    }

    /// Waits on the host for the work queued on each so far.
    pub(crate) fn synchronize(&self, py: Python<'_>) -> PyResult<()> {
        for (_, stream) in &self.distinct {
            stream.bind(py).call_method0("synchronize")?;
        }
        Ok(())
    }
}
