//! `Manager`: the Rust `VramManager` for one worker, built from the worker's token, and the
//! calls a Python inference server makes on it. The GIL is released during GPU and hashing
//! work.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyMapping;
use vram_residency::audit::{AuditLogOptions, AuditSink, FileAuditSink, InMemoryAuditSink};
use vram_residency::model::TAG;
use vram_residency::token::{TOKEN_ENV, read_token_file, token_from_env};
use vram_residency::{
    AuditFailurePolicy, DigestAlgorithm, EngineTensor, GpuShare, MockBackend, ScrubOptions,
    SealKey, ShardDigest, StepScrubOptions, UpdateExpectation, VramConfig, VramError, VramManager,
};
use zeroize::Zeroizing;

use crate::errors::{bad_input, to_py};
use crate::execution::{Execution, Mode};
use crate::scrubber::Scrubber;
use crate::sealed::{Held, Lent, SealedModel};
use crate::streams::ProducerStreams;
use crate::tensors::{Batch, Memory, Taken};

/// One worker's manager of sealed models.
#[pyclass(frozen, module = "vram_residency")]
pub(crate) struct Manager {
    manager: Arc<VramManager>,
    mock: Option<Arc<MockBackend>>,
}

#[pymethods]
impl Manager {
    #[new]
    #[pyo3(signature = (worker_id, *, token_file=None, audit_log=None, audit_failure="fail_closed", algorithm="sha256-tree-65536", backend="cuda", mock_capacity=Capacity(1 << 30)))]
    #[expect(clippy::too_many_arguments, reason = "Python keyword arguments")]
    fn new(
        py: Python<'_>,
        worker_id: &str,
        token_file: Option<PathBuf>,
        audit_log: Option<PathBuf>,
        audit_failure: &str,
        algorithm: &str,
        backend: &str,
        mock_capacity: Capacity,
    ) -> PyResult<Self> {
        let mock_capacity = mock_capacity.0;
        let digest_algorithm: DigestAlgorithm = algorithm.parse().map_err(|e| to_py(&e))?;
        let token = worker_token(py, token_file)?;
        let key =
            || -> PyResult<SealKey> { SealKey::derive(&token, worker_id).map_err(|e| to_py(&e)) };
        let audit_failure_policy = match audit_failure {
            "fail_closed" => AuditFailurePolicy::FailClosed,
            "continue" => AuditFailurePolicy::Continue,
            other => {
                return Err(bad_input(
                    "audit_failure",
                    format!("{other:?}: give \"fail_closed\" or \"continue\""),
                ));
            }
        };
        let mock = match backend {
            "cuda" => None,
            "mock" => Some(Arc::new(MockBackend::with_capacity(mock_capacity))),
            other => {
                return Err(bad_input(
                    "backend",
                    format!(
                        "{other:?}: give \"cuda\" or \"mock\" (the mock keeps bytes in host memory: tests only)"
                    ),
                ));
            }
        };
        let sink: Arc<dyn AuditSink> = match audit_log {
            Some(path) => {
                let signing = key()?.audit_signing_key().map_err(|e| to_py(&e))?;
                let file = FileAuditSink::open_with(&path, signing, AuditLogOptions::default())
                    .map_err(|e| bad_input("audit_log", format!("{}: {e}", path.display())))?;
                let adopted = file.adopted_unsigned_records();
                if adopted > 0 {
                    let message = format!(
                        "{}: {adopted} record(s) at its end were never signed by a checkpoint (a writer that died before its next one, or lines appended by someone else); they are adopted, and `vramctl audit verify` refuses them unless given --allow-unsigned-tail",
                        path.display()
                    );
                    let warnings = py.import("warnings")?;
                    warnings.call_method1(
                        "warn",
                        (message, py.get_type::<pyo3::exceptions::PyUserWarning>(), 2),
                    )?;
                }
                Arc::new(file)
            }
            None => Arc::new(InMemoryAuditSink::new()),
        };
        let mut builder = VramManager::builder()
            .config(VramConfig {
                worker_id: worker_id.to_owned(),
                audit_failure_policy,
                digest_algorithm,
                ..VramConfig::default()
            })
            .seal_key(key()?)
            .audit_sink(sink);
        if let Some(mock) = &mock {
            builder = builder.mock(mock.clone());
        }
        let manager = py
            .detach(move || {
                let manager = builder.build()?;
                manager.enforce_vram_only_policy()?;
                Ok::<_, VramError>(manager)
            })
            .map_err(|e| to_py(&e))?;
        Ok(Self {
            manager: Arc::new(manager),
            mock,
        })
    }

