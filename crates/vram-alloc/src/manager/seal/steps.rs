//! One planned part through the typed steps: [`Placed`] (allocated, or an engine's range
//! adopted) → [`Uploaded`] (copied, or checked where it lies, and checked to be device memory)
//! → [`Digested`] (hashed where it lies, checked against what was expected) → [`Signed`] (id
//! claimed if derived, seal computed) → registered and audited.
//!
//! Every step owns the device buffer until the next takes it, and the plan's reservation and
//! claim travel with it, so a failure at any step frees the buffer, gives the capacity back
//! and releases the id. [`seal_part`] runs the steps for one part; [`abort`] is what a failed
//! part leaves behind. Checks that need no device (ids, sizes, capacity) were made by the plan.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use vram_seal::{ShardDigest, compute_signature};
use vram_types::formats::TensorInfo;
use vram_types::{
    GpuShare, SealSignature, SealedFields, SealedShard, ShardAllocation, ShardSource, VramError,
};

use super::super::allocation_check;
use super::super::cross_check::CrossCheck;
use super::super::resident_allocation::ResidentAllocation;
use super::super::seal_options::{ExpectedFrom, SealOptions};
use super::super::sealed_table::table_resident;
use super::super::shared::{Claim, Shared};
use super::super::step;
use super::ids;
use crate::audit::AuditEvent;
use crate::backend::{BufferId, ChunkObserver, DigestOrder, ForeignRange};
use crate::capacity::Reservation;

/// Where a part's bytes come from.
#[derive(Clone, Copy)]
pub(super) enum Source<'a> {
    /// Bytes to upload into a buffer the plan reserved.
    Upload(&'a dyn ShardSource),
    /// A range an engine already holds, sealed where it lies: nothing reserved, nothing
    /// copied, never freed by the manager.
    InPlace(ForeignRange),
}

/// A planned part, ready to place.
pub(super) struct PartRequest<'r> {
    pub(super) source: Source<'r>,
    pub(super) device: u32,
    pub(super) options: &'r SealOptions,
    pub(super) len: usize,
    /// The caller's (or the set's) id, claimed by the plan; `None`: derived from the digest.
    pub(super) claim: Option<Claim>,
    /// This part's share of the plan's reservation (`None` in place).
    pub(super) reservation: Option<Reservation>,
    /// The set the shard belongs to (a group's or a model's id): its `VramSealed` record names
    /// it and is held back until the whole set is sealed (nothing is audited as sealed
    /// otherwise).
    pub(super) set: Option<&'r str>,
}

/// A sealed shard, with its `VramSealed` record when the request held it back (a set's).
pub(super) struct Sealed {
    pub(super) shard: SealedShard,
    pub(super) held_back: Option<(String, AuditEvent)>,
}

/// Places, seals, registers and audits one part, counted in the seal metrics.
pub(super) fn seal_part(shared: &Arc<Shared>, req: PartRequest<'_>) -> Result<Sealed, VramError> {
    let device = req.device;
    let correlation_id = shared.next_correlation_id();
    let result = step("seal", || place_and_seal(shared, req, &correlation_id));
    shared.metrics().count_seal(device, result.is_ok());
    step("capacity metrics", || {
        shared.refresh_capacity_metrics(device)
    });
    result
}

fn place_and_seal(
    shared: &Arc<Shared>,
    req: PartRequest<'_>,
    correlation_id: &str,
) -> Result<Sealed, VramError> {
    let PartRequest {
        source,
        device,
        options,
        len,
        claim,
        reservation,
        set,
    } = req;
    // Each step in a trace-level span, so `vramctl -vvv` shows where a seal's time goes.
    let place = match source {
        Source::Upload(_) => "allocate",
        Source::InPlace(_) => "adopt",
    };
    let placed = step(place, || {
        Placed::new(
            shared,
            source,
            device,
            len,
            reservation.as_ref(),
            correlation_id,
        )
    })?;
    let signed = step("upload", || placed.fill(source, options, correlation_id))
        .and_then(|uploaded| {
            step("digest", || {
                uploaded.digest(shared.config().digest_algorithm)
            })
        })
        .and_then(|digested| {
            step("check and sign", || {
                digested.check(options)?.sign(options, claim)
            })
        });
    match signed {
        Ok(signed) => step("register", || {
            signed.register(reservation, correlation_id, set)
        }),
        Err(e) => Err(abort(
            shared,
            options,
            device,
            reservation,
            correlation_id,
            e,
        )),
    }
}

