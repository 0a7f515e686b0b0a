//! The launch sequence of a digest: ranges checked, the range table uploaded, leaves hashed
//! (SHA-256 leaves, BLAKE3 chunks, or on the whole GPU BLAKE3 chunk groups), nodes folded level
//! by level, and the roots copied back. Geometry (block and grid sizes) lives here too.

use std::sync::Arc;

use cudarc::driver::result;
use vram_types::GpuShare;

use super::lane::{Scratch, roots_offset};
use super::layout::RangeLayout;
use super::{
    BLAKE3_FOLD_FAN_IN, BLAKE3_GROUP_CHUNKS, DIGEST_BYTES, GpuDigest, KERNEL_ALIGNMENT, Lane,
    MAX_BLOCK, SCHEDULERS_PER_SM, Span, TreeDigestEngine,
};
use crate::error::{CudaError, CudaStatus};
use crate::resident::Resident;
use crate::stream::Stream;

impl TreeDigestEngine {
    /// Checks every range, then queues the leaves, the fold and the copy of every root into
    /// the `lane`'s pinned memory (its range table first, for many ranges; then 32 bytes a
    /// root, device word order) on `stream`. Returns the scratch, which the caller drops after
    /// it has waited for the stream, and where in the lane's memory the roots are.
    pub(super) fn queue_roots(
        &self,
        stream: &Arc<Stream>,
        target: Target<'_>,
        digest: GpuDigest,
        share: GpuShare,
        lane: &mut Lane,
    ) -> Result<(Scratch, std::ops::Range<usize>), CudaError> {
        let out_of_host =
            || CudaError::Unreachable("a lane's pinned memory holds its table and roots");
        match target {
            Target::One(buffer, len) => {
                let roots = lane.host(32)?.get_mut(..32).ok_or_else(out_of_host)?;
                let (data, total) = self.checked(buffer, len)?;
                let leaves = digest.leaves(total);
                if let (GpuDigest::Blake3, GpuShare::Full) = (digest, share) {
                    return Ok((self.queue_blake3_groups(stream, data, total, roots)?, 0..32));
                }
                // Region A holds a state per leaf; region B, the first fold's output, is the
                // fold's other side.
                let first_fold = leaves.div_ceil(digest.fan_in());
                let scratch = Scratch::alloc(
                    stream,
                    leaves
                        .saturating_add(first_fold)
                        .saturating_mul(DIGEST_BYTES),
                )?;
                let (a, b) = (
                    scratch.at(0),
                    scratch.at(leaves.saturating_mul(DIGEST_BYTES)),
                );
                let source = LeafSource::One { data, total };
                self.queue_leaves(stream, digest, share, source, leaves, a)?;
                let root_at = self.fold(stream, digest, leaves, a, b)?;
                self.copy_roots(stream, root_at, roots)?;
                Ok((scratch, 0..32))
            }
            Target::Many(ranges) => {
                if ranges.is_empty() {
                    return Err(CudaError::InvalidArgument {
                        what: "tree digest",
                        reason: "no ranges to hash".into(),
                    });
                }
                let spans = ranges
                    .iter()
                    .map(|(memory, len)| self.checked(memory, *len))
                    .collect::<Result<Vec<_>, _>>()?;
                // BLAKE3 on the whole GPU: each block folds its group of chunks in shared
                // memory, so level 0 is the groups; otherwise the leaves.
                let groups = matches!((digest, share), (GpuDigest::Blake3, GpuShare::Full));
                let layout = if groups {
                    RangeLayout::blake3_groups(&spans, BLAKE3_GROUP_CHUNKS)
                } else {
                    RangeLayout::new(&spans, digest)
                };
                let table_bytes = layout.table_bytes();
                let leaves = layout.total(0);
                let scratch = Scratch::alloc(
                    stream,
                    table_bytes
                        .saturating_add(leaves.saturating_mul(DIGEST_BYTES))
                        .saturating_add(layout.total(1).saturating_mul(DIGEST_BYTES)),
                )?;
                let table = scratch.at(0);
                let a = scratch.at(table_bytes);
                let b = scratch.at(table_bytes.saturating_add(leaves.saturating_mul(DIGEST_BYTES)));
                let roots_at = usize::try_from(roots_offset(table_bytes)).unwrap_or(usize::MAX);
                let roots_end = roots_at.saturating_add(ranges.len().saturating_mul(32));
                let host = lane.host(roots_end)?;
                let (pinned_table, rest) = host
                    .split_at_mut_checked(roots_at)
                    .ok_or_else(out_of_host)?;
                self.upload_table(stream, table, &layout, pinned_table)?;
                let roots = rest
                    .get_mut(..roots_end.saturating_sub(roots_at))
                    .ok_or_else(out_of_host)?;
                let source = LeafSource::Ranges {
                    ptrs: table,
                    lens: table.saturating_add(layout.ranges().saturating_mul(8)),
                    offs: table.saturating_add(layout.offsets_byte(0)),
                    ranges: layout.ranges(),
                };
                if groups {
                    self.launch_blake3_range_groups(stream, source, leaves, a)?;
                } else {
                    self.queue_leaves(stream, digest, share, source, leaves, a)?;
                }
                let roots_from = self.fold_ranges(stream, digest, &layout, table, a, b)?;
                self.copy_roots(stream, roots_from, roots)?;
                Ok((scratch, roots_at..roots_end))
            }
        }
    }

