//! `SealedShard`: a model shard resident in VRAM, with the seal that proves what it holds.
//!
//! Ownership of the VRAM: a shard holds a shared handle (`Arc<dyn ShardAllocation>`) on its
//! allocation. Clones share it; the allocation's own `Drop` (in `vram-alloc`) frees the VRAM and
//! audits the release once, when the last clone goes (`docs/adr/0002-shard-ownership.md`).

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use subtle::ConstantTimeEq;

use crate::digest_algorithm::DigestAlgorithm;
use crate::error::VramError;

/// Length of a seal signature (HMAC-SHA256) in bytes.
pub const SEAL_SIGNATURE_LEN: usize = 32;

/// An HMAC-SHA256 seal signature. Not secret, but compared only in constant time.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SealSignature([u8; SEAL_SIGNATURE_LEN]);

impl SealSignature {
    /// Wraps signature bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; SEAL_SIGNATURE_LEN]) -> Self {
        Self(bytes)
    }

    /// The signature bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; SEAL_SIGNATURE_LEN] {
        &self.0
    }

    /// The signature as 64 lowercase hex characters.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for SealSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealSignature({})", self.to_hex())
    }
}

/// A backend's handle on the VRAM that holds one shard.
///
/// Implemented by `vram-alloc`'s backends. Dropping the last handle frees the VRAM. Implementors
/// must never show a device pointer in `Debug`, and must not panic in `Drop`.
pub trait ShardAllocation: Send + Sync + fmt::Debug + 'static {
    /// The CUDA device index holding the bytes.
    fn device(&self) -> u32;
    /// The shard's length in bytes (not rounded to the allocation granularity).
    fn len(&self) -> usize;
    /// Whether the shard is empty (never true for a sealed shard).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Lets the owning backend recover its concrete type.
    fn as_any(&self) -> &dyn Any;
    /// The tensor table of the bytes, sorted by name, when they were sealed from a safetensors
    /// or GGUF file (`vram_formats::sealed_table`); `None` for plain bytes.
    fn tensors(&self) -> Option<&[crate::formats::TensorInfo]> {
        None
    }
}

/// The fields a seal covers, in one place: what is signed is exactly this.
///
/// The byte encoding that is signed is in `.specs/seal.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedFields {
    /// Shard id.
    pub shard_id: String,
    /// CUDA device index.
    pub gpu_device: u32,
    /// Shard length in bytes.
    pub vram_bytes: usize,
    /// How `digest` was computed.
    pub digest_algorithm: DigestAlgorithm,
    /// Digest of the shard bytes, 64 lowercase hex characters.
    pub digest: String,
    /// Seal time, or `None` when left out of the seal (determinism tests).
    pub sealed_at: Option<SystemTime>,
    /// Tensor-parallel shard index.
    pub shard_index: Option<usize>,
    /// Tensor-parallel shard count.
    pub total_shards: Option<usize>,
}

impl SealedFields {
    /// Checks that the fields can describe a sealed shard: a valid shard id, at least one byte, a
    /// digest of 64 lowercase hex characters, and a tensor-parallel index below its count (both
    /// or neither).
    ///
    /// # Errors
    /// [`VramError::InvalidInput`] naming the first field that is not.
    pub fn validate(&self) -> Result<(), VramError> {
        crate::validation::ShardId::new(&self.shard_id)?;
        if self.vram_bytes == 0 {
            return Err(VramError::invalid_input(
                "vram_bytes",
                "0 bytes; a shard has at least one",
            ));
        }
        let hex_digest = self.digest.len() == 64
            && self
                .digest
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex_digest {
            return Err(VramError::invalid_input(
                "digest",
                format!("{:?} is not 64 lowercase hex characters", self.digest),
            ));
        }
        match (self.shard_index, self.total_shards) {
            (None, None) => Ok(()),
            (Some(i), Some(n)) if i < n => Ok(()),
            (i, n) => Err(VramError::invalid_input(
                "shard index",
                format!("index {i:?} of {n:?} shards; need both, and index < count"),
            )),
        }
    }
}

/// A model shard sealed in VRAM.
///
/// The public fields are what consumers read (API responses, schedulers). Changing one makes
/// the seal fail at the next verification. The allocation handle and the signature are private;
/// the device pointer is never reachable from this type.
#[derive(Clone)]
pub struct SealedShard {
    /// Unique opaque identifier.
    pub shard_id: String,
    /// CUDA device index.
    pub gpu_device: u32,
    /// Size of the shard in VRAM, in bytes (before rounding to the allocation granularity).
    pub vram_bytes: usize,
    /// SHA-256 digest, 64 lowercase hex characters (algorithm: [`Self::digest_algorithm`]).
    pub digest: String,
    /// When the shard was sealed.
    pub sealed_at: SystemTime,
    /// Tensor-parallel shard index, when the model is split across GPUs.
    pub shard_index: Option<usize>,
    /// Tensor-parallel shard count.
    pub total_shards: Option<usize>,
    digest_algorithm: DigestAlgorithm,
    seal_time_covered: bool,
    signature: SealSignature,
    allocation: Option<Arc<dyn ShardAllocation>>,
}

