//! The audit log's verifier (`.specs/audit.md`): every line's sequence number and link, every
//! checkpoint's signature, the key against a pinned one, the log against a kept checkpoint.
//! Anyone holding the public key can check the whole file; nobody without the private key can
//! rebuild a chain that passes, because the checkpoints would no longer verify.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use vram_seal::audit_key::decode_lower_hex;
use vram_seal::{AuditPublicKey, Checkpoint};

use super::format::{
    CHECKPOINT, GENESIS, LineFields, MAX_RECORD_BYTES, OPENED, Scan, checkpoint_line, line_hash,
    scan_line,
};
use super::open::open_regular;

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
}

/// Where a writer continues a log that verified: the next line's `seq` and `prev`, the length
/// of the complete lines, and how many of them no checkpoint covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Continuation {
    pub(crate) records: u64,
    pub(crate) head: [u8; 32],
    pub(crate) complete_bytes: u64,
    pub(crate) unsigned_records: u64,
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

pub(crate) fn at(line: u64, problem: AuditLogProblem) -> AuditLogError {
    AuditLogError {
        line: Some(line),
        problem,
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
    pub(crate) fn new(options: &AuditVerifyOptions) -> Self {
        Self {
            options: options.clone(),
            key: None,
            prev: GENESIS,
            records: 0,
            checkpoints: 0,
            signed_records: 0,
            last_checkpoint: None,
            kept_head: None,
            complete_bytes: 0,
        }
    }

    /// The 1-based number of the next line.
    pub(crate) fn next_line(&self) -> u64 {
        self.records.saturating_add(1)
    }

    /// Reads and checks every complete line of `reader` (each into `buf`); returns how the
    /// input ended ([`Scan::End`], a torn line or a line too long, left in `buf`).
    pub(crate) fn read_lines(
        &mut self,
        reader: &mut impl BufRead,
        buf: &mut Vec<u8>,
    ) -> Result<Scan, AuditLogError> {
        loop {
            let number = self.next_line();
            let scanned = scan_line(reader, buf)
                .map_err(|e| at(number, AuditLogProblem::Io(e.to_string())))?;
            match scanned {
                Scan::Line => self.line(buf)?,
                ended => return Ok(ended),
            }
        }
    }

    /// Checks the next line (without its newline).
    pub(crate) fn line(&mut self, line: &[u8]) -> Result<(), AuditLogError> {
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
    pub(crate) fn finish_for_writer(self) -> Option<Continuation> {
        if self.records == 0 {
            return None;
        }
        let (head, complete_bytes) = (self.prev, self.complete_bytes);
        self.finish().ok().map(|s| Continuation {
            records: s.records,
            head,
            complete_bytes,
            unsigned_records: s.unsigned_records(),
        })
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
    let mut state = Reader::new(options);
    let ended = state.read_lines(&mut BufReader::new(reader), &mut Vec::new())?;
    let number = state.next_line();
    match ended {
        Scan::Line | Scan::End => state.finish(),
        Scan::Torn(_) => Err(at(number, AuditLogProblem::Torn)),
        Scan::TooLong => Err(at(number, AuditLogProblem::TooLong)),
    }
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
