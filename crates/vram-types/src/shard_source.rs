//! `ShardSource`: model bytes that can be read at any offset, from many threads at once.
//!
//! Sealing reads the source in chunks straight into pinned staging buffers from several
//! threads, so host memory stays bounded by the staging ring whatever the shard's size: a
//! 140 GB model file can be sealed on a host with less free RAM than that. A byte slice and a
//! file are sources.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::VramError;

/// Bytes of known length, readable at any offset from any thread.
pub trait ShardSource: Sync {
    /// Length in bytes.
    fn len(&self) -> u64;

    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file the bytes come from, when they come from one: sealing recognises a
    /// safetensors or GGUF file by it and reads the file's tensor table
    /// (`vram_formats::sealed_table`). `None` by default.
    fn path(&self) -> Option<&Path> {
        None
    }

    /// Fills `buf` with the bytes at `offset`.
    ///
    /// # Errors
    /// An I/O error, or [`io::ErrorKind::UnexpectedEof`] when the range passes the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// [`Self::read_at`], with a failure as the workspace's error.
    ///
    /// # Errors
    /// [`VramError::SourceReadFailed`] with the offset and the I/O error.
    fn fill(&self, offset: u64, buf: &mut [u8]) -> Result<(), VramError> {
        self.read_at(offset, buf)
            .map_err(|e| VramError::SourceReadFailed {
                offset,
                reason: e.to_string(),
            })
    }
}

/// Bytes in host memory (pass `&bytes` where a `&dyn ShardSource` is wanted).
impl ShardSource for &[u8] {
    fn len(&self) -> u64 {
        u64::try_from(<[u8]>::len(self)).unwrap_or(u64::MAX)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buf.len())?))
            .and_then(|range| self.get(range))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Bytes owned in host memory.
impl ShardSource for Vec<u8> {
    fn len(&self) -> u64 {
        ShardSource::len(&self.as_slice())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.as_slice().read_at(offset, buf)
    }
}

/// A file, read with positioned reads (`pread`), so threads never share a cursor. Its length
/// is taken when the source is made: a file that changes size while it is sealed fails the
/// seal with an I/O error.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    len: u64,
    path: Option<PathBuf>,
}

impl FileSource {
    /// A source over `file`, of its current length, with no name: its format is recognised by
    /// its content alone (prefer [`Self::open`]).
    ///
    /// # Errors
    /// The error of reading the file's metadata.
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            path: None,
        })
    }

    /// Opens the file at `path`; its name tells a sealed safetensors or GGUF file, whose header
    /// must then hold.
    ///
    /// # Errors
    /// The error of opening the file or reading its metadata.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        Self::with_path(File::open(path)?, path)
    }

    /// A source over `file`, already open, named `path` (see [`Self::open`]).
    ///
    /// # Errors
    /// The error of reading the file's metadata.
    pub fn with_path(file: File, path: impl Into<PathBuf>) -> io::Result<Self> {
        let mut source = Self::new(file)?;
        source.path = Some(path.into());
        Ok(source)
    }
}

impl FileSource {
    /// A read that ended early inside the length taken at the start: the file shrank (was
    /// truncated or rewritten) while it was read; said so, with both lengths.
    fn explained(&self, e: io::Error) -> io::Error {
        if e.kind() != io::ErrorKind::UnexpectedEof {
            return e;
        }
        match self.file.metadata() {
            Ok(meta) if meta.len() < self.len => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file shrank to {} bytes while it was read (it had {} when reading began); seal it again once it is complete",
                    meta.len(),
                    self.len
                ),
            ),
            _ => e,
        }
    }
}

impl ShardSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let in_range = u64::try_from(buf.len())
            .ok()
            .and_then(|n| offset.checked_add(n))
            .is_some_and(|end| end <= self.len);
        if !in_range {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        read_exact_at(&self.file, buf, offset).map_err(|e| self.explained(e))
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = buf.get_mut(n..).unwrap_or_default();
                offset = offset.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_slice_reads_in_range_and_refuses_past_the_end() {
        let bytes: &[u8] = b"0123456789";
        let mut buf = [0u8; 4];
        bytes.read_at(3, &mut buf).unwrap();
        assert_eq!(&buf, b"3456");
        assert_eq!(
            bytes.read_at(7, &mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert_eq!(ShardSource::len(&bytes), 10);
    }

    #[test]
    fn a_file_reads_at_offsets_and_refuses_past_its_length() {
        let path = std::env::temp_dir().join(format!("shard-source-{}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"abcdefgh")
            .unwrap();
        let source = FileSource::new(File::open(&path).unwrap()).unwrap();
        let mut buf = [0u8; 3];
        source.read_at(5, &mut buf).unwrap();
        assert_eq!(&buf, b"fgh");
        assert!(source.read_at(6, &mut buf).is_err());
        assert_eq!(source.len(), 8);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_file_that_shrinks_while_read_says_so() {
        let path = std::env::temp_dir().join(format!("shard-source-shrink-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        let source = FileSource::open(&path).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1000)
            .unwrap();
        let mut buf = [0u8; 1024];
        let e = source.read_at(512, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            e.to_string().contains("shrank to 1000 bytes") && e.to_string().contains("it had 4096"),
            "{e}"
        );
        assert_eq!(source.path(), Some(path.as_path()));
        std::fs::remove_file(path).unwrap();
    }
}
