//! A sealed model as Python holds it: the Rust [`SealedModel`], the tensors' owners it keeps
//! referenced (so their memory stays allocated while anything sealed over it lives), and the
//! figures a caller reads (digests, names, sizes), copied out once.

use std::sync::{Arc, Mutex, PoisonError};

use pyo3::prelude::*;
use vram_residency::digest::tagged;
use vram_residency::model::TAG;
use vram_residency::{ForeignRange, MockBackend, SealedModel as RustModel, VramManager};

use crate::errors::bad_input;

/// What the engine lent for a seal: the tensors' owners (kept referenced so their memory stays
/// allocated), the streams they were produced on, and, on the mock, the engine ranges handed
/// out for them. Dropping it forgets those ranges, whether the seal succeeded (with the model)
/// or not (at once: a refused seal leaves nothing in the mock behind).
pub(crate) struct Lent {
    pub(crate) owners: Vec<Py<PyAny>>,
    /// Each owner's name (an update with no new mapping takes the same tensors again).
    pub(crate) names: Vec<String>,
    /// The streams the tensors were produced on (PyTorch's current stream, or the stream an
    /// array interface named), each once.
    pub(crate) producer_streams: crate::streams::ProducerStreams,
    /// On the mock backend: the engine ranges it handed out.
    pub(crate) mock: Option<(Arc<MockBackend>, Vec<ForeignRange>)>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some((mock, ranges)) = &self.mock {
            for range in ranges {
                // Nothing left to do when it fails: the range was the mock's to forget.
                let _ = mock.forget_engine_memory(range);
            }
        }
    }
}

/// What a sealed model owns. Fields drop in order: the Rust model (which releases every
/// shard) before what the engine lent for it.
pub(crate) struct Held {
    pub(crate) model: RustModel,
    pub(crate) lent: Lent,
    /// The manager that sealed it (its calls alone take it).
    pub(crate) manager: Arc<VramManager>,
}

/// One tensor of a sealed model.
#[pyclass(frozen, module = "vram_residency")]
pub(crate) struct SealedTensor {
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    dtype: String,
    #[pyo3(get)]
    shape: Vec<u64>,
    #[pyo3(get)]
    nbytes: usize,
    #[pyo3(get)]
    digest: String,
}

#[pymethods]
impl SealedTensor {
    fn __repr__(&self) -> String {
        format!(
            "SealedTensor(name={:?}, dtype={:?}, shape={:?}, nbytes={}, digest={:?})",
            self.name, self.dtype, self.shape, self.nbytes, self.digest
        )
    }
}

/// A model sealed in place: every tensor's digest and the model digest. Release it with
/// `Manager.release` (or drop it); until then it keeps its tensors referenced.
#[pyclass(frozen, module = "vram_residency")]
pub(crate) struct SealedModel {
    held: Mutex<Option<Arc<Held>>>,
    #[pyo3(get)]
    model_id: String,
    #[pyo3(get)]
    digest: String,
    #[pyo3(get)]
    device: u32,
    #[pyo3(get)]
    nbytes: usize,
    tensors: Vec<Py<SealedTensor>>,
}

impl SealedModel {
    pub(crate) fn new(py: Python<'_>, held: Held) -> PyResult<Self> {
        let model = &held.model;
        let tensors = model
            .tensors()
            .iter()
            .map(|t| {
                let shard = t.shard();
                Py::new(
                    py,
                    SealedTensor {
                        name: t.name().to_owned(),
                        dtype: t.dtype().to_owned(),
                        shape: t.shape().to_vec(),
                        nbytes: shard.vram_bytes,
                        digest: shard_digest(shard),
                    },
                )
            })
            .collect::<PyResult<_>>()?;
        Ok(Self {
            model_id: model.model_id().to_owned(),
            digest: format!("{TAG}:{}", model.digest().to_hex()),
            device: model.gpu_device(),
            nbytes: model.total_bytes(),
            tensors,
            held: Mutex::new(Some(Arc::new(held))),
        })
    }

    /// The model for a call of `manager`: an error once released, or for another manager
    /// (a programming error, not an integrity failure: nothing about the bytes is known).
    pub(crate) fn held_by(&self, manager: &Arc<VramManager>) -> PyResult<Arc<Held>> {
        let held = self.held()?;
        if !Arc::ptr_eq(&held.manager, manager) {
            return Err(bad_input(
                "sealed model",
                format!(
                    "{:?} was sealed by another manager: use that one",
                    self.model_id
                ),
            ));
        }
        Ok(held)
    }

    /// Lets go of the model for `manager` (see [`Self::release`]); another manager's is refused.
    pub(crate) fn release_by(&self, manager: &Arc<VramManager>) -> PyResult<Option<Arc<Held>>> {
        if self.released() {
            return Ok(None);
        }
        self.held_by(manager)?;
        Ok(self.release())
    }

    /// The model, shared with an execution that runs on it; an error once released.
    pub(crate) fn held(&self) -> PyResult<Arc<Held>> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                bad_input(
                    "sealed model",
                    format!("{:?} was released: seal it again", self.model_id),
                )
            })
    }

    /// Lets go of the model: its shards are released once no execution holds it.
    pub(crate) fn release(&self) -> Option<Arc<Held>> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// A shard's digest as it stands alone (`ALG:HEX`, bare hex for flat SHA-256), as
/// `vramctl digest --tensors` prints it.
fn shard_digest(shard: &vram_residency::SealedShard) -> String {
    match vram_residency::ShardDigest::from_hex(&shard.digest) {
        Ok(d) => tagged(shard.digest_algorithm(), &d),
        Err(_) => shard.digest.clone(),
    }
}

#[pymethods]
impl SealedModel {
    /// Every tensor, by name, in name order.
    #[getter]
    fn tensors<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let out = pyo3::types::PyDict::new(py);
        for t in &self.tensors {
            out.set_item(t.get().name.clone(), t.clone_ref(py))?;
        }
        Ok(out)
    }

    /// Whether it was released.
    #[getter]
    fn released(&self) -> bool {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    fn __len__(&self) -> usize {
        self.tensors.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "SealedModel(model_id={:?}, tensors={}, nbytes={}, device={}, digest={:?}{})",
            self.model_id,
            self.tensors.len(),
            self.nbytes,
            self.device,
            self.digest,
            if self.released() { ", released" } else { "" }
        )
    }
}
