//! A query over the memory limit or the timeout fails alone, with a clear status,
//! while other queries keep being served.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use std::time::{Duration, Instant};

use arrow_flight::error::FlightError;
use imprint_bench::{Fleet, FleetSpec};
use imprint_e2e::Imprintd;
use tonic::Code;

/// The server's status inside the client's error (the client nests it while
/// decoding a stream).
fn status_of(e: FlightError) -> tonic::Status {
    match e {
        FlightError::Tonic(s) => *s,
        FlightError::Arrow(arrow::error::ArrowError::ExternalError(inner)) => {
            match inner.downcast::<FlightError>() {
                Ok(f) => status_of(*f),
                Err(other) => match other.downcast::<tonic::Status>() {
                    Ok(s) => *s,
                    Err(other) => panic!("expected a gRPC status, got {other:?}"),
                },
            }
        }
        FlightError::ExternalError(inner) => match inner.downcast::<tonic::Status>() {
            Ok(s) => *s,
            Err(other) => panic!("expected a gRPC status, got {other:?}"),
        },
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_and_time_limits_stop_one_query_not_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = std::sync::Arc::new(Imprintd::start(
        &dir.path().join("data"),
        &["--query-memory-limit", "32MiB", "--query-timeout", "4s"],
    ));
    let mut fleet = Fleet::new(FleetSpec {
        images: 1,
        containers_per_image: 2,
        nodes: 1,
        ..Default::default()
    });
    for w in 0..10 {
        for b in fleet.batches(w) {
            server.push(b).await.unwrap();
        }
    }
    let rows = server.scalar_i64("SELECT count(*) FROM fingerprints").await;
    assert!(rows > 3000, "{rows}");

    // Memory: sorting the cross join needs far more than 32 MiB.
    let s = server.clone();
    let big = tokio::spawn(async move {
        s.try_sql("SELECT a.key, b.key FROM fingerprints a CROSS JOIN fingerprints b ORDER BY a.key, b.key").await
    });
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        rows
    );
    let err = status_of(big.await.unwrap().unwrap_err());
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("--query-memory-limit"),
        "{}",
        err.message()
    );

    // Time: a triple cross join runs far longer than 4 s.
    let s = server.clone();
    let started = Instant::now();
    let slow = tokio::spawn(async move {
        s.try_sql("SELECT count(*) FROM fingerprints a, fingerprints b, fingerprints c WHERE a.count + b.count + c.count = 0").await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server
            .scalar_i64("SELECT count(DISTINCT key) > 0 FROM fingerprints")
            .await,
        1
    );
    let err = status_of(slow.await.unwrap().unwrap_err());
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("--query-timeout"),
        "{}",
        err.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the deadline was not enforced promptly"
    );

    // Still serving.
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        rows
    );
}
