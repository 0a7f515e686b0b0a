//! Types, errors and input validation shared by the `vram-residency` crates.
//!
//! This crate provides:
//! - [`SealedShard`] (alias [`ModelShardHandle`]): a sealed model shard in VRAM, and
//!   [`SealedFields`], exactly what its seal covers;
//! - [`VramError`] and [`Result`]: the one error type of the workspace;
//! - [`VramConfig`]: how a manager is set up;
//! - [`DigestAlgorithm`]: the names of the digest algorithms (`sha256`, `sha256-tree-<leaf>`);
//! - [`validation`]: checked shard ids, device indices and model sizes;
//! - [`ShardAllocation`]: the trait a backend implements for the VRAM behind a shard;
//! - [`DeviceFacts`] and [`AllocationFacts`]: what a backend reports for the VRAM-only policy;
//! - [`ShardSource`] ([`FileSource`], byte slices): model bytes read at any offset while sealing;
//! - [`formats`]: what model files are made of (format, tensor table, header errors); the
//!   parsers are in `vram-formats`;
//! - [`GpuShare`]: how much of a GPU a digest of resident bytes may take;
//! - [`rfc3339_millis`]: timestamps as log pipelines read them.
//!
//! It has no GPU code and no cryptography (`vram-seal` has the cryptography).
//!
//! # Crate features
//! - `serde` (off): `Serialize` for [`SealedShard`] (public fields, algorithm id, seal).
//! - `test-utils` (off): lets tests replace a shard's seal signature, to forge seals.
#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        reason = "tests"
    )
)]

mod digest_algorithm;
mod error;
pub mod formats;
mod gpu_share;
mod residency_facts;
mod rfc3339;
mod sealed_shard;
mod shard_source;
pub mod validation;
mod vram_config;

pub use digest_algorithm::{
    DEFAULT_LEAF_BYTES, DigestAlgorithm, DigestKind, LeafSize, MAX_LEAF_BYTES, MIN_LEAF_BYTES,
};
pub use error::{CUDA_ERROR_OUT_OF_MEMORY, ErrorClass, KeyProblem, Result, SealFailure, VramError};
pub use gpu_share::{DEFAULT_BACKGROUND_SM_FRACTION, GpuShare};
pub use residency_facts::{AllocationFacts, BackendKind, DeviceFacts, MemoryType};
pub use rfc3339::{rfc3339_from_unix_millis, rfc3339_millis};
pub use sealed_shard::{
    ModelShardHandle, SEAL_SIGNATURE_LEN, SealSignature, SealedFields, SealedShard, ShardAllocation,
};
pub use shard_source::{FileSource, ShardSource};
pub use validation::ShardId;
pub use vram_config::{AuditFailurePolicy, VramConfig};
