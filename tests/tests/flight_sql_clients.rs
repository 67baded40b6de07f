//! Real Flight SQL clients against the real server: Python ADBC (the Go driver
//! underneath checks that streamed schemas equal advertised ones) and the Rust
//! arrow-flight client's metadata calls.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use std::process::Command;

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetTables, SqlInfo};
use futures::TryStreamExt;
use imprint_e2e::{Imprintd, rows_as_text, test_python};
use imprint_proto::ingest_v1::{Fingerprint, FingerprintBatch, Item, ItemKind};

fn batch() -> FingerprintBatch {
    let end = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let item = |kind: ItemKind, key: &str, count| Item {
        kind: kind as i32,
        key: key.into(),
        count,
    };
    FingerprintBatch {
        agent_id: "a".into(),
        seq: 1,
        fingerprints: vec![Fingerprint {
            node: "n1".into(),
            container_id: "c1".into(),
            image: imprint_bench::digest_of(1),
            image_name: "app:1".into(),
            window_start_unix_micros: end - 30_000_000,
            window_end_unix_micros: end,
            items: vec![
                item(ItemKind::FileRead, "/etc/hosts", 3),
                item(ItemKind::FileRead, "/etc/passwd", 1),
                item(ItemKind::FileRead, "/etc/resolv.conf", 5),
                item(ItemKind::Process, "/usr/bin/app", 1),
                item(ItemKind::TcpOut, "443", 9),
            ],
            completeness: None,
        }],
    }
}

const ADBC_SCRIPT: &str = r#"
import json, sys
import adbc_driver_flightsql.dbapi as flight
# A bearer token header, as a tool would be configured.
conn = flight.connect(sys.argv[1], db_kwargs={"adbc.flight.sql.authorization_header": "Bearer " + sys.argv[2]})
cur = conn.cursor()
out = {}
cur.execute("SELECT kind, key, count FROM fingerprints ORDER BY kind, key")
out["rows"] = cur.fetch_arrow_table().to_pylist()
cur.execute("SELECT key, count FROM fingerprints WHERE kind = $1 AND count > $2 ORDER BY key", ("file_read", 2))
out["bound"] = cur.fetch_arrow_table().to_pylist()
cur.execute("SELECT count(*) AS n FROM fingerprints WHERE key LIKE $1", ("/etc/%",))
out["count"] = cur.fetch_arrow_table().to_pylist()
# `?` placeholders, as ADBC/JDBC/ODBC users write them; a `?` in a literal is not one.
cur.execute("SELECT key, '?' AS q FROM fingerprints WHERE kind = ? AND count > ? ORDER BY key", ("file_read", 2))
out["question_marks"] = cur.fetch_arrow_table().to_pylist()
try:
    cur.execute("SELECT key FROM fingerprints WHERE kind = $1 AND count > ?", ("file_read", 2))
    out["mixed"] = None
except Exception as e:
    out["mixed"] = str(e)
objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
out["catalogs"] = sorted(c["catalog_name"] for c in objects)
out["tables"] = sorted(
    t["table_name"] for c in objects for s in (c["catalog_db_schemas"] or []) for t in (s["db_schema_tables"] or [])
)
schema = conn.adbc_get_table_schema("fingerprints")
out["schema"] = [[f.name, str(f.type), f.nullable] for f in schema]
info = conn.adbc_get_info()
out["vendor"] = info.get("vendor_name")
try:
    cur.execute("SELECT nope FROM fingerprints")
    out["error"] = None
except Exception as e:
    out["error"] = str(e)
cur.close()
conn.close()
# User and password: the driver does the Flight handshake, the password is a token.
conn = flight.connect(sys.argv[1], db_kwargs={"username": "imprint", "password": sys.argv[2]})
cur = conn.cursor()
cur.execute("SELECT count(*) AS n FROM fingerprints")
out["handshake_count"] = cur.fetch_arrow_table().to_pylist()
cur.close()
conn.close()
try:
    conn = flight.connect(sys.argv[1], db_kwargs={"username": "imprint", "password": "imp_wrong"})
    cur = conn.cursor()
    cur.execute("SELECT 1")
    out["bad_password"] = "accepted"
