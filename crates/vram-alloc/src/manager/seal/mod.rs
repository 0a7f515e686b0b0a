//! Every seal is a plan. Uploads, ranges sealed in place, a model's tensors and a
//! tensor-parallel group all go through one planner and one set of typed steps:
//!
//! - [`entry`]: the public one-line entry points (`seal_model`, `seal_in_place`,
//!   `seal_model_in_place`, `seal_model_group`, `plan_seal`, ...), each a plan.
//! - [`plan`]: the one pre-flight. It checks every id, size and device, claims the ids
//!   ([`ids`]), reserves each device's share (skipped for parts sealed in place), and executes
//!   the parts one by one or, for a model, with one batched digest; then the set's epilogue
//!   (group seal or model digest) and the fail-closed records.
//! - [`preflight`]: the checks a plan makes before a byte is placed.
//! - [`steps`]: one part through `Placed → Uploaded → Digested → Signed → registered`, and what
//!   a failed part leaves behind (a `SealAborted` record, and the stop rule for a security
//!   failure).
//! - [`ids`]: how ids are made, and the one place they are claimed.

mod entry;
mod ids;
mod plan;
mod preflight;
mod steps;

pub(super) use entry::seal_model_set;
pub use plan::{GroupPlan, PlanError, PlanStep, SealPart, SealPlan};
