//! The runtime-results export API (HTTP, JSON): what third-party tools read to
//! prioritise vulnerabilities by use. Needs a token with the `export` scope, and
//! answers only while the `eve_connector.enabled` setting is on (404 otherwise).
//! Schema and examples: `docs/export-api.md`.
//!
//! - `GET /api/v1/runtime-results` — per image: name, digest, counts by severity
//!   of all and of in-use vulnerabilities;
//! - `GET /api/v1/runtime-results/{digest}/vulnerabilities?in_use=&limit=&cursor=`;
//! - `GET /api/v1/runtime-results/{digest}/openvex` — an OpenVEX 0.2.0 document.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use imprint_proto::digest::check_digest;
use imprint_query::inuse::state::RuntimeVulnerability;
use imprint_query::prune::PartitionFilter;
use imprint_query::settings;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Auth, AuthError, Scope};
use crate::engine::{Engine, now_micros};

const SEVERITIES: [&str; 6] = ["critical", "high", "medium", "low", "negligible", "unknown"];
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Clone)]
struct Ctx {
    engine: Arc<Engine>,
    auth: Auth,
}

pub const RESULTS_PATH: &str = "/api/v1/runtime-results";
pub const VULNERABILITIES_PATH: &str = "/api/v1/runtime-results/{digest}/vulnerabilities";
pub const OPENVEX_PATH: &str = "/api/v1/runtime-results/{digest}/openvex";

pub fn router(engine: Arc<Engine>, auth: Auth) -> Router {
    Router::new()
        .route(RESULTS_PATH, get(list))
        .route(VULNERABILITIES_PATH, get(vulnerabilities))
        .route(OPENVEX_PATH, get(openvex))
        .with_state(Ctx { engine, auth })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError(status, message.into()).into_response()
}

/// An error answer: `{"error": "…"}` with its status (small, for `Result`s).
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

/// The scope and the switch, checked before anything else.
fn admit(ctx: &Ctx, headers: &HeaderMap) -> Result<(), ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match ctx.auth.check_header(header, Scope::Export) {
        Ok(_) => {}
        Err(AuthError::Unauthenticated(m)) => return Err(ApiError(StatusCode::UNAUTHORIZED, m)),
        Err(AuthError::PermissionDenied(m)) => return Err(ApiError(StatusCode::FORBIDDEN, m)),
    }
    let state = ctx.engine.catalog_state();
    if !settings::bool_value(&state.settings, settings::EVE_CONNECTOR_ENABLED) {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "the export API is off: an admin turns it on with \
             `imprint settings set eve_connector.enabled true`"
                .into(),
        ));
    }
    Ok(())
}

fn counts<'a>(rows: impl Iterator<Item = &'a RuntimeVulnerability>) -> Value {
    let mut by: BTreeMap<&str, u64> = SEVERITIES.iter().map(|s| (*s, 0)).collect();
    for r in rows {
        *by.entry(r.vulnerability.severity.as_str()).or_default() += 1;
    }
    json!(by)
}

async fn list(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    if let Err(r) = admit(&ctx, &headers) {
        return r.into_response();
    }
    let snap = ctx.engine.inuse_snapshot(&PartitionFilter::all());
    let images: Vec<Value> = snap
        .images
        .iter()
        .map(|(digest, name, profile)| {
            let rows = snap
                .state
                .runtime(digest, profile.as_ref(), snap.compute_use);
            json!({
                "image_name": name,
                "image_digest": digest,
                "in_use_computed": snap.compute_use,
                "vulnerabilities": {
                    "total": rows.len(),
                    "in_use": rows.iter().filter(|r| r.in_use == Some(true)).count(),
                    "by_severity": counts(rows.iter()),
                    "in_use_by_severity": counts(rows.iter().filter(|r| r.in_use == Some(true))),
                },
                "last_seen": profile.as_ref().and_then(|p| p.observed.last()).map(rfc3339),
            })
        })
        .collect();
    Json(json!({ "images": images })).into_response()
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    in_use: Option<bool>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// The image's rows, or the error response for an unknown or malformed digest.
fn image_rows(ctx: &Ctx, digest: &str) -> Result<(String, Vec<RuntimeVulnerability>), ApiError> {
    check_digest(digest).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("digest: {e}")))?;
    let filter = PartitionFilter {
        images: Some([digest.to_string()].into()),
        ..PartitionFilter::all()
    };
    let snap = ctx.engine.inuse_snapshot(&filter);
    let Some((_, name, profile)) = snap.images.first() else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no runtime results for {digest}: no SBOM, report or inventory was imported for it"
            ),
        ));
    };
    Ok((
        name.clone(),
        snap.state
            .runtime(digest, profile.as_ref(), snap.compute_use),
    ))
}

