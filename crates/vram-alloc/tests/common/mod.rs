//! Shared helpers for the integration tests: a mock-backed manager with an in-memory audit sink.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    reason = "test helpers; each test file uses a subset"
)]

use std::sync::Arc;

use vram_alloc::VramManager;
use vram_alloc::audit::{AuditEvent, InMemoryAuditSink};
use vram_alloc::backend::MockBackend;
use vram_seal::SealKey;
use vram_types::VramConfig;

pub const MIB: usize = 1 << 20;

pub struct Rig {
    pub manager: VramManager,
    pub mock: Arc<MockBackend>,
    pub audit: Arc<InMemoryAuditSink>,
    /// Inputs a test drew at random, for its proof bundle.
    pub seeds: std::sync::Mutex<serde_json::Map<String, serde_json::Value>>,
}

impl Rig {
    /// Notes a random input for the proof bundle.
    pub fn note_seed(&self, name: &str, value: impl serde::Serialize) {
        self.seeds
            .lock()
            .unwrap()
            .insert(name.to_owned(), serde_json::to_value(value).unwrap());
    }
}

/// Appends the proof bundle line of a manager a test made (`.specs/proof-bundle.md`): the test,
/// its seeds, the manager's metrics and the VRAM allocation timeline from its audit records.
fn write_proof_bundle(manager: &VramManager, audit: &InMemoryAuditSink, seeds: serde_json::Value) {
    use vram_alloc::proof_bundle::{ProofBundle, allocation_timeline};
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("unnamed");
    let suite = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let suite = suite.split('-').next().unwrap_or_default();
    let m = manager.metrics();
    let entry = serde_json::json!({
        "crate": env!("CARGO_PKG_NAME"),
        "suite": suite,
        "test": test,
        "backend": manager.backend_kind().as_str(),
        "devices": manager.device_count(),
        "total_vram": manager.total_vram(),
        "used_vram_at_end": manager.used_vram(),
        "stopped": manager.is_stopped(),
        "seeds": seeds,
        "metrics": {
            "seals_succeeded": m.seals_succeeded,
            "verifications_succeeded": m.verifications_succeeded,
            "verifications_failed": m.verifications_failed,
            "audit_failures": m.audit_failures,
        },
        "evicted_audit_records": audit.evicted(),
        "allocation_timeline": allocation_timeline(&audit.records()),
    });
    let bundle = ProofBundle::from_env();
    let suite_dir = format!("{}-{suite}", env!("CARGO_PKG_NAME"));
    if let Err(e) = bundle.append(&suite_dir, test, &entry) {
        eprintln!(
            "proof bundle not written to {}: {e}",
            bundle.dir().display()
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let seeds = serde_json::Value::Object(std::mem::take(&mut *self.seeds.lock().unwrap()));
        write_proof_bundle(&self.manager, &self.audit, seeds);
    }
}

pub fn rig_with(mock: MockBackend, config: VramConfig) -> Rig {
    rig_with_sink(mock, config, InMemoryAuditSink::new())
}

/// [`rig_with`] keeping the audit records in `audit` (for example a larger window).
pub fn rig_with_sink(mock: MockBackend, config: VramConfig, audit: InMemoryAuditSink) -> Rig {
    let mock = Arc::new(mock);
    let audit = Arc::new(audit);
    let manager = VramManager::builder()
        .mock(mock.clone())
        .config(config)
        .seal_key(SealKey::from_bytes(&[0x5e; 32]).unwrap())
        .audit_sink(audit.clone())
        .build()
        .unwrap();
    Rig {
        manager,
        mock,
        audit,
        seeds: std::sync::Mutex::default(),
    }
}

/// A configuration in which a failed verification does not stop the manager (tests that fail
/// verifications on purpose and go on).
pub fn keep_going() -> VramConfig {
    VramConfig {
        stop_on_verification_failure: false,
        ..VramConfig::default()
    }
}

pub fn rig(capacity: usize) -> Rig {
    rig_with(MockBackend::with_capacity(capacity), VramConfig::default())
}

pub fn names(events: &[AuditEvent]) -> Vec<&'static str> {
    events.iter().map(AuditEvent::name).collect()
}

