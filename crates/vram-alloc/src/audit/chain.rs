//! The audit log's on-disk format and its verifier (`.specs/audit.md`).
//!
//! One JSON object per line, `\n`-terminated. Every line starts with `"seq":N` (0-based) and
//! `"prev"`: the SHA-256 of the previous line's bytes (64 zeros for the first). The first line
//! is an `AuditLogOpened` record naming the log's Ed25519 public key; `AuditCheckpoint` lines
//! sign `(count = seq, head = prev)`, so each one authenticates every line before it. Anyone
//! holding the public key can check the whole file; nobody without the private key can rebuild
//! a chain that passes, because the checkpoints would no longer verify.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use vram_seal::audit_key::decode_lower_hex;
use vram_seal::{AuditPublicKey, Checkpoint};
use vram_types::DigestAlgorithm;

/// `prev` of the first line.
pub(crate) const GENESIS: [u8; 32] = [0; 32];
/// Longest line a reader accepts, newline included; longer input is refused without being
/// buffered (a device such as `/dev/zero` named as a log cannot exhaust memory).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Name of the first record of every log.
pub(crate) const OPENED: &str = "AuditLogOpened";
/// Name of a checkpoint record.
pub(crate) const CHECKPOINT: &str = "AuditCheckpoint";

/// SHA-256 of a line's bytes (without its newline).
pub(crate) fn line_hash(line: &[u8]) -> [u8; 32] {
    *vram_seal::digest(line, DigestAlgorithm::Sha256).as_bytes()
}

/// The record the sink writes when it opens a log (first line, and each reopening).
#[derive(Debug, Serialize)]
pub(crate) struct OpenedLine<'a> {
    pub(crate) seq: u64,
    pub(crate) prev: &'a str,
    pub(crate) event: &'static str,
    pub(crate) public_key: String,
    /// Records found after the last checkpoint when the log was reopened: they were linked
    /// but never signed (the writer stopped without a clean shutdown).
    pub(crate) unsigned_records: u64,
    /// Bytes of a torn last record removed when the log was reopened.
    pub(crate) repaired_bytes: u64,
}

/// A checkpoint line, canonical: nothing on it is unsigned.
pub(crate) fn checkpoint_line(checkpoint: &Checkpoint) -> String {
    format!(
        r#"{{"seq":{},"prev":"{}","event":"{CHECKPOINT}","signature":"{}"}}"#,
        checkpoint.count,
        hex::encode(checkpoint.head),
        checkpoint.signature_hex()
    )
}

/// What a verification should hold the log against.
#[derive(Debug, Clone, Default)]
pub struct AuditVerifyOptions {
    /// The key the log must be signed with. Without one, the key named by the log's first
    /// record is used, which proves only that the log is consistent with itself.
    pub public_key: Option<AuditPublicKey>,
    /// A checkpoint kept off the host: the log must still contain the chain it signed (a tail
    /// cut after the log's own last checkpoint is detected only this way).
    pub kept_checkpoint: Option<Checkpoint>,
    /// Accept records after the log's last checkpoint (a log still being written). Default
    /// `false`: they are linked but unsigned, so anyone could have appended them.
    pub allow_unsigned_tail: bool,
}

/// What a log that holds contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLogSummary {
    /// Lines in the log (records, openings and checkpoints).
    pub records: u64,
    /// Checkpoint lines whose signatures verified.
    pub checkpoints: u64,
    /// Lines authenticated by a checkpoint (the checkpoint itself included). Lines after it
    /// are linked but unsigned: written since the last checkpoint, or added by someone else.
    pub signed_records: u64,
    /// The key the log was checked against.
    pub public_key: AuditPublicKey,
    /// Whether that key was given by the caller (`true`) or taken from the log (`false`).
    pub key_pinned: bool,
    /// The last checkpoint in the log.
    pub last_checkpoint: Option<Checkpoint>,
    /// SHA-256 of the last line (the next line's `prev`).
    pub(crate) head: [u8; 32],
    /// Byte length of the complete lines read.
    pub(crate) complete_bytes: u64,
}

impl AuditLogSummary {
    /// Lines after the last checkpoint, which no signature covers.
    #[must_use]
    pub fn unsigned_records(&self) -> u64 {
        self.records.saturating_sub(self.signed_records)
    }
}

/// Where and why an audit log fails verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{problem}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct AuditLogError {
    /// The 1-based line where the log first fails, when the failure is at a line.
    pub line: Option<u64>,
    /// What is wrong there.
    pub problem: AuditLogProblem,
}

