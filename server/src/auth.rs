//! Bearer tokens with scopes, checked on every gRPC path and HTTP route.
//!
//! A token's secret (`imp_` + 64 hex characters, 256 random bits) is shown once
//! when created; the catalog stores only its SHA-256, so a copy of the bucket
//! gives no access. A token with the `admin` scope may do everything.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use imprint_query::catalog::TokenRecord;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::engine::{Engine, now_micros};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Admin,
    Agent,
    Read,
    Export,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Admin, Scope::Agent, Scope::Read, Scope::Export];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Agent => "agent",
            Scope::Read => "read",
            Scope::Export => "export",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No, unknown, revoked or expired token (gRPC UNAUTHENTICATED, HTTP 401).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token without the scope needed (PERMISSION_DENIED, HTTP 403).
    #[error("{0}")]
    PermissionDenied(String),
}

pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("imp_{}", hex(&bytes))
}

pub fn new_token_id() -> String {
    let mut bytes = [0u8; 5];
    rand::rng().fill_bytes(&mut bytes);
    format!("tok_{}", hex(&bytes))
}

pub fn sha256_hex(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The scope a gRPC method needs; `None` for the Flight handshake, which checks
/// the credentials it is given itself.
pub fn scope_for_grpc_path(path: &str) -> Option<Scope> {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match (service, path) {
        (_, "/arrow.flight.protocol.FlightService/Handshake") => None,
        ("arrow.flight.protocol.FlightService", _) => Some(Scope::Read),
        ("imprint.ingest.v1.Ingest" | "imprint.ingest.v1.AgentConfig", _) => Some(Scope::Agent),
        (_, "/imprint.admin.v1.Admin/GetSettings") => Some(Scope::Read),
        ("imprint.alerts.v1.Alerts", _) => Some(Scope::Read),
        // Admin calls, and anything unknown.
        _ => Some(Scope::Admin),
    }
}

#[derive(Debug, Clone)]
pub struct Auth {
    engine: Arc<Engine>,
    enabled: bool,
}

impl Auth {
    pub fn new(engine: Arc<Engine>, enabled: bool) -> Self {
        Self { engine, enabled }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Checks an `authorization` header value for `scope`.
    pub fn check_header(
        &self,
        header: Option<&str>,
        scope: Scope,
    ) -> Result<Option<TokenRecord>, AuthError> {
        if !self.enabled {
            return Ok(None);
        }
        let Some(header) = header else {
            return Err(AuthError::Unauthenticated(format!(
                "no token: send `authorization: Bearer <token>` with a token of scope {:?} (create one with `imprint token create`)",
                scope.name()
            )));
        };
        let Some(secret) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
        else {
            return Err(AuthError::Unauthenticated(
                "the authorization header is not `Bearer <token>`".into(),
            ));
        };
        self.check_secret(secret.trim(), scope).map(Some)
    }

    /// Checks a token secret for `scope`.
    pub fn check_secret(&self, secret: &str, scope: Scope) -> Result<TokenRecord, AuthError> {
        let hash = sha256_hex(secret);
        let state = self.engine.catalog_state();
        let Some(t) = state.tokens.values().find(|t| t.sha256 == hash) else {
            return Err(AuthError::Unauthenticated("unknown token".into()));
        };
        if let Some(problem) = no_longer_valid(t) {
            return Err(AuthError::Unauthenticated(problem));
        }
        let has = |s: Scope| t.scopes.iter().any(|x| x == s.name());
        if !has(scope) && !has(Scope::Admin) {
            return Err(AuthError::PermissionDenied(format!(
                "token {} ({}) has scopes [{}]; this needs {:?}",
                t.id,
                t.name,
                t.scopes.join(", "),
                scope.name()
            )));
        }
        Ok(t.clone())
    }
}

/// Why a stored token no longer admits anyone (revoked, expired), if so.
pub fn no_longer_valid(t: &TokenRecord) -> Option<String> {
    if t.revoked {
        return Some(format!("token {} ({}) was revoked", t.id, t.name));
    }
    let exp = t.expires_micros.filter(|&exp| exp <= now_micros())?;
    let when = chrono::DateTime::from_timestamp_micros(exp)
        .map(|d| d.to_rfc3339())
        .unwrap_or_default();
    Some(format!("token {} ({}) expired at {when}", t.id, t.name))
}

/// Who sent a gRPC request, as [`GrpcAuthLayer`] found: a request extension, so handlers can
/// keep what one token made apart from another's.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The token's id; `None` with authentication off (`--insecure-no-auth`) or on routes
    /// that need no token.
    pub token_id: Option<String>,
    /// The token's name, for messages.
    pub token_name: String,
    /// The agent ids the token is bound to; empty means any.
    pub agent_ids: Vec<String>,
    /// When the token expires (µs since the epoch), if it does.
    pub expires_micros: Option<i64>,
    /// Whether the token has the admin scope (true with authentication off).
    pub admin: bool,
}

impl Caller {
    fn of_token(token: Option<TokenRecord>) -> Caller {
        match token {
            None => Caller {
                admin: true,
                ..Caller::default()
            },
            Some(t) => Caller {
                admin: t.scopes.iter().any(|s| s == Scope::Admin.name()),
                token_id: Some(t.id),
                token_name: t.name,
                agent_ids: t.agent_ids,
                expires_micros: t.expires_micros,
            },
        }
    }

    /// Refuses `agent_id` when the token is bound to other agent ids.
    pub fn check_agent(&self, agent_id: &str) -> Result<(), tonic::Status> {
        if self.agent_ids.is_empty() || self.agent_ids.iter().any(|a| a == agent_id) {
            return Ok(());
        }
        Err(tonic::Status::permission_denied(format!(
            "token {} ({}) may only push for agent ids [{}], not {agent_id:?}",
            self.token_id.as_deref().unwrap_or("?"),
            self.token_name,
            self.agent_ids.join(", ")
        )))
    }
}

impl Caller {
    /// The caller of `request` (nobody in particular if the auth layer did not run).
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_default()
    }
}

