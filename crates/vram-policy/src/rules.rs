//! The policy's rules, as pure functions of reported facts (mechanism elsewhere, policy here).

use vram_types::DeviceFacts;

/// Environment variables that make well-known inference engines move model memory to managed
/// (unified) memory, with the value that turns them on.
pub const UNIFIED_MEMORY_SWITCHES: &[(&str, &str)] = &[("GGML_CUDA_ENABLE_UNIFIED_MEMORY", "1")];

/// Why a device cannot hold VRAM-only shards; empty when it can (see
/// [`DeviceFacts::vram_only_problems`], shared with the manager's start-up check).
#[must_use]
pub fn device_problems(facts: &DeviceFacts, allow_pageable_memory_access: bool) -> Vec<String> {
    facts.vram_only_problems(allow_pageable_memory_access)
}

/// Environment switches to unified memory that are on; `lookup` reads a variable.
#[must_use]
pub fn environment_problems(lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
    UNIFIED_MEMORY_SWITCHES
        .iter()
        .filter(|(name, on)| lookup(name).is_some_and(|v| v.trim() == *on))
        .map(|(name, on)| {
            format!("{name}={on} is set: the inference engine would place weights in managed (unified) memory")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_memory_switch_is_found() {
        assert!(environment_problems(|_| None).is_empty());
        assert!(environment_problems(|_| Some("0".into())).is_empty());
        let found =
            environment_problems(|n| (n == "GGML_CUDA_ENABLE_UNIFIED_MEMORY").then(|| "1".into()));
        assert_eq!(found.len(), 1);
    }
}