/// What a part that failed after it was placed leaves behind. The steps have freed the buffer;
/// an uploaded part gives its capacity back and is recorded (`SealAborted`: the allocation came
/// and went), and a security failure among them (a copy path that delivered other bytes, memory
/// that is not device memory) stops the manager: it may have delivered other shards' bytes
/// the same way. A range sealed in place was never the manager's: its failure is the caller's
/// (a policy violation there was recorded as one), and nothing is recorded or stopped here.
pub(super) fn abort(
    shared: &Shared,
    options: &SealOptions,
    device: u32,
    reservation: Option<Reservation>,
    correlation_id: &str,
    e: VramError,
) -> VramError {
    let Some(reservation) = reservation else {
        return e;
    };
    let reserved_bytes = reservation.bytes();
    drop(reservation);
    let security_failure = e.is_security_critical();
    shared.record_or_stop(
        correlation_id,
        AuditEvent::SealAborted {
            shard_id: options.shard_id.clone(),
            gpu_device: device,
            reserved_bytes,
            reason: e.to_string(),
            security_failure,
        },
    );
    if security_failure {
        shared.stop_on(&e);
    }
    e
}

/// Step 1: a device buffer of the shard's length, freed on drop unless handed on.
pub(super) struct Placed<'s> {
    shared: &'s Arc<Shared>,
    buffer: Option<BufferId>,
    device: u32,
    len: usize,
    /// The tensor table read from the uploaded bytes (a safetensors or GGUF file's).
    tensors: Option<Vec<TensorInfo>>,
}

impl<'s> Placed<'s> {
    /// Step 1 for either source: a buffer allocated for an upload, or the engine's range
    /// adopted.
    pub(super) fn new(
        shared: &'s Arc<Shared>,
        source: Source<'_>,
        device: u32,
        len: usize,
        reservation: Option<&Reservation>,
        correlation_id: &str,
    ) -> Result<Self, VramError> {
        match source {
            Source::Upload(_) => {
                let requested = reservation.map_or(len, Reservation::bytes);
                Self::allocate(shared, device, len, requested, correlation_id)
            }
            Source::InPlace(range) => Self::adopt(shared, range),
        }
    }

    /// Step 2 for either source: the bytes copied in, or the range checked where it lies.
    pub(super) fn fill(
        self,
        source: Source<'_>,
        options: &SealOptions,
        correlation_id: &str,
    ) -> Result<Uploaded<'s>, VramError> {
        match source {
            Source::Upload(bytes) => self.upload(bytes, options, correlation_id),
            Source::InPlace(_) => self.in_place(correlation_id),
        }
    }

    /// Allocates; a failure is audited as `VramAllocationFailed`.
    fn allocate(
        shared: &'s Arc<Shared>,
        device: u32,
        len: usize,
        requested: usize,
        correlation_id: &str,
    ) -> Result<Self, VramError> {
        let buffer = shared.backend().allocate(device, len).inspect_err(|e| {
            shared.record_or_stop(
                correlation_id,
                AuditEvent::VramAllocationFailed {
                    gpu_device: device,
                    requested,
                    available: shared.capacity(device).map_or(0, |c| c.available()),
                    reason: e.to_string(),
                },
            );
        })?;
        Ok(Self {
            shared,
            buffer: Some(buffer),
            device,
            len,
            tensors: None,
        })
    }

    /// An engine's range, registered (never freed: dropping the guard only forgets it).
    fn adopt(shared: &'s Arc<Shared>, range: ForeignRange) -> Result<Self, VramError> {
        let device = range.device_ordinal();
        let len = range.len();
        Ok(Self {
            shared,
            buffer: Some(shared.backend().adopt(range)?),
            device,
            len,
            tensors: None,
        })
    }

    /// Step 2 for an engine's range: nothing to copy; the range must be plain device memory
    /// of its device inside one allocation. A range that is not is the caller's mistake, not
    /// the environment's: recorded as a policy violation and refused, and the manager keeps
    /// running.
    fn in_place(self, correlation_id: &str) -> Result<Uploaded<'s>, VramError> {
        if let Some(reason) =
            allocation_check::problem(self.shared, self.id()?, self.device, self.len)?
        {
            allocation_check::record_violation(
                self.shared,
                correlation_id,
                self.device,
                reason.clone(),
            );
            return Err(VramError::PolicyViolation {
                device: self.device,
                reason,
            });
        }
        Ok(Uploaded {
            placed: self,
            host_digest: None,
        })
    }

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

    /// Step 2: copies the source in (showing each chunk to the cross-check, if asked for),
    /// checks that the allocation is device memory of the device, covering the shard, and reads
    /// the tensor table of a safetensors or GGUF file from the resident bytes.
    fn upload(
        mut self,
        source: &dyn ShardSource,
        options: &SealOptions,
        correlation_id: &str,
    ) -> Result<Uploaded<'s>, VramError> {
        let algorithm = self.shared.config().digest_algorithm;
        let cross_check = options
            .cross_check
            .then(|| CrossCheck::new(algorithm, source.len()))
            .transpose()?;
        let observe = |offset: u64, chunk: &[u8]| {
            if let Some(c) = &cross_check {
                c.observe(offset, chunk);
            }
        };
        let observer: Option<ChunkObserver<'_>> = cross_check.as_ref().map(|_| &observe as _);
        self.shared.backend().upload(self.id()?, source, observer)?;
        allocation_check::check(
            self.shared,
            self.id()?,
            self.device,
            self.len,
            correlation_id,
        )?;
        self.tensors = table_resident(self.shared.backend(), self.id()?, self.len, source.path())?;
        let host_digest = cross_check
            .map(|check| check.finish(source, algorithm))
            .transpose()?;
        Ok(Uploaded {
            placed: self,
            host_digest,
        })
    }
}

