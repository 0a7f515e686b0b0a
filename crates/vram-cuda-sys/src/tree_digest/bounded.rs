//! Bounded slicing: a digest at a bounded share of the GPU hashes its leaves in short launches on
//! a fraction of the SMs, so an engine's kernels get the SMs back often.

use super::launch::{LeafSource, LeafWork};
use super::{
    BLAKE3_BOUNDED_FACTOR, BLAKE3_CHUNK_BYTES, GpuDigest, MAX_BLOCK, TreeDigestEngine, block_size,
};
use crate::error::CudaError;
use crate::stream::Stream;

impl TreeDigestEngine {
    /// At most `sm_fraction` of the SMs busy at a time: groups of leaves as many as that many
    /// blocks hold, each launch hashing `bounded_slice_bytes` per thread (a slice of every
    /// SHA-256 leaf, whole BLAKE3 chunks).
    pub(super) fn hash_leaves_bounded(
        &self,
        stream: &Stream,
        digest: GpuDigest,
        source: LeafSource,
        leaves: u64,
        sm_fraction: f32,
        state: u64,
    ) -> Result<(), CudaError> {
        let blocks = bounded_blocks(self.multiprocessors, sm_fraction);
        let threads = u64::from(blocks).saturating_mul(u64::from(MAX_BLOCK));
        let (per_launch, per_thread) = match digest {
            GpuDigest::Sha256Tree(_) => (threads, 1),
            GpuDigest::Blake3 => {
                // A BLAKE3 chunk costs about 2.6x less GPU time than a KiB of SHA-256 (1.93
                // against 0.75 TB/s on an H100, `docs/perf.md`): twice the slice in chunks keeps
                // a launch no longer than a SHA-256 slice, so it costs an engine no more and
                // verifies twice the bytes (measured beside a GEMM: 2.0-2.1x at the same cost).
                let per_thread = (self
                    .bounded_slice_bytes
                    .saturating_mul(BLAKE3_BOUNDED_FACTOR)
                    / BLAKE3_CHUNK_BYTES)
                    .max(1);
                (threads.saturating_mul(per_thread), per_thread)
            }
        };
        let mut first = 0u64;
        while first < leaves {
            let count = per_launch.min(leaves.saturating_sub(first));
            // One block per SM at most: small groups use small blocks, like whole-GPU launches.
            let block = block_size(count.div_ceil(per_thread), blocks).min(MAX_BLOCK);
            match digest {
                GpuDigest::Sha256Tree(leaf) => {
                    let leaf = u64::from(leaf.get());
                    let mut begin = 0u64;
                    while begin < leaf {
                        let work = LeafWork::Slice {
                            leaf,
                            begin,
                            len: self.bounded_slice_bytes,
                        };
                        self.launch_leaves(
                            stream,
                            digest,
                            block,
                            source,
                            (first, count),
                            work,
                            state,
                        )?;
                        begin = begin.saturating_add(self.bounded_slice_bytes);
                    }
                }
                GpuDigest::Blake3 => {
                    let work = LeafWork::Chunks { per_thread };
                    self.launch_leaves(stream, digest, block, source, (first, count), work, state)?;
                }
            }
            first = first.saturating_add(count);
        }
        Ok(())
    }
}

/// Blocks a bounded launch may use: `sm_fraction` of the SMs, at least one.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "a fraction in (0, 1] of a small SM count"
)]
pub(super) fn bounded_blocks(multiprocessors: u32, sm_fraction: f32) -> u32 {
    let fraction = if sm_fraction.is_finite() {
        sm_fraction.clamp(0.0, 1.0)
    } else {
        1.0
    };
    ((multiprocessors as f32 * fraction).floor() as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::bounded_blocks;

    #[test]
    fn a_bounded_share_takes_a_fraction_of_the_sms_and_at_least_one() {
        assert_eq!(bounded_blocks(132, 0.0625), 8);
        assert_eq!(bounded_blocks(132, 1.0), 132);
        assert_eq!(bounded_blocks(132, 0.001), 1);
        assert_eq!(bounded_blocks(132, f32::NAN), 132);
    }
}
