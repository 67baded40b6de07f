//! Follows the server's agent settings (`AgentConfig.Watch`): `profiling.enabled` switches
//! capture on and off; `runtime_scanner.eve_enabled` the runtime scanner. While the server cannot be reached the last known value stays in force
//! (at start: `--profiling`), and the watch reconnects with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use imprint_proto::client::{authed, connect};
use imprint_proto::ingest_v1::{WatchAgentConfigRequest, agent_config_client::AgentConfigClient};

use crate::capture::Control;
use crate::shipper::ShipperConfig;

/// `local_default` (`--profiling`) holds until the server has answered once.
pub async fn run(
    config: ShipperConfig,
    control: Sender<Control>,
    local_default: bool,
    scanner: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut current: Option<bool> = None;
    loop {
        match watch_once(&config, &control, &mut current, &scanner).await {
            Ok(()) => backoff = Duration::from_millis(500),
            Err(error) => tracing::debug!(%error, "agent settings watch failed; retrying"),
        }
        if control
            .send(Control::Profiling(current.unwrap_or(local_default)))
            .is_err()
        {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn watch_once(
    config: &ShipperConfig,
    control: &Sender<Control>,
    current: &mut Option<bool>,
    scanner: &AtomicBool,
) -> Result<(), String> {
    let channel = connect(&config.server, config.ca_cert.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let mut client =
        AgentConfigClient::new(authed(channel, &config.token).map_err(|e| e.to_string())?);
    let mut stream = client
        .watch(WatchAgentConfigRequest {
            agent_id: config.agent_id.clone(),
        })
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
        .into_inner();
    while let Some(settings) = stream
        .message()
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
    {
        if *current != Some(settings.profiling_enabled) {
            tracing::info!(
                profiling_enabled = settings.profiling_enabled,
                version = settings.version,
                "server agent settings"
            );
        }
        *current = Some(settings.profiling_enabled);
        scanner.store(settings.runtime_scanner_enabled, Ordering::Relaxed);
        if control
            .send(Control::Profiling(settings.profiling_enabled))
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}