impl Drop for Placed<'_> {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take()
            && let Err(e) = self.shared.backend().free(buffer)
        {
            tracing::error!(error = %e, "freeing a partly sealed buffer failed");
        }
    }
}

/// Step 2 done: the bytes are resident in device memory; with the cross-check, the digest of
/// the host bytes they came from.
pub(super) struct Uploaded<'s> {
    placed: Placed<'s>,
    host_digest: Option<ShardDigest>,
}

impl<'s> Uploaded<'s> {
    /// The buffer and its length, for a digest of many buffers at once (a model's tensors,
    /// sealed in place: there are no host bytes to compare).
    pub(super) fn buffer(&self) -> Result<(BufferId, usize), VramError> {
        Ok((self.placed.id()?, self.placed.len))
    }

    /// Step 3 from a digest computed with other buffers' in one launch sequence.
    pub(super) fn digested(self, digest: ShardDigest) -> Digested<'s> {
        Digested {
            placed: self.placed,
            digest,
        }
    }

    /// Step 3: the digest of the resident bytes, computed where they lie: the seal covers what
    /// is in VRAM, not the host bytes.
    fn digest(self, algorithm: vram_types::DigestAlgorithm) -> Result<Digested<'s>, VramError> {
        let placed = self.placed;
        let digest = placed.shared.backend().digest_one(
            placed.id()?,
            placed.len,
            algorithm,
            GpuShare::Full,
            DigestOrder::Now,
        )?;
        if let Some(host) = self.host_digest
            && !host.ct_eq(&digest)
        {
            return Err(VramError::UploadMismatch {
                device: placed.device,
                host: host.to_hex(),
                resident: digest.to_hex(),
            });
        }
        Ok(Digested { placed, digest })
    }
}

/// Step 3 done: the digest of the resident bytes.
pub(super) struct Digested<'s> {
    placed: Placed<'s>,
    digest: ShardDigest,
}

impl<'s> Digested<'s> {
    /// The expected digest, if any, against the resident bytes: in the manager's algorithm,
    /// the digest just computed in VRAM; in another, one the backend computes from the resident
    /// bytes too (in VRAM for BLAKE3 and a large tree, from the bytes read back for a flat
    /// SHA-256), so what was checked is what is sealed.
    pub(super) fn check(self, options: &SealOptions) -> Result<Self, VramError> {
        let Some(expected) = options.expected else {
            return Ok(self);
        };
        let shared = self.placed.shared;
        let actual = match expected.algorithm {
            Some(other) if !expected.is_resident(shared.config().digest_algorithm) => {
                shared.backend().digest_one(
                    self.placed.id()?,
                    self.placed.len,
                    other,
                    GpuShare::Full,
                    DigestOrder::Now,
                )?
            }
            _ => self.digest,
        };
        if !expected.digest.ct_eq(&actual) {
            return Err(VramError::UnexpectedDigest {
                expected: expected.digest.to_hex(),
                actual: actual.to_hex(),
            });
        }
        Ok(self)
    }

