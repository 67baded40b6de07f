#!/usr/bin/env bash
# Fuzzes every target for a fixed time (default 60 s each; ./fuzz/run.sh 5m for longer, or
# pass imprint-fuzz flags after the time, e.g. ./fuzz/run.sh 30s --target sql). Keeps the
# corpus in fuzz/corpus/, saves findings in fuzz/crashes/ and exits non-zero on any.
set -euo pipefail
cd "$(dirname "$0")/.."
time_per_target="${1:-60s}"
shift || true
cargo build --release -p imprint-fuzz
exec "${CARGO_TARGET_DIR:-target}/release/imprint-fuzz" --time "$time_per_target" "$@"