/// What is wrong with an audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditLogProblem {
    /// The file could not be read.
    #[error("cannot read audit log: {0}")]
    Io(String),
    /// The log is empty: it has no opening record naming its key.
    #[error("empty log: no record names the signing key")]
    Empty,
    /// The last line has no newline: a write that stopped half way (or a cut file).
    #[error("record is not terminated (a torn write, or the file was cut)")]
    Torn,
    /// A line is longer than [`MAX_RECORD_BYTES`].
    #[error("record longer than {MAX_RECORD_BYTES} bytes")]
    TooLong,
    /// A line holds a carriage return (CRLF line endings change every line's hash).
    #[error("carriage return in a record (CRLF line endings?)")]
    CarriageReturn,
    /// A line is not a JSON object with `seq` and `prev`, or holds a key twice.
    #[error("not an audit record: {0}")]
    Malformed(String),
    /// A line's `seq` is not its position.
    #[error("sequence number {found}, expected {expected} (a record was removed, added or moved)")]
    WrongSequence {
        /// The position.
        expected: u64,
        /// What the line says.
        found: u64,
    },
    /// A line's `prev` is not the hash of the line before it.
    #[error("chain broken: the previous record was edited, removed or moved")]
    BrokenLink,
    /// The first line is not the opening record.
    #[error("the first record must be {OPENED}, naming the log's key")]
    NotOpened,
    /// The log names another key than the pinned one.
    #[error("the log names audit key {named}, but the pinned key is {pinned}")]
    KeyMismatch {
        /// The key given by the caller.
        pinned: AuditPublicKey,
        /// The key the log names.
        named: AuditPublicKey,
    },
    /// A checkpoint line carries anything beyond its signed fields, or another spelling.
    #[error("checkpoint is not in its canonical form")]
    NonCanonicalCheckpoint,
    /// A checkpoint's signature does not verify: the chain before it was rebuilt or the
    /// checkpoint forged.
    #[error(
        "checkpoint signature does not verify under key {0}: the records before it were rewritten"
    )]
    BadSignature(AuditPublicKey),
    /// The kept checkpoint does not verify under the key.
    #[error("the kept checkpoint does not verify under key {0}")]
    KeptCheckpointInvalid(AuditPublicKey),
    /// The log is shorter than the kept checkpoint says it was.
    #[error(
        "the log holds {records} records, the kept checkpoint signed {signed}: records were cut from the end"
    )]
    CutShort {
        /// Records in the log.
        records: u64,
        /// Records the kept checkpoint covers.
        signed: u64,
    },
    /// Records follow the last checkpoint, and no signature covers them.
    #[error(
        "{records} record(s) from line {first} on follow the last checkpoint and are not signed \
         (a writer still running or stopped without closing, or records appended by someone else)"
    )]
    UnsignedTail {
        /// First unsigned line (1-based).
        first: u64,
        /// Unsigned lines.
        records: u64,
    },
    /// The record the kept checkpoint ends at has changed.
    #[error("the records differ from the kept checkpoint at record {count}")]
    DiffersFromKeptCheckpoint {
        /// The checkpoint's record count.
        count: u64,
    },
}

fn at(line: u64, problem: AuditLogProblem) -> AuditLogError {
    AuditLogError {
        line: Some(line),
        problem,
    }
}

/// The fields a reader needs from a line; every key of the object is checked for duplicates.
#[derive(Debug, Default)]
struct LineFields {
    seq: Option<u64>,
    prev: Option<String>,
    event: Option<String>,
    public_key: Option<String>,
    signature: Option<String>,
}

impl<'de> Deserialize<'de> for LineFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = LineFields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LineFields, A::Error> {
                let mut seen = BTreeSet::new();
                let mut out = LineFields::default();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format!("key `{key}` appears twice")));
                    }
                    match key.as_str() {
                        "seq" => out.seq = Some(map.next_value()?),
                        "prev" => out.prev = Some(map.next_value()?),
                        "event" => out.event = Some(map.next_value()?),
                        "public_key" => out.public_key = Some(map.next_value()?),
                        "signature" => out.signature = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// Reads one `\n`-terminated line of at most [`MAX_RECORD_BYTES`]; `Ok(false)` at the end.
fn read_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    number: u64,
) -> Result<bool, AuditLogError> {
    buf.clear();
    let cap = u64::try_from(MAX_RECORD_BYTES).unwrap_or(u64::MAX);
    reader
        .by_ref()
        .take(cap)
        .read_until(b'\n', buf)
        .map_err(|e| at(number, AuditLogProblem::Io(e.to_string())))?;
    match buf.last() {
        None => Ok(false),
        Some(b'\n') => {
            buf.pop();
            Ok(true)
        }
        Some(_) if buf.len() >= MAX_RECORD_BYTES => Err(at(number, AuditLogProblem::TooLong)),
        Some(_) => Err(at(number, AuditLogProblem::Torn)),
    }
}

