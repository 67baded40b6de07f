#!/usr/bin/env bash
# Runs Imprint: builds the release server, CLI and load generator (stable Rust only: no eBPF
# toolchain, no root), starts imprintd on its embedded local store (./imprint-data), pushes a
# small synthetic fleet, shows a few queries and the image profiles, and keeps the server
# running until Ctrl-C (which persists everything to Parquet and stops it).
# Needs: cargo (stable Rust) and curl.
# Environment:
#   CARGO_TARGET_DIR   reuse a build directory (default ./target)
#   IMPRINT_DATA_DIR   data directory (default ./imprint-data)
#   IMPRINT_GRPC_ADDR  gRPC + Flight SQL address (default 127.0.0.1:7340)
#   IMPRINT_HTTP_ADDR  HTTP address: health, metrics, export API (default 127.0.0.1:7341)
#   IMPRINT_RUN_CHECK=1  stop after the demo instead of waiting for Ctrl-C, and fail unless
#                      the demo's data came back (./test.sh runs it this way)
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }
for tool in cargo curl; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is missing (cargo: https://rustup.rs; curl: apt-get install curl)" >&2; exit 1; }
done

TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
export IMPRINT_DATA_DIR="${IMPRINT_DATA_DIR:-$PWD/imprint-data}"
export IMPRINT_GRPC_ADDR="${IMPRINT_GRPC_ADDR:-127.0.0.1:7340}"
export IMPRINT_HTTP_ADDR="${IMPRINT_HTTP_ADDR:-127.0.0.1:7341}"
export IMPRINT_SERVER="http://$IMPRINT_GRPC_ADDR"
# The CLI below finds the admin token in the data directory; a token from the caller's
# environment would be for another server.
unset IMPRINT_TOKEN

if [ -x "$TARGET/release/imprintd" ]; then
  step "building the release binaries (imprint-server, imprint-bench)"
else
  step "building the release binaries (imprint-server, imprint-bench): the first build compiles DataFusion, about 22 minutes on 2 cores; later ones take seconds"
fi
started=$(date +%s)
cargo build --release -p imprint-server -p imprint-bench
echo "built in $(( $(date +%s) - started )) s"
BIN="$TARGET/release"

step "starting imprintd on $IMPRINT_DATA_DIR (gRPC $IMPRINT_GRPC_ADDR, HTTP $IMPRINT_HTTP_ADDR)"
"$BIN/imprintd" serve &
SERVER=$!
stop() {
  trap - EXIT INT TERM
  if kill -0 "$SERVER" 2>/dev/null; then
    echo
    echo "==> stopping imprintd (persisting everything to Parquet)"
    kill -TERM "$SERVER" 2>/dev/null || true
  fi
  local status=0
  wait "$SERVER" 2>/dev/null || status=$?
  echo "imprintd stopped (exit status $status)"
  return "$status"
}
# Ctrl-C: a clean stop is a success.
trap 'stop; exit $?' INT TERM
trap stop EXIT
for _ in $(seq 1 300); do
  curl -sf "http://$IMPRINT_HTTP_ADDR/healthz" >/dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { echo "run.sh: imprintd exited at start (see its message above)" >&2; exit 1; }
  sleep 0.1
done

step "pushing a synthetic fleet (10 images, 3 containers each, 2 nodes, 10 windows of 30 s)"
"$BIN/imprint-bench" load --images 10 --containers-per-image 3 --nodes 2 --windows 10

step "what is stored"
"$BIN/imprint" sql "SELECT kind, count(*) AS rows, count(DISTINCT key) AS distinct_items FROM fingerprints GROUP BY kind ORDER BY rows DESC"
"$BIN/imprint" sql "SELECT image_name, count(DISTINCT container_id) AS containers, min(time) AS first_seen, max(window_end) AS last_seen FROM windows GROUP BY image_name ORDER BY image_name LIMIT 5"

step "image profiles (still learning: the default learning period is 24 h)"
"$BIN/imprint" profile list
FIRST=$("$BIN/imprint" sql "SELECT image_name FROM profile_status ORDER BY image_name LIMIT 1" --format csv | tail -n 1)
"$BIN/imprint" profile "$FIRST" --limit 3

if [ "${IMPRINT_RUN_CHECK:-}" = 1 ]; then
  rows=$("$BIN/imprint" sql "SELECT count(*) AS n FROM fingerprints" --format csv | tail -n 1)
  images=$("$BIN/imprint" sql "SELECT count(*) AS n FROM profile_status" --format csv | tail -n 1)
  echo "check: $rows fingerprint rows, $images image profiles"
  [ "$rows" -gt 0 ] && [ "$images" = 10 ] || { echo "run.sh: the demo's data did not come back" >&2; exit 1; }
  exit 0
fi

echo
echo "imprintd is running: gRPC + Flight SQL on $IMPRINT_GRPC_ADDR, HTTP on $IMPRINT_HTTP_ADDR. Try:"
echo "  $BIN/imprint sql \"SELECT * FROM fingerprints LIMIT 10\""
echo "  $BIN/imprint sql \"SELECT image_name, state, confidence_files FROM profile_status\""
echo "  $BIN/imprint settings set profiling.learning_period 2m && sleep 1 && $BIN/imprint profile list"
echo "  curl -s http://$IMPRINT_HTTP_ADDR/healthz"
echo "  (the admin token is in $IMPRINT_DATA_DIR/admin-token; docs/flight-sql.md connects Python ADBC)"
echo "Press Ctrl-C to stop (everything is persisted to Parquet first)."
wait "$SERVER"
