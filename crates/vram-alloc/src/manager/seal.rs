//! Sealing one planned part, in typed steps: [`Placed`] (allocated) → [`Uploaded`] (copied and
//! checked to be device memory) → [`Digested`] (hashed where it lies, checked against what was
//! expected) → [`Signed`] (id claimed, seal computed) → registered and audited.
//!
//! Every step owns the device buffer until the next takes it, and the plan's reservation and
//! claim travel with it, so a failure at any step frees the buffer, gives the capacity back
//! and releases the id; what had been allocated is then audited as a `SealAborted` record.
//! Checks that need no device (ids, sizes, capacity) were made by the plan (`plan.rs`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use vram_seal::{ShardDigest, compute_signature};
use vram_types::formats::TensorInfo;
use vram_types::validation::{ShardId, validate_gpu_device, validate_model_size};
use vram_types::{
    GpuShare, SealSignature, SealedFields, SealedShard, ShardAllocation, ShardSource, VramError,
};

use super::allocation_check;
use super::cross_check::CrossCheck;
use super::plan::SealPart;
use super::resident_allocation::ResidentAllocation;
use super::seal_options::SealOptions;
use super::sealed_table::table_resident;
use super::shared::{Claim, Shared};
use super::{VramManager, step};
use crate::audit::AuditEvent;
use crate::backend::{BufferId, ChunkObserver, DigestOrder, ForeignRange};
use crate::capacity::Reservation;

impl VramManager {
    /// Seals `model_bytes` on `gpu_device` under an id derived from its digest
    /// (`shard-<16 hex>-gpu<N>`), so sealing the same bytes twice on one device fails.
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] / [`VramError::InvalidDevice`] for rejected input (nothing
    /// reserved, nothing audited); [`VramError::InsufficientVram`]; [`VramError::AlreadySealed`];
    /// [`VramError::CudaAllocationFailed`] and other CUDA errors; [`VramError::PolicyViolation`]
    /// when the allocation is not device memory; [`VramError::Stopped`] after a security failure.
    pub fn seal_model(
        &self,
        model_bytes: &[u8],
        gpu_device: u32,
    ) -> Result<SealedShard, VramError> {
        self.seal_from_source(&model_bytes, gpu_device, &SealOptions::new())
    }

    /// Seals `model_bytes` on `gpu_device` under the caller's `shard_id`.
    ///
    /// # Errors
    /// As [`Self::seal_model`]; an invalid id is [`VramError::InvalidInput`], an id already live
    /// is [`VramError::AlreadySealed`].
    pub fn seal_model_with_id(
        &self,
        shard_id: &str,
        model_bytes: &[u8],
        gpu_device: u32,
    ) -> Result<SealedShard, VramError> {
        let options = SealOptions::new().shard_id(shard_id);
        self.seal_from_source(&model_bytes, gpu_device, &options)
    }

    /// Seals one tensor-parallel shard (`shard_index` of `total_shards`); both are sealed, and the
    /// generated id carries them (`shard-<16 hex>-gpu<N>-tp<i>of<n>`), so shards of one model
    /// with identical bytes on one device do not collide.
    ///
    /// # Errors
    /// As [`Self::seal_model`]; `shard_index >= total_shards` is [`VramError::InvalidInput`].
    pub fn seal_model_shard(
        &self,
        model_bytes: &[u8],
        gpu_device: u32,
        shard_index: usize,
        total_shards: usize,
    ) -> Result<SealedShard, VramError> {
        let options = SealOptions::new().tensor_parallel(shard_index, total_shards);
        self.seal_from_source(&model_bytes, gpu_device, &options)
    }

    /// Seals the bytes of `source` (a [`FileSource`](vram_types::FileSource), or `&bytes`) on
    /// `gpu_device`: a plan of one part ([`Self::plan_seal`]). The bytes go from the source
    /// through a bounded ring of pinned staging buffers straight to VRAM, so host memory stays
    /// bounded whatever the shard's size, and the digest is computed from the bytes in VRAM.
    /// `options` can name the shard, require an expected digest and cross-check the host bytes.
    ///
    /// # Errors
    /// As [`Self::seal_model`]; [`VramError::SourceReadFailed`] when the source cannot be read;
    /// [`VramError::UnexpectedDigest`] when an expected digest does not match;
    /// [`VramError::UploadMismatch`] when the cross-check finds the host bytes differ. Nothing
    /// stays allocated or reserved after an error.
    pub fn seal_from_source(
        &self,
        source: &dyn ShardSource,
        gpu_device: u32,
        options: &SealOptions,
    ) -> Result<SealedShard, VramError> {
        let part = SealPart {
            source,
            gpu_device,
            options: options.clone(),
        };
        let mut shards = step("plan", || self.plan_seal(vec![part]))?.execute()?;
        shards
            .pop()
            .ok_or(VramError::Unreachable("a plan of one part seals one shard"))
    }
}

