//! Where audit records go: the [`AuditSink`] trait every sink implements, and its error.

use std::fmt;
use std::path::PathBuf;

use vram_seal::AuditPublicKey;

use super::AuditRecord;
use super::verify::AuditLogError;

/// Where audit records go.
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Stores one record.
    ///
    /// A sink that panics is treated as one that failed: the panic is caught.
    ///
    /// # Errors
    /// [`AuditError`] when the record could not be stored; the manager then follows its
    /// [`AuditFailurePolicy`](vram_types::AuditFailurePolicy).
    fn record(&self, record: &AuditRecord) -> Result<(), AuditError>;
}

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
    /// What follows the last complete record is not a torn record: the file is not a log (no
    /// complete record at all), or more than a record's length. Nothing is changed, even with
    /// repair: repair only ever removes one torn last record.
    #[error(
        "audit log {path}: {bytes} bytes after the last complete record are not a torn record \
         ({reason}); nothing was changed: give the path of an audit log, or move this file aside"
    )]
    NotRepairable {
        /// The path.
        path: PathBuf,
        /// Bytes after the last complete record.
        bytes: u64,
        /// Why they are not a torn record.
        reason: &'static str,
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
    /// Repair never removes complete records (they are evidence): the remedy is a new log.
    #[error(
        "audit log {path}: {source}; it cannot be continued: keep it as evidence (check it with \
         `vramctl audit verify`) and start a new log at another path"
    )]
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
