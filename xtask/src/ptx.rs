//! `cargo xtask ptx`: the committed PTX of `crates/vram-cuda-sys/kernels/*.cu`.
//!
//! Nothing needs `nvcc` to build or test: the PTX is committed, and the driver compiles it for
//! the device at run time. `ptx` regenerates it where `nvcc` exists (`ptx --stamp` stamps PTX that
//! `nvcc -ptx -O3 -arch=compute_75`, or NVRTC with `-arch=compute_75`, made on another machine:
//! `blake3_tree.ptx` is NVRTC 12.8's, the PTX the GPU tests ran); `ptx --check` (run by `ci`) proves
//! each committed PTX file was made from the `.cu` beside it, by the SHA-256 of the source that
//! its first line records (the `.cu`, then each header it includes from the same directory,
//! `range_table.cuh`).
//!
//! The stamp also lowers the PTX ISA version that nvcc 13 writes (9.0, which only a CUDA 13
//! driver loads) to 8.7, the version of the oldest driver the workspace accepts (CUDA 12.8,
//! `REQUIRED_DRIVER_VERSION`). The kernels use no instruction newer than that; the GPU tests load
//! the stamped PTX.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::DynError;

/// The architecture the PTX targets: Turing and newer (the oldest CUDA 13 supports).
const ARCH: &str = "compute_75";
/// The PTX ISA of CUDA 12.8.
const PTX_ISA: &str = "8.7";
const STAMP_PREFIX: &str = "// source-sha256: ";

fn kernels_dir(root: &Path) -> PathBuf {
    root.join("crates/vram-cuda-sys/kernels")
}

fn sources(root: &Path) -> Result<Vec<PathBuf>, DynError> {
    let mut cu: Vec<PathBuf> = std::fs::read_dir(kernels_dir(root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    cu.sort();
    Ok(cu)
}

/// The source a PTX file is made from: the `.cu`, then each header it includes from this
/// directory (`#include "name"`), in order.
fn source_bytes(cu: &Path) -> Result<Vec<u8>, DynError> {
    let text = std::fs::read(cu)?;
    let mut bytes = text.clone();
    for line in String::from_utf8_lossy(&text).lines() {
        if let Some(name) = line
            .trim()
            .strip_prefix("#include \"")
            .and_then(|rest| rest.strip_suffix('"'))
        {
            let header = cu.with_file_name(name);
            bytes.extend(std::fs::read(&header).map_err(|e| format!("{}: {e}", header.display()))?);
        }
    }
    Ok(bytes)
}

/// SHA-256 of a `.cu` and the headers it includes (`source_bytes`).
fn sha256_hex(cu: &Path) -> Result<String, DynError> {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("sha256sum has no stdin")?
        .write_all(&source_bytes(cu)?)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("sha256sum of {} failed", cu.display()).into());
    }
    String::from_utf8(out.stdout)?
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| "sha256sum printed nothing".into())
}

/// `nvcc`'s PTX with the source stamp on the first line and the ISA version lowered.
fn stamp(ptx: &str, source_hash: &str) -> Result<String, DynError> {
    let body: String = ptx
        .lines()
        .filter(|l| !l.starts_with(STAMP_PREFIX))
        .map(|l| {
            if l.starts_with(".version ") {
                format!(".version {PTX_ISA}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    if !body.lines().any(|l| l == format!(".version {PTX_ISA}")) {
        return Err("PTX has no .version line".into());
    }
    Ok(format!("{STAMP_PREFIX}{source_hash}\n{body}"))
}

pub(crate) fn ptx(args: &[String]) -> Result<(), DynError> {
    let root = crate::project_root();
    match args.first().map(String::as_str) {
        Some("--check") => check(&root),
        Some("--stamp") => {
            for cu in sources(&root)? {
                let path = cu.with_extension("ptx");
                let text = std::fs::read_to_string(&path)?;
                std::fs::write(&path, stamp(&text, &sha256_hex(&cu)?)?)?;
                eprintln!("stamped {}", path.display());
            }
            Ok(())
        }
        None => {
            for cu in sources(&root)? {
                let path = cu.with_extension("ptx");
                let status = Command::new("nvcc")
                    .args(["-ptx", "-O3", &format!("-arch={ARCH}"), "-o"])
                    .arg(&path)
                    .arg(&cu)
                    .status()
                    .map_err(|e| format!("nvcc: {e} (ptx needs the CUDA toolkit; run it on a GPU machine, then commit the .ptx)"))?;
                if !status.success() {
                    return Err(format!("nvcc failed on {}", cu.display()).into());
                }
                let text = std::fs::read_to_string(&path)?;
                std::fs::write(&path, stamp(&text, &sha256_hex(&cu)?)?)?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Some(other) => {
            Err(format!("usage: cargo xtask ptx [--check | --stamp] (got {other})").into())
        }
    }
}

fn check(root: &Path) -> Result<(), DynError> {
    for cu in sources(root)? {
        let path = cu.with_extension("ptx");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "{}: {e} (run `cargo xtask ptx` on a machine with nvcc)",
                path.display()
            )
        })?;
        let recorded = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix(STAMP_PREFIX));
        let actual = sha256_hex(&cu)?;
        if recorded != Some(actual.as_str()) {
            return Err(format!(
                "{} was not generated from the current {} (source sha256 {actual}, recorded {}): run `cargo xtask ptx` where nvcc exists and commit the PTX",
                path.display(),
                cu.display(),
                recorded.unwrap_or("nothing")
            )
            .into());
        }
        if !text.lines().any(|l| l == format!(".version {PTX_ISA}")) {
            return Err(format!("{}: PTX ISA is not {PTX_ISA}", path.display()).into());
        }
        eprintln!("{}: matches its source", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_records_the_hash_and_lowers_the_isa_once() {
        let ptx = "//\n.version 9.0\n.target sm_75\n";
        let once = stamp(ptx, "ab").unwrap();
        assert!(once.starts_with("// source-sha256: ab\n"));
        assert!(once.contains(".version 8.7\n"));
        assert_eq!(stamp(&once, "ab").unwrap(), once, "idempotent");
        assert!(stamp("no version", "ab").is_err());
    }

    #[test]
    fn the_source_hash_covers_the_headers_a_kernel_includes() {
        let dir = std::env::temp_dir().join(format!("xtask-ptx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cu = dir.join("k.cu");
        std::fs::write(&cu, "#include <stdint.h>\n#include \"h.cuh\"\nint k;\n").unwrap();
        std::fs::write(dir.join("h.cuh"), "int h;\n").unwrap();
        let before = sha256_hex(&cu).unwrap();
        std::fs::write(dir.join("h.cuh"), "int h2;\n").unwrap();
        assert_ne!(
            sha256_hex(&cu).unwrap(),
            before,
            "a changed header changes the hash"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
