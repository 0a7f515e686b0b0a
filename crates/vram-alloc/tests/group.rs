//! Tensor-parallel groups on the mock backend: all-or-nothing placement across 1, 2 and 8
//! devices, uneven capacity, a failure on the last part, and every way of tampering with a
//! sealed group (missing, duplicated, swapped, reordered and foreign shards).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::io;

use common::{MIB, keep_going, model, names, rig_with};
use proptest::prelude::*;
use vram_alloc::audit::AuditEvent;
use vram_alloc::backend::MockBackend;
use vram_alloc::{GroupPart, SealedGroup};
use vram_types::{ShardSource, VramConfig, VramError};

fn devices(capacities: &[usize]) -> MockBackend {
    capacities
        .iter()
        .fold(MockBackend::builder(), |b, c| b.device(*c))
        .build()
}

fn parts<'a>(data: &'a [Vec<u8>], devices: &[u32]) -> Vec<GroupPart<'a>> {
    data.iter()
        .zip(devices)
        .map(|(d, &gpu_device)| GroupPart {
            source: d as &dyn ShardSource,
            gpu_device,
        })
        .collect()
}

#[test]
fn groups_of_one_two_and_eight_seal_verify_and_name_their_group() {
    for n in [1usize, 2, 8] {
        let r = rig_with(devices(&vec![16 * MIB; n]), VramConfig::default());
        let data: Vec<Vec<u8>> = (0..n).map(|i| model(3 * MIB, i as u8)).collect();
        let on: Vec<u32> = (0..n as u32).collect();
        let group = r
            .manager
            .seal_model_group("llama", &parts(&data, &on))
            .unwrap();
        assert_eq!(group.shards.len(), n);
        for (i, s) in group.shards.iter().enumerate() {
            assert_eq!(s.shard_id, format!("llama:tp{i}"));
            assert_eq!(
                (s.shard_index, s.total_shards, s.gpu_device),
                (Some(i), Some(n), i as u32)
            );
            assert_eq!(r.manager.used_vram_on(i as u32).unwrap(), 4 * MIB);
        }
        r.manager.verify_group(&group).unwrap();
        let sealed: Vec<_> = r
            .audit
            .events()
            .into_iter()
            .filter_map(|e| match e {
                AuditEvent::VramSealed { group_id, .. } => Some(group_id),
                _ => None,
            })
            .collect();
        assert_eq!(sealed, vec![Some("llama".to_owned()); n]);
        drop(group);
        assert_eq!(r.manager.used_vram(), 0);
        assert_eq!(r.mock.live_allocations(), 0);
    }
}

#[test]
fn every_device_must_hold_its_share_before_anything_is_copied() {
    // Fits on the sum of the devices, not on one: refused when all parts go to device 0.
    let r = rig_with(devices(&[12 * MIB, 12 * MIB]), VramConfig::default());
    let data = vec![model(8 * MIB, 1), model(8 * MIB, 2)];
    let err = r
        .manager
        .seal_model_group("m", &parts(&data, &[0, 0]))
        .unwrap_err();
    assert_eq!(
        err,
        VramError::InsufficientVram {
            needed: 16 * MIB,
            available: 12 * MIB,
            device: 0
        }
    );
    assert_eq!((r.manager.used_vram(), r.mock.live_allocations()), (0, 0));
    // Refused by the plan before anything was placed, and recorded the way every capacity
    // refusal is: one `VramAllocationFailed` for the device, with its whole share.
    let events = r.audit.events();
    assert_eq!(names(&events), ["VramAllocationFailed"]);
    assert!(
        matches!(
            &events[0],
            AuditEvent::VramAllocationFailed { gpu_device: 0, requested, available, .. }
                if *requested == 16 * MIB && *available == 12 * MIB
        ),
        "{events:?}"
    );
    // Spread over both devices, it fits.
    let group = r
        .manager
        .seal_model_group("m", &parts(&data, &[0, 1]))
        .unwrap();
    r.manager.verify_group(&group).unwrap();
    // Uneven devices: the small one decides.
    let r = rig_with(devices(&[64 * MIB, 4 * MIB]), VramConfig::default());
    let err = r
        .manager
        .seal_model_group("m", &parts(&data, &[0, 1]))
        .unwrap_err();
    assert!(
        matches!(err, VramError::InsufficientVram { device: 1, .. }),
        "{err:?}"
    );
    assert_eq!(r.manager.used_vram(), 0);
}

/// A source that fails to read.
struct Broken(usize);

impl ShardSource for Broken {
    fn len(&self) -> u64 {
        self.0 as u64
    }

    fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other("disk on fire"))
    }
}

