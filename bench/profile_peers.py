#!/usr/bin/env python3
"""Computes one image's profile the way a user of a peer would, from the same files.

Input: an Imprint store root (its hive-style Parquet under fingerprints/ and windows/)
and the sampled image digests. Output: one JSON object per peer on stdout with the
median latency (ms) of the two queries over every sampled image and warm run:

- status: the image's first/last seen, observed seconds (distinct 30 s windows),
  containers, nodes, windows — the aggregate part of `profile_status` (the peers are
  not asked for confidence or learning state, so this is a lower bound of their work);
- profiles: per (kind, key) first/last seen, distinct containers and nodes, windows,
  sum of counts — `profiles`.

Peers:
- DuckDB over the Parquet glob (`read_parquet('<root>/fingerprints/*/*/*/*.parquet')`),
  what a user pointing DuckDB at the store does; and DuckDB given only the image's
  directory (partition-aware by hand).
- PostgreSQL 15 with a btree on (image, kind, key) (and on image for windows), the rows
  loaded with COPY from the same files (streamed through DuckDB, no CSV on disk).
  `--no-postgres` skips it (disk: about 360 bytes per row).
"""
import argparse, json, os, shutil, statistics, sys, tempfile, time

import duckdb
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import postgres_cluster  # noqa: E402  (the shared PostgreSQL set-up)


def pa_buffer():
    return pa.BufferOutputStream()

WINDOW_SECS = 30


def path_safe(digest):
    return digest.replace(":", "_", 1)


def status_sql(source_windows):
    return f"""SELECT image, arg_max(image_name, time) AS image_name, min(time) AS first_seen,
        max(time + to_microseconds(window_micros)) AS last_seen,
        count(DISTINCT time) * {WINDOW_SECS} AS observed_seconds,
        count(DISTINCT container_id) AS containers, count(DISTINCT node) AS nodes,
        count(*) AS windows, sum(dropped_events) AS dropped
        FROM {source_windows} WHERE image = $1 GROUP BY image"""


def profiles_sql(source_fp):
    return f"""SELECT image, kind, key, min(time) AS first_seen,
        max(time + to_microseconds(window_micros)) AS last_seen,
        count(DISTINCT container_id) AS containers, count(DISTINCT node) AS nodes,
        count(*) AS windows, sum(count) AS count
        FROM {source_fp} WHERE image = $1 GROUP BY image, kind, key"""


def timed(run, images, runs):
    times, rows = [], 0
    for image in images:
        rows += len(run(image))  # unmeasured first run
        for _ in range(runs):
            t0 = time.perf_counter()
            run(image)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), rows // max(1, len(images))


def duckdb_peers(root, images, runs):
    con = duckdb.connect()
    out = []
    fp_glob = f"read_parquet('{root}/fingerprints/*/*/*/*.parquet', hive_partitioning=false)"
    win_glob = f"read_parquet('{root}/windows/*/*/*/*.parquet', hive_partitioning=false)"
    s = lambda i: con.execute(status_sql(win_glob), [i]).fetchall()
    p = lambda i: con.execute(profiles_sql(fp_glob), [i]).fetchall()
    status_ms, _ = timed(s, images, runs)
    profiles_ms, rows = timed(p, images, runs)
    out.append({"peer": f"DuckDB {duckdb.__version__}, Parquet glob", "status_ms": status_ms,
                "profiles_ms": profiles_ms, "profile_rows": rows})

    def one_dir(table, sql_of):
        def run(i):
            src = f"read_parquet('{root}/{table}/image={path_safe(i)}/*/*/*.parquet', hive_partitioning=false)"
            return con.execute(sql_of(src), [i]).fetchall()
        return run

    status_ms, _ = timed(one_dir("windows", status_sql), images, runs)
    profiles_ms, rows = timed(one_dir("fingerprints", profiles_sql), images, runs)
    out.append({"peer": f"DuckDB {duckdb.__version__}, the image's directory only", "status_ms": status_ms,
                "profiles_ms": profiles_ms, "profile_rows": rows})
    return out


def postgres(root, images, runs):
    work = tempfile.mkdtemp(prefix="imprint-pg-", dir=os.path.dirname(os.path.abspath(root)))
    try:
        with postgres_cluster(work, "54330") as psql:
            if psql is None:
                return {"peer": "PostgreSQL", "skipped": "initdb/pg_ctl not found (apt-get install postgresql)"}
            return postgres_queries(root, images, runs, "54330")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def postgres_queries(root, images, runs, port):
    import psycopg
    import pyarrow.csv as pacsv
    conn = psycopg.connect(host="127.0.0.1", port=port, user="bench", dbname="postgres", autocommit=True)
    cur = conn.cursor()
    cur.execute("CREATE TABLE fingerprints (time timestamptz, window_end timestamptz, node text, "
                "container_id text, image text, image_name text, kind text, key text, count bigint)")
    cur.execute("CREATE TABLE windows (time timestamptz, window_end timestamptz, node text, "
                "container_id text, image text, image_name text, dropped_events bigint)")
    con = duckdb.connect()
    t0 = time.perf_counter()
    rows = 0
    for table, cols in [("fingerprints", "node, container_id, image, image_name, kind, key, count"),
                        ("windows", "node, container_id, image, image_name, dropped_events")]:
        query = (f"SELECT time, time + to_microseconds(window_micros) AS window_end, {cols} "
                 f"FROM read_parquet('{root}/{table}/*/*/*/*.parquet', hive_partitioning=false)")
        reader = con.execute(query).to_arrow_reader(1 << 18)
        with cur.copy(f"COPY {table} FROM STDIN (FORMAT csv)") as copy:
            for batch in reader:
                sink = pa_buffer()
                pacsv.write_csv(batch, sink, pacsv.WriteOptions(include_header=False))
                copy.write(sink.getvalue().to_pybytes())
                rows += batch.num_rows
    cur.execute("CREATE INDEX ON fingerprints (image, kind, key)")
    cur.execute("CREATE INDEX ON windows (image)")
    cur.execute("ANALYZE")
    print(f"  PostgreSQL: {rows} rows loaded and indexed in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    cur.execute("SHOW server_version")
    version = cur.fetchone()[0]
    pg_status = status_sql("windows").replace("to_microseconds(window_micros)", "(window_end - time)") \
        .replace("arg_max(image_name, time)", "max(image_name)").replace("$1", "%s")
    pg_profiles = profiles_sql("fingerprints").replace("time + to_microseconds(window_micros)", "window_end") \
        .replace("$1", "%s")

    def run(q):
        return lambda i: (cur.execute(q, [i]), cur.fetchall())[1]

    status_ms, _ = timed(run(pg_status), images, runs)
    profiles_ms, prow = timed(run(pg_profiles), images, runs)
    conn.close()
    return {"peer": f"PostgreSQL {version}, btree (image, kind, key)", "status_ms": status_ms,
            "profiles_ms": profiles_ms, "profile_rows": prow}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="the Imprint store root (data directory)")
    ap.add_argument("--images", required=True, help="comma-separated digests to query")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-postgres", action="store_true")
    a = ap.parse_args()
    images = a.images.split(",")
    for r in duckdb_peers(a.root, images, a.runs):
        print(json.dumps(r), flush=True)
    if a.no_postgres:
        print(json.dumps({"peer": "PostgreSQL", "skipped": "more rows than --pg-max-rows"}), flush=True)
    else:
        print(json.dumps(postgres(a.root, images, a.runs)), flush=True)


if __name__ == "__main__":
    main()
