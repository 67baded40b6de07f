//! HTTP: `/healthz` (engine figures as JSON).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;

use crate::auth::Scope;
use crate::engine::Engine;
use crate::export::{OPENVEX_PATH, RESULTS_PATH, VULNERABILITIES_PATH};

pub const HEALTHZ_PATH: &str = "/healthz";

/// Every HTTP route (all GET) and the scope it needs (`None`: open). The routers are built
/// from the same path constants; the access matrix (tests/tests/access.rs) goes over this list.
pub const HTTP_ROUTES: &[(&str, Option<Scope>)] = &[
    (HEALTHZ_PATH, None),
    (RESULTS_PATH, Some(Scope::Export)),
    (VULNERABILITIES_PATH, Some(Scope::Export)),
    (OPENVEX_PATH, Some(Scope::Export)),
];

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route(HEALTHZ_PATH, get(healthz))
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