/// The verifier's running state.
pub(crate) struct Reader {
    options: AuditVerifyOptions,
    key: Option<AuditPublicKey>,
    prev: [u8; 32],
    records: u64,
    checkpoints: u64,
    signed_records: u64,
    last_checkpoint: Option<Checkpoint>,
    /// `line_hash` of line `kept_checkpoint.count` (1-based), once read.
    kept_head: Option<[u8; 32]>,
    complete_bytes: u64,
}

impl Reader {
    fn line(&mut self, line: &[u8]) -> Result<(), AuditLogError> {
        let number = self.records.saturating_add(1);
        let fail = |p| at(number, p);
        if line.contains(&b'\r') {
            return Err(fail(AuditLogProblem::CarriageReturn));
        }
        let fields: LineFields = serde_json::from_slice(line)
            .map_err(|e| fail(AuditLogProblem::Malformed(e.to_string())))?;
        let (Some(seq), Some(prev)) = (fields.seq, fields.prev.as_deref()) else {
            return Err(fail(AuditLogProblem::Malformed(
                "no `seq` or `prev`".to_owned(),
            )));
        };
        if seq != self.records {
            return Err(fail(AuditLogProblem::WrongSequence {
                expected: self.records,
                found: seq,
            }));
        }
        if decode_lower_hex::<32>(prev) != Some(self.prev) {
            return Err(fail(AuditLogProblem::BrokenLink));
        }
        match fields.event.as_deref() {
            Some(OPENED) => self.opened(fields.public_key.as_deref(), number)?,
            _ if self.records == 0 => return Err(fail(AuditLogProblem::NotOpened)),
            Some(CHECKPOINT) => self.checkpoint(line, fields.signature.as_deref(), number)?,
            _ => {}
        }
        self.prev = line_hash(line);
        self.records = number;
        let len = u64::try_from(line.len()).unwrap_or(u64::MAX);
        self.complete_bytes = self.complete_bytes.saturating_add(len).saturating_add(1);
        if self
            .options
            .kept_checkpoint
            .as_ref()
            .is_some_and(|k| k.count == number)
        {
            self.kept_head = Some(self.prev);
        }
        Ok(())
    }

    fn opened(&mut self, named: Option<&str>, number: u64) -> Result<(), AuditLogError> {
        let named: AuditPublicKey = named
            .ok_or_else(|| {
                at(
                    number,
                    AuditLogProblem::Malformed("no `public_key`".to_owned()),
                )
            })?
            .parse()
            .map_err(|e: vram_seal::AuditKeyError| {
                at(number, AuditLogProblem::Malformed(e.to_string()))
            })?;
        let expected = self.key.or(self.options.public_key);
        match expected {
            Some(pinned) if pinned != named => {
                Err(at(number, AuditLogProblem::KeyMismatch { pinned, named }))
            }
            _ => {
                self.key = Some(named);
                Ok(())
            }
        }
    }

    fn checkpoint(
        &mut self,
        line: &[u8],
        signature: Option<&str>,
        number: u64,
    ) -> Result<(), AuditLogError> {
        let key = self
            .key
            .ok_or_else(|| at(number, AuditLogProblem::NotOpened))?;
        let checkpoint = Checkpoint {
            count: self.records,
            head: self.prev,
            signature: signature
                .and_then(decode_lower_hex::<64>)
                .ok_or_else(|| at(number, AuditLogProblem::NonCanonicalCheckpoint))?,
        };
        if checkpoint_line(&checkpoint).as_bytes() != line {
            return Err(at(number, AuditLogProblem::NonCanonicalCheckpoint));
        }
        key.verify_checkpoint(&checkpoint)
            .map_err(|_| at(number, AuditLogProblem::BadSignature(key)))?;
        self.checkpoints = self.checkpoints.saturating_add(1);
        self.signed_records = number;
        self.last_checkpoint = Some(checkpoint);
        Ok(())
    }

    /// What a writer continuing the log needs: `None` for an empty log.
    pub(crate) fn finish_for_writer(self) -> Option<AuditLogSummary> {
        if self.records == 0 {
            return None;
        }
        self.finish().ok()
    }

