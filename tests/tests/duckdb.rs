//! Another engine on the same files: DuckDB reads the persisted Parquet with
//! hive_partitioning=true and returns the same rows as Imprint's SQL.

#![allow(clippy::unwrap_used)] // tests fail loudly on any error
use std::process::Command;

use imprint_bench::{Fleet, FleetSpec};
use imprint_e2e::{Imprintd, rows_as_text, test_python};

#[tokio::test(flavor = "multi_thread")]
async fn duckdb_reads_the_hive_layout_and_agrees_with_imprint() {
    let Some(python) = test_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Imprintd::start(&data, &[]);
    let mut fleet = Fleet::new(FleetSpec {
        images: 4,
        containers_per_image: 2,
        nodes: 2,
        window_secs: 600,
        ..Default::default()
    });
    // 600 s windows over 12 windows: two hours, so several hour partitions.
    for w in 0..12 {
        for b in fleet.batches(w) {
            server.push(b).await.unwrap();
        }
    }
    let image = fleet.image_digest(1).to_string();
    let imprint_query = format!(
        "SELECT image, CAST(date_part('hour', time) AS BIGINT) AS hour, kind, key, count(*) AS n, sum(count) AS c, \
         count(DISTINCT container_id) AS containers, max(CAST(window_end AS BIGINT)) AS last_end \
         FROM fingerprints WHERE image <> '{image}' GROUP BY 1, 2, 3, 4"
    );
    let imprint_rows = rows_as_text(&server.sql(&imprint_query).await);
    assert!(server.terminate().success());

    let script = format!(
        r#"
import duckdb, sys
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
rows = con.execute("""
  SELECT replace(image, 'sha256_', 'sha256:') AS image,
         CAST(hour(time) AS BIGINT) AS hour, kind, key,
         count(*) AS n, sum(count) AS c, count(DISTINCT container_id) AS containers,
         max(epoch_us(time) + window_micros) AS last_end
  FROM read_parquet('{root}/fingerprints/**/*.parquet', hive_partitioning = true)
  WHERE replace(image, 'sha256_', 'sha256:') <> '{image}'
  GROUP BY ALL
""").fetchall()
for r in rows:
    print('|'.join(str(v) for v in r))
"#,
        root = data.display()
    );
    let out = Command::new(python).args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "duckdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut duck_rows: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    duck_rows.sort();
    assert!(
        duck_rows.len() > 100,
        "too few rows to mean anything: {}",
        duck_rows.len()
    );
    assert_eq!(duck_rows, imprint_rows);
}
