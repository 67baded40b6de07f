//! Anomalies as they are found: the `imprint.alerts.v1.Alerts` stream and the
//! webhook. Both take them from the engine's broadcast, so neither can slow
//! ingest; the durable record is the `anomalies` table.

pub mod webhook;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::Stream;
use imprint_proto::alerts_v1::alerts_server::Alerts;
use imprint_proto::alerts_v1::{Anomaly as WireAnomaly, WatchAnomaliesRequest};
use imprint_query::policy::Anomaly;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::engine::Engine;

/// Counters of live delivery, shown in `/healthz`.
#[derive(Debug, Default)]
pub struct AlertStats {
    /// Anomalies found at ingest since start.
    pub found: AtomicU64,
    /// Anomalies the webhook receiver accepted (2xx).
    pub webhook_delivered: AtomicU64,
    /// Webhook POSTs that failed (each retry counts).
    pub webhook_failures: AtomicU64,
    /// Anomalies the webhook gave up on: its queue was full, or it fell behind.
    pub webhook_dropped: AtomicU64,
}

impl AlertStats {
    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "anomalies_found": get(&self.found),
            "webhook_delivered": get(&self.webhook_delivered),
            "webhook_failures": get(&self.webhook_failures),
            "webhook_dropped": get(&self.webhook_dropped),
        })
    }
}

/// An anomaly on the wire.
pub fn to_wire(a: &Anomaly, missed: u64) -> WireAnomaly {
    WireAnomaly {
        id: a.id(),
        time_unix_micros: a.time,
        window_end_unix_micros: a.window_end,
        node: a.node.clone(),
        container_id: a.container_id.clone(),
        image: a.image.clone(),
        image_name: a.image_name.clone(),
        kind: a.kind.clone(),
        key: a.key.clone(),
        count: a.count,
        policy: a.policy.clone(),
        severity: a.severity.name().into(),
        confidence: a.confidence.name().into(),
        confidence_score: a.confidence_score,
        missed,
    }
}

/// An anomaly as JSON (webhook bodies, `imprint anomalies --format json`).
pub fn to_json(a: &Anomaly) -> serde_json::Value {
    serde_json::json!({
        "id": a.id(),
        "time": micros_to_rfc3339(a.time),
        "window_end": micros_to_rfc3339(a.window_end),
        "node": a.node,
        "container_id": a.container_id,
        "image": a.image,
        "image_name": a.image_name,
        "kind": a.kind,
        "key": a.key,
        "count": a.count,
        "policy": a.policy,
        "severity": a.severity.name(),
        "confidence": a.confidence.name(),
        "confidence_score": a.confidence_score,
    })
}

pub fn micros_to_rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct AlertsService {
    engine: Arc<Engine>,
    /// Turns true when the server shuts down: open streams end then.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl AlertsService {
    pub fn new(engine: Arc<Engine>, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { engine, stop }
    }
}

type AnomalyStream = Pin<Box<dyn Stream<Item = Result<WireAnomaly, Status>> + Send>>;

#[tonic::async_trait]
impl Alerts for AlertsService {
    type WatchAnomaliesStream = AnomalyStream;

    async fn watch_anomalies(
        &self,
        request: Request<WatchAnomaliesRequest>,
    ) -> Result<Response<Self::WatchAnomaliesStream>, Status> {
        let caller = crate::auth::Caller::of(&request);
        let filter = request.into_inner();
        if !filter.image.is_empty() {
            imprint_proto::digest::check_digest(&filter.image)
                .map_err(|e| Status::invalid_argument(format!("image: {e}")))?;
        }
        let rx = self.engine.subscribe_anomalies();
        let stream = futures::stream::unfold(
            (rx, self.stop.clone(), filter, 0u64),
            |(mut rx, mut stop, filter, mut missed)| async move {
                loop {
                    let next = tokio::select! {
                        next = rx.recv() => next,
                        _ = stop.wait_for(|s| *s) => return None,
                    };
                    match next {
                        Ok(a) => {
                            let wanted = (filter.image.is_empty() || a.image == filter.image)
                                && (filter.policy.is_empty() || a.policy == filter.policy);
                            if wanted {
                                let wire = to_wire(&a, std::mem::take(&mut missed));
                                return Some((Ok(wire), (rx, stop, filter, missed)));
                            }
                        }
                        Err(RecvError::Lagged(n)) => missed += n,
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        );
        let stream = crate::revocation::end_when_token_invalid(
            self.engine.clone(),
            caller,
            Box::pin(stream),
        );
        Ok(Response::new(stream))
    }
}
