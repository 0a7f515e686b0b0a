//! The command line (clap).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use vram_residency::DigestAlgorithm;

const AFTER_HELP: &str = "\
Exit codes:
  0  ok
  1  verification failure (digest or seal mismatch, --expect mismatch)
  2  bad input (missing/empty/unreadable file, directory, bad option or address, too large)
  3  no GPU, driver problem, or VRAM-only policy violation
  4  the audit trail lost records (a write failed; see stderr)

Keys: the seal key and the audit signing key are derived from the worker token, read from
--token-file PATH (or $VRAMCTL_TOKEN_FILE), else from $VRAM_WORKER_TOKEN; never from a
command-line value. Without a token a random key serves one run.

Examples:
  vramctl doctor
  vramctl digest model.safetensors > model.digest
  vramctl seal model.safetensors --expect $(cut -d' ' -f1 model.digest) \\
      --verify-every 30 --metrics 127.0.0.1:9400 --audit-log /var/log/vram-audit.jsonl
  vramctl seal --group llama-70b --devices 0,1 model-00001-of-00002.safetensors \\
      model-00002-of-00002.safetensors
  vramctl audit verify /var/log/vram-audit.jsonl --token-file /etc/vram/token
  vramctl bench --size 1MiB,16GiB
  vramctl demo";

/// Seal AI model files into GPU memory and keep them provably there and unchanged.
#[derive(Debug, Parser)]
#[command(name = "vramctl", version, about, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Print one JSON document per result instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Print only results and errors.
    #[arg(long, short, global = true)]
    pub(crate) quiet: bool,
    /// Log to stderr (-v info, -vv debug, -vvv trace, with the time of each seal and
    /// verification step).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(flatten)]
    pub(crate) backend: BackendArgs,
}

/// Where shards go.
#[derive(Debug, Clone, Args)]
pub(crate) struct BackendArgs {
    /// `cuda` (real VRAM), `mock` (host memory that says so), or `auto` (cuda when a GPU is
    /// present, else mock). Default: cuda for `seal`, auto for `bench` and `demo`.
    #[arg(long, global = true, value_enum)]
    pub(crate) backend: Option<BackendChoice>,
    /// Capacity of the mock backend's simulated GPU, with units (e.g. 16GiB).
    #[arg(long, global = true, default_value = "8GiB", value_parser = parse_capacity)]
    pub(crate) mock_capacity: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendChoice {
    Auto,
    Cuda,
    Mock,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List GPUs and say whether each can hold VRAM-only shards, and why.
    Doctor,
    /// Print files' digests (tree by default, or flat SHA-256) for a manifest, or check one.
    Digest(DigestArgs),
    /// Seal files into VRAM and keep them resident and re-verified until Ctrl-C or SIGTERM.
    Seal(Box<SealArgs>),
    /// Audit-log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Measure seal and verify throughput next to the naive path.
    Bench(BenchArgs),
    /// Seal a sample model, verify it, corrupt one byte in VRAM and show the detection.
    Demo,
}

#[derive(Debug, Args)]
pub(crate) struct DigestArgs {
    /// Files to hash (`-` or none: standard input).
    pub(crate) files: Vec<PathBuf>,
    /// Flat SHA-256 (as `sha256sum` and Hugging Face LFS oids) instead of the tree digest.
    #[arg(long, conflicts_with_all = ["leaf", "algorithm"])]
    pub(crate) flat: bool,
    /// The algorithm by its id: `sha256-tree-65536` (default), `sha256-tree-<leaf bytes>`,
    /// `sha256` (as --flat) or `blake3` (lines exactly as `b3sum` writes them). With --check:
    /// how a bare hex digest is read (default `sha256`, as `sha256sum -c`; `blake3` for a
    /// `b3sum` manifest).
    #[arg(long, value_name = "ALG", conflicts_with = "leaf", value_parser = parse_algorithm)]
    pub(crate) algorithm: Option<DigestAlgorithm>,
    /// Tree leaf size with units (a power of two from 4KiB to 16MiB; default 64KiB).
    #[arg(long, value_parser = parse_bytes)]
    pub(crate) leaf: Option<u64>,
    /// Check every line of a manifest (`DIGEST  FILE`, as this command or `sha256sum` writes
    /// it; `-` for standard input): prints `FILE: OK` or `FILE: FAILED`, exit 1 on any failure.
    #[arg(long, short = 'c', value_name = "MANIFEST", conflicts_with_all = ["files", "flat", "leaf", "tensors"])]
    pub(crate) check: Option<PathBuf>,
    /// With --check: an improperly formatted line fails the check (exit 1), as in
    /// `sha256sum --strict`; without it such lines are skipped with a warning.
    #[arg(long, requires = "check")]
    pub(crate) strict: bool,
    /// For safetensors and GGUF files: each tensor's digest (`ALG:HEX  FILE#TENSOR`, in name
    /// order) and the model digest over all of them (`vram-model-v1:HEX  FILE`,
    /// `.specs/model-digest.md`): what an engine's tensors sealed in VRAM must hash to.
    #[arg(long, requires = "files")]
    pub(crate) tensors: bool,
}

/// `full`, or a fraction of the SMs in (0, 1].
fn parse_share(text: &str) -> Result<vram_residency::GpuShare, String> {
    if text == "full" {
        return Ok(vram_residency::GpuShare::Full);
    }
    text.parse::<f32>()
        .map_err(|_| {
            format!(
                "--scrub-share {text:?} is not a share; give `full` or a fraction such as 0.125"
            )
        })
        .and_then(|f| {
            vram_residency::GpuShare::bounded(f).map_err(|e| {
                format!("--scrub-share {text}: {e}; give `full` or a fraction in (0, 1]")
            })
        })
}

/// A digest algorithm id.
fn parse_algorithm(text: &str) -> Result<DigestAlgorithm, String> {
    text.parse()
        .map_err(|e: vram_residency::VramError| format!("--algorithm: {e}"))
}

/// A whole number of seconds, at least 1.
fn parse_seconds(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("--verify-every 0; give a number of seconds ≥ 1".to_owned()),
        Ok(seconds) => Ok(seconds),
        Err(_) => Err(format!(
            "--verify-every {text:?} is not a number of seconds; give a whole number ≥ 1"
        )),
    }
}