    /// BLAKE3 of one range on the whole GPU: the chunk-group kernel folds each block's chunks
    /// in shared memory (one node per [`BLAKE3_GROUP_CHUNKS`] chunks comes out), then the fold
    /// launches; the scratch is a 128th of the per-chunk states, with no round trip through it.
    pub(super) fn queue_blake3_groups(
        &self,
        stream: &Arc<Stream>,
        data: u64,
        total: u64,
        roots: &mut [u8],
    ) -> Result<Scratch, CudaError> {
        let chunks = GpuDigest::Blake3.leaves(total);
        // A power of two, so that each block's chunks are an aligned subtree.
        let block = chunks.next_power_of_two().clamp(1, BLAKE3_GROUP_CHUNKS);
        let groups = chunks.div_ceil(block);
        let scratch = Scratch::alloc(
            stream,
            groups
                .saturating_add(groups.div_ceil(BLAKE3_FOLD_FAN_IN))
                .saturating_mul(DIGEST_BYTES),
        )?;
        let (a, b) = (
            scratch.at(0),
            scratch.at(groups.saturating_mul(DIGEST_BYTES)),
        );
        let grid = grid_for(groups, 1)?;
        let block = u32::try_from(block).unwrap_or(MAX_BLOCK);
        // SAFETY: `blake3_chunk_groups` takes (u8*, u64, u64, u32*), a function of the BLAKE3
        // module; the range was checked (`checked`) and stays allocated until the caller has
        // synchronised the stream; `a` holds one node per block, inside the live scratch.
        unsafe {
            self.blake3.module.launch_raw(
                self.blake3_groups,
                (grid, 1),
                block,
                &[data, total, chunks, a],
                stream.raw(),
            )
        }?;
        let root_at = self.fold(stream, GpuDigest::Blake3, groups, a, b)?;
        self.copy_roots(stream, root_at, roots)?;
        Ok(scratch)
    }

    /// Queues the range chunk-group kernel: one block of [`BLAKE3_GROUP_CHUNKS`] threads per
    /// group of every range in `source`'s table, `groups` in all, one node each into `nodes`.
    fn launch_blake3_range_groups(
        &self,
        stream: &Stream,
        source: LeafSource,
        groups: u64,
        nodes: u64,
    ) -> Result<(), CudaError> {
        let LeafSource::Ranges {
            ptrs,
            lens,
            offs,
            ranges,
        } = source
        else {
            return Err(CudaError::Unreachable("chunk groups of a range table"));
        };
        let grid = grid_for(groups, 1)?;
        let block = u32::try_from(BLAKE3_GROUP_CHUNKS).unwrap_or(MAX_BLOCK);
        // SAFETY: `blake3_range_chunk_groups` takes (u64* x3, u64 x2, u32*), a function of the
        // BLAKE3 module; the table holds `ranges` checked addresses and lengths and the
        // `ranges + 1` group offsets its launch block size makes (`RangeLayout::blake3_groups`
        // with `BLAKE3_GROUP_CHUNKS`); `nodes` has room for `groups` nodes; all of it stays
        // allocated until the queued work is done.
        unsafe {
            self.blake3.module.launch_raw(
                self.blake3_range_groups,
                (grid, 1),
                block,
                &[ptrs, lens, offs, ranges, groups, nodes],
                stream.raw(),
            )
        }
    }