pub fn model(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A fresh path in the temporary directory (removed first if a previous run left it).
pub fn temp_path(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("vram-audit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Which backend a shared behaviour test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// The mock backend (CI).
    Mock,
    /// Every CUDA GPU of the machine (`VRAM_TEST_GPU=1`).
    Cuda,
}

/// A manager on either backend, with an in-memory audit sink and the fixed test key.
pub struct AnyRig {
    pub manager: VramManager,
    pub audit: Arc<InMemoryAuditSink>,
    mock: Option<Arc<MockBackend>>,
}

impl Drop for AnyRig {
    fn drop(&mut self) {
        write_proof_bundle(&self.manager, &self.audit, serde_json::json!({}));
    }
}

impl AnyRig {
    /// The mock backend, on the mock.
    pub fn mock(&self) -> Option<&Arc<MockBackend>> {
        self.mock.as_ref()
    }

    /// On the mock, the backend holds exactly `n` allocations (the CUDA backend does not count
    /// them; its accounting is checked through `used_vram` and the GPU suite's free memory).
    pub fn assert_live_allocations(&self, n: usize) {
        if let Some(mock) = &self.mock {
            assert_eq!(
                mock.live_allocations(),
                n,
                "live allocations in the backend"
            );
        }
    }
}

/// A manager managing `capacity` bytes of device 0 on `on`.
pub fn rig_on(on: On, capacity: usize, config: VramConfig) -> AnyRig {
    let audit = Arc::new(InMemoryAuditSink::new());
    let builder = VramManager::builder()
        .config(VramConfig {
            capacity_bytes: Some(capacity),
            ..config
        })
        .seal_key(SealKey::from_bytes(&[0x5e; 32]).unwrap())
        .audit_sink(audit.clone());
    let (manager, mock) = match on {
        On::Mock => {
            let mock = Arc::new(MockBackend::with_capacity(capacity));
            (builder.mock(mock.clone()).build().unwrap(), Some(mock))
        }
        On::Cuda => {
            assert!(
                std::env::var("VRAM_TEST_GPU").is_ok_and(|v| v == "1"),
                "needs a GPU: set VRAM_TEST_GPU=1"
            );
            (builder.build().unwrap(), None)
        }
    };
    // The CUDA backend audits its start-up check of each device (`DeviceAccepted`, tested in
    // the GPU suite); the tests here look at the records of the operations they run.
    audit.clear();
    AnyRig {
        manager,
        audit,
        mock,
    }
}

/// Runs each named test on the mock and, ignored unless asked for, on a GPU (the test file
/// imports [`On`]).
#[allow(unused_macros, reason = "used by the files that run on both backends")]
macro_rules! on_both_backends {
    ($($name:ident)*) => {$(
        mod $name {
            #[test]
            fn mock() {
                super::$name(super::On::Mock);
            }

            #[test]
            #[ignore = "needs a GPU: VRAM_TEST_GPU=1 and --include-ignored"]
            fn cuda() {
                super::$name(super::On::Cuda);
            }
        }
    )*};
}

/// How much room the "disk" under a [`SmallDisk`] log has left (`None`: unlimited). Shared by
/// the test and the sink's file, so the test can fill and empty the disk while the sink runs.
#[derive(Debug, Clone, Default)]
pub struct Room(Arc<std::sync::Mutex<Option<u64>>>);

impl Room {
    pub fn set(&self, bytes: Option<u64>) {
        *self.0.lock().unwrap() = bytes;
    }
}

/// A log file on a disk with limited room: a write past it writes what fits and then fails
/// with ENOSPC, as a full disk does.
#[derive(Debug)]
pub struct SmallDisk {
    file: std::fs::File,
    room: Room,
}

impl vram_alloc::audit::LogFile for SmallDisk {
    fn write_once(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        use std::io::Write as _;
        let mut room = self.room.0.lock().unwrap();
        let Some(left) = *room else {
            return self.file.write(bytes);
        };
        let fits = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
        let n = self.file.write(bytes.get(..fits).unwrap_or_default())?;
        *room = Some(left.saturating_sub(n as u64));
        if n < bytes.len() {
            Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
        } else {
            Ok(n)
        }
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// A file audit sink at `path` writing through a [`SmallDisk`] with `room`.
pub fn sink_on_small_disk(
    path: &std::path::Path,
    key: vram_alloc::audit::AuditSigningKey,
    room: &Room,
) -> vram_alloc::audit::FileAuditSink<SmallDisk> {
    let room = room.clone();
    vram_alloc::audit::FileAuditSink::open_through(
        path,
        key,
        vram_alloc::audit::AuditLogOptions::default(),
        move |file| {
            Ok(SmallDisk {
                file: file.try_clone()?,
                room,
            })
        },
    )
    .unwrap()
}

/// Host bytes an engine outside the mock holds and keeps writing (the Python package's NumPy
/// arrays stand in for tensors so): the mock reads them where they lie.
pub struct HostBytes(pub std::sync::Mutex<Vec<u8>>);

impl HostBytes {
    pub fn new(bytes: Vec<u8>) -> Arc<Self> {
        Arc::new(Self(std::sync::Mutex::new(bytes)))
    }
}

impl vram_alloc::backend::HostTensor for HostBytes {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn read(&self, read: &mut dyn FnMut(&[u8])) -> Result<(), vram_types::VramError> {
        read(&self.0.lock().unwrap());
        Ok(())
    }
}