    /// Step 4: the id (the plan's claim, or one derived from the content, claimed now) and the
    /// seal over the shard's fields.
    pub(super) fn sign(
        self,
        options: &SealOptions,
        claim: Option<Claim>,
    ) -> Result<Signed<'s>, VramError> {
        let shared = self.placed.shared;
        let device = self.placed.device;
        let digest_hex = self.digest.to_hex();
        let shard_id = ids::shard_id(options, &digest_hex, device)
            .ok_or(VramError::Unreachable("digest is 64 hex characters"))?;
        let claim = match claim {
            Some(c) => c,
            None => ids::claim(shared, &shard_id)?,
        };
        let now = shared.clock().wall();
        // A seal time is seconds since 1970 (`.specs/seal.md`): a clock that reads earlier is
        // wrong, and is said to be, instead of failing as a malformed seal.
        let include_time = shared.config().include_seal_time;
        if include_time && now < UNIX_EPOCH {
            return Err(VramError::invalid_input(
                "system clock",
                "reads before 1970-01-01, so no seal time can be written; set the clock (NTP) and seal again",
            ));
        }
        let fields = SealedFields {
            shard_id,
            gpu_device: device,
            vram_bytes: self.placed.len,
            digest_algorithm: shared.config().digest_algorithm,
            digest: digest_hex,
            sealed_at: include_time.then_some(now),
            shard_index: options.tensor_parallel.map(|(i, _)| i),
            total_shards: options.tensor_parallel.map(|(_, n)| n),
        };
        let signature = compute_signature(shared.key(), &fields)?;
        Ok(Signed {
            placed: self.placed,
            fields,
            now,
            signature,
            claim,
            expected_from: options.expected.map(|_| options.expected_from),
        })
    }
}

/// Step 4 done: sealed, not yet registered.
pub(super) struct Signed<'s> {
    placed: Placed<'s>,
    fields: SealedFields,
    now: SystemTime,
    signature: SealSignature,
    claim: Claim,
    expected_from: Option<ExpectedFrom>,
}

impl Signed<'_> {
    /// Step 5: the allocation becomes the shard's (its drop now frees it and audits the
    /// release), the id goes live, and the seal is audited, or held back for a set (a group,
    /// a model).
    pub(super) fn register(
        self,
        reservation: Option<Reservation>,
        correlation_id: &str,
        set: Option<&str>,
    ) -> Result<Sealed, VramError> {
        let mut placed = self.placed;
        let shared = placed.shared;
        let device = placed.device;
        let len = placed.len;
        let tensors = placed.tensors.take();
        let buffer = placed.hand_over()?;
        let in_place = reservation.is_none();
        let reserved_bytes = reservation.as_ref().map_or(0, Reservation::bytes);
        let resident = Arc::new(ResidentAllocation::new(
            Arc::clone(shared),
            buffer,
            correlation_id.to_owned(),
            reservation,
            self.fields.clone(),
            tensors,
            set.map(str::to_owned),
        ));
        self.claim.commit(buffer, &resident);
        let allocation: Arc<dyn ShardAllocation> = resident;
        let shard =
            SealedShard::from_parts(self.fields, self.now, self.signature, Some(allocation));
        let event = AuditEvent::VramSealed {
            shard_id: shard.shard_id.clone(),
            gpu_device: device,
            vram_bytes: len,
            reserved_bytes,
            digest: shard.digest.clone(),
            digest_algorithm: shard.digest_algorithm().to_string(),
            backend: shared.backend().kind().to_string(),
            group_id: set.map(str::to_owned),
            in_place,
            expected_from: self.expected_from.map(|f| f.as_str().to_owned()),
        };
        if let Some(from) = self.expected_from {
            shared.metrics().count_expected(device, from.as_str());
        }
        tracing::info!(
            shard_id = %shard.shard_id, vram_bytes = len, gpu_device = device, digest = %shard.digest,
            "model sealed in VRAM"
        );
        warn_if_low(shared, device);
        let held_back = match set {
            Some(_) => Some((correlation_id.to_owned(), event)),
            None => {
                // Fail-closed: a seal that cannot be recorded is undone (dropping `shard`
                // releases the VRAM, and the release is recorded).
                shared.record(correlation_id, event)?;
                None
            }
        };
        Ok(Sealed { shard, held_back })
    }
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
