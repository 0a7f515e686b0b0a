//! The audit log's line format (`.specs/audit.md`): one JSON object per line, `\n`-terminated.
//! Every line starts with `"seq":N` (0-based) and `"prev"`: the SHA-256 of the previous line's
//! bytes (64 zeros for the first). The first line is an `AuditLogOpened` record naming the
//! log's Ed25519 public key; `AuditCheckpoint` lines sign `(count = seq, head = prev)`. Encoding
//! (records, openings, checkpoints) and scanning (one capped line at a time) live here; the
//! writer and the verifier both use them.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{BufRead, Read};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use vram_seal::Checkpoint;
use vram_types::DigestAlgorithm;

use super::AuditRecord;

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

/// A record as a log line: its place in the chain, then the record's fields.
#[derive(Serialize)]
pub(crate) struct ChainedLine<'a> {
    pub(crate) seq: u64,
    pub(crate) prev: &'a str,
    #[serde(flatten)]
    pub(crate) record: &'a AuditRecord,
}

/// The fields a reader needs from a line; every key of the object is checked for duplicates.
#[derive(Debug, Default)]
pub(crate) struct LineFields {
    pub(crate) seq: Option<u64>,
    pub(crate) prev: Option<String>,
    pub(crate) event: Option<String>,
    pub(crate) public_key: Option<String>,
    pub(crate) signature: Option<String>,
    pub(crate) unsigned_records: Option<u64>,
    pub(crate) repaired_bytes: Option<u64>,
    /// The object's keys, in the line's order (at most [`KEYS_KEPT`]: the order checked).
    pub(crate) keys: Vec<String>,
}

/// Leading keys kept in [`LineFields::keys`]: those whose order the spec fixes.
pub(crate) const KEYS_KEPT: usize = 8;

/// The keys every record (not an opening or a checkpoint) begins with, in this order.
pub(crate) const RECORD_KEYS: [&str; 8] = [
    "seq",
    "prev",
    "timestamp_ms",
    "time",
    "worker_id",
    "correlation_id",
    "severity",
    "event",
];

/// An opening line, canonical: exactly what the writer writes.
pub(crate) fn opened_line(opened: &OpenedLine<'_>) -> Result<String, serde_json::Error> {
    serde_json::to_string(opened)
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
                    if out.keys.len() < KEYS_KEPT {
                        out.keys.push(key.clone());
                    }
                    match key.as_str() {
                        "seq" => out.seq = Some(map.next_value()?),
                        "prev" => out.prev = Some(map.next_value()?),
                        "event" => out.event = Some(map.next_value()?),
                        "public_key" => out.public_key = Some(map.next_value()?),
                        "signature" => out.signature = Some(map.next_value()?),
                        "unsigned_records" => out.unsigned_records = Some(map.next_value()?),
                        "repaired_bytes" => out.repaired_bytes = Some(map.next_value()?),
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

/// How a line scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// A whole line is in the buffer (without its newline).
    Line,
    /// The input ended cleanly.
    End,
    /// The input ended without a newline: a torn last line of this many bytes is in the buffer.
    Torn(usize),
    /// A line longer than [`MAX_RECORD_BYTES`]; the buffer holds its first bytes.
    TooLong,
}

/// Reads one `\n`-terminated line of at most [`MAX_RECORD_BYTES`] into `buf`, never more.
///
/// # Errors
/// The reader's I/O error.
pub(crate) fn scan_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Scan> {
    buf.clear();
    let cap = u64::try_from(MAX_RECORD_BYTES).unwrap_or(u64::MAX);
    reader.by_ref().take(cap).read_until(b'\n', buf)?;
    Ok(match buf.last() {
        None => Scan::End,
        Some(b'\n') => {
            buf.pop();
            Scan::Line
        }
        Some(_) if buf.len() >= MAX_RECORD_BYTES => Scan::TooLong,
        Some(_) => Scan::Torn(buf.len()),
    })
}
