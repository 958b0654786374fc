//! The admin listener of routers and the replica manager (`--admin-listen`):
//! plain HTTP on a port of its own, for Prometheus and health checks.
//!
//! - `GET /metrics`: every metric in the Prometheus text format;
//! - `GET /health`: `200 ok` while the process's event loop runs (the
//!   listener shares the single thread that runs the router or RM, so a
//!   wedged loop stops answering).
//!
//! Anything else gets 404 (405 for another method). A request must arrive
//! whole within 5 s and within 8 KiB; at most 16 are served at once.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a request may take to arrive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at once.
const MAX_CONCURRENT: usize = 16;

/// Installs the Prometheus recorder and serves `/metrics` and `/health` on
/// `addr` until the process ends. Call once, before the router or RM runs.
pub(crate) async fn start(addr: SocketAddr) -> anyhow::Result<()> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --admin-listen {addr}"))?;
    let local = listener
        .local_addr()
        .context("the admin listener has no address")?;
    tracing::info!("admin listening on {local} (GET /metrics, GET /health)");
    tokio::task::spawn_local(serve(listener, handle));
    Ok(())
}

async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let handle = Rc::new(handle);
    let serving = Rc::new(Cell::new(0usize));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if serving.get() >= MAX_CONCURRENT {
            continue; // Too many at once: dropped, the scraper retries.
        }
        serving.set(serving.get() + 1);
        let (handle, serving) = (Rc::clone(&handle), Rc::clone(&serving));
        tokio::task::spawn_local(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &handle)).await;
            serving.set(serving.get() - 1);
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            handle.run_upkeep();
            ("200 OK", "text/plain; version=0.0.4", handle.render())
        }
        ("GET", "/health") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics or /health\n".to_owned(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
