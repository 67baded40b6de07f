#!/usr/bin/env bash
# Runs Imprint: builds the release binaries, starts imprintd on its embedded local
# store (./imprint-data), pushes a small synthetic fleet, shows a few queries, and
# keeps the server running until Ctrl-C (which persists everything and stops it).
# Environment:
#   CARGO_TARGET_DIR   reuse a build directory (default ./target)
#   IMPRINT_DATA_DIR   data directory (default ./imprint-data)
#   IMPRINT_GRPC_ADDR  gRPC address (default 127.0.0.1:7340)
set -euo pipefail
cd "$(dirname "$0")"

TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
export IMPRINT_DATA_DIR="${IMPRINT_DATA_DIR:-$PWD/imprint-data}"
export IMPRINT_GRPC_ADDR="${IMPRINT_GRPC_ADDR:-127.0.0.1:7340}"
export IMPRINT_SERVER="http://$IMPRINT_GRPC_ADDR"

echo "==> building (release; the first build of DataFusion takes a while)"
cargo build --release -p imprint-server -p imprint-bench
BIN="$TARGET/release"

echo "==> starting imprintd on $IMPRINT_DATA_DIR"
"$BIN/imprintd" serve &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER' EXIT INT TERM
for _ in $(seq 1 100); do
  curl -sf "http://${IMPRINT_HTTP_ADDR:-127.0.0.1:7341}/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

echo "==> pushing a synthetic fleet (10 images, 3 containers each, 10 windows)"
"$BIN/imprint-bench" load --images 10 --containers-per-image 3 --nodes 2 --windows 10

echo "==> what is stored"
"$BIN/imprint" sql "SELECT kind, count(*) AS rows, count(DISTINCT key) AS distinct_items FROM fingerprints GROUP BY kind ORDER BY rows DESC"
"$BIN/imprint" sql "SELECT image_name, count(DISTINCT container_id) AS containers, min(time) AS first_seen, max(window_end) AS last_seen FROM windows GROUP BY image_name ORDER BY image_name LIMIT 5"

echo "==> image profiles (learning: the default learning period is 24h)"
"$BIN/imprint" profile list
FIRST=$("$BIN/imprint" sql "SELECT image_name FROM profile_status ORDER BY image_name LIMIT 1" --format csv | tail -n 1)
"$BIN/imprint" profile "$FIRST" --limit 3

echo
echo "imprintd is running (gRPC + Flight SQL on $IMPRINT_GRPC_ADDR). Try:"
echo "  $BIN/imprint sql \"SELECT * FROM fingerprints LIMIT 10\""
echo "  $BIN/imprint settings set profiling.learning_period 2m && $BIN/imprint profile list"
echo "Press Ctrl-C to stop (everything is persisted to Parquet first)."
wait $SERVER