    /// `"cuda"` or `"mock"`.
    #[getter]
    fn backend(&self) -> String {
        self.manager.backend_kind().to_string()
    }

    /// Whether the manager stopped (after a failed verification, a policy violation or an
    /// audit failure): it then refuses everything until the worker restarts.
    #[getter]
    fn is_stopped(&self) -> bool {
        self.manager.is_stopped()
    }

    /// Why it stopped, if it did.
    #[getter]
    fn stop_reason(&self) -> Option<String> {
        self.manager.stop_reason()
    }

    /// The manager's metrics in the Prometheus text format (OpenMetrics 1.0), for a server's
    /// own `/metrics` endpoint.
    fn metrics_text(&self) -> String {
        self.manager.metrics().prometheus_text().to_owned()
    }

    /// Seals a model's tensors where they lie: a `torch.nn.Module` (its `state_dict()`:
    /// parameters and persistent buffers, the names `safetensors` saves) or a mapping of names
    /// to tensors.
    #[pyo3(signature = (tensors, *, model_id, expect=None))]
    fn seal(
        &self,
        py: Python<'_>,
        tensors: &Bound<'_, PyAny>,
        model_id: &str,
        expect: Option<&str>,
    ) -> PyResult<SealedModel> {
        let expected = expect.map(parse_model_digest).transpose()?;
        let (engine, lent) = self.tensors_to_seal(py, tensors)?;
        let manager = self.manager.clone();
        let model_id = model_id.to_owned();
        let model = py
            .detach(move || manager.seal_model_in_place(&model_id, engine, expected.as_ref()))
            .map_err(|e| to_py(&e))?;
        self.sealed_model(py, model, lent)
    }

    /// Verifies every tensor of the model against its seal, on the GPU, before a request.
    /// `background=True` uses the configured bounded share of the GPU (a scrubber).
    #[pyo3(signature = (sealed, *, background=false))]
    fn verify(&self, py: Python<'_>, sealed: &SealedModel, background: bool) -> PyResult<()> {
        let held = sealed.held_by(&self.manager)?;
        let manager = self.manager.clone();
        py.detach(move || {
            if background {
                manager.verify_model_background(&held.model)
            } else {
                manager.verify_model(&held.model)
            }
        })
        .map_err(|e| to_py(&e))
    }

    /// The window around a forward pass, as a context manager (see `Execution`), ordered on
    /// `stream` (a `torch.cuda.Stream` or CuPy stream; default PyTorch's current stream of the
    /// model's device at `__enter__`).
    #[pyo3(signature = (sealed, *, mode="before_and_after", stream=None))]
    fn execute(
        &self,
        py: Python<'_>,
        sealed: &SealedModel,
        mode: &str,
        stream: Option<Py<PyAny>>,
    ) -> PyResult<Execution> {
        if let Some(s) = &stream {
            crate::streams::refuse_raw_handle(s.bind(py))?;
        }
        Ok(Execution::new(
            self.manager.clone(),
            sealed.held_by(&self.manager)?,
            Mode::parse(mode)?,
            stream,
        ))
    }

