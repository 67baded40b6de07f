//! Errors of the query crate.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),

    #[error("catalog object {path} is not valid: {source}")]
    CatalogDecode {
        path: String,
        source: serde_json::Error,
    },

    #[error(
        "catalog log is not contiguous: after commit {after} the next object is {found} \
         (a log object was deleted or written by something other than Imprint)"
    )]
    CatalogGap { after: u64, found: u64 },

    #[error(
        "catalog commit {seq} already exists: another server is writing to this store \
         (only one imprintd may own a store)"
    )]
    CatalogConflict { seq: u64 },

    #[error("invalid store location {location:?}: {reason}")]
    InvalidLocation { location: String, reason: String },

    #[error("profile summary: {0}")]
    Summary(String),

    #[error("DataFusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),

    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