    /// The address and length of a range the kernels may read: on this device, inside its
    /// memory, aligned for the kernels' loads.
    pub(super) fn checked(&self, buffer: &dyn Span, len: usize) -> Result<(u64, u64), CudaError> {
        let ordinal = self.device.ordinal();
        if buffer.ordinal() != ordinal {
            return Err(CudaError::WrongDevice {
                device: ordinal,
                found: buffer.ordinal(),
                operation: "tree digest",
            });
        }
        if len > buffer.span_len() {
            return Err(CudaError::OutOfRange {
                device: ordinal,
                operation: "tree digest",
            });
        }
        let data = buffer.address()?;
        if data % KERNEL_ALIGNMENT != 0 {
            return Err(CudaError::InvalidArgument {
                what: "tree digest",
                reason: format!("a range must start on a {KERNEL_ALIGNMENT}-byte boundary"),
            });
        }
        Ok((data, u64::try_from(len).unwrap_or(u64::MAX)))
    }

    /// Queues the leaf launches (the whole GPU or a bounded share of it).
    pub(super) fn queue_leaves(
        &self,
        stream: &Stream,
        digest: GpuDigest,
        share: GpuShare,
        source: LeafSource,
        leaves: u64,
        state: u64,
    ) -> Result<(), CudaError> {
        match share {
            GpuShare::Full => {
                let block = block_size(leaves, self.multiprocessors);
                let work = match digest {
                    GpuDigest::Sha256Tree(leaf) => LeafWork::Slice {
                        leaf: u64::from(leaf.get()),
                        begin: 0,
                        len: u64::from(leaf.get()),
                    },
                    GpuDigest::Blake3 => LeafWork::Chunks { per_thread: 1 },
                };
                self.launch_leaves(stream, digest, block, source, (0, leaves), work, state)
            }
            GpuShare::Bounded { sm_fraction } => {
                self.hash_leaves_bounded(stream, digest, source, leaves, sm_fraction, state)
            }
        }
    }