    /// Starts one of the library's scrubbers over every tensor this manager sealed (a failure
    /// is handled like any failed verification: the manager stops, and `Scrubber.stop()` or
    /// the next `Scrubber.step()` raises it; passes are written to the audit log as one summary
    /// record per `summary_interval` seconds):
    /// - `mode="background"`: re-verifies, the least recently proven first, on a Rust thread at
    ///   a bounded share of the GPU (`share`, a fraction of the SMs; default the configured
    ///   background share), each tensor once it was last proven `interval` seconds ago (10 by
    ///   default; 0: continuously, which beside a host-bound engine costs it about 12 %:
    ///   `docs/perf.md`).
    /// - `mode="step"`: nothing runs on its own; each `Scrubber.step()` (an engine step, the
    ///   `vram_residency.torch` hooks call it) queues after the step's work a slice of a
    ///   whole-GPU digest, round-robin over the tensors of `device`; the calls' host time and
    ///   their GPU work together take about `budget` of the engine's time (a call works once
    ///   the steps since the last working call have paid for it).
    #[pyo3(signature = (*, mode="background", interval=10.0, share=None, budget=0.01, device=0, summary_interval=60.0))]
    #[expect(clippy::too_many_arguments, reason = "Python keyword arguments")]
    fn start_scrubber(
        &self,
        py: Python<'_>,
        mode: &str,
        interval: f64,
        share: Option<f32>,
        budget: f32,
        device: u32,
        summary_interval: f64,
    ) -> PyResult<Scrubber> {
        let seconds = |name: &'static str, value: f64| {
            std::time::Duration::try_from_secs_f64(value)
                .map_err(|_| bad_input(name, format!("{value}: give seconds, 0 or more")))
        };
        let summary_interval = seconds("summary_interval", summary_interval)?;
        let manager = self.manager.clone();
        match mode {
            "background" => {
                let mut options = ScrubOptions::new()
                    .interval(seconds("interval", interval)?)
                    .summary_interval(summary_interval);
                if let Some(fraction) = share {
                    options = options.share(GpuShare::bounded(fraction).map_err(|e| to_py(&e))?);
                }
                let scrubber = py
                    .detach(move || manager.start_scrubber(options))
                    .map_err(|e| to_py(&e))?;
                Scrubber::background(py, scrubber)
            }
            "step" => {
                let algorithm = self.manager.config().digest_algorithm;
                if algorithm == DigestAlgorithm::Sha256 {
                    return Err(bad_input(
                        "mode",
                        "the step scrubber hashes on the GPU, and flat sha256 has no GPU kernel: seal with a tree digest or blake3",
                    ));
                }
                let options = StepScrubOptions::new()
                    .budget(budget)
                    .map_err(|e| to_py(&e))?
                    .summary_interval(summary_interval);
                let scrubber = manager
                    .step_scrubber(device, options)
                    .map_err(|e| to_py(&e))?;
                Scrubber::stepped(py, scrubber, device, self.mock.is_some())
            }
            other => Err(bad_input(
                "mode",
                format!("{other:?}: give \"background\" or \"step\""),
            )),
        }
    }

    /// A signed residency statement per tensor, bound to `nonce` (each tensor is verified for
    /// it): dicts in the attestation format, checkable by anyone with the worker's key.
    fn attest<'py>(
        &self,
        py: Python<'py>,
        sealed: &SealedModel,
        nonce: &[u8],
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let held = sealed.held_by(&self.manager)?;
        let manager = self.manager.clone();
        let nonce = nonce.to_vec();
        let statements = py
            .detach(move || {
                held.model
                    .tensors()
                    .iter()
                    .map(|t| {
                        let a = manager.attest_vram_residency(t.shard(), &nonce)?;
                        serde_json::to_string(&a).map_err(|_| {
                            VramError::Unreachable("an attestation that does not serialize")
                        })
                    })
                    .collect::<Result<Vec<_>, VramError>>()
            })
            .map_err(|e| to_py(&e))?;
        let json = py.import("json")?;
        statements
            .into_iter()
            .map(|s| json.call_method1("loads", (s,)))
            .collect()
    }

    /// Announces an update of `sealed`: until `update` accepts one, no check, window or
    /// scrubber vouches for it (they refuse it with `BadInput`, kind `ModelUpdating`; nothing is
    /// recorded as failed, nothing stops), so the engine may rewrite its tensors or free them.
    fn begin_update(&self, py: Python<'_>, sealed: &SealedModel) -> PyResult<()> {
        let held = sealed.held_by(&self.manager)?;
        let manager = self.manager.clone();
        py.detach(move || manager.begin_update(&held.model))
            .map_err(|e| to_py(&e))
    }

    /// Seals an announced update: `tensors` (the new storage, a module or mapping; `None`: the
    /// tensors sealed before, rewritten in place) are hashed where they lie and sealed again as
    /// the model when they hash to `expect` (the sender's `vram-model-v1:HEX`, or the
    /// `(model_digest, {name: digest})` pair `digest_tensors` gives, which names the first tensor
    /// that differs), or when `trust_new_bytes=True` (audited as trusted). Returns the new
    /// sealed model; the old one is vouched for no more.
    #[pyo3(signature = (sealed, tensors=None, *, expect=None, trust_new_bytes=false))]
    fn update(
        &self,
        py: Python<'_>,
        sealed: &SealedModel,
        tensors: Option<&Bound<'_, PyAny>>,
        expect: Option<&Bound<'_, PyAny>>,
        trust_new_bytes: bool,
    ) -> PyResult<SealedModel> {
        let held = sealed.held_by(&self.manager)?;
        let expectation = match (expect, trust_new_bytes) {
            (Some(_), true) => {
                return Err(bad_input(
                    "expect",
                    "give the sender's digest or trust_new_bytes=True, not both",
                ));
            }
            (None, false) => {
                return Err(bad_input(
                    "expect",
                    "an update is sealed only against the sender's digest (expect=); trust_new_bytes=True seals the bytes on your word, audited as such",
                ));
            }
            (None, true) => UpdateExpectation::TrustNewBytes,
            (Some(e), false) => parse_expectation(e)?,
        };
        let (engine, lent) = match tensors {
            Some(t) => self.tensors_to_seal(py, t)?,
            None => {
                let mapping = pyo3::types::PyDict::new(py);
                for (name, owner) in held.lent.names.iter().zip(&held.lent.owners) {
                    mapping.set_item(name, owner.bind(py))?;
                }
                self.tensors_to_seal(py, mapping.as_any())?
            }
        };
        let manager = self.manager.clone();
        let old = held.clone();
        let model = py
            .detach(move || manager.update_model(&old.model, engine, &expectation))
            .map_err(|e| to_py(&e))?;
        self.sealed_model(py, model, lent)
    }

    /// Releases the model's shards (the tensors stay the engine's). Idempotent.
    fn release(&self, py: Python<'_>, sealed: &SealedModel) -> PyResult<()> {
        if let Some(held) = sealed.release_by(&self.manager)? {
            // A hold for an update ends with the model.
            self.manager.release_model(held.model.clone());
            // Released once no execution holds it; audited by the manager.
            py.detach(move || drop(held));
        }
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "Manager(worker_id={:?}, backend={:?})",
            self.manager.config().worker_id,
            self.backend()
        )
    }
}

