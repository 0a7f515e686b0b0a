//! Metrics of the consumer contract §9.2, kept in a `prometheus-client` registry:
//! `vram_total_bytes`, `vram_used_bytes`, `vram_available_bytes` (label `gpu_device`),
//! `vram_seal_operations_total` and `vram_verify_operations_total` (labels `gpu_device`,
//! `result` = `success` | `failure`), and the `vram_verify_duration_seconds` histogram; for
//! alerts, `vram_shards_resident` (per device), `vram_last_verified_timestamp_seconds` (per live
//! shard, removed when the shard is released), `vram_audit_failures_total` and
//! `vram_executions_total` (labels `gpu_device`, `result` = `passed` | `refused_before` |
//! `caught_after`: verified executions on lent weights). The text comes
//! in both exposition formats: OpenMetrics 1.0 and Prometheus text 0.0.4.

use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use vram_types::VramError;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    gpu_device: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard_id: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    gpu_device: String,
    result: String,
}

fn histogram() -> Histogram {
    // 100 µs to ~100 s: a small shard from cache to an 80 GB flat re-hash.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

/// The live metrics of one manager.
pub(crate) struct Metrics {
    registry: Registry,
    total: Family<DeviceLabels, Gauge>,
    used: Family<DeviceLabels, Gauge>,
    available: Family<DeviceLabels, Gauge>,
    seals: Family<OperationLabels, Counter>,
    verifies: Family<OperationLabels, Counter>,
    verify_seconds: Family<DeviceLabels, Histogram, fn() -> Histogram>,
    audit_failures: Counter,
    resident: Family<DeviceLabels, Gauge>,
    last_verified: Family<ShardLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    oldest_proof: Family<DeviceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    executions: Family<OperationLabels, Counter>,
    expected: Family<ExpectedLabels, Counter>,
    updates: Family<OperationLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpectedLabels {
    gpu_device: String,
    expected_from: String,
}

/// How a verified execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExecutionResult {
    /// Both checks passed; the result was released.
    Passed,
    /// The check before refused it (or the pipelined one found the bytes changed before the
    /// engine's work): the result was withheld.
    RefusedBefore,
    /// The check after the engine's work found the bytes changed: the result was withheld.
    CaughtAfter,
}

impl ExecutionResult {
    fn label(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::RefusedBefore => "refused_before",
            Self::CaughtAfter => "caught_after",
        }
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

fn device(gpu: u32) -> DeviceLabels {
    DeviceLabels {
        gpu_device: gpu.to_string(),
    }
}

fn outcome(gpu: u32, ok: bool) -> OperationLabels {
    OperationLabels {
        gpu_device: gpu.to_string(),
        result: if ok { "success" } else { "failure" }.to_owned(),
    }
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let total = Family::<DeviceLabels, Gauge>::default();
        let used = Family::<DeviceLabels, Gauge>::default();
        let available = Family::<DeviceLabels, Gauge>::default();
        let seals = Family::<OperationLabels, Counter>::default();
        let verifies = Family::<OperationLabels, Counter>::default();
        let verify_seconds =
            Family::<DeviceLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        registry.register(
            "vram_total_bytes",
            "Total VRAM capacity managed",
            total.clone(),
        );
        registry.register(
            "vram_used_bytes",
            "VRAM used by sealed shards (allocation granularity included)",
            used.clone(),
        );
        registry.register(
            "vram_available_bytes",
            "VRAM still available to seal into",
            available.clone(),
        );
        registry.register("vram_seal_operations", "Seal operations", seals.clone());
        registry.register(
            "vram_verify_operations",
            "Seal verifications",
            verifies.clone(),
        );
        let resident = Family::<DeviceLabels, Gauge>::default();
        registry.register(
            "vram_shards_resident",
            "Sealed shards resident on the device",
            resident.clone(),
        );
        let last_verified =
            Family::<ShardLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "vram_last_verified_timestamp_seconds",
            "Unix time of the shard's last successful verification (absent until one passes)",
            last_verified.clone(),
        );
        let oldest_proof =
            Family::<DeviceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "vram_oldest_verification_age_seconds",
            "Seconds since the least recently proven resident shard on the device was last verified (or sealed); 0 with none resident",
            oldest_proof.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "vram_audit_failures",
            "Audit records the sink could not store (dropped or refused operations)",
            audit_failures.clone(),
        );
        let executions = Family::<OperationLabels, Counter>::default();
        registry.register(
            "vram_executions",
            "Executions on lent sealed weights, by result (passed, refused_before, caught_after)",
            executions.clone(),
        );
        let expected = Family::<ExpectedLabels, Counter>::default();
        registry.register(
            "vram_seals_with_expected_digest",
            "Seals checked against an expected digest, by where it came from (caller, manifest, signed-manifest, unverified-signed-manifest: a signed manifest whose signature was not checked)",
            expected.clone(),
        );
        let updates = Family::<OperationLabels, Counter>::default();
        registry.register(
            "vram_model_updates",
            "Updates of models sealed in place, by result (sender: the sender's digest matched; trusted: sealed on the caller's word; refused)",
            updates.clone(),
        );
        registry.register(
            "vram_verify_duration_seconds",
            "Time to verify a sealed shard, digest of the resident bytes included",
            verify_seconds.clone(),
        );
        Self {
            registry,
            total,
            used,
            available,
            seals,
            verifies,
            verify_seconds,
            audit_failures,
            resident,
            last_verified,
            oldest_proof,
            executions,
            expected,
            updates,
        }
    }

    /// Counts an update of a model on `gpu` that ended with `result`.
    pub(crate) fn count_update(&self, gpu: u32, result: &str) {
        self.updates
            .get_or_create(&OperationLabels {
                gpu_device: gpu.to_string(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a seal checked against an expected digest from `from`.
    pub(crate) fn count_expected(&self, gpu: u32, from: &str) {
        self.expected
            .get_or_create(&ExpectedLabels {
                gpu_device: gpu.to_string(),
                expected_from: from.to_owned(),
            })
            .inc();
    }

    /// Sets how long ago the least recently proven shard on `gpu` was verified (or sealed).
    pub(crate) fn set_oldest_proof(&self, gpu: u32, age: Duration) {
        self.oldest_proof
            .get_or_create(&device(gpu))
            .set(age.as_secs_f64());
    }

    pub(crate) fn set_resident(&self, gpu: u32, shards: usize) {
        self.resident
            .get_or_create(&device(gpu))
            .set(gauge_value(shards));
    }

    /// Records that `shard_id` passed verification at wall time `at` (the manager's clock).
    pub(crate) fn set_last_verified(&self, shard_id: &str, at: std::time::SystemTime) {
        let now = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_verified
            .get_or_create(&ShardLabels {
                shard_id: shard_id.to_owned(),
            })
            .set(now);
    }

    pub(crate) fn forget_shard(&self, shard_id: &str) {
        self.last_verified.remove(&ShardLabels {
            shard_id: shard_id.to_owned(),
        });
    }

    pub(crate) fn count_audit_failure(&self) {
        self.audit_failures.inc();
    }

    pub(crate) fn set_capacity(&self, gpu: u32, total: usize, used: usize) {
        self.total
            .get_or_create(&device(gpu))
            .set(gauge_value(total));
        self.used.get_or_create(&device(gpu)).set(gauge_value(used));
        self.available
            .get_or_create(&device(gpu))
            .set(gauge_value(total.saturating_sub(used)));
    }

    pub(crate) fn count_execution(&self, gpu: u32, result: ExecutionResult) {
        self.executions
            .get_or_create(&OperationLabels {
                gpu_device: gpu.to_string(),
                result: result.label().to_owned(),
            })
            .inc();
    }

    /// Executions on `gpu` that ended with `result`.
    pub(crate) fn execution_count(&self, gpu: u32, result: ExecutionResult) -> u64 {
        self.executions
            .get_or_create(&OperationLabels {
                gpu_device: gpu.to_string(),
                result: result.label().to_owned(),
            })
            .get()
    }

    pub(crate) fn count_seal(&self, gpu: u32, ok: bool) {
        self.seals.get_or_create(&outcome(gpu, ok)).inc();
    }

    pub(crate) fn count_verify(&self, gpu: u32, ok: bool, took: Duration) {
        self.verifies.get_or_create(&outcome(gpu, ok)).inc();
        self.verify_seconds
            .get_or_create(&device(gpu))
            .observe(took.as_secs_f64());
    }

    fn seal_count(&self, gpu: u32, ok: bool) -> u64 {
        self.seals.get_or_create(&outcome(gpu, ok)).get()
    }

    fn verify_count(&self, gpu: u32, ok: bool) -> u64 {
        self.verifies.get_or_create(&outcome(gpu, ok)).get()
    }

    pub(crate) fn snapshot(&self, devices: Vec<DeviceUsage>) -> Result<VramMetrics, VramError> {
        let sum = |f: &dyn Fn(u32) -> u64| {
            devices
                .iter()
                .map(|d| f(d.gpu_device))
                .fold(0u64, u64::saturating_add)
        };
        let seals_succeeded = sum(&|g| self.seal_count(g, true));
        let seals_failed = sum(&|g| self.seal_count(g, false));
        let verifications_succeeded = sum(&|g| self.verify_count(g, true));
        let verifications_failed = sum(&|g| self.verify_count(g, false));
        let audit_failures = self.audit_failures.get();
        let executions = ExecutionCounts {
            passed: sum(&|g| self.execution_count(g, ExecutionResult::Passed)),
            refused_before: sum(&|g| self.execution_count(g, ExecutionResult::RefusedBefore)),
            caught_after: sum(&|g| self.execution_count(g, ExecutionResult::CaughtAfter)),
        };
        let mut prometheus_text = String::new();
        encode(&mut prometheus_text, &self.registry)
            .map_err(|_| VramError::Unreachable("writing metrics to a String cannot fail"))?;
        Ok(VramMetrics {
            devices,
            seals_succeeded,
            seals_failed,
            verifications_succeeded,
            verifications_failed,
            audit_failures,
            executions,
            prometheus_text,
        })
    }
}

/// Verified executions on lent weights, by how they ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecutionCounts {
    /// Every check passed; the engine's result was released.
    pub passed: u64,
    /// Refused by the check before the engine's work (the closure never ran, or in the
    /// pipelined form its result was withheld).
    pub refused_before: u64,
    /// The check after the engine's work found the bytes changed; the result was withheld.
    pub caught_after: u64,
}

/// Capacity of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceUsage {
    /// CUDA device index.
    pub gpu_device: u32,
    /// Capacity managed on the device.
    pub total_bytes: usize,
    /// Bytes held by sealed shards (granularity included).
    pub used_bytes: usize,
    /// Bytes still available.
    pub available_bytes: usize,
}

/// A snapshot of a manager's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VramMetrics {
    /// Capacity per device.
    pub devices: Vec<DeviceUsage>,
    /// Successful seals.
    pub seals_succeeded: u64,
    /// Failed seals (validation failures excluded: they never reach the device).
    pub seals_failed: u64,
    /// Successful verifications.
    pub verifications_succeeded: u64,
    /// Failed verifications.
    pub verifications_failed: u64,
    /// Audit records that could not be stored.
    pub audit_failures: u64,
    /// Verified executions on lent weights ([`VramManager::execute`](crate::VramManager::execute)).
    pub executions: ExecutionCounts,
    prometheus_text: String,
}

