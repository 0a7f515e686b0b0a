//! Sealing from a source (a file, a slice) with the seal options: an expected digest, the
//! cross-check of host bytes, and background verification, on the mock backend.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::io::{self, Write};

use common::{MIB, model, names, rig, rig_with, temp_path};
use vram_alloc::SealOptions;
use vram_alloc::backend::MockBackend;
use vram_seal::ShardDigest;
use vram_types::{DigestAlgorithm, FileSource, ShardSource, VramConfig, VramError};

/// A source that fails at `fail_at`.
struct Failing<'a> {
    bytes: &'a [u8],
    fail_at: u64,
}

impl ShardSource for Failing<'_> {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset + buf.len() as u64 > self.fail_at {
            return Err(io::Error::other("disk on fire"));
        }
        (&self.bytes).read_at(offset, buf)
    }
}

#[test]
fn a_file_seals_to_the_same_digest_as_its_bytes() {
    let r = rig(256 * MIB);
    // Larger than one upload chunk, with a ragged end.
    let bytes = model(40 * MIB + 12_345, 3);
    let path = temp_path("model.bin");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let source = FileSource::new(std::fs::File::open(&path).unwrap()).unwrap();
    let from_file = r
        .manager
        .seal_from_source(&source, 0, &SealOptions::new().shard_id("from-file"))
        .unwrap();
    let from_slice = r
        .manager
        .seal_model_with_id("from-slice", &bytes, 0)
        .unwrap();
    assert_eq!(from_file.digest, from_slice.digest);
    assert_eq!(
        from_file.digest,
        vram_seal::digest(&bytes, DigestAlgorithm::default()).to_hex()
    );
    r.manager.verify_sealed(&from_file).unwrap();
    std::fs::remove_file(path).unwrap();
}

#[test]
fn an_expected_digest_that_differs_refuses_the_seal_and_leaves_nothing() {
    let r = rig(64 * MIB);
    let bytes = model(3 * MIB, 1);
    let right = vram_seal::digest(&bytes, DigestAlgorithm::default());
    let wrong = vram_seal::digest(b"another model", DigestAlgorithm::default());
    let options = SealOptions::new().shard_id("m").expect_digest(wrong);
    let err = r
        .manager
        .seal_from_source(&bytes.as_slice(), 0, &options)
        .unwrap_err();
    match &err {
        VramError::UnexpectedDigest { expected, actual } => {
            assert_eq!(*expected, wrong.to_hex());
            assert_eq!(*actual, right.to_hex());
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_security_critical() && !err.is_retriable());
    assert_eq!(r.manager.used_vram(), 0);
    assert_eq!(r.mock.live_allocations(), 0);
    assert!(!names(&r.audit.events()).contains(&"VramSealed"));
    assert!(!r.manager.is_stopped());
    // The right digest seals, under the same id (the refused seal released it).
    let options = SealOptions::new().shard_id("m").expect_digest(right);
    let shard = r
        .manager
        .seal_from_source(&bytes.as_slice(), 0, &options)
        .unwrap();
    assert_eq!(ShardDigest::from_hex(&shard.digest).unwrap(), right);
}

#[test]
fn the_cross_check_agrees_for_tree_and_flat_digests() {
    for algorithm in [
        DigestAlgorithm::default(),
        DigestAlgorithm::tree(4096).unwrap(),
        DigestAlgorithm::Sha256,
    ] {
        let config = VramConfig {
            digest_algorithm: algorithm,
            ..VramConfig::default()
        };
        let r = rig_with(MockBackend::with_capacity(128 * MIB), config);
        let bytes = model(33 * MIB + 7, 9);
        let options = SealOptions::new().cross_check(true);
        let shard = r
            .manager
            .seal_from_source(&bytes.as_slice(), 0, &options)
            .unwrap();
        assert_eq!(
            shard.digest,
            vram_seal::digest(&bytes, algorithm).to_hex(),
            "{algorithm}"
        );
    }
}

#[test]
fn a_source_that_fails_to_read_leaves_nothing_behind() {
    let r = rig(128 * MIB);
    let bytes = model(40 * MIB, 2);
    let source = Failing {
        bytes: &bytes,
        fail_at: 20 * MIB as u64,
    };
    let err = r
        .manager
        .seal_from_source(&source, 0, &SealOptions::new().cross_check(true))
        .unwrap_err();
    assert!(
        matches!(err, VramError::SourceReadFailed { offset, .. } if offset == 16 * MIB as u64),
        "{err:?}"
    );
    assert_eq!(r.manager.used_vram(), 0);
    assert_eq!(r.mock.live_allocations(), 0);
    assert!(!names(&r.audit.events()).contains(&"VramSealed"));
}

#[test]
fn background_verification_catches_corruption_like_a_request_check() {
    let r = rig(64 * MIB);
    let shard = r.manager.seal_model(&model(5 * MIB, 4), 0).unwrap();
    r.manager.verify_sealed_background(&shard).unwrap();
    r.manager
        .corrupt_byte_for_tests(&shard, 4 * MIB + 1)
        .unwrap();
    assert!(matches!(
        r.manager.verify_sealed_background(&shard),
        Err(VramError::IntegrityViolation { .. })
    ));
    assert!(r.manager.is_stopped());
    let events = names(&r.audit.events());
    assert_eq!(events.iter().filter(|e| **e == "SealVerified").count(), 1);
    assert_eq!(
        events
            .iter()
            .filter(|e| **e == "SealVerificationFailed")
            .count(),
        1
    );
}

/// A file rewritten in place after it was first read through: every read of its first chunk
/// after the first one (and every read after that) sees the new bytes, as a second pass over
/// a file changed between two reads does.
struct ChangedAfterFirstPass<'a> {
    before: &'a [u8],
    after: &'a [u8],
    reads_of_start: std::sync::atomic::AtomicUsize,
}

