//! Building a manager on the backend the operator asked for.

use std::path::Path;
use std::sync::Arc;

use vram_residency::audit::{AuditLogOptions, AuditSink, FileAuditSink, InMemoryAuditSink};
use vram_residency::{DigestAlgorithm, MockBackend, VramConfig, VramError, VramManager};

use crate::cli::{BackendArgs, BackendChoice};
use crate::error::{CliError, CliResult};
use crate::keys::WorkerKey;

/// Where a session's audit records go.
pub(crate) enum AuditTarget<'a> {
    /// A bounded window in memory (and `tracing`).
    Memory,
    /// A signed log file; `repair` removes a torn last record.
    File { path: &'a Path, repair: bool },
}

/// A manager, the mock behind it when there is one, and where audit records go.
pub(crate) struct Session {
    pub(crate) manager: VramManager,
    /// One line saying which backend holds the shards, and why.
    pub(crate) backend_note: String,
    /// The in-memory audit trail, when no audit file was asked for.
    #[cfg_attr(
        not(feature = "demo"),
        allow(dead_code, reason = "read by the demo only")
    )]
    pub(crate) memory_audit: Option<Arc<InMemoryAuditSink>>,
    /// The signed audit log, when one was asked for.
    pub(crate) audit_file: Option<Arc<FileAuditSink>>,
}

fn config(worker_id: &str, digest_algorithm: DigestAlgorithm) -> VramConfig {
    VramConfig {
        worker_id: worker_id.to_owned(),
        digest_algorithm,
        ..VramConfig::default()
    }
}

/// Opens a session sealing in `algorithm`; `default` applies when `--backend` was not given.
/// The seal key is `key`'s; an audit file is signed with the audit key derived from it.
pub(crate) fn open(
    args: &BackendArgs,
    default: BackendChoice,
    audit: &AuditTarget<'_>,
    key: &WorkerKey,
    worker_id: &str,
    algorithm: DigestAlgorithm,
) -> CliResult<Session> {
    let (sink, memory_audit, audit_file): (Arc<dyn AuditSink>, _, _) = match audit {
        AuditTarget::File { path, repair } => {
            let mut options = AuditLogOptions::default();
            options.repair_torn_tail = *repair;
            let file = Arc::new(
                FileAuditSink::open_with(path, key.seal_key()?.audit_signing_key()?, options)
                    .map_err(|e| CliError::bad_input(format!("cannot use audit log: {e}")))?,
            );
            let adopted = file.adopted_unsigned_records();
            if adopted > 0 {
                crate::output::warn(&format!(
                    "warning: {}: {adopted} record(s) at its end were never signed by a checkpoint (a writer that died before its next one, or lines appended by someone else); they are adopted, and `vramctl audit verify` refuses them unless given --allow-unsigned-tail",
                    crate::output::shown(path)
                ));
            }
            (file.clone() as Arc<dyn AuditSink>, None, Some(file))
        }
        AuditTarget::Memory => {
            let sink = Arc::new(InMemoryAuditSink::new());
            (sink.clone() as Arc<dyn AuditSink>, Some(sink), None)
        }
    };
    let choice = args.backend.unwrap_or(default);
    let builder = || -> CliResult<vram_residency::VramManagerBuilder> {
        Ok(VramManager::builder()
            .config(config(worker_id, algorithm))
            .seal_key(key.seal_key()?)
            .audit_sink(sink.clone()))
    };
    let mock = |reason: String| -> CliResult<Session> {
        let manager = builder()?
            .mock(Arc::new(MockBackend::with_capacity(args.mock_capacity)))
            .build()?;
        Ok(Session {
            manager,
            backend_note: format!("backend: mock ({reason}); shards are in host memory, not VRAM"),
            memory_audit: memory_audit.clone(),
            audit_file: audit_file.clone(),
        })
    };
    let cuda =
        |manager: VramManager| cuda_session(manager, memory_audit.clone(), audit_file.clone());
    match choice {
        BackendChoice::Mock => mock("chosen with --backend mock".to_owned()),
        BackendChoice::Cuda => Ok(cuda(builder()?.build()?)),
        BackendChoice::Auto => match builder()?.build() {
            Ok(manager) => Ok(cuda(manager)),
            Err(VramError::NoGpu { reason }) => mock(format!("no GPU: {reason}")),
            Err(e @ VramError::DriverTooOld { .. }) => mock(e.to_string()),
            Err(e) => Err(e.into()),
        },
    }
}

fn cuda_session(
    manager: VramManager,
    memory_audit: Option<Arc<InMemoryAuditSink>>,
    audit_file: Option<Arc<FileAuditSink>>,
) -> Session {
    let names: Vec<String> = (0..manager.device_count())
        .filter_map(|d| {
            manager
                .device_facts(d)
                .ok()
                .map(|f| format!("GPU {d}: {}", f.name))
        })
        .collect();
    Session {
        backend_note: format!("backend: cuda ({})", names.join(", ")),
        manager,
        memory_audit,
        audit_file,
    }
}

/// A session for a command that keeps nothing (`bench`, `demo`): a random key, records in
/// memory, seals in `algorithm`.
pub(crate) fn open_ephemeral(
    args: &BackendArgs,
    default: BackendChoice,
    algorithm: DigestAlgorithm,
) -> CliResult<Session> {
    open(
        args,
        default,
        &AuditTarget::Memory,
        &crate::keys::random()?,
        "vramctl",
        algorithm,
    )
}
