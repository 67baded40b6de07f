//! The gRPC ingest service (`imprint.ingest.v1.Ingest`).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;

use futures::Stream;
use imprint_proto::ingest_v1::agent_config_server::AgentConfig;
use imprint_proto::ingest_v1::ingest_server::Ingest;
use imprint_proto::ingest_v1::{
    AgentSettings, FingerprintBatch, InventoryAck, InventoryReport, PushAck,
    WatchAgentConfigRequest,
};
use imprint_query::inuse::inventory::{Inventory, Package};
use imprint_query::inuse::state::Part;
use imprint_query::settings;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::engine::{Engine, now_micros};
use crate::revocation::end_when_token_invalid;
use crate::status::ingest_status;

#[derive(Debug, Clone)]
pub struct IngestService {
    engine: Arc<Engine>,
    new_agents: Arc<NewAgentLimit>,
}

impl IngestService {
    /// `max_new_agents_per_hour`: agent ids the server has never seen that one token may
    /// bring in per hour (`--max-new-agents-per-token-per-hour`).
    pub fn new(engine: Arc<Engine>, max_new_agents_per_hour: usize) -> Self {
        Self {
            engine,
            new_agents: Arc::new(NewAgentLimit::new(max_new_agents_per_hour)),
        }
    }

    /// The checks on who may write for `agent_id`: the token's binding, and the cap on new
    /// agent ids per token, so a stolen token cannot fill the server with agents.
    fn admit(&self, caller: &Caller, agent_id: &str) -> Result<(), Status> {
        caller.check_agent(agent_id)?;
        if !self.engine.knows_agent(agent_id) {
            self.new_agents.admit(caller, agent_id, now_micros())?;
        }
        Ok(())
    }
}

/// New agent ids per token per clock hour (in memory: a restart starts the count again).
#[derive(Debug)]
struct NewAgentLimit {
    max_per_hour: usize,
    /// token id ("" with auth off) → (hour, the new agent ids seen in it).
    seen: Mutex<HashMap<String, (i64, HashSet<String>)>>,
}

impl NewAgentLimit {
    fn new(max_per_hour: usize) -> Self {
        Self {
            max_per_hour,
            seen: Mutex::default(),
        }
    }

