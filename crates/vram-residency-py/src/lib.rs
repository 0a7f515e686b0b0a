//! `vram_residency` for Python: seal the tensors a model already holds on the GPU where they
//! lie, verify them before each request, and check them again after a forward pass. A thin
//! layer over the Rust facade: every rule (what may be sealed, what a verification checks,
//! what is audited) is the Rust side's.
#![forbid(unsafe_code)]

mod digests;
mod errors;
mod execution;
mod manager;
mod scrubber;
mod sealed;
mod streams;
mod tensors;

use pyo3::prelude::*;

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
    digests::register(m)?;
    Ok(())
}
