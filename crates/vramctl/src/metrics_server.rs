//! Prometheus metrics over HTTP on a loopback address (`GET /metrics`).
//!
//! Bounded whatever the clients do: one accepting thread and [`WORKERS`] handler threads; a
//! connection waits in a queue of [`QUEUE`] or is closed at once, and a handler gives a client
//! [`READ_TIMEOUT`] and [`MAX_REQUEST_BYTES`] to send its request. Content negotiation: the
//! OpenMetrics format when the `Accept` header asks for `application/openmetrics-text`, the
//! Prometheus text format 0.0.4 otherwise (what `promtool` and most parsers read).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vram_residency::VramManager;

use crate::error::{CliError, CliResult};

/// Handler threads.
const WORKERS: usize = 4;
/// Accepted connections waiting for a handler; more are closed at once.
const QUEUE: usize = 16;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request head read.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The running server; stopped when dropped.
pub(crate) struct MetricsServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// A bound metrics port, not yet served: bound before any work, so that a busy port is found
/// before a model is sealed.
pub(crate) struct MetricsListener {
    listener: TcpListener,
    address: SocketAddr,
}

impl MetricsListener {
    /// Binds `address`.
    pub(crate) fn bind(address: SocketAddr) -> CliResult<Self> {
        let listener = TcpListener::bind(address).map_err(|e| {
            CliError::bad_input(format!("cannot listen on {address}: {e}; pick a free port"))
        })?;
        let address = listener.local_addr().unwrap_or(address);
        listener
            .set_nonblocking(true)
            .map_err(|e| CliError::bad_input(format!("cannot serve on {address}: {e}")))?;
        Ok(Self { listener, address })
    }

    /// Serves `manager`'s metrics on the bound port.
    pub(crate) fn serve(self, manager: VramManager) -> MetricsServer {
        MetricsServer::start(self, manager)
    }
}

impl MetricsServer {
    fn start(bound: MetricsListener, manager: VramManager) -> Self {
        let MetricsListener { listener, address } = bound;
        let stop = Arc::new(AtomicBool::new(false));
        let (queue, pending) = sync_channel::<TcpStream>(QUEUE);
        let pending = Arc::new(Mutex::new(pending));
        let mut threads: Vec<JoinHandle<()>> = (0..WORKERS)
            .map(|_| {
                let pending = Arc::clone(&pending);
                let manager = manager.clone();
                std::thread::spawn(move || serve(&pending, &manager))
            })
            .collect();
        let flag = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || accept(&listener, &queue, &flag)));
        Self {
            address,
            stop,
            threads,
        }
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }
}

/// Accepts until stopped; a connection that finds the queue full is closed.
fn accept(listener: &TcpListener, queue: &SyncSender<TcpStream>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => match queue.try_send(stream) {
                Ok(()) | Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => return,
            },
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    // Dropping the sender ends the handlers once the queue is drained.
}

fn serve(pending: &Mutex<Receiver<TcpStream>>, manager: &VramManager) {
    loop {
        let next = match pending.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(stream) = next else { return };
        let _ = respond(stream, manager);
    }
}

/// Reads one request head (bounded in time and size) and answers it; the connection closes.
fn respond(mut stream: TcpStream, manager: &VramManager) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let head = String::from_utf8_lossy(&head);
    let mut request = head.lines().next().unwrap_or_default().split(' ');
    let (method, path) = (request.next(), request.next());
    let wants_openmetrics = head.lines().skip(1).any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    });
    let (status, content_type, body) = match (method, path) {
        (Some("GET"), Some("/metrics")) => {
            let metrics = manager.metrics();
            if wants_openmetrics {
                ("200 OK", OPENMETRICS, metrics.prometheus_text().to_owned())
            } else {
                ("200 OK", TEXT_0_0_4, metrics.prometheus_text_0_0_4())
            }
        }
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found; metrics are at GET /metrics\n".to_owned(),
        ),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
