//! Shard ids: how every id a seal gives is made, and the one place an id is claimed.
//!
//! An id is claimed before its shard is registered, so two seals of one id race to one
//! winner: the caller's ids (and a set's member ids) when the plan is made, before anything is
//! placed; an id derived from the content once its digest is known.

use std::sync::Arc;

use vram_types::VramError;
use vram_types::validation::ShardId;

use super::super::seal_options::SealOptions;
use super::super::shared::{Claim, Shared};

/// Claims `shard_id` for a seal in progress: [`VramError::AlreadySealed`] while a shard of
/// that id is live or being sealed. The claim is given back on drop unless the shard is
/// registered.
pub(super) fn claim(shared: &Arc<Shared>, shard_id: &str) -> Result<Claim, VramError> {
    shared.claim(shard_id)
}

/// The caller's id, or one derived from the content and place: `shard-<16 hex>-gpu<N>`, with
/// `-tp<i>of<n>` for a tensor-parallel shard (two shards of one model may hold identical bytes
/// on one device; they are different shards). Derived from the content, so sealing the same
/// bytes twice on one device fails instead of keeping two copies (the contract's idempotency
/// rule).
pub(super) fn shard_id(options: &SealOptions, digest_hex: &str, device: u32) -> Option<String> {
    if let Some(id) = &options.shard_id {
        return Some(id.clone());
    }
    let content = digest_hex.get(..16)?;
    Some(match options.tensor_parallel {
        None => format!("shard-{content}-gpu{device}"),
        Some((i, n)) => format!("shard-{content}-gpu{device}-tp{i}of{n}"),
    })
}

/// Shard `index` of a tensor-parallel group: `<model_id>:tp<index>`.
pub(super) fn group_member(model_id: &str, index: usize) -> String {
    format!("{model_id}:tp{index}")
}

/// A tensor of a model sealed in place: `<model_id>:<name>` when that is a valid shard id,
/// else `<model_id>:@<index>` (a name with characters a shard id cannot hold, or too long).
pub(super) fn model_tensor(model_id: &str, name: &str, index: usize) -> String {
    let by_name = format!("{model_id}:{name}");
    if ShardId::new(&by_name).is_ok() {
        by_name
    } else {
        format!("{model_id}:@{index}")
    }
}

#[cfg(test)]
mod tests {
    use super::{group_member, model_tensor, shard_id};
    use crate::SealOptions;

    #[test]
    fn a_tensor_is_named_by_its_name_when_a_shard_id_can_hold_it() {
        assert_eq!(
            model_tensor("llama", "model.layers.0.mlp.up_proj.weight", 3),
            "llama:model.layers.0.mlp.up_proj.weight"
        );
        assert_eq!(model_tensor("llama", "a b", 3), "llama:@3");
        assert_eq!(model_tensor("llama", &"x".repeat(300), 7), "llama:@7");
    }

    #[test]
    fn derived_ids_carry_the_content_the_device_and_the_tensor_parallel_place() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(
            shard_id(&SealOptions::new(), &hex, 2).as_deref(),
            Some("shard-0123456789abcdef-gpu2")
        );
        assert_eq!(
            shard_id(&SealOptions::new().tensor_parallel(1, 4), &hex, 0).as_deref(),
            Some("shard-0123456789abcdef-gpu0-tp1of4")
        );
        assert_eq!(
            shard_id(&SealOptions::new().shard_id("mine"), &hex, 0).as_deref(),
            Some("mine")
        );
        assert_eq!(shard_id(&SealOptions::new(), "short", 0), None);
        assert_eq!(group_member("llama", 3), "llama:tp3");
    }
}