except Exception as e:
    out["bad_password"] = str(e)
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn python_adbc_queries_binds_parameters_and_reads_metadata() {
    let Some(python) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    server.push(batch()).await.unwrap();

    let out = Command::new(python)
        .args([
            "-c",
            ADBC_SCRIPT,
            &format!("grpc://{}", server.grpc_addr),
            &server.token,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ADBC script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<String> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}|{}|{}",
                r["kind"].as_str().unwrap(),
                r["key"].as_str().unwrap(),
                r["count"]
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            "file_read|/etc/hosts|3",
            "file_read|/etc/passwd|1",
            "file_read|/etc/resolv.conf|5",
            "process|/usr/bin/app|1",
            "tcp_out|443|9"
        ]
    );
    assert_eq!(
        v["bound"],
        serde_json::json!([{"key": "/etc/hosts", "count": 3}, {"key": "/etc/resolv.conf", "count": 5}])
    );
    assert_eq!(v["count"], serde_json::json!([{"n": 3}]));
    assert_eq!(
        v["question_marks"],
        serde_json::json!([{"key": "/etc/hosts", "q": "?"}, {"key": "/etc/resolv.conf", "q": "?"}])
    );
    let mixed = v["mixed"].as_str().unwrap();
    assert!(
        mixed.contains("INVALID_ARGUMENT") && mixed.contains("mixes `?` placeholders"),
        "{mixed}"
    );
    assert_eq!(v["catalogs"], serde_json::json!(["datafusion"]));
    let tables: Vec<&str> = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tables.contains(&"fingerprints") && tables.contains(&"windows"),
        "{tables:?}"
    );
    assert_eq!(
        v["schema"][0],
        serde_json::json!(["time", "timestamp[us, tz=UTC]", false])
    );
    assert_eq!(v["schema"][7], serde_json::json!(["key", "string", false]));
    assert_eq!(v["vendor"], "Imprint");
    assert_eq!(v["handshake_count"], serde_json::json!([{"n": 5}]));
    let bad = v["bad_password"].as_str().unwrap();
    assert!(
        bad.contains("UNAUTHENTICATED") || bad.contains("Unauthenticated"),
        "{bad}"
    );
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("nope") && err.contains("INVALID_ARGUMENT"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_client_metadata_calls_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Imprintd::start(&dir.path().join("data"), &[]);
    server.push(batch()).await.unwrap();
    let mut client = server.flight().await;

    let collect =
        |info: arrow_flight::FlightInfo,
         mut client: FlightSqlServiceClient<tonic::transport::Channel>| async move {
            let mut out = Vec::new();
            for ep in info.endpoint {
                let s = client.do_get(ep.ticket.unwrap()).await.unwrap();
                out.extend(s.try_collect::<Vec<_>>().await.unwrap());
            }
            out
        };
    let info = client
        .get_sql_info(vec![SqlInfo::FlightSqlServerName])
        .await
        .unwrap();
    let batches = collect(info, client.clone()).await;
    assert!(format!("{:?}", batches).contains("Imprint"));

    let info = client
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: Some("public".into()),
            table_name_filter_pattern: Some("finger%".into()),
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let batches = collect(info, client.clone()).await;
    let rows = rows_as_text(&[
        arrow::compute::concat_batches(&batches[0].schema(), &batches)
            .unwrap()
            .project(&[0, 1, 2, 3])
            .unwrap(),
    ]);
    assert_eq!(rows, ["datafusion|public|fingerprints|TABLE"]);

    let info = client.get_table_types().await.unwrap();
    assert_eq!(
        rows_as_text(&collect(info, client.clone()).await),
        ["LOCAL TEMPORARY", "TABLE", "VIEW"]
    );
    let info = client
        .get_xdbc_type_info(arrow_flight::sql::CommandGetXdbcTypeInfo { data_type: None })
        .await
        .unwrap();
    assert!(
        collect(info, client.clone())
            .await
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>()
            >= 5
    );

    // Prepared statement with a bound parameter through the Rust client.
    let mut stmt = client
        .prepare(
            "SELECT count(*) FROM fingerprints WHERE count >= $1".into(),
            None,
        )
        .await
        .unwrap();
    let params = arrow::array::RecordBatch::try_from_iter([(
        "$1",
        std::sync::Arc::new(arrow::array::Int64Array::from(vec![3])) as arrow::array::ArrayRef,
    )])
    .unwrap();
    stmt.set_parameters(params).unwrap();
    let info = stmt.execute().await.unwrap();
    assert_eq!(
        imprint_e2e::scalar_i64(&collect(info, client.clone()).await),
        3
    );
    stmt.close().await.unwrap();
}
