//! Seal plans on the mock backend: one pre-flight for every way of sealing. Everything that can
//! be checked before a byte is copied is checked by the plan (ids, sizes, devices, capacity of
//! every device, expected digests in another algorithm); executing it places the parts in
//! order, and the first failure releases everything the plan placed, naming the part.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::ops::ControlFlow;

use common::{MIB, model, names, rig, rig_with};
use vram_alloc::audit::AuditEvent;
use vram_alloc::backend::MockBackend;
use vram_alloc::{PlanError, PlanStep, SealOptions, SealPart};
use vram_seal::digest;
use vram_types::{DigestAlgorithm, VramConfig, VramError};

fn named<'a>(bytes: &'a Vec<u8>, id: &str) -> SealPart<'a> {
    SealPart::new(bytes, 0).with_options(SealOptions::new().shard_id(id))
}

#[test]
fn a_plan_reserves_every_part_before_anything_is_placed_and_executes_in_order() {
    let r = rig(16 * MIB);
    let (a, b) = (model(3 * MIB, 1), model(MIB, 2));
    let plan = r
        .manager
        .plan_seal(vec![named(&a, "a"), named(&b, "b")])
        .unwrap();
    assert_eq!(plan.len(), 2);
    assert_eq!(plan.reserved_bytes(), 6 * MIB);
    // Reserved, not placed: the capacity is held, no buffer exists, nothing is audited.
    assert_eq!(r.manager.used_vram(), 6 * MIB);
    assert_eq!(r.mock.live_allocations(), 0);
    assert!(r.audit.events().is_empty());
    // An id the plan claimed cannot be sealed by anyone else meanwhile.
    assert!(matches!(
        r.manager.seal_model_with_id("a", &b, 0),
        Err(VramError::AlreadySealed { .. })
    ));
    let shards = plan.execute().unwrap();
    let ids: Vec<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(r.manager.used_vram(), 6 * MIB);
    assert_eq!(names(&r.audit.events()), ["VramSealed", "VramSealed"]);
    drop(shards);
    assert_eq!(r.manager.used_vram(), 0);
}

#[test]
fn a_dropped_plan_gives_back_its_capacity_and_ids() {
    let r = rig(16 * MIB);
    let a = model(MIB, 1);
    let plan = r.manager.plan_seal(vec![named(&a, "a")]).unwrap();
    assert_eq!(r.manager.used_vram(), 2 * MIB);
    drop(plan);
    assert_eq!(r.manager.used_vram(), 0);
    r.manager.seal_model_with_id("a", &a, 0).unwrap();
}

#[test]
fn the_plan_refuses_what_it_can_know_and_changes_nothing() {
    let r = rig(8 * MIB);
    let (a, big) = (model(MIB, 1), model(7 * MIB, 2));
    // Two parts that would be one shard.
    let err = r
        .manager
        .plan_seal(vec![named(&a, "x"), named(&big, "y"), named(&a, "x")])
        .unwrap_err();
    assert_eq!(
        err,
        PlanError::SameShardId {
            first: 0,
            second: 2,
            shard_id: "x".into()
        }
    );
    assert_eq!(err.part(), Some(2));
    // A bad part is named by its position.
    let err = r
        .manager
        .plan_seal(vec![named(&a, "ok"), named(&a, "../etc/passwd")])
        .unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::Part {
                part: 1,
                error: VramError::InvalidInput { .. }
            }
        ),
        "{err:?}"
    );
    let err = r.manager.plan_seal(vec![SealPart::new(&a, 7)]).unwrap_err();
    assert!(matches!(
        err,
        PlanError::Part {
            part: 0,
            error: VramError::InvalidDevice { .. }
        }
    ));
    // Rejected input is not audited and holds nothing.
    assert!(r.audit.events().is_empty());
    assert_eq!(r.manager.used_vram(), 0);
    // Each part fits alone, not together: the device's whole share is refused, and audited.
    let err = r
        .manager
        .plan_seal(vec![named(&a, "a"), named(&big, "big")])
        .unwrap_err();
    assert_eq!(
        VramError::from(err),
        VramError::InsufficientVram {
            needed: 10 * MIB,
            available: 8 * MIB,
            device: 0
        }
    );
    assert_eq!(names(&r.audit.events()), ["VramAllocationFailed"]);
    assert_eq!((r.manager.used_vram(), r.mock.live_allocations()), (0, 0));
    // The ids it had claimed are free again.
    r.manager.seal_model_with_id("a", &a, 0).unwrap();
}

