//! The command line (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Log to stderr (-v info, -vv debug, -vvv trace).
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
    Seal(SealArgs),
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
    #[arg(long, conflicts_with = "leaf")]
    pub(crate) flat: bool,
    /// Tree leaf size with units (a power of two from 4KiB to 16MiB; default 64KiB).
    #[arg(long, value_parser = parse_bytes)]
    pub(crate) leaf: Option<u64>,
    /// Check every line of a manifest (`DIGEST  FILE`, as this command or `sha256sum` writes
    /// it; `-` for standard input): prints `FILE: OK` or `FILE: FAILED`, exit 1 on any failure.
    #[arg(long, short = 'c', value_name = "MANIFEST", conflicts_with_all = ["files", "flat", "leaf"])]
    pub(crate) check: Option<PathBuf>,
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
    /// Expected digest of each file, in order: the 64 hex characters `vramctl digest` prints, or
    /// `sha256:HEX` for a flat SHA-256 (`sha256sum`, a Hugging Face LFS oid). A file whose
    /// digest differs is refused before anything is sealed.
    #[arg(long)]
    pub(crate) expect: Vec<String>,
    /// Seconds between re-verifications of every shard.
    #[arg(long, default_value_t = 60)]
    pub(crate) verify_every: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (a loopback address, e.g. 127.0.0.1:9400).
    #[arg(long)]
    pub(crate) metrics: Option<String>,
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
    /// File holding the worker token (at least 16 bytes; one trailing newline is ignored).
    /// Without it, $VRAM_WORKER_TOKEN; without either, a random key for this run.
    #[arg(long, env = "VRAMCTL_TOKEN_FILE", value_name = "PATH")]
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
    /// Accept records after the last checkpoint (a log still being written); they are
    /// reported, not vouched for.
    #[arg(long)]
    pub(crate) allow_unsigned_tail: bool,
    #[command(flatten)]
    pub(crate) token: TokenArgs,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Shard sizes to measure, comma-separated, with units (sizes larger than the free VRAM are
    /// skipped with a note).
    #[arg(long, default_value = "1MiB,256MiB,4GiB,16GiB")]
    pub(crate) size: String,
    /// Seal with the cross-check (the host bytes are also digested on the CPU).
    #[arg(long)]
    pub(crate) cross_check: bool,
    /// GPU index.
    #[arg(long, default_value_t = 0)]
    pub(crate) device: u32,
}
