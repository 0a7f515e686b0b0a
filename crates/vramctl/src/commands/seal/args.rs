//! The seal command's arguments, validated into a job before any work: the files to seal with
//! what each must hash to (from `--expect` or a manifest), each file opened and its header
//! checked (only headers are read), where they go, and how they are served (the metrics port
//! is bound here, so a busy port is refused before a byte is sealed). As ripgrep turns its
//! parsed arguments into `HiArgs` before searching.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vram_residency::{DigestAlgorithm, ExpectedFrom, FileSource, ShardDigest};
use vramctl::formats::{ModelFormat, recognise};
use vramctl::manifest::{self, ManifestError};

use crate::cli::SealArgs;
use crate::error::{CliError, CliResult, Exit};
use crate::files;
use crate::metrics_server::MetricsListener;

/// What a file must hash to, from `--expect` or a manifest line.
#[derive(Debug, Clone, Copy)]
pub(super) struct Expected {
    pub(super) algorithm: DigestAlgorithm,
    pub(super) digest: ShardDigest,
    /// Given as bare hex (on the command line, or a manifest line): when it is the file's
    /// digest under another algorithm (a flat SHA-256 for a tree, BLAKE3 for a `b3sum` line
    /// read as `sha256sum`'s), the error says so.
    pub(super) bare: bool,
    /// Where it was given, for errors: `--expect` or `the manifest`.
    pub(super) given_in: &'static str,
    /// Where it came from, as the seal's audit record and metrics say.
    pub(super) from: ExpectedFrom,
}

/// A file to seal, opened, its header checked.
pub(super) struct SealFile {
    pub(super) path: PathBuf,
    pub(super) source: FileSource,
    pub(super) format: ModelFormat,
    pub(super) expected: Option<Expected>,
}

/// Where the files go.
pub(super) enum Placement {
    /// Each file its own shard on one device, named from its path.
    Each { device: u32 },
    /// One tensor-parallel group: file i on the i-th device (cycling).
    Group { model_id: String, devices: Vec<u32> },
}

/// How the sealed files are kept.
pub(super) struct Serving {
    pub(super) verify_every: Duration,
    /// Between two audit summaries of the scrubber's passes.
    pub(super) summary_every: Duration,
    /// The scrubber's GPU share (`None`: the manager's background share).
    pub(super) share: Option<vram_residency::GpuShare>,
    /// Bound already: serving starts once the files are sealed.
    pub(super) metrics: Option<MetricsListener>,
}

/// Everything `seal` will do, checked.
pub(super) struct SealJob {
    pub(super) files: Vec<SealFile>,
    /// What the shards are sealed and re-verified with.
    pub(super) algorithm: DigestAlgorithm,
    pub(super) placement: Placement,
    pub(super) serving: Serving,
    /// The signed manifest's signature, with --signed-manifest.
    pub(super) signature: Option<Signature>,
}

/// A signed manifest and who signed it.
pub(super) struct Signature {
    pub(super) bundle: PathBuf,
    /// Who signed it, as checked; `None` when the operator chose to trust it unchecked.
    pub(super) signer: Option<String>,
}

impl SealJob {
    /// Validates the arguments: every file and its header (only headers are read), every
    /// expected digest, and the metrics port (bound now).
    pub(super) fn from_args(args: &SealArgs) -> CliResult<Self> {
        let (requested, signature) = requested(args)?;
        let files = requested
            .into_iter()
            .map(|(path, expected)| open(path, expected))
            .collect::<CliResult<Vec<_>>>()?;
        let placement = match &args.group {
            Some(model_id) => Placement::Group {
                model_id: model_id.clone(),
                devices: if args.devices.is_empty() {
                    vec![args.device]
                } else {
                    args.devices.clone()
                },
            },
            None => Placement::Each {
                device: args.device,
            },
        };
        let metrics = args.metrics.map(MetricsListener::bind).transpose()?;
        let algorithm = args.algorithm.unwrap_or_else(|| {
            if args.signed_manifest.is_some() {
                signed_algorithm(&files).unwrap_or_default()
            } else {
                DigestAlgorithm::default()
            }
        });
        Ok(Self {
            files,
            algorithm,
            placement,
            serving: Serving {
                verify_every: Duration::from_secs(args.verify_every),
                summary_every: Duration::from_secs(args.audit_summary_every),
                share: args.scrub_share,
                metrics,
            },
            signature,
        })
    }
}

/// The one algorithm a signed manifest used for every file sealed (`None` when they differ).
fn signed_algorithm(files: &[SealFile]) -> Option<DigestAlgorithm> {
    let mut algorithms = files.iter().filter_map(|f| f.expected.map(|e| e.algorithm));
    let first = algorithms.next()?;
    algorithms.all(|a| a == first).then_some(first)
}