impl VramMetrics {
    /// Capacity only, no counters and no text (used if rendering ever failed).
    pub(crate) fn empty(devices: Vec<DeviceUsage>) -> Self {
        Self {
            devices,
            seals_succeeded: 0,
            seals_failed: 0,
            verifications_succeeded: 0,
            verifications_failed: 0,
            audit_failures: 0,
            executions: ExecutionCounts::default(),
            prometheus_text: String::new(),
        }
    }

    /// Every metric in the OpenMetrics 1.0 text format
    /// (`application/openmetrics-text; version=1.0.0`), ready to serve.
    #[must_use]
    pub fn prometheus_text(&self) -> &str {
        &self.prometheus_text
    }

    /// Every metric in the Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), for
    /// scrapers and parsers that do not ask for OpenMetrics: counters are named with their
    /// `_total` suffix in `HELP` and `TYPE`, and there is no `# EOF`.
    #[must_use]
    pub fn prometheus_text_0_0_4(&self) -> String {
        openmetrics_to_0_0_4(&self.prometheus_text)
    }
}

/// OpenMetrics text → Prometheus text 0.0.4: a counter family `x` exposes samples `x_total`,
/// which 0.0.4 expects its `HELP` and `TYPE` to name; `# EOF` and `# UNIT` do not exist there.
fn openmetrics_to_0_0_4(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_renamed_for_the_0_0_4_format() {
        let om = "# HELP a_ops Ops.\n# TYPE a_ops counter\na_ops_total{x=\"1\"} 2\n# HELP g G.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_0_0_4(om),
            "# HELP a_ops_total Ops.\n# TYPE a_ops_total counter\na_ops_total{x=\"1\"} 2\n# HELP g G.\n# TYPE g gauge\ng 1\n"
        );
    }
}
