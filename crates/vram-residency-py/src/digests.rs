//! Digests with no manager: a GPU tensor is hashed where it lies (the seal's kernels, no host
//! copy), ordered on the GPU after the work queued on its producer's stream; many tensors of
//! one device in one launch sequence. Host buffers are hashed on the host, as before. What a
//! sender and a receiver of moved weights compare (`docs/adr/0015-model-updates.md`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use vram_residency::digest::{DigestHasher, tagged};
use vram_residency::model::{TAG, TensorEntry, model_digest};
use vram_residency::{
    DigestAlgorithm, ForeignRange, RangeDigester, ShardDigest, VramError, compute_digest,
};

use crate::errors::{bad_input, to_py};
use crate::streams::{HeldStream, engine_stream};
use crate::tensors::{self, Memory, Taken};

/// The process's digester of GPU memory, opened on first use.
fn digester() -> Result<&'static RangeDigester, VramError> {
    static DIGESTER: OnceLock<Result<RangeDigester, VramError>> = OnceLock::new();
    DIGESTER
        .get_or_init(RangeDigester::cuda)
        .as_ref()
        .map_err(Clone::clone)
}

/// Whether `data` lies in GPU memory (a CUDA tensor, a CUDA array, a GPU DLPack array).
fn on_gpu(data: &Bound<'_, PyAny>) -> PyResult<bool> {
    if tensors::is_torch_tensor(data)? {
        return data.getattr("is_cuda")?.extract();
    }
    Ok(data.hasattr("__cuda_array_interface__")? || tensors::dlpack_on_gpu(data)?)
}

/// The digest of one buffer, `ALG:HEX` (bare hex for flat `sha256`).
pub(crate) fn digest_one(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    algorithm: DigestAlgorithm,
) -> PyResult<String> {
    let d = if on_gpu(data)? {
        let taken = tensors::take("data", data)?;
        let mut digests = on_device(py, &[&taken], algorithm)?;
        digests
            .pop()
            .ok_or_else(|| to_py(&VramError::Unreachable("one tensor has one digest")))?
    } else {
        let bytes = tensors::bytes_on_host(data)?;
        py.detach(|| compute_digest(&bytes, algorithm))
    };
    Ok(tagged(algorithm, &d))
}

