//! Building a manager on the backend the operator asked for.

use std::path::Path;
use std::sync::Arc;

use vram_residency::audit::{AuditSink, FileAuditSink, InMemoryAuditSink};
use vram_residency::{MockBackend, SealKey, VramConfig, VramError, VramManager};

use crate::cli::{BackendArgs, BackendChoice};
use crate::error::{CliError, CliResult};

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
}

fn config() -> VramConfig {
    VramConfig {
        worker_id: "vramctl".to_owned(),
        ..VramConfig::default()
    }
}

/// Opens a session; `default` applies when `--backend` was not given.
pub(crate) fn open(
    args: &BackendArgs,
    default: BackendChoice,
    audit_log: Option<&Path>,
) -> CliResult<Session> {
    let (sink, memory_audit): (Arc<dyn AuditSink>, _) = match audit_log {
        Some(path) => (
            Arc::new(FileAuditSink::open(path).map_err(|e| {
                CliError::bad_input(format!(
                    "cannot use audit log {}: {e}; give a writable file path",
                    path.display()
                ))
            })?),
            None,
        ),
        None => {
            let sink = Arc::new(InMemoryAuditSink::new());
            (sink.clone() as Arc<dyn AuditSink>, Some(sink))
        }
    };
    let choice = args.backend.unwrap_or(default);
    let cuda = || {
        VramManager::builder()
            .config(config())
            .seal_key(SealKey::generate()?)
            .audit_sink(sink.clone())
            .build()
    };
    let mock = |reason: String| -> CliResult<Session> {
        let manager = VramManager::builder()
            .mock(Arc::new(MockBackend::with_capacity(args.mock_capacity)))
            .config(config())
            .seal_key(SealKey::generate()?)
            .audit_sink(sink.clone())
            .build()?;
        Ok(Session {
            manager,
            backend_note: format!("backend: mock ({reason}); shards are in host memory, not VRAM"),
            memory_audit: memory_audit.clone(),
        })
    };
    match choice {
        BackendChoice::Mock => mock("chosen with --backend mock".to_owned()),
        BackendChoice::Cuda => {
            let manager = cuda()?;
            Ok(cuda_session(manager, memory_audit))
        }
        BackendChoice::Auto => match cuda() {
            Ok(manager) => Ok(cuda_session(manager, memory_audit)),
            Err(VramError::NoGpu { reason }) => mock(format!("no GPU: {reason}")),
            Err(e @ VramError::DriverTooOld { .. }) => mock(e.to_string()),
            Err(e) => Err(e.into()),
        },
    }
}

fn cuda_session(manager: VramManager, memory_audit: Option<Arc<InMemoryAuditSink>>) -> Session {
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
    }
}
