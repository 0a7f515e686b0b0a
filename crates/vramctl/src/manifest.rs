//! Checksum manifest lines, as `sha256sum` writes and reads them, extended with tree digests
//! that carry their algorithm (`sha256-tree-65536:HEX  FILE`): a digest that stands alone can
//! never be mistaken for the flat SHA-256 of other bytes (`.specs/digest.md`).

use vram_residency::{DigestAlgorithm, ShardDigest};

pub use vram_residency::digest::{parse_tagged, tagged};

/// A file name as coreutils writes it in a checksum line: its bytes as they are (a name that
/// is not UTF-8 included), with `\`, `\n` and `\r` escaped, and whether the line then needs
/// its leading `\`.
#[must_use]
pub fn escape_name(name: &[u8]) -> (bool, Vec<u8>) {
    let mut out = Vec::with_capacity(name.len());
    for &b in name {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
    (out.len() != name.len(), out)
}

/// A tensor's line of `digest --tensors`: `[\]ALG:HEX  FILE#TENSOR`, the digest always tagged
/// with its algorithm (a per-tensor digest is never a file's, so it must not read as a
/// `sha256sum` or `b3sum` line). The file name is escaped as [`escape_name`] escapes it; the
/// tensor name, which comes from the model file and is nobody's file name, has every control
/// character and direction mark escaped as well ([`escape_tensor_name`]), so that a crafted
/// name cannot move the cursor, repaint the operator's terminal or show another name.
#[must_use]
pub fn tensor_line(
    alg: DigestAlgorithm,
    digest: &ShardDigest,
    file: &[u8],
    tensor: &str,
) -> Vec<u8> {
    let (file_escaped, file) = escape_name(file);
    let (tensor_escaped, tensor) = escape_tensor_name(tensor);
    let mut line = Vec::with_capacity(file.len().saturating_add(tensor.len()).saturating_add(96));
    if file_escaped || tensor_escaped {
        line.push(b'\\');
    }
    line.extend_from_slice(format!("{alg}:{}  ", digest.to_hex()).as_bytes());
    line.extend_from_slice(&file);
    line.push(b'#');
    line.extend_from_slice(tensor.as_bytes());
    line
}

/// A tensor name as `digest --tensors` shows it: `\` doubled, every control character (C0,
/// DEL and C1) as `\xHH`, the marks that reorder text on screen (bidirectional overrides and
/// isolates) as `\u{HHHH}`, and whether anything was escaped.
#[must_use]
pub fn escape_tensor_name(name: &str) -> (bool, String) {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(name.len());
    let mut escaped = false;
    for c in name.chars() {
        if c == '\\' {
            out.push_str("\\\\");
            escaped = true;
        } else if c.is_control() || is_direction_mark(c) {
            escaped = true;
            let code = u32::from(c);
            let _ = if code <= 0xff {
                write!(out, "\\x{code:02x}")
            } else {
                write!(out, "\\u{{{code:04x}}}")
            };
        } else {
            out.push(c);
        }
    }
    (escaped, out)
}

/// Marks that make a terminal show text in another order than its bytes (the "Trojan Source"
/// characters).
fn is_direction_mark(c: char) -> bool {
    matches!(c, '\u{200e}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The inverse of [`escape_name`]; `None` for an escape coreutils never writes.
#[must_use]
pub fn unescape_name(name: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len());
    let mut bytes = name.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next()? {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            _ => return None,
        }
    }
    Some(out)
}

/// `DIGEST  NAME` (or `\DIGEST  NAME` when the name is escaped), as bytes: a name that is not
/// UTF-8 is written as it is. Flat SHA-256 and BLAKE3 digests are bare hex, exactly as
/// `sha256sum` and `b3sum` write their lines; a tree digest carries its algorithm.
#[must_use]
pub fn checksum_line(alg: DigestAlgorithm, digest: &ShardDigest, name: &[u8]) -> Vec<u8> {
    let (escaped, name) = escape_name(name);
    let mut line = Vec::with_capacity(name.len().saturating_add(80));
    if escaped {
        line.push(b'\\');
    }
    let shown = match alg {
        DigestAlgorithm::Blake3 => digest.to_hex(),
        other => tagged(other, digest),
    };
    line.extend_from_slice(shown.as_bytes());
    line.extend_from_slice(b"  ");
    line.extend_from_slice(&name);
    line
}

/// One manifest line: `[\]DIGEST  NAME` or `[\]DIGEST *NAME`; the name is any bytes (as
/// coreutils reads them), the digest ASCII: `ALG:HEX`, or bare hex read as `bare` (flat
/// SHA-256 for `sha256sum` manifests, BLAKE3 for `b3sum` ones).
#[must_use]
pub fn parse_line(
    line: &[u8],
    bare: DigestAlgorithm,
) -> Option<(DigestAlgorithm, ShardDigest, Vec<u8>)> {
    let (escaped, line) = match line.strip_prefix(b"\\") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let at = line.windows(2).position(|w| w == b"  " || w == b" *")?;
    let digest = std::str::from_utf8(line.get(..at)?).ok()?;
    let name = line.get(at.checked_add(2)?..)?;
    let (alg, digest) = parse_tagged(digest, bare)?;
    let name = if escaped {
        unescape_name(name)?
    } else {
        name.to_vec()
    };
    (!name.is_empty()).then_some((alg, digest, name))
}

/// Whether a checksum line's digest is bare hex (no `ALG:` before it).
#[must_use]
pub fn is_bare_line(line: &[u8]) -> bool {
    let line = line.strip_prefix(b"\\").unwrap_or(line);
    let end = line
        .windows(2)
        .position(|w| w == b"  " || w == b" *")
        .unwrap_or(line.len());
    !line.get(..end).unwrap_or_default().contains(&b':')
}

/// The algorithms a bare-hex digest may have been written with: `sha256sum`'s (flat SHA-256)
/// and `b3sum`'s (BLAKE3).
pub const BARE_ALGORITHMS: [DigestAlgorithm; 2] =
    [DigestAlgorithm::Sha256, DigestAlgorithm::Blake3];

/// For a bare-hex line that failed under `assumed`: the other bare algorithm under which the
/// file's digest (`digest_of`, `None` when it cannot be computed) is `want`, if any. The hint
/// both `digest -c` and `seal --manifest` give for a `b3sum` manifest read as `sha256sum`'s.
pub fn bare_as_other(
    assumed: DigestAlgorithm,
    want: &ShardDigest,
    digest_of: impl Fn(DigestAlgorithm) -> Option<ShardDigest>,
) -> Option<DigestAlgorithm> {
    BARE_ALGORITHMS
        .into_iter()
        .filter(|a| *a != assumed)
        .find(|a| digest_of(*a).is_some_and(|d| d.ct_eq(want)))
}

/// Whether a name a manifest gives leaves the manifest's directory (absolute, or through `..`):
/// a manifest shipped with a model names the model's files, nothing else. Symbolic links out
/// of the directory are the caller's to check, on the file system.
#[must_use]
pub fn leaves_its_directory(name: &std::path::Path) -> bool {
    name.is_absolute()
        || name
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// A file a manifest names, with the digest it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// The file, relative to the manifest's directory (an absolute name as written).
    pub path: std::path::PathBuf,
    /// The digest's algorithm (bare hex: flat SHA-256, as `sha256sum`).
    pub algorithm: DigestAlgorithm,
    /// The digest.
    pub digest: ShardDigest,
    /// Written as bare hex (its algorithm is the reader's guess: `sha256sum`'s or `b3sum`'s).
    pub bare: bool,
}

/// Why a manifest was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Line `line` (1-based) is not a checksum line.
    #[error("{line}: improperly formatted checksum line")]
    Malformed {
        /// The line number.
        line: u64,
    },
    /// Nothing but blank lines.
    #[error("no checksum lines")]
    Empty,
    /// Line `line` names a file outside the manifest's directory (an absolute path, or a path
    /// through `..`): a manifest shipped with a model names the model's files, nothing else.
    #[error("{line}: names a file outside the manifest's directory")]
    OutsideDirectory {
        /// The line number.
        line: u64,
    },
}

