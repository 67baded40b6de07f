#!/usr/bin/env bash
# Runs the ingest benchmark with its peers. Installs what it needs, idempotently:
# a Python venv with pyarrow and duckdb, and Debian's postgresql for the COPY peer.
# Prints markdown tables (copy them into bench/README.md with the date).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${IMPRINT_BENCH_VENV:-$PWD/.venv-bench}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import pyarrow, duckdb' 2>/dev/null || "$VENV/bin/pip" install -q pyarrow duckdb
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql
fi
cargo build --release -p imprint-server -p imprint-bench
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
"$TARGET/release/imprint-bench" ingest --peers-python "$VENV/bin/python" "$@"
