//! Many ranges' trees laid out together for the range kernels.

use super::GpuDigest;

/// Many ranges' trees laid out together: the table the range kernels read (every range's
/// address and length, then for each fold level the prefix offsets of every range's nodes) and
/// the node count of each level. Level 0 is the leaves; each level has a fold's fan-in fewer
/// nodes per range (rounded up); at the last level every range has one node, its root.
pub(super) struct RangeLayout {
    /// `[addresses | lengths | offsets of level 0 | offsets of level 1 | ...]`, `ranges + 1`
    /// offsets per level.
    table: Vec<u64>,
    ranges: u64,
    levels: usize,
}

impl RangeLayout {
    /// The layout of `spans` (`(address, length)` each) hashed with `digest`.
    pub(super) fn new(spans: &[(u64, u64)], digest: GpuDigest) -> Self {
        Self::in_nodes_of(spans, digest, 1)
    }

    /// The layout of `spans` hashed with BLAKE3 by the range chunk-group kernel: level 0 is
    /// every range's groups of `group` chunks (one node each), not its chunks.
    pub(super) fn blake3_groups(spans: &[(u64, u64)], group: u64) -> Self {
        Self::in_nodes_of(spans, GpuDigest::Blake3, group)
    }

    /// Level 0 has a node per `leaves_per_node` leaves of each range (rounded up).
    fn in_nodes_of(spans: &[(u64, u64)], digest: GpuDigest, leaves_per_node: u64) -> Self {
        let ranges = u64::try_from(spans.len()).unwrap_or(u64::MAX);
        let mut table: Vec<u64> = spans.iter().map(|(address, _)| *address).collect();
        table.extend(spans.iter().map(|(_, len)| *len));
        let mut counts: Vec<u64> = spans
            .iter()
            .map(|(_, len)| digest.leaves(*len).div_ceil(leaves_per_node.max(1)))
            .collect();
        let mut levels = 0usize;
        loop {
            table.push(0);
            let mut sum = 0u64;
            for count in &counts {
                sum = sum.saturating_add(*count);
                table.push(sum);
            }
            levels = levels.saturating_add(1);
            if counts.iter().all(|c| *c <= 1) {
                break;
            }
            for count in &mut counts {
                *count = count.div_ceil(digest.fan_in());
            }
        }
        Self {
            table,
            ranges,
            levels,
        }
    }

    /// The table as uploaded.
    pub(super) fn table(&self) -> &[u64] {
        &self.table
    }

    /// How many ranges.
    pub(super) fn ranges(&self) -> u64 {
        self.ranges
    }

    /// Levels, the leaves included.
    pub(super) fn levels(&self) -> usize {
        self.levels
    }

    pub(super) fn table_bytes(&self) -> u64 {
        u64::try_from(self.table.len())
            .unwrap_or(u64::MAX)
            .saturating_mul(8)
    }

    /// Byte offset in the table of `level`'s offsets.
    pub(super) fn offsets_byte(&self, level: usize) -> u64 {
        let per_level = self.ranges.saturating_add(1);
        let level = u64::try_from(level).unwrap_or(u64::MAX);
        self.ranges
            .saturating_mul(2)
            .saturating_add(level.saturating_mul(per_level))
            .saturating_mul(8)
    }

    /// Nodes at `level`, every range together (0 past the last level).
    pub(super) fn total(&self, level: usize) -> u64 {
        if level >= self.levels {
            return 0;
        }
        let end = self.offsets_byte(level.saturating_add(1)) / 8;
        usize::try_from(end.saturating_sub(1))
            .ok()
            .and_then(|i| self.table.get(i))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vram_types::LeafSize;

    #[test]
    fn levels_shrink_by_the_fold_fan_in_until_every_range_has_its_root() {
        let spans = [(0, 3 * 1024 * 1024), (0, 1), (0, 300 * 1024)];
        let b3 = RangeLayout::new(&spans, GpuDigest::Blake3);
        // 3072, 1 and 300 chunks; then 12, 1 and 2; then 1, 1 and 1.
        assert_eq!(b3.levels(), 3);
        assert_eq!((b3.total(0), b3.total(1), b3.total(2)), (3373, 15, 3));
        // In groups of 128 chunks: 24, 1 and 3 groups; then 1, 1 and 1.
        let groups = RangeLayout::blake3_groups(&spans, 128);
        assert_eq!(groups.levels(), 2);
        assert_eq!((groups.total(0), groups.total(1)), (28, 3));
        let sha = RangeLayout::new(&spans, GpuDigest::Sha256Tree(LeafSize::DEFAULT));
        // 48, 1 and 5 leaves, halved six times.
        assert_eq!(sha.levels(), 7);
        assert_eq!(sha.total(0), 54);
        assert_eq!(sha.total(6), 3);
    }
}
