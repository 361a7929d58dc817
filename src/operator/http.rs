//! The operator's HTTP endpoints: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive) and `/readyz` (watches synced; a leader
//! or a standby ready to take over).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tracing::info;

use super::metrics::Metrics;

/// What the endpoints read.
#[derive(Clone)]
pub struct Probes {
    pub metrics: Arc<Metrics>,
    /// Watches synced, out of how many.
    pub synced: tokio::sync::watch::Receiver<usize>,
    pub watches: usize,
}

/// Serves `/metrics` on `metrics` and `/healthz`, `/readyz` on `health`
/// (the same server when they are the same address).
pub async fn serve(
    metrics: Option<SocketAddr>,
    health: Option<SocketAddr>,
    probes: Probes,
) -> anyhow::Result<()> {
    let metrics_routes = Router::new().route("/metrics", get(render_metrics));
    let health_routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let mut servers = Vec::new();
    match (metrics, health) {
        (Some(m), Some(h)) if m == h => servers.push((m, metrics_routes.merge(health_routes))),
        (m, h) => {
            if let Some(m) = m {
                servers.push((m, metrics_routes));
            }
            if let Some(h) = h {
                servers.push((h, health_routes));
            }
        }
    }
    let mut tasks = Vec::new();
    for (addr, router) in servers {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("listening on {addr}: {e}"))?;
        info!(%addr, "serving HTTP");
        let app = router.with_state(probes.clone());
        tasks.push(tokio::spawn(
            async move { axum::serve(listener, app).await },
        ));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn render_metrics(State(p): State<Probes>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        p.metrics.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(p): State<Probes>) -> (StatusCode, String) {
    let synced = *p.synced.borrow();
    if synced >= p.watches {
        (StatusCode::OK, "ok".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{synced} of {} watches synced", p.watches),
        )
    }
}
