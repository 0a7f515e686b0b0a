//! The worker token file: the one reading of it that `vramctl` and the Python package share,
//! so that one file gives the same seal key wherever it is read.

use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

/// The environment variable that holds the worker token itself, where no token file is named.
pub const TOKEN_ENV: &str = "VRAM_WORKER_TOKEN";

/// Longest token file read.
pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// A worker token read from its file.
pub struct TokenFile {
    /// The token: the file's bytes less one trailing line ending (`\n` or `\r\n`), as `echo`
    /// and editors leave. Zeroized on drop.
    pub token: Zeroizing<Vec<u8>>,
    /// The file's permission bits when others than its owner may read or write it (whoever
    /// reads it can seal and sign as the worker): callers warn, as `ssh` does for a key.
    pub shared_mode: Option<u32>,
}

impl std::fmt::Debug for TokenFile {
    /// The length only, never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("len", &self.token.len())
            .field("shared_mode", &self.shared_mode)
            .finish()
    }
}

impl TokenFile {
    /// The warning to show for a file others may read (`shared_mode`), naming the file as the
    /// caller shows it: the same words wherever the token is read.
    #[must_use]
    pub fn shared_warning(&self, shown_name: &str) -> Option<String> {
        self.shared_mode.map(|mode| {
            format!(
                "token file {shown_name} is accessible by others (mode {mode:04o}): anyone who reads it can seal and sign as this worker; run `chmod 600` on it"
            )
        })
    }
}

/// The worker token from [`TOKEN_ENV`], when it is set (its bytes as they are).
#[must_use]
pub fn token_from_env() -> Option<Zeroizing<Vec<u8>>> {
    std::env::var_os(TOKEN_ENV).map(|v| {
        #[cfg(unix)]
        let bytes = {
            use std::os::unix::ffi::OsStringExt;
            v.into_vec()
        };
        #[cfg(not(unix))]
        let bytes = v.to_string_lossy().into_owned().into_bytes();
        Zeroizing::new(bytes)
    })
}

/// Why a token file could not be used (the path is the caller's to name).
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// It could not be opened or read.
    #[error("cannot be read ({0})")]
    Unreadable(std::io::Error),
    /// It is a directory, a device or another non-regular file.
    #[error("not a regular file")]
    NotRegularFile,
    /// It is longer than [`MAX_TOKEN_FILE_BYTES`].
    #[error("longer than {MAX_TOKEN_FILE_BYTES} bytes")]
    TooLong,
}

/// Reads the worker token from `path`.
///
/// # Errors
/// [`TokenFileError`] for a file that cannot be read, is not a regular file, or is longer than
/// [`MAX_TOKEN_FILE_BYTES`].
pub fn read_token_file(path: &Path) -> Result<TokenFile, TokenFileError> {
    let meta = std::fs::metadata(path).map_err(TokenFileError::Unreadable)?;
    if !meta.is_file() {
        return Err(TokenFileError::NotRegularFile);
    }
    let file = std::fs::File::open(path).map_err(TokenFileError::Unreadable)?;
    let mut token = Zeroizing::new(Vec::new());
    file.take(MAX_TOKEN_FILE_BYTES.saturating_add(1))
        .read_to_end(&mut token)
        .map_err(TokenFileError::Unreadable)?;
    if u64::try_from(token.len()).unwrap_or(u64::MAX) > MAX_TOKEN_FILE_BYTES {
        return Err(TokenFileError::TooLong);
    }
    for ending in [&b"\r\n"[..], b"\n"] {
        if token.ends_with(ending) {
            let keep = token.len().saturating_sub(ending.len());
            token.truncate(keep);
            break;
        }
    }
    Ok(TokenFile {
        token,
        shared_mode: shared_mode(&meta),
    })
}

#[cfg(unix)]
fn shared_mode(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn shared_mode(_meta: &std::fs::Metadata) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "vram-seal-token-{}-{}",
            std::process::id(),
            hex::encode(&bytes[..bytes.len().min(8)])
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn one_trailing_line_ending_is_not_part_of_the_token() {
        for (content, token) in [
            (&b"secret\n"[..], &b"secret"[..]),
            (b"secret\r\n", b"secret"),
            (b"secret\n\n", b"secret\n"),
            (b"secret", b"secret"),
        ] {
            let (dir, path) = file_with(content);
            assert_eq!(read_token_file(&path).unwrap().token.as_slice(), token);
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn long_files_and_directories_are_refused() {
        let (dir, path) = file_with(&vec![b'x'; 4097]);
        assert!(matches!(
            read_token_file(&path),
            Err(TokenFileError::TooLong)
        ));
        assert!(matches!(
            read_token_file(&dir),
            Err(TokenFileError::NotRegularFile)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_can_read_is_reported() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, path) = file_with(b"shared-token");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let file = read_token_file(&path).unwrap();
        assert_eq!(file.shared_mode, Some(0o644));
        let warning = file.shared_warning("token").unwrap();
        assert!(
            warning.contains("(mode 0644)") && warning.contains("chmod 600"),
            "{warning}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file = read_token_file(&path).unwrap();
        assert_eq!(file.shared_mode, None);
        assert_eq!(file.shared_warning("token"), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