    pub(crate) fn finish(self) -> Result<AuditLogSummary, AuditLogError> {
        let whole = |problem| AuditLogError {
            line: None,
            problem,
        };
        let key = self.key.ok_or_else(|| whole(AuditLogProblem::Empty))?;
        if let Some(kept) = &self.options.kept_checkpoint {
            key.verify_checkpoint(kept)
                .map_err(|_| whole(AuditLogProblem::KeptCheckpointInvalid(key)))?;
            if kept.count > self.records {
                return Err(whole(AuditLogProblem::CutShort {
                    records: self.records,
                    signed: kept.count,
                }));
            }
            // A checkpoint of count N signs the hash of line N (1-based) as its head.
            let matches = if kept.count == 0 {
                kept.head == GENESIS
            } else {
                self.kept_head == Some(kept.head)
            };
            if !matches {
                return Err(at(
                    kept.count,
                    AuditLogProblem::DiffersFromKeptCheckpoint { count: kept.count },
                ));
            }
        }
        if !self.options.allow_unsigned_tail && self.signed_records < self.records {
            return Err(whole(AuditLogProblem::UnsignedTail {
                first: self.signed_records.saturating_add(1),
                records: self.records.saturating_sub(self.signed_records),
            }));
        }
        Ok(AuditLogSummary {
            records: self.records,
            checkpoints: self.checkpoints,
            signed_records: self.signed_records,
            public_key: key,
            key_pinned: self.options.public_key.is_some(),
            last_checkpoint: self.last_checkpoint,
            head: self.prev,
            complete_bytes: self.complete_bytes,
        })
    }
}

/// Checks an audit log read from `reader`: every line's sequence number and link, every
/// checkpoint's signature, the key against the pinned one, and the log against a kept
/// checkpoint. Reads line by line with a length cap; memory stays bounded.
///
/// # Errors
/// [`AuditLogError`] naming the first line that fails and why.
pub fn verify_audit_log_from(
    reader: impl Read,
    options: &AuditVerifyOptions,
) -> Result<AuditLogSummary, AuditLogError> {
    let (state, _) = read_log(BufReader::new(reader), options, false)?;
    state.finish()
}

/// [`verify_audit_log_from`] on a file.
///
/// # Errors
/// [`AuditLogProblem::Io`] when the file cannot be opened or is not a regular file; otherwise
/// as [`verify_audit_log_from`].
pub fn verify_audit_log(
    path: impl AsRef<Path>,
    options: &AuditVerifyOptions,
) -> Result<AuditLogSummary, AuditLogError> {
    let file = open_regular(path.as_ref(), false).map_err(|e| AuditLogError {
        line: None,
        problem: AuditLogProblem::Io(e.to_string()),
    })?;
    verify_audit_log_from(file, options)
}

/// Reads a log; with `tolerate_torn_tail` an unterminated last line ends the read instead of
/// failing it and its length is returned.
pub(crate) fn read_log(
    mut reader: impl BufRead,
    options: &AuditVerifyOptions,
    tolerate_torn_tail: bool,
) -> Result<(Reader, u64), AuditLogError> {
    let mut state = Reader {
        options: options.clone(),
        key: None,
        prev: GENESIS,
        records: 0,
        checkpoints: 0,
        signed_records: 0,
        last_checkpoint: None,
        kept_head: None,
        complete_bytes: 0,
    };
    let mut buf = Vec::new();
    let mut torn = 0u64;
    loop {
        let number = state.records.saturating_add(1);
        match read_line(&mut reader, &mut buf, number) {
            Ok(true) => state.line(&buf)?,
            Ok(false) => break,
            Err(AuditLogError {
                problem: AuditLogProblem::Torn | AuditLogProblem::TooLong,
                ..
            }) if tolerate_torn_tail => {
                // What follows the last newline, however long, is the torn tail: counted in
                // fixed-size reads, never held.
                torn = u64::try_from(buf.len()).unwrap_or(u64::MAX);
                let mut chunk = [0u8; 64 * 1024];
                loop {
                    let n = reader
                        .read(&mut chunk)
                        .map_err(|e| at(number, AuditLogProblem::Io(e.to_string())))?;
                    let Some(read) = chunk.get(..n).filter(|r| !r.is_empty()) else {
                        break;
                    };
                    if read.contains(&b'\n') {
                        return Err(at(number, AuditLogProblem::TooLong));
                    }
                    torn = torn.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                }
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok((state, torn))
}

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
/// directory or socket is refused before any read that could block or never end.
pub(crate) fn open_regular(path: &Path, write: bool) -> Result<File, OpenError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => return Err(not_regular(&meta)),
        Ok(_) => {}
        Err(e) if write && e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(OpenError::Io(e)),
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if write {
        options.append(true).create(true);
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
