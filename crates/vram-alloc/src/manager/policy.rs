//! The VRAM-only policy, applied by the manager that holds the power to act on it: it checks
//! devices, live allocations and the environment with `vram_policy::rules`, audits and stops on
//! a violation, and signs residency attestations with its own key, only for a shard it has just
//! verified. Nothing here can be asked to sign a statement or to write an audit record of the
//! caller's choosing.

use vram_policy::{
    ATTESTATION_VERSION, Attestation, MAX_NONCE_BYTES, PolicyFinding, PolicyReport, rules,
};
use vram_types::{BackendKind, SealedShard, ShardAllocation, VramError};

use super::{VramManager, allocation_check};

/// The checks an attestation records as passed, in the order they ran.
const CHECKS_PASSED: [&str; 5] = [
    "seal signature",
    "digest of resident bytes",
    "allocation is device memory, not managed",
    "allocation on the expected device and covers the shard",
    "device has its own memory and no pageable access",
];

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl VramManager {
    /// Checks every device, every live allocation and the environment, without side effects.
    #[must_use]
    pub fn policy_report(&self) -> PolicyReport {
        let shared = &self.shared;
        let allow_pageable = shared.config().allow_pageable_memory_access;
        let mut findings = Vec::new();
        for device in 0..self.device_count() {
            match shared.backend().device_facts(device) {
                Ok(facts) => findings.extend(
                    rules::device_problems(&facts, allow_pageable)
                        .into_iter()
                        .map(|reason| PolicyFinding {
                            gpu_device: device,
                            shard_id: None,
                            reason,
                        }),
                ),
                Err(e) => findings.push(PolicyFinding {
                    gpu_device: device,
                    shard_id: None,
                    reason: format!("device facts unavailable: {e}"),
                }),
            }
        }
        for r in shared.live() {
            let problem = allocation_check::problem(shared, r.buffer(), r.device(), r.len())
                .unwrap_or_else(|e| Some(format!("allocation facts unavailable: {e}")));
            if let Some(reason) = problem {
                findings.push(PolicyFinding {
                    gpu_device: r.device(),
                    shard_id: Some(r.shard_id().to_owned()),
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

    /// Checks the policy; on a violation emits a critical `PolicyViolation` audit event per
    /// finding and stops the manager (it then refuses to seal and verify). Call it at worker
    /// start and periodically.
    ///
    /// # Errors
    /// [`VramError::PolicyViolation`] naming the first device and every reason found for it;
    /// [`VramError::Stopped`] if the manager had already stopped.
    pub fn enforce_vram_only_policy(&self) -> Result<(), VramError> {
        let shared = &self.shared;
        shared.ensure_running()?;
        let report = self.policy_report();
        let Some(first) = report.findings.first() else {
            tracing::info!(devices = self.device_count(), "VRAM-only policy holds");
            return Ok(());
        };
        let correlation_id = shared.next_correlation_id();
        for f in &report.findings {
            let reason = match &f.shard_id {
                Some(id) => format!("shard {id:?}: {}", f.reason),
                None => f.reason.clone(),
            };
            allocation_check::record_violation(shared, &correlation_id, f.gpu_device, reason);
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
        shared.stop_on(&error);
        Err(error)
    }

    /// Whether the policy holds now and the manager has not stopped.
    #[must_use]
    pub fn is_vram_only(&self) -> bool {
        !self.is_stopped() && self.policy_report().is_clean()
    }

    /// Verifies `shard` fully ([`Self::verify_sealed`]: seal, digest of the bytes in VRAM,
    /// allocation facts), checks its device, and returns a statement of where it lives, signed
    /// with this manager's seal key and bound to the caller's `nonce` (so it cannot be replayed).
    /// A shard that fails verification gets no attestation, only the verification's error.
    ///
    /// # Errors
    /// Any error of [`Self::verify_sealed`]; [`VramError::PolicyViolation`] when the device
    /// breaks the policy; [`VramError::InvalidInput`] for a nonce over 256 bytes (checked
    /// first: nothing is verified or audited then).
    pub fn attest_vram_residency(
        &self,
        shard: &SealedShard,
        nonce: &[u8],
    ) -> Result<Attestation, VramError> {
        if nonce.len() > MAX_NONCE_BYTES {
            return Err(VramError::invalid_input(
                "attestation nonce",
                format!("{} bytes, at most {MAX_NONCE_BYTES}", nonce.len()),
            ));
        }
        self.verify_sealed(shard)?;
        let shared = &self.shared;
        let device = shared.backend().device_facts(shard.gpu_device)?;
        let problems =
            rules::device_problems(&device, shared.config().allow_pageable_memory_access);
        if !problems.is_empty() {
            return Err(VramError::PolicyViolation {
                device: shard.gpu_device,
                reason: problems.join("; "),
            });
        }
        let facts = self.allocation_facts(shard)?;
        Attestation {
            version: ATTESTATION_VERSION,
            worker_id: shared.config().worker_id.clone(),
            shard_id: shard.shard_id.clone(),
            gpu_device: shard.gpu_device,
            vram_bytes: shard.vram_bytes,
            digest: shard.digest.clone(),
            digest_algorithm: shard.digest_algorithm().to_string(),
            backend: self.backend_kind().to_string(),
            simulated: self.backend_kind() != BackendKind::Cuda,
            device_name: device.name,
            ecc_enabled: device.ecc_enabled,
            memory_type: facts.memory_type.to_string(),
            is_managed: facts.is_managed,
            device_ordinal: facts.device_ordinal,
            covers_shard: facts.covers_shard,
            checks_passed: CHECKS_PASSED.map(str::to_owned).to_vec(),
            attested_at_ms: shared.wall_ms(),
            nonce: hex::encode(nonce),
            signature: String::new(),
        }
        .signed(shared.key())
    }
}
