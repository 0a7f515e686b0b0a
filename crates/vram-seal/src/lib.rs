//! Digests, seals and seal keys for `vram-residency`. No GPU code, no `unsafe`.
//!
//! This crate provides:
//! - [`digest`](mod@digest): the shard digest. The default `sha256-tree-<leaf>` hashes fixed-size leaves
//!   in parallel and folds them into one root (`.specs/digest.md`); `sha256` is the plain
//!   SHA-256 of the bytes, for matching external manifests. Streaming, parallel and
//!   leaf-by-leaf forms give the same digest.
//! - [`signature`]: the HMAC-SHA256 seal over a canonical, versioned encoding of every sealed
//!   field (`.specs/seal.md`), verified in constant time.
//! - [`SealKey`]: the per-worker seal key, derived with HKDF-SHA256 from a worker token and
//!   worker id, zeroized on drop and never printed.
//! - [`model`]: the model digest over every tensor's name, dtype, shape, length and digest
//!   (`.specs/model-digest.md`).
//! - [`token`]: reading the worker token from its file, the same way for every caller.
//! - [`audit_key`]: the Ed25519 key derived from the seal key that signs audit-log
//!   checkpoints, and the checkpoint format (`.specs/audit.md`).
//!
//! ```
//! use std::time::SystemTime;
//! use vram_seal::{SealKey, digest::digest, signature::{compute_signature, verify_signature}};
//! use vram_types::{DigestAlgorithm, SealedFields};
//!
//! let key = SealKey::derive(b"worker-api-token-0123456789", "worker-1")?;
//! let bytes = vec![7u8; 1 << 20];
//! let algorithm = DigestAlgorithm::default(); // sha256-tree-65536
//! let fields = SealedFields {
//!     shard_id: "llama-shard-0".into(),
//!     gpu_device: 0,
//!     vram_bytes: bytes.len(),
//!     digest_algorithm: algorithm,
//!     digest: digest(&bytes, algorithm).to_hex(),
//!     sealed_at: Some(SystemTime::now()),
//!     shard_index: None,
//!     total_shards: None,
//! };
//! let seal = compute_signature(&key, &fields)?;
//! verify_signature(&key, &fields, &seal)?;
//!
//! let mut forged = fields.clone();
//! forged.vram_bytes += 1;
//! assert!(verify_signature(&key, &forged, &seal).is_err());
//! # Ok::<(), vram_types::VramError>(())
//! ```
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

pub mod audit_key;
pub mod digest;
pub mod encoding;
pub mod group;
mod key;
pub mod model;
pub mod signature;
pub mod token;

pub use audit_key::{AuditKeyError, AuditPublicKey, AuditSigningKey, Checkpoint};
pub use digest::{ShardDigest, digest};
pub use key::{MAX_KEY_BYTES, MIN_KEY_BYTES, MIN_TOKEN_BYTES, SealKey};
pub use signature::{compute_signature, verify_signature};