/// Every tensor's digest and the model digest (`vram-model-v1:HEX`), as `vramctl digest
/// --tensors` prints them for the same tensors saved as a safetensors file. Empty tensors are
/// left out, as the model digest leaves them out.
pub(crate) fn digest_tensors<'py>(
    py: Python<'py>,
    tensors: &Bound<'py, PyAny>,
    algorithm: DigestAlgorithm,
) -> PyResult<(String, Bound<'py, PyDict>)> {
    let mut taken: BTreeMap<String, Given> = BTreeMap::new();
    let mut batch = tensors::Batch::default();
    for (name, obj) in crate::manager::named_tensors(tensors)? {
        let given = Given::of(&name, &obj, &mut batch)?;
        if given.len() > 0 && taken.insert(name.clone(), given).is_some() {
            return Err(bad_input("tensors", format!("{name:?} is given twice")));
        }
    }
    if taken.is_empty() {
        return Err(bad_input(
            "tensors",
            "no tensor with bytes: empty tensors are left out of the model digest",
        ));
    }
    // Device tensors, one launch sequence per device; host tensors on the host.
    let mut digests: BTreeMap<&str, ShardDigest> = BTreeMap::new();
    let mut by_device: BTreeMap<u32, Vec<(&str, &Taken)>> = BTreeMap::new();
    for (name, given) in &taken {
        let host = match given {
            Given::Taken(t) => match &t.memory {
                Memory::Device { device, .. } => {
                    by_device.entry(*device).or_default().push((name, t));
                    continue;
                }
                Memory::Host(host) => Host::Tensor(host.clone()),
            },
            Given::HostBytes { bytes, .. } => Host::Bytes(bytes),
        };
        let d = py
            .detach(move || {
                let mut hasher = DigestHasher::new(algorithm);
                match host {
                    Host::Tensor(t) => t.read(&mut |bytes| hasher.update(bytes))?,
                    Host::Bytes(bytes) => hasher.update(bytes),
                }
                Ok::<_, VramError>(hasher.finalize())
            })
            .map_err(|e| to_py(&e))?;
        digests.insert(name, d);
    }
    for group in by_device.values() {
        let ts: Vec<&Taken> = group.iter().map(|(_, t)| *t).collect();
        for ((name, _), d) in group.iter().zip(on_device(py, &ts, algorithm)?) {
            digests.insert(name, d);
        }
    }
    let entries = taken
        .iter()
        .map(|(name, given)| {
            let digest = *digests
                .get(name.as_str())
                .ok_or_else(|| to_py(&VramError::Unreachable("every tensor is digested")))?;
            let (dtype, shape) = given.description();
            Ok(TensorEntry {
                name: name.clone(),
                dtype: dtype.to_owned(),
                shape: shape.to_vec(),
                bytes: u64::try_from(given.len()).unwrap_or(u64::MAX),
                algorithm,
                digest,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let model = model_digest(&entries).map_err(|e| to_py(&e))?;
    let out = PyDict::new(py);
    for (name, d) in &digests {
        out.set_item(*name, tagged(algorithm, d))?;
    }
    Ok((format!("{TAG}:{}", model.to_hex()), out))
}

/// A tensor given to [`digest_tensors`]: taken where it lies, or a host tensor PyTorch holds
/// (copied out: the host path of today's weight checkers).
enum Given {
    Taken(Taken),
    HostBytes {
        dtype: &'static str,
        shape: Vec<u64>,
        bytes: Vec<u8>,
    },
}

/// What a host tensor's digest reads.
enum Host<'a> {
    Tensor(std::sync::Arc<dyn vram_residency::HostTensor>),
    Bytes(&'a [u8]),
}

impl Given {
    fn of(name: &str, obj: &Bound<'_, PyAny>, batch: &mut tensors::Batch) -> PyResult<Self> {
        if !tensors::is_torch_tensor(obj)? {
            return batch.take(name, obj).map(Self::Taken);
        }
        if obj.getattr("is_cuda")?.extract()? {
            return batch.take_torch(name, obj).map(Self::Taken);
        }
        let (dtype, shape) = tensors::torch_description(name, obj)?;
        Ok(Self::HostBytes {
            dtype,
            shape,
            bytes: tensors::bytes_on_host(obj)?,
        })
    }

    fn len(&self) -> usize {
        match self {
            Self::Taken(t) => t.len,
            Self::HostBytes { bytes, .. } => bytes.len(),
        }
    }

    fn description(&self) -> (&str, &[u64]) {
        match self {
            Self::Taken(t) => (&t.dtype, &t.shape),
            Self::HostBytes { dtype, shape, .. } => (dtype, shape),
        }
    }
}

/// Digests of tensors of one device, in order, where they lie: after the work queued on each
/// producer's stream (the GPU waits; the host does not).
fn on_device(
    py: Python<'_>,
    taken: &[&Taken],
    algorithm: DigestAlgorithm,
) -> PyResult<Vec<ShardDigest>> {
    let mut ranges: Vec<ForeignRange> = Vec::with_capacity(taken.len());
    let mut streams: Vec<HeldStream> = Vec::new();
    let mut seen: Vec<&Py<PyAny>> = Vec::new();
    for t in taken {
        let range = t.device_range().ok_or_else(|| {
            to_py(&VramError::Unreachable(
                "a device tensor has a device range",
            ))
        })?;
        // The tensors of one batch share their stream object: each object is looked at once.
        if let Some(stream) = &t.producer_stream
            && !seen.iter().any(|s| s.is(stream))
        {
            seen.push(stream);
            if let Some(held) = engine_stream(py, range.device_ordinal(), Some(stream.bind(py)))?
                && !streams.iter().any(|s| s.same_as(&held))
            {
                streams.push(held);
            }
        }
        ranges.push(range);
    }
    let digester = digester().map_err(|e| to_py(&e))?;
    // One producer stream: ordered on the GPU after it. Several: each waited for on the host
    // first (rare: tensors of one model come from one stream).
    let after = match streams.as_slice() {
        [one] => Some(one.engine()),
        more => {
            for s in more {
                s.synchronize(py)?;
            }
            None
        }
    };
    let result = py.detach(|| digester.digest(&ranges, algorithm, after));
    // The tensors and streams stay referenced (`taken`, `streams`) until the digest is done.
    drop(streams);
    result.map_err(|e| to_py(&e))
}

/// Registers the functions.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(digest, m)?)?;
    m.add_function(wrap_pyfunction!(digest_tensors_py, m)?)?;
    Ok(())
}

/// The digest of a buffer's bytes (`bytes`, a NumPy array, a PyTorch tensor on any device, a
/// CUDA array), as the Rust side and `vramctl digest --tensors` write it: `ALG:HEX`, or bare
/// hex for flat `sha256`. A GPU tensor is hashed where it lies, after the work queued on its
/// stream.
#[pyfunction]
#[pyo3(signature = (data, *, algorithm="sha256-tree-65536"))]
fn digest(py: Python<'_>, data: &Bound<'_, PyAny>, algorithm: &str) -> PyResult<String> {
    let algorithm: DigestAlgorithm = algorithm.parse().map_err(|e| to_py(&e))?;
    digest_one(py, data, algorithm)
}

/// Every tensor's digest and the model digest of a `torch.nn.Module` or a mapping of names to
/// tensors: `(model_digest, {name: digest})`.
#[pyfunction]
#[pyo3(name = "digest_tensors", signature = (tensors, *, algorithm="sha256-tree-65536"))]
fn digest_tensors_py<'py>(
    py: Python<'py>,
    tensors: &Bound<'py, PyAny>,
    algorithm: &str,
) -> PyResult<(String, Bound<'py, PyDict>)> {
    let algorithm: DigestAlgorithm = algorithm.parse().map_err(|e| to_py(&e))?;
    digest_tensors(py, tensors, algorithm)
}
