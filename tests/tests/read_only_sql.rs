//! SQL is read-only for every token: the statements with which a read-only token once read the
//! admin token, wrote files and dropped tables (issue 16, H1) are refused for read and admin
//! tokens alike, through a real Flight SQL client (Python ADBC) and the Rust client, and
//! nothing they aimed at changed.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use imprint_e2e::{Imprintd, test_python};

/// Runs each statement of argv[3] (a JSON list) with the token argv[2]; prints, per statement,
/// the rows or the error.
const ATTACK_SCRIPT: &str = r#"
import json, sys
import adbc_driver_flightsql.dbapi as flight
conn = flight.connect(sys.argv[1], db_kwargs={"adbc.flight.sql.authorization_header": "Bearer " + sys.argv[2]})
out = []
for sql in json.loads(sys.argv[3]):
    cur = conn.cursor()
    try:
        cur.execute(sql)
        out.append({"sql": sql, "rows": cur.fetch_arrow_table().to_pylist()})
    except Exception as e:
        out.append({"sql": sql, "error": str(e)})
    cur.close()
conn.close()
print(json.dumps(out, default=str))
"#;

/// The statements and the words the refusal must carry.
fn attacks(data_dir: &str, written: &str) -> Vec<(String, &'static str)> {
    vec![
        (
            format!(
                "CREATE EXTERNAL TABLE stolen (t VARCHAR) STORED AS CSV LOCATION '{data_dir}/admin-token' OPTIONS ('has_header' 'false')"
            ),
            "DDL not supported: CreateExternalTable",
        ),
        ("SELECT * FROM stolen".into(), "tables are: "),
        (
            format!("COPY (SELECT 1 AS a) TO '{written}' STORED AS CSV"),
            "DML not supported: COPY",
        ),
        (
            "SET datafusion.execution.batch_size = 1".into(),
            "Statement not supported: SetVariable",
        ),
        (
            "DROP TABLE fingerprints".into(),
            "DDL not supported: DropTable",
        ),
        (
            "CREATE VIEW v AS SELECT 1 AS a".into(),
            "DDL not supported: CreateView",
        ),
        (
            "CREATE TABLE t AS SELECT 1 AS a".into(),
            "DDL not supported: CreateMemoryTable",
        ),
        (
            "INSERT INTO settings SELECT * FROM settings".into(),
            "not supported",
        ),
        (
            format!("SELECT * FROM '{data_dir}/admin-token'"),
            "tables are: ",
        ),
        (
            "PREPARE p AS SELECT 1".into(),
            "Statement not supported: Prepare",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_dml_copy_and_set_are_refused_for_read_and_admin_tokens() {
    let Some(python) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Imprintd::start(&data, &[]);
    let (ok, reader, err) = server.cli(&["token", "create", "--scope", "read", "--name", "r"]);
    assert!(ok, "{err}");
    let reader = reader.trim().to_string();
    let written = dir.path().join("written.csv");
    let attacks = attacks(&data.display().to_string(), &written.display().to_string());
    let mut statements: Vec<&str> = attacks.iter().map(|(s, _)| s.as_str()).collect();
    statements.push("SELECT count(*) AS n FROM fingerprints");

    for (who, token) in [("read", reader.as_str()), ("admin", server.token.as_str())] {
        let results = imprint_e2e::run_python_json(
            &python,
            ATTACK_SCRIPT,
            &[
                &format!("grpc://{}", server.grpc_addr),
                token,
                &serde_json::to_string(&statements).unwrap(),
            ],
        );
        let results = results.as_array().expect("a list of results");
        for ((sql, expected), result) in attacks.iter().zip(results) {
            let error = result["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{who} token: {sql:?} was not refused: {result}"));
            assert!(
                error.contains(expected),
                "{who} token: {sql:?} refused, but without {expected:?}: {error}"
            );
            assert!(
                !error.contains("imp_"),
                "{who} token: an error shows a token secret: {error}"
            );
            if expected.contains("not supported") {
                assert!(
                    // ADBC's Go driver writes PERMISSION_DENIED as "UNAUTHORIZED: … (PermissionDenied; …)".
                    error.contains("PERMISSION_DENIED") || error.contains("PermissionDenied"),
                    "{who} token: {sql:?} should be PERMISSION_DENIED: {error}"
                );
                assert!(error.contains("only read-only queries"), "{error}");
            }
        }
        // A normal query still works, and every table is still there.
        assert_eq!(
            results.last().unwrap()["rows"],
            serde_json::json!([{"n": 0}]),
            "{who} token"
        );
    }
    assert!(!written.exists(), "COPY wrote {}", written.display());
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        0
    );
    let tables = imprint_e2e::rows_as_text(
        &server
            .sql("SELECT table_name FROM information_schema.tables WHERE table_name IN ('stolen', 'v', 't')")
            .await,
    );
    assert!(tables.is_empty(), "{tables:?}");
}

/// The Rust client's statement path (GetFlightInfo + DoGet) and a prepared statement refuse
/// DDL too, and planning twice (GetFlightInfo, then DoGet) does not run it.
#[tokio::test(flavor = "multi_thread")]
async fn ddl_is_refused_on_every_flight_sql_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    let err = server
        .try_sql("CREATE VIEW v AS SELECT 1 AS a")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("PermissionDenied") || err.contains("permission"),
        "{err}"
    );
    let mut client = server.flight().await;
    let err = client
        .prepare("DROP TABLE fingerprints".into(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("DDL not supported: DropTable"), "{err}");
    assert_eq!(
        server.scalar_i64("SELECT count(*) FROM fingerprints").await,
        0
    );
    let err = server
        .try_sql("SELECT * FROM nope")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope") && err.contains("fingerprints") && err.contains("windows"),
        "an unknown table's error names the tables there are: {err}"
    );
}