/// The name the worker API uses for a sealed shard (consumer contract §1.2, option A).
pub type ModelShardHandle = SealedShard;

impl SealedShard {
    /// Assembles a shard from the fields its seal covers, the seal, and the allocation.
    ///
    /// Called by the sealing code only; consumers receive shards from the manager. A shard
    /// built with a signature that does not match its fields fails verification.
    /// `sealed_at` is used for the public field when the seal leaves the time out.
    #[must_use]
    pub fn from_parts(
        fields: SealedFields,
        sealed_at: SystemTime,
        signature: SealSignature,
        allocation: Option<Arc<dyn ShardAllocation>>,
    ) -> Self {
        Self {
            seal_time_covered: fields.sealed_at.is_some(),
            sealed_at: fields.sealed_at.unwrap_or(sealed_at),
            shard_id: fields.shard_id,
            gpu_device: fields.gpu_device,
            vram_bytes: fields.vram_bytes,
            digest: fields.digest,
            shard_index: fields.shard_index,
            total_shards: fields.total_shards,
            digest_algorithm: fields.digest_algorithm,
            signature,
            allocation,
        }
    }

    /// The fields the seal covers, as they are now (changed public fields included).
    #[must_use]
    pub fn sealed_fields(&self) -> SealedFields {
        SealedFields {
            shard_id: self.shard_id.clone(),
            gpu_device: self.gpu_device,
            vram_bytes: self.vram_bytes,
            digest_algorithm: self.digest_algorithm,
            digest: self.digest.clone(),
            sealed_at: self.seal_time_covered.then_some(self.sealed_at),
            shard_index: self.shard_index,
            total_shards: self.total_shards,
        }
    }

    /// How [`Self::digest`] was computed.
    #[must_use]
    pub fn digest_algorithm(&self) -> DigestAlgorithm {
        self.digest_algorithm
    }

    /// Whether the seal covers [`Self::sealed_at`] (false only for determinism tests).
    #[must_use]
    pub fn seal_time_covered(&self) -> bool {
        self.seal_time_covered
    }

    /// The seal signature.
    #[must_use]
    pub fn seal_signature(&self) -> &SealSignature {
        &self.signature
    }

    /// The tensor table of the shard's bytes (name, dtype, shape and byte range of each tensor,
    /// sorted by name), read from the bytes in VRAM when they were sealed from a safetensors or
    /// GGUF file; `None` for plain bytes or a shard that is not resident here. An engine finds
    /// each tensor's device address through the manager's lending view.
    #[must_use]
    pub fn tensors(&self) -> Option<&[crate::formats::TensorInfo]> {
        self.allocation.as_ref().and_then(|a| a.tensors())
    }

    /// The backend's handle on the shard's VRAM, if the shard is resident.
    #[must_use]
    pub fn allocation(&self) -> Option<&Arc<dyn ShardAllocation>> {
        self.allocation.as_ref()
    }

    /// How many handles (clones of this shard) share the allocation; 0 when not resident.
    #[must_use]
    pub fn handle_count(&self) -> usize {
        self.allocation.as_ref().map_or(0, Arc::strong_count)
    }

    /// Compares `current_digest` with the sealed digest in constant time.
    ///
    /// This checks a digest computed elsewhere (for example by the inference engine); use the
    /// manager's `verify_sealed` to recompute it from VRAM and check the seal.
    ///
    /// # Errors
    /// [`VramError::IntegrityViolation`] when the digests differ.
    pub fn verify(&self, current_digest: &str) -> Result<(), VramError> {
        if bool::from(self.digest.as_bytes().ct_eq(current_digest.as_bytes())) {
            Ok(())
        } else {
            Err(VramError::IntegrityViolation {
                shard_id: self.shard_id.clone(),
                expected: self.digest.clone(),
                actual: current_digest.escape_debug().to_string(),
            })
        }
    }

    /// Replaces the signature: tests use it to forge seals.
    #[cfg(feature = "test-utils")]
    pub fn set_seal_signature_for_tests(&mut self, signature: SealSignature) {
        self.signature = signature;
    }
}

