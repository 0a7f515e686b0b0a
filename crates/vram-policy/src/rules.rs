//! The policy's rules, as pure functions of reported facts (mechanism elsewhere, policy here).

use vram_types::DeviceFacts;

/// Environment variables that make well-known inference engines move model memory to managed
/// (unified) memory, with the value that turns them on.
pub const UNIFIED_MEMORY_SWITCHES: &[(&str, &str)] = &[("GGML_CUDA_ENABLE_UNIFIED_MEMORY", "1")];

/// Why a device cannot hold VRAM-only shards; empty when it can.
#[must_use]
pub fn device_problems(facts: &DeviceFacts, allow_pageable_memory_access: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if facts.integrated {
        problems.push(
            "integrated GPU: it has no memory of its own, every allocation is host RAM".to_owned(),
        );
    }
    if facts.pageable_memory_access && !allow_pageable_memory_access {
        problems.push(
            "pageable memory access (HMM/ATS) is on: kernels can read host RAM without any CUDA allocation"
                .to_owned(),
        );
    }
    if !facts.unified_addressing {
        problems.push(
            "no unified addressing: allocations cannot be checked pointer by pointer".to_owned(),
        );
    }
    problems
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
    fn discrete_gpu_passes_and_each_bad_fact_is_named() {
        let good = DeviceFacts::discrete(0, "gpu", 1 << 30);
        assert!(device_problems(&good, false).is_empty());
        let integrated = DeviceFacts {
            integrated: true,
            ..good.clone()
        };
        assert!(device_problems(&integrated, false)[0].contains("integrated"));
        let hmm = DeviceFacts {
            pageable_memory_access: true,
            ..good.clone()
        };
        assert!(device_problems(&hmm, false)[0].contains("pageable"));
        assert!(device_problems(&hmm, true).is_empty(), "allowed explicitly");
        let no_uva = DeviceFacts {
            unified_addressing: false,
            ..good
        };
        assert!(device_problems(&no_uva, false)[0].contains("unified addressing"));
    }

    #[test]
    fn unified_memory_switch_is_found() {
        assert!(environment_problems(|_| None).is_empty());
        assert!(environment_problems(|_| Some("0".into())).is_empty());
        let found =
            environment_problems(|n| (n == "GGML_CUDA_ENABLE_UNIFIED_MEMORY").then(|| "1".into()));
        assert_eq!(found.len(), 1);
    }
}
