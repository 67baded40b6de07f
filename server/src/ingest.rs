//! The gRPC ingest service (`imprint.ingest.v1.Ingest`).

use std::sync::Arc;

use imprint_proto::ingest_v1::ingest_server::Ingest;
use imprint_proto::ingest_v1::{FingerprintBatch, PushAck};
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
