//! Seal AI model shards into GPU memory (VRAM) and keep them provably there and unchanged.
//!
//! An inference worker uploads a model's bytes, seals them (a SHA-256 tree digest and an
//! HMAC-SHA256 seal under a per-worker key), refuses any RAM fallback, re-verifies the bytes in
//! VRAM before every request, and leaves an audit trail and metrics behind.
//!
//! ```
//! use std::sync::Arc;
//! use vram_residency::{audit::InMemoryAuditSink, MockBackend, SealKey, SealOptions, VramConfig,
//!                      VramError, VramManager, verify_attestation};
//!
//! // On a GPU machine: VramManager::builder() without `.mock(..)` uses every GPU.
//! let audit = Arc::new(InMemoryAuditSink::new());
//! let key = || SealKey::derive(b"worker-api-token-from-the-orchestrator", "worker-1");
//! let manager = VramManager::builder()
//!     .mock(Arc::new(MockBackend::with_capacity(64 << 20)))
//!     .config(VramConfig { worker_id: "worker-1".into(), ..VramConfig::default() })
//!     .seal_key(key()?)
//!     .audit_sink(audit.clone())
//!     .build()?;
//! manager.enforce_vram_only_policy()?; // at startup: refuse unified/zero-copy/pinned paths
//!
//! let bytes = vec![7u8; 5 << 20];
//! let shard = manager.seal_from_source(&bytes.as_slice(), 0, &SealOptions::new().shard_id("llama.0"))?;
//! manager.verify_sealed(&shard)?; // before every inference request
//! let att = manager.attest_vram_residency(&shard, b"nonce-from-the-scheduler")?;
//! verify_attestation(&key()?, &att, b"nonce-from-the-scheduler")?; // anyone with the key
//!
//! let mut edited = shard.clone();
//! edited.vram_bytes -= 1; // a sealed field changed after sealing...
//! assert!(matches!(manager.verify_sealed(&edited), Err(VramError::SealVerificationFailed { .. })));
//! assert!(manager.is_stopped()); // ...and the worker stops serving
//! # Ok::<(), VramError>(())
//! ```
//!
//! # Crate map
//! This crate only re-exports, each item under one name: [`vram_types`] (types, errors,
//! validation), [`vram_formats`] (model file headers and tensor tables), [`vram_seal`]
//! (digest, seal, key), [`vram_policy`] (the VRAM-only rules and the
//! attestation format) and [`vram_alloc`] (the manager, the mock backend, audit, metrics).
//! `public-api.txt` beside this crate lists every exported name; `cargo xtask ci` fails when
//! the list and the exports differ, so an addition is seen in review.
//!
//! # Crate features
//! - `serde` (off): `Serialize` for [`SealedShard`].
//! - `test-utils` (off): the `test_utils` module (mock manager and shard for consumers' test
//!   suites) and the mock backend's fault injection and corruption hooks. Never in production:
//!   a default build has no way to write into a resident shard or forge a seal.
#![forbid(unsafe_code)]

#[doc(inline)]
pub use vram_types::{
    AllocationFacts, AuditFailurePolicy, BackendKind, DeviceFacts, DigestAlgorithm, ErrorClass,
    FileSource, GpuShare, KeyProblem, LeafSize, MemoryType, ModelShardHandle, Result, SealFailure,
    SealSignature, SealedFields, SealedShard, ShardAllocation, ShardId, ShardSource, VramConfig,
    VramError, validation,
};

/// Model files (safetensors, GGUF): headers checked and tensor tables read before any VRAM is
/// used.
pub use vram_formats as formats;

#[doc(inline)]
pub use vram_seal::{
    SealKey, ShardDigest, compute_signature, digest::digest as compute_digest, verify_signature,
};

/// Digest building blocks beyond [`compute_digest`]: streaming, serial, from a source, and the
/// tree's leaf functions (`.specs/digest.md`).
pub mod digest {
    #[doc(inline)]
    pub use vram_seal::digest::{
        DigestHasher, digest_serial, digest_source, parse_tagged, tagged, tree,
    };
}

/// The model digest over every tensor of a model (`.specs/model-digest.md`).
pub mod model {
    #[doc(inline)]
    pub use vram_seal::model::{TAG, TensorEntry, encode_model, model_digest};
}

/// The worker token file, read the same way by every caller (`vramctl`, the Python package).
pub mod token {
    #[doc(inline)]
    pub use vram_seal::token::{
        MAX_TOKEN_FILE_BYTES, TOKEN_ENV, TokenFile, TokenFileError, read_token_file, token_from_env,
    };
}

#[doc(inline)]
pub use vram_policy::{
    Attestation, PolicyFinding, PolicyReport, decode_statement, rules, verify_attestation,
};

#[doc(inline)]
pub use vram_alloc::{
    DeviceUsage, EngineStream, EngineTensor, ExecutionCounts, ExecutionMode, ExpectedFrom,
    ForeignRange, GroupPart, GroupPlan, LentTensor, ModelDigests, ModelExecution, ModelWeights,
    PlanError, PlanStep, QueuedDigests, RangeDigester, ScrubEvent, ScrubOptions, Scrubber,
    SealOptions, SealPart, SealPlan, SealedGroup, SealedModel, SealedTensor, StepReport,
    StepScrubOptions, StepScrubber, UpdateExpectation, VramManager, VramManagerBuilder,
    VramMetrics, Weights, audit, probe_gpus,
};

#[doc(inline)]
pub use vram_alloc::backend::{HostTensor, MockBackend, MockBuilder};

/// Helpers for consumers' test suites (consumer contract §7.1).
#[cfg(feature = "test-utils")]
pub mod test_utils {
    use std::time::SystemTime;

    use vram_types::{DigestAlgorithm, SealedFields, SealedShard, VramError};

    use crate::VramManager;

    /// A manager on the mock backend with one simulated 1 GiB device.
    #[must_use]
    pub fn mock_vram_manager() -> VramManager {
        VramManager::with_capacity(1 << 30)
    }

    /// A shard with plausible fields and a valid-looking seal under a throwaway key, but no VRAM
    /// behind it: every manager's `verify_sealed` answers [`VramError::NotSealed`].
    ///
    /// # Errors
    /// [`VramError::Unreachable`] if no random key can be made.
    pub fn mock_sealed_shard(gpu_device: u32) -> Result<SealedShard, VramError> {
        let bytes = b"mock model bytes";
        let algorithm = DigestAlgorithm::default();
        let now = SystemTime::now();
        let fields = SealedFields {
            shard_id: format!("mock-shard-gpu{gpu_device}"),
            gpu_device,
            vram_bytes: bytes.len(),
            digest_algorithm: algorithm,
            digest: vram_seal::digest(bytes, algorithm).to_hex(),
            sealed_at: Some(now),
            shard_index: None,
            total_shards: None,
        };
        let key = vram_seal::SealKey::generate()?;
        let signature = vram_seal::compute_signature(&key, &fields)?;
        Ok(SealedShard::from_parts(fields, now, signature, None))
    }
}

/// The README's Rust snippets, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
