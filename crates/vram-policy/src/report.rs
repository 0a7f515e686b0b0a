//! What the policy found, without acting on it.

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

/// Everything the policy found: devices, then live allocations, then the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyReport {
    /// Violations, in that order.
    pub findings: Vec<PolicyFinding>,
}

impl PolicyReport {
    /// Whether nothing breaks the policy.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}
