//! Prometheus metrics over HTTP on a loopback address (`GET /metrics`), on a background thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Response, Server};
use vram_residency::VramManager;

use crate::error::{CliError, CliResult};

/// The running server; stopped when dropped.
pub(crate) struct MetricsServer {
    server: Arc<Server>,
    address: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub(crate) fn start(address: SocketAddr, manager: VramManager) -> CliResult<Self> {
        let server = Arc::new(Server::http(address).map_err(|e| {
            CliError::bad_input(format!("cannot listen on {address}: {e}; pick a free port"))
        })?);
        let address = server.server_addr().to_ip().unwrap_or(address);
        let worker = server.clone();
        let thread = std::thread::spawn(move || {
            for request in worker.incoming_requests() {
                let response = if request.url() == "/metrics" {
                    let text = manager.metrics().prometheus_text().to_owned();
                    let mut r = Response::from_string(text);
                    if let Ok(h) = Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
                    ) {
                        r.add_header(h);
                    }
                    r
                } else {
                    Response::from_string("not found; metrics are at /metrics\n")
                        .with_status_code(404)
                };
                let _ = request.respond(response);
            }
        });
        Ok(Self {
            server,
            address,
            thread: Some(thread),
        })
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
