//! Sealing: validate → claim the id → reserve capacity → allocate → upload → check the
//! allocation is device memory → digest the resident bytes → seal → register → audit.
//!
//! Each step that holds a resource holds it in a guard ([`Reservation`], [`PlacedBuffer`],
//! [`Claim`]), so a failure at any step leaves no allocation, no reservation and no claimed id.
//! Rejected input returns before anything is reserved or audited.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use vram_policy::rules;
use vram_seal::{ShardDigest, compute_signature};
use vram_types::validation::{validate_gpu_device, validate_model_size};
use vram_types::{
    BackendKind, GpuShare, SealSignature, SealedFields, SealedShard, ShardAllocation, ShardId,
    ShardSource, VramError,
};

use super::seal_options::{CrossCheck, SealOptions};
use super::shared::{Claim, Shared};
use crate::audit::AuditEvent;
use crate::backend::{BufferId, ChunkObserver, round_up};
use crate::capacity::{DeviceCapacity, Reservation};
use crate::manager::resident::ResidentAllocation;

/// What the caller asked to seal.
pub(super) struct SealRequest<'a> {
    pub(super) source: &'a dyn ShardSource,
    pub(super) device: u32,
    pub(super) options: &'a SealOptions,
    /// The group the shard belongs to: its `VramSealed` record names the group and is held
    /// back until the whole group is placed (nothing is audited as sealed otherwise).
    pub(super) group: Option<&'a str>,
}

/// A sealed shard, with its `VramSealed` record when the request held it back (a group's).
pub(super) struct Sealed {
    pub(super) shard: SealedShard,
    pub(super) held_back: Option<(String, AuditEvent)>,
}

/// A device buffer freed on drop unless handed over.
struct PlacedBuffer<'a> {
    shared: &'a Shared,
    buffer: Option<BufferId>,
}

impl PlacedBuffer<'_> {
    fn id(&self) -> Result<BufferId, VramError> {
        self.buffer.ok_or(VramError::Unreachable(
            "buffer taken before the seal completed",
        ))
    }

    fn hand_over(mut self) -> Result<BufferId, VramError> {
        self.buffer
            .take()
            .ok_or(VramError::Unreachable("buffer handed over twice"))
    }
}

impl Drop for PlacedBuffer<'_> {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take()
            && let Err(e) = self.shared.backend.free(buffer)
        {
            tracing::error!(error = %e, "freeing a partly sealed buffer failed");
        }
    }
}

/// Checks the request; returns the caller's id, if any, and the shard's length.
fn validate(shared: &Shared, req: &SealRequest<'_>) -> Result<(Option<ShardId>, usize), VramError> {
    let id = req
        .options
        .shard_id
        .as_deref()
        .map(ShardId::new)
        .transpose()?;
    validate_gpu_device(req.device, shared.backend.device_count())?;
    let len = usize::try_from(req.source.len()).map_err(|_| {
        VramError::invalid_input(
            "model size",
            format!(
                "{} bytes do not fit this host's address space",
                req.source.len()
            ),
        )
    })?;
    validate_model_size(len, shared.config.max_model_bytes)?;
    if let Some((index, total)) = req.options.tensor_parallel
        && (total == 0 || index >= total)
    {
        return Err(VramError::invalid_input(
            "shard index",
            format!("index {index} of {total} shards; need index < total and total > 0"),
        ));
    }
    Ok((id, len))
}

pub(super) fn seal(shared: &Arc<Shared>, req: &SealRequest<'_>) -> Result<Sealed, VramError> {
    shared.ensure_running()?;
    let (id, len) = validate(shared, req)?;
    let claim = id
        .as_ref()
        .map(|id| shared.claim(id.as_str()))
        .transpose()?;
    let correlation_id = shared.next_correlation_id();
    let result = place_and_seal(shared, req, len, claim, &correlation_id);
    shared.metrics.count_seal(req.device, result.is_ok());
    shared.refresh_capacity_metrics(req.device);
    result
}