/// A loopback address: an IP and port, or `localhost:PORT` (every address the name resolves to
/// must be loopback).
fn parse_loopback(value: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let not_an_address =
        || format!("--metrics {value:?} is not an address; use 127.0.0.1:PORT or localhost:PORT");
    let addrs: Vec<SocketAddr> = match value.parse::<SocketAddr>() {
        Ok(addr) => vec![addr],
        Err(_)
            if value
                .split_once(':')
                .is_some_and(|(host, _)| host == "localhost") =>
        {
            value
                .to_socket_addrs()
                .map_err(|_| not_an_address())?
                .collect()
        }
        Err(_) => return Err(not_an_address()),
    };
    match addrs.first() {
        Some(first) if addrs.iter().all(|a| a.ip().is_loopback()) => Ok(*first),
        Some(_) => Err(format!(
            "--metrics {value:?} is not a loopback address; metrics are served on 127.0.0.1, [::1] or localhost only (put a proxy in front to expose them)"
        )),
        None => Err(not_an_address()),
    }
}

/// A shard size with units, at least one byte, that this host can address.
fn parse_shard_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let bytes = parse_size::parse_size(text)
        .map_err(|e| format!("--size {text:?}: {e}; give sizes such as 1MiB,256MiB,16GiB"))?;
    match usize::try_from(bytes) {
        Ok(0) => Err("--size 0; give sizes ≥ 1 byte".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "--size {text:?} does not fit this machine's address space; give a smaller size"
        )),
    }
}

/// A capacity that this host can address.
fn parse_capacity(text: &str) -> Result<usize, String> {
    let bytes = parse_bytes(text)?;
    usize::try_from(bytes).map_err(|_| format!("{text:?} does not fit this host's address space"))
}

/// A byte count with optional units (`65536`, `64KiB`, `16MiB`).
fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_size::parse_size(text).map_err(|e| format!("{text:?}: {e}"))
}

