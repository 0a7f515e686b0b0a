//! Proof bundles (consumer contract §7.1, `.specs/proof-bundle.md`): what a test run leaves
//! behind as evidence — the seeds it used, test metadata and the VRAM allocation timeline —
//! under `$LLORCH_PROOF_DIR/unit/<run id>/<suite>/<test>.jsonl`, one JSON line per manager a
//! test made. Feature `test-utils` only.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::audit::{AuditEvent, AuditRecord};

/// Where bundles go and under which run, from the environment: `LLORCH_PROOF_DIR` (default
/// `.proof_bundle` in the working directory, which cargo sets to the package's directory for
/// tests) and `LLORCH_RUN_ID` (default: nextest's `NEXTEST_RUN_ID`, so every test process of one
/// `cargo nextest run` shares a run; else `local-<unix seconds>-<pid>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofBundle {
    dir: PathBuf,
    run_id: String,
}

impl ProofBundle {
    /// The bundle of this run, from the environment.
    #[must_use]
    pub fn from_env() -> Self {
        Self::resolve(
            std::env::var_os("LLORCH_PROOF_DIR"),
            std::env::var_os("LLORCH_RUN_ID"),
            std::env::var_os("NEXTEST_RUN_ID"),
        )
    }

    /// [`Self::from_env`] over given values (empty counts as unset).
    #[must_use]
    pub fn resolve(
        proof_dir: Option<OsString>,
        run_id: Option<OsString>,
        nextest_run_id: Option<OsString>,
    ) -> Self {
        let set = |v: Option<OsString>| v.filter(|v| !v.is_empty());
        let root = set(proof_dir).map_or_else(|| PathBuf::from(".proof_bundle"), PathBuf::from);
        let run_id = set(run_id)
            .or_else(|| set(nextest_run_id))
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_else(|| {
                let secs = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                format!("local-{secs}-{}", std::process::id())
            });
        // A run id is one path component.
        let run_id = path_component(&run_id);
        Self {
            dir: root.join("unit").join(&run_id),
            run_id,
        }
    }

    /// The run's directory, `<proof dir>/unit/<run id>`.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The run id.
    #[must_use]
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Appends `entry` as one JSON line to `<suite>/<test>.jsonl` of the run (names made safe
    /// as path components), creating what is missing.
    ///
    /// # Errors
    /// The I/O error when the directory or file cannot be written.
    pub fn append(&self, suite: &str, test: &str, entry: &Value) -> std::io::Result<PathBuf> {
        let dir = self.dir.join(path_component(suite));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.jsonl", path_component(test)));
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?
            .write_all(&line)?;
        Ok(path)
    }
}

/// `name` as one safe path component: characters other than ASCII letters, digits, `-`, `_`
/// and `.` become `_`.
fn path_component(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The VRAM allocation timeline in a manager's audit records: each seal, release, aborted seal
/// and failed allocation, with its time, device, bytes and the bytes held on that device after
/// it.
#[must_use]
pub fn allocation_timeline(records: &[AuditRecord]) -> Vec<Value> {
    let mut held: BTreeMap<u32, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for r in records {
        let (device, change, shard): (u32, isize, Option<&str>) = match &r.event {
            AuditEvent::VramSealed {
                gpu_device,
                reserved_bytes,
                shard_id,
                ..
            } => (
                *gpu_device,
                isize::try_from(*reserved_bytes).unwrap_or(isize::MAX),
                Some(shard_id),
            ),
            AuditEvent::VramDeallocated {
                gpu_device,
                freed_bytes,
                shard_id,
                ..
            } => (
                *gpu_device,
                isize::try_from(*freed_bytes).map_or(isize::MIN, |b| b.saturating_neg()),
                Some(shard_id),
            ),
            AuditEvent::SealAborted {
                gpu_device,
                shard_id,
                ..
            } => (*gpu_device, 0, shard_id.as_deref()),
            AuditEvent::VramAllocationFailed { gpu_device, .. } => (*gpu_device, 0, None),
            _ => continue,
        };
        let now = held.entry(device).or_default();
        *now = now.saturating_add_signed(change);
        out.push(json!({
            "timestamp_ms": r.timestamp_ms,
            "event": r.event.name(),
            "gpu_device": device,
            "shard_id": shard,
            "bytes": change,
            "held_bytes": *now,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_picks_directory_and_run() {
        let b = ProofBundle::resolve(Some("/p".into()), Some("run 7/x".into()), Some("n".into()));
        assert_eq!(b.dir(), Path::new("/p/unit/run_7_x"));
        let b = ProofBundle::resolve(None, Some("".into()), Some("abc-123".into()));
        assert_eq!(b.dir(), Path::new(".proof_bundle/unit/abc-123"));
        let b = ProofBundle::resolve(None, None, None);
        assert!(b.run_id().starts_with("local-"), "{}", b.run_id());
    }

    #[test]
    fn the_timeline_keeps_a_running_total_per_device() {
        let record = |event| AuditRecord {
            timestamp_ms: 1,
            worker_id: "w".into(),
            correlation_id: "c".into(),
            severity: crate::audit::Severity::Info,
            event,
        };
        let sealed = |d, b| {
            record(AuditEvent::VramSealed {
                shard_id: "s".into(),
                gpu_device: d,
                vram_bytes: b,
                reserved_bytes: b,
                digest: String::new(),
                digest_algorithm: String::new(),
                backend: "mock".into(),
                group_id: None,
                in_place: false,
                expected_from: None,
            })
        };
        let released = record(AuditEvent::VramDeallocated {
            shard_id: "s".into(),
            gpu_device: 0,
            freed_bytes: 4,
            error: None,
        });
        let timeline = allocation_timeline(&[sealed(0, 4), sealed(1, 6), sealed(0, 2), released]);
        let held: Vec<u64> = timeline
            .iter()
            .map(|e| e["held_bytes"].as_u64().unwrap())
            .collect();
        assert_eq!(held, [4, 6, 6, 2]);
    }
}
