//! The driver wrappers. Without a GPU: loading the driver is a typed error, not a panic. With
//! one (`VRAM_TEST_GPU=1`, `--include-ignored`): the pointer check tells VRAM from every kind of
//! host memory, staged copies round-trip (both ways), and a PTX kernel runs.
#![allow(
    unsafe_code,
    reason = "calls the unsafe kernel launch of the crate under test"
)]
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "tests"
)]

use vram_cuda_sys::CudaError;
use vram_cuda_sys::memory::{
    DeviceBuffer, ManagedBuffer, MappedHostBuffer, PinnedBuffer, RegisteredHostBuffer,
};
use vram_cuda_sys::module::{KernelArg, Module};
use vram_cuda_sys::pointer::host_slice_facts;
use vram_cuda_sys::resident::Resident;
use vram_cuda_sys::staging_ring::StagingRing;
use vram_cuda_sys::{Device, Driver};
use vram_policy::rules::allocation_problem;
use vram_types::MemoryType;

const MIB: usize = 1 << 20;

fn gpu_expected() -> bool {
    std::env::var("VRAM_TEST_GPU").is_ok_and(|v| v == "1")
}

#[test]
fn loading_the_driver_never_panics_and_names_the_problem() {
    match Driver::get() {
        Ok(driver) => {
            assert!(
                gpu_expected(),
                "a driver was found but VRAM_TEST_GPU is not set"
            );
            assert!(driver.device_count() > 0);
            println!(
                "driver {} with {} device(s)",
                driver.version(),
                driver.device_count()
            );
        }
        Err(e) => {
            assert!(!gpu_expected(), "VRAM_TEST_GPU=1 but no GPU: {e}");
            assert!(matches!(e, CudaError::NoGpu { .. }), "{e:?}");
            assert!(e.to_string().contains("driver"), "{e}");
            // The second call answers the same, from the cached result.
            assert_eq!(Driver::get().unwrap_err(), e);
            assert!(matches!(Device::open(0), Err(CudaError::NoGpu { .. })));
        }
    }
}

#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn pointer_check_tells_vram_from_every_kind_of_host_memory() {
    let device = Device::open(0).unwrap();
    let vram = DeviceBuffer::alloc(&device, 4 * MIB).unwrap();
    let facts = vram.facts(4 * MIB).unwrap();
    println!("cuMemAlloc:            {facts:?}");
    assert_eq!(facts.memory_type, MemoryType::Device);
    assert_eq!(allocation_problem(&facts, 0, false), None);
    assert!(
        allocation_problem(&facts, 1, false).is_some(),
        "wrong device ordinal is refused"
    );
    assert!(
        !vram.facts(4 * MIB + 1).unwrap().covers_shard,
        "a range past the allocation"
    );

    let managed = ManagedBuffer::alloc(&device, 64 * MIB).unwrap(); // at most 64 MiB managed
    let pinned = PinnedBuffer::alloc(&device, MIB).unwrap();
    let mapped = MappedHostBuffer::alloc(&device, MIB).unwrap();
    let registered = RegisteredHostBuffer::alloc(&device, MIB).unwrap();
    let heap = vec![7u8; MIB];
    for (name, facts) in [
        ("cuMemAllocManaged", managed.facts().unwrap()),
        ("cuMemAllocHost", pinned.facts().unwrap()),
        ("cuMemHostAlloc(DEVICEMAP)", mapped.facts().unwrap()),
        ("malloc+cuMemHostRegister", registered.facts().unwrap()),
        ("malloc", host_slice_facts(&device, &heap).unwrap()),
    ] {
        let problem = allocation_problem(&facts, 0, false);
        println!("{name:22} {facts:?} -> {problem:?}");
        assert!(problem.is_some(), "{name} passed the VRAM check: {facts:?}");
    }
    assert!(
        managed.facts().unwrap().is_managed,
        "managed memory claims DEVICE but is managed"
    );
}

