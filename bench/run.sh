#!/usr/bin/env bash
# Runs a benchmark with its peers:  bench/run.sh [ingest|profiles|policies] [flags of that benchmark]
# (default: ingest). Installs what it needs, idempotently: a Python venv with pyarrow,
# duckdb and psycopg, and Debian's postgresql for the PostgreSQL peer.
# Prints markdown tables (copy them into bench/README.md with the date).
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=ingest
case "${1:-}" in ingest|profiles|policies) WHAT=$1; shift ;; esac
VENV="${IMPRINT_BENCH_VENV:-$PWD/.venv-bench}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import pyarrow, duckdb, psycopg' 2>/dev/null || "$VENV/bin/pip" install -q pyarrow duckdb "psycopg[binary]"
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql
fi
cargo build --release --workspace
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
"$TARGET/release/imprint-bench" "$WHAT" --peers-python "$VENV/bin/python" "$@"