#[test]
fn a_failure_on_the_last_part_leaves_nothing_placed_and_nothing_sealed() {
    let r = rig_with(devices(&[16 * MIB, 16 * MIB]), VramConfig::default());
    let good = model(3 * MIB, 1);
    let broken = Broken(3 * MIB);
    let group = [
        GroupPart {
            source: &good.as_slice(),
            gpu_device: 0,
        },
        GroupPart {
            source: &broken,
            gpu_device: 1,
        },
    ];
    let err = r.manager.seal_model_group("m", &group).unwrap_err();
    assert!(matches!(err, VramError::SourceReadFailed { .. }), "{err:?}");
    assert_eq!((r.manager.used_vram(), r.mock.live_allocations()), (0, 0));
    let events = names(&r.audit.events());
    assert!(!events.contains(&"VramSealed"), "{events:?}");
    // The failing part's allocation came and went (SealAborted), then the shard placed
    // before it was released.
    assert_eq!(
        events,
        ["SealAborted", "VramDeallocated"],
        "every allocation is accounted for"
    );
    // The ids are free again.
    let data = vec![model(3 * MIB, 1), model(3 * MIB, 2)];
    r.manager
        .seal_model_group("m", &parts(&data, &[0, 1]))
        .unwrap();
}

fn three(r: &common::Rig) -> SealedGroup {
    let data: Vec<Vec<u8>> = (0..3).map(|i| model(MIB, 10 + i)).collect();
    r.manager
        .seal_model_group("m", &parts(&data, &[0, 1, 0]))
        .unwrap()
}

#[test]
fn missing_duplicated_swapped_reordered_and_foreign_shards_are_refused() {
    let r = rig_with(devices(&[64 * MIB, 64 * MIB]), keep_going());
    let group = three(&r);
    let other = {
        let data: Vec<Vec<u8>> = (0..3).map(|i| model(MIB, 50 + i)).collect();
        r.manager
            .seal_model_group("other", &parts(&data, &[0, 1, 0]))
            .unwrap()
    };
    let refused = |g: &SealedGroup| {
        let e = r.manager.verify_group(g).unwrap_err();
        assert!(
            matches!(e, VramError::SealVerificationFailed { ref shard_id, .. } if shard_id == "m"),
            "{e:?}"
        );
    };
    let mut missing = group.clone();
    missing.shards.pop();
    refused(&missing);
    let mut duplicated = group.clone();
    duplicated.shards[2] = duplicated.shards[1].clone();
    refused(&duplicated);
    let mut reordered = group.clone();
    reordered.shards.swap(0, 2);
    refused(&reordered);
    let mut foreign = group.clone();
    foreign.shards[1] = other.shards[1].clone();
    refused(&foreign);
    let mut swapped_field = group.clone();
    swapped_field.shards[0].digest = group.shards[2].digest.clone();
    refused(&swapped_field);
    r.manager.verify_group(&group).unwrap();
    r.manager.verify_group(&other).unwrap();
    assert!(!r.manager.is_stopped());
}

#[test]
fn a_corrupted_shard_is_reported_by_name_and_the_others_still_checked() {
    let r = rig_with(devices(&[64 * MIB, 64 * MIB]), keep_going());
    let group = three(&r);
    r.manager
        .corrupt_byte_for_tests(&group.shards[1], 77)
        .unwrap();
    let e = r.manager.verify_group(&group).unwrap_err();
    assert!(
        matches!(e, VramError::IntegrityViolation { ref shard_id, .. } if shard_id == "m:tp1"),
        "{e:?}"
    );
    let verified = names(&r.audit.events())
        .iter()
        .filter(|n| **n == "SealVerified")
        .count();
    assert_eq!(verified, 2, "shards 0 and 2 were still checked");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_groups_verify_and_any_edited_shard_field_fails(
        sizes in prop::collection::vec(1usize..3 * MIB, 1..5),
        placement in prop::collection::vec(0u32..3, 5),
        which in 0usize..5,
        field in 0usize..3,
    ) {
        let r = rig_with(devices(&[32 * MIB, 32 * MIB, 32 * MIB]), keep_going());
        let data: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, n)| model(*n, i as u8)).collect();
        let group = r.manager.seal_model_group("m", &parts(&data, &placement[..data.len()])).unwrap();
        r.manager.verify_group(&group).unwrap();
        let mut edited = group.clone();
        let s = &mut edited.shards[which % data.len()];
        match field {
            0 => s.digest = "0".repeat(64),
            1 => s.vram_bytes += 1,
            _ => s.gpu_device = (s.gpu_device + 1) % 3,
        }
        prop_assert!(r.manager.verify_group(&edited).is_err());
        prop_assert!(r.manager.verify_group(&group).is_ok());
    }
}

#[test]
fn bad_group_input_is_refused_before_anything_happens() {
    let r = rig_with(devices(&[16 * MIB]), VramConfig::default());
    let data = vec![model(MIB, 1)];
    assert!(r.manager.seal_model_group("m", &[]).is_err());
    assert!(
        r.manager
            .seal_model_group("../m", &parts(&data, &[0]))
            .is_err()
    );
    assert!(matches!(
        r.manager.seal_model_group("m", &parts(&data, &[5])),
        Err(VramError::InvalidDevice { .. })
    ));
    assert!(r.audit.events().is_empty());
    assert_eq!(r.manager.used_vram(), 0);
}
