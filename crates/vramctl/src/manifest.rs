//! Checksum manifest lines, as `sha256sum` writes and reads them, extended with tree digests
//! that carry their algorithm (`sha256-tree-65536:HEX  FILE`): a digest that stands alone can
//! never be mistaken for the flat SHA-256 of other bytes (`.specs/digest.md`).

use vram_residency::{DigestAlgorithm, ShardDigest};

pub use vram_residency::digest::{parse_tagged, tagged};

/// A file name as coreutils writes it in a checksum line: with `\`, `\n` or `\r` escaped,
/// and whether the line then needs its leading `\`.
#[must_use]
pub fn escape_name(name: &str) -> (bool, String) {
    let escaped = name
        .replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "\\r");
    (escaped.len() != name.len(), escaped)
}

/// The inverse of [`escape_name`]; `None` for an escape coreutils never writes.
#[must_use]
pub fn unescape_name(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            _ => return None,
        }
    }
    Some(out)
}

/// `DIGEST  NAME` (or `\DIGEST  NAME` when the name is escaped).
#[must_use]
pub fn checksum_line(alg: DigestAlgorithm, digest: &ShardDigest, name: &str) -> String {
    let (escaped, name) = escape_name(name);
    format!(
        "{}{}  {name}",
        if escaped { "\\" } else { "" },
        tagged(alg, digest)
    )
}

/// One manifest line: `[\]DIGEST  NAME` or `[\]DIGEST *NAME`.
#[must_use]
pub fn parse_line(line: &str) -> Option<(DigestAlgorithm, ShardDigest, String)> {
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let (digest, name) = line.split_once("  ").or_else(|| line.split_once(" *"))?;
    let (alg, digest) = parse_tagged(digest, DigestAlgorithm::Sha256)?;
    let name = if escaped {
        unescape_name(name)?
    } else {
        name.to_owned()
    };
    (!name.is_empty()).then_some((alg, digest, name))
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

/// Every line of a manifest's text (`sha256sum` or `vramctl digest` lines; blank lines and a
/// CR before the line break are ignored), names taken from `base`, the manifest's directory.
/// A line that is not a checksum line refuses the whole manifest: a manifest sealed in part
/// would serve a model with shards missing.
///
/// # Errors
/// [`ManifestError::Malformed`] naming the first bad line; [`ManifestError::Empty`];
/// [`ManifestError::OutsideDirectory`] for an absolute name or one through `..` (symbolic links
/// out of the directory are the caller's to check, on the file system).
pub fn parse_manifest(
    text: &str,
    base: &std::path::Path,
) -> Result<Vec<ManifestEntry>, ManifestError> {
    let mut entries = Vec::new();
    for (number, line) in (1u64..).zip(text.lines()) {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (algorithm, digest, name) =
            parse_line(line).ok_or(ManifestError::Malformed { line: number })?;
        let name = std::path::Path::new(&name);
        let leaves = name.is_absolute()
            || name
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
        if leaves {
            return Err(ManifestError::OutsideDirectory { line: number });
        }
        let path = base.join(name.strip_prefix("./").unwrap_or(name));
        entries.push(ManifestEntry {
            path,
            algorithm,
            digest,
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
            &format!("{hex}  a.bin\n{hex}  ./sub/b.bin\n"),
            Path::new("m"),
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
                parse_manifest(&text, Path::new("m")),
                Err(ManifestError::OutsideDirectory { line: 2 }),
                "{name}"
            );
        }
    }
}
