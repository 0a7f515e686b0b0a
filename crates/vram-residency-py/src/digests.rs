//! Digests with no manager: a GPU tensor is hashed where it lies (the seal's kernels, no host
//! copy), ordered on the GPU after the work queued on its producer's stream; many tensors of
//! one device in a few launch sequences, queued while the rest are taken from Python. Host
//! buffers are hashed on the host, as before. What a sender and a receiver of moved weights
//! compare (`docs/adr/0015-model-updates.md`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use vram_residency::digest::{DigestHasher, tagged};
use vram_residency::model::{TAG, TensorEntry, model_digest};
use vram_residency::{
    DigestAlgorithm, ForeignRange, QueuedDigests, RangeDigester, ShardDigest, VramError,
    compute_digest,
};

use crate::errors::{bad_input, to_py};
use crate::streams::{ProducerStreams, engine_stream};
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
        let mut pipeline = Pipeline::new(algorithm, 1);
        pipeline.push(py, "data", &taken)?;
        pipeline
            .finish(py)?
            .remove("data")
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
    // Declared before the pipeline, so dropped after it: the tensors outlive the digests
    // queued on them, even on an early return.
    let mut taken: BTreeMap<String, Given> = BTreeMap::new();
    let mut batch = tensors::Batch::default();
    let named = crate::manager::named_tensors(tensors)?;
    let mut pipeline = Pipeline::new(algorithm, named.len());
    for (name, obj) in named {
        let given = Given::of(&name, &obj, &mut batch)?;
        if given.len() == 0 {
            continue;
        }
        if taken.contains_key(&name) {
            return Err(bad_input("tensors", format!("{name:?} is given twice")));
        }
        // Device tensors are queued as they are taken; host tensors hashed below.
        if let Given::Taken(t) = &given
            && let Memory::Device { .. } = t.memory
        {
            pipeline.push(py, &name, t)?;
        }
        taken.insert(name, given);
    }
    if taken.is_empty() {
        return Err(bad_input(
            "tensors",
            "no tensor with bytes: empty tensors are left out of the model digest",
        ));
    }
    let mut digests = pipeline.finish(py)?;
    for (name, given) in &taken {
        let host = match given {
            Given::Taken(t) => match &t.memory {
                Memory::Device { .. } => continue,
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
        digests.insert(name.clone(), d);
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
        out.set_item(name, tagged(algorithm, d))?;
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

/// Device tensors digested where they lie, queued on the GPU in two launch sequences per device
/// so that the GPU hashes the first while the host takes the rest from Python (a few
/// microseconds a tensor; a model has hundreds). The first is queued once its bytes keep the
/// GPU busy about as long as taking the tensors still to come keeps the host; each is ordered
/// after the work queued on its tensors' producer stream. (Batches of a fixed count cost a
/// launch tail each: SHA-256 trees of 1,000 tensors in seven batches ran 10 % slower.)
struct Pipeline {
    algorithm: DigestAlgorithm,
    /// Tensors still to be pushed (the caller's count, less those pushed).
    to_come: usize,
    open: BTreeMap<u32, Open>,
    /// Dropped before the caller's tensors (declared after them): waits for what is queued.
    queued: Vec<(Vec<String>, Queued)>,
}

/// The tensors of one device taken since its last batch was queued.
#[derive(Default)]
struct Open {
    names: Vec<String>,
    ranges: Vec<ForeignRange>,
    streams: ProducerStreams,
    bytes: u64,
    /// Whether this device's first batch is queued (the rest go in one more).
    first_queued: bool,
}

enum Queued {
    OnGpu(QueuedDigests),
    Done(Vec<ShardDigest>),
}

/// What taking one tensor from Python costs the host, about (PyTorch tensors on an H100
/// machine: 2.5-3.5 µs; `docs/perf.md`).
const HOST_NS_PER_TENSOR: u64 = 3_000;

/// Bytes the GPU hashes per nanosecond, about (an H100: BLAKE3 1.9 TB/s, SHA-256 trees
/// 0.76 TB/s); a slower GPU only makes the first batch cover more of the host's time.
fn gpu_bytes_per_ns(algorithm: DigestAlgorithm) -> u64 {
    match algorithm {
        DigestAlgorithm::Blake3 => 1_900,
        _ => 760,
    }
}

impl Pipeline {
    /// A pipeline for `count` tensors.
    fn new(algorithm: DigestAlgorithm, count: usize) -> Self {
        Self {
            algorithm,
            to_come: count,
            open: BTreeMap::new(),
            queued: Vec::new(),
        }
    }

    /// Adds a device tensor; queues its device's first batch once that covers the rest.
    fn push(&mut self, py: Python<'_>, name: &str, t: &Taken) -> PyResult<()> {
        let range = t.device_range().ok_or_else(|| {
            to_py(&VramError::Unreachable(
                "a device tensor has a device range",
            ))
        })?;
        self.to_come = self.to_come.saturating_sub(1);
        let device = range.device_ordinal();
        let open = self.open.entry(device).or_default();
        if let Some(stream) = &t.producer_stream {
            open.streams.add(py, stream)?;
        }
        open.names.push(name.to_owned());
        open.ranges.push(range);
        open.bytes = open
            .bytes
            .saturating_add(u64::try_from(range.len()).unwrap_or(u64::MAX));
        let gpu_ns = open
            .bytes
            .checked_div(gpu_bytes_per_ns(self.algorithm))
            .unwrap_or(0);
        let host_ns = u64::try_from(self.to_come)
            .unwrap_or(u64::MAX)
            .saturating_mul(HOST_NS_PER_TENSOR);
        if !open.first_queued && self.to_come > 0 && gpu_ns >= host_ns {
            let first = std::mem::replace(
                open,
                Open {
                    first_queued: true,
                    ..Open::default()
                },
            );
            self.queue(py, device, first)?;
        }
        Ok(())
    }

    /// Queues `open`'s digests: on the GPU after its one producer stream; with none (the
    /// bytes are final) or several (each waited for on the host first: rare, a model's
    /// tensors come from one stream), computed now.
    fn queue(&mut self, py: Python<'_>, device: u32, open: Open) -> PyResult<()> {
        let digester = digester().map_err(|e| to_py(&e))?;
        let algorithm = self.algorithm;
        let ranges = &open.ranges;
        let held = match open.streams.only() {
            Some(one) => engine_stream(py, device, Some(one.bind(py)))?,
            None => None,
        };
        let queued = match held {
            Some(one) => {
                let after = one.engine();
                Queued::OnGpu(
                    py.detach(|| digester.queue(ranges, algorithm, after))
                        .map_err(|e| to_py(&e))?,
                )
            }
            None => {
                open.streams.synchronize(py)?;
                Queued::Done(
                    py.detach(|| digester.digest(ranges, algorithm, None))
                        .map_err(|e| to_py(&e))?,
                )
            }
        };
        // The producer streams (`open.streams`) are no longer needed once the digests are
        // queued: the GPU ordered them already.
        self.queued.push((open.names, queued));
        Ok(())
    }

    /// Queues what is left and waits for every digest: name to digest.
    fn finish(mut self, py: Python<'_>) -> PyResult<BTreeMap<String, ShardDigest>> {
        for (device, open) in std::mem::take(&mut self.open) {
            if !open.ranges.is_empty() {
                self.queue(py, device, open)?;
            }
        }
        let mut digests = BTreeMap::new();
        for (names, queued) in std::mem::take(&mut self.queued) {
            let each = match queued {
                Queued::OnGpu(q) => py.detach(|| q.wait()).map_err(|e| to_py(&e))?,
                Queued::Done(each) => each,
            };
            digests.extend(names.into_iter().zip(each));
        }
        Ok(digests)
    }
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
