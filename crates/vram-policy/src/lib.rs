//! The VRAM-only policy: model bytes live in device memory and nowhere else.
//!
//! This crate provides:
//! - [`rules`]: what disqualifies the environment (a known switch to unified memory); what
//!   disqualifies a device (integrated GPU, pageable memory access, no unified addressing) is
//!   `DeviceFacts::vram_only_problems`, shared with the manager's start-up check;
//! - [`VramOnlyPolicy`]: `enforce_vram_only_policy`, `is_vram_only` and
//!   `attest_vram_residency` on a [`VramManager`](vram_alloc::VramManager) (consumer contract §4).
//!   A violation is a typed error and a critical audit event, and the manager then refuses to
//!   seal or verify;
//! - [`Attestation`]: a MAC-signed statement of where a shard lives, checked with
//!   [`verify_attestation`] by anyone holding the seal key (`.specs/attestation.md`).
//!
//! The driver cannot be told to "disable" unified or zero-copy memory; the policy refuses them
//! instead: per allocation on every seal and verify (in `vram-alloc`), per device and
//! environment here.
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
mod enforcement;
pub mod rules;

pub use attestation::{ATTESTATION_VERSION, Attestation, verify_attestation};
pub use enforcement::{PolicyFinding, PolicyReport, VramOnlyPolicy};
