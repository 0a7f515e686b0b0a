//! A loom model of the capacity reservation core (`src/capacity.rs`, compiled here against
//! loom's atomics): under every interleaving loom explores, concurrent reservations never
//! over-commit a device, a refusal reports a true free count, and every reservation's bytes
//! come back when it is dropped.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::arithmetic_side_effects,
    dead_code,
    unreachable_pub,
    missing_docs,
    reason = "tests; the included module has items this model does not call"
)]

/// What `capacity.rs` imports as `crate::sync::atomics`.
mod sync {
    pub mod atomics {
        pub use loom::sync::Arc;
        pub use loom::sync::atomic::{AtomicUsize, Ordering};
    }
}

#[path = "../src/capacity.rs"]
mod capacity;

use capacity::DeviceCapacity;
use loom::thread;

/// Three threads race to reserve on a device that fits two of their requests. Loom explores
/// every interleaving with up to 3 preemptions (the bound that keeps this under a few seconds;
/// each thread makes at most two attempts at its one compare-exchange).
#[test]
fn racing_reservations_never_over_commit_and_always_return_their_bytes() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        let cap = DeviceCapacity::new(10);
        let handles: Vec<_> = [4usize, 5, 6]
            .into_iter()
            .map(|bytes| {
                let cap = loom::sync::Arc::clone(&cap);
                thread::spawn(move || match DeviceCapacity::try_reserve(&cap, bytes) {
                    Ok(r) => {
                        assert!(cap.used() <= cap.total(), "over-committed");
                        assert_eq!(r.bytes(), bytes);
                        Some(r)
                    }
                    Err(available) => {
                        // A refusal is for want of room at some moment: the bytes reported
                        // free did not fit the request.
                        assert!(available < bytes, "refused {bytes} with {available} free");
                        None
                    }
                })
            })
            .collect();
        let held: Vec<_> = handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        let total: usize = held.iter().map(capacity::Reservation::bytes).sum();
        assert!(total <= 10, "{total} bytes granted on a 10-byte device");
        assert!(!held.is_empty(), "the first request always fits");
        assert_eq!(cap.used(), total);
        drop(held);
        assert_eq!(cap.used(), 0);
    });
}

/// A release racing with a reservation: the reservation either sees the bytes come back or is
/// refused with a count that was true when it looked, and nothing is lost either way.
#[test]
fn a_release_racing_a_reservation_loses_nothing() {
    loom::model(|| {
        let cap = DeviceCapacity::new(8);
        let first = DeviceCapacity::try_reserve(&cap, 6).unwrap();
        let racer = {
            let cap = loom::sync::Arc::clone(&cap);
            thread::spawn(move || DeviceCapacity::try_reserve(&cap, 4).ok())
        };
        drop(first);
        let second = racer.join().unwrap();
        assert_eq!(
            cap.used(),
            second.as_ref().map_or(0, capacity::Reservation::bytes)
        );
        drop(second);
        assert_eq!(cap.used(), 0);
    });
}
