//! Prometheus metrics over HTTP on a loopback address (`GET /metrics`, `HEAD /metrics`).
//!
//! Served by `hyper` on one thread (a single-threaded `tokio` runtime), so no client can hold a
//! thread: every connection is a task, at most [`MAX_CONNECTIONS`] at once (more are closed at
//! once), each given [`HEAD_DEADLINE`] to send its whole request head (not per read: a client
//! trickling bytes is cut off like an idle one) and [`CONNECTION_DEADLINE`] in all. One request
//! per connection. Stopping ends every connection at once, whatever its clients do.
//!
//! Content negotiation: the OpenMetrics format when the `Accept` header asks for
//! `application/openmetrics-text`, the Prometheus text format 0.0.4 otherwise (what `promtool`
//! and most parsers read). A query string is ignored; other paths are 404, other methods 405.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, oneshot};
use vram_residency::VramManager;

use crate::error::{CliError, CliResult};

/// Connections served at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send its whole request head.
const HEAD_DEADLINE: Duration = Duration::from_secs(2);
/// Time a connection may take in all, the answer included.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// Largest request head read (hyper's smallest buffer).
const MAX_REQUEST_BYTES: usize = 8 * 1024;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The running server; stopped when dropped (every connection ends with it).
pub(crate) struct MetricsServer {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
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
        // The runtime takes the socket over; it must not block.
        listener
            .set_nonblocking(true)
            .map_err(|e| CliError::bad_input(format!("cannot serve on {address}: {e}")))?;
        Ok(Self { listener, address })
    }

    /// Serves `manager`'s metrics on the bound port, from a thread of its own.
    pub(crate) fn serve(self, manager: VramManager) -> CliResult<MetricsServer> {
        let MetricsListener { listener, address } = self;
        let cannot =
            |e: std::io::Error| CliError::bad_input(format!("cannot serve on {address}: {e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(cannot)?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(cannot)?
        };
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("vramctl-metrics".into())
            // Returning drops the runtime, and with it every connection's task.
            .spawn(move || runtime.block_on(accept(listener, manager, stopped)))
            .map_err(cannot)?;
        Ok(MetricsServer {
            address,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl MetricsServer {
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts until told to stop, each connection a task of its own.
async fn accept(
    listener: tokio::net::TcpListener,
    manager: VramManager,
    mut stopped: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors, for instance: wait a little instead of spinning.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // Over the limit: the connection is closed (dropped) at once.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let manager = manager.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let response = answer(&manager, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_DEADLINE)
                .keep_alive(false)
                .max_buf_size(MAX_REQUEST_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
        });
    }
}

/// The answer to one request: the metrics, or why not.
fn answer<B>(manager: &VramManager, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at GET /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed; metrics are at GET /metrics\n",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let wants_openmetrics = request.headers().get_all(ACCEPT).iter().any(|v| {
        v.as_bytes()
            .windows(28)
            .any(|w| w == b"application/openmetrics-text")
    });
    let metrics = manager.metrics();
    let (content_type, body) = if wants_openmetrics {
        (OPENMETRICS, metrics.prometheus_text().to_owned())
    } else {
        (TEXT_0_0_4, metrics.prometheus_text_0_0_4())
    };
    // For HEAD, hyper sends the length of this body and not the body.
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
    response
}

#[cfg(test)]
mod tests {
    //! The endpoint on loopback, against the attacks of issue 22: slow and idle clients, odd
    //! requests, a stop while clients hang on.
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]

    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    use super::*;

    fn server() -> MetricsServer {
        let manager = VramManager::with_capacity(16 << 20);
        let listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        listener.serve(manager).unwrap()
    }

    /// Sends `request` as is and reads the whole answer (the server closes the connection),
    /// within `within`.
    fn ask(address: SocketAddr, request: &[u8], within: Duration) -> String {
        let mut s = TcpStream::connect(address).unwrap();
        s.set_read_timeout(Some(within)).unwrap();
        s.write_all(request).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        String::from_utf8(answer).unwrap()
    }

    fn scrape(address: SocketAddr, within: Duration) -> String {
        ask(
            address,
            format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes(),
            within,
        )
    }

    #[test]
    fn slow_and_idle_clients_do_not_blind_the_scrape() {
        let server = server();
        let address = server.address();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut attackers = Vec::new();
        // Four clients that send a request line, then one byte every 1.5 s.
        for _ in 0..4 {
            let stop = Arc::clone(&stop);
            attackers.push(std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let Ok(mut s) = TcpStream::connect(address) else {
                        continue;
                    };
                    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n");
                    while !stop.load(std::sync::atomic::Ordering::SeqCst)
                        && s.write_all(b"X").is_ok()
                    {
                        std::thread::sleep(Duration::from_millis(1500));
                    }
                }
            }));
        }
        // Twenty that connect, send nothing, and reconnect when dropped.
        for _ in 0..20 {
            let stop = Arc::clone(&stop);
            attackers.push(std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Ok(mut s) = TcpStream::connect(address) {
                        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                        let mut b = [0u8; 1];
                        while !stop.load(std::sync::atomic::Ordering::SeqCst)
                            && matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
                        {}
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(500));
        // Six scrapes over six seconds of attack, each answered within 2 s.
        for _ in 0..6 {
            let started = Instant::now();
            let answer = scrape(address, Duration::from_secs(2));
            assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
            assert!(answer.contains("vram_seal_operations_total"), "{answer}");
            assert!(started.elapsed() < Duration::from_secs(2));
            std::thread::sleep(Duration::from_secs(1));
        }
        // A stop ends every connection at once, whatever the clients do.
        let started = Instant::now();
        drop(server);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for a in attackers {
            a.join().unwrap();
        }
    }

    #[test]
    fn a_trickling_client_is_cut_off_at_the_head_deadline() {
        let server = server();
        let mut s = TcpStream::connect(server.address()).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let started = Instant::now();
        // One byte every 300 ms: each read is quick, the head never ends.
        let cut = (0..40).any(|_| {
            std::thread::sleep(Duration::from_millis(300));
            s.write_all(b"X").is_err()
        });
        let waited = started.elapsed();
        assert!(cut, "still connected after {waited:?}");
        assert!(
            waited < HEAD_DEADLINE + Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[test]
    fn http_conformance_head_405_query_and_bare_lf() {
        let server = server();
        let a = server.address();
        let within = Duration::from_secs(2);
        // HEAD: the headers of GET, no body.
        let head = ask(a, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", within);
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "no body: {head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(length > 0);
        // Other methods: 405 with Allow.
        let post = ask(
            a,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            within,
        );
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(post.contains("allow: GET, HEAD"), "{post}");
        // A query string is ignored; another path is 404.
        let query = ask(a, b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", within);
        assert!(query.starts_with("HTTP/1.1 200 OK"), "{query}");
        let other = ask(a, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", within);
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        // A head with bare LF line ends is answered, not left to time out.
        let started = Instant::now();
        let lf = ask(a, b"GET /metrics HTTP/1.1\nHost: x\n\n", within);
        assert!(lf.starts_with("HTTP/1.1 200 OK"), "{lf}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // OpenMetrics when asked for.
        let om = ask(
            a,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
            within,
        );
        assert!(om.contains("application/openmetrics-text"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        // Garbage gets an error answer (or a close), never a hang.
        let started = Instant::now();
        let _ = ask(a, b"\x16\x03\x01 not http at all\r\n\r\n", within);
        assert!(started.elapsed() < within);
    }
}
