//! Reading model files, with a one-line error and remedy for every way a path can be wrong.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;

use vram_residency::{FileSource, ShardId, ShardSource};

use crate::error::{CliError, CliResult};

/// Read granularity of `vramctl digest` (and its progress step).
pub(crate) const READ_CHUNK: usize = 64 << 20;

/// The one-line error for an I/O failure on `path`, with the remedy its cause calls for: the
/// process's open-file limit, the disk, the permissions or the path, not a generic "check the
/// file".
pub(crate) fn io_error(path: &Path, e: &std::io::Error) -> CliError {
    // EMFILE / ENFILE and EIO by number: `ErrorKind` has no stable name for them.
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const EIO: i32 = 5;
    let (problem, remedy) = match (e.kind(), e.raw_os_error()) {
        (ErrorKind::NotFound, _) => ("no such file".to_owned(), "check the path"),
        (ErrorKind::PermissionDenied, _) => (
            "cannot be read (permission denied)".to_owned(),
            "check the file's permissions",
        ),
        (_, Some(EMFILE)) => (
            format!("cannot be opened ({e})"),
            "raise the open-file limit (`ulimit -n`, or LimitNOFILE= in the systemd unit)",
        ),
        (_, Some(ENFILE)) => (
            format!("cannot be opened ({e})"),
            "the system's open-file table is full: close files elsewhere or raise fs.file-max",
        ),
        (_, Some(EIO)) => (
            format!("cannot be read ({e})"),
            "the disk reported a read error: check it (dmesg, smartctl) and the file's copy",
        ),
        _ => (format!("cannot be read ({e})"), "check the file"),
    };
    CliError::file(path, &problem, remedy)
}

/// Opens `path` as a regular, non-empty, readable file; returns it with its length.
pub(crate) fn open_model(path: &Path) -> CliResult<(File, u64)> {
    let (file, len) = open_regular(path)?;
    if len == 0 {
        return Err(CliError::file(
            path,
            "is empty (0 bytes)",
            "give a complete model file",
        ));
    }
    Ok((file, len))
}

/// A regular file and its length (0 included: `digest` hashes an empty file, as `sha256sum`).
pub(crate) fn open_regular(path: &Path) -> CliResult<(File, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, &e))?;
    if meta.is_dir() {
        return Err(CliError::file(
            path,
            "is a directory",
            "give the model file inside it",
        ));
    }
    if !meta.is_file() {
        return Err(CliError::file(
            path,
            "is not a regular file (a FIFO, socket or device)",
            "give a model file",
        ));
    }
    let file = File::open(path).map_err(|e| io_error(path, &e))?;
    Ok((file, meta.len()))
}

/// The first bytes of a model file, enough to check its header: as many as
/// [`vramctl::formats::header_extent`] says its format needs.
/// Refused first when parsing it would take more host memory than is left (`seal`, and
/// `digest --tensors`, whose tensor digests take less than the parse's peak).
pub(crate) fn read_head(path: &Path, file: &File, len: u64) -> CliResult<Vec<u8>> {
    use vramctl::formats::{HEADER_PROBE_BYTES, header_extent};
    let read = |n: u64, buf: &mut Vec<u8>| -> CliResult<()> {
        let start = buf.len();
        buf.resize(start.saturating_add(usize::try_from(n).unwrap_or(0)), 0);
        (&*file)
            .read_exact(buf.get_mut(start..).unwrap_or_default())
            .map_err(|e| CliError::file(path, &format!("read failed ({e})"), "check the disk"))
    };
    let mut head = Vec::new();
    read(HEADER_PROBE_BYTES.min(len), &mut head)?;
    let extent = header_extent(path, &head, len);
    header_room(path, extent, crate::host_memory::available())?;
    read(
        extent.saturating_sub(u64::try_from(head.len()).unwrap_or(0)),
        &mut head,
    )?;
    Ok(head)
}

/// Host memory a tensor table takes while it is parsed, per byte of header, at its peak: a
/// 1,000,000-tensor safetensors header of 65 MiB peaked at 1.03 GB (`/usr/bin/time`, release
/// build, `vramctl seal` on the mock), about 16 times the header; `vramctl digest --tensors`
/// (text or `--json`) of an 85 MiB 1,000,000-tensor header peaked at 1.19 GB, 14 times.
const HEADER_PARSE_FACTOR: u64 = 16;

/// Refuses a header whose parse would need more host memory than is available, before any of
/// it is read (with overcommit, the allocation would succeed and the process die later).
fn header_room(path: &Path, extent: u64, available: Option<u64>) -> CliResult<()> {
    let need = extent.saturating_mul(HEADER_PARSE_FACTOR);
    match available {
        Some(room) if need > room => Err(CliError::file(
            path,
            &format!(
                "has a {} header, whose tensor table needs about {} of host memory to read; {} available",
                crate::output::human_bytes(extent),
                crate::output::human_bytes(need),
                crate::output::human_bytes(room)
            ),
            "free host memory, or seal it on a machine with more",
        )),
        _ => Ok(()),
    }
}

/// A file source that advances a progress bar as it is read (by the copy or hashing threads).
pub(crate) struct ProgressSource<'a> {
    pub(crate) inner: &'a FileSource,
    pub(crate) bar: &'a indicatif::ProgressBar,
}

impl ShardSource for ProgressSource<'_> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn path(&self) -> Option<&Path> {
        self.inner.path()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(offset, buf)?;
        self.bar.inc(u64::try_from(buf.len()).unwrap_or(0));
        Ok(())
    }
}

/// A shard id from the path as given (`a/model.safetensors` and `b/model.safetensors` are two
/// shards), a leading `./` dropped; `ShardId::from_name_lossy` turns unsafe characters into `_`.
pub(crate) fn shard_id_for(path: &Path) -> String {
    let text = path.to_string_lossy();
    let text = text.strip_prefix("./").unwrap_or(&text);
    ShardId::from_name_lossy(text).into_string()
}

/// Largest manifest read: far beyond any model's shard list, short of a runaway file.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// The bytes of a manifest file (a regular file of at most 16 MiB; names in it need not be
/// UTF-8, as in `sha256sum`'s manifests).
pub(crate) fn read_manifest(manifest: &Path) -> CliResult<Vec<u8>> {
    let (file, len) = open_model(manifest)?;
    if len > MAX_MANIFEST_BYTES {
        return Err(CliError::file(
            manifest,
            &format!("is {len} bytes, larger than a manifest ({MAX_MANIFEST_BYTES} bytes at most)"),
            "give the manifest, not a model file",
        ));
    }
    let mut text = Vec::new();
    file.take(MAX_MANIFEST_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| io_error(manifest, &e))?;
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::path::Path;

    #[test]
    fn a_header_too_big_for_the_host_is_refused_before_it_is_read() {
        let path = Path::new("m.safetensors");
        assert!(super::header_room(path, 65 << 20, Some(2 << 30)).is_ok());
        assert!(super::header_room(path, 65 << 20, None).is_ok());
        let refused = super::header_room(path, 65 << 20, Some(512 << 20)).unwrap_err();
        let text = refused.to_string();
        assert!(
            text.contains("65.00 MiB header") && text.contains("512.00 MiB available"),
            "{text}"
        );
    }
}