    /// Queues the copy of `roots.len() / 32` root states at `from` into `roots`, pinned memory
    /// (see [`Lane`]).
    pub(super) fn copy_roots(
        &self,
        stream: &Stream,
        from: u64,
        roots: &mut [u8],
    ) -> Result<(), CudaError> {
        // SAFETY: `from` points at `roots.len() / 32` node states inside the live scratch
        // allocation, written by work queued before on this stream; `roots` is pinned host
        // memory the caller keeps alive, and untouched, until it has synchronised the stream.
        unsafe { result::memcpy_dtoh_async(roots, from, stream.raw()) }
            .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "cuMemcpyDtoHAsync"))
    }

    /// Queues the copy of `layout`'s range table to `to` (device memory of its size) through
    /// `pinned`, pinned memory at least as long, which the caller leaves untouched until the
    /// copy has run (see [`Lane`]).
    pub(super) fn upload_table(
        &self,
        stream: &Stream,
        to: u64,
        layout: &RangeLayout,
        pinned: &mut [u8],
    ) -> Result<(), CudaError> {
        let len = usize::try_from(layout.table_bytes()).unwrap_or(usize::MAX);
        let pinned = pinned.get_mut(..len).ok_or(CudaError::Unreachable(
            "pinned memory holds the range table",
        ))?;
        for (out, word) in pinned.chunks_exact_mut(8).zip(layout.table()) {
            out.copy_from_slice(&word.to_ne_bytes());
        }
        self.device.bind()?;
        // SAFETY: `to` holds the table's bytes (the caller's scratch, sized for it); `pinned`
        // is pinned memory the caller keeps alive and untouched until the copy has run.
        unsafe { result::memcpy_htod_async(to, &*pinned, stream.raw()) }
            .map_err(|e| CudaStatus::from(e).during(self.device.ordinal(), "cuMemcpyHtoDAsync"))
    }

    /// Queues the leaf kernel of `digest` over leaves `first..first + count`, as much of each
    /// as `work` says.
    #[allow(clippy::too_many_arguments, reason = "the kernel's parameter list")]
    pub(super) fn launch_leaves(
        &self,
        stream: &Stream,
        digest: GpuDigest,
        block: u32,
        source: LeafSource,
        (first, count): (u64, u64),
        work: LeafWork,
        state: u64,
    ) -> Result<(), CudaError> {
        let kernels = self.kernels(digest);
        let threads = match work {
            LeafWork::Slice { .. } => count,
            LeafWork::Chunks { per_thread } => count.div_ceil(per_thread.max(1)),
        };
        let grid = grid_for(threads, block)?;
        // The bytes are checked to lie inside memory the caller keeps alive until the stream is
        // synchronised (`checked`); the table and `state` (8 words per leaf) are scratch, freed
        // in stream order after.
        let (function, args) = match (source, work) {
            (LeafSource::One { data, total }, LeafWork::Slice { leaf, begin, len }) => (
                kernels.leaves,
                vec![data, total, leaf, first, count, begin, len, state],
            ),
            (
                LeafSource::Ranges {
                    ptrs,
                    lens,
                    offs,
                    ranges,
                },
                LeafWork::Slice { leaf, begin, len },
            ) => (
                kernels.range_leaves,
                vec![
                    ptrs, lens, offs, ranges, leaf, first, count, begin, len, state,
                ],
            ),
            (LeafSource::One { data, total }, LeafWork::Chunks { per_thread }) => (
                kernels.leaves,
                vec![data, total, first, count, per_thread, state],
            ),
            (
                LeafSource::Ranges {
                    ptrs,
                    lens,
                    offs,
                    ranges,
                },
                LeafWork::Chunks { per_thread },
            ) => (
                kernels.range_leaves,
                vec![ptrs, lens, offs, ranges, first, count, per_thread, state],
            ),
        };
        // SAFETY: the parameter lists match the kernels': `sha256_leaves` (u8*, u64 x6, u32*),
        // `sha256_range_leaves` (u64* x3, u64 x6, u32*), `blake3_chunks` (u8*, u64 x4, u32*),
        // `blake3_range_chunks` (u64* x3, u64 x4, u32*), each function of `kernels.module`. A
        // range table holds `ranges` addresses and lengths and `ranges + 1` offsets, each
        // address with its length checked; all the memory stays allocated until the queued work
        // is done (see above).
        unsafe {
            kernels
                .module
                .launch_raw(function, (grid, 1), block, &args, stream.raw())
        }
    }

    /// Folds `leaves` node states at `a` level by level (ping-pong with `b`); returns where the
    /// root ends up.
    pub(super) fn fold(
        &self,
        stream: &Stream,
        digest: GpuDigest,
        leaves: u64,
        a: u64,
        b: u64,
    ) -> Result<u64, CudaError> {
        let kernels = self.kernels(digest);
        let (mut from, mut to, mut n) = (a, b, leaves);
        while n > 1 {
            let out = n.div_ceil(digest.fan_in());
            let (grid, block) = fold_geometry(digest, out)?;
            // SAFETY: `sha256_fold_level` and `blake3_fold` take (u32*, u32*, u64); `from` holds
            // `n` node states and `to` room for `ceil(n / fan_in)` (region B is sized for the
            // first fold, region A for every later one), both inside the live scratch
            // allocation.
            unsafe {
                kernels.module.launch_raw(
                    kernels.fold,
                    (grid, 1),
                    block,
                    &[from, to, n],
                    stream.raw(),
                )
            }?;
            (from, to, n) = (to, from, out);
        }
        Ok(from)
    }

    /// Folds every range's tree, all ranges in one launch per fold (ping-pong between `a`, the
    /// leaves, and `b`); returns where the roots end up, one per range in range order (at the
    /// last level every range has one node, at offsets 0..ranges).
    pub(super) fn fold_ranges(
        &self,
        stream: &Stream,
        digest: GpuDigest,
        layout: &RangeLayout,
        table: u64,
        a: u64,
        b: u64,
    ) -> Result<u64, CudaError> {
        let kernels = self.kernels(digest);
        let (mut from, mut to) = (a, b);
        for level in 1..layout.levels() {
            let n_out = layout.total(level);
            let (grid, block) = fold_geometry(digest, n_out)?;
            let in_offs = table.saturating_add(layout.offsets_byte(level.saturating_sub(1)));
            let out_offs = table.saturating_add(layout.offsets_byte(level));
            // SAFETY: `sha256_range_fold_level` and `blake3_range_fold` take (u32*, u32*, u64*,
            // u64*, u64, u64); `from` holds the level above's nodes and `to` room for this
            // level's (region B is sized for level 1, the largest after the leaves; region A for
            // the leaves), and both offset tables lie in the uploaded table, all inside the live
            // scratch allocation.
            unsafe {
                kernels.module.launch_raw(
                    kernels.range_fold,
                    (grid, 1),
                    block,
                    &[from, to, in_offs, out_offs, layout.ranges(), n_out],
                    stream.raw(),
                )
            }?;
            (from, to) = (to, from);
        }
        Ok(from)
    }
}

