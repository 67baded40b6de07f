//! `imprintd serve`: opens the engine and runs the gRPC and HTTP listeners until
//! SIGTERM/SIGINT, then persists everything before exiting.

use std::future::IntoFuture;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use imprint_proto::admin_v1::admin_server::AdminServer;
use imprint_proto::alerts_v1::alerts_server::AlertsServer;
use imprint_proto::ingest_v1::agent_config_server::AgentConfigServer;
use imprint_proto::ingest_v1::ingest_server::IngestServer;
use imprint_query::StoreLocation;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{error, info, warn};

use crate::admin::{AdminService, bootstrap_admin_token};
use crate::alerts::AlertsService;
use crate::auth::{Auth, GrpcAuthLayer};
use crate::config::{ObjectStoreKind, ServeArgs};
use crate::engine::{Engine, EngineConfig, EngineError};
use crate::flight::FlightSql;
use crate::flight::prepared::PreparedLimits;
use crate::ingest::{AgentConfigService, IngestService};
use crate::query::QueryLimits;
use crate::tls::TlsIdentity;

/// Largest gRPC message decoded. Batches over 16 MiB are refused by validation
/// with INVALID_ARGUMENT; this only bounds what is read at all.
const MAX_GRPC_MESSAGE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] imprint_query::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

pub fn store_location(args: &ServeArgs) -> Result<StoreLocation, ServeError> {
    Ok(match args.object_store {
        ObjectStoreKind::Local => StoreLocation::Local(args.data_dir.clone()),
        ObjectStoreKind::S3 => StoreLocation::S3 {
            bucket: args.bucket.clone().ok_or_else(|| {
                ServeError::Config("--object-store s3 needs --bucket (or IMPRINT_BUCKET)".into())
            })?,
            prefix: args.prefix.clone().filter(|p| !p.is_empty()),
            endpoint: args.endpoint.clone(),
        },
    })
}