#[derive(Debug, Args)]
pub(crate) struct SealArgs {
    /// Model files to seal (any file; safetensors and GGUF headers are checked).
    #[arg(required_unless_present = "manifest")]
    pub(crate) files: Vec<PathBuf>,
    /// Seal every file a manifest lists, each checked against its line: `sha256sum` lines
    /// (flat SHA-256) and `vramctl digest` lines (`sha256-tree-65536:HEX  FILE`). Relative names
    /// are taken from the manifest's directory. Every line, file and header is checked before
    /// anything is sealed.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["files", "expect"])]
    pub(crate) manifest: Option<PathBuf>,
    /// Check each file against the digest an OpenSSF model-signing bundle (`model_signing
    /// sign`, file serialization, BLAKE3 or SHA-256) records for it, on the bytes in VRAM. The
    /// bundle's signature is checked first, against --signature-key (a key-signed bundle) or
    /// --signature-roots (a certificate-signed one); a bundle that is not checked is refused
    /// unless --trust-unverified-signature. Files are named as signed, relative to --model-dir.
    #[arg(long, value_name = "BUNDLE", conflicts_with_all = ["manifest", "expect"], requires = "files")]
    pub(crate) signed_manifest: Option<PathBuf>,
    /// With --signed-manifest: the signed model's directory (default: each file's own
    /// directory, so a file is looked up by its name).
    #[arg(long, value_name = "DIR", requires = "signed_manifest")]
    pub(crate) model_dir: Option<PathBuf>,
    /// With --signed-manifest: the PEM public key (P-256 or P-384) that signed the bundle
    /// (`model_signing sign key`).
    #[arg(
        long,
        value_name = "PEM",
        requires = "signed_manifest",
        conflicts_with = "signature_roots"
    )]
    pub(crate) signature_key: Option<PathBuf>,
    /// With --signed-manifest: the PEM root certificate(s) the bundle's signing certificate
    /// must chain to (`model_signing sign certificate`).
    #[arg(long, value_name = "PEM", requires = "signed_manifest")]
    pub(crate) signature_roots: Option<PathBuf>,
    /// With --signed-manifest and neither of the above: seal against the statement without
    /// checking its signature (a Sigstore keyless bundle checked by `model_signing verify`
    /// first, say). Said in --json, in each seal's audit record (`expected_from`:
    /// `unverified-signed-manifest`) and in the metrics.
    #[arg(long, requires = "signed_manifest", conflicts_with_all = ["signature_key", "signature_roots"])]
    pub(crate) trust_unverified_signature: bool,
    /// The digest each shard is sealed and re-verified with: `sha256-tree-65536` (default),
    /// `sha256-tree-<leaf bytes>`, `sha256` or `blake3` (computed in VRAM on a GPU, about twice
    /// as fast as the tree). With --signed-manifest the default is the algorithm the manifest
    /// signed every file with, so each re-verification recomputes the signed digest itself.
    #[arg(long, value_name = "ALG", value_parser = parse_algorithm)]
    pub(crate) algorithm: Option<DigestAlgorithm>,
    /// GPU index.
    #[arg(long, default_value_t = 0)]
    pub(crate) device: u32,
    /// Seal the files as one tensor-parallel model with this id: file i becomes shard i of N
    /// (`ID:tp<i>`), placed all or nothing, bound by one group seal and verified as a group.
    #[arg(long, value_name = "MODEL_ID")]
    pub(crate) group: Option<String>,
    /// With --group: the GPUs to place the shards on, comma-separated; file i goes to the
    /// i-th (cycling). Default: --device.
    #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "group")]
    pub(crate) devices: Vec<u32>,
    /// Expected digest of each file, in order: what `vramctl digest` prints (a bare 64-hex value
    /// is read as the tree digest), or `sha256:HEX` for a flat SHA-256 (`sha256sum`, a Hugging
    /// Face LFS oid). Either is checked on the bytes in VRAM as the file is sealed (a flat
    /// SHA-256 on the bytes read back, so a file changed during the seal is never sealed): a
    /// mismatch releases that file and every file sealed before it (exit 1).
    #[arg(long)]
    pub(crate) expect: Vec<String>,
    /// Seconds after which a shard's last proof is renewed: the library's scrubber re-verifies
    /// each shard once it was last verified (or sealed) that long ago (≥ 1).
    #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = parse_seconds)]
    pub(crate) verify_every: u64,
    /// Seconds between the audit records that summarise the scrubber's passed
    /// re-verifications (one `VerificationSummary` per device, and one at exit; ≥ 1). Each
    /// failure is recorded at once, on its own.
    #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = parse_seconds)]
    pub(crate) audit_summary_every: u64,
    /// The share of the GPU the re-verifications take while serving: a fraction of the SMs in
    /// (0, 1] (verification in short slices beside an engine), or `full` (every SM, one launch
    /// per shard). Default: the library's background share, 1/16 of the SMs.
    #[arg(long, value_name = "SHARE", value_parser = parse_share)]
    pub(crate) scrub_share: Option<vram_residency::GpuShare>,
    /// Serve Prometheus metrics at http://ADDR/metrics (a loopback address, e.g. 127.0.0.1:9400,
    /// or localhost:PORT); the port is bound before anything is sealed.
    #[arg(long, value_name = "ADDR", value_parser = parse_loopback)]
    pub(crate) metrics: Option<SocketAddr>,
    /// Append hash-chained audit records (JSON lines), signed with the worker's audit key, to
    /// this regular file (locked while sealed). At exit the last checkpoint is printed on
    /// stderr: keep it off the host to detect a cut log later.
    #[arg(long)]
    pub(crate) audit_log: Option<PathBuf>,
    /// Remove a torn last record from --audit-log (a write that stopped half way) instead of
    /// refusing the log; the repair is recorded in the log.
    #[arg(long, requires = "audit_log")]
    pub(crate) repair_audit_log: bool,
    #[command(flatten)]
    pub(crate) token: TokenArgs,
}

