//! The health endpoint (feature `http`): an [axum] handler that serves
//! [`ResilientStorage::health`] as JSON, with status 200 while every backend is healthy and 503
//! when the storage is degraded or unhealthy, so a load balancer or orchestrator can act on it.
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

/// A router serving `GET` [`HEALTH_PATH`] for `storage`; merge it into the service's own.
pub fn health_routes(storage: ResilientStorage) -> axum::Router {
    axum::Router::new()
        .route(HEALTH_PATH, get(health))
        .with_state(storage)
}

/// The handler: the [`HealthReport`](crate::HealthReport) as JSON, with status
/// [`http_status`](crate::HealthReport::http_status) (200 or 503), never cached.
pub async fn health(State(storage): State<ResilientStorage>) -> Response {
    let report = storage.health();
    let status =
        StatusCode::from_u16(report.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = (status, Json(report)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