#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn staged_upload_and_read_back_round_trip_across_chunks() {
    let device = Device::open(0).unwrap();
    let ring = StagingRing::with_defaults(&device);
    for len in [1, 3 * MIB + 5, 100 * MIB + 3] {
        let data: Vec<u8> = (0..len).map(|i| (i * 131 + 7) as u8).collect();
        let buf = DeviceBuffer::alloc(&device, len).unwrap();
        ring.upload(&buf, &data.as_slice(), None).unwrap();
        let mut back = vec![0u8; len];
        buf.read(0, &mut back).unwrap();
        assert!(back == data, "round trip of {len} bytes differs");
        let mut byte = [0u8];
        buf.read(len - 1, &mut byte).unwrap();
        assert_eq!(byte[0], data[len - 1]);
        assert!(
            buf.read(len, &mut byte).is_err(),
            "read past the end is refused"
        );
        buf.free().unwrap();
    }
}

#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn downloads_through_the_ring_match_across_slots_and_never_pin() {
    let device = Device::open(0).unwrap();
    // Slots of 4 KiB, so a read of 10 KiB + 3 at an odd offset spans three of them.
    let ring = StagingRing::new(&device, 4096, 4, 2);
    let len = 64 * 1024 + 11;
    let data: Vec<u8> = (0..len).map(|i| (i * 131 + 7) as u8).collect();
    let buf = std::sync::Arc::new(DeviceBuffer::alloc(&device, len).unwrap());
    let resident = Resident::Owned(std::sync::Arc::clone(&buf));
    let (offset, n) = (77, 10 * 1024 + 3);
    let mut back = vec![0u8; n];
    // Nothing uploaded yet: no idle slot, so a plain copy, and nothing is pinned for it.
    buf.write(0, &data).unwrap();
    ring.download(&resident, offset, &mut back).unwrap();
    assert!(
        back == data[offset..offset + n],
        "pageable download differs"
    );
    assert_eq!(ring.pinned_slots(), 0, "a download pinned memory");
    // After an upload (16 chunks over two copy threads) the slots are idle and reused.
    ring.upload(&buf, &data.as_slice(), None).unwrap();
    let pinned = ring.pinned_slots();
    assert!(pinned >= 2, "{pinned} slots pinned after an upload");
    back.fill(0);
    ring.download(&resident, offset, &mut back).unwrap();
    assert!(back == data[offset..offset + n], "pinned download differs");
    let mut all = vec![0u8; len];
    ring.download(&resident, 0, &mut all).unwrap();
    assert!(all == data, "whole-buffer download differs");
    assert_eq!(
        ring.pinned_slots(),
        pinned,
        "a download kept or dropped slots"
    );
    let mut past = [0u8; 2];
    assert!(
        matches!(
            ring.download(&resident, len - 1, &mut past),
            Err(CudaError::OutOfRange { .. })
        ),
        "a read past the end is refused"
    );
    assert_eq!(ring.pinned_slots(), pinned, "a refused read lost a slot");
}

#[test]
#[ignore = "needs a GPU: run with VRAM_TEST_GPU=1 and --include-ignored"]
fn a_ptx_kernel_runs_on_device_memory() {
    let device = Device::open(0).unwrap();
    let module = Module::load_ptx(&device, include_str!("data/xor_byte.ptx")).unwrap();
    let buf = DeviceBuffer::alloc(&device, 4096).unwrap();
    buf.write(0, &[0x0f; 4096]).unwrap();
    // SAFETY: xor_byte(u64 ptr, u64 offset, u32 mask) touches only ptr[offset], inside the buffer.
    unsafe {
        module.launch(
            "xor_byte",
            1,
            1,
            &[
                KernelArg::Buffer(&buf),
                KernelArg::U64(1000),
                KernelArg::U32(0xff),
            ],
        )
    }
    .unwrap();
    let mut back = vec![0u8; 4096];
    buf.read(0, &mut back).unwrap();
    assert_eq!(back[1000], 0xf0);
    assert!(
        back.iter()
            .enumerate()
            .all(|(i, b)| i == 1000 || *b == 0x0f)
    );
    assert!(Module::load_ptx(&device, "not ptx").is_err());
}