    fn admit(&self, caller: &Caller, agent_id: &str, now_micros: i64) -> Result<(), Status> {
        let hour = now_micros.div_euclid(3_600_000_000);
        let token = caller.token_id.clone().unwrap_or_default();
        let mut seen = self.seen.lock();
        seen.retain(|_, (h, _)| *h == hour);
        let (_, ids) = seen.entry(token).or_insert_with(|| (hour, HashSet::new()));
        if ids.contains(agent_id) {
            return Ok(());
        }
        if ids.len() >= self.max_per_hour {
            return Err(Status::resource_exhausted(format!(
                "token {} has brought in {} new agent ids this hour, the limit \
                 (--max-new-agents-per-token-per-hour); agent id {agent_id:?} is refused until \
                 the next hour",
                caller.token_id.as_deref().unwrap_or("(none: auth is off)"),
                ids.len()
            )));
        }
        ids.insert(agent_id.to_string());
        Ok(())
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn push(&self, request: Request<FingerprintBatch>) -> Result<Response<PushAck>, Status> {
        let caller = Caller::of(&request);
        let batch = request.into_inner();
        self.admit(&caller, &batch.agent_id)?;
        let ack = self.engine.push(batch).await.map_err(ingest_status)?;
        Ok(Response::new(ack))
    }

    async fn report_inventory(
        &self,
        request: Request<InventoryReport>,
    ) -> Result<Response<InventoryAck>, Status> {
        let caller = Caller::of(&request);
        let report = request.into_inner();
        caller.check_agent(&report.agent_id)?;
        let inventory = validate_inventory(&report).map_err(Status::invalid_argument)?;
        let ack = InventoryAck {
            packages: inventory.packages.len() as u64,
            files: inventory
                .packages
                .iter()
                .map(|p| p.files.len() as u64)
                .sum(),
        };
        self.engine
            .import_part(
                &report.image,
                Part::Inventory {
                    source: "agent".into(),
                    format: "runtime-scan".into(),
                    inventory,
                },
            )
            .await
            .map_err(|e| Status::internal(format!("storing the inventory: {e}")))?;
        tracing::info!(image = %report.image, agent = %report.agent_id, packages = ack.packages, files = ack.files, "runtime inventory stored");
        Ok(Response::new(ack))
    }
}

/// Limits of one inventory report (the agent's scanner stays below them).
const MAX_PACKAGES: usize = 20_000;
const MAX_FILES: usize = 1_000_000;
const MAX_SYMLINKS: usize = 100_000;
const MAX_TEXT: usize = 4096;

/// A path an inventory may hold: absolute, at most [`MAX_TEXT`] bytes, no NUL.
fn is_inventory_path(p: &str) -> bool {
    p.starts_with('/') && p.len() <= MAX_TEXT && !p.contains('\0')
}

/// Checks a report and turns it into an inventory; the error names the field.
fn validate_inventory(r: &InventoryReport) -> Result<Inventory, String> {
    imprint_proto::digest::check_digest(&r.image).map_err(|e| format!("image: {e}"))?;
    if r.packages.len() > MAX_PACKAGES {
        return Err(format!(
            "packages: {} is more than {MAX_PACKAGES}",
            r.packages.len()
        ));
    }
    let mut files = 0usize;
    let mut packages = Vec::with_capacity(r.packages.len());
    for (i, p) in r.packages.iter().enumerate() {
        let text = |field: &str, v: &str, required: bool| {
            if (required && v.is_empty()) || v.len() > MAX_TEXT || v.chars().any(char::is_control) {
                Err(format!(
                    "packages[{i}].{field}: {} (1 to {MAX_TEXT} bytes of printable text)",
                    if v.is_empty() { "empty" } else { "invalid" }
                ))
            } else {
                Ok(())
            }
        };
        text("name", &p.name, true)?;
        text("version", &p.version, false)?;
        text("type", &p.r#type, true)?;
        text("purl", &p.purl, false)?;
        text("source_package", &p.source_package, false)?;
        for (j, f) in p.files.iter().enumerate() {
            if !is_inventory_path(f) {
                return Err(format!(
                    "packages[{i}].files[{j}]: not an absolute path: {f:?}"
                ));
            }
        }
        files += p.files.len();
        if files > MAX_FILES {
            return Err(format!("packages: more than {MAX_FILES} files in all"));
        }
        packages.push(Package {
            name: p.name.clone(),
            version: p.version.clone(),
            kind: p.r#type.clone(),
            purl: p.purl.clone(),
            source_package: p.source_package.clone(),
            files: p.files.clone(),
        });
    }
    if r.symlinks.len() > MAX_SYMLINKS {
        return Err(format!(
            "symlinks: {} is more than {MAX_SYMLINKS}",
            r.symlinks.len()
        ));
    }
    for (alias, target) in &r.symlinks {
        if !is_inventory_path(alias) || !is_inventory_path(target) {
            let cut = |p: &str| p.chars().take(80).collect::<String>();
            return Err(format!(
                "symlinks: {:?} -> {:?}: both must be absolute paths of at most {MAX_TEXT} bytes",
                cut(alias),
                cut(target)
            ));
        }
    }
    Ok(Inventory {
        packages,
        symlinks: r
            .symlinks
            .iter()
            .map(|(a, t)| (a.clone(), t.clone()))
            .collect(),
    })
}

/// The agent-config service: streams the settings agents follow.
#[derive(Debug, Clone)]
pub struct AgentConfigService {
    engine: Arc<Engine>,
    /// Turns true when the server shuts down: open streams end then, so a
    /// graceful stop does not wait for them.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl AgentConfigService {
    pub fn new(engine: Arc<Engine>, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { engine, stop }
    }
}

fn agent_settings(engine: &Engine) -> AgentSettings {
    let state = engine.catalog_state();
    AgentSettings {
        profiling_enabled: settings::bool_value(&state.settings, settings::PROFILING_ENABLED),
        runtime_scanner_enabled: settings::bool_value(&state.settings, settings::EVE_ENABLED),
        version: state.seq,
    }
}

type AgentSettingsStream = Pin<Box<dyn Stream<Item = Result<AgentSettings, Status>> + Send>>;

#[tonic::async_trait]
impl AgentConfig for AgentConfigService {
    type WatchStream = AgentSettingsStream;

    async fn watch(
        &self,
        request: Request<WatchAgentConfigRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(&request);
        let agent = request.into_inner().agent_id;
        tracing::debug!(agent = %agent, "agent watching its config");
        let engine = self.engine.clone();
        let changes = engine.watch_meta();
        // First the current settings, then again whenever one an agent follows changes.
        let stop = self.stop.clone();
        let stream = futures::stream::unfold(
            (engine, changes, None::<AgentSettings>, stop),
            |(engine, mut changes, last, mut stop)| async move {
                loop {
                    if *stop.borrow() {
                        return None;
                    }
                    if last.is_some() {
                        tokio::select! {
                            changed = changes.changed() => if changed.is_err() { return None },
                            _ = stop.wait_for(|s| *s) => return None,
                        }
                    }
                    let now = agent_settings(&engine);
                    let differs = last.as_ref().is_none_or(|b| {
                        b.profiling_enabled != now.profiling_enabled
                            || b.runtime_scanner_enabled != now.runtime_scanner_enabled
                    });
                    if differs {
                        return Some((Ok(now), (engine, changes, Some(now), stop)));
                    }
                }
            },
        );
        let stream = end_when_token_invalid(self.engine.clone(), caller, Box::pin(stream));
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imprint_proto::ingest_v1::Package as WirePackage;

    fn report(files: &[&str]) -> InventoryReport {
        InventoryReport {
            agent_id: "a".into(),
            image: format!("sha256:{}", "ab".repeat(32)),
            image_name: "x:1".into(),
            packages: vec![WirePackage {
                name: "sed".into(),
                version: "4.9-1".into(),
                r#type: "deb".into(),
                files: files.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            }],
            symlinks: [("/bin".to_string(), "/usr/bin".to_string())].into(),
        }
    }

    #[test]
    fn an_inventory_report_is_checked_field_by_field() {
        let inv = validate_inventory(&report(&["/bin/sed"])).unwrap();
        assert_eq!(inv.packages[0].files, vec!["/bin/sed"]);
        assert_eq!(inv.symlinks["/bin"], "/usr/bin");
        let e = validate_inventory(&report(&["bin/sed"])).unwrap_err();
        assert_eq!(e, "packages[0].files[0]: not an absolute path: \"bin/sed\"");
        let mut r = report(&[]);
        r.packages[0].name.clear();
        assert!(
            validate_inventory(&r)
                .unwrap_err()
                .starts_with("packages[0].name: empty")
        );
        r.image = "latest".into();
        assert!(validate_inventory(&r).unwrap_err().starts_with("image: "));
    }

    #[test]
    fn symlinks_are_bounded_in_count_and_length() {
        let mut r = report(&[]);
        r.symlinks = (0..=MAX_SYMLINKS)
            .map(|i| (format!("/l{i}"), "/t".to_string()))
            .collect();
        let e = validate_inventory(&r).unwrap_err();
        assert!(e.starts_with("symlinks: 100001 is more than 100000"), "{e}");
        r.symlinks = [(format!("/{}", "a".repeat(MAX_TEXT)), "/t".to_string())].into();
        let e = validate_inventory(&r).unwrap_err();
        assert!(e.contains("at most 4096 bytes"), "{e}");
        r.symlinks = [("/a".to_string(), "rel".to_string())].into();
        assert!(validate_inventory(&r).is_err());
    }
}
