//! `vramctl digest FILE... [--flat] [--leaf BYTES] [--check MANIFEST]`: the digests an operator
//! records in a manifest, and the check of a manifest, in `sha256sum`'s formats.
//!
//! A flat SHA-256 is printed exactly as `sha256sum` prints it (`HEX  FILE`); a tree digest
//! carries its algorithm (`sha256-tree-65536:HEX  FILE`), so that it can never be mistaken for
//! the flat SHA-256 of some other bytes. File names with a backslash or a line break are
//! escaped as coreutils does (a leading `\` on the line). Files are read with positioned reads
//! that overlap with hashing (`digest_source`); `-` is standard input.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde_json::json;
use vram_residency::digest::{DigestHasher, digest_source};
use vram_residency::{DigestAlgorithm, FileSource, ShardDigest};

use crate::cli::DigestArgs;
use crate::error::{CliError, CliResult, Exit};
use crate::files::{ProgressSource, READ_CHUNK, open_model};
use crate::output::{self, Output};
use vramctl::manifest::{checksum_line, escape_name, parse_line, tagged, tensor_line};

pub(crate) fn algorithm(flat: bool, leaf: Option<u64>) -> CliResult<DigestAlgorithm> {
    match (flat, leaf) {
        (true, _) => Ok(DigestAlgorithm::Sha256),
        (false, None) => Ok(DigestAlgorithm::default()),
        (false, Some(l)) => {
            DigestAlgorithm::tree(l).map_err(|e| CliError::bad_input(format!("--leaf: {e}")))
        }
    }
}

/// The algorithm of `digest`'s arguments: `--algorithm`, else `--flat` / `--leaf`.
fn chosen(args: &DigestArgs) -> CliResult<DigestAlgorithm> {
    match args.algorithm {
        Some(alg) => Ok(alg),
        None => algorithm(args.flat, args.leaf),
    }
}

/// Digest of a file: positioned reads overlapping with hashing, tree leaves in parallel; a BLAKE3
/// digest memory-maps the file and hashes its subtrees on every core, as `b3sum` does (the page
/// cache is read where it lies, no copy; memory stays the kernel's, whatever the file's size).
/// An empty file has the digest of no bytes, as `sha256sum` and `b3sum` print it.
pub(crate) fn digest_file(
    path: &Path,
    alg: DigestAlgorithm,
    out: Output,
) -> CliResult<ShardDigest> {
    let (file, len) = crate::files::open_regular(path)?;
    if len == 0 {
        return Ok(DigestHasher::new(alg).finalize());
    }
    if alg == DigestAlgorithm::Blake3 {
        drop(file);
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_mmap_rayon(path)
            .map_err(|e| CliError::file(path, &format!("read failed ({e})"), "check the disk"))?;
        return Ok(ShardDigest::from_bytes(*hasher.finalize().as_bytes()));
    }
    let source = FileSource::new(file).map_err(|e| crate::files::io_error(path, &e))?;
    let bar = out.progress(len, "hashing");
    let digest = digest_source(
        &ProgressSource {
            inner: &source,
            bar: &bar,
        },
        alg,
    );
    bar.finish_and_clear();
    digest.map_err(|e| CliError::file(path, &format!("read failed ({e})"), "check the disk"))
}

/// Digest of standard input, read in chunks.
fn digest_stdin(alg: DigestAlgorithm) -> CliResult<ShardDigest> {
    let mut stdin = std::io::stdin().lock();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut hasher = DigestHasher::new(alg);
    loop {
        let n = stdin
            .read(&mut chunk)
            .map_err(|e| CliError::bad_input(format!("standard input: read failed ({e})")))?;
        let Some(piece) = chunk.get(..n).filter(|p| !p.is_empty()) else {
            break;
        };
        hasher.update_parallel(piece);
    }
    Ok(hasher.finalize())
}

fn digest_named(name: &Path, alg: DigestAlgorithm, out: Output) -> CliResult<ShardDigest> {
    if name == Path::new("-") {
        digest_stdin(alg)
    } else {
        digest_file(name, alg, out)
    }
}

