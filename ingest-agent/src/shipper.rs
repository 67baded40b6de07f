//! Shipping: fingerprints from the capture loop become batches with `(agent_id, seq)`, go to the
//! disk spool, and are pushed oldest first; a batch leaves the spool only when the server has
//! acknowledged it (or refused it for good). Retries back off from 200 ms to 30 s.

use std::sync::Arc;
use std::time::Duration;

use imprint_proto::client::{AuthedChannel, authed, connect};
use imprint_proto::ingest_v1::{Fingerprint, FingerprintBatch, ingest_client::IngestClient};
use prost::Message;
use tokio::sync::mpsc::UnboundedReceiver;
use tonic::Code;

use crate::metrics::Metrics;
use crate::spool::{Spool, SpoolError};

/// Encoded bytes per batch the shipper aims under (the server takes up to 16 MiB).
const BATCH_BYTES: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct ShipperConfig {
    pub server: String,
    pub ca_cert: Option<std::path::PathBuf>,
    pub token: String,
    pub agent_id: String,
}

pub struct Shipper {
    config: ShipperConfig,
    spool: Spool,
    metrics: Arc<Metrics>,
    client: Option<IngestClient<AuthedChannel>>,
    last_seq: u64,
    /// The first seq this process numbered: a batch at or above it was never sent by an
    /// earlier run, so the server calling it a duplicate on its first attempt is a collision.
    run_first_seq: Option<u64>,
    /// The seq of the last push attempt (a duplicate ack on a retry is an ack lost before).
    last_attempt: Option<u64>,
    /// Fingerprints the full spool refused, reported in the next batch's fingerprints.
    lost: u64,
    backoff: Duration,
}

impl Shipper {
    pub fn new(config: ShipperConfig, spool: Spool, metrics: Arc<Metrics>) -> Shipper {
        let last_seq = spool.last_seq().unwrap_or(0);
        Shipper {
            config,
            spool,
            metrics,
            client: None,
            last_seq,
            run_first_seq: None,
            last_attempt: None,
            lost: 0,
            backoff: Duration::from_millis(200),
        }
    }

    /// Seqs are contiguous within a run (the server keeps one range per run), and a run starts
    /// at its wall clock in microseconds or above the spool's last seq, whichever is higher: a
    /// restarted agent continues above everything it sent before, even with its spool lost
    /// (unless its clock also stepped back: then the server's answers make it renumber).
    fn next_seq(&mut self) -> u64 {
        self.last_seq = match self.run_first_seq {
            Some(_) => self.last_seq + 1,
            None => {
                let now = crate::capture::now_micros().max(0) as u64;
                let first = now.max(self.last_seq + 1);
                self.run_first_seq = Some(first);
                first
            }
        };
        self.last_seq
    }

    /// Renumbers the spool's oldest batch above both this agent's and the server's last seq,
    /// and counts it; it goes out again after the others.
    fn renumber_front(&mut self, seq: u64, server_last: u64, why: &str) {
        let new_seq = self.last_seq.max(server_last) + 1;
        tracing::warn!(
            seq,
            new_seq,
            server_last,
            "{why}: this agent's clock stepped back with its spool lost, or another agent has \
             this --agent-id; renumbered and sent again"
        );
        match self.spool.renumber_front(new_seq) {
            Ok(()) => {
                self.last_seq = new_seq;
                Metrics::add(&self.metrics.batches_renumbered, 1);
            }
            Err(error) => {
                // Not lost: it stays at the front and is tried again.
                tracing::error!(%error, "cannot renumber the spooled batch");
                self.fail();
            }
        }
    }