/// Every line of a manifest (`sha256sum` or `vramctl digest` lines, bare hex read as flat
/// SHA-256, `blake3:HEX` for BLAKE3; blank lines and a CR
/// before the line break are ignored; names are bytes, UTF-8 or not, as coreutils reads them), names taken from `base`, the manifest's directory.
/// A line that is not a checksum line refuses the whole manifest: a manifest sealed in part
/// would serve a model with shards missing.
///
/// # Errors
/// [`ManifestError::Malformed`] naming the first bad line; [`ManifestError::Empty`];
/// [`ManifestError::OutsideDirectory`] for an absolute name or one through `..` (symbolic links
/// out of the directory are the caller's to check, on the file system).
pub fn parse_manifest(
    text: &[u8],
    base: &std::path::Path,
    bare: DigestAlgorithm,
) -> Result<Vec<ManifestEntry>, ManifestError> {
    use std::os::unix::ffi::OsStrExt;
    let mut entries = Vec::new();
    for (number, line) in (1u64..).zip(text.split(|b| *b == b'\n')) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (algorithm, digest, name) =
            parse_line(line, bare).ok_or(ManifestError::Malformed { line: number })?;
        let name = std::path::Path::new(std::ffi::OsStr::from_bytes(&name));
        if leaves_its_directory(name) {
            return Err(ManifestError::OutsideDirectory { line: number });
        }
        let path = base.join(name.strip_prefix("./").unwrap_or(name));
        entries.push(ManifestEntry {
            path,
            algorithm,
            digest,
            bare: is_bare_line(line),
        });
    }
    if entries.is_empty() {
        return Err(ManifestError::Empty);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]

    use std::path::Path;

    use super::{ManifestError, parse_manifest};

    #[test]
    fn names_stay_inside_the_manifests_directory() {
        let hex = "ab".repeat(32);
        let ok = parse_manifest(
            format!("{hex}  a.bin\n{hex}  ./sub/b.bin\n").as_bytes(),
            Path::new("m"),
            vram_residency::DigestAlgorithm::Sha256,
        )
        .unwrap();
        assert_eq!(ok[0].path, Path::new("m/a.bin"));
        assert_eq!(ok[1].path, Path::new("m/sub/b.bin"));
        for name in [
            "/etc/hostname",
            "../token",
            "sub/../../token",
            "sub/../a.bin",
        ] {
            let text = format!("{hex}  a.bin\n{hex}  {name}\n");
            assert_eq!(
                parse_manifest(
                    text.as_bytes(),
                    Path::new("m"),
                    vram_residency::DigestAlgorithm::Sha256
                ),
                Err(ManifestError::OutsideDirectory { line: 2 }),
                "{name}"
            );
        }
    }

    #[test]
    fn names_are_bytes_as_coreutils_writes_them() {
        use super::{checksum_line, parse_line};
        use vram_residency::{DigestAlgorithm, ShardDigest};
        let digest = ShardDigest::from_hex(&"cd".repeat(32)).unwrap();
        let alg = DigestAlgorithm::Sha256;
        // Latin-1 bytes (not UTF-8) as they are; a line break and a backslash escaped.
        let name = b"caf\xe9\n\\x.bin";
        let line = checksum_line(alg, &digest, name);
        let mut want = b"\\".to_vec();
        want.extend_from_slice(format!("{}  caf", "cd".repeat(32)).as_bytes());
        want.extend_from_slice(b"\xe9\\n\\\\x.bin");
        assert_eq!(line, want);
        assert_eq!(parse_line(&line, alg), Some((alg, digest, name.to_vec())));
        let text = [&checksum_line(alg, &digest, b"a\xff.bin")[..], b"\n"].concat();
        let entries = parse_manifest(&text, Path::new("m"), alg).unwrap();
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(entries[0].path.as_os_str().as_bytes(), b"m/a\xff.bin");
    }
}