pub(crate) fn run(out: Output, args: &DigestArgs) -> CliResult<Exit> {
    if let Some(manifest) = &args.check {
        let bare = args.algorithm.unwrap_or(DigestAlgorithm::Sha256);
        return check(out, manifest, args.strict, bare);
    }
    let alg = chosen(args)?;
    let files: Vec<PathBuf> = if args.files.is_empty() && !args.tensors {
        vec![PathBuf::from("-")]
    } else {
        args.files.clone()
    };
    // As `sha256sum`: a file that cannot be read is reported, the others are still digested,
    // and the exit status says something failed.
    let (mut failed, mut exit) = (0usize, Exit::Ok);
    for file in &files {
        let done = if args.tensors {
            digest_tensors(out, file, alg)
        } else {
            digest_named(file, alg, out).map(|digest| {
                out.result_bytes(&checksum_line(alg, &digest, file.as_os_str().as_bytes()));
                out.json(&json!({ "file": file.to_string_lossy(), "algorithm": alg.to_string(), "digest": digest.to_hex(), "tagged": tagged(alg, &digest) }));
            })
        };
        if let Err(e) = done {
            output::warn(&format!("vramctl: {e}"));
            out.json(&json!({ "file": file.to_string_lossy(), "error": e.to_string() }));
            failed = failed.saturating_add(1);
            if exit == Exit::Ok {
                exit = e.exit;
            }
        }
    }
    if failed == 0 {
        return Ok(Exit::Ok);
    }
    Err(CliError::new(
        exit,
        format!(
            "{failed} of {} files could not be digested (above)",
            files.len()
        ),
    )
    .reported_in_json())
}

/// `--tensors`: each tensor's digest, read from its byte range of the file, and the model
/// digest; with `--json`, the metadata digest too (`.specs/model-digest.md`). Tensors of zero
/// bytes are not listed: the model digest leaves them out.
fn digest_tensors(out: Output, path: &Path, alg: DigestAlgorithm) -> CliResult<()> {
    use vram_residency::model::{TAG, TensorEntry, model_digest};
    use vramctl::formats::{METADATA_TAG, metadata_encoding, tensor_table};
    let (file, len) = open_model(path)?;
    let head = crate::files::read_head(path, &file, len)?;
    let malformed = |e: vramctl::formats::FormatError| {
        CliError::file(path, &e.to_string(), "use an intact model file")
    };
    let table = tensor_table(path, &head, len)
        .map_err(malformed)?
        .ok_or_else(|| {
            CliError::file(
                path,
                "is neither safetensors nor GGUF, so it has no tensors",
                "digest it without --tensors",
            )
        })?;
    let metadata = metadata_encoding(path, &head, len).map_err(malformed)?;
    drop(head);
    let source = FileSource::new(file).map_err(|e| crate::files::io_error(path, &e))?;
    let mut entries = Vec::with_capacity(table.len());
    for t in table.into_iter().filter(|t| t.bytes > 0) {
        let range = TensorBytes {
            file: &source,
            offset: t.offset,
            len: t.bytes,
        };
        let digest = digest_source(&range, alg)
            .map_err(|e| CliError::file(path, &format!("read failed ({e})"), "check the disk"))?;
        entries.push(TensorEntry {
            name: t.name,
            dtype: t.dtype,
            shape: t.shape,
            bytes: t.bytes,
            algorithm: alg,
            digest,
        });
    }
    entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let model = model_digest(&entries).map_err(|e| {
        CliError::file(
            path,
            &e.to_string(),
            "use a model file with at least one tensor of at least one byte",
        )
    })?;
    let file_bytes = path.as_os_str().as_bytes();
    if out.json {
        let metadata = metadata.map(|m| {
            let d = vram_residency::compute_digest(&m, DigestAlgorithm::Sha256);
            format!("{METADATA_TAG}:{}", d.to_hex())
        });
        // Written a tensor at a time: a document of a million tensors is never held whole.
        let head = json!({
            "file": path.to_string_lossy(),
            "model_digest": format!("{TAG}:{}", model.to_hex()),
            "metadata_digest": metadata,
        })
        .to_string();
        let mut w = std::io::BufWriter::new(std::io::stdout().lock());
        let mut write = || -> std::io::Result<()> {
            w.write_all(head.strip_suffix('}').unwrap_or(&head).as_bytes())?;
            w.write_all(b",\"tensors\":[")?;
            for (i, e) in entries.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                let digest = format!("{alg}:{}", e.digest.to_hex());
                serde_json::to_writer(
                    &mut w,
                    &json!({
                        "name": e.name, "dtype": e.dtype, "shape": e.shape, "bytes": e.bytes,
                        "digest": digest,
                    }),
                )?;
            }
            w.write_all(b"]}\n")?;
            w.flush()
        };
        // A closed stdout (`| head`) is not worth failing for, as everywhere in `vramctl`.
        let _ = write();
        return Ok(());
    }
    for e in &entries {
        out.result_bytes(&tensor_line(alg, &e.digest, file_bytes, &e.name));
    }
    let (escaped, shown) = escape_name(file_bytes);
    let mut model_line = if escaped { b"\\".to_vec() } else { Vec::new() };
    model_line.extend_from_slice(format!("{TAG}:{}  ", model.to_hex()).as_bytes());
    model_line.extend_from_slice(&shown);
    out.result_bytes(&model_line);
    Ok(())
}

