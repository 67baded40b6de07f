//! The admin gRPC service (`imprint.admin.v1.Admin`): tokens and settings. Scopes
//! are checked by the auth layer before a call gets here.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use imprint_proto::admin_v1::admin_server::Admin;
use imprint_proto::admin_v1::{
    CreateTokenRequest, CreateTokenResponse, DeletePolicyRequest, DeletePolicyResponse,
    GetSettingsRequest, GetSettingsResponse, ImportAdvisoriesRequest, ImportResponse,
    ImportSbomRequest, ImportVulnsRequest, ListTokensRequest, ListTokensResponse, PutPolicyRequest,
    PutPolicyResponse, ResetProfileRequest, ResetProfileResponse, RevokeTokenRequest,
    RevokeTokenResponse, SetLearningPeriodRequest, SetLearningPeriodResponse, SetSettingRequest,
    SetSettingResponse, Setting, TokenInfo,
};
use imprint_proto::digest::check_digest;
use imprint_query::catalog::{Commit, TokenRecord};
use imprint_query::inuse::state::Part;
use imprint_query::inuse::{sbom, vulns};
use imprint_query::policy::{DEFAULT_THROTTLE_SECONDS, Policy, Severity};
use imprint_query::profile::{Category, ConfidenceLevel};
use imprint_query::settings;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::auth::{Scope, new_secret, new_token_id, sha256_hex};
use crate::engine::{Engine, EngineError, now_micros};

/// The file, under the data directory, that holds the first admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

#[derive(Debug, Clone)]
pub struct AdminService {
    engine: Arc<Engine>,
}

impl AdminService {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

fn internal(e: EngineError) -> Status {
    Status::internal(format!("committing to the catalog: {e}"))
}

pub fn token_info(t: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        scopes: t.scopes.clone(),
        created_unix_micros: t.created_micros,
        expires_unix_micros: t.expires_micros.unwrap_or(0),
        revoked: t.revoked,
        agent_ids: t.agent_ids.clone(),
    }
}

/// Creates a token and commits it. Returns the record and its secret.
pub async fn create_token(
    engine: &Engine,
    name: &str,
    scopes: &[String],
    expires_in_seconds: u64,
    agent_ids: &[String],
) -> Result<(TokenRecord, String), Status> {
    let secret = new_secret();
    create_token_with_secret(engine, name, scopes, expires_in_seconds, agent_ids, secret).await
}

/// Most agent ids one token may be bound to.
pub const MAX_TOKEN_AGENT_IDS: usize = 64;

/// [`create_token`] for a secret made (and stored somewhere) beforehand.
async fn create_token_with_secret(
    engine: &Engine,
    name: &str,
    scopes: &[String],
    expires_in_seconds: u64,
    agent_ids: &[String],
    secret: String,
) -> Result<(TokenRecord, String), Status> {
    let name = name.trim();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "name: 1 to 128 bytes of printable text",
        ));
    }
    if scopes.is_empty() {
        return Err(Status::invalid_argument(
            "scopes: at least one of admin, agent, read, export",
        ));
    }
    let mut clean: Vec<String> = Vec::new();
    for s in scopes {
        let Some(scope) = Scope::parse(s) else {
            return Err(Status::invalid_argument(format!(
                "scopes: unknown scope {s:?} (admin, agent, read, export)"
            )));
        };
        if !clean.iter().any(|c| c == scope.name()) {
            clean.push(scope.name().to_string());
        }
    }
    if agent_ids.len() > MAX_TOKEN_AGENT_IDS {
        return Err(Status::invalid_argument(format!(
            "agent_ids: {} is more than {MAX_TOKEN_AGENT_IDS}",
            agent_ids.len()
        )));
    }
    for (i, id) in agent_ids.iter().enumerate() {
        crate::validate::check_agent_id(id)
            .map_err(|p| Status::invalid_argument(format!("agent_ids[{i}]: {p}")))?;
    }
    if !agent_ids.is_empty() && !clean.iter().any(|c| c == Scope::Agent.name()) {
        return Err(Status::invalid_argument(
            "agent_ids: only a token with the agent scope can be bound to agent ids",
        ));
    }
    let now = now_micros();
    let expires_micros = match expires_in_seconds {
        0 => None,
        s => Some(
            now.saturating_add(
                i64::try_from(s)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000),
            ),
        ),
    };
    let record = TokenRecord {
        id: new_token_id(),
        name: name.to_string(),
        scopes: clean,
        sha256: sha256_hex(&secret),
        created_micros: now,
        expires_micros,
        revoked: false,
        agent_ids: agent_ids.to_vec(),
    };
    engine
        .commit_meta(Commit {
            tokens: vec![record.clone()],
            ..Default::default()
        })
        .await
        .map_err(internal)?;
    info!(id = %record.id, name = %record.name, scopes = ?record.scopes, agent_ids = ?record.agent_ids, "token created");
    Ok((record, secret))
}