    /// Runs until the capture loop's sender is gone and the spool is empty or the server away.
    pub async fn run(mut self, mut input: UnboundedReceiver<Vec<Fingerprint>>) {
        let mut input_open = true;
        loop {
            self.publish_spool_size();
            if !self.spool.is_empty() && self.push_front().await {
                continue;
            }
            if !input_open {
                if !self.spool.is_empty() {
                    tracing::warn!(
                        batches = self.spool.len(),
                        "stopping with batches in the spool; they are sent at the next start"
                    );
                }
                return;
            }
            // Wait for new fingerprints, or for the backoff when the spool has something left.
            let wait = if !self.spool.is_empty() {
                self.backoff
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                received = input.recv() => match received {
                    Some(fingerprints) => self.enqueue(fingerprints),
                    None => input_open = false,
                },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn publish_spool_size(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics.spool_bytes.store(self.spool.bytes(), Relaxed);
        self.metrics
            .spool_batches
            .store(self.spool.len() as u64, Relaxed);
    }

    /// Splits fingerprints into batches and writes them to the spool.
    fn enqueue(&mut self, mut fingerprints: Vec<Fingerprint>) {
        if self.lost > 0 {
            for fingerprint in &mut fingerprints {
                if let Some(c) = fingerprint.completeness.as_mut() {
                    c.dropped_events += self.lost;
                }
            }
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut batches = Vec::new();
        for fingerprint in fingerprints {
            let size = fingerprint.encoded_len();
            if !batch.is_empty() && bytes + size > BATCH_BYTES {
                batches.push(std::mem::take(&mut batch));
                bytes = 0;
            }
            bytes += size;
            batch.push(fingerprint);
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        let mut lost_now = 0;
        let mut kept = false;
        for fingerprints in batches {
            let batch = FingerprintBatch {
                agent_id: self.config.agent_id.clone(),
                seq: self.next_seq(),
                fingerprints,
            };
            let result = self.spool.push(&batch);
            if result.is_err() {
                // The seq is used again, so the server's ranges have no gap.
                self.last_seq -= 1;
            }
            match result {
                Ok(()) => kept = true,
                Err(error @ SpoolError::Full { .. }) => {
                    tracing::warn!(%error, fingerprints = batch.fingerprints.len(), "fingerprints lost");
                    lost_now += batch.fingerprints.len() as u64;
                }
                Err(error) => {
                    tracing::error!(%error, fingerprints = batch.fingerprints.len(), "cannot write the spool; fingerprints lost");
                    lost_now += batch.fingerprints.len() as u64;
                }
            }
        }
        Metrics::add(&self.metrics.spool_lost_fingerprints, lost_now);
        // The loss was reported once something carrying it was kept.
        if kept {
            self.lost = lost_now;
        } else {
            self.lost += lost_now;
        }
    }

    /// Pushes the oldest spooled batch; true when it left the spool.
    async fn push_front(&mut self) -> bool {
        let batch = match self.spool.front() {
            Some(Ok(batch)) => batch,
            Some(Err(error)) => {
                tracing::error!(%error, "spooled batch unreadable; skipped");
                return true;
            }
            None => return false,
        };
        let client = match self.client.as_mut() {
            Some(client) => client,
            None => match connect(&self.config.server, self.config.ca_cert.as_deref()).await {
                Ok(channel) => match authed(channel, &self.config.token) {
                    Ok(channel) => self.client.insert(IngestClient::new(channel)),
                    Err(status) => {
                        tracing::error!(%status, "the token cannot be sent as a header");
                        self.fail();
                        return false;
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, spooled = self.spool.len(), "server unreachable; batches stay in the spool");
                    self.fail();
                    return false;
                }
            },
        };
        let fingerprints = batch.fingerprints.len() as u64;
        let seq = batch.seq;
        let retry = self.last_attempt == Some(seq);
        self.last_attempt = Some(seq);
        match client.push(batch).await {
            Ok(ack) => {
                let ack = ack.into_inner();
                let numbered_by_this_run = self.run_first_seq.is_some_and(|first| seq >= first);
                if ack.duplicate && numbered_by_this_run && !retry {
                    self.renumber_front(
                        seq,
                        ack.agent_last_seq,
                        "the server had this new batch's seq already",
                    );
                    return true;
                }
                if ack.duplicate {
                    Metrics::add(&self.metrics.batches_duplicate, 1);
                } else {
                    Metrics::add(&self.metrics.fingerprints_sent, fingerprints);
                }
                Metrics::add(&self.metrics.batches_sent, 1);
                self.spool.pop();
                self.backoff = Duration::from_millis(200);
                true
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                let server_last = status
                    .metadata()
                    .get(imprint_proto::AGENT_LAST_SEQ_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                match server_last {
                    Some(server_last) => {
                        self.renumber_front(
                            seq,
                            server_last,
                            "the server no longer tells this seq apart",
                        );
                        true
                    }
                    None => {
                        tracing::warn!(message = status.message(), "push refused; retrying");
                        self.fail();
                        false
                    }
                }
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                // Never accepted as it is: keep the rest flowing, say loudly what was wrong.
                tracing::error!(
                    message = status.message(),
                    fingerprints,
                    "server refused a batch as invalid; dropped"
                );
                Metrics::add(&self.metrics.spool_lost_fingerprints, fingerprints);
                self.spool.pop();
                true
            }
            Err(status) => {
                match status.code() {
                    Code::Unauthenticated | Code::PermissionDenied => {
                        tracing::error!(
                            message = status.message(),
                            "server refused the agent's token; check --token-file"
                        )
                    }
                    Code::ResourceExhausted => tracing::info!("server busy; retrying"),
                    _ => {
                        tracing::warn!(code = ?status.code(), message = status.message(), "push failed; retrying");
                        self.client = None;
                    }
                }
                self.fail();
                false
            }
        }
    }

    fn fail(&mut self) {
        Metrics::add(&self.metrics.push_failures, 1);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imprint_proto::ingest_v1::Completeness;

    fn fingerprint(id: &str, items: usize) -> Fingerprint {
        Fingerprint {
            container_id: id.into(),
            items: (0..items)
                .map(|i| imprint_proto::ingest_v1::Item {
                    kind: 2,
                    key: format!("/file/{i:04}"),
                    count: 1,
                })
                .collect(),
            completeness: Some(Completeness::default()),
            ..Default::default()
        }
    }

    /// A full spool loses fingerprints, counts them, and the next fingerprints kept carry the
    /// loss in `dropped_events`.
    #[test]
    fn spool_overflow_is_counted_and_reported_in_the_next_fingerprints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), 600).expect("spool");
        let metrics = Arc::new(Metrics::default());
        let config = ShipperConfig {
            server: "http://127.0.0.1:1".into(),
            ca_cert: None,
            token: String::new(),
            agent_id: "n1/test".into(),
        };
        let mut shipper = Shipper::new(config, spool, metrics.clone());
        shipper.enqueue(vec![fingerprint("small", 1)]);
        assert_eq!(shipper.spool.len(), 1);
        // Far over the 600-byte cap: refused whole.
        shipper.enqueue(vec![fingerprint("big1", 40), fingerprint("big2", 40)]);
        assert_eq!(shipper.spool.len(), 1);
        assert_eq!(
            metrics
                .spool_lost_fingerprints
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        // Room again (the first batch was acknowledged): the loss rides along.
        shipper.spool.pop();
        shipper.enqueue(vec![fingerprint("next", 1)]);
        let batch = shipper.spool.front().expect("one").expect("decodes");
        let completeness = batch.fingerprints[0].completeness.expect("set");
        assert_eq!(completeness.dropped_events, 2);
        // Reported once: later fingerprints start clean.
        shipper.spool.pop();
        shipper.enqueue(vec![fingerprint("later", 1)]);
        let batch = shipper.spool.front().expect("one").expect("decodes");
        assert_eq!(
            batch.fingerprints[0]
                .completeness
                .expect("set")
                .dropped_events,
            0
        );
        // Seqs strictly increase.
        assert!(shipper.last_seq > 0);
    }
}
