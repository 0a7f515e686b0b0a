//! Facts a backend reports about a device and about one allocation: the evidence the VRAM-only
//! policy decides on and an attestation records. The values come from the CUDA driver
//! (`cuDeviceGetAttribute`, `cuPointerGetAttributes`) or from the mock backend's simulation.

use std::fmt;

/// Which backend produced the facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// Real GPU memory through the CUDA driver.
    Cuda,
    /// The in-memory test double: its "VRAM" is host memory, and it says so.
    Mock,
}

impl BackendKind {
    /// `cuda` or `mock`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Cuda => "cuda",
            Self::Mock => "mock",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Device attributes that decide whether a GPU can hold VRAM-only shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// CUDA device index.
    pub ordinal: u32,
    /// Marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total device memory in bytes.
    pub total_memory: usize,
    /// `INTEGRATED`: the GPU has no memory of its own (it shares host RAM).
    pub integrated: bool,
    /// `UNIFIED_ADDRESSING`: needed for the per-pointer checks.
    pub unified_addressing: bool,
    /// `MANAGED_MEMORY`: managed (unified) allocations are possible on the device.
    pub managed_memory: bool,
    /// `PAGEABLE_MEMORY_ACCESS` (HMM/ATS): kernels can read plain host memory with no CUDA
    /// call, a RAM path the allocation checks cannot see.
    pub pageable_memory_access: bool,
    /// `CAN_MAP_HOST_MEMORY`: zero-copy host mappings are possible.
    pub can_map_host_memory: bool,
    /// `ECC_ENABLED`, when known.
    pub ecc_enabled: Option<bool>,
    /// CUDA driver version as `major.minor`, when known.
    pub driver_version: Option<String>,
}

impl DeviceFacts {
    /// The facts of a discrete GPU with its own memory, as the mock simulates by default.
    #[must_use]
    pub fn discrete(ordinal: u32, name: impl Into<String>, total_memory: usize) -> Self {
        Self {
            ordinal,
            name: name.into(),
            total_memory,
            integrated: false,
            unified_addressing: true,
            managed_memory: true,
            pageable_memory_access: false,
            can_map_host_memory: true,
            ecc_enabled: Some(true),
            driver_version: None,
        }
    }
}

impl DeviceFacts {
    /// Why this device cannot hold VRAM-only shards; empty when it can. Pageable memory access
    /// (HMM/ATS) is a problem unless `allow_pageable_memory_access`.
    #[must_use]
    pub fn vram_only_problems(&self, allow_pageable_memory_access: bool) -> Vec<String> {
        let mut problems = Vec::new();
        if self.integrated {
            problems.push(
                "integrated GPU: it has no memory of its own, every allocation is host RAM"
                    .to_owned(),
            );
        }
        if self.pageable_memory_access && !allow_pageable_memory_access {
            problems.push(
                "pageable memory access (HMM/ATS) is on: kernels can read host RAM without any CUDA allocation"
                    .to_owned(),
            );
        }
        if !self.unified_addressing {
            problems.push(
                "no unified addressing: allocations cannot be checked pointer by pointer"
                    .to_owned(),
            );
        }
        problems
    }
}

/// Where an allocation's bytes live, as the driver reports it (`CU_POINTER_ATTRIBUTE_MEMORY_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemoryType {
    /// Device memory (managed memory also reports this; see [`AllocationFacts::is_managed`]).
    Device,
    /// Host memory known to CUDA: pinned, zero-copy mapped or registered.
    Host,
    /// Memory CUDA does not know: plain `malloc`/pageable host memory.
    Unregistered,
    /// The mock backend's simulated device memory (really host memory).
    Simulated,
}

impl MemoryType {
    /// `device`, `host`, `unregistered` or `simulated`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Host => "host",
            Self::Unregistered => "unregistered",
            Self::Simulated => "simulated",
        }
    }
}

