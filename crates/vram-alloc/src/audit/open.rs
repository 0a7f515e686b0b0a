//! Opening a log path: regular files only, checked before any read that could block or never
//! end (a FIFO, a device, a directory, a socket).

use std::fs::File;
use std::path::Path;

/// Why [`open_regular`] refused a path.
pub(crate) enum OpenError {
    /// Not a regular file: what it is instead.
    NotRegular(String),
    /// The open or its checks failed.
    Io(std::io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotRegular(what) => f.write_str(what),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Opens `path` if it is a regular file (a symlink to one is followed); a FIFO, device,
/// directory or socket is refused before any read that could block or never end. A new log
/// is created only where nothing is: a symbolic link to nothing is refused, never followed to
/// create its target.
pub(crate) fn open_regular(path: &Path, write: bool) -> Result<File, OpenError> {
    use std::os::unix::fs::OpenOptionsExt;
    let exists = match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => return Err(not_regular(&meta)),
        Ok(_) => true,
        Err(e) if write && e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(OpenError::NotRegular(
                    "a symbolic link to nothing; point it at the log or remove it".to_owned(),
                ));
            }
            false
        }
        Err(e) => return Err(OpenError::Io(e)),
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if write {
        // `create_new` (O_EXCL) never follows a link swapped in after the check.
        options.append(true);
        if exists {
            options.create(false);
        } else {
            options.create_new(true);
        }
    }
    // Non-blocking open: a FIFO swapped in after the check cannot hang the open.
    let file = options
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(OpenError::Io)?;
    let meta = file.metadata().map_err(OpenError::Io)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok(file)
}

fn not_regular(meta: &std::fs::Metadata) -> OpenError {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    };
    OpenError::NotRegular(format!("{kind}, not a regular file"))
}