/// Where the worker token comes from.
#[derive(Debug, Clone, Args)]
pub(crate) struct TokenArgs {
    /// File holding the worker token (at least 16 bytes; one trailing newline is ignored;
    /// readable by its owner alone). Without it, $VRAMCTL_TOKEN_FILE (when not empty), then
    /// $VRAM_WORKER_TOKEN; without any, a random key for this run.
    #[arg(long, value_name = "PATH")]
    pub(crate) token_file: Option<PathBuf>,
    /// Worker id: recorded in audit records and part of the key derivation.
    #[arg(long, default_value = "vramctl")]
    pub(crate) worker_id: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check an audit log: every link, every checkpoint signature, the key. Exit 0 when it
    /// holds, 1 when it is broken or cannot be verified.
    Verify(AuditVerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AuditVerifyArgs {
    /// The audit log.
    pub(crate) file: PathBuf,
    /// The audit public key to pin (64 hex characters, as `vramctl seal` prints it).
    #[arg(long, value_name = "HEX", conflicts_with = "token_file")]
    pub(crate) public_key: Option<String>,
    /// A checkpoint kept off the host (the line `vramctl seal` printed at exit): the log must
    /// still hold everything it signed.
    #[arg(long, value_name = "TEXT")]
    pub(crate) checkpoint: Option<String>,
    /// Accept unsigned records: those after the last checkpoint (a log still being written)
    /// and those a writer found unsigned when it reopened the log (after a crash, or appended
    /// by someone else); they are reported, not vouched for.
    #[arg(long)]
    pub(crate) allow_unsigned_tail: bool,
    #[command(flatten)]
    pub(crate) token: TokenArgs,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Shard sizes to measure, comma-separated, with units (sizes larger than the free VRAM are
    /// skipped with a note).
    #[arg(long, value_name = "SIZES", default_value = "1MiB,256MiB,4GiB,16GiB", value_delimiter = ',', value_parser = parse_shard_size)]
    pub(crate) size: Vec<usize>,
    /// Digest algorithms to measure, comma-separated (a column of the table).
    #[arg(long, value_name = "ALGS", default_value = "sha256-tree-65536,blake3", value_delimiter = ',', value_parser = parse_algorithm)]
    pub(crate) algorithm: Vec<DigestAlgorithm>,
    /// Seal with the cross-check (the host bytes are also digested on the CPU).
    #[arg(long)]
    pub(crate) cross_check: bool,
    /// GPU index.
    #[arg(long, default_value_t = 0)]
    pub(crate) device: u32,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units_and_refuse_zero_and_junk() {
        let sizes: Vec<usize> = "1MiB, 256MiB,16GiB,4096"
            .split(',')
            .map(|s| parse_shard_size(s).unwrap())
            .collect();
        assert_eq!(sizes, vec![1 << 20, 256 << 20, 16 << 30, 4096]);
        for bad in ["0", "12 parsecs", "", "18446744073709551616"] {
            assert!(parse_shard_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn options_are_validated_by_their_parsers() {
        assert_eq!(parse_seconds("5"), Ok(5));
        assert!(parse_seconds("0").unwrap_err().contains("--verify-every 0"));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_loopback("127.0.0.1:9400").is_ok());
        assert!(parse_loopback("[::1]:9400").is_ok());
        assert!(
            parse_loopback("0.0.0.0:9400")
                .unwrap_err()
                .contains("not a loopback")
        );
        assert!(
            parse_loopback("nonsense")
                .unwrap_err()
                .contains("not an address")
        );
    }
}
