//! [`FileAuditSink`]: appends hash-chained JSON lines with signed checkpoints
//! (`.specs/audit.md`), as the only writer of its file.
//!
//! - One writer: the file is locked (advisory `flock`) for the sink's life.
//! - Regular files only: a FIFO, device or directory is refused before it is read.
//! - Whole records: each line goes out in one `write`; a write that fails or stops short is cut
//!   back off the file, so a full disk leaves no torn record and the chain continues once
//!   space is free. A torn last line found when opening is refused, or removed when the
//!   options ask for repair (the repair is itself recorded and signed).
//! - Signed: a checkpoint follows every critical record, every `checkpoint_every` records, the
//!   first record after `checkpoint_interval`, the opening, and a clean close (drop). Critical
//!   records and checkpoints are synced to disk before `record` returns.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vram_seal::{AuditPublicKey, AuditSigningKey, Checkpoint};

use super::format::{
    ChainedLine, GENESIS, MAX_RECORD_BYTES, OPENED, OpenedLine, Scan, checkpoint_line, line_hash,
    opened_line,
};
use super::open::{OpenError, open_regular};
use super::verify::{AuditLogError, AuditLogProblem, AuditVerifyOptions, Reader, at};
use super::{AuditError, AuditRecord, AuditSink, Severity};
use crate::sync::lock;

/// What the writer needs of the file it appends to: a line goes out in one `write`, a failed
/// or short write is cut back off, checkpoints are synced. A [`File`] is one; tests put a
/// failing disk in its place ([`FileAuditSink::open_through`]).
pub trait LogFile: Send + fmt::Debug {
    /// Writes `bytes` in one call; returns how many were written.
    ///
    /// # Errors
    /// The I/O error.
    fn write_once(&mut self, bytes: &[u8]) -> std::io::Result<usize>;

    /// Cuts the file back to `len` bytes.
    ///
    /// # Errors
    /// The I/O error.
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;

    /// Syncs the file's data to disk.
    ///
    /// # Errors
    /// The I/O error.
    fn sync(&mut self) -> std::io::Result<()>;
}

impl LogFile for File {
    fn write_once(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write(bytes)
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }
}

/// When a [`FileAuditSink`] signs, and what it does with a torn log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditLogOptions {
    /// A checkpoint after at most this many records (default 1024; at least 1).
    pub checkpoint_every: u64,
    /// A checkpoint with the first record after this much time without one (default 60 s).
    pub checkpoint_interval: Duration,
    /// Remove a torn last line when opening instead of refusing the log (default `false`).
    pub repair_torn_tail: bool,
}

impl Default for AuditLogOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 1024,
            checkpoint_interval: Duration::from_secs(60),
            repair_torn_tail: false,
        }
    }
}

#[derive(Debug)]
struct Writer<F> {
    file: F,
    key: AuditSigningKey,
    /// Lines in the file (the next line's `seq`).
    seq: u64,
    prev: [u8; 32],
    /// File length after the last whole line.
    len: u64,
    since_checkpoint: u64,
    last_checkpoint_at: Instant,
    last_checkpoint: Option<Checkpoint>,
    poisoned: bool,
}

