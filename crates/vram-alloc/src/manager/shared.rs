//! State shared by a manager and every allocation it made: the backend, the key, capacity,
//! the registry of live shard ids, the audit sink, metrics and the stopped flag. Allocations
//! keep it alive, so VRAM is released properly even after the manager itself is dropped.

use std::collections::{HashMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::UNIX_EPOCH;

use vram_seal::SealKey;
use vram_types::{AuditFailurePolicy, VramConfig, VramError};

use crate::audit::{AuditError, AuditEvent, AuditRecord, AuditSink, Severity};
use crate::backend::{Backend, BufferId};
use crate::capacity::DeviceCapacity;
use crate::clock::Clock;
use crate::manager::resident_allocation::ResidentAllocation;
use crate::metrics::{DeviceUsage, Metrics};
use crate::sync::lock;

#[derive(Debug, Default)]
struct Registry {
    live: HashMap<String, (BufferId, Weak<ResidentAllocation>)>,
    pending: HashSet<String>,
    /// Live shards per device, kept as shards are committed and forgotten: a release (of a
    /// model of 100,000 tensors, each one) must not count every live shard again.
    resident: HashMap<u32, usize>,
    /// Models under update (announced, or refused after a wrong update): nothing vouches for
    /// their tensors until an update is accepted or they are released.
    held: HashSet<String>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    backend: Arc<dyn Backend>,
    config: VramConfig,
    key: SealKey,
    capacities: Vec<Arc<DeviceCapacity>>,
    audit: Arc<dyn AuditSink>,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    registry: Mutex<Registry>,
    stopped: Mutex<Option<String>>,
    run_id: String,
    next_operation: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        config: VramConfig,
        key: SealKey,
        capacities: Vec<Arc<DeviceCapacity>>,
        audit: Arc<dyn AuditSink>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let mut nonce = [0u8; 4];
        let run_id = match getrandom::fill(&mut nonce) {
            Ok(()) => hex::encode(nonce),
            Err(_) => format!("{:08x}", std::process::id()),
        };
        Self {
            backend,
            config,
            key,
            capacities,
            audit,
            metrics: Metrics::new(),
            clock,
            registry: Mutex::new(Registry::default()),
            stopped: Mutex::new(None),
            run_id,
            next_operation: AtomicU64::new(1),
        }
    }

    /// The backend, shared (for a digester on it).
    pub(crate) fn backend_arc(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.backend)
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub(crate) fn config(&self) -> &VramConfig {
        &self.config
    }

    pub(crate) fn key(&self) -> &SealKey {
        &self.key
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// Wall-clock milliseconds since 1970, as records carry them: 0 for a clock before 1970,
    /// `u64::MAX` past the year 584 million. The one place this conversion is made.
    pub(crate) fn wall_ms(&self) -> u64 {
        self.clock
            .wall()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// `bytes` summed over every device's capacity.
    pub(crate) fn sum_over_devices(&self, bytes: impl Fn(&DeviceCapacity) -> usize) -> usize {
        self.capacities
            .iter()
            .map(|c| bytes(c))
            .fold(0, usize::saturating_add)
    }

    /// The ECC state of `device` as its facts report it (`None` when unknown or unreadable),
    /// for policy-violation records.
    pub(crate) fn ecc_enabled(&self, device: u32) -> Option<bool> {
        self.backend
            .device_facts(device)
            .ok()
            .and_then(|f| f.ecc_enabled)
    }

    /// A fresh correlation id: `<run id>-<operation number>`.
    pub(crate) fn next_correlation_id(&self) -> String {
        let n = self.next_operation.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:08}", self.run_id)
    }

    pub(crate) fn capacity(&self, device: u32) -> Result<&Arc<DeviceCapacity>, VramError> {
        usize::try_from(device)
            .ok()
            .and_then(|d| self.capacities.get(d))
            .ok_or(VramError::InvalidDevice {
                device,
                device_count: self.backend.device_count(),
            })
    }

    pub(crate) fn usage(&self) -> Vec<DeviceUsage> {
        (0u32..)
            .zip(&self.capacities)
            .map(|(gpu_device, c)| DeviceUsage {
                gpu_device,
                total_bytes: c.total(),
                used_bytes: c.used(),
                available_bytes: c.available(),
            })
            .collect()
    }

    pub(crate) fn refresh_capacity_metrics(&self, device: u32) {
        if let Ok(c) = self.capacity(device) {
            self.metrics.set_capacity(device, c.total(), c.used());
            let resident = lock(&self.registry)
                .resident
                .get(&device)
                .copied()
                .unwrap_or(0);
            self.metrics.set_resident(device, resident);
        }
    }

    /// Records an event of an operation that can still be refused: under
    /// [`AuditFailurePolicy::FailClosed`] a record that cannot be stored is
    /// [`VramError::AuditFailed`], and the caller undoes the operation.
    pub(crate) fn record(&self, correlation_id: &str, event: AuditEvent) -> Result<(), VramError> {
        let name = event.name();
        match self.store(correlation_id, event) {
            Ok(()) => Ok(()),
            Err(_) if self.config.audit_failure_policy == AuditFailurePolicy::Continue => Ok(()),
            Err(e) => Err(VramError::AuditFailed {
                event: name,
                reason: e.to_string(),
            }),
        }
    }

    /// Records an event that cannot be refused (a release, a failure report, a policy
    /// violation): under [`AuditFailurePolicy::FailClosed`] a record that cannot be stored
    /// stops the manager, so that nothing further happens that the trail does not show.
    pub(crate) fn record_or_stop(&self, correlation_id: &str, event: AuditEvent) {
        let name = event.name();
        if let Err(e) = self.store(correlation_id, event) {
            self.stop_on(&VramError::AuditFailed {
                event: name,
                reason: e.to_string(),
            });
        }
    }

    /// Sends an event to `tracing` (target `audit`) and to the sink. A sink that fails or
    /// panics is counted in `vram_audit_failures_total` and logged.
    fn store(&self, correlation_id: &str, event: AuditEvent) -> Result<(), AuditError> {
        let severity = event.severity();
        let record = AuditRecord {
            timestamp_ms: self.wall_ms(),
            worker_id: self.config.worker_id.clone(),
            correlation_id: correlation_id.to_owned(),
            severity,
            event,
        };
        let json = serde_json::to_string(&record).unwrap_or_default();
        let name = record.event.name();
        match severity {
            Severity::Critical => tracing::error!(target: "audit", event = name, record = %json),
            Severity::Warning => tracing::warn!(target: "audit", event = name, record = %json),
            Severity::Info => tracing::info!(target: "audit", event = name, record = %json),
        }
        // A panicking sink must neither abort the process (a panic in `Drop` while unwinding
        // does) nor skip the work around the record, such as releasing VRAM.
        let stored = panic::catch_unwind(AssertUnwindSafe(|| self.audit.record(&record)))
            .unwrap_or(Err(AuditError::Panicked));
        if let Err(e) = &stored {
            self.metrics.count_audit_failure();
            tracing::error!(error = %e, event = name, "audit sink failed to store a record");
        }
        stored
    }

    /// The one rule of when a failure stops the manager (no further seals, verifications or
    /// executions until it is rebuilt), for every path that meets a security failure or an
    /// audit record it cannot undo:
    /// - a policy violation (memory or a device that breaks the VRAM-only rule): always;
    /// - any other security failure (a seal that does not verify, bytes that changed, an
    ///   upload that delivered other bytes): when `stop_on_verification_failure` is set (the
    ///   default);
    /// - an audit record that could not be stored for something that cannot be undone (a
    ///   release, a failure report, a summary of passes): under
    ///   [`AuditFailurePolicy::FailClosed`] (an operation that can be undone is undone instead,
    ///   and its caller never passes its error here);
    /// - nothing else.
    pub(crate) fn stop_on(&self, e: &VramError) {
        let stops = match e {
            VramError::PolicyViolation { .. } => true,
            VramError::AuditFailed { .. } => {
                self.config.audit_failure_policy == AuditFailurePolicy::FailClosed
            }
            e => e.is_security_critical() && self.config.stop_on_verification_failure,
        };
        if stops {
            self.halt(&e.to_string());
        }
    }

    fn halt(&self, reason: &str) {
        let mut stopped = lock(&self.stopped);
        if stopped.is_none() {
            tracing::error!(
                reason,
                "VRAM manager stopped: no further seals or verifications"
            );
            *stopped = Some(reason.to_owned());
        }
    }

    pub(crate) fn stop_reason(&self) -> Option<String> {
        lock(&self.stopped).clone()
    }

    pub(crate) fn ensure_running(&self) -> Result<(), VramError> {
        match lock(&self.stopped).as_ref() {
            None => Ok(()),
            Some(_) => Err(VramError::Stopped),
        }
    }

    /// Claims a shard id for a seal in progress.
    pub(crate) fn claim(self: &Arc<Self>, shard_id: &str) -> Result<Claim, VramError> {
        let mut reg = lock(&self.registry);
        let live = reg
            .live
            .get(shard_id)
            .is_some_and(|(_, weak)| weak.strong_count() > 0);
        if live || reg.pending.contains(shard_id) {
            return Err(VramError::AlreadySealed {
                shard_id: shard_id.to_owned(),
            });
        }
        reg.pending.insert(shard_id.to_owned());
        Ok(Claim {
            shared: Arc::clone(self),
            shard_id: shard_id.to_owned(),
        })
    }

    /// Holds a model for an update; `false` when it was held already.
    pub(crate) fn hold(&self, model_id: &str) -> bool {
        lock(&self.registry).held.insert(model_id.to_owned())
    }

    /// Ends a model's hold (an update accepted, or the model released).
    pub(crate) fn unhold(&self, model_id: &str) {
        lock(&self.registry).held.remove(model_id);
    }

    /// Whether `model_id` is held for an update.
    pub(crate) fn is_held(&self, model_id: &str) -> bool {
        lock(&self.registry).held.contains(model_id)
    }

    /// Whether the manager vouches for `resident` now: not replaced by an update, and not a
    /// tensor of a model held for one. The one test every verification, window and scrubber
    /// makes before it reads a shard, and again before it reports a digest that differs.
    pub(crate) fn vouches_for(&self, resident: &ResidentAllocation) -> Result<(), VramError> {
        // Held first: a model whose update was refused is under update, not released.
        if let Some(model_id) = resident.set()
            && self.is_held(model_id)
        {
            return Err(VramError::ModelUpdating {
                model_id: model_id.to_owned(),
            });
        }
        if resident.is_superseded() {
            return Err(VramError::NotSealed {
                shard_id: resident.shard_id().to_owned(),
            });
        }
        Ok(())
    }

    /// Takes a superseded shard's id off the registry, so that an update can seal it again.
    pub(crate) fn forget_superseded(&self, resident: &ResidentAllocation) {
        resident.supersede();
        self.forget(
            resident.shard_id(),
            resident.buffer(),
            resident.sealed().gpu_device,
        );
    }

    /// Removes a released shard from the registry (only if it is still the same allocation).
    pub(crate) fn forget(&self, shard_id: &str, buffer: BufferId, device: u32) {
        let mut reg = lock(&self.registry);
        if reg.live.get(shard_id).is_some_and(|(b, _)| *b == buffer) {
            reg.live.remove(shard_id);
            if let Some(n) = reg.resident.get_mut(&device) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Sets each device's `vram_oldest_verification_age_seconds` from the live shards.
    pub(crate) fn refresh_proof_ages(&self) {
        let now = self.clock().monotonic();
        let live = self.live();
        for device in 0..self.backend().device_count() {
            self.metrics()
                .set_oldest_proof(device, oldest_proof(&live, device, now));
        }
    }

    /// Whether `resident` is still sealed: someone besides the caller's handle holds its shard
    /// (a shard released while a digest read it is not compared: the engine may already have
    /// written new bytes there).
    pub(crate) fn is_live(&self, resident: &Arc<ResidentAllocation>) -> bool {
        Arc::strong_count(resident) > 1
    }

    /// The allocations of the live shards.
    pub(crate) fn live(&self) -> Vec<Arc<ResidentAllocation>> {
        lock(&self.registry)
            .live
            .values()
            .filter_map(|(_, weak)| weak.upgrade())
            .collect()
    }
}

/// How long before monotonic time `now` the least recently proven of the `live` shards of
/// `device` was last proven (zero with none).
pub(crate) fn oldest_proof(
    live: &[Arc<ResidentAllocation>],
    device: u32,
    now: std::time::Duration,
) -> std::time::Duration {
    live.iter()
        .filter(|r| r.sealed().gpu_device == device)
        .map(|r| now.saturating_sub(r.last_proven()))
        .max()
        .unwrap_or_default()
}

/// A shard id reserved for a seal in progress; released unless committed.
#[derive(Debug)]
pub(crate) struct Claim {
    shared: Arc<Shared>,
    shard_id: String,
}

impl Claim {
    pub(crate) fn commit(self, buffer: BufferId, allocation: &Arc<ResidentAllocation>) {
        let mut reg = lock(&self.shared.registry);
        reg.live
            .insert(self.shard_id.clone(), (buffer, Arc::downgrade(allocation)));
        let n = reg
            .resident
            .entry(allocation.sealed().gpu_device)
            .or_insert(0);
        *n = n.saturating_add(1);
        drop(reg);
        // `Drop` now removes the pending mark.
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.shared.registry).pending.remove(&self.shard_id);
    }
}
