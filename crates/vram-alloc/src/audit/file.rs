//! A JSON-lines audit file in which each record carries the SHA-256 of the previous line, so
//! that deleting, reordering or editing a line breaks the chain ([`verify_audit_chain`]).
//!
//! Line format: `{"seq":N,"prev":"<64 hex>",...record fields...}`; `prev` of the first line is 64
//! zeros; `prev` of line N+1 is the SHA-256 of line N's bytes (without the newline). Critical
//! records are synced to disk before `record` returns.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use vram_types::DigestAlgorithm;

use super::{AuditRecord, AuditSink, Severity};
use crate::sync::lock;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug)]
struct ChainState {
    file: File,
    seq: u64,
    prev: String,
}

/// Appends hash-chained JSON lines to a file.
#[derive(Debug)]
pub struct FileAuditSink {
    path: PathBuf,
    state: Mutex<ChainState>,
}

#[derive(Serialize)]
struct ChainedLine<'a> {
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    record: &'a AuditRecord,
}

fn line_hash(line: &str) -> String {
    vram_seal::digest(line.as_bytes(), DigestAlgorithm::Sha256).to_hex()
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
    /// An existing log's chain does not hold, so it cannot be continued.
    #[error("audit log {path}: {source}")]
    BrokenChain {
        /// The log's path.
        path: PathBuf,
        /// Where and how the chain breaks.
        source: AuditChainError,
    },
    /// A record could not be encoded as JSON.
    #[error("audit record could not be encoded: {0}")]
    Encode(String),
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl FileAuditSink {
    /// Opens (or creates) an audit file and continues its chain; an existing file's chain is
    /// verified first.
    ///
    /// # Errors
    /// [`AuditError::Io`] when the file cannot be opened or read; [`AuditError::BrokenChain`]
    /// when its existing chain does not hold.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        let path = path.as_ref().to_path_buf();
        let (seq, prev) = if path.exists() {
            let n = verify_audit_chain(&path).map_err(|source| AuditError::BrokenChain {
                path: path.clone(),
                source,
            })?;
            (
                n,
                last_line_hash(&path)?.unwrap_or_else(|| GENESIS.to_owned()),
            )
        } else {
            (0, GENESIS.to_owned())
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        Ok(Self {
            path,
            state: Mutex::new(ChainState { file, seq, prev }),
        })
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn last_line_hash(path: &Path) -> Result<Option<String>, AuditError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut last = None;
    for line in BufReader::new(file).lines() {
        last = Some(line.map_err(|e| io_error(path, e))?);
    }
    Ok(last.map(|l| line_hash(&l)))
}

impl AuditSink for FileAuditSink {
    fn record(&self, record: &AuditRecord) -> Result<(), AuditError> {
        let mut st = lock(&self.state);
        let line = serde_json::to_string(&ChainedLine {
            seq: st.seq,
            prev: &st.prev,
            record,
        })
        .map_err(|e| AuditError::Encode(e.to_string()))?;
        st.file
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| io_error(&self.path, e))?;
        if record.severity >= Severity::Critical {
            st.file.sync_data().map_err(|e| io_error(&self.path, e))?;
        }
        st.seq = st.seq.saturating_add(1);
        st.prev = line_hash(&line);
        Ok(())
    }
}

/// Why an audit file's chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditChainError {
    /// The file could not be read.
    #[error("cannot read audit log: {0}")]
    Io(String),
    /// A line is not a JSON object with `seq` and `prev`.
    #[error("line {line}: not an audit record")]
    Malformed {
        /// 1-based line number.
        line: u64,
    },
    /// A line's `seq` or `prev` does not follow from the line before it.
    #[error("line {line}: chain broken (record missing, reordered or edited before it)")]
    Broken {
        /// 1-based line number.
        line: u64,
    },
}

/// Checks an audit file's chain and returns how many records it holds.
///
/// # Errors
/// [`AuditChainError`] naming the first line where the chain breaks.
pub fn verify_audit_chain(path: impl AsRef<Path>) -> Result<u64, AuditChainError> {
    let file = File::open(path.as_ref()).map_err(|e| AuditChainError::Io(e.to_string()))?;
    let mut prev = GENESIS.to_owned();
    let mut count = 0u64;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| AuditChainError::Io(e.to_string()))?;
        let number = count.saturating_add(1);
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|_| AuditChainError::Malformed { line: number })?;
        let (Some(seq), Some(p)) = (
            value.get("seq").and_then(serde_json::Value::as_u64),
            value.get("prev").and_then(serde_json::Value::as_str),
        ) else {
            return Err(AuditChainError::Malformed { line: number });
        };
        if seq != count || p != prev {
            return Err(AuditChainError::Broken { line: number });
        }
        prev = line_hash(&line);
        count = number;
    }
    Ok(count)
}
