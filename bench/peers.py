#!/usr/bin/env python3
"""Loads the benchmark's rows into the peers a user might pick instead of Imprint.

Input: an Arrow IPC file of `fingerprints` rows, written by `imprint-bench ingest`.
Output: one JSON object per peer on stdout: rows/s and bytes on disk per row.

- DuckDB: in-process `INSERT INTO ... SELECT` from the Arrow table, then CHECKPOINT.
- PostgreSQL: `COPY ... FROM STDIN (FORMAT csv)` over loopback with fsync on, into a
  table with no index (and, separately measured, with the btree profile queries need).
  Needs `initdb`/`pg_ctl` (Debian's postgresql); skipped with a message otherwise.
"""
import argparse, contextlib, glob, json, os, shutil, subprocess, sys, tempfile, time

import pyarrow as pa
import pyarrow.csv as pacsv


def duckdb_peer(table, work):
    import duckdb
    path = os.path.join(work, "peer.duckdb")
    con = duckdb.connect(path)
    con.register("rows_in", table)
    con.execute("CREATE TABLE fingerprints AS SELECT * FROM rows_in LIMIT 0")
    t0 = time.perf_counter()
    con.execute("INSERT INTO fingerprints SELECT * FROM rows_in")
    secs = time.perf_counter() - t0
    con.execute("CHECKPOINT")
    con.close()
    return {"peer": "DuckDB " + duckdb.__version__, "rows_per_sec": table.num_rows / secs,
            "bytes_per_row": os.path.getsize(path) / table.num_rows}


def pg_bin(name):
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@contextlib.contextmanager
def postgres_cluster(work, port):
    """A throw-away PostgreSQL cluster in WORK/pg on 127.0.0.1:PORT (as a non-root user when
    run as root: PostgreSQL refuses root), stopped on exit. Yields psql's path, or None when
    initdb/pg_ctl are not installed."""
    initdb, pg_ctl, psql = pg_bin("initdb"), pg_bin("pg_ctl"), pg_bin("psql")
    if not (initdb and pg_ctl and psql):
        yield None
        return
    data = os.path.join(work, "pg")
    user = []
    if os.geteuid() == 0:
        subprocess.run(["useradd", "-M", "imprintbench"], stderr=subprocess.DEVNULL)
        os.makedirs(data)
        shutil.chown(work, "imprintbench")
        shutil.chown(data, "imprintbench")
        user = ["runuser", "-u", "imprintbench", "--"]
    subprocess.run(user + [initdb, "-D", data, "-A", "trust", "-U", "bench"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(user + [pg_ctl, "-D", data, "-l", os.path.join(work, "pg.log"), "-o",
                           f"-p {port} -k {work} -c listen_addresses=127.0.0.1", "-w", "start"],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        yield psql
    finally:
        subprocess.run(user + [pg_ctl, "-D", data, "-m", "fast", "stop"], stdout=subprocess.DEVNULL)


def postgres_peer(table, work):
    port = "54329"
    with postgres_cluster(work, port) as psql:
        if psql is None:
            print("SKIPPED PostgreSQL peer: initdb/pg_ctl not found (apt-get install postgresql)", file=sys.stderr)
            return None
        return postgres_load(table, work, psql, port)


def postgres_load(table, work, psql, port):
    def sql(q):
        return subprocess.run([psql, "-h", "127.0.0.1", "-p", port, "-U", "bench", "-d", "postgres", "-Atc", q],
                              check=True, capture_output=True, text=True).stdout.strip()
    sql("CREATE TABLE fingerprints (time timestamptz, window_end timestamptz, node text, container_id text, "
        "image text, image_name text, kind text, key text, count bigint)")
    csv = os.path.join(work, "rows.csv")
    pacsv.write_csv(table, csv, pacsv.WriteOptions(include_header=False))
    t0 = time.perf_counter()
    with open(csv, "rb") as f:
        subprocess.run([psql, "-h", "127.0.0.1", "-p", port, "-U", "bench", "-d", "postgres", "-c",
                        "COPY fingerprints FROM STDIN (FORMAT csv)"], stdin=f, check=True, stdout=subprocess.DEVNULL)
    secs = time.perf_counter() - t0
    size = int(sql("SELECT pg_total_relation_size('fingerprints')"))
    sql("CREATE INDEX ON fingerprints (image, kind, key)")
    size_idx = int(sql("SELECT pg_total_relation_size('fingerprints')"))
    version = sql("SHOW server_version")
    return {"peer": "PostgreSQL " + version, "rows_per_sec": table.num_rows / secs,
            "bytes_per_row": size / table.num_rows, "bytes_per_row_with_btree": size_idx / table.num_rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arrow", required=True, help="Arrow IPC file of fingerprints rows")
    args = ap.parse_args()
    table = pa.ipc.open_file(args.arrow).read_all()
    with tempfile.TemporaryDirectory() as work:
        for peer in (duckdb_peer, postgres_peer):
            r = peer(table, work)
            if r:
                print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