/// A tower layer that checks the scope of every gRPC request by its path.
#[derive(Debug, Clone)]
pub struct GrpcAuthLayer {
    auth: Auth,
}

impl GrpcAuthLayer {
    pub fn new(auth: Auth) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;

    fn layer(&self, inner: S) -> GrpcAuth<S> {
        GrpcAuth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    auth: Auth,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let decision = match scope_for_grpc_path(req.uri().path()) {
            None => Ok(None),
            Some(scope) => {
                let header = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                self.auth.check_header(header, scope)
            }
        };
        match decision {
            Ok(token) => {
                let mut req = req;
                req.extensions_mut().insert(Caller::of_token(token));
                Box::pin(self.inner.call(req))
            }
            Err(e) => {
                let status = crate::status::auth_status(e);
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_scopes() {
        assert_eq!(
            scope_for_grpc_path("/imprint.ingest.v1.Ingest/Push"),
            Some(Scope::Agent)
        );
        assert_eq!(
            scope_for_grpc_path("/imprint.ingest.v1.AgentConfig/Watch"),
            Some(Scope::Agent)
        );
        assert_eq!(
            scope_for_grpc_path("/arrow.flight.protocol.FlightService/DoGet"),
            Some(Scope::Read)
        );
        assert_eq!(
            scope_for_grpc_path("/arrow.flight.protocol.FlightService/Handshake"),
            None
        );
        assert_eq!(
            scope_for_grpc_path("/imprint.admin.v1.Admin/CreateToken"),
            Some(Scope::Admin)
        );
        assert_eq!(
            scope_for_grpc_path("/imprint.admin.v1.Admin/GetSettings"),
            Some(Scope::Read)
        );
        assert_eq!(
            scope_for_grpc_path("/imprint.alerts.v1.Alerts/WatchAnomalies"),
            Some(Scope::Read)
        );
        assert_eq!(
            scope_for_grpc_path("/grpc.reflection.v1.ServerReflection/X"),
            Some(Scope::Admin)
        );
    }

    #[test]
    fn secrets_are_random_and_hash_stably() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 68);
        assert_eq!(sha256_hex("x"), sha256_hex("x"));
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