fn vulnerability_json(r: &RuntimeVulnerability) -> Value {
    let v = &r.vulnerability;
    json!({
        "id": v.vuln_id,
        "aliases": v.aliases.split(',').filter(|a| !a.is_empty()).collect::<Vec<_>>(),
        "package": v.package,
        "version": v.version,
        "severity": v.severity,
        "fixed_version": (!v.fixed_version.is_empty()).then_some(&v.fixed_version),
        "source": r.source,
        "in_use": r.in_use,
        "evidence_path": r.used.as_ref().map(|u| &u.evidence_path),
        "first_used": r.used.as_ref().map(|u| rfc3339(u.first_used)),
        "last_used": r.used.as_ref().map(|u| rfc3339(u.last_used)),
    })
}

async fn vulnerabilities(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(digest): Path<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = admit(&ctx, &headers) {
        return r.into_response();
    }
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query: in_use is true or false, limit a number, cursor the next_cursor of a page",
        );
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit: 1 to {MAX_LIMIT}, not {limit}"),
        );
    }
    let offset: usize = match q.cursor.as_deref().map(str::parse) {
        None => 0,
        Some(Ok(o)) => o,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "cursor: pass the next_cursor of the previous page unchanged",
            );
        }
    };
    let (name, rows) = match image_rows(&ctx, &digest) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let selected: Vec<&RuntimeVulnerability> = rows
        .iter()
        .filter(|r| q.in_use.is_none_or(|want| r.in_use == Some(want)))
        .collect();
    let page: Vec<Value> = selected
        .iter()
        .skip(offset)
        .take(limit)
        .map(|r| vulnerability_json(r))
        .collect();
    let next = (offset + page.len() < selected.len()).then(|| (offset + page.len()).to_string());
    Json(json!({
        "image_name": name,
        "image_digest": digest,
        "total": selected.len(),
        "vulnerabilities": page,
        "next_cursor": next,
    }))
    .into_response()
}

/// OpenVEX 0.2.0: in use → `affected`; not observed → `under_investigation` —
/// never `not_affected`, since a package not loaded so far is still present.
async fn openvex(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(digest): Path<String>,
) -> Response {
    if let Err(r) = admit(&ctx, &headers) {
        return r.into_response();
    }
    let (name, rows) = match image_rows(&ctx, &digest) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let now = rfc3339(now_micros());
    let product = format!(
        "pkg:oci/{}@{}",
        name.rsplit('/')
            .next()
            .unwrap_or(&name)
            .split(':')
            .next()
            .unwrap_or(""),
        digest.replace(':', "%3A")
    );
    let statements: Vec<Value> = rows
        .iter()
        .map(|r| {
            let v = &r.vulnerability;
            let mut s = json!({
                "vulnerability": {
                    "name": v.vuln_id,
                    "aliases": v.aliases.split(',').filter(|a| !a.is_empty() && *a != v.vuln_id).collect::<Vec<_>>(),
                },
                "products": [{
                    "@id": product,
                    "subcomponents": [{"@id": format!("{}@{}", v.package, v.version)}],
                }],
                "timestamp": now,
            });
            if r.in_use == Some(true) {
                s["status"] = json!("affected");
                s["action_statement"] = json!(match v.fixed_version.as_str() {
                    "" => "The package is loaded at runtime; no fixed version is known: mitigate or replace it.".to_string(),
                    f => format!("The package is loaded at runtime: update {} to {f} or later.", v.package),
                });
                if let Some(u) = &r.used {
                    s["status_notes"] = json!(format!(
                        "Imprint observed {} in use since {}.",
                        u.evidence_path,
                        rfc3339(u.first_used)
                    ));
                }
            } else {
                s["status"] = json!("under_investigation");
                s["status_notes"] = json!(match r.in_use {
                    Some(false) => "Not observed in use at runtime so far; not loaded is not the same as not present.",
                    _ => "Use at runtime is not known (runtime_scanner.eve_enabled off, or no file list for the package).",
                });
            }
            s
        })
        .collect();
    Json(json!({
        "@context": "https://openvex.dev/ns/v0.2.0",
        "@id": format!("https://imprint.invalid/vex/{digest}/{}", now_micros()),
        "author": "Imprint",
        "role": "runtime observation",
        "timestamp": now,
        "version": 1,
        "tooling": "imprint",
        "statements": statements,
    }))
    .into_response()
}
