//! The order a scrubber takes the live shards in: the least recently proven first, fixed once a
//! round (finding the oldest by a walk over every live shard at each pick made a round of
//! 50,000 tensors take 612 s), and held weakly, so that a shard released meanwhile is skipped
//! rather than kept allocated.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use super::resident_allocation::ResidentAllocation;

/// One round's order (see the module docs).
#[derive(Default)]
pub(super) struct ProofOrder {
    queue: VecDeque<Weak<ResidentAllocation>>,
}

impl ProofOrder {
    /// Whether the round is over.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Ends the round.
    pub(super) fn clear(&mut self) {
        self.queue.clear();
    }

    /// Makes `shards` the round, the least recently proven first; equal proof times (a coarse
    /// clock) are ordered by `tie`.
    pub(super) fn fill(
        &mut self,
        shards: &[Arc<ResidentAllocation>],
        tie: impl Fn(&ResidentAllocation) -> u64,
    ) {
        let mut order: Vec<_> = shards
            .iter()
            .map(|r| (r.last_proven(), tie(r), r))
            .collect();
        order.sort_by_key(|(proven, tie, _)| (*proven, *tie));
        self.queue = order
            .into_iter()
            .map(|(_, _, r)| Arc::downgrade(r))
            .collect();
    }

    /// The next shard of the round that is still live.
    pub(super) fn pop(&mut self) -> Option<Arc<ResidentAllocation>> {
        while let Some(weak) = self.queue.pop_front() {
            if let Some(resident) = weak.upgrade() {
                return Some(resident);
            }
        }
        None
    }

    /// Puts a shard taken but not used back at the front.
    pub(super) fn put_back(&mut self, resident: &Arc<ResidentAllocation>) {
        self.queue.push_front(Arc::downgrade(resident));
    }
}
