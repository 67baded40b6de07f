//! A query over the memory limit or the timeout fails alone, with a clear status,
//! while other queries keep being served.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use std::time::{Duration, Instant};

use arrow_flight::error::FlightError;
use imprint_bench::{Fleet, FleetSpec};
use imprint_e2e::Imprintd;
use prost::Message;
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

/// `--max-result-bytes` cuts off a result that is too large, `--max-sql-bytes` refuses SQL that
/// is too long; a small query still runs.
#[tokio::test(flavor = "multi_thread")]
async fn result_and_sql_sizes_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(
        &dir.path().join("data"),
        &["--max-result-bytes", "64KiB", "--max-sql-bytes", "1KiB"],
    );
    // About 1 MB of strings: over 64 KiB.
    let big = "SELECT repeat('x', 1000) AS s FROM generate_series(1, 1000)";
    let status = status_of(server.try_sql(big).await.unwrap_err());
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-result-bytes"),
        "{}",
        status.message()
    );
    let long = format!("SELECT 1 AS a /* {} */", "y".repeat(2000));
    let status = status_of(server.try_sql(&long).await.unwrap_err());
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("--max-sql-bytes"),
        "{}",
        status.message()
    );
    assert_eq!(
        server
            .scalar_i64("SELECT count(*) FROM generate_series(1, 1000)")
            .await,
        1000
    );
}

/// Prepared statements are capped per token and in total, and one token cannot use or close
/// another's; bound parameters over `--max-parameter-bytes` are refused.
#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_are_bounded_per_token_and_in_total() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(
        &dir.path().join("data"),
        &[
            "--max-prepared-statements",
            "3",
            "--max-prepared-statements-per-token",
            "2",
            "--max-parameter-bytes",
            "4KiB",
        ],
    );
    let (ok, reader, err) = server.cli(&["token", "create", "--scope", "read", "--name", "r"]);
    assert!(ok, "{err}");
    let mut admin = server.flight().await;
    let mut other = server.flight().await;
    other.set_token(reader.trim().to_string());

    let mut a1 = admin
        .prepare("SELECT $1::BIGINT + 1 AS n".into(), None)
        .await
        .unwrap();
    let _a2 = admin.prepare("SELECT 2 AS n".into(), None).await.unwrap();
    let status = status_of(
        admin
            .prepare("SELECT 3 AS n".into(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("--max-prepared-statements-per-token"),
        "{}",
        status.message()
    );
    // The other token still has room until the server is full; its statement made with the
    // raw action, to learn the handle.
    let create = arrow_flight::sql::ActionCreatePreparedStatementRequest {
        query: "SELECT 4 AS n".into(),
        transaction_id: None,
    };
    let mut results = other
        .do_action(arrow_flight::Action {
            r#type: "CreatePreparedStatement".to_string(),
            body: arrow_flight::sql::ProstMessageExt::as_any(&create)
                .encode_to_vec()
                .into(),
        })
        .await
        .unwrap();
    let result = results.message().await.unwrap().unwrap();
    let created: arrow_flight::sql::ActionCreatePreparedStatementResult =
        arrow_flight::sql::Any::decode(&*result.body)
            .unwrap()
            .unpack()
            .unwrap()
            .unwrap();
    let status = status_of(
        other
            .prepare("SELECT 5 AS n".into(), None)
            .await
            .unwrap_err(),
    );
    assert!(
        status.message().contains("(--max-prepared-statements)"),
        "{}",
        status.message()
    );

    // The admin cannot run the other token's statement by its handle.
    let cmd = arrow_flight::sql::CommandPreparedStatementQuery {
        prepared_statement_handle: created.prepared_statement_handle,
    };
    let ticket =
        arrow_flight::Ticket::new(arrow_flight::sql::ProstMessageExt::as_any(&cmd).encode_to_vec());
    let status = status_of(admin.do_get(ticket).await.unwrap_err());
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Parameters: one small row binds; a 10 KB string is over the 4 KiB limit.
    let small = arrow::array::RecordBatch::try_from_iter([(
        "$1",
        std::sync::Arc::new(arrow::array::Int64Array::from(vec![41])) as arrow::array::ArrayRef,
    )])
    .unwrap();
    a1.set_parameters(small).unwrap();
    let info = a1.execute().await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let rows: Vec<arrow::array::RecordBatch> =
        futures::TryStreamExt::try_collect(admin.do_get(ticket).await.unwrap())
            .await
            .unwrap();
    assert_eq!(imprint_e2e::scalar_i64(&rows), 42);
    let big = arrow::array::RecordBatch::try_from_iter([(
        "$1",
        std::sync::Arc::new(arrow::array::StringArray::from(vec!["z".repeat(10_000)]))
            as arrow::array::ArrayRef,
    )])
    .unwrap();
    a1.set_parameters(big).unwrap();
    let status = status_of(a1.execute().await.unwrap_err());
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-parameter-bytes"),
        "{}",
        status.message()
    );
}

/// Functions whose output size the query chooses cannot build more than
/// --max-function-output-bytes in one call (found by the `sql` fuzz target: `repeat('x',
/// 1000000000)` allocated a gigabyte inside one step, past the memory limit and the timeout).
#[tokio::test(flavor = "multi_thread")]
async fn size_choosing_functions_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(
        &dir.path().join("data"),
        &["--max-function-output-bytes", "1MiB"],
    );
    for sql in [
        "SELECT repeat('x', 1000000000)",
        "SELECT lpad('x', 1000000000)",
        "SELECT rpad('x', 1000000000, 'y')",
        // Per row too: 1000 rows of 2 KiB each is 2 MB.
        "SELECT length(repeat('xx', 1024 + value % 2)) FROM generate_series(1, 1000)",
    ] {
        let started = std::time::Instant::now();
        let status = status_of(server.try_sql(sql).await.unwrap_err());
        println!("{sql}: refused in {:?}", started.elapsed());
        assert!(
            status.message().contains("--max-function-output-bytes"),
            "{sql}: {status:?}"
        );
    }
    assert_eq!(
        server.scalar_i64("SELECT length(repeat('ab', 1000))").await,
        2000
    );
}

/// SQL nesting `[` deeper than --max-sql-subscript-depth is refused before parsing: the SQL
/// parser backtracks on `a.b[a.b[…`, about doubling its time per level (found by the `sql`
/// fuzz target: 20 levels took 1.5 s, 30 some 20 minutes, in one step the timeout cannot stop).
#[tokio::test(flavor = "multi_thread")]
async fn deeply_nested_subscripts_are_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let nested = format!("SELECT {}1", "a.b[".repeat(22));
    let status = status_of(server.try_sql(&nested).await.unwrap_err());
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("22 deep")
            && status.message().contains("--max-sql-subscript-depth"),
        "{}",
        status.message()
    );
    // A `[` in a string literal is no subscript.
    let rows = imprint_e2e::rows_as_text(&server.sql("SELECT '[[[[[[[[[[[[' AS s").await);
    assert_eq!(rows, vec!["[[[[[[[[[[[[".to_string()]);
}
