//! The Imprint server (`imprintd`) and CLI (`imprint`). See README.md for the
//! module map.

pub mod admin;
pub mod alerts;
pub mod auth;
pub mod cli;
pub mod config;
pub mod dedup;
pub mod engine;
pub mod export;
pub mod flight;
pub mod http;
pub mod ingest;
pub mod logging;
pub mod placeholders;
pub mod query;
pub mod revocation;
pub mod serve;
pub mod status;
pub mod tls;
pub mod validate;
pub mod wal;
