//! HTTP: `/healthz` (engine figures as JSON).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;

use crate::engine::Engine;

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(engine)
}

async fn healthz(State(engine): State<Arc<Engine>>) -> impl IntoResponse {
    let stats = engine.stats();
    let status = if stats.wal_failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "status": if stats.wal_failed { "wal_failed" } else { "ok" },
        "engine": stats,
        "alerts": engine.alert_stats().to_json(),
    });
    (status, Json(body))
}
