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

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use vram_seal::{AuditPublicKey, AuditSigningKey, Checkpoint};

use super::chain::{
    self, AuditLogError, AuditLogProblem, AuditVerifyOptions, GENESIS, MAX_RECORD_BYTES, OPENED,
    OpenError, OpenedLine, checkpoint_line, line_hash,
};
use super::{AuditRecord, AuditSink, Severity};
use crate::sync::lock;

/// Why an audit sink could not open its log or store a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Reading or writing the log failed (a full disk, a permission, a vanished directory).
    #[error("audit log {path}: {reason}")]
    Io {
        /// The log's path.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The path names something other than a regular file (a FIFO, device, directory, socket).
    #[error("audit log {path}: {reason}")]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is.
        reason: String,
    },
    /// Another sink (in this or another process) holds the log.
    #[error("audit log {path} is locked by another writer; two writers would break its chain")]
    Locked {
        /// The log's path.
        path: PathBuf,
    },
    /// The log's last line is incomplete (a write stopped half way).
    #[error(
        "audit log {path}: the last record is torn ({bytes} bytes without a newline); \
         open it with repair to remove it (the repair is recorded in the log)"
    )]
    TornTail {
        /// The log's path.
        path: PathBuf,
        /// Bytes after the last newline.
        bytes: u64,
    },
    /// The log is signed with another key than this writer's: one log, one key.
    #[error(
        "audit log {path} is signed with audit key {log_key}, this writer's key is {writer_key}: \
         continue it with the worker token that wrote it, or start a new log"
    )]
    ForeignKey {
        /// The log's path.
        path: PathBuf,
        /// The key the log names.
        log_key: AuditPublicKey,
        /// This writer's key.
        writer_key: AuditPublicKey,
    },
    /// An existing log does not verify (chain, signatures or key), so it cannot be continued.
    #[error("audit log {path}: {source}")]
    BrokenChain {
        /// The log's path.
        path: PathBuf,
        /// Where and how it fails.
        source: AuditLogError,
    },
    /// A record could not be encoded, or is longer than a record may be.
    #[error("audit record could not be encoded: {0}")]
    Encode(String),
    /// A failed write could not be cut back off the log; the sink refuses further records
    /// until the log is reopened (which finds and reports the torn record).
    #[error(
        "audit log {path}: a failed write left a torn record that could not be removed; reopen the log"
    )]
    Poisoned {
        /// The log's path.
        path: PathBuf,
    },
    /// The sink panicked while storing the record.
    #[error("audit sink panicked while storing a record")]
    Panicked,
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
struct Writer {
    file: File,
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
    /// Test hook: bytes the "disk" still has room for.
    #[cfg(feature = "test-utils")]
    room: Option<u64>,
}

/// Appends hash-chained, checkpoint-signed JSON lines to a file it holds locked.
#[derive(Debug)]
pub struct FileAuditSink {
    path: PathBuf,
    public_key: AuditPublicKey,
    options: AuditLogOptions,
    writer: Mutex<Writer>,
}

#[derive(Serialize)]
struct ChainedLine<'a> {
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    record: &'a AuditRecord,
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
        let path = path.as_ref().to_path_buf();
        let file = chain::open_regular(&path, true).map_err(|e| match e {
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
        let (state, torn) =
            chain::read_log(BufReader::new(&file), &verify, true).map_err(|source| match source
                .problem
            {
                AuditLogProblem::KeyMismatch { pinned, named } => AuditError::ForeignKey {
                    path: path.clone(),
                    log_key: named,
                    writer_key: pinned,
                },
                _ => AuditError::BrokenChain {
                    path: path.clone(),
                    source,
                },
            })?;
        if torn > 0 && !options.repair_torn_tail {
            return Err(AuditError::TornTail { path, bytes: torn });
        }
        let (seq, prev, len, unsigned) = match state.finish_for_writer() {
            Some(found) => (
                found.records,
                found.head,
                found.complete_bytes,
                found.unsigned_records(),
            ),
            None => (0, GENESIS, 0, 0),
        };
        if torn > 0 {
            file.set_len(len).map_err(|e| io_error(&path, e))?;
            tracing::warn!(path = %path.display(), bytes = torn, "removed a torn record from the end of the audit log");
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
                file,
                key,
                seq,
                prev,
                len,
                since_checkpoint: 0,
                last_checkpoint_at: Instant::now(),
                last_checkpoint: None,
                poisoned: false,
                #[cfg(feature = "test-utils")]
                room: None,
            }),
        };
        {
            let mut w = lock(&sink.writer);
            let opened = serde_json::to_string(&OpenedLine {
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

    /// Test hook: the disk has room for `bytes` more bytes; a write past that stops short
    /// (as on a full disk) after writing what fits.
    #[cfg(feature = "test-utils")]
    pub fn limit_room_for_tests(&self, bytes: Option<u64>) {
        lock(&self.writer).room = bytes;
    }

    /// Appends one line in one write; a failed or short write is cut back off the file.
    fn append(&self, w: &mut Writer, line: &str) -> Result<(), AuditError> {
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
        let written = write_once(w, &bytes);
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
                if w.file.set_len(w.len).is_err() {
                    w.poisoned = true;
                }
                Err(io_error(&self.path, reason))
            }
        }
    }

    /// Writes a checkpoint over everything so far and syncs the file.
    fn sign(&self, w: &mut Writer) -> Result<Checkpoint, AuditError> {
        let checkpoint = w.key.sign_checkpoint(w.seq, w.prev);
        self.append(w, &checkpoint_line(&checkpoint))?;
        w.file.sync_data().map_err(|e| io_error(&self.path, e))?;
        w.since_checkpoint = 0;
        w.last_checkpoint_at = Instant::now();
        w.last_checkpoint = Some(checkpoint.clone());
        Ok(checkpoint)
    }
}

fn write_once(w: &mut Writer, bytes: &[u8]) -> std::io::Result<usize> {
    #[cfg(feature = "test-utils")]
    if let Some(room) = w.room {
        let fits = usize::try_from(room).unwrap_or(usize::MAX).min(bytes.len());
        let n = w.file.write(bytes.get(..fits).unwrap_or_default())?;
        w.room = Some(room.saturating_sub(u64::try_from(n).unwrap_or(u64::MAX)));
        return if n < bytes.len() {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        } else {
            Ok(n)
        };
    }
    w.file.write(bytes)
}

impl AuditSink for FileAuditSink {
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

impl Drop for FileAuditSink {
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
