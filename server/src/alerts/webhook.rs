//! The anomaly webhook: when `alerts.webhook_url` is set, anomalies are POSTed
//! there as JSON, `{"anomalies": [...]}` with up to [`MAX_BATCH`] per request.
//!
//! Delivery never blocks ingest: the sender takes anomalies from the engine's
//! broadcast into its own bounded queue, and a request that fails (connection,
//! timeout, non-2xx) is retried with exponential backoff (1 s doubling to 60 s)
//! while new anomalies keep queueing. Failures and anomalies given up on (queue
//! full, or the broadcast overtook the sender) are counted in [`AlertStats`] and
//! logged. Delivery is at least once while the server runs — a receiver drops
//! duplicates by `id` — and live only: anomalies found while the URL is empty,
//! or before a restart, are in the `anomalies` table, not re-sent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use imprint_query::policy::Anomaly;
use imprint_query::settings::{self, ALERTS_WEBHOOK_URL};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tracing::{info, warn};

use super::{AlertStats, to_json};
use crate::engine::Engine;

/// Anomalies per request.
pub const MAX_BATCH: usize = 100;
/// Largest request body: a batch stops short of it (an anomaly's key can be 4 KiB).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Most of a receiver's answer read back; a longer one is cut off (the connection is dropped).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Anomalies held for delivery; beyond this the oldest are dropped (and counted).
pub const MAX_QUEUE: usize = 10_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client() -> Result<HttpsClient, std::io::Error> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// POSTs one batch; `Err` says why it was not accepted.
/// The request body for the first anomalies of `queue`: at most [`MAX_BATCH`] and
/// [`MAX_BODY_BYTES`] (at least one, so a queue always moves). Returns the body and how many
/// anomalies it holds.
fn request_body(queue: &VecDeque<Arc<Anomaly>>) -> (String, usize) {
    let mut items: Vec<String> = Vec::new();
    let mut bytes = "{\"anomalies\":[]}".len();
    for a in queue.iter().take(MAX_BATCH) {
        let item = to_json(a).to_string();
        if !items.is_empty() && bytes + item.len() + 1 > MAX_BODY_BYTES {
            break;
        }
        bytes += item.len() + 1;
        items.push(item);
    }
    let n = items.len();
    (format!("{{\"anomalies\":[{}]}}", items.join(",")), n)
}

/// POSTs one body; `Err` says why it was not accepted (never with the URL: it is a secret).
async fn post(client: &HttpsClient, url: &str, body: String) -> Result<(), String> {
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("imprintd/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("building the request: {e}"))?;
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.request(request))
        .await
        .map_err(|_| format!("no answer in {} s", REQUEST_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{e}").replace(url, "<the webhook URL>"))?;
    let status = response.status();
    // Read the answer so the connection can be reused, but only so much of it.
    let _ = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered HTTP {status}"))
    }
}

fn webhook_url(engine: &Engine) -> String {
    settings::value(&engine.catalog_state().settings, ALERTS_WEBHOOK_URL).to_string()
}

/// Runs the webhook sender until `stop` turns true.
pub async fn run(
    engine: Arc<Engine>,
    stats: Arc<AlertStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "the anomaly webhook cannot start: no TLS root certificates");
            return;
        }
    };
    let mut rx = engine.subscribe_anomalies();
    let mut queue: VecDeque<Arc<Anomaly>> = VecDeque::new();
    let mut backoff = FIRST_BACKOFF;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let drop_n = |n: u64| {
        stats.webhook_dropped.fetch_add(n, Ordering::Relaxed);
    };
    let lagged = |n: u64| {
        warn!(
            missed = n,
            "the anomaly webhook fell behind; anomalies not sent (they are in the anomalies table)"
        );
        drop_n(n);
    };
    loop {
        let url = webhook_url(&engine);
        if url.is_empty() && !queue.is_empty() {
            // Turned off: what was waiting is not sent.
            drop_n(queue.len() as u64);
            queue.clear();
        }
        let ready = !url.is_empty()
            && !queue.is_empty()
            && retry_at.is_none_or(|t| t <= tokio::time::Instant::now());
        if ready {
            let (body, n) = request_body(&queue);
            match post(&client, &url, body).await {
                Ok(()) => {
                    queue.drain(..n);
                    stats
                        .webhook_delivered
                        .fetch_add(n as u64, Ordering::Relaxed);
                    if retry_at.take().is_some() {
                        info!(url = %settings::redact_url(&url), "anomaly webhook delivering again");
                    }
                    backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    stats.webhook_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(url = %settings::redact_url(&url), error = %e, queued = queue.len(), retry_in_s = backoff.as_secs(), "anomaly webhook failed; retrying");
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            continue;
        }
        let wake =
            retry_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            next = rx.recv() => match next {
                Ok(a) => {
                    // Everything already waiting comes along, so the setting (under the
                    // engine's lock, which the writer also takes) is read once per burst, not
                    // once per anomaly.
                    let mut burst = vec![a];
                    while burst.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(a) => burst.push(a),
                            Err(TryRecvError::Lagged(n)) => lagged(n),
                            Err(_) => break,
                        }
                    }
                    // The setting as of now: `url` is from before the wait.
                    if webhook_url(&engine).is_empty() {
                        continue;
                    }
                    for a in burst {
                        if queue.len() >= MAX_QUEUE {
                            queue.pop_front();
                            drop_n(1);
                        }
                        queue.push_back(a);
                    }
                }
                Err(RecvError::Lagged(n)) => lagged(n),
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep_until(wake), if retry_at.is_some() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
