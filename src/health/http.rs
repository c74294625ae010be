//! The plain-HTTP port (`http_listen`, default 127.0.0.1:9464): `/healthz` (the process
//! is up), `/readyz` (the API ports are bound and the store takes writes: 200, else 503)
//! and `/metrics` (Prometheus/OpenMetrics text). No TLS and no client certificates: none
//! of it is personal data, and the default address is loopback only.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tracing::warn;

use super::NodeHealth;
use crate::shutdown::Shutdown;

/// Content type of the exposition.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The HTTP routes.
pub fn router(health: Arc<NodeHealth>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(health): State<Arc<NodeHealth>>) -> impl IntoResponse {
    let (bound, writable) = (health.api_bound(), health.store_writable());
    let body = format!(
        "api: {}\nstore: {}\n",
        if bound { "bound" } else { "not bound" },
        if writable { "writable" } else { "NOT writable" }
    );
    let code = if bound && writable { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, body)
}

async fn metrics(State(health): State<Arc<NodeHealth>>) -> impl IntoResponse {
    let status = health.status().await;
    let text = super::metrics::render(&health, &status);
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text)
}

/// Serves the HTTP port until shutdown.
pub async fn serve(listener: TcpListener, health: Arc<NodeHealth>, mut shutdown: Shutdown) {
    let served =
        axum::serve(listener, router(health)).with_graceful_shutdown(async move { shutdown.recv().await }).await;
    if let Err(e) = served {
        warn!(error = %e, "the HTTP health port failed");
    }
}

/// A minimal HTTP/1.0 GET for tests, benchmarks and scripts: status code and body.
pub async fn get_text(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}
