//! The naive path, measured for comparison (`vramctl bench`): seal = one pageable copy of the
//! whole buffer + single-thread flat SHA-256; verify = one copy back + single-thread SHA-256.

use std::time::{Duration, Instant};

use vram_types::{DigestAlgorithm, VramError};

use crate::VramManager;

/// Times of the naive path for one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NaivePathTimes {
    /// One pageable host-to-device copy + single-thread SHA-256 of the bytes.
    pub seal: Duration,
    /// One device-to-host copy into pageable memory + single-thread SHA-256.
    pub verify: Duration,
}

impl VramManager {
    /// Runs the naive path on `bytes` on `gpu_device` and times it. The memory is reserved like
    /// a seal's and released before returning; nothing is sealed or audited.
    ///
    /// # Errors
    /// As sealing: [`VramError::InvalidInput`], [`VramError::InsufficientVram`], CUDA errors;
    /// [`VramError::IntegrityViolation`] if the bytes read back differ (a broken copy path).
    pub fn measure_naive_path(
        &self,
        bytes: &[u8],
        gpu_device: u32,
    ) -> Result<NaivePathTimes, VramError> {
        self.with_scratch_buffer(bytes.len(), gpu_device, |backend, buffer| {
            let t = Instant::now();
            backend.upload_unstaged(buffer, bytes)?;
            let sealed = vram_seal::digest::digest_serial(bytes, DigestAlgorithm::Sha256);
            let seal = t.elapsed();

            let t = Instant::now();
            let mut back = Vec::new();
            back.try_reserve_exact(bytes.len())
                .map_err(|_| VramError::HostMemoryExhausted {
                    needed: bytes.len(),
                })?;
            back.resize(bytes.len(), 0);
            backend.read_unstaged(buffer, &mut back)?;
            let again = vram_seal::digest::digest_serial(&back, DigestAlgorithm::Sha256);
            let verify = t.elapsed();
            if !sealed.ct_eq(&again) {
                return Err(VramError::IntegrityViolation {
                    shard_id: "naive-path".into(),
                    expected: sealed.to_hex(),
                    actual: again.to_hex(),
                });
            }
            Ok(NaivePathTimes { seal, verify })
        })
    }
}