impl Manager {
    /// A model this manager sealed, as Python holds it.
    fn sealed_model(
        &self,
        py: Python<'_>,
        model: vram_residency::SealedModel,
        lent: Lent,
    ) -> PyResult<SealedModel> {
        SealedModel::new(
            py,
            Held {
                model,
                lent,
                manager: self.manager.clone(),
            },
        )
    }

    /// The tensors of a module or mapping, taken where they lie (empty ones left out, as the
    /// model digest leaves them out), ready to seal.
    fn tensors_to_seal(
        &self,
        py: Python<'_>,
        tensors: &Bound<'_, PyAny>,
    ) -> PyResult<(Vec<EngineTensor>, Lent)> {
        let named = named_tensors(tensors)?;
        let mut taken = Vec::with_capacity(named.len());
        let mut batch = Batch::default();
        for (name, obj) in &named {
            let t = batch.take(name, obj)?;
            // Empty tensors hold no weights: the model digest leaves them out
            // (`.specs/model-digest.md`), and there is nothing of them to seal.
            if t.len > 0 {
                taken.push((name.clone(), t));
            }
        }
        if taken.is_empty() && !named.is_empty() {
            return Err(bad_input(
                "tensors",
                "no tensor with bytes: every tensor given is empty, and empty tensors are not sealed",
            ));
        }
        self.engine_tensors(py, taken)
    }

    /// The ranges to seal, on this manager's backend, after the producer's queued work on
    /// them is finished.
    fn engine_tensors(
        &self,
        py: Python<'_>,
        taken: Vec<(String, Taken)>,
    ) -> PyResult<(Vec<EngineTensor>, Lent)> {
        let mut lent = Lent {
            owners: Vec::with_capacity(taken.len()),
            names: Vec::with_capacity(taken.len()),
            producer_streams: ProducerStreams::default(),
            mock: self.mock.clone().map(|m| (m, Vec::new())),
        };
        let mut engine = Vec::with_capacity(taken.len());
        for (name, t) in taken {
            let range = match (&t.memory, &mut lent.mock) {
                (Memory::Device { .. }, None) => t
                    .device_range()
                    .ok_or(VramError::Unreachable("device memory without a range"))
                    .map_err(|e| to_py(&e))?,
                (Memory::Host(tensor), Some((mock, ranges))) => {
                    let range = mock
                        .engine_host_tensor(0, tensor.clone())
                        .map_err(|e| to_py(&e))?;
                    ranges.push(range);
                    range
                }
                (Memory::Device { .. }, Some(_)) => {
                    return Err(bad_input(
                        "tensor",
                        format!(
                            "{name:?} is on a GPU, and this manager is the mock backend: use backend=\"cuda\""
                        ),
                    ));
                }
                (Memory::Host(_), None) => {
                    return Err(bad_input(
                        "tensor",
                        format!(
                            "{name:?} is in host memory: only device memory is sealed (the VRAM-only policy)"
                        ),
                    ));
                }
            };
            if let Some(stream) = &t.producer_stream {
                lent.producer_streams.add(py, stream)?;
            }
            engine.push(EngineTensor {
                name,
                dtype: t.dtype,
                shape: t.shape,
                range,
            });
            lent.owners.push(t.owner);
            lent.names
                .push(engine.last().map(|e| e.name.clone()).unwrap_or_default());
        }
        // The producer's work on the tensors was queued on these streams: it must be finished
        // before their bytes are hashed (one stream at a time, never the whole device).
        lent.producer_streams.synchronize(py)?;
        Ok((engine, lent))
    }
}