/// On a store without tokens, creates an admin token and writes it to
/// `<data-dir>/admin-token` with mode 0600. Returns the file's path when it did.
///
/// The file is created first, with `O_CREAT | O_EXCL` and mode 0600: a symlink
/// or a file someone planted at that path is never written through, and the secret is on
/// disk, readable only by this user, before the token is committed anywhere. If the commit
/// fails the file is removed again.
pub async fn bootstrap_admin_token(
    engine: &Engine,
    data_dir: &Path,
) -> Result<Option<std::path::PathBuf>, Status> {
    if !engine.catalog_state().tokens.is_empty() {
        return Ok(None);
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Status::internal(format!("creating {}: {e}", data_dir.display())))?;
    let secret = new_secret();
    write_new_private(&path, &format!("{secret}\n")).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Status::failed_precondition(format!(
                "the store has no tokens, but {} already exists (left from another store, or planted): move it away and start again",
                path.display()
            ))
        } else {
            Status::internal(format!("writing {}: {e}", path.display()))
        }
    })?;
    if let Err(e) = create_token_with_secret(
        engine,
        "initial admin",
        &["admin".to_string()],
        0,
        &[],
        secret,
    )
    .await
    {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(Some(path))
}

/// Creates `path` (never through a symlink, never over an existing file) with mode 0600.
fn write_new_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?; // O_CREAT | O_EXCL: fails on any existing path, a symlink included
    f.write_all(content.as_bytes())?;
    f.sync_all()
}