#[test]
fn a_flat_sha256_is_checked_on_the_resident_bytes_and_a_mismatch_releases_the_plan() {
    let r = rig(16 * MIB);
    let (a, b) = (model(MIB, 1), model(MIB, 2));
    let flat = |bytes: &[u8]| digest(bytes, DigestAlgorithm::Sha256);
    let wrong = SealOptions::new()
        .shard_id("b")
        .expect_digest_in(DigestAlgorithm::Sha256, flat(&a));
    let right = SealOptions::new()
        .shard_id("a")
        .expect_digest_in(DigestAlgorithm::Sha256, flat(&a));
    let plan = r
        .manager
        .plan_seal(vec![
            SealPart::new(&a, 0).with_options(right.clone()),
            SealPart::new(&b, 0).with_options(wrong),
        ])
        .unwrap();
    let mut steps = Vec::new();
    let err = plan
        .execute_with(|step| {
            steps.push(format!("{step:?}"));
            ControlFlow::Continue(())
        })
        .unwrap_err();
    match &err {
        PlanError::Part {
            part: 1,
            error: VramError::UnexpectedDigest { actual, .. },
        } => assert_eq!(
            actual,
            &flat(&b).to_hex(),
            "the flat digest of what reached VRAM"
        ),
        other => panic!("{other:?}"),
    }
    // Part 0 was sealed, part 1 placed and refused; both released, nothing left.
    assert_eq!(steps.len(), 1);
    assert!(steps[0].starts_with("Sealed { part: 0"), "{steps:?}");
    assert_eq!(
        names(&r.audit.events()),
        ["VramSealed", "SealAborted", "VramDeallocated"],
        "part 0 sealed, part 1 aborted, then part 0 released"
    );
    assert_eq!((r.manager.used_vram(), r.mock.live_allocations()), (0, 0));
    // The right digest passes and the shard seals under the manager's own algorithm.
    let shard = r
        .manager
        .seal_from_source(&a.as_slice(), 0, &right)
        .unwrap();
    assert_eq!(shard.digest_algorithm(), DigestAlgorithm::default());
}

#[test]
fn a_resident_digest_mismatch_releases_every_part_the_plan_placed() {
    let r = rig(16 * MIB);
    let (a, b) = (model(MIB, 1), model(MIB, 2));
    let wrong = SealOptions::new()
        .shard_id("b")
        .expect_digest(digest(&a, DigestAlgorithm::default()));
    let err = r
        .manager
        .plan_seal(vec![
            named(&a, "a"),
            SealPart::new(&b, 0).with_options(wrong),
        ])
        .unwrap()
        .execute()
        .unwrap_err();
    assert!(matches!(
        err,
        PlanError::Part {
            part: 1,
            error: VramError::UnexpectedDigest { .. }
        }
    ));
    assert_eq!((r.manager.used_vram(), r.mock.live_allocations()), (0, 0));
    // Part 0 was sealed and released; part 1 was placed and aborted.
    assert_eq!(
        names(&r.audit.events()),
        ["VramSealed", "SealAborted", "VramDeallocated"]
    );
}

#[test]
fn the_observer_can_stop_a_plan_and_everything_placed_is_released() {
    let r = rig(16 * MIB);
    let (a, b) = (model(MIB, 1), model(MIB, 2));
    let plan = r
        .manager
        .plan_seal(vec![named(&a, "a"), named(&b, "b")])
        .unwrap();
    let stopped = plan
        .execute_with(|step| match step {
            PlanStep::Sealed { part: 0, shard, .. } => {
                assert_eq!(shard.shard_id, "a");
                ControlFlow::Break(())
            }
            other => panic!("unexpected step {other:?}"),
        })
        .unwrap();
    assert!(stopped.is_none());
    assert_eq!((r.manager.used_vram(), r.mock.live_allocations()), (0, 0));
    assert_eq!(names(&r.audit.events()), ["VramSealed", "VramDeallocated"]);
}

#[test]
fn a_group_plan_names_its_shards_and_checks_expected_digests_before_the_group_seal() {
    let mock = MockBackend::builder()
        .device(16 * MIB)
        .device(16 * MIB)
        .build();
    let r = rig_with(mock, VramConfig::default());
    let (a, b) = (model(MIB, 1), model(MIB, 2));
    // A group names its shards: a part with its own id is refused.
    let err = r
        .manager
        .plan_group("m", vec![named(&a, "mine")])
        .unwrap_err();
    assert!(matches!(
        err,
        PlanError::Part {
            part: 0,
            error: VramError::InvalidInput { .. }
        }
    ));
    assert!(matches!(
        r.manager.plan_group("m", vec![]),
        Err(PlanError::Plan(VramError::InvalidInput { .. }))
    ));
    let expect =
        |bytes: &[u8]| SealOptions::new().expect_digest(digest(bytes, DigestAlgorithm::default()));
    // Part 0 on device 0 expects `a`, part 1 on device 1 expects `second`.
    let group_expecting = |second: &[u8]| {
        r.manager
            .plan_group(
                "m",
                vec![
                    SealPart::new(&a, 0).with_options(expect(&a)),
                    SealPart::new(&b, 1).with_options(expect(second)),
                ],
            )
            .unwrap()
            .execute()
    };
    // Expected digests in a group: a mismatch on the last part leaves nothing placed and
    // nothing audited as sealed.
    let err = group_expecting(&a).unwrap_err();
    assert!(matches!(
        err,
        PlanError::Part {
            part: 1,
            error: VramError::UnexpectedDigest { .. }
        }
    ));
    assert_eq!((r.manager.used_vram(), r.mock.live_allocations()), (0, 0));
    assert!(!names(&r.audit.events()).contains(&"VramSealed"));
    // Right digests: one group, shard i is m:tp<i>, every record names the group.
    let group = group_expecting(&b).unwrap();
    let ids: Vec<&str> = group.shards.iter().map(|s| s.shard_id.as_str()).collect();
    assert_eq!(ids, ["m:tp0", "m:tp1"]);
    r.manager.verify_group(&group).unwrap();
    let sealed_in_group = r
        .audit
        .events()
        .iter()
        .filter(|e| matches!(e, AuditEvent::VramSealed { group_id: Some(g), .. } if g == "m"))
        .count();
    assert_eq!(sealed_in_group, 2);
}
