//! The mock backend's host tensors: memory an engine outside the mock holds (the Python
//! package's NumPy arrays) is read where it lies at every digest, so a change the engine makes
//! is caught as a change in VRAM is on a GPU; the mock never writes it, and forgetting it
//! leaves a shard sealed over it intact until the shard is released.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    missing_docs,
    reason = "tests"
)]

mod common;

use std::sync::Arc;

use vram_alloc::backend::MockBackend;
use vram_alloc::{EngineTensor, ExecutionMode, VramManager};
use vram_seal::SealKey;
use vram_types::VramError;

fn rig() -> (VramManager, Arc<MockBackend>) {
    let mock = Arc::new(MockBackend::with_capacity(64 << 20));
    let manager = VramManager::builder()
        .mock(mock.clone())
        .seal_key(SealKey::derive(b"host-tensor-test-token", "w").unwrap())
        .build()
        .unwrap();
    (manager, mock)
}

#[test]
fn a_host_tensor_is_read_where_it_lies() {
    let (manager, mock) = rig();
    let engine = common::HostBytes::new(vec![3u8; 4096]);
    let range = mock.engine_host_tensor(0, engine.clone()).unwrap();
    let model = manager
        .seal_model_in_place(
            "m",
            vec![EngineTensor {
                name: "w".into(),
                dtype: "U8".into(),
                shape: vec![4096],
                range,
            }],
            None,
        )
        .unwrap();
    assert_eq!(mock.read_engine_memory(&range).unwrap(), vec![3u8; 4096]);
    manager.verify_model(&model).unwrap();
    manager
        .execute_model(&model, ExecutionMode::BeforeAndAfter, |_| ())
        .unwrap();

    // Forgotten by the engine's side: the sealed shard still holds it until released.
    mock.forget_engine_memory(&range).unwrap();
    assert!(mock.forget_engine_memory(&range).is_err());
    manager.verify_model(&model).unwrap();

    engine.0.lock().unwrap()[100] ^= 1;
    let err = manager.verify_model(&model).unwrap_err();
    assert!(
        matches!(&err, VramError::IntegrityViolation { shard_id, .. } if shard_id == "m:w"),
        "{err:?}"
    );
}

#[test]
fn the_mock_never_writes_a_host_tensor_and_refuses_an_empty_one() {
    let (_manager, mock) = rig();
    let range = mock
        .engine_host_tensor(0, common::HostBytes::new(vec![1u8; 64]))
        .unwrap();
    assert!(matches!(
        mock.write_engine_memory(&range, 0, &[9]),
        Err(VramError::InvalidInput { .. })
    ));
    assert_eq!(mock.read_engine_memory(&range).unwrap(), vec![1u8; 64]);
    assert!(matches!(
        mock.engine_host_tensor(0, common::HostBytes::new(Vec::new())),
        Err(VramError::InvalidInput { .. })
    ));
    assert!(matches!(
        mock.engine_host_tensor(3, common::HostBytes::new(vec![1u8; 64])),
        Err(VramError::InvalidDevice { .. })
    ));
}
