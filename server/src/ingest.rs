//! The gRPC ingest service (`imprint.ingest.v1.Ingest`).

use std::sync::Arc;

use std::pin::Pin;

use futures::Stream;
use imprint_proto::ingest_v1::agent_config_server::AgentConfig;
use imprint_proto::ingest_v1::ingest_server::Ingest;
use imprint_proto::ingest_v1::{AgentSettings, FingerprintBatch, PushAck, WatchAgentConfigRequest};
use imprint_query::settings;
use tonic::{Request, Response, Status};

use crate::engine::Engine;
use crate::status::ingest_status;

#[derive(Debug, Clone)]
pub struct IngestService {
    engine: Arc<Engine>,
}

impl IngestService {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn push(&self, request: Request<FingerprintBatch>) -> Result<Response<PushAck>, Status> {
        let ack = self
            .engine
            .push(request.into_inner())
            .await
            .map_err(ingest_status)?;
        Ok(Response::new(ack))
    }
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
        Ok(Response::new(Box::pin(stream)))
    }
}