/// Appends hash-chained, checkpoint-signed JSON lines to a file it holds locked.
#[derive(Debug)]
pub struct FileAuditSink<F: LogFile = File> {
    path: PathBuf,
    public_key: AuditPublicKey,
    options: AuditLogOptions,
    writer: Mutex<Writer<F>>,
    /// Records found after the last checkpoint when the log was opened, adopted unsigned.
    adopted_unsigned: u64,
    /// The locked file: the lock lasts as long as the sink.
    _lock: File,
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl FileAuditSink {
    /// Opens (or creates) a log signed with `key`, with the default [`AuditLogOptions`].
    ///
    /// # Errors
    /// As [`Self::open_with`].
    pub fn open(path: impl AsRef<Path>, key: AuditSigningKey) -> Result<Self, AuditError> {
        Self::open_with(path, key, AuditLogOptions::default())
    }

    /// Opens (or creates) a log signed with `key` and locks it. An existing log is verified
    /// against `key`'s public key first; then an opening record (naming the key, the records
    /// found unsigned and the bytes repaired) and a checkpoint are appended.
    ///
    /// # Errors
    /// [`AuditError::NotRegularFile`]; [`AuditError::Locked`] when another writer holds it;
    /// [`AuditError::TornTail`] when its last line is incomplete and repair was not asked for;
    /// [`AuditError::BrokenChain`] when it does not verify under this key (including a log
    /// another key signed); [`AuditError::Io`] for read or write failures.
    pub fn open_with(
        path: impl AsRef<Path>,
        key: AuditSigningKey,
        options: AuditLogOptions,
    ) -> Result<Self, AuditError> {
        Self::open_through(path, key, options, |file| file.try_clone())
    }
}

impl<F: LogFile> FileAuditSink<F> {
    /// As [`FileAuditSink::open_with`], writing through what `wrap` makes of the opened file
    /// (a test's failing disk; production uses [`FileAuditSink::open_with`]).
    ///
    /// # Errors
    /// As [`FileAuditSink::open_with`]; [`AuditError::Io`] when `wrap` fails.
    pub fn open_through(
        path: impl AsRef<Path>,
        key: AuditSigningKey,
        options: AuditLogOptions,
        wrap: impl FnOnce(&File) -> std::io::Result<F>,
    ) -> Result<Self, AuditError> {
        let path = path.as_ref().to_path_buf();
        let file = open_regular(&path, true).map_err(|e| match e {
            OpenError::NotRegular(reason) => AuditError::NotRegularFile {
                path: path.clone(),
                reason,
            },
            OpenError::Io(e) => io_error(&path, e),
        })?;
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => AuditError::Locked { path: path.clone() },
            std::fs::TryLockError::Error(e) => io_error(&path, e),
        })?;
        let public_key = key.public_key();
        let verify = AuditVerifyOptions {
            public_key: Some(public_key),
            kept_checkpoint: None,
            allow_unsigned_tail: true,
        };
        let (found, torn) = read_for_writing(BufReader::new(&file), &verify).map_err(|source| {
            match source.problem {
                AuditLogProblem::KeyMismatch { pinned, named } => AuditError::ForeignKey {
                    path: path.clone(),
                    log_key: named,
                    writer_key: pinned,
                },
                _ => AuditError::BrokenChain {
                    path: path.clone(),
                    source,
                },
            }
        })?;
        let not_torn = if found.is_none() {
            Some("the file holds no complete record: it is not an audit log")
        } else if torn >= u64::try_from(MAX_RECORD_BYTES).unwrap_or(u64::MAX) {
            Some("longer than any record")
        } else {
            None
        };
        if let Some(reason) = not_torn.filter(|_| torn > 0) {
            return Err(AuditError::NotRepairable {
                path,
                bytes: torn,
                reason,
            });
        }
        if torn > 0 && !options.repair_torn_tail {
            return Err(AuditError::TornTail { path, bytes: torn });
        }
        let (seq, prev, len, unsigned) = match found {
            Some(c) => (c.records, c.head, c.complete_bytes, c.unsigned_records),
            None => (0, GENESIS, 0, 0),
        };
        let mut out = wrap(&file).map_err(|e| io_error(&path, e))?;
        if torn > 0 {
            out.truncate(len).map_err(|e| io_error(&path, e))?;
            tracing::warn!(path = %path.display(), bytes = torn, "removed a torn record from the end of the audit log");
        }
        if unsigned > 0 {
            // No checkpoint signs them: a writer that died before its next checkpoint, or
            // lines appended by someone else. The opening record names how many.
            tracing::warn!(path = %path.display(), records = unsigned, "adopted records no checkpoint signs at the end of the audit log");
        }
        // Opened for appending: every write goes to the end, after the repair too.
        let sink = Self {
            path,
            public_key,
            options: AuditLogOptions {
                checkpoint_every: options.checkpoint_every.max(1),
                ..options
            },
            writer: Mutex::new(Writer {
                file: out,
                key,
                seq,
                prev,
                len,
                since_checkpoint: 0,
                last_checkpoint_at: Instant::now(),
                last_checkpoint: None,
                poisoned: false,
            }),
            adopted_unsigned: unsigned,
            _lock: file,
        };
        {
            let mut w = lock(&sink.writer);
            let opened = opened_line(&OpenedLine {
                seq,
                prev: &hex::encode(prev),
                event: OPENED,
                public_key: public_key.to_string(),
                unsigned_records: unsigned,
                repaired_bytes: torn,
            })
            .map_err(|e| AuditError::Encode(e.to_string()))?;
            sink.append(&mut w, &opened)?;
            sink.sign(&mut w)?;
        }
        Ok(sink)
    }

    /// The log's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many records the log held after its last checkpoint when it was opened: no
    /// checkpoint signs them (a writer that died before its next checkpoint, or lines someone
    /// else appended), yet they were adopted (the opening record names the count, and
    /// `verify_audit_log` refuses them unless told to allow an unsigned tail). Callers warn
    /// the operator when it is not 0.
    #[must_use]
    pub fn adopted_unsigned_records(&self) -> u64 {
        self.adopted_unsigned
    }

    /// The public key that verifies this log's checkpoints.
    #[must_use]
    pub fn public_key(&self) -> AuditPublicKey {
        self.public_key
    }

    /// The latest checkpoint written: keep it off the host, and a tail cut from the log after
    /// it is detected ([`super::verify_audit_log`] with `kept_checkpoint`).
    #[must_use]
    pub fn last_checkpoint(&self) -> Option<Checkpoint> {
        lock(&self.writer).last_checkpoint.clone()
    }

    /// Signs the log as it stands now (nothing is written if its last line is already a
    /// checkpoint) and syncs it to disk.
    ///
    /// # Errors
    /// [`AuditError::Io`] or [`AuditError::Poisoned`] when the checkpoint cannot be written.
    pub fn checkpoint(&self) -> Result<Checkpoint, AuditError> {
        let mut w = lock(&self.writer);
        match (&w.last_checkpoint, w.since_checkpoint) {
            (Some(c), 0) => Ok(c.clone()),
            _ => self.sign(&mut w),
        }
    }

    /// Appends one line in one write; a failed or short write is cut back off the file.
    fn append(&self, w: &mut Writer<F>, line: &str) -> Result<(), AuditError> {
        if w.poisoned {
            return Err(AuditError::Poisoned {
                path: self.path.clone(),
            });
        }
        let mut bytes = Vec::with_capacity(line.len().saturating_add(1));
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(AuditError::Encode(format!(
                "record of {} bytes exceeds {MAX_RECORD_BYTES}",
                bytes.len()
            )));
        }
        let written = w.file.write_once(&bytes);
        match written {
            Ok(n) if n == bytes.len() => {
                w.len = w.len.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                w.seq = w.seq.saturating_add(1);
                w.prev = line_hash(line.as_bytes());
                Ok(())
            }
            outcome => {
                let reason = match outcome {
                    Ok(n) => format!("short write: {n} of {} bytes (disk full?)", bytes.len()),
                    Err(e) => e.to_string(),
                };
                if w.file.truncate(w.len).is_err() {
                    w.poisoned = true;
                }
                Err(io_error(&self.path, reason))
            }
        }
    }

    /// Writes a checkpoint over everything so far and syncs the file.
    fn sign(&self, w: &mut Writer<F>) -> Result<Checkpoint, AuditError> {
        let checkpoint = w.key.sign_checkpoint(w.seq, w.prev);
        self.append(w, &checkpoint_line(&checkpoint))?;
        w.file.sync().map_err(|e| io_error(&self.path, e))?;
        w.since_checkpoint = 0;
        w.last_checkpoint_at = Instant::now();
        w.last_checkpoint = Some(checkpoint.clone());
        Ok(checkpoint)
    }
}

