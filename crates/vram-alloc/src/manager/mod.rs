//! `VramManager`: the public face of sealing, verification and capacity.

pub(crate) mod allocation_check;
mod cross_check;
mod execute;
mod group;
mod lending;
mod model;
mod policy;
mod proof_order;
mod resident_allocation;
mod scrub;
mod seal;
mod seal_options;
mod sealed_table;
mod shared;
mod step_scrub;
mod summary;
#[cfg(feature = "test-utils")]
mod test_hooks;
mod update;
mod verify;

use std::sync::Arc;

use vram_policy::rules;
use vram_seal::SealKey;
use vram_types::{BackendKind, DeviceFacts, VramConfig, VramError};

use crate::audit::{AuditEvent, AuditSink, InMemoryAuditSink};
use crate::backend::{Backend, CudaBackend, MockBackend, round_up};
use crate::capacity::DeviceCapacity;
use crate::clock::{Clock, SystemClock};
use crate::metrics::VramMetrics;
pub use execute::{ExecutionMode, ModelExecution};
pub use group::{GroupPart, SealedGroup};
pub use lending::{LentTensor, ModelWeights, Weights};
pub use model::{EngineTensor, SealedModel, SealedTensor};
pub use scrub::{ScrubEvent, ScrubOptions, Scrubber};
pub use seal::{GroupPlan, PlanError, PlanStep, SealPart, SealPlan};
pub use seal_options::{ExpectedFrom, SealOptions};
pub(crate) use shared::Shared;
pub use step_scrub::{StepReport, StepScrubOptions, StepScrubber};
pub use update::UpdateExpectation;

