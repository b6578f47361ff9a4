//! The health endpoints (feature `http`): [axum] handlers that serve
//! [`ResilientStorage::health`] as JSON.
//!
//! | route | 200 | 503 | wire it to |
//! |---|---|---|---|
//! | `GET /health/storage` | every backend healthy | degraded (serving from a fallback, a backend down or replaying) or unhealthy | dashboards, alerts, a liveness check of the *storage* |
//! | `GET /health/storage/ready` | some backend can serve calls | no backend can serve | a load balancer, a Kubernetes readiness probe |
//!
//! Never take instances out of rotation on `/health/storage`: during a Redis outage every
//! instance is degraded at once, while each still serves from PostgreSQL. Both answer the same
//! JSON report and are never cached.
//!
//! ```no_run
//! # async fn serve(storage: resilient_storage::ResilientStorage) -> std::io::Result<()> {
//! let app = axum::Router::new().merge(resilient_storage::http::health_routes(storage));
//! // axum::serve(listener, app).await
//! # Ok(()) }
//! ```

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::ResilientStorage;

/// Where [`health_routes`] serves the report.
pub const HEALTH_PATH: &str = "/health/storage";

/// Where [`health_routes`] serves readiness.
pub const READY_PATH: &str = "/health/storage/ready";

/// A router serving `GET` [`HEALTH_PATH`] and [`READY_PATH`] for `storage`; merge it into the
/// service's own.
pub fn health_routes(storage: ResilientStorage) -> axum::Router {
    axum::Router::new()
        .route(HEALTH_PATH, get(health))
        .route(READY_PATH, get(ready))
        .with_state(storage)
}

/// The health handler: the [`HealthReport`](crate::HealthReport) as JSON, with status
/// [`http_status`](crate::HealthReport::http_status) (200 or 503), never cached.
pub async fn health(State(storage): State<ResilientStorage>) -> Response {
    let report = storage.health();
    let status = report.http_status();
    respond(status, report)
}

/// The readiness handler: the same report, with status
/// [`readiness_http_status`](crate::HealthReport::readiness_http_status): 200 while some
/// backend can serve, 503 only when none can.
pub async fn ready(State(storage): State<ResilientStorage>) -> Response {
    let report = storage.health();
    let status = report.readiness_http_status();
    respond(status, report)
}

fn respond(status: u16, report: crate::HealthReport) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = (status, Json(report)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
