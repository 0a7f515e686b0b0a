//! `vram_residency` for Python: seal the tensors a model already holds on the GPU where they
//! lie, verify them before each request, and check them again after a forward pass. A thin
//! layer over the Rust facade: every rule (what may be sealed, what a verification checks,
//! what is audited) is the Rust side's.
#![forbid(unsafe_code)]

mod errors;
mod execution;
mod manager;
mod scrubber;
mod sealed;
mod streams;
mod tensors;

use pyo3::prelude::*;
use vram_residency::{DigestAlgorithm, compute_digest};

use crate::errors::to_py;

/// The digest of a buffer's bytes (`bytes`, a NumPy array, a PyTorch tensor on any device), as
/// the Rust side and `vramctl digest --tensors` write it: `ALG:HEX`, or bare hex for flat
/// `sha256`.
#[pyfunction]
#[pyo3(signature = (data, *, algorithm="sha256-tree-65536"))]
fn digest(py: Python<'_>, data: &Bound<'_, PyAny>, algorithm: &str) -> PyResult<String> {
    let algorithm: DigestAlgorithm = algorithm.parse().map_err(|e| to_py(&e))?;
    let bytes = tensors::bytes_on_host(data)?;
    let d = py.detach(|| compute_digest(&bytes, algorithm));
    Ok(vram_residency::digest::tagged(algorithm, &d))
}

#[pymodule]
#[pyo3(name = "_native")]
fn python_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add_class::<manager::Manager>()?;
    m.add_class::<sealed::SealedModel>()?;
    m.add_class::<sealed::SealedTensor>()?;
    m.add_class::<execution::Execution>()?;
    m.add_class::<scrubber::Scrubber>()?;
    m.add_function(wrap_pyfunction!(digest, m)?)?;
    Ok(())
}
