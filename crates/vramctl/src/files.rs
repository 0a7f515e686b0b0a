//! Reading model files, with a one-line error and remedy for every way a path can be wrong.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;

use crate::error::{CliError, CliResult};
use crate::output::Output;

/// Read granularity (and progress step).
pub(crate) const READ_CHUNK: usize = 64 << 20;

/// Opens `path` as a regular, non-empty, readable file; returns it with its length.
pub(crate) fn open_model(path: &Path) -> CliResult<(File, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => CliError::file(path, "no such file", "check the path"),
        ErrorKind::PermissionDenied => {
            CliError::file(path, "permission denied", "check the file's permissions")
        }
        _ => CliError::file(path, &e.to_string(), "check the path"),
    })?;
    if meta.is_dir() {
        return Err(CliError::file(
            path,
            "is a directory",
            "give the model file inside it",
        ));
    }
    if meta.len() == 0 {
        return Err(CliError::file(
            path,
            "is empty (0 bytes)",
            "give a complete model file",
        ));
    }
    let file = File::open(path).map_err(|e| match e.kind() {
        ErrorKind::PermissionDenied => CliError::file(
            path,
            "cannot be read (permission denied)",
            "check the file's permissions",
        ),
        _ => CliError::file(path, &format!("cannot be read ({e})"), "check the file"),
    })?;
    Ok((file, meta.len()))
}

/// Longest prefix read to recognise a model's format (a safetensors header is at most 100 MB).
const HEADER_PREFIX_MAX: u64 = 128 << 20;

/// The first bytes of a model file, enough to check its header: a safetensors file's 8-byte
/// length and JSON header, up to 128 MiB of anything else.
pub(crate) fn read_head(path: &Path, file: &File, len: u64) -> CliResult<Vec<u8>> {
    let read = |n: u64| -> CliResult<Vec<u8>> {
        let n = usize::try_from(n.min(len)).unwrap_or(0);
        let mut buf = vec![0u8; n];
        (&*file)
            .read_exact(&mut buf)
            .map_err(|e| CliError::file(path, &format!("read failed ({e})"), "check the disk"))?;
        Ok(buf)
    };
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if !is_safetensors {
        return read(HEADER_PREFIX_MAX);
    }
    let mut head = read(8)?;
    let n = head
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
        .min(HEADER_PREFIX_MAX);
    head.extend(read(n.min(len.saturating_sub(8)))?);
    Ok(head)
}

/// Reads a whole model file into memory, with a progress bar.
pub(crate) fn read_model(path: &Path, out: Output) -> CliResult<Vec<u8>> {
    let (mut file, len) = open_model(path)?;
    let size = usize::try_from(len)
        .map_err(|_| CliError::file(path, "is too large for this machine", "use a 64-bit host"))?;
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(size).map_err(|_| {
        CliError::file(
            path,
            &format!("needs {size} bytes of host memory, which are not available"),
            "free host memory",
        )
    })?;
    let bar = out.progress(len, "reading");
    let mut chunk = vec![0u8; READ_CHUNK.min(size)];
    loop {
        let n = file
            .read(&mut chunk)
            .map_err(|e| CliError::file(path, &format!("read failed ({e})"), "check the disk"))?;
        let Some(piece) = chunk.get(..n).filter(|p| !p.is_empty()) else {
            break;
        };
        bytes.extend_from_slice(piece);
        bar.inc(u64::try_from(n).unwrap_or(0));
    }
    bar.finish_and_clear();
    if bytes.len() != size {
        return Err(CliError::file(
            path,
            "changed size while being read",
            "retry once it is complete",
        ));
    }
    Ok(bytes)
}
