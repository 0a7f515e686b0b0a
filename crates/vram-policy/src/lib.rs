//! The VRAM-only policy: model bytes live in device memory and nowhere else.
//!
//! This crate holds the policy's pure parts, with no GPU code and no manager:
//! - [`rules`]: what disqualifies a device (integrated GPU, pageable memory access, no unified
//!   addressing), an allocation (host, managed or simulated memory, another device, a range that
//!   does not cover the shard) and the environment (a known switch to unified memory);
//! - [`Attestation`]: the format of a MAC-signed statement of where a shard lives
//!   (`.specs/attestation.md`), its decoder [`decode_statement`] and [`verify_attestation`], for
//!   anyone holding the seal key;
//! - [`PolicyReport`]: what a check found.
//!
//! The power sits with the manager (`vram-alloc`): it applies these rules at start-up and on
//! every seal and verification, enforces them (`enforce_vram_only_policy`), and signs
//! attestations with its own key, only for shards it has just verified
//! (`docs/adr/0005-policy-below-the-manager.md`).
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

mod attestation;
mod report;
pub mod rules;

pub use attestation::{
    ATTESTATION_VERSION, Attestation, MAX_NONCE_BYTES, decode_statement, verify_attestation,
};
pub use report::{PolicyFinding, PolicyReport};