/// Every setting; secret values only when `reveal` (an admin caller).
pub fn settings_list(stored: &BTreeMap<String, String>, reveal: bool) -> Vec<Setting> {
    settings::SETTINGS
        .iter()
        .map(|d| Setting {
            key: d.key.to_string(),
            value: settings::display_value(stored, d.key, reveal),
            default_value: d.default.to_string(),
            description: d.description.to_string(),
            for_agents: d.for_agents,
        })
        .collect()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let r = request.into_inner();
        let (record, secret) = create_token(
            &self.engine,
            &r.name,
            &r.scopes,
            r.expires_in_seconds,
            &r.agent_ids,
        )
        .await?;
        Ok(Response::new(CreateTokenResponse {
            token: Some(token_info(&record)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let state = self.engine.catalog_state();
        let mut tokens: Vec<TokenInfo> = state.tokens.values().map(token_info).collect();
        tokens.sort_by_key(|t| t.created_unix_micros);
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let id = request.into_inner().id;
        let state = self.engine.catalog_state();
        let Some(mut t) = state.tokens.get(&id).cloned() else {
            return Err(Status::not_found(format!(
                "no token {id:?} (imprint token list shows them)"
            )));
        };
        t.revoked = true;
        self.engine
            .commit_meta(Commit {
                tokens: vec![t.clone()],
                ..Default::default()
            })
            .await
            .map_err(internal)?;
        warn!(id = %t.id, name = %t.name, "token revoked");
        Ok(Response::new(RevokeTokenResponse {
            token: Some(token_info(&t)),
        }))
    }

    async fn set_setting(
        &self,
        request: Request<SetSettingRequest>,
    ) -> Result<Response<SetSettingResponse>, Status> {
        let r = request.into_inner();
        let value = settings::validate(&r.key, &r.value).map_err(Status::invalid_argument)?;
        let state = self
            .engine
            .commit_meta(Commit {
                settings: BTreeMap::from([(r.key.clone(), value.clone())]),
                ..Default::default()
            })
            .await
            .map_err(internal)?;
        let logged = settings::display_value(&state.settings, &r.key, false);
        info!(key = %r.key, value = %logged, "setting changed");
        if r.key == settings::FINGERPRINT_RETENTION {
            // Apply a shorter retention now rather than at the next round.
            self.engine.apply_retention().await.map_err(internal)?;
        }
        let setting = settings_list(&state.settings, true)
            .into_iter()
            .find(|s| s.key == r.key);
        Ok(Response::new(SetSettingResponse { setting }))
    }

    async fn get_settings(
        &self,
        request: Request<GetSettingsRequest>,
    ) -> Result<Response<GetSettingsResponse>, Status> {
        let reveal = crate::auth::Caller::of(&request).admin;
        Ok(Response::new(GetSettingsResponse {
            settings: settings_list(&self.engine.catalog_state().settings, reveal),
        }))
    }

    async fn reset_profile(
        &self,
        request: Request<ResetProfileRequest>,
    ) -> Result<Response<ResetProfileResponse>, Status> {
        let image = request.into_inner().image;
        check_digest(&image).map_err(|e| Status::invalid_argument(format!("image: {e}")))?;
        match self.engine.reset_profile(&image).await {
            Ok(r) => Ok(Response::new(ResetProfileResponse {
                reset_unix_micros: r.reset_at,
            })),
            Err(EngineError::NotFound(m)) => Err(Status::not_found(m)),
            Err(e) => Err(internal(e)),
        }
    }

    async fn set_learning_period(
        &self,
        request: Request<SetLearningPeriodRequest>,
    ) -> Result<Response<SetLearningPeriodResponse>, Status> {
        let r = request.into_inner();
        check_digest(&r.image).map_err(|e| Status::invalid_argument(format!("image: {e}")))?;
        let period = match r.learning_period.trim() {
            "" => None,
            p => {
                settings::parse_duration(p)
                    .map_err(|e| Status::invalid_argument(format!("learning_period: {e}")))?;
                Some(p.to_string())
            }
        };
        self.engine
            .set_learning_period(&r.image, period.clone())
            .await
            .map_err(internal)?;
        info!(image = %r.image, learning_period = ?period, "image learning period set");
        Ok(Response::new(SetLearningPeriodResponse {}))
    }

    async fn import_sbom(
        &self,
        request: Request<ImportSbomRequest>,
    ) -> Result<Response<ImportResponse>, Status> {
        let r = request.into_inner();
        check_digest(&r.image).map_err(|e| Status::invalid_argument(format!("image: {e}")))?;
        let root = if r.root.is_empty() {
            "/"
        } else {
            r.root.as_str()
        };
        if !root.starts_with('/') {
            return Err(Status::invalid_argument(format!(
                "root: {root:?} is not an absolute path inside the image"
            )));
        }
        let (format, inventory) = sbom::parse(&r.document, root)
            .map_err(|e| Status::invalid_argument(format!("SBOM: {e}")))?;
        let response = ImportResponse {
            format: format.name().to_string(),
            packages: inventory.packages.len() as u64,
            files: inventory
                .packages
                .iter()
                .map(|p| p.files.len() as u64)
                .sum(),
            ..Default::default()
        };
        self.engine
            .import_part(
                &r.image,
                Part::Inventory {
                    source: "sbom".into(),
                    format: format.name().into(),
                    inventory,
                },
            )
            .await
            .map_err(internal)?;
        info!(image = %r.image, format = response.format, packages = response.packages, files = response.files, "SBOM imported");
        Ok(Response::new(response))
    }

    async fn import_vulns(
        &self,
        request: Request<ImportVulnsRequest>,
    ) -> Result<Response<ImportResponse>, Status> {
        let r = request.into_inner();
        check_digest(&r.image).map_err(|e| Status::invalid_argument(format!("image: {e}")))?;
        let (format, vulnerabilities) = vulns::parse_report(&r.report)
            .map_err(|e| Status::invalid_argument(format!("report: {e}")))?;
        let response = ImportResponse {
            format: format.name().to_string(),
            vulnerabilities: vulnerabilities.len() as u64,
            ..Default::default()
        };
        self.engine
            .import_part(
                &r.image,
                Part::Report {
                    format: format.name().into(),
                    vulnerabilities,
                },
            )
            .await
            .map_err(internal)?;
        info!(image = %r.image, format = response.format, vulnerabilities = response.vulnerabilities, "scanner report imported");
        Ok(Response::new(response))
    }

    async fn import_advisories(
        &self,
        request: Request<ImportAdvisoriesRequest>,
    ) -> Result<Response<ImportResponse>, Status> {
        let docs = request.into_inner().documents;
        if docs.is_empty() {
            return Err(Status::invalid_argument(
                "documents: no OSV documents given",
            ));
        }
        // All or nothing: one bad document refuses the import, naming it.
        let advisories = docs
            .iter()
            .map(|d| vulns::parse_osv(&d.json, &d.name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let n = advisories.len() as u64;
        self.engine
            .import_advisories(advisories)
            .await
            .map_err(internal)?;
        info!(advisories = n, "OSV advisories imported");
        Ok(Response::new(ImportResponse {
            format: "osv".into(),
            advisories: n,
            ..Default::default()
        }))
    }

    async fn put_policy(
        &self,
        request: Request<PutPolicyRequest>,
    ) -> Result<Response<PutPolicyResponse>, Status> {
        let r = request.into_inner();
        let policy = policy_from_request(&r, now_micros()).map_err(Status::invalid_argument)?;
        let name = policy.name.clone();
        match self.engine.put_policy(policy, r.replace).await {
            Ok(()) => {
                info!(policy = %name, replace = r.replace, "policy stored");
                Ok(Response::new(PutPolicyResponse {}))
            }
            Err(EngineError::Exists(m)) => Err(Status::already_exists(m)),
            Err(e) => Err(internal(e)),
        }
    }

    async fn delete_policy(
        &self,
        request: Request<DeletePolicyRequest>,
    ) -> Result<Response<DeletePolicyResponse>, Status> {
        let name = request.into_inner().name;
        match self.engine.delete_policy(&name).await {
            Ok(()) => {
                info!(policy = %name, "policy deleted");
                Ok(Response::new(DeletePolicyResponse {}))
            }
            Err(EngineError::NotFound(m)) => Err(Status::not_found(m)),
            Err(e) => Err(internal(e)),
        }
    }
}

/// A policy from its request, with the documented defaults; the error names the
/// field at fault.
pub fn policy_from_request(r: &PutPolicyRequest, now: i64) -> Result<Policy, String> {
    let mut categories = Vec::new();
    for c in &r.categories {
        let c = c.trim();
        let Some(category) = Category::ALL.into_iter().find(|x| x.name() == c) else {
            return Err(format!(
                "categories: unknown category {c:?} (network, processes, files, syscalls)"
            ));
        };
        if !categories.contains(&category) {
            categories.push(category);
        }
    }
    if categories.is_empty() {
        categories = Category::ALL.to_vec();
    }
    let min_confidence = match r.min_confidence.trim() {
        "" => ConfidenceLevel::High,
        c => ConfidenceLevel::from_name(c)
            .ok_or_else(|| format!("min_confidence: {c:?} is not low, medium or high"))?,
    };
    let severity = match r.severity.trim() {
        "" => Severity::default(),
        s => Severity::from_name(s)
            .ok_or_else(|| format!("severity: {s:?} is not low, medium, high or critical"))?,
    };
    let policy = Policy {
        name: r.name.trim().to_string(),
        scope: r.scope.trim().to_string(),
        categories,
        min_confidence,
        severity,
        enabled: !r.disabled,
        throttle_seconds: match r.throttle_seconds {
            0 => DEFAULT_THROTTLE_SECONDS,
            t => t,
        },
        created_micros: now,
    };
    policy.validate()?;
    Ok(policy)
}