/// The bytes of one tensor: a range of the file.
struct TensorBytes<'a> {
    file: &'a FileSource,
    offset: u64,
    len: u64,
}

impl vram_residency::ShardSource for TensorBytes<'_> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset.saturating_add(u64::try_from(buf.len()).unwrap_or(u64::MAX));
        if end > self.len {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        self.file.read_at(self.offset.saturating_add(offset), buf)
    }
}

/// The other algorithm bare hex is written with (`sha256sum`'s, `b3sum`'s) when `want` is
/// `path`'s digest under it: hashed again only for a line that failed.
fn bare_as_other(
    path: &Path,
    assumed: DigestAlgorithm,
    want: &ShardDigest,
) -> Option<DigestAlgorithm> {
    let quiet = Output {
        json: true,
        quiet: true,
    };
    vramctl::manifest::bare_as_other(assumed, want, |a| digest_named(path, a, quiet).ok())
}

/// Longest manifest line read: a digest and a path (at most 4096 bytes) with room to spare.
const MAX_LINE_BYTES: u64 = 64 * 1024;

/// The next line of a manifest, without its line break; `None` at the end. A line longer than
/// [`MAX_LINE_BYTES`] (`/dev/zero`, a model file given by mistake) is refused before it is
/// held in memory.
fn next_line(reader: &mut dyn BufRead, manifest: &Path, number: u64) -> CliResult<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    reader
        .take(MAX_LINE_BYTES.saturating_add(1))
        .read_until(b'\n', &mut buf)
        .map_err(|e| {
            CliError::file(
                manifest,
                &format!("read failed ({e})"),
                "give a text manifest",
            )
        })?;
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if u64::try_from(buf.len()).unwrap_or(u64::MAX) > MAX_LINE_BYTES {
        return Err(CliError::file(
            manifest,
            &format!("line {number} is longer than {MAX_LINE_BYTES} bytes"),
            "give a manifest (`vramctl digest` or `sha256sum` lines), not a model or a device",
        ));
    }
    // Names are bytes, UTF-8 or not, as coreutils reads them.
    Ok(Some(buf))
}