/// Threads per block for a launch over `leaves` leaves: whole blocks of 128 when there are
/// leaves enough to fill the GPU, otherwise small blocks so the leaves spread over every warp
/// scheduler of every SM. (With few leaves each thread is latency-bound: a warp per scheduler
/// with a few active lanes outruns one full warp per SM.)
#[must_use]
pub fn block_size(leaves: u64, multiprocessors: u32) -> u32 {
    let schedulers = u64::from(multiprocessors.max(1)).saturating_mul(SCHEDULERS_PER_SM);
    if leaves >= schedulers.saturating_mul(32) {
        MAX_BLOCK
    } else {
        u32::try_from(leaves.div_ceil(schedulers).clamp(1, 32)).unwrap_or(32)
    }
}

pub(super) fn grid_for(threads: u64, block: u32) -> Result<u32, CudaError> {
    u32::try_from(threads.div_ceil(u64::from(block.max(1)))).map_err(|_| {
        CudaError::InvalidArgument {
            what: "digest launch",
            reason: "more than 2^32 blocks".into(),
        }
    })
}

/// Grid and block of a fold launch making `out` nodes: a thread per node for SHA-256, a block
/// of `MAX_BLOCK` threads per node (its group of up to 256 in shared memory) for BLAKE3.
pub(super) fn fold_geometry(digest: GpuDigest, out: u64) -> Result<(u32, u32), CudaError> {
    match digest {
        GpuDigest::Sha256Tree(_) => Ok((grid_for(out, MAX_BLOCK)?, MAX_BLOCK)),
        GpuDigest::Blake3 => Ok((grid_for(out, 1)?, MAX_BLOCK)),
    }
}

/// How much of each leaf one leaf launch hashes.
#[derive(Clone, Copy)]
pub(super) enum LeafWork {
    /// SHA-256: bytes `begin..begin + len` of every `leaf`-byte leaf, the chaining state kept
    /// between slices.
    Slice { leaf: u64, begin: u64, len: u64 },
    /// BLAKE3: whole chunks, `per_thread` of them per thread.
    Chunks { per_thread: u64 },
}

/// Where a leaf launch finds its bytes: one range, or a table of many in scratch memory.
#[derive(Clone, Copy)]
pub(super) enum LeafSource {
    /// `total` bytes at `data`.
    One { data: u64, total: u64 },
    /// `ranges` ranges: device addresses of their addresses, lengths and leaf offsets.
    Ranges {
        ptrs: u64,
        lens: u64,
        offs: u64,
        ranges: u64,
    },
}

/// What one digest launch sequence reads.
#[derive(Clone, Copy)]
pub(super) enum Target<'a> {
    /// The first `len` bytes of one span.
    One(&'a dyn Span, usize),
    /// Many ranges, each `(memory, len)`.
    Many(&'a [(Resident, usize)]),
}

#[cfg(test)]
mod tests {
    use super::block_size;

    #[test]
    fn few_leaves_spread_over_every_scheduler_many_fill_blocks() {
        assert_eq!(block_size(262_144, 132), 128);
        assert_eq!(block_size(16_896, 132), 128);
        assert_eq!(block_size(16_384, 132), 32);
        assert_eq!(block_size(4096, 132), 8);
        assert_eq!(block_size(16, 132), 1);
        assert_eq!(block_size(1, 0), 1);
    }
}
