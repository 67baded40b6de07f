//! The one place where errors become gRPC statuses.

use tonic::Status;

use crate::auth::AuthError;
use crate::engine::IngestError;

pub fn ingest_status(e: IngestError) -> Status {
    match &e {
        IngestError::Invalid(_) => Status::invalid_argument(e.to_string()),
        IngestError::BufferFull { .. } => Status::resource_exhausted(e.to_string()),
        IngestError::WalFailed(_) => Status::internal(e.to_string()),
        IngestError::ShuttingDown => Status::unavailable(e.to_string()),
        IngestError::SeqBehind { last, .. } => {
            let mut status = Status::failed_precondition(e.to_string());
            if let Ok(v) = last.to_string().parse() {
                status
                    .metadata_mut()
                    .insert(imprint_proto::AGENT_LAST_SEQ_METADATA, v);
            }
            status
        }
    }
}

/// A SQL planning or execution error: the user's query is at fault unless the
/// error says otherwise.
pub fn query_status(e: datafusion::error::DataFusionError) -> Status {
    use datafusion::error::DataFusionError as E;
    match e.find_root() {
        E::ResourcesExhausted(_) => Status::resource_exhausted(e.to_string()),
        E::ObjectStore(_) | E::IoError(_) | E::Internal(_) => Status::internal(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

pub fn auth_status(e: AuthError) -> Status {
    match e {
        AuthError::Unauthenticated(m) => Status::unauthenticated(m),
        AuthError::PermissionDenied(m) => Status::permission_denied(m),
    }
}

/// The HTTP status for an auth failure: 401 or 403.
pub fn auth_http_status(e: &AuthError) -> axum::http::StatusCode {
    match e {
        AuthError::Unauthenticated(_) => axum::http::StatusCode::UNAUTHORIZED,
        AuthError::PermissionDenied(_) => axum::http::StatusCode::FORBIDDEN,
    }
}
