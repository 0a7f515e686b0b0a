//! `enforce_vram_only_policy`, `is_vram_only` and `attest_vram_residency` on a `VramManager`.

use vram_alloc::VramManager;
use vram_alloc::audit::AuditEvent;
use vram_types::{SealedShard, VramError};

use crate::attestation::{self, Attestation};
use crate::rules;

/// One thing that breaks the VRAM-only policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFinding {
    /// The device concerned.
    pub gpu_device: u32,
    /// The live shard concerned, for allocation findings.
    pub shard_id: Option<String>,
    /// What was found.
    pub reason: String,
}

/// Everything the policy found, without acting on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyReport {
    /// Violations, device by device, then live allocations, then the environment.
    pub findings: Vec<PolicyFinding>,
}

impl PolicyReport {
    /// Whether nothing breaks the policy.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// The VRAM-only policy on a manager.
pub trait VramOnlyPolicy {
    /// Checks every device, every live allocation and the environment, without side effects.
    fn policy_report(&self) -> PolicyReport;

    /// Checks the policy; on a violation emits a critical `PolicyViolation` audit event per
    /// finding and stops the manager (it then refuses to seal and verify). Call it at worker
    /// start and periodically.
    ///
    /// # Errors
    /// [`VramError::PolicyViolation`] naming the first device and every reason found;
    /// [`VramError::Stopped`] if the manager had already stopped.
    fn enforce_vram_only_policy(&self) -> Result<(), VramError>;

    /// Whether the policy holds now and the manager has not stopped.
    fn is_vram_only(&self) -> bool;

    /// Verifies `shard` fully (seal, digest of the bytes in VRAM, allocation facts), checks its
    /// device, and returns a MAC-signed statement of where it lives, bound to the caller's
    /// `nonce` (so it cannot be replayed).
    ///
    /// # Errors
    /// Any error of `verify_sealed`; [`VramError::PolicyViolation`] when the device breaks the
    /// policy; [`VramError::InvalidInput`] for a nonce over 256 bytes.
    fn attest_vram_residency(
        &self,
        shard: &SealedShard,
        nonce: &[u8],
    ) -> Result<Attestation, VramError>;
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl VramOnlyPolicy for VramManager {
    fn policy_report(&self) -> PolicyReport {
        let allow_pageable = self.config().allow_pageable_memory_access;
        let mut findings = Vec::new();
        for device in 0..self.device_count() {
            match self.device_facts(device) {
                Ok(facts) => {
                    findings.extend(facts.vram_only_problems(allow_pageable).into_iter().map(
                        |reason| PolicyFinding {
                            gpu_device: device,
                            shard_id: None,
                            reason,
                        },
                    ))
                }
                Err(e) => findings.push(PolicyFinding {
                    gpu_device: device,
                    shard_id: None,
                    reason: format!("device facts unavailable: {e}"),
                }),
            }
        }
        let simulated_ok = self.backend_kind() == vram_types::BackendKind::Mock;
        for (shard_id, device, facts) in self.live_allocation_facts() {
            let problem = match facts {
                Ok(f) => f.residency_problem(device, simulated_ok),
                Err(e) => Some(format!("allocation facts unavailable: {e}")),
            };
            if let Some(reason) = problem {
                findings.push(PolicyFinding {
                    gpu_device: device,
                    shard_id: Some(shard_id),
                    reason,
                });
            }
        }
        findings.extend(
            rules::environment_problems(env_lookup)
                .into_iter()
                .map(|reason| PolicyFinding {
                    gpu_device: 0,
                    shard_id: None,
                    reason,
                }),
        );
        PolicyReport { findings }
    }

    fn enforce_vram_only_policy(&self) -> Result<(), VramError> {
        if self.is_stopped() {
            return Err(VramError::Stopped);
        }
        let report = self.policy_report();
        let Some(first) = report.findings.first() else {
            tracing::info!(devices = self.device_count(), "VRAM-only policy holds");
            return Ok(());
        };
        for f in &report.findings {
            let ecc_enabled = self
                .device_facts(f.gpu_device)
                .ok()
                .and_then(|d| d.ecc_enabled);
            let reason = match &f.shard_id {
                Some(id) => format!("shard {id:?}: {}", f.reason),
                None => f.reason.clone(),
            };
            self.record_audit_event(AuditEvent::PolicyViolation {
                gpu_device: f.gpu_device,
                reason,
                ecc_enabled,
            });
        }
        let reasons: Vec<&str> = report
            .findings
            .iter()
            .filter(|f| f.gpu_device == first.gpu_device)
            .map(|f| f.reason.as_str())
            .collect();
        let error = VramError::PolicyViolation {
            device: first.gpu_device,
            reason: reasons.join("; "),
        };
        self.stop(&error.to_string());
        Err(error)
    }

    fn is_vram_only(&self) -> bool {
        !self.is_stopped() && self.policy_report().is_clean()
    }

    fn attest_vram_residency(
        &self,
        shard: &SealedShard,
        nonce: &[u8],
    ) -> Result<Attestation, VramError> {
        attestation::attest(self, shard, nonce)
    }
}
