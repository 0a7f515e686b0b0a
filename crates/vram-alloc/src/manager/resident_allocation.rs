//! `ResidentAllocation`: the VRAM behind a sealed shard. Shared by every clone of the shard;
//! its `Drop` frees the VRAM, returns the capacity and audits the release, exactly once.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vram_types::formats::TensorInfo;
use vram_types::{SealedFields, ShardAllocation};

use super::Shared;
use crate::audit::AuditEvent;
use crate::backend::BufferId;
use crate::capacity::Reservation;

/// A shard's device allocation, owned by the manager that made it.
pub(crate) struct ResidentAllocation {
    shared: Arc<Shared>,
    buffer: BufferId,
    correlation_id: String,
    reservation: Option<Reservation>,
    /// What was sealed (shard id, device, length, digest, ...): a verification that fails can
    /// name the field that differs.
    sealed: SealedFields,
    /// The manager's monotonic clock when it was sealed, for the seal's age.
    sealed_at_monotonic: std::time::Duration,
    /// The tensor table of a sealed safetensors or GGUF file, sorted by name.
    tensors: Option<Vec<TensorInfo>>,
    /// The monotonic time of the last passed verification, in nanoseconds plus one (0: never).
    last_verified: AtomicU64,
    /// The set (a model's or a group's id) it was sealed in, if any.
    set: Option<String>,
    /// Replaced by an update: no longer vouched for (its id may be sealed again).
    superseded: AtomicBool,
}

impl ResidentAllocation {
    pub(crate) fn new(
        shared: Arc<Shared>,
        buffer: BufferId,
        correlation_id: String,
        reservation: Option<Reservation>,
        sealed: SealedFields,
        tensors: Option<Vec<TensorInfo>>,
        set: Option<String>,
    ) -> Self {
        Self {
            set,
            superseded: AtomicBool::new(false),
            tensors,
            buffer,
            correlation_id,
            reservation,
            sealed,
            sealed_at_monotonic: shared.clock().monotonic(),
            shared,
            last_verified: AtomicU64::new(0),
        }
    }

    /// The set (a model's or a group's id) it was sealed in.
    pub(crate) fn set(&self) -> Option<&str> {
        self.set.as_deref()
    }

    /// Marks it replaced by an update: nothing vouches for it any more.
    pub(crate) fn supersede(&self) {
        self.superseded.store(true, Ordering::Release);
    }

    /// Whether an update replaced it.
    pub(crate) fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::Acquire)
    }

    /// Records a passed verification at monotonic time `at`.
    pub(crate) fn mark_verified(&self, at: std::time::Duration) {
        let nanos = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
        self.last_verified
            .fetch_max(nanos.saturating_add(1), Ordering::AcqRel);
    }

    /// The monotonic time of the last passed verification, or of the seal when none passed
    /// since: how fresh the proof that its bytes are intact is.
    pub(crate) fn last_proven(&self) -> std::time::Duration {
        match self.last_verified.load(Ordering::Acquire) {
            0 => self.sealed_at_monotonic,
            n => std::time::Duration::from_nanos(n.saturating_sub(1)),
        }
    }

    /// How long ago it was sealed, on the manager's monotonic clock (wall-clock steps do not
    /// change it).
    pub(crate) fn age(&self) -> std::time::Duration {
        self.shared
            .clock()
            .monotonic()
            .saturating_sub(self.sealed_at_monotonic)
    }

    pub(crate) fn buffer(&self) -> BufferId {
        self.buffer
    }

    /// The fields this manager sealed for the allocation.
    pub(crate) fn sealed(&self) -> &SealedFields {
        &self.sealed
    }

    pub(crate) fn shard_id(&self) -> &str {
        &self.sealed.shard_id
    }

    pub(crate) fn is_owned_by(&self, shared: &Arc<Shared>) -> bool {
        Arc::ptr_eq(&self.shared, shared)
    }

    /// Bytes taken on the device, granularity included.
    pub(crate) fn reserved_bytes(&self) -> usize {
        self.reservation.as_ref().map_or(0, Reservation::bytes)
    }
}

impl ShardAllocation for ResidentAllocation {
    fn device(&self) -> u32 {
        self.sealed.gpu_device
    }

    fn len(&self) -> usize {
        self.sealed.vram_bytes
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn tensors(&self) -> Option<&[TensorInfo]> {
        self.tensors.as_deref()
    }
}

impl fmt::Debug for ResidentAllocation {
    /// No buffer handle and no pointer: only what the shard already shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResidentAllocation")
            .field("shard_id", &self.sealed.shard_id)
            .field("device", &self.sealed.gpu_device)
            .field("len", &self.sealed.vram_bytes)
            .finish_non_exhaustive()
    }
}

impl Drop for ResidentAllocation {
    fn drop(&mut self) {
        let error = self.shared.backend().free(self.buffer).err();
        let freed_bytes = self.reserved_bytes();
        // The device memory is gone whether or not the driver complained; give the capacity back.
        drop(self.reservation.take());
        self.shared
            .forget(&self.sealed.shard_id, self.buffer, self.sealed.gpu_device);
        match &error {
            None => {
                tracing::info!(shard_id = %self.sealed.shard_id, gpu_device = self.sealed.gpu_device, freed_bytes, "VRAM released")
            }
            Some(e) => {
                tracing::error!(shard_id = %self.sealed.shard_id, gpu_device = self.sealed.gpu_device, error = %e, "VRAM release failed")
            }
        }
        self.shared.record_or_stop(
            &self.correlation_id,
            AuditEvent::VramDeallocated {
                shard_id: self.sealed.shard_id.clone(),
                gpu_device: self.sealed.gpu_device,
                freed_bytes,
                error: error.map(|e| e.to_string()),
            },
        );
        self.shared.metrics().forget_shard(&self.sealed.shard_id);
        self.shared.refresh_capacity_metrics(self.sealed.gpu_device);
    }
}