fn reserve(
    shared: &Shared,
    device: u32,
    len: usize,
    correlation_id: &str,
) -> Result<Reservation, VramError> {
    let needed = round_up(len, shared.backend.granularity()).ok_or_else(|| {
        VramError::invalid_input("model size", format!("{len} bytes cannot be allocated"))
    })?;
    let refuse = |available: usize| {
        shared.record_or_stop(
            correlation_id,
            AuditEvent::VramAllocationFailed {
                gpu_device: device,
                requested: needed,
                available,
                reason: "insufficient VRAM".into(),
            },
        );
        tracing::warn!(
            gpu_device = device,
            requested = needed,
            available,
            "insufficient VRAM"
        );
        VramError::InsufficientVram {
            needed,
            available,
            device,
        }
    };
    let reservation =
        DeviceCapacity::try_reserve(shared.capacity(device)?, needed).map_err(refuse)?;
    // Our accounting admits it; the device must also have it free now (other processes count).
    let free = shared.backend.memory_info(device)?.free;
    if free < needed {
        return Err(refuse(free));
    }
    Ok(reservation)
}

fn place_and_seal(
    shared: &Arc<Shared>,
    req: &SealRequest<'_>,
    len: usize,
    claim: Option<Claim>,
    correlation_id: &str,
) -> Result<Sealed, VramError> {
    let device = req.device;
    let reservation = reserve(shared, device, len, correlation_id)?;
    let placed = PlacedBuffer {
        shared,
        buffer: Some(shared.backend.allocate(device, len).inspect_err(|e| {
            shared.record_or_stop(
                correlation_id,
                AuditEvent::VramAllocationFailed {
                    gpu_device: device,
                    requested: reservation.bytes(),
                    available: shared.capacity(device).map_or(0, |c| c.available()),
                    reason: e.to_string(),
                },
            );
        })?),
    };
    let (fields, now, signature, claim) =
        match prepare(shared, req, len, claim, &placed, correlation_id) {
            Ok(prepared) => prepared,
            Err(e) => {
                // Release first, then record that the allocation came and went.
                let reserved_bytes = reservation.bytes();
                drop(placed);
                drop(reservation);
                shared.record_or_stop(
                    correlation_id,
                    AuditEvent::SealAborted {
                        shard_id: req.options.shard_id.clone(),
                        gpu_device: device,
                        reserved_bytes,
                        reason: e.to_string(),
                    },
                );
                return Err(e);
            }
        };
    let buffer = placed.hand_over()?;
    let reserved_bytes = reservation.bytes();
    let resident = Arc::new(ResidentAllocation::new(
        Arc::clone(shared),
        buffer,
        correlation_id.to_owned(),
        reservation,
        fields.clone(),
    ));
    claim.commit(buffer, &resident);
    let allocation: Arc<dyn ShardAllocation> = resident;
    let shard = SealedShard::from_parts(fields, now, signature, Some(allocation));

    let event = AuditEvent::VramSealed {
        shard_id: shard.shard_id.clone(),
        gpu_device: device,
        vram_bytes: len,
        reserved_bytes,
        digest: shard.digest.clone(),
        digest_algorithm: shard.digest_algorithm().to_string(),
        backend: shared.backend.kind().to_string(),
        group_id: req.group.map(str::to_owned),
    };
    tracing::info!(
        shard_id = %shard.shard_id, vram_bytes = len, gpu_device = device, digest = %shard.digest,
        "model sealed in VRAM"
    );
    warn_if_low(shared, device);
    let held_back = match req.group {
        Some(_) => Some((correlation_id.to_owned(), event)),
        None => {
            // Fail-closed: a seal that cannot be recorded is undone (dropping `shard` releases
            // the VRAM, and the release is recorded).
            shared.record(correlation_id, event)?;
            None
        }
    };
    Ok(Sealed { shard, held_back })
}

