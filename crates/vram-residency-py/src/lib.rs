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
mod tensors;

use pyo3::prelude::*;
use vram_residency::{DigestAlgorithm, compute_digest};

use crate::errors::{bad_input, to_py};

/// The digest of a buffer's bytes (`bytes`, a NumPy array, a PyTorch tensor on any device), as
/// the Rust side and `vramctl digest --tensors` write it: `ALG:HEX`, or bare hex for flat
/// `sha256`.
#[pyfunction]
#[pyo3(signature = (data, *, algorithm="sha256-tree-65536"))]
fn digest(py: Python<'_>, data: &Bound<'_, PyAny>, algorithm: &str) -> PyResult<String> {
    let algorithm: DigestAlgorithm = algorithm.parse().map_err(|e| to_py(&e))?;
    // A PyTorch tensor on any device: its bytes, copied to the host (a check of what a tensor
    // holds; a sealed model's digests are computed where the tensors lie).
    let data = if tensors::is_torch_tensor(data)? {
        if !data.call_method0("is_contiguous")?.extract::<bool>()? {
            return Err(bad_input("data", "not contiguous"));
        }
        let torch = py.import("torch")?;
        data.call_method0("detach")?
            .call_method1("reshape", (-1,))?
            .call_method1("view", (torch.getattr("uint8")?,))?
            .call_method0("cpu")?
            .call_method0("numpy")?
    } else {
        data.clone()
    };
    let data = &data;
    let view = pyo3::types::PyMemoryView::from(data).map_err(|_| {
        bad_input(
            "data",
            "not a host buffer: give bytes or a NumPy array (a sealed model gives each GPU tensor's digest)",
        )
    })?;
    if !view.getattr("c_contiguous")?.extract::<bool>()? {
        return Err(bad_input("data", "not contiguous"));
    }
    let bytes: Vec<u8> = view.call_method0("tobytes")?.extract()?;
    let d = py.detach(|| compute_digest(&bytes, algorithm));
    Ok(vram_residency::digest::tagged(algorithm, &d))
}

#[pymodule]
#[pyo3(name = "vram_residency")]
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