/// `ALG:HEX` as `vramctl digest` prints it, `sha256:HEX` (or `SHA256:HEX`) for a flat SHA-256
/// (`sha256sum`, a Hugging Face LFS oid), or bare `HEX` for the default tree digest.
fn parse_expected(value: &str) -> CliResult<Expected> {
    let (algorithm, digest) = manifest::parse_tagged(value, DigestAlgorithm::default())
        .ok_or_else(|| {
            CliError::bad_input(format!(
                "--expect {value:?} is not a digest; give what `vramctl digest FILE` prints (sha256-tree-65536:HEX), or sha256:HEX for a flat SHA-256"
            ))
        })?;
    Ok(Expected {
        algorithm,
        digest,
        bare: !value.contains(':'),
        given_in: "--expect",
        from: ExpectedFrom::Caller,
    })
}

/// The files to seal, in order, and what each must hash to: `FILE...` with `--expect`, or
/// every line of `--manifest`.
fn requested(args: &SealArgs) -> CliResult<(Requested, Option<Signature>)> {
    if let Some(bundle) = &args.signed_manifest {
        let (files, signer) = signed(bundle, args)?;
        let bundle = bundle.clone();
        return Ok((files, Some(Signature { bundle, signer })));
    }
    Ok((unsigned_requests(args)?, None))
}

/// The files to seal, each with what it must hash to, if anything.
type Requested = Vec<(PathBuf, Option<Expected>)>;

/// `FILE...` with `--expect`, or every line of `--manifest`.
fn unsigned_requests(args: &SealArgs) -> CliResult<Requested> {
    if let Some(manifest) = &args.manifest {
        // Bare hex is `b3sum`'s BLAKE3 when the operator says so, else `sha256sum`'s SHA-256.
        let bare = match args.algorithm {
            Some(DigestAlgorithm::Blake3) => DigestAlgorithm::Blake3,
            _ => DigestAlgorithm::Sha256,
        };
        return read_manifest(manifest, bare);
    }
    if !args.expect.is_empty() && args.expect.len() != args.files.len() {
        return Err(CliError::bad_input(format!(
            "{} --expect value(s) for {} file(s); give one per file, in order",
            args.expect.len(),
            args.files.len()
        )));
    }
    let expected = args
        .expect
        .iter()
        .map(|e| parse_expected(e))
        .collect::<CliResult<Vec<_>>>()?;
    Ok(args
        .files
        .iter()
        .enumerate()
        .map(|(i, path)| (path.clone(), expected.get(i).copied()))
        .collect())
}

/// Each file with the digest a model-signing bundle records for it, once the bundle's
/// signature is checked (or the operator chose to trust it unchecked), and who signed it.
fn signed(bundle: &Path, args: &SealArgs) -> CliResult<(Requested, Option<String>)> {
    use vramctl::bundle_signature::{Trust, verify_bundle};
    let bytes = files::read_manifest(bundle)?;
    let trust = match (&args.signature_key, &args.signature_roots) {
        (Some(key), _) => Some(Trust::key_from_pem(&read_pem(key)?)),
        (None, Some(roots)) => Some(Trust::roots_from_pem(&read_pem(roots)?)),
        (None, None) => None,
    }
    .transpose()
    .map_err(|e| CliError::bad_input(format!("signature trust: {e}")))?;
    let signer = match &trust {
        Some(trust) => Some(
            verify_bundle(&bytes, trust)
                .map_err(|e| {
                    // An unreadable bundle is bad input; a signature that does not hold, a
                    // failed verification.
                    let exit = match e {
                        vramctl::bundle_signature::SignatureError::Malformed(_) => Exit::BadInput,
                        _ => Exit::VerificationFailed,
                    };
                    CliError::new(
                        exit,
                        format!(
                            "signed manifest {}: signature not accepted: {e}; nothing was sealed",
                            crate::output::shown(bundle)
                        ),
                    )
                })?
                .signer,
        ),
        None if args.trust_unverified_signature => {
            crate::output::warn(&format!(
                "warning: signed manifest {}: its signature is NOT checked (--trust-unverified-signature): each file is checked against the statement's digest in VRAM, but nothing proves who made the statement; the seals' audit records and metrics say so",
                crate::output::shown(bundle)
            ));
            None
        }
        None => {
            return Err(CliError::bad_input(format!(
                "signed manifest {}: its signature must be checked: give --signature-key PEM (a bundle `model_signing sign key` wrote) or --signature-roots PEM (`model_signing sign certificate`), or --trust-unverified-signature to seal against a statement checked elsewhere (said in --json, the audit records and the metrics)",
                crate::output::shown(bundle)
            )));
        }
    };
    let signed = vramctl::signed_manifest::read_bundle(&bytes).map_err(|e| {
        CliError::file(
            bundle,
            &e.to_string(),
            "give the bundle `model_signing sign` wrote",
        )
    })?;
    let from = if signer.is_some() {
        ExpectedFrom::SignedManifest
    } else {
        ExpectedFrom::UnverifiedSignedManifest
    };
    let model_dir = args.model_dir.as_deref();
    let requested = signed_files(bundle, &signed, model_dir, &args.files, from)?;
    Ok((requested, signer))
}

/// A PEM file given for the signature's trust.
fn read_pem(path: &Path) -> CliResult<String> {
    let bytes = files::read_manifest(path)?;
    String::from_utf8(bytes)
        .map_err(|_| CliError::file(path, "is not a PEM file (not text)", "give a PEM file"))
}

