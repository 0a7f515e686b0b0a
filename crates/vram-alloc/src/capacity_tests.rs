//! Unit tests of the capacity accounting (apart from `capacity.rs`, which the loom model
//! compiles on its own).

use crate::capacity::DeviceCapacity;

#[test]
fn reserve_up_to_exact_capacity_and_release() {
    let cap = DeviceCapacity::new(10);
    let a = DeviceCapacity::try_reserve(&cap, 6).unwrap();
    assert_eq!(DeviceCapacity::try_reserve(&cap, 5).unwrap_err(), 4);
    let b = DeviceCapacity::try_reserve(&cap, 4).unwrap();
    assert_eq!(cap.available(), 0);
    drop(a);
    assert_eq!(cap.used(), 4);
    drop(b);
    assert_eq!(cap.used(), 0);
    assert_eq!(
        DeviceCapacity::try_reserve(&cap, usize::MAX).unwrap_err(),
        10
    );
}

#[test]
fn concurrent_reservations_never_over_commit() {
    let cap = DeviceCapacity::new(1000);
    let held: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..100)
                        .filter_map(|_| DeviceCapacity::try_reserve(&cap, 3).ok())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(held.len(), 333);
    assert_eq!(cap.used(), 999);
    drop(held);
    assert_eq!(cap.used(), 0);
}
