//! A small service on resilient-storage, as an operator would run it: configuration from a TOML
//! file with environment overrides, the storage health endpoint, Prometheus metrics, and one
//! endpoint that uses the storage.
//!
//! ```text
//! cargo run -p resilient-storage --all-features --example health_server -- \
//!     resilient-facade/examples/storage.toml
//! ```
//!
//! - `GET /health/storage`: the health report; 200 when healthy, 503 when degraded or unhealthy
//!   (for alerts).
//! - `GET /health/storage/ready`: the same report; 503 only when no backend can serve (for a
//!   load balancer or readiness probe).
//! - `GET /metrics`: Prometheus text format.
//! - `GET /visits`: notes the time in `last-visit` (a plain write, which fails over to the
//!   memory store), counts the call in `visits` (an atomic increment) and returns the count;
//!   503 while no shared backend is reachable (a count is never kept in one process's memory,
//!   where it would start again).
//!
//! Arguments and environment:
//! - the first argument is a configuration file (optional; without it, the defaults: the
//!   memory store alone); every `RESILIENT_STORAGE_*` variable overrides it, for example
//!   `RESILIENT_STORAGE_BACKENDS__0__URL=redis://:secret@cache:6379`;
//! - `LISTEN` is the address to serve on (default `127.0.0.1:8080`; port 0 picks a free one).
//!   The first line on stdout is `listening on http://ADDR`.

use std::path::PathBuf;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use resilient_storage::prelude::*;

#[derive(Clone)]
struct App {
    storage: ResilientStorage,
    metrics: PrometheusHandle,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
    // Metric handles are registered when the storage is built: install the recorder first.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let path = std::env::args_os().nth(1).map(PathBuf::from);
    let config = StorageConfig::load(path.as_deref())?;
    let storage = ResilientStorage::from_config(config).await?;

    let app = axum::Router::new()
        .route("/visits", get(visits))
        .route("/metrics", get(render_metrics))
        .with_state(App {
            storage: storage.clone(),
            metrics,
        })
        .merge(resilient_storage::http::health_routes(storage.clone()));

    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    storage.shutdown().await;
    Ok(())
}

/// Notes the last visit and counts visits in the storage: one atomic increment, exact across
/// processes and failover.
async fn visits(State(app): State<App>) -> Result<String, (StatusCode, String)> {
    let unavailable = |e: Error| (StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    app.storage
        .set("last-visit", now.to_string(), None)
        .await
        .map_err(unavailable)?;
    let count = app
        .storage
        .increment("visits", 1, None)
        .await
        .map_err(unavailable)?;
    Ok(count.to_string())
}

async fn render_metrics(State(app): State<App>) -> String {
    app.metrics.render()
}
