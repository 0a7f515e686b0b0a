//! Environment rules of the policy, as pure functions. Device rules live with the facts they
//! judge (`DeviceFacts::vram_only_problems` in `vram-types`), so the manager's start-up check and
//! the policy share one definition.

/// Environment variables that make well-known inference engines move model memory to managed
/// (unified) memory, with the value that turns them on.
pub const UNIFIED_MEMORY_SWITCHES: &[(&str, &str)] = &[("GGML_CUDA_ENABLE_UNIFIED_MEMORY", "1")];

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