impl fmt::Display for MemoryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the driver says about one allocation (one `cuPointerGetAttributes` call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocationFacts {
    /// Where the bytes live.
    pub memory_type: MemoryType,
    /// `IS_MANAGED`: managed (unified) memory, which claims `Device` but migrates to RAM.
    pub is_managed: bool,
    /// `DEVICE_ORDINAL`: the device that owns the memory.
    pub device_ordinal: u32,
    /// Whether the allocation range (`RANGE_START_ADDR`, `RANGE_SIZE`) covers the whole shard.
    pub covers_shard: bool,
}

impl AllocationFacts {
    /// Facts of a plain device allocation on `device` that covers its shard.
    #[must_use]
    pub const fn device(device: u32) -> Self {
        Self {
            memory_type: MemoryType::Device,
            is_managed: false,
            device_ordinal: device,
            covers_shard: true,
        }
    }

    /// Builds facts from their parts (backends and tests).
    #[must_use]
    pub const fn new(
        memory_type: MemoryType,
        is_managed: bool,
        device_ordinal: u32,
        covers_shard: bool,
    ) -> Self {
        Self {
            memory_type,
            is_managed,
            device_ordinal,
            covers_shard,
        }
    }

    /// Why these facts do not describe device-only memory of `expected_device` holding the
    /// whole shard; `None` when they do. The mock's simulated memory passes only with
    /// `allow_simulated` (a manager built on the mock on purpose).
    #[must_use]
    pub fn residency_problem(&self, expected_device: u32, allow_simulated: bool) -> Option<String> {
        match self.memory_type {
            MemoryType::Device => {}
            MemoryType::Simulated if allow_simulated => {}
            other => return Some(format!("allocation is {other} memory, not device memory")),
        }
        if self.is_managed {
            return Some(
                "allocation is managed (unified) memory, which can migrate to host RAM".into(),
            );
        }
        if self.device_ordinal != expected_device {
            return Some(format!(
                "allocation belongs to GPU {}, expected GPU {expected_device}",
                self.device_ordinal
            ));
        }
        if !self.covers_shard {
            return Some("allocation range does not cover the whole shard".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discrete_gpu_passes_and_each_bad_device_fact_is_named() {
        let good = DeviceFacts::discrete(0, "gpu", 1 << 30);
        assert!(good.vram_only_problems(false).is_empty());
        let integrated = DeviceFacts {
            integrated: true,
            ..good.clone()
        };
        assert!(integrated.vram_only_problems(false)[0].contains("integrated"));
        let hmm = DeviceFacts {
            pageable_memory_access: true,
            ..good.clone()
        };
        assert!(hmm.vram_only_problems(false)[0].contains("pageable"));
        assert!(
            hmm.vram_only_problems(true).is_empty(),
            "allowed explicitly"
        );
        let no_uva = DeviceFacts {
            unified_addressing: false,
            ..good
        };
        assert!(no_uva.vram_only_problems(false)[0].contains("unified addressing"));
    }

    #[test]
    fn only_plain_device_memory_of_the_right_device_passes() {
        assert_eq!(AllocationFacts::device(2).residency_problem(2, false), None);
        let managed = AllocationFacts::new(MemoryType::Device, true, 0, true);
        assert!(
            managed
                .residency_problem(0, false)
                .unwrap()
                .contains("managed")
        );
        let pinned = AllocationFacts::new(MemoryType::Host, false, 0, true);
        assert!(
            pinned
                .residency_problem(0, false)
                .unwrap()
                .contains("host memory")
        );
        let malloc = AllocationFacts::new(MemoryType::Unregistered, false, 0, false);
        assert!(malloc.residency_problem(0, false).is_some());
        assert!(
            AllocationFacts::device(1)
                .residency_problem(0, false)
                .unwrap()
                .contains("GPU 1")
        );
        let partial = AllocationFacts::new(MemoryType::Device, false, 0, false);
        assert!(
            partial
                .residency_problem(0, false)
                .unwrap()
                .contains("cover")
        );
        let simulated = AllocationFacts::new(MemoryType::Simulated, false, 0, true);
        assert!(simulated.residency_problem(0, false).is_some());
        assert_eq!(simulated.residency_problem(0, true), None);
    }
}
