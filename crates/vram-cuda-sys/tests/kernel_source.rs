//! The BLAKE3 kernels' source checked without a GPU: `kernels/blake3_tree.cu` is compiled for
//! the CPU with a shim for the CUDA built-ins (`kernels/cpu/`), launched the way the engine
//! launches it (chunk kernel, 256-to-1 folds, the range forms for a model), and every digest is
//! compared with the `blake3` crate's. This runs in CI on every change to the kernel; the GPU
//! tests (`tests/blake3_digest.rs`) check the compiled PTX on a device. Without a C++20 compiler
//! the test says so and checks nothing.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "tests"
)]

use std::path::Path;
use std::process::Command;

use vram_types::DigestAlgorithm;

/// Every shape of the tree: empty, inside a block, around one chunk, a ragged third chunk, one
/// fold group (256 chunks) exactly and one past it, an odd chunk count, 1 MiB + 1, and two folds
/// (65,539 chunks).
const SIZES: [u64; 14] = [
    0,
    1,
    64,
    65,
    1023,
    1024,
    1025,
    3 * 1024 + 1,
    255 * 1024,
    256 * 1024,
    256 * 1024 + 1,
    300 * 1024 + 77,
    (1 << 20) + 1,
    (256 * 256 + 3) * 1024,
];

fn pattern(n: u64, range: u64) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(7) + range * 13 + (i >> 9)) as u8)
        .collect()
}

#[test]
fn the_blake3_kernel_source_run_on_the_cpu_matches_the_blake3_crate() {
    let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/cpu");
    let exe = std::env::temp_dir().join(format!("blake3_on_cpu-{}", std::process::id()));
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let built = Command::new(&compiler)
        .args(["-std=c++20", "-O2", "-pthread", "-o"])
        .arg(&exe)
        .arg(kernels.join("blake3_on_cpu.cpp"))
        .output();
    let built = match built {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("barrier") && err.contains("No such file") {
                eprintln!(
                    "skipped: {compiler} has no C++20 <barrier>; the kernel source is not checked here"
                );
                return;
            }
            panic!("{compiler} failed on the kernel source:\n{err}");
        }
        Err(e) => {
            eprintln!(
                "skipped: no C++ compiler ({compiler}: {e}); the kernel source is not checked here"
            );
            return;
        }
    };
    drop(built);
    let out = Command::new(&exe)
        .args(SIZES.iter().map(u64::to_string))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&exe);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = SIZES
        .iter()
        .zip(0u64..)
        .map(|(n, r)| vram_seal::digest::digest(&pattern(*n, r), DigestAlgorithm::Blake3).to_hex())
        .collect();
    assert_eq!(
        lines.len(),
        4 * SIZES.len(),
        "one digest per range: alone, as a model, as a model in groups of 128 and of 4 chunks"
    );
    for (i, n) in SIZES.iter().enumerate() {
        assert_eq!(lines[i], want[i], "{n} bytes, one range");
        for (run, how) in [
            (1, "a model's range"),
            (2, "groups of 128"),
            (3, "groups of 4"),
        ] {
            assert_eq!(lines[run * SIZES.len() + i], want[i], "{n} bytes, as {how}");
        }
    }
}