pub async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    let location = store_location(&args)?;
    // Checked before anything opens, so a wrong file fails the start at once.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity::load(cert, key)?),
        _ => None,
    };
    let object_store = location.object_store()?;
    let mut config = EngineConfig::new(
        args.wal_dir
            .clone()
            .unwrap_or_else(|| args.data_dir.join("wal")),
    );
    config.max_buffer_bytes = args.max_buffer_bytes as usize;
    config.persist_partition_bytes = args.persist_bytes as usize;
    config.persist_age = args.persist_age;
    // Look often enough that a short --persist-age is honoured, at most once a second.
    config.persist_check_interval = (args.persist_age / 4).clamp(
        std::time::Duration::from_millis(20),
        std::time::Duration::from_secs(1),
    );
    config.wal_segment_bytes = args.wal_segment_bytes;
    config.summary_rollup_parts = args.summary_rollup_parts as usize;
    config.max_window_age = args.max_window_age;
    imprint_query::bounded::MAX_FUNCTION_OUTPUT_BYTES.store(
        args.max_function_output_bytes,
        std::sync::atomic::Ordering::Relaxed,
    );
    // Before the profiles are rebuilt at open.
    imprint_query::profile::MAX_PROFILE_ITEMS
        .store(args.max_profile_items, std::sync::atomic::Ordering::Relaxed);
    let engine = Engine::open(object_store, config.clone()).await?;

    let auth = Auth::new(engine.clone(), !args.insecure_no_auth);
    if args.insecure_no_auth {
        warn!(
            "authentication is OFF (--insecure-no-auth): anyone who can reach the ports can read and write everything"
        );
    } else if let Some(path) = bootstrap_admin_token(&engine, &args.data_dir)
        .await
        .map_err(|s| ServeError::Config(s.message().to_string()))?
    {
        info!(file = %path.display(), "first start: created an admin token; the file is readable only by this user");
    }

    let grpc_listener =
        TcpListener::bind(args.grpc_addr)
            .await
            .map_err(|source| ServeError::Listen {
                addr: args.grpc_addr,
                source,
            })?;
    let http_listener =
        TcpListener::bind(args.http_addr)
            .await
            .map_err(|source| ServeError::Listen {
                addr: args.http_addr,
                source,
            })?;
    info!(
        grpc = %grpc_listener.local_addr().unwrap_or(args.grpc_addr),
        http = %http_listener.local_addr().unwrap_or(args.http_addr),
        store = ?location,
        wal = %config.wal_dir.display(),
        tls = tls.is_some(),
        "imprintd listening"
    );

    let query_limits = QueryLimits {
        memory_bytes: args.query_memory_limit as usize,
        timeout: args.query_timeout,
        max_concurrent: args.max_concurrent_queries,
        max_result_bytes: args.max_result_bytes,
        max_sql_bytes: args.max_sql_bytes as usize,
        max_subscript_depth: args.max_sql_subscript_depth,
    };
    let prepared_limits = PreparedLimits {
        total: args.max_prepared_statements,
        per_token: args.max_prepared_statements_per_token,
        parameter_bytes: args.max_parameter_bytes as usize,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let persister_stop = Arc::new(Notify::new());
    let persister = tokio::spawn(engine.clone().run_persister(persister_stop.clone()));
    let webhook = tokio::spawn(crate::alerts::webhook::run(
        engine.clone(),
        engine.alert_stats().clone(),
        stop_rx.clone(),
    ));

    let grpc = {
        let mut stop = stop_rx.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            builder = builder.tls_config(tls.grpc_config())?;
        }
        builder
            .layer(GrpcAuthLayer::new(auth.clone()))
            .add_service(
                // SBOMs of large images are megabytes.
                AdminServer::new(AdminService::new(engine.clone()))
                    .max_decoding_message_size(MAX_GRPC_MESSAGE),
            )
            .add_service(AlertsServer::new(AlertsService::new(
                engine.clone(),
                stop_rx.clone(),
            )))
            .add_service(AgentConfigServer::new(AgentConfigService::new(
                engine.clone(),
                stop_rx.clone(),
            )))
            .add_service(
                IngestServer::new(IngestService::new(
                    engine.clone(),
                    args.max_new_agents_per_token_per_hour,
                ))
                .max_decoding_message_size(MAX_GRPC_MESSAGE),
            )
            .add_service(
                FlightServiceServer::new(FlightSql::new(
                    engine.clone(),
                    query_limits,
                    prepared_limits,
                    auth.clone(),
                ))
                .max_decoding_message_size(MAX_GRPC_MESSAGE)
                .max_encoding_message_size(MAX_GRPC_MESSAGE),
            )
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(grpc_listener).map(|conn| {
                    // Small acks must not wait for Nagle's algorithm and delayed ACKs.
                    conn.inspect(|c| {
                        let _ = c.set_nodelay(true);
                    })
                }),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )
    };
    let http = {
        let mut stop = stop_rx.clone();
        let router = crate::http::router(engine.clone())
            .merge(crate::export::router(engine.clone(), auth.clone()));
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        match &tls {
            Some(tls) => {
                let listener = tls.http_listener(http_listener).map_err(ServeError::Http)?;
                futures::future::Either::Left(
                    axum::serve(listener, router)
                        .with_graceful_shutdown(shutdown)
                        .into_future(),
                )
            }
            None => futures::future::Either::Right(
                axum::serve(http_listener, router)
                    .with_graceful_shutdown(shutdown)
                    .into_future(),
            ),
        }
    };
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown requested: finishing requests in flight, then persisting everything");
        let _ = stop_tx.send(true);
    });
    let (grpc, http) = tokio::join!(grpc, http);
    persister_stop.notify_one();
    let _ = persister.await;
    let _ = webhook.await;
    let result = engine.shutdown().await;
    grpc?;
    http.map_err(ServeError::Http)?;
    match result {
        Ok(()) => {
            info!("imprintd stopped cleanly");
            Ok(())
        }
        Err(e) => {
            error!(error = %e, "persisting at shutdown failed; the WAL still holds the data and is replayed at the next start");
            Err(e.into())
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