/// A planned part, ready to place.
pub(super) struct PartRequest<'r> {
    pub(super) source: &'r dyn ShardSource,
    pub(super) device: u32,
    pub(super) options: &'r SealOptions,
    pub(super) len: usize,
    /// The caller's (or the group's) id, claimed by the plan; `None`: derived from the digest.
    pub(super) claim: Option<Claim>,
    /// This part's share of the plan's reservation.
    pub(super) reservation: Reservation,
    /// The group the shard belongs to: its `VramSealed` record names the group and is held
    /// back until the whole group is placed (nothing is audited as sealed otherwise).
    pub(super) group: Option<&'r str>,
}

/// A sealed shard, with its `VramSealed` record when the request held it back (a group's).
pub(super) struct Sealed {
    pub(super) shard: SealedShard,
    pub(super) held_back: Option<(String, AuditEvent)>,
}

/// Places, seals, registers and audits one part. A failure after the allocation is audited as
/// `SealAborted` once the buffer and the capacity are given back.
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
        group,
    } = req;
    // Each step in a trace-level span, so `vramctl -vvv` shows where a seal's time goes.
    let placed = step("allocate", || {
        Placed::allocate(shared, device, len, &reservation, correlation_id)
    })?;
    let signed = step("upload", || placed.upload(source, options, correlation_id))
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
    let signed = match signed {
        Ok(signed) => signed,
        Err(e) => {
            // The steps have freed the buffer; give the capacity back, then record that the
            // allocation came and went.
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
            // A copy path that delivered other bytes may have delivered them to shards sealed
            // before without a cross-check: stop, as after a failed verification. Anything else
            // (an audit record this seal could not write among them) is undone, not a stop.
            if security_failure {
                shared.stop_on(&e);
            }
            return Err(e);
        }
    };
    step("register", || {
        signed.register(Some(reservation), correlation_id, group)
    })
}

impl VramManager {
    /// Seals memory an inference engine already holds, where it lies: `range` is checked like
    /// the manager's own allocations (device memory of its device's context, not managed, not
    /// host memory, inside one allocation), hashed on the GPU with no copy, and sealed. The
    /// manager never frees it (dropping the shard only forgets it) and does not count it
    /// against its capacity; the engine keeps it allocated until the shard is released (the
    /// promise of the `unsafe` [`ForeignRange::device`](vram_cuda_sys::resident::ForeignRange::device)).
    /// Verified and lent like any shard ([`Self::verify_sealed`], [`Self::execute`]).
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] / [`VramError::InvalidDevice`] for a bad id, device or
    /// length, or a range this backend cannot read (nothing audited);
    /// [`VramError::PolicyViolation`] for memory that is not plain device memory of the device
    /// inside one allocation (recorded as a policy violation; the manager keeps running: the
    /// caller's range was refused, nothing was sealed); [`VramError::AlreadySealed`];
    /// [`VramError::UnexpectedDigest`]; CUDA errors; [`VramError::Stopped`].
    pub fn seal_in_place(
        &self,
        range: ForeignRange,
        options: &SealOptions,
    ) -> Result<SealedShard, VramError> {
        let shared = &self.shared;
        shared.ensure_running()?;
        let device = range.device_ordinal();
        let len = range.len();
        validate_in_place(shared, &range, options)?;
        let claim = options
            .shard_id
            .as_deref()
            .map(|id| shared.claim(id))
            .transpose()?;
        let correlation_id = shared.next_correlation_id();
        let placed = Placed::adopt(shared, range)?;
        let signed = placed
            .in_place(&correlation_id)
            .and_then(|uploaded| uploaded.digest(shared.config().digest_algorithm))
            .and_then(|digested| digested.check(options))
            .and_then(|digested| digested.sign(options, claim));
        let result = signed.and_then(|s| s.register(None, &correlation_id, None));
        shared.metrics().count_seal(device, result.is_ok());
        shared.refresh_capacity_metrics(device);
        tracing::debug!(
            gpu_device = device,
            len,
            ok = result.is_ok(),
            "sealed in place"
        );
        result.map(|sealed| sealed.shard)
    }
}