/// Seals model shards into VRAM and verifies them. `Send + Sync`: share it with `Arc` and seal,
/// verify, query and drop shards from many threads at once.
#[derive(Clone)]
pub struct VramManager {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for VramManager {
    /// Backend, devices, capacity and live shards only: never shard bytes, keys or pointers.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VramManager")
            .field("backend", &self.backend_kind().as_str())
            .field("worker_id", &self.shared.config().worker_id)
            .field("devices", &self.device_count())
            .field("used_vram", &self.used_vram())
            .field("total_vram", &self.total_vram())
            .field("live_shards", &self.shared.live().len())
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

/// Builds a [`VramManager`]: backend, configuration, seal key and audit sink.
#[derive(Debug, Default)]
pub struct VramManagerBuilder {
    config: VramConfig,
    key: Option<SealKey>,
    audit: Option<Arc<dyn AuditSink>>,
    backend: Option<Arc<dyn Backend>>,
    clock: Option<Arc<dyn Clock>>,
}

impl VramManagerBuilder {
    /// Sets the configuration (default [`VramConfig::default`]).
    #[must_use]
    pub fn config(mut self, config: VramConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the seal key (default: a fresh random key, good for one process).
    #[must_use]
    pub fn seal_key(mut self, key: SealKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets where audit records go (default: kept in memory).
    #[must_use]
    pub fn audit_sink(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Uses the mock backend (tests, and machines without a GPU by explicit choice).
    #[must_use]
    pub fn mock(mut self, backend: Arc<MockBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Reads time from `clock` instead of the system's (tests of seal ages and clock jumps).
    #[cfg(feature = "test-utils")]
    #[must_use]
    pub fn clock(mut self, clock: Arc<crate::clock::ManualClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Builds the manager. Without a backend set, it uses every CUDA GPU and checks each at start
    /// (integrated GPU, pageable memory access, unified addressing); it never falls back to the
    /// mock.
    ///
    /// # Errors
    /// [`VramError::NoGpu`] when no backend is set and no GPU can be used;
    /// [`VramError::DriverTooOld`]; [`VramError::PolicyViolation`] when a GPU fails the start-up
    /// check;
    /// [`VramError::InvalidInput`] for a bad configuration (memory fraction outside (0, 1],
    /// empty worker id); [`VramError::Unreachable`] if no random key can be made.
    pub fn build(self) -> Result<VramManager, VramError> {
        let backend: Arc<dyn Backend> = match self.backend {
            Some(b) => b,
            None => Arc::new(CudaBackend::open()?),
        };
        let config = self.config;
        if !(config.memory_fraction > 0.0 && config.memory_fraction <= 1.0) {
            return Err(VramError::invalid_input(
                "memory fraction",
                format!("{}; use a value in (0, 1]", config.memory_fraction),
            ));
        }
        if config.worker_id.is_empty() {
            return Err(VramError::invalid_input("worker id", "is empty"));
        }
        if backend.device_count() == 0 {
            return Err(VramError::NoGpu {
                reason: format!("the {} backend reports no device", backend.kind()),
            });
        }
        let capacities = (0..backend.device_count())
            .map(|d| capacity_of(backend.as_ref(), &config, d).map(DeviceCapacity::new))
            .collect::<Result<Vec<_>, _>>()?;
        let key = match self.key {
            Some(k) => k,
            None => SealKey::generate()?,
        };
        let audit = self
            .audit
            .unwrap_or_else(|| Arc::new(InMemoryAuditSink::new()));
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock::new()));
        let manager = VramManager::assemble(backend, config, key, capacities, audit, clock);
        if manager.backend_kind() == BackendKind::Cuda {
            check_devices_at_start(&manager.shared)?;
        }
        Ok(manager)
    }
}

/// Start-up check of every real GPU: integrated GPUs, pageable memory access (unless allowed)
/// and missing unified addressing are refused as policy violations (audited as critical, with
/// the ECC state); accepted devices are audited with their ECC state and driver version.
fn check_devices_at_start(shared: &Shared) -> Result<(), VramError> {
    let correlation_id = shared.next_correlation_id();
    for device in 0..shared.backend().device_count() {
        let facts = shared.backend().device_facts(device)?;
        let problems = rules::device_problems(&facts, shared.config().allow_pageable_memory_access);
        if problems.is_empty() {
            tracing::info!(gpu_device = device, name = %facts.name, ecc_enabled = ?facts.ecc_enabled, "GPU accepted for VRAM-only shards");
            shared.record(
                &correlation_id,
                AuditEvent::DeviceAccepted {
                    gpu_device: device,
                    name: facts.name,
                    total_memory: facts.total_memory,
                    ecc_enabled: facts.ecc_enabled,
                    driver_version: facts.driver_version,
                },
            )?;
            continue;
        }
        let reason = problems.join("; ");
        shared.record_or_stop(
            &correlation_id,
            AuditEvent::PolicyViolation {
                gpu_device: device,
                reason: reason.clone(),
                ecc_enabled: facts.ecc_enabled,
            },
        );
        return Err(VramError::PolicyViolation { device, reason });
    }
    Ok(())
}

/// Capacity managed on a device: the configured bytes, or the device total times the
/// configured fraction, rounded down to the allocation granularity.
fn capacity_of(
    backend: &dyn Backend,
    config: &VramConfig,
    device: u32,
) -> Result<usize, VramError> {
    let total = backend.memory_info(device)?.total;
    let wanted = match config.capacity_bytes {
        Some(bytes) => bytes.min(total),
        None => fraction_of(total, config.memory_fraction),
    };
    Ok(round_down(wanted, backend.granularity()))
}

/// `bytes` rounded down to a multiple of `granularity`: every allocation takes whole granules.
fn round_down(bytes: usize, granularity: usize) -> usize {
    let g = granularity.max(1);
    bytes
        .checked_rem(g)
        .map_or(bytes, |rest| bytes.saturating_sub(rest))
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "the fraction is in (0, 1], so the product is in [0, total]"
)]
fn fraction_of(total: usize, fraction: f64) -> usize {
    if fraction >= 1.0 {
        total
    } else {
        (total as f64 * fraction) as usize
    }
}

impl VramManager {
    /// A manager on the GPU with the default configuration and a fresh random seal key.
    ///
    /// # Errors
    /// [`VramError::NoGpu`] when no GPU can be used. It never falls back to the mock.
    pub fn new() -> Result<Self, VramError> {
        Self::builder().build()
    }

    /// A manager on the mock backend with one simulated device of `total_vram` bytes
    /// (tests and demos; its allocations are host memory and report themselves as simulated).
    #[must_use]
    pub fn with_capacity(total_vram: usize) -> Self {
        let backend = Arc::new(MockBackend::with_capacity(total_vram));
        let capacity = round_down(total_vram, backend.granularity());
        // Without OS randomness, fall back to a key from the process id and clock: a mock's
        // seals only need to catch accidental change.
        let key = SealKey::generate().unwrap_or_else(|_| {
            SealKey::from_array(
                vram_seal::digest(
                    format!("{} {:?}", std::process::id(), std::time::SystemTime::now()).as_bytes(),
                    vram_types::DigestAlgorithm::Sha256,
                )
                .as_bytes()
                .to_owned(),
            )
        });
        let config = VramConfig {
            capacity_bytes: Some(total_vram),
            ..VramConfig::default()
        };
        let audit = Arc::new(InMemoryAuditSink::new());
        Self::assemble(
            backend,
            config,
            key,
            vec![DeviceCapacity::new(capacity)],
            audit,
            Arc::new(SystemClock::new()),
        )
    }

    /// The manager over checked parts, with its capacity metrics set.
    fn assemble(
        backend: Arc<dyn Backend>,
        config: VramConfig,
        key: SealKey,
        capacities: Vec<Arc<DeviceCapacity>>,
        audit: Arc<dyn AuditSink>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let shared = Arc::new(Shared::new(backend, config, key, capacities, audit, clock));
        for d in 0..shared.backend().device_count() {
            shared.refresh_capacity_metrics(d);
        }
        Self { shared }
    }

    /// A manager on GPU `gpu_device`.
    ///
    /// # Errors
    /// [`VramError::NoGpu`] when no GPU can be used, [`VramError::InvalidDevice`] when the
    /// device does not exist.
    pub fn from_gpu_device(gpu_device: u32) -> Result<Self, VramError> {
        let manager = Self::new()?;
        vram_types::validation::validate_gpu_device(gpu_device, manager.device_count())?;
        Ok(manager)
    }

    /// A builder: backend, configuration, seal key and audit sink.
    #[must_use]
    pub fn builder() -> VramManagerBuilder {
        VramManagerBuilder::default()
    }

    /// Bytes still available on all devices.
    #[must_use]
    pub fn available_vram(&self) -> usize {
        self.sum_over_devices(DeviceCapacity::available)
    }

    /// Capacity managed on all devices.
    #[must_use]
    pub fn total_vram(&self) -> usize {
        self.sum_over_devices(DeviceCapacity::total)
    }

    /// Bytes held by live shards on all devices, allocation granularity included.
    #[must_use]
    pub fn used_vram(&self) -> usize {
        self.sum_over_devices(DeviceCapacity::used)
    }

    fn sum_over_devices(&self, bytes: impl Fn(&DeviceCapacity) -> usize) -> usize {
        self.shared.sum_over_devices(bytes)
    }

    /// Bytes still available on one device.
    ///
    /// # Errors
    /// [`VramError::InvalidDevice`].
    pub fn available_vram_on(&self, gpu_device: u32) -> Result<usize, VramError> {
        Ok(self.shared.capacity(gpu_device)?.available())
    }

    /// Capacity managed on one device.
    ///
    /// # Errors
    /// [`VramError::InvalidDevice`].
    pub fn total_vram_on(&self, gpu_device: u32) -> Result<usize, VramError> {
        Ok(self.shared.capacity(gpu_device)?.total())
    }

    /// Bytes held by live shards on one device.
    ///
    /// # Errors
    /// [`VramError::InvalidDevice`].
    pub fn used_vram_on(&self, gpu_device: u32) -> Result<usize, VramError> {
        Ok(self.shared.capacity(gpu_device)?.used())
    }

    /// The bytes a shard of `len` bytes takes on the device (rounded to the granularity).
    #[must_use]
    pub fn vram_footprint(&self, len: usize) -> usize {
        round_up(len, self.shared.backend().granularity()).unwrap_or(usize::MAX)
    }

    /// A snapshot of the metrics, with their Prometheus text.
    ///
    /// If the snapshot cannot be rendered (it cannot, in practice), the counters are still
    /// returned and the text is empty.
    #[must_use]
    pub fn metrics(&self) -> VramMetrics {
        self.shared.refresh_proof_ages();
        let usage = self.shared.usage();
        self.shared
            .metrics()
            .snapshot(usage.clone())
            .unwrap_or_else(|_| VramMetrics::empty(usage))
    }

    /// Number of devices.
    #[must_use]
    pub fn device_count(&self) -> u32 {
        self.shared.backend().device_count()
    }

    /// Which backend holds the shards.
    #[must_use]
    pub fn backend_kind(&self) -> BackendKind {
        self.shared.backend().kind()
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &VramConfig {
        self.shared.config()
    }

    /// Device attributes, for the VRAM-only policy.
    ///
    /// # Errors
    /// [`VramError::InvalidDevice`]; CUDA errors.
    pub fn device_facts(&self, gpu_device: u32) -> Result<DeviceFacts, VramError> {
        self.shared.backend().device_facts(gpu_device)
    }

    /// Whether the manager stopped, and why.
    #[must_use]
    pub fn stop_reason(&self) -> Option<String> {
        self.shared.stop_reason()
    }

    /// Whether the manager stopped.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.shared.stop_reason().is_some()
    }
}

/// Runs one step of a seal or a verification inside a trace-level span named after it, so a
/// subscriber that times spans (`vramctl -vvv`) shows where the time goes.
fn step<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    tracing::trace_span!("step", name).in_scope(f)
}
