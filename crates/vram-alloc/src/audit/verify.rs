//! The audit log's verifier (`.specs/audit.md`): every line's sequence number and link, every
//! checkpoint's signature, the key against a pinned one, the log against a kept checkpoint.
//! Anyone holding the public key can check the whole file; nobody without the private key can
//! rebuild a chain that passes, because the checkpoints would no longer verify.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use vram_seal::audit_key::decode_lower_hex;
use vram_seal::{AuditPublicKey, Checkpoint};

use super::format::{
    CHECKPOINT, GENESIS, LineFields, MAX_RECORD_BYTES, OPENED, OpenedLine, RECORD_KEYS, Scan,
    checkpoint_line, line_hash, opened_line, scan_line,
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
    /// Accept unsigned records: those after the log's last checkpoint (a log still being
    /// written) and those a writer found unsigned when it reopened the log (later checkpoints
    /// cover them only as records it did not write). Default `false`: they are linked but
    /// unsigned, so anyone could have appended them. Either way they are reported as unsigned.
    pub allow_unsigned_tail: bool,
}

/// What a log that holds contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLogSummary {
    /// Lines in the log (records, openings and checkpoints).
    pub records: u64,
    /// Checkpoint lines whose signatures verified.
    pub checkpoints: u64,
    /// Lines the key holder signed: covered by a checkpoint (the checkpoint itself included),
    /// less those a writer found unsigned when it reopened the log. The rest are linked but
    /// unsigned: written since the last checkpoint, left by a writer that stopped without
    /// closing, or added by someone else.
    pub signed_records: u64,
    /// Lines found unsigned when a writer reopened the log (its opening record names how
    /// many): later checkpoints cover them, but only as records the writer did not sign, so
    /// they stay unsigned for good.
    pub adopted_unsigned_records: u64,
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
    /// Lines the key holder did not sign: those after the last checkpoint, and those a writer
    /// found unsigned when it reopened the log.
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
    /// An opening line is not exactly what a writer writes.
    #[error("opening record is not in its canonical form")]
    NonCanonicalOpening,
    /// A line is not UTF-8.
    #[error("not UTF-8 (invalid byte after {valid_up_to} valid bytes)")]
    NotUtf8 {
        /// Valid bytes before the first invalid one.
        valid_up_to: usize,
    },
    /// A line's keys are not in the order the spec fixes.
    #[error("keys out of order: {found}; a record begins with {expected}")]
    KeyOrder {
        /// The keys found, in order.
        found: String,
        /// The keys a record begins with.
        expected: String,
    },
    /// An opening states another number of unsigned records than the log holds before it.
    #[error("the opening says {claimed} unsigned record(s) precede it, the log has {found}")]
    WrongUnsignedCount {
        /// What the opening says.
        claimed: u64,
        /// Unsigned lines before it.
        found: u64,
    },
    /// A writer reopened the log and found records no checkpoint covered: later checkpoints
    /// sign them only as records it did not write.
    #[error(
        "{records} record(s) from line {first} on were unsigned when the log was reopened at \
         line {reopened_at}; later checkpoints cover them only as found (a writer that stopped \
         without closing, or records appended by someone else)"
    )]
    AdoptedUnsigned {
        /// First such line (1-based).
        first: u64,
        /// Such lines, in the whole log.
        records: u64,
        /// The first reopening that found them.
        reopened_at: u64,
    },
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
    /// The last line a reopening found unsigned (so two reopenings count each line once).
    adopted_through: u64,
    /// Lines found unsigned at reopenings since the last checkpoint, and before it.
    adopted_pending: u64,
    adopted_signed: u64,
    /// The first such range: (first line, lines, the reopening's line).
    first_adopted: Option<(u64, u64, u64)>,
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
            adopted_through: 0,
            adopted_pending: 0,
            adopted_signed: 0,
            first_adopted: None,
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
        // A log is UTF-8 text; JSON parsers skip checking the strings they ignore.
        std::str::from_utf8(line).map_err(|e| {
            fail(AuditLogProblem::NotUtf8 {
                valid_up_to: e.valid_up_to(),
            })
        })?;
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
            Some(OPENED) => self.opened(&fields, seq, line, number)?,
            _ if self.records == 0 => return Err(fail(AuditLogProblem::NotOpened)),
            Some(CHECKPOINT) => self.checkpoint(line, fields.signature.as_deref(), number)?,
            _ if fields.keys.iter().map(String::as_str).ne(RECORD_KEYS) => {
                return Err(fail(AuditLogProblem::KeyOrder {
                    found: fields.keys.join(", "),
                    expected: RECORD_KEYS.join(", "),
                }));
            }
            Some(SUMMARY) => check_summary(line).map_err(|why| {
                fail(AuditLogProblem::Malformed(format!(
                    "a {SUMMARY} record must state {why}"
                )))
            })?,
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

    /// An opening: canonical, naming the log's key, and stating how many lines before it no
    /// checkpoint covered; those stay unsigned for good.
    fn opened(
        &mut self,
        fields: &LineFields,
        seq: u64,
        line: &[u8],
        number: u64,
    ) -> Result<(), AuditLogError> {
        let named = self.opening_key(fields.public_key.as_deref(), number)?;
        let canonical = match (fields.unsigned_records, fields.repaired_bytes) {
            (Some(unsigned_records), Some(repaired_bytes)) => opened_line(&OpenedLine {
                seq,
                prev: &hex::encode(self.prev),
                event: OPENED,
                public_key: named.to_string(),
                unsigned_records,
                repaired_bytes,
            })
            .ok(),
            _ => None,
        };
        if canonical.as_deref().map(str::as_bytes) != Some(line) {
            return Err(at(number, AuditLogProblem::NonCanonicalOpening));
        }
        let unsigned_before = self.records.saturating_sub(self.signed_records);
        let claimed = fields.unsigned_records.unwrap_or(0);
        if claimed != unsigned_before {
            return Err(at(
                number,
                AuditLogProblem::WrongUnsignedCount {
                    claimed,
                    found: unsigned_before,
                },
            ));
        }
        // Lines not yet counted at an earlier reopening (one without a checkpoint after it).
        let first = self
            .signed_records
            .max(self.adopted_through)
            .saturating_add(1);
        let adopted = self.records.saturating_add(1).saturating_sub(first);
        if adopted > 0 {
            self.adopted_pending = self.adopted_pending.saturating_add(adopted);
            self.adopted_through = self.records;
            self.first_adopted.get_or_insert((first, adopted, number));
        }
        Ok(())
    }

    fn opening_key(
        &mut self,
        named: Option<&str>,
        number: u64,
    ) -> Result<AuditPublicKey, AuditLogError> {
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
                Ok(named)
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
        self.adopted_signed = self.adopted_signed.saturating_add(self.adopted_pending);
        self.adopted_pending = 0;
        self.last_checkpoint = Some(checkpoint);
        Ok(())
    }

    /// What a writer continuing the log needs: `None` for an empty log.
    pub(crate) fn finish_for_writer(self) -> Option<Continuation> {
        if self.records == 0 {
            return None;
        }
        let (head, complete_bytes) = (self.prev, self.complete_bytes);
        // The next opening names the lines after the last checkpoint.
        let tail = self.records.saturating_sub(self.signed_records);
        self.finish().ok().map(|s| Continuation {
            records: s.records,
            head,
            complete_bytes,
            unsigned_records: tail,
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
        if let Some((first, _, reopened_at)) = self.first_adopted
            && !self.options.allow_unsigned_tail
            && self.adopted_signed > 0
        {
            return Err(whole(AuditLogProblem::AdoptedUnsigned {
                first,
                records: self.adopted_signed,
                reopened_at,
            }));
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
            signed_records: self.signed_records.saturating_sub(self.adopted_signed),
            adopted_unsigned_records: self.adopted_signed,
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

/// The event of a scrubber's summary of passed verifications.
const SUMMARY: &str = "VerificationSummary";

/// A summary's fields, as `.specs/audit.md` gives them: what it claims must be readable.
#[derive(serde::Deserialize)]
#[allow(
    dead_code,
    reason = "read to check the types; the values are the record's"
)]
struct SummaryFields {
    severity: String,
    gpu_device: u32,
    scrubber: String,
    shards_verified: u64,
    bytes_verified: u64,
    period_ms: u64,
    oldest_proof_age_ms: u64,
}

/// Whether a summary record states every field with its type, at severity `info`, from a known
/// scrubber; otherwise what it lacks.
fn check_summary(line: &[u8]) -> Result<(), String> {
    let fields: SummaryFields = serde_json::from_slice(line).map_err(|e| {
        format!("gpu_device, scrubber, shards_verified, bytes_verified, period_ms and oldest_proof_age_ms ({e})")
    })?;
    if fields.severity != "info" {
        return Err(format!("severity info, not {:?}", fields.severity));
    }
    if !matches!(fields.scrubber.as_str(), "background" | "step") {
        return Err(format!(
            "scrubber \"background\" or \"step\", not {:?}",
            fields.scrubber
        ));
    }
    Ok(())
}

#[cfg(test)]
mod summary_tests {
    use super::check_summary;

    const GOOD: &str = r#"{"seq":3,"prev":"00","timestamp_ms":1,"time":null,"worker_id":"w","correlation_id":"c","severity":"info","event":"VerificationSummary","gpu_device":0,"scrubber":"step","shards_verified":291,"bytes_verified":13474201600,"period_ms":60000,"oldest_proof_age_ms":1400}"#;

    #[test]
    fn a_summary_states_every_field_with_its_type() {
        assert_eq!(check_summary(GOOD.as_bytes()), Ok(()));
        for (from, to) in [
            (r#""shards_verified":291,"#, ""),
            (r#""bytes_verified":13474201600"#, r#""bytes_verified":-1"#),
            (r#""scrubber":"step""#, r#""scrubber":"other""#),
            (r#""severity":"info""#, r#""severity":"critical""#),
            (r#""period_ms":60000"#, r#""period_ms":"60000""#),
        ] {
            let bad = GOOD.replace(from, to);
            assert_ne!(bad, GOOD);
            assert!(check_summary(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