/// An in-place seal's input: the id, the device, a length within the model-size limit, no
/// cross-check (there are no host bytes) and no expectation in another algorithm.
pub(super) fn validate_in_place(
    shared: &Shared,
    range: &ForeignRange,
    options: &SealOptions,
) -> Result<(), VramError> {
    if let Some(id) = &options.shard_id {
        ShardId::new(id)?;
    }
    validate_gpu_device(range.device_ordinal(), shared.backend().device_count())?;
    validate_model_size(range.len(), shared.config().max_model_bytes)?;
    if options.cross_check {
        return Err(VramError::invalid_input(
            "cross-check",
            "a range sealed in place has no host bytes to compare",
        ));
    }
    if options
        .expected
        .is_some_and(|e| !e.is_resident(shared.config().digest_algorithm))
    {
        return Err(VramError::invalid_input(
            "expected digest",
            "in another algorithm than the manager's; a range sealed in place is hashed where it lies",
        ));
    }
    Ok(())
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
    /// Allocates; a failure is audited as `VramAllocationFailed`.
    fn allocate(
        shared: &'s Arc<Shared>,
        device: u32,
        len: usize,
        reservation: &Reservation,
        correlation_id: &str,
    ) -> Result<Self, VramError> {
        let buffer = shared.backend().allocate(device, len).inspect_err(|e| {
            shared.record_or_stop(
                correlation_id,
                AuditEvent::VramAllocationFailed {
                    gpu_device: device,
                    requested: reservation.bytes(),
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
    pub(super) fn adopt(shared: &'s Arc<Shared>, range: ForeignRange) -> Result<Self, VramError> {
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
    pub(super) fn in_place(self, correlation_id: &str) -> Result<Uploaded<'s>, VramError> {
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
    fn check(self, options: &SealOptions) -> Result<Self, VramError> {
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
        let shard_id = id_of(options, &digest_hex, device)
            .ok_or(VramError::Unreachable("digest is 64 hex characters"))?;
        // A generated id is derived from the content: sealing the same bytes twice on one
        // device fails instead of keeping two copies (the contract's idempotency rule).
        let claim = match claim {
            Some(c) => c,
            None => shared.claim(&shard_id)?,
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
    expected_from: Option<super::seal_options::ExpectedFrom>,
}

impl Signed<'_> {
    /// Step 5: the allocation becomes the shard's (its drop now frees it and audits the
    /// release), the id goes live, and the seal is audited, or held back for a group.
    pub(super) fn register(
        self,
        reservation: Option<Reservation>,
        correlation_id: &str,
        group: Option<&str>,
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
            group_id: group.map(str::to_owned),
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
        let held_back = match group {
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

/// The caller's id, or one derived from the content and place: `shard-<16 hex>-gpu<N>`, with
/// `-tp<i>of<n>` for a tensor-parallel shard (two shards of one model may hold identical bytes
/// on one device; they are different shards).
fn id_of(options: &SealOptions, digest_hex: &str, device: u32) -> Option<String> {
    if let Some(id) = &options.shard_id {
        return Some(id.clone());
    }
    let content = digest_hex.get(..16)?;
    Some(match options.tensor_parallel {
        None => format!("shard-{content}-gpu{device}"),
        Some((i, n)) => format!("shard-{content}-gpu{device}-tp{i}of{n}"),
    })
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