impl ShardSource for ChangedAfterFirstPass<'_> {
    fn len(&self) -> u64 {
        self.before.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        if offset == 0 {
            self.reads_of_start.fetch_add(1, Ordering::SeqCst);
        }
        let pass = self.reads_of_start.load(Ordering::SeqCst);
        let bytes = if pass <= 1 { self.before } else { self.after };
        bytes.read_at(offset, buf)
    }
}

/// Issue 22, item 5: a flat SHA-256 (a `sha256sum` manifest's) is computed from the bytes that
/// reached VRAM, so a file changed in place between a check and the upload is never sealed.
#[test]
fn a_flat_digest_is_checked_on_the_bytes_that_were_uploaded() {
    let r = rig(16 * MIB);
    let before = model(4 * MIB, 1);
    let mut after = before.clone();
    after[2 * MIB..2 * MIB + 1024].fill(0xee); // 1 KiB overwritten in place
    let flat = vram_seal::digest(&before, DigestAlgorithm::Sha256);
    let options = SealOptions::new()
        .shard_id("m")
        .expect_digest_in(DigestAlgorithm::Sha256, flat);
    let source = ChangedAfterFirstPass {
        before: &before,
        after: &after,
        reads_of_start: 0.into(),
    };
    // Whatever the reads, what is sealed is what matched the manifest, or nothing.
    match r.manager.seal_from_source(&source, 0, &options) {
        Ok(shard) => assert_eq!(
            shard.digest,
            vram_seal::digest(&before, DigestAlgorithm::default()).to_hex(),
            "sealed bytes other than those the flat digest was checked on"
        ),
        Err(e) => assert!(matches!(e, VramError::UnexpectedDigest { .. }), "{e:?}"),
    }

    // Bytes that changed before the upload are refused, and nothing stays placed.
    let source = ChangedAfterFirstPass {
        before: &after,
        after: &after,
        reads_of_start: 0.into(),
    };
    let e = r
        .manager
        .seal_from_source(&source, 0, &options)
        .unwrap_err();
    assert!(matches!(e, VramError::UnexpectedDigest { .. }), "{e:?}");
    assert_eq!((r.manager.used_vram(), r.mock.live_allocations()), (0, 0));
    assert_eq!(names(&r.audit.events()).last(), Some(&"SealAborted"));
}