/// `(name, tensor)` pairs of a module's `state_dict()` or of a mapping.
pub(crate) fn named_tensors<'py>(
    tensors: &Bound<'py, PyAny>,
) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
    let mapping = if tensors.hasattr("state_dict")? && tensors.hasattr("named_parameters")? {
        tensors.call_method0("state_dict")?
    } else {
        tensors.clone()
    };
    let mapping = mapping.cast::<PyMapping>().map_err(|_| {
        bad_input(
            "tensors",
            "give a torch.nn.Module or a mapping of names to tensors",
        )
    })?;
    let mut out = Vec::new();
    for item in mapping.items()?.iter() {
        let (name, tensor): (String, Bound<'py, PyAny>) = item.extract()?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// An update's expectation: a model digest, or `(model_digest, {name: digest})` as
/// `digest_tensors` returns it.
fn parse_expectation(expect: &Bound<'_, PyAny>) -> PyResult<UpdateExpectation> {
    if let Ok(text) = expect.extract::<String>() {
        return Ok(UpdateExpectation::Digest {
            model: parse_model_digest(&text)?,
            tensors: None,
        });
    }
    let (model, each): (String, std::collections::BTreeMap<String, String>) =
        expect.extract().map_err(|_| {
            bad_input(
                "expect",
                "give a model digest (vram-model-v1:HEX) or the (model_digest, {name: digest}) pair digest_tensors returns",
            )
        })?;
    let tensors = each
        .into_iter()
        .map(|(name, text)| {
            vram_residency::digest::parse_tagged(&text, DigestAlgorithm::Sha256)
                .map(|(_, d)| (name.clone(), d))
                .ok_or_else(|| {
                    bad_input("expect", format!("tensor {name:?}: {text:?} is no digest"))
                })
        })
        .collect::<PyResult<_>>()?;
    Ok(UpdateExpectation::Digest {
        model: parse_model_digest(&model)?,
        tensors: Some(tensors),
    })
}

/// An expected model digest: `vram-model-v1:HEX` (as `vramctl digest --tensors` prints it) or
/// bare hex.
fn parse_model_digest(text: &str) -> PyResult<ShardDigest> {
    let hex = text
        .strip_prefix(TAG)
        .and_then(|rest| rest.strip_prefix(':'))
        .unwrap_or(text);
    ShardDigest::from_hex(hex).map_err(|_| {
        bad_input(
            "expect",
            format!(
                "{text:?}: give the model digest as {TAG}:HEX (vramctl digest --tensors prints it)"
            ),
        )
    })
}

/// The worker token: from `token_file`, else from `$VRAM_WORKER_TOKEN`.
fn worker_token(py: Python<'_>, token_file: Option<PathBuf>) -> PyResult<Zeroizing<Vec<u8>>> {
    if let Some(path) = token_file {
        let file = read_token_file(&path)
            .map_err(|e| bad_input("token_file", format!("{}: {e}", path.display())))?;
        if let Some(warning) = file.shared_warning(&path.display().to_string()) {
            py.import("warnings")?.call_method1("warn", (warning,))?;
        }
        return Ok(file.token);
    }
    token_from_env().ok_or_else(|| {
        bad_input(
            "token_file",
            format!(
                "no worker token: give token_file= or set ${TOKEN_ENV} (the seal and audit keys derive from it)"
            ),
        )
    })
}

/// A capacity in bytes from Python; anything else (negative, too large, not a number) is
/// `BadInput`, not a builtin `OverflowError` or `TypeError`.
pub(crate) struct Capacity(usize);

impl<'a, 'py> FromPyObject<'a, 'py> for Capacity {
    type Error = PyErr;

    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        obj.extract::<usize>().map(Self).map_err(|_| {
            bad_input(
                "mock_capacity",
                format!("{}: give a number of bytes, 0 or more", obj.as_any()),
            )
        })
    }
}