/// Each of `paths` with its entry in the signed statement `signed`, named relative to
/// `model_dir` (canonical paths compared: `./model`, `model/` and an absolute path name one
/// directory).
fn signed_files(
    bundle: &Path,
    signed: &[vramctl::signed_manifest::SignedFile],
    model_dir: Option<&Path>,
    paths: &[PathBuf],
    from: ExpectedFrom,
) -> CliResult<Requested> {
    paths
        .iter()
        .map(|path| {
            let dir = model_dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
            let name = signed_name(path, &dir);
            let entry = name.as_deref().and_then(|n| signed.iter().find(|f| f.name == n));
            let Some(entry) = entry else {
                return Err(CliError::bad_input(format!(
                    "{}: not among the {} file(s) the signed manifest {} lists (named relative to {}); seal only files that were signed",
                    crate::output::shown(path),
                    signed.len(),
                    crate::output::shown(bundle),
                    crate::output::shown(&dir),
                )));
            };
            Ok((
                path.clone(),
                Some(Expected {
                    algorithm: entry.algorithm,
                    digest: entry.digest,
                    bare: false,
                    given_in: "the signed manifest",
                    from,
                }),
            ))
        })
        .collect()
}

/// `path`'s name as a signed statement names it: relative to `dir`, `/`-separated. The two
/// directories are compared canonically (`./model`, `model/` and `/abs/model` are one), the
/// file's own name as given (a symbolic link into a cache, as a Hugging Face snapshot holds,
/// keeps its name). `None` when the file is not under `dir`.
fn signed_name(path: &Path, dir: &Path) -> Option<String> {
    let canonical = |d: &Path| {
        std::fs::canonicalize(if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        })
        .ok()
    };
    let parent = canonical(path.parent().unwrap_or_else(|| Path::new("")))?;
    let relative = parent.strip_prefix(canonical(dir)?).ok()?;
    let mut name = relative
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect::<Option<Vec<_>>>()?;
    name.push(path.file_name()?.to_str()?);
    Some(name.join("/"))
}

/// A manifest line that names a file outside the manifest's directory (no digest of that file
/// is ever computed or shown).
fn outside(manifest: &Path, entry: &str) -> CliError {
    CliError::bad_input(format!(
        "{}: {entry} names a file outside the manifest's directory (an absolute path, `..` or a symbolic link out of it); a manifest names only files beside it or below it",
        crate::output::shown(manifest)
    ))
}

/// Every line of a manifest, names taken from its directory; one bad line refuses it whole.
fn read_manifest(
    path: &Path,
    bare: DigestAlgorithm,
) -> CliResult<Vec<(PathBuf, Option<Expected>)>> {
    let text = files::read_manifest(path)?;
    let base = path.parent().unwrap_or_else(|| Path::new(""));
    let entries = manifest::parse_manifest(&text, base, bare).map_err(|e| match e {
        ManifestError::Malformed { line } => CliError::bad_input(format!(
            "{}:{line}: improperly formatted checksum line; expected `HEX  FILE` (sha256sum) or `sha256-tree-65536:HEX  FILE` (vramctl digest)",
            crate::output::shown(path)
        )),
        ManifestError::Empty => CliError::bad_input(format!(
            "{}: no checksum lines; write one with `vramctl digest FILE... > {}`",
            crate::output::shown(path),
            crate::output::shown(path)
        )),
        ManifestError::OutsideDirectory { line } => outside(path, &format!("line {line}")),
    })?;
    // A symbolic link inside the directory may still lead out of it.
    let root = std::fs::canonicalize(if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    })
    .map_err(|e| CliError::file(base, &e.to_string(), "check the manifest's directory"))?;
    for entry in &entries {
        if std::fs::canonicalize(&entry.path).is_ok_and(|real| !real.starts_with(&root)) {
            let name = entry.path.strip_prefix(base).unwrap_or(&entry.path);
            return Err(outside(path, &format!("{:?}", name.to_string_lossy())));
        }
    }
    Ok(entries
        .into_iter()
        .map(|e| {
            let expected = Expected {
                algorithm: e.algorithm,
                digest: e.digest,
                bare: e.bare,
                given_in: "the manifest",
                from: ExpectedFrom::Manifest,
            };
            (e.path, Some(expected))
        })
        .collect())
}

/// Opens a file and checks its header; only the header is read.
fn open(path: PathBuf, expected: Option<Expected>) -> CliResult<SealFile> {
    let (file, len) = files::open_model(&path)?;
    let head = files::read_head(&path, &file, len)?;
    let format = recognise(&path, &head, len)
        .map_err(|e| CliError::file(&path, &e.to_string(), "use an intact model file"))?;
    // Named, so the library reads the sealed file's tensor table from VRAM by the same rule.
    let source = FileSource::with_path(file, &path).map_err(|e| files::io_error(&path, &e))?;
    Ok(SealFile {
        path,
        source,
        format,
        expected,
    })
}