/// `--check MANIFEST`: verifies every line as `sha256sum -c` does: `NAME: OK`, `NAME: FAILED`
/// or `NAME: FAILED open or read`, warnings on stderr, exit 1 if anything failed.
fn check(out: Output, manifest: &Path, strict: bool, bare: DigestAlgorithm) -> CliResult<Exit> {
    let reader: Box<dyn BufRead> = if manifest == Path::new("-") {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let file = File::open(manifest).map_err(|e| {
            CliError::file(
                manifest,
                &format!("cannot be read ({e})"),
                "give a manifest file",
            )
        })?;
        Box::new(BufReader::new(file))
    };
    let (mut ok, mut mismatched, mut unreadable, mut malformed) = (0u64, 0u64, 0u64, 0u64);
    // Bare-hex lines that failed but are the file's digest under the other bare algorithm
    // (a `b3sum` manifest checked as `sha256sum`'s, or the reverse).
    let mut other_algorithm: Option<(DigestAlgorithm, u64)> = None;
    let mut reader = reader;
    for number in 1u64.. {
        let Some(line) = next_line(&mut reader, manifest, number)? else {
            break;
        };
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        let Some((alg, want, name)) = parse_line(line, bare) else {
            if !line.iter().all(u8::is_ascii_whitespace) {
                malformed = malformed.saturating_add(1);
                output::warn(&format!(
                    "vramctl: {}: {number}: improperly formatted checksum line",
                    crate::output::shown(manifest)
                ));
                // Which lines went unchecked, for a machine reading --json.
                out.json(&json!({ "line": number, "result": "improperly formatted" }));
            }
            continue;
        };
        // As coreutils 9 prints a checked name: its bytes, escaped (with a leading `\`) only
        // when it holds a line break, which would otherwise forge a result line.
        let mut shown = name.clone();
        if name.contains(&b'\n') {
            shown = [&b"\\"[..], &escape_name(&name).1].concat();
        }
        let path = Path::new(std::ffi::OsStr::from_bytes(&name));
        let verdict = match digest_named(
            path,
            alg,
            Output {
                json: true,
                quiet: true,
            },
        ) {
            Ok(got) if got.ct_eq(&want) => {
                ok = ok.saturating_add(1);
                "OK"
            }
            Ok(_) => {
                mismatched = mismatched.saturating_add(1);
                if vramctl::manifest::is_bare_line(line)
                    && let Some(other) = bare_as_other(path, alg, &want)
                {
                    let (_, n) = other_algorithm.get_or_insert((other, 0));
                    *n = n.saturating_add(1);
                }
                "FAILED"
            }
            Err(e) => {
                unreadable = unreadable.saturating_add(1);
                output::warn(&format!("vramctl: {e}"));
                "FAILED open or read"
            }
        };
        out.result_bytes(&[&shown[..], b": ", verdict.as_bytes()].concat());
        out.json(&json!({ "line": number, "file": path.to_string_lossy(), "algorithm": alg.to_string(), "result": verdict }));
    }
    let warn = |n: u64, one: &str, many: &str| {
        if n > 0 {
            output::warn(&format!(
                "vramctl: WARNING: {n} {}",
                if n == 1 { one } else { many }
            ));
        }
    };
    warn(
        malformed,
        "line is improperly formatted",
        "lines are improperly formatted",
    );
    warn(
        unreadable,
        "listed file could not be read",
        "listed files could not be read",
    );
    warn(
        mismatched,
        "computed checksum did NOT match",
        "computed checksums did NOT match",
    );
    if let Some((other, n)) = other_algorithm {
        let (what, flag) = match other {
            DigestAlgorithm::Blake3 => ("BLAKE3 (a b3sum manifest)", "with --algorithm blake3"),
            _ => ("flat SHA-256 (a sha256sum manifest)", "without --algorithm"),
        };
        output::warn(&format!(
            "vramctl: {n} of the failed lines hold the file's {what}: check the manifest {flag}"
        ));
    }
    if ok.saturating_add(mismatched).saturating_add(unreadable) == 0 {
        output::warn(&format!(
            "vramctl: {}: no properly formatted checksum lines found",
            crate::output::shown(manifest)
        ));
        return Ok(Exit::VerificationFailed);
    }
    Ok(
        if mismatched > 0 || unreadable > 0 || (strict && malformed > 0) {
            Exit::VerificationFailed
        } else {
            Exit::Ok
        },
    )
}