impl fmt::Debug for SealedShard {
    /// Shows every public field and the seal; the allocation only as resident or not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedShard")
            .field("shard_id", &self.shard_id)
            .field("gpu_device", &self.gpu_device)
            .field("vram_bytes", &self.vram_bytes)
            .field("digest", &self.digest)
            .field(
                "digest_algorithm",
                &format_args!("{}", self.digest_algorithm),
            )
            .field("sealed_at", &self.sealed_at)
            .field("seal_time_covered", &self.seal_time_covered)
            .field("shard_index", &self.shard_index)
            .field("total_shards", &self.total_shards)
            .field("signature", &self.signature)
            .field("resident", &self.allocation.is_some())
            .finish()
    }
}

#[cfg(feature = "serde")]
mod serde_impl {
    use serde::ser::{Serialize, SerializeStruct, Serializer};

    use super::SealedShard;

    impl Serialize for SealedShard {
        /// Public fields, the algorithm id and the seal (hex); `sealed_at` as seconds and
        /// nanoseconds since the Unix epoch and as RFC 3339 (UTC, milliseconds; `null` outside
        /// 1970–9999). Never the allocation.
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let since = self
                .sealed_at
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let mut st = s.serialize_struct("SealedShard", 11)?;
            st.serialize_field("shard_id", &self.shard_id)?;
            st.serialize_field("gpu_device", &self.gpu_device)?;
            st.serialize_field("vram_bytes", &self.vram_bytes)?;
            st.serialize_field("digest", &self.digest)?;
            st.serialize_field("digest_algorithm", &self.digest_algorithm.to_string())?;
            st.serialize_field("sealed_at_unix_secs", &since.as_secs())?;
            st.serialize_field("sealed_at_nanos", &since.subsec_nanos())?;
            st.serialize_field("sealed_at", &crate::rfc3339_millis(self.sealed_at))?;
            st.serialize_field("shard_index", &self.shard_index)?;
            st.serialize_field("total_shards", &self.total_shards)?;
            st.serialize_field("seal", &self.signature.to_hex())?;
            st.end()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct CountingAllocation(Arc<AtomicUsize>);
    impl ShardAllocation for CountingAllocation {
        fn device(&self) -> u32 {
            0
        }
        fn len(&self) -> usize {
            4
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }
    impl Drop for CountingAllocation {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn fields() -> SealedFields {
        SealedFields {
            shard_id: "s".into(),
            gpu_device: 0,
            vram_bytes: 4,
            digest_algorithm: DigestAlgorithm::default(),
            digest: "ab".repeat(32),
            sealed_at: Some(SystemTime::UNIX_EPOCH),
            shard_index: None,
            total_shards: None,
        }
    }

    #[test]
    fn allocation_is_released_once_when_the_last_clone_drops() {
        let released = Arc::new(AtomicUsize::new(0));
        let shard = SealedShard::from_parts(
            fields(),
            SystemTime::now(),
            SealSignature::from_bytes([0; 32]),
            Some(Arc::new(CountingAllocation(released.clone()))),
        );
        let copy = shard.clone();
        assert_eq!(shard.handle_count(), 2);
        drop(shard);
        assert_eq!(released.load(Ordering::SeqCst), 0);
        drop(copy);
        assert_eq!(released.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn verify_compares_digests() {
        let shard = SealedShard::from_parts(
            fields(),
            SystemTime::now(),
            SealSignature::from_bytes([0; 32]),
            None,
        );
        assert!(shard.verify(&"ab".repeat(32)).is_ok());
        assert!(matches!(
            shard.verify(&"ac".repeat(32)),
            Err(VramError::IntegrityViolation { .. })
        ));
        assert!(shard.verify("").is_err());
    }

    #[test]
    fn sealed_fields_round_trip_and_time_can_be_left_out() {
        let shard = SealedShard::from_parts(
            fields(),
            SystemTime::now(),
            SealSignature::from_bytes([0; 32]),
            None,
        );
        assert_eq!(shard.sealed_fields(), fields());
        let now = SystemTime::now();
        let untimed = SealedShard::from_parts(
            SealedFields {
                sealed_at: None,
                ..fields()
            },
            now,
            SealSignature::from_bytes([0; 32]),
            None,
        );
        assert!(!untimed.seal_time_covered());
        assert_eq!(untimed.sealed_at, now);
        assert_eq!(untimed.sealed_fields().sealed_at, None);
    }

    #[test]
    fn debug_shows_residency_not_the_allocation() {
        let released = Arc::new(AtomicUsize::new(0));
        let shard = SealedShard::from_parts(
            fields(),
            SystemTime::now(),
            SealSignature::from_bytes([7; 32]),
            Some(Arc::new(CountingAllocation(released))),
        );
        let text = format!("{shard:?}");
        assert!(text.contains("resident: true"));
        assert!(!text.contains("CountingAllocation"));
    }
}