/// Reads an existing log for a writer that will continue it: every complete line verified
/// (an unsigned tail allowed), and the length of a torn last line, counted in fixed-size reads
/// and never held, however long.
fn read_for_writing(
    mut reader: impl BufRead,
    options: &AuditVerifyOptions,
) -> Result<(Option<super::verify::Continuation>, u64), AuditLogError> {
    let mut state = Reader::new(options);
    let mut buf = Vec::new();
    let mut torn = match state.read_lines(&mut reader, &mut buf)? {
        Scan::Line | Scan::End => return Ok((state.finish_for_writer(), 0)),
        Scan::Torn(n) => u64::try_from(n).unwrap_or(u64::MAX),
        Scan::TooLong => u64::try_from(buf.len()).unwrap_or(u64::MAX),
    };
    let number = state.next_line();
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
    Ok((state.finish_for_writer(), torn))
}

impl<F: LogFile> AuditSink for FileAuditSink<F> {
    fn record(&self, record: &AuditRecord) -> Result<(), AuditError> {
        let mut w = lock(&self.writer);
        let line = serde_json::to_string(&ChainedLine {
            seq: w.seq,
            prev: &hex::encode(w.prev),
            record,
        })
        .map_err(|e| AuditError::Encode(e.to_string()))?;
        self.append(&mut w, &line)?;
        w.since_checkpoint = w.since_checkpoint.saturating_add(1);
        let due = record.severity >= Severity::Critical
            || w.since_checkpoint >= self.options.checkpoint_every
            || w.last_checkpoint_at.elapsed() >= self.options.checkpoint_interval;
        if due {
            self.sign(&mut w)?;
        }
        Ok(())
    }
}

impl<F: LogFile> Drop for FileAuditSink<F> {
    /// A clean close signs what is not signed yet.
    fn drop(&mut self) {
        let mut w = lock(&self.writer);
        if w.since_checkpoint > 0
            && !w.poisoned
            && let Err(e) = self.sign(&mut w)
        {
            tracing::error!(path = %self.path.display(), error = %e, "could not sign the audit log on close");
        }
    }
}
