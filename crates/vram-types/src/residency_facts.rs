//! Facts a backend reports about a device and about one allocation: the evidence the VRAM-only
//! policy decides on (`vram-policy::rules`) and an attestation records. The values come from the CUDA driver
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
}
