//! Signals `vramctl seal` answers: SIGTERM and SIGINT stop it (what is held is released, exit
//! 0); SIGHUP re-verifies every shard at once and says so (it does not stop the process).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::error::{CliError, CliResult};

/// Flags set by the signal handlers, read between steps.
pub(crate) struct Signals {
    stop: Arc<AtomicBool>,
    reverify: Arc<AtomicBool>,
}

impl Signals {
    pub(crate) fn install() -> CliResult<Self> {
        let signals = Self {
            stop: Arc::new(AtomicBool::new(false)),
            reverify: Arc::new(AtomicBool::new(false)),
        };
        let failed = |e: std::io::Error| {
            CliError::bad_input(format!("cannot install the signal handlers: {e}"))
        };
        for signal in [SIGTERM, SIGINT] {
            signal_hook::flag::register(signal, Arc::clone(&signals.stop)).map_err(failed)?;
        }
        signal_hook::flag::register(SIGHUP, Arc::clone(&signals.reverify)).map_err(failed)?;
        Ok(signals)
    }

    /// Whether SIGTERM or SIGINT arrived.
    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Whether SIGHUP arrived since the last call.
    pub(crate) fn take_reverify(&self) -> bool {
        self.reverify.swap(false, Ordering::SeqCst)
    }
}