/// What a seal computes between allocating and registering: upload, residency check, the
/// digest of the resident bytes, the checks the caller asked for, the id and the seal.
fn prepare(
    shared: &Arc<Shared>,
    req: &SealRequest<'_>,
    len: usize,
    claim: Option<Claim>,
    placed: &PlacedBuffer<'_>,
    correlation_id: &str,
) -> Result<(SealedFields, SystemTime, SealSignature, Claim), VramError> {
    let device = req.device;
    let algorithm = shared.config.digest_algorithm;
    let cross_check = req
        .options
        .cross_check
        .then(|| CrossCheck::new(algorithm, req.source.len()))
        .transpose()?;
    let observe = |offset: u64, chunk: &[u8]| {
        if let Some(c) = &cross_check {
            c.observe(offset, chunk);
        }
    };
    let observer: Option<ChunkObserver<'_>> = cross_check.as_ref().map(|_| &observe as _);
    shared.backend.upload(placed.id()?, req.source, observer)?;
    check_residency(shared, placed.id()?, device, len, correlation_id)?;
    // The seal covers what is in VRAM: the digest is computed there, not from the host bytes.
    let digest: ShardDigest =
        shared
            .backend
            .digest(placed.id()?, len, algorithm, GpuShare::Full)?;
    if let Some(check) = cross_check {
        let host = check.finish(req.source, algorithm)?;
        if !host.ct_eq(&digest) {
            return Err(VramError::UploadMismatch {
                device,
                host: host.to_hex(),
                resident: digest.to_hex(),
            });
        }
    }
    if let Some(expected) = &req.options.expected_digest
        && !expected.ct_eq(&digest)
    {
        return Err(VramError::UnexpectedDigest {
            expected: expected.to_hex(),
            actual: digest.to_hex(),
        });
    }
    let digest_hex = digest.to_hex();

    let shard_id = match id_of(req, &digest_hex, device) {
        Some(id) => id,
        None => return Err(VramError::Unreachable("digest is 64 hex characters")),
    };
    // A generated id is derived from the content: sealing the same bytes twice on one device
    // fails instead of keeping two copies (the contract's idempotency rule).
    let claim = match claim {
        Some(c) => c,
        None => shared.claim(&shard_id)?,
    };
    let now = shared.clock.wall();
    // A seal time is seconds since 1970 (`.specs/seal.md`): a clock that reads earlier is
    // wrong, and is said to be, instead of failing as a malformed seal.
    if shared.config.include_seal_time && now < UNIX_EPOCH {
        return Err(VramError::invalid_input(
            "system clock",
            "reads before 1970-01-01, so no seal time can be written; set the clock (NTP) and seal again",
        ));
    }
    let fields = SealedFields {
        shard_id: shard_id.clone(),
        gpu_device: device,
        vram_bytes: len,
        digest_algorithm: algorithm,
        digest: digest_hex,
        sealed_at: shared.config.include_seal_time.then_some(now),
        shard_index: req.options.tensor_parallel.map(|(i, _)| i),
        total_shards: req.options.tensor_parallel.map(|(_, n)| n),
    };
    let signature = compute_signature(&shared.key, &fields)?;

    Ok((fields, now, signature, claim))
}

/// The caller's id, or one derived from the content and place: `shard-<16 hex>-gpu<N>`, with
/// `-tp<i>of<n>` for a tensor-parallel shard (two shards of one model may hold identical bytes
/// on one device; they are different shards).
fn id_of(req: &SealRequest<'_>, digest_hex: &str, device: u32) -> Option<String> {
    if let Some(id) = &req.options.shard_id {
        return Some(id.clone());
    }
    let content = digest_hex.get(..16)?;
    Some(match req.options.tensor_parallel {
        None => format!("shard-{content}-gpu{device}"),
        Some((i, n)) => format!("shard-{content}-gpu{device}-tp{i}of{n}"),
    })
}

/// The allocation must be plain device memory of `device` covering the whole shard.
pub(super) fn check_residency(
    shared: &Shared,
    buffer: BufferId,
    device: u32,
    len: usize,
    correlation_id: &str,
) -> Result<(), VramError> {
    let facts = shared.backend.allocation_facts(buffer, len)?;
    let allow_simulated = shared.backend.kind() == BackendKind::Mock;
    let Some(reason) = rules::allocation_problem(&facts, device, allow_simulated) else {
        return Ok(());
    };
    let ecc_enabled = shared
        .backend
        .device_facts(device)
        .ok()
        .and_then(|f| f.ecc_enabled);
    shared.record_or_stop(
        correlation_id,
        AuditEvent::PolicyViolation {
            gpu_device: device,
            reason: reason.clone(),
            ecc_enabled,
        },
    );
    let error = VramError::PolicyViolation { device, reason };
    shared.stop(&error.to_string());
    Err(error)
}

fn warn_if_low(shared: &Shared, device: u32) {
    if let Ok(c) = shared.capacity(device)
        && c.available().saturating_mul(10) < c.total()
    {
        tracing::warn!(
            gpu_device = device,
            available = c.available(),
            used = c.used(),
            total = c.total(),
            "VRAM below 10 % free"
        );
    }
}
