//! The systemd notification protocol (`sd_notify`), for `Type=notify` units: `READY=1` once
//! every shard is sealed, `STATUS=` lines, `WATCHDOG=1` at half the `WATCHDOG_USEC` interval,
//! `STOPPING=1` on the way out. Without `NOTIFY_SOCKET` every call does nothing. Best effort:
//! a notification that cannot be sent is not an error (systemd's own client does the same).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go, when systemd asked for them.
pub(crate) struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket) and `WATCHDOG_USEC`
    /// (honoured only when `WATCHDOG_PID` is unset or this process).
    pub(crate) fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|socket| {
            let socket = socket.into_encoded_bytes();
            let address = match socket.strip_prefix(b"@") {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(name).ok()?
                }
                None => {
                    use std::os::unix::ffi::OsStrExt;
                    SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(&socket)).ok()?
                }
            };
            Some((UnixDatagram::unbound().ok()?, address))
        });
        let ours = std::env::var("WATCHDOG_PID")
            .map_or(true, |pid| pid.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && ours)
            .map(|usec| Duration::from_micros(usec / 2));
        Self { target, watchdog }
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments).
    pub(crate) fn notify(&self, state: &str) {
        if let Some((socket, address)) = &self.target {
            let _ = socket.send_to_addr(state.as_bytes(), address);
        }
    }

    /// How often to send `WATCHDOG=1`: half the interval systemd gave, if it gave one.
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref().and(self.watchdog)
    }
}
