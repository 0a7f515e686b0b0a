//! The rules of the VRAM-only policy, as pure functions over the facts a backend reports: what
//! disqualifies a device, an allocation, and the environment. The manager applies them at
//! start-up, on every seal and verification, and in `enforce_vram_only_policy`.

use vram_types::{AllocationFacts, DeviceFacts, MemoryType};

/// Why `device` cannot hold VRAM-only shards; empty when it can. Pageable memory access
/// (HMM/ATS) is a problem unless `allow_pageable_memory_access`.
#[must_use]
pub fn device_problems(device: &DeviceFacts, allow_pageable_memory_access: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if device.integrated {
        problems.push(
            "integrated GPU: it has no memory of its own, every allocation is host RAM".to_owned(),
        );
    }
    if device.pageable_memory_access && !allow_pageable_memory_access {
        problems.push(
            "pageable memory access (HMM/ATS) is on: kernels can read host RAM without any CUDA allocation"
                .to_owned(),
        );
    }
    if !device.unified_addressing {
        problems.push(
            "no unified addressing: allocations cannot be checked pointer by pointer".to_owned(),
        );
    }
    problems
}

/// Why `facts` do not describe device-only memory of `expected_device` holding the whole
/// shard; `None` when they do. The mock's simulated memory passes only with `allow_simulated`
/// (a manager built on the mock on purpose).
#[must_use]
pub fn allocation_problem(
    facts: &AllocationFacts,
    expected_device: u32,
    allow_simulated: bool,
) -> Option<String> {
    match facts.memory_type {
        MemoryType::Device => {}
        MemoryType::Simulated if allow_simulated => {}
        other => return Some(format!("allocation is {other} memory, not device memory")),
    }
    if facts.is_managed {
        return Some(
            "allocation is managed (unified) memory, which can migrate to host RAM".into(),
        );
    }
    if facts.device_ordinal != expected_device {
        return Some(format!(
            "allocation belongs to GPU {}, expected GPU {expected_device}",
            facts.device_ordinal
        ));
    }
    if !facts.covers_shard {
        return Some("allocation range does not cover the whole shard".into());
    }
    None
}

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

    #[test]
    fn discrete_gpu_passes_and_each_bad_device_fact_is_named() {
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
    fn only_plain_device_memory_of_the_right_device_passes() {
        let problem = |f: AllocationFacts, d, sim| allocation_problem(&f, d, sim);
        assert_eq!(problem(AllocationFacts::device(2), 2, false), None);
        let managed = AllocationFacts::new(MemoryType::Device, true, 0, true);
        assert!(problem(managed, 0, false).unwrap().contains("managed"));
        let pinned = AllocationFacts::new(MemoryType::Host, false, 0, true);
        assert!(problem(pinned, 0, false).unwrap().contains("host memory"));
        let malloc = AllocationFacts::new(MemoryType::Unregistered, false, 0, false);
        assert!(problem(malloc, 0, false).is_some());
        assert!(
            problem(AllocationFacts::device(1), 0, false)
                .unwrap()
                .contains("GPU 1")
        );
        let partial = AllocationFacts::new(MemoryType::Device, false, 0, false);
        assert!(problem(partial, 0, false).unwrap().contains("cover"));
        let simulated = AllocationFacts::new(MemoryType::Simulated, false, 0, true);
        assert!(problem(simulated, 0, false).is_some());
        assert_eq!(problem(simulated, 0, true), None);
    }
}
